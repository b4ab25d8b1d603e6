#!/usr/bin/env bash
# The project's checks on a CUDA machine, as one script: the CUDA tests, the whole suite with CUDA
# visible (device "auto" then means the GPU), the two speed benchmarks on the GPU, `lmlab size` against
# max_memory_allocated, and the quickstart.
#
#   benchmarks/gpu_check.sh OUTDIR [SHAKESPEARE_TXT] [NANOGPT_DIR]
#
# Runs from the repository root with the machine's python3 (PYTHON=... to change), lmlab taken from
# src/ (no install needed). Each step has its own time limit and a log in OUTDIR; a failing step does
# not stop the next.
set -u
OUT=${1:?usage: gpu_check.sh OUTDIR [SHAKESPEARE_TXT] [NANOGPT_DIR]}
TEXT=${2:-../shared/data/tinyshakespeare.txt}
NANO=${3:-}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
export PYTHONPATH="$PWD/src" PYTHONUNBUFFERED=1 MPLBACKEND=Agg
step() {  # step NAME SECONDS CMD...: run with a limit, log to OUT/NAME.log, print its tail and time
  local name=$1 limit=$2; shift 2
  local t0=$SECONDS
  timeout "$limit" "$@" >"$OUT/$name.log" 2>&1
  local rc=$?
  echo "== $name: exit $rc in $((SECONDS - t0)) s"
  tail -n "${TAIL:-6}" "$OUT/$name.log"
}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
$PY -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"
step test_cuda 90 $PY -m pytest -q -p no:cacheprovider tests/test_cuda.py
step test_all 150 $PY -m pytest -q -p no:cacheprovider -n 8 tests
if [ -f "$TEXT" ]; then
  step shakespeare 120 $PY benchmarks/pretrain_shakespeare_char.py --device cuda --data "$TEXT" \
    ${NANO:+--nanogpt "$NANO"} --work /tmp/bench-shakespeare
fi
step generate 150 $PY benchmarks/generate_vs_hf.py --device cuda --repeats 2
step size 150 $PY benchmarks/size_vs_measured.py --device cuda
step quickstart 150 $PY -m lmlab.cli quickstart --config configs/quickstart.yaml --set out=/tmp/qs
cp /tmp/qs/report.md "$OUT/quickstart_report.md" 2>/dev/null
