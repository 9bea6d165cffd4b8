#!/usr/bin/env bash
# Smoke test of the data-parallel recipes under `accelerate launch`: a short tiny-model SFT, then a
# 2-step GRPO from it, with the accelerate config given (default: 2 CPU processes).
#
#   scripts/accelerate_smoke.sh                                     # configs/accelerate/cpu_ddp_2.yaml
#   scripts/accelerate_smoke.sh configs/accelerate/gpu_ddp_8.yaml   # on an 8-GPU machine
#   OUT=/shared/smoke scripts/accelerate_smoke.sh configs/accelerate/multinode_2x8.yaml --machine_rank 0 \
#       --main_process_ip 10.0.0.1                                  # extra args go to accelerate launch
#
# Prints each run's final line; the outputs stay in $OUT (default: a fresh temp dir).
set -euo pipefail
cd "$(dirname "$0")/.."
CONFIG=${1:-configs/accelerate/cpu_ddp_2.yaml}
shift || true
OUT=${OUT:-$(mktemp -d -t deliberate-accel-XXXX)}
LAUNCH=(python -m accelerate.commands.launch --config_file "$CONFIG" "$@" -m deliberate)
EASY=(--task-arg min_ops=1 --task-arg max_ops=1 --task-arg max_operand=5)

echo "config: $CONFIG   out: $OUT"
t0=$SECONDS
"${LAUNCH[@]}" train sft "${EASY[@]}" --steps 120 --n-train 400 --batch-size 16 --lr 5e-3 \
    --d-model 48 --n-layers 2 --n-heads 2 --checkpoint-every 40 --out "$OUT/sft" 2>/dev/null | tail -n 1
echo "sft: $((SECONDS - t0))s; log:"; cat "$OUT/sft/train_log.jsonl"
t0=$SECONDS
"${LAUNCH[@]}" train grpo "${EASY[@]}" --init "$OUT/sft/model" --n-train 64 --steps 2 --problems-per-step 8 \
    --group 4 --lr 1e-3 --eval-every 2 --checkpoint-every 1 --eval-problems 16 --eval-n 2 --out "$OUT/grpo" \
    2>/dev/null | tail -n 4
echo "grpo: $((SECONDS - t0))s"
