#!/usr/bin/env bash
# Follow-up GPU check (≤ 4.5 min): why K trials in one program gained only 1.5x on an H200
# (experiments/gpu_h200/), measured at a training length where per-call overhead is amortized
# (200 steps per epoch), and whether convolutions as patches x kernel (TrainConfig.conv_impl)
# beat XLA's grouped convolutions under vmap. Writes under $OUT: log.txt, trials/table.{md,csv}.
#   OUT=/tmp/gpu bash experiments/gpu_convs.sh
source "$(dirname "$0")/gpu_steps.sh"  # $OUT, the repository root, step()
step 150 python3 experiments/bench_trials.py --models mlp,model1 --ks 1,8,32 --epochs 2 --mlp-train 25600 \
    --model1-train 25600 --mlp-eval 512 --model1-eval 512 --conv-impls xla,patches --budget 60 --out "$OUT/trials"
for impl in xla patches; do
  step 55 python3 experiments/bench_train.py --models model1,model2,model3 --forms vmap --drivers scan --no-torch \
      --conv-impl $impl --steps model1=200,model2=40,model3=20 --repeats 3 --budget 10 --n-eval 512
done
echo "=== $(date -u +%T) done" | tee -a "$LOG"
