#!/usr/bin/env bash
# Stream of Search at a larger scale, on one GPU: the default 3-number countdown on training seeds
# 0, 1, 2 and the 4-number single-digit variant on seed 0, all four runs at once (small models leave
# the GPU mostly idle, so they share it). Model: d=384, 6 layers (10.8M parameters, 14x the CPU
# default), 15M training tokens per condition (6x), 80,000 training problems.
#
#   bash scripts/sos_gpu.sh OUT_DIR [SECONDS]     # SECONDS: stop each run after this long (default 480)
#
# Each run is `deliberate train sos` (resumable: rerun to finish one that was stopped). TF32 matmuls
# (TORCH_ALLOW_TF32_CUBLAS_OVERRIDE=1) for training speed; evaluation runs in bf16 (the tiny
# backend's default on a GPU).
set -u
out=${1:?usage: sos_gpu.sh OUT_DIR [SECONDS]}
limit=${2:-480}
mkdir -p "$out"
common=(--model-d-model 384 --model-n-layers 6 --model-n-heads 6 --model-n-kv-heads 6 --lr 1e-3 --warmup 100
        --batch-size 256 --tokens 15000000 --n-train 80000 --threads 3)
four=(--task-arg n_numbers=4 --task-arg min_number=1 --task-arg max_number=9 --task-arg min_target=10
      --task-arg max_target=50)
run() {  # name, extra args...
  local name=$1; shift
  local t0=$SECONDS
  TORCH_ALLOW_TF32_CUBLAS_OVERRIDE=1 timeout "$limit" python3 -m deliberate train sos "${common[@]}" "$@" \
    --out "$out/$name" >"$out/$name.log" 2>&1
  echo "$name: exit $? after $((SECONDS - t0)) s" | tee -a "$out/status.txt"
}
run s0 --seed 0 &
run s1 --seed 1 &
run s2 --seed 2 &
run four-s0 --seed 0 "${four[@]}" &
wait
