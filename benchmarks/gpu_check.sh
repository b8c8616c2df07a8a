#!/usr/bin/env bash
# The GPU measurements in one short run (at most 8.5 min; less where steps finish early), for a
# session that is lent a GPU machine for a few minutes:
#
#   OUT=/tmp/gpu bash benchmarks/gpu_check.sh
#
# Writes under $OUT: log.txt (everything), trials/table.{md,csv} (K trials in one program against K in
# sequence), profile.txt (where the GPU's time goes: 1 training vs 8 trials in one program),
# full.md (a whole 200-epoch Model 1 training on CIFAR-10 shapes), train/bench_train.{md,csv}
# (throughput against the PyTorch loop on the same GPU), flops.md (the floor). Each step has its own
# limit, so one slow step does not cost the others. Needs jax with CUDA, flax, optax, torch,
# scikit-learn, matplotlib (not tensorflow-datasets or optuna). Tables: docs/performance.md.
source "$(dirname "$0")/gpu_steps.sh"  # $OUT, the repository root, step()
step 20 nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
step 30 python3 -c "import jax, flax, optax, torch; print('jax', jax.__version__, jax.devices(), '| flax', flax.__version__, '| optax', optax.__version__, '| torch', torch.__version__, torch.cuda.is_available())"
# 1. K trials in one program against K in sequence (200 steps per epoch on a GPU); Model 1's one
#    program with the plan's convolutions (auto) and with XLA's, each with and without pool_s2d
step 180 python3 benchmarks/bench_trials.py --models mlp,model1 --ks 1,8 --epochs 2 --budget 40 \
    --conv-impls auto,xla+s2d,xla-s2d --out "$OUT/trials"
# 2. where the GPU's time goes: one training against 8 trials in one program
step 60 python3 benchmarks/profile_trials.py --model model1 --k 8 --n-train 25600 --top 20 --out "$OUT/profile.txt"
# 3. the full 200-epoch Model 1 training (projected from the epochs run when 200 take over 40 s)
step 50 python3 benchmarks/bench_full.py --models model1 --epochs 200 --max-seconds 40 --out "$OUT/full.md"
# 4. throughput against the PyTorch loop on the same GPU (every Table 4 model, the plan's execution)
step 100 python3 benchmarks/bench_train.py --models mlp,model1,model2,model3 --forms auto \
    --torch-threads default --steps mlp=200,model1=200,model2=40,model3=20 --repeats 3 --budget 20 \
    --n-eval 512 --out "$OUT/train"
# 5. the floor: FLOPs per epoch, achieved FLOP/s, fraction of a measured matmul peak (last, so that a
#    slow start costs only this)
step 70 python3 benchmarks/bench_flops.py --repeats 2 --out "$OUT/flops.md"
echo "=== $(date -u +%T) done" | tee -a "$LOG"
