#!/usr/bin/env bash
# Issue 5's GPU measurements in one short run (at most 9.5 min; less where steps finish early),
# for a session that is lent a GPU machine for a few minutes:
#
#   OUT=/tmp/gpu bash experiments/gpu_check.sh
#
# Writes under $OUT (at most 7 files): log.txt (everything), train/bench_train.{md,csv} (throughput
# against the PyTorch loop on the same GPU), trials/table.{md,csv} (K trials in one program against
# K in sequence), flops.md (the floor), full.md (a whole 200-epoch Model 1 training on CIFAR-10
# shapes); the log also times Model 1's convolutions for G networks. Each step has its own limit, so one
# slow step does not cost the others.
# Needs jax with CUDA, flax, optax, torch, scikit-learn, matplotlib (not tensorflow-datasets/optuna).
source "$(dirname "$0")/gpu_steps.sh"  # $OUT, the repository root, step()
step 20 nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
step 40 python3 -c "import jax, flax, optax, torch; print('jax', jax.__version__, jax.devices(), '| flax', flax.__version__, '| optax', optax.__version__, '| torch', torch.__version__, torch.cuda.is_available())"
# 1. the full training first: it is the target with the least room (200 Model 1 epochs < 60 s, H100)
# (projected from the epochs run when 200 would take over 100 s)
step 90 python3 experiments/bench_full.py --models model1 --epochs 200 --max-seconds 100 --out "$OUT/full.md"
# 2. throughput against the PyTorch loop on the same GPU (the README's models, default execution)
#    (Model 1 also with its conv + pool as one space-to-depth convolution: pool_s2d, 1.5x on the CPU)
step 110 python3 experiments/bench_train.py --models mlp,model1,model2,model3 --forms auto --pool-s2d auto,on \
    --torch-threads default --steps mlp=200,model1=200,model2=40,model3=20 --repeats 3 --budget 20 \
    --n-eval 512 --out "$OUT/train"
# 3. K trials in one program against K in sequence (target: 8 in one >= 4x 8 in sequence); on a GPU
#    bench_trials trains on 25,600 images (200 steps per epoch) so fixed costs weigh as in a real training;
#    Model 1's one program also with conv_impl=blockdiag (s2e_jax/convs.py) and with pool_s2d (+s2d:
#    grouped convolutions of 12 -> 24 and 24 -> 64 channels per network instead of 3 -> 6 and 6 -> 16),
#    and with conv_impl=slices (patches from strided slices x kernel: batched GEMMs, no grouped
#    convolution), the candidate defaults (train.default_conv_impl, models.get_model); each cell's
#    trainings/h is also printed to the log as it finishes
step 195 python3 experiments/bench_trials.py --ks 1,8 --epochs 2 --budget 40 \
    --conv-impls xla,slices,blockdiag,xla+s2d,slices+s2d,blockdiag+s2d --out "$OUT/trials"
# 4. the floor: FLOPs per epoch, achieved FLOP/s, fraction of a measured matmul peak
step 80 python3 experiments/bench_flops.py --repeats 2 --out "$OUT/flops.md"
# 5. Model 1's convolutions for G = trials x 2 networks, computed several ways (why Model 1's trials
#    scale less than the MLP's on a GPU; table in the log)
step 35 python3 experiments/bench_conv_parts.py --gs 16 --iters 50 --repeats 3 \
    --ways vmap,blockdiag,slices --model-impls xla,slices
echo "=== $(date -u +%T) done" | tee -a "$LOG"
