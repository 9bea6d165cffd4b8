#!/usr/bin/env bash
# Stream of Search at a larger scale, on one GPU: 4-number countdown (numbers 1..9, targets 10..50),
# training seeds 0, 1, 2, all three runs at once (small models leave the GPU mostly idle, so they
# share it). Model: d=384, 6 layers (10.8M parameters, 14x the CPU default), 15M training tokens per
# condition (6x the CPU runs), 80,000 training problems.
#
#   bash scripts/sos_gpu.sh OUT_DIR [SECONDS] [MAX_STATES] [SEEDS]
#
# SECONDS: stop each run after this long (default 480; the runs are resumable: rerun to finish).
# MAX_STATES: the longest search written as a training stream (default 128; held-out puzzles the
# symbolic DFS solves within it: 24 -> 0.68, 64 -> 0.80, 128 -> 0.875); the context is 512 tokens for
# 24 states and 2048 above. SEEDS: default "0 1 2".
# Measured (2026-11-28, H200): MAX_STATES=24, seed 0: 273 s for the whole run (RESULTS.md, Stream of Search).
# TF32 matmuls (TORCH_ALLOW_TF32_CUBLAS_OVERRIDE=1) for training speed; evaluation runs in bf16 (the
# tiny backend's default on a GPU).
set -u
out=${1:?usage: sos_gpu.sh OUT_DIR [SECONDS] [MAX_STATES] [SEEDS]}
limit=${2:-480}
states=${3:-128}
seeds=${4:-0 1 2}
if [ "$states" -le 24 ]; then len=512; batch=256; else len=2048; batch=64; fi
mkdir -p "$out"
args=(--model-d-model 384 --model-n-layers 6 --model-n-heads 6 --model-n-kv-heads 6 --model-max-len "$len"
      --lr 1e-3 --warmup 100 --batch-size "$batch" --tokens 15000000 --n-train 80000 --max-states "$states"
      --threads 3 --task-arg n_numbers=4 --task-arg min_number=1 --task-arg max_number=9 --task-arg min_target=10
      --task-arg max_target=50)
for s in $seeds; do
  (
    t0=$SECONDS
    TORCH_ALLOW_TF32_CUBLAS_OVERRIDE=1 timeout "$limit" python3 -m deliberate train sos "${args[@]}" --seed "$s" \
      --out "$out/states$states-s$s" >"$out/states$states-s$s.log" 2>&1
    echo "states$states-s$s: exit $? after $((SECONDS - t0)) s" | tee -a "$out/status.txt"
  ) &
done
wait
