#!/usr/bin/env bash
# Issue 5's GPU measurements in one short run (at most 9.5 min; less where steps finish early),
# for a session that is lent a GPU machine for a few minutes:
#
#   OUT=/tmp/gpu bash experiments/gpu_check.sh
#
# Writes under $OUT (at most 8 files): log.txt (everything), train/bench_train.{md,csv} (throughput
# against the PyTorch loop on the same GPU), trials/table.{md,csv} (K trials in one program against
# K in sequence), flops.md (the floor), full.md (a whole 200-epoch Model 1 training on CIFAR-10
# shapes), profile.txt (where the GPU's time goes: 1 training vs 8 trials in one program; README).
# Each step has its own limit, so one slow step does not cost the others.
# Needs jax with CUDA, flax, optax, torch, scikit-learn, matplotlib (not tensorflow-datasets/optuna).
source "$(dirname "$0")/gpu_steps.sh"  # $OUT, the repository root, step()
step 20 nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
step 40 python3 -c "import jax, flax, optax, torch; print('jax', jax.__version__, jax.devices(), '| flax', flax.__version__, '| optax', optax.__version__, '| torch', torch.__version__, torch.cuda.is_available())"
# 1. the full training first: it is the target with the least room (200 Model 1 epochs < 60 s, H100)
# (projected from the epochs run when 200 would take over 45 s)
step 60 python3 experiments/bench_full.py --models model1 --epochs 200 --max-seconds 45 --out "$OUT/full.md"
# 2. throughput against the PyTorch loop on the same GPU (the README's models, default execution)
#    (Model 1 also without its conv + pool as one space-to-depth convolution, pool_s2d: its default
#    computes convolutions as slices, so the off row is slices alone; XLA's are in the trials table)
step 110 python3 experiments/bench_train.py --models mlp,model1,model2,model3 --forms auto --pool-s2d auto,off \
    --torch-threads default --steps mlp=200,model1=200,model2=40,model3=20 --repeats 3 --budget 20 \
    --n-eval 512 --out "$OUT/train"
# 3. K trials in one program against K in sequence (target: 8 in one >= 4x 8 in sequence); on a GPU
#    bench_trials trains on 25,600 images (200 steps per epoch) so fixed costs weigh as in a real training;
#    Model 1's one program with each conv_impl (s2e_jax/convs.py), with and without pool_s2d (+s2d);
#    slices+s2d is the default since the H100's run (train.default_conv_impl), xla the one before, and
#    the sequence runs the default; each cell's trainings/h is also printed to the log as it finishes
step 165 python3 experiments/bench_trials.py --ks 1,8 --epochs 2 --budget 40 \
    --conv-impls xla,slices,blockdiag,xla+s2d,slices+s2d,blockdiag+s2d --out "$OUT/trials"
# 4. the floor: FLOPs per epoch, achieved FLOP/s, fraction of a measured matmul peak
step 100 python3 experiments/bench_flops.py --repeats 2 --out "$OUT/flops.md"
# 5. where the GPU's time goes, one training against 8 trials in one program (on the H100 the first
#    layer's patches, one fused loop, were 37% of the 8 trials' step; README)
step 75 python3 experiments/profile_trials.py --model model1 --k 8 --n-train 25600 --top 20 --out "$OUT/profile.txt"
echo "=== $(date -u +%T) done" | tee -a "$LOG"
