#!/usr/bin/env bash
# STaR on SmolLM2-135M-Instruct (`deliberate train star-hf`) on one GPU: with and without rationalization,
# training seeds 0 1 2, all six runs at once (a 135M model leaves an H200 mostly idle, so they share it).
# Sums of 1-4 digits, 1000 training problems per iteration, 5 iterations, 400 held-out problems (the same
# for every run: eval seed 0), answers graded on their last number (SmolLM2 does not write 'Answer: N').
#
#   bash scripts/star_hf_gpu.sh OUT_DIR [SECONDS] [SEEDS]
#
# SECONDS: stop each run after this long (default 540; the runs resume where they stopped: rerun to
# finish). Then:
#   python scripts/selfimprove_table.py OUT_DIR/rat-s0 OUT_DIR/norat-s0 ...
#   python scripts/star_hf_paired.py OUT_DIR/rat-s0 OUT_DIR/norat-s0 OUT_DIR/rat-s1 OUT_DIR/norat-s1 ...
# CPU pilot of the same recipe (1-3 digits, 200 problems, 2 iterations): docs/RESULTS.md, "STaR on a real model".
set -u
out=${1:?usage: star_hf_gpu.sh OUT_DIR [SECONDS] [SEEDS]}
limit=${2:-540}
seeds=${3:-0 1 2}
mkdir -p "$out"
# convert the GGUF once, before six processes would race to do it
python3 -c "from deliberate.models.hf import resolve_path; print(resolve_path('smollm2')[0])" || exit 1
args=(--model smollm2 --task-arg digits=1-4 --task-arg extract=last_number --n-train 1000 --eval-problems 400
      --iterations 5 --max-tokens 64 --lr 3e-5 --epochs 2 --batch-size 16 --batch-problems 250 --threads 2)
for s in $seeds; do
  for v in rat norat; do
    flag=(); [ "$v" = norat ] && flag=(--no-rationalize)
    (
      t0=$SECONDS
      timeout "$limit" python3 -m deliberate train star-hf "${args[@]}" "${flag[@]}" --seed "$s" --out "$out/$v-s$s" \
        >"$out/$v-s$s.log" 2>&1
      echo "$v-s$s: exit $? after $((SECONDS - t0)) s" | tee -a "$out/status.txt"
    ) &
  done
done
wait
