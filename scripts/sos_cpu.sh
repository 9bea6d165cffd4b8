#!/usr/bin/env bash
# Stream of Search at the GPU probe's scale on a CPU, one training seed per call: the same comparison as
# scripts/sos_gpu.sh (4-number countdown, numbers 1..9, targets 10..50; d=384, 6 layers, 10.9M parameters;
# 15M training tokens per condition; 80,000 training problems), trained under bfloat16 autocast (--bf16:
# 2.3x the float32 speed at this size on dense batches, docs/BENCHMARKS.md "Training throughput").
#
#   bash scripts/sos_cpu.sh OUT_DIR SEED [MAX_STATES]
#
# MAX_STATES: the longest search written as a training stream (default 128, context 2048, batch 64; 24:
# context 512, batch 256, the H200 probe's setting). Measured on the 2-core VM (2 threads): 50 s per step at
# 128 states (829 steps per condition, ~11.5 h), 39 s per step at 24 states (680 steps, ~7.4 h): batches are
# padded to their longest stream, so this is a job for a many-core CPU or a long unattended run. The run is
# resumable per condition (stream, then path): rerun the same call to continue after a stop.
set -u -o pipefail
out=${1:?usage: sos_cpu.sh OUT_DIR SEED [MAX_STATES]}
seed=${2:?usage: sos_cpu.sh OUT_DIR SEED [MAX_STATES]}
states=${3:-128}
if [ "$states" -le 24 ]; then len=512; batch=256; else len=2048; batch=64; fi
mkdir -p "$out"
t0=$SECONDS
python3 -m deliberate train sos --model-d-model 384 --model-n-layers 6 --model-n-heads 6 --model-n-kv-heads 6 \
  --model-max-len "$len" --lr 1e-3 --warmup 100 --batch-size "$batch" --tokens 15000000 --n-train 80000 \
  --max-states "$states" --bf16 --threads 2 --task-arg n_numbers=4 --task-arg min_number=1 --task-arg max_number=9 \
  --task-arg min_target=10 --task-arg max_target=50 --seed "$seed" --out "$out/states$states-s$seed" \
  2>&1 | tee "$out/states$states-s$seed.log"
rc=$?
echo "states$states-s$seed: exit $rc after $((SECONDS - t0)) s" | tee -a "$out/status.txt"
exit $rc
