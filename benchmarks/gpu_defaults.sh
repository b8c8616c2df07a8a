#!/usr/bin/env bash
# Follow-up GPU check (≤ 4.5 min) of Model 1's defaults on a GPU after gpu_check.sh's trials table
# (benchmarks/gpu_h100/) made slices + pool_s2d the default for Model 1 vmapped inside lax.scan
# (s2e_jax.execution.plan): the 200-epoch training, the trials table with
# that default on both sides (sequential and one program) and XLA's convolution beside it, and the
# throughput against the PyTorch loop. Writes under $OUT: log.txt, full.md, trials/, train/.
#   OUT=/tmp/gpu bash benchmarks/gpu_defaults.sh
source "$(dirname "$0")/gpu_steps.sh"  # $OUT, the repository root, step()
step 75 python3 benchmarks/bench_full.py --models model1 --epochs 200 --max-seconds 60 --out "$OUT/full.md"
step 120 python3 benchmarks/bench_trials.py --models model1 --ks 1,8,32 --epochs 2 --budget 30 \
    --conv-impls auto,xla --out "$OUT/trials"
step 70 python3 benchmarks/bench_train.py --models model1 --forms auto --torch-threads default \
    --steps model1=200 --repeats 3 --budget 15 --n-eval 512 --out "$OUT/train"
echo "=== $(date -u +%T) done" | tee -a "$LOG"
