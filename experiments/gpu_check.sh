#!/usr/bin/env bash
# Issue 5's GPU measurements in one short run (at most 9.8 min; less where steps finish early),
# for a session that is lent a GPU machine for a few minutes:
#
#   OUT=/tmp/gpu bash experiments/gpu_check.sh
#
# Writes under $OUT (at most 8 files): log.txt (everything), trials/table.{md,csv} (K trials in one
# program against K in sequence), profile.txt (where the GPU's time goes: 1 training vs 8 trials in
# one program; README), full.md (a whole 200-epoch Model 1 training on CIFAR-10 shapes),
# train/bench_train.{md,csv} (throughput against the PyTorch loop on the same GPU), flops.md (the floor).
# Each step has its own limit, so one slow step does not cost the others.
# Needs jax with CUDA, flax, optax, torch, scikit-learn, matplotlib (not tensorflow-datasets/optuna).
source "$(dirname "$0")/gpu_steps.sh"  # $OUT, the repository root, step()
step 20 nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
step 40 python3 -c "import jax, flax, optax, torch; print('jax', jax.__version__, jax.devices(), '| flax', flax.__version__, '| optax', optax.__version__, '| torch', torch.__version__, torch.cuda.is_available())"
# 1. K trials in one program against K in sequence, the target still open (8 in one >= 4x 8 in
#    sequence); on a GPU bench_trials trains on 25,600 images (200 steps per epoch) so fixed costs weigh
#    as in a real training. Model 1's default (slices + pool_s2d since the H100's run) with and without
#    its first layer from stored patches (+stem, TrainConfig.stem_patches: the H100's profile had that
#    layer's patch building at 37% of the 8 trials' step), on both sides; with the stem a matmul, the
#    second layer alone decides between slices (auto), XLA's grouped convolutions and blockdiag; each
#    cell's trainings/h is also printed to the log as it finishes
step 200 python3 experiments/bench_trials.py --models model1 --ks 1,8 --epochs 2 --budget 40 \
    --conv-impls auto,auto+stem,xla+s2d+stem,blockdiag+stem --sequential default,default+stem --out "$OUT/trials"
# 2. where the GPU's time goes with the stem from stored patches, one training against 8 trials in one
#    program (experiments/gpu_h100/followup/profile_model1_k8.txt is the same without), each costly
#    kernel named with what it computes (fused ops, source lines; from the optimized HLO)
step 75 python3 experiments/profile_trials.py --model model1 --k 8 --n-train 25600 --top 20 --stem-patches on \
    --out "$OUT/profile.txt"
# 3. the full 200-epoch Model 1 training (< 60 s on an H100; 32.4 s there) with the stem from stored
#    patches (projected from the epochs run when 200 would take over 45 s)
step 60 python3 experiments/bench_full.py --models model1 --epochs 200 --max-seconds 45 --stem-patches on \
    --out "$OUT/full.md"
# 4. throughput against the PyTorch loop on the same GPU (the README's models, default execution)
step 110 python3 experiments/bench_train.py --models mlp,model1,model2,model3 --forms auto \
    --torch-threads default --steps mlp=200,model1=200,model2=40,model3=20 --repeats 3 --budget 20 \
    --n-eval 512 --out "$OUT/train"
# 5. the floor: FLOPs per epoch, achieved FLOP/s, fraction of a measured matmul peak (the H100's in
#    experiments/gpu_h100/flops.md; last, so that a slow start costs only this)
step 80 python3 experiments/bench_flops.py --repeats 2 --out "$OUT/flops.md"
echo "=== $(date -u +%T) done" | tee -a "$LOG"
