#!/usr/bin/env bash
# The project's checks on a CUDA machine, as one script: the CUDA tests, the whole suite with CUDA
# visible (device "auto" then means the GPU), the two speed benchmarks on the GPU, `lmlab size` against
# max_memory_allocated, GPT-2 124M training (1 GPU, and all of them under torchrun) and generation
# throughput, and the quickstart. Ends with one JSON line: each step's exit code and the 124M figures.
#
#   benchmarks/gpu_check.sh OUTDIR [SHAKESPEARE_TXT] [NANOGPT_DIR]
#
# ONLY="test_cuda gpt2_124m" runs those steps alone (a lent GPU's time is short).
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
RCS=""
step() {  # step NAME SECONDS CMD...: run with a limit, log to OUT/NAME.log, print its tail and time
  local name=$1 limit=$2; shift 2
  if [ -n "${ONLY:-}" ] && [[ " $ONLY " != *" $name "* ]]; then return; fi  # ONLY="gpt2_124m ...": a subset
  local t0=$SECONDS
  timeout "$limit" "$@" >"$OUT/$name.log" 2>&1
  local rc=$?
  RCS="$RCS\"$name\": $rc, "
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
step gpt2_124m 240 $PY benchmarks/gpt2_124m.py --out /tmp/gpt2-124m --steps 30
GPT2=$(tail -n 1 "$OUT/gpt2_124m.log" | grep '^{' || echo null)
echo "{\"exit_codes\": {${RCS%, }}, \"gpt2_124m\": $GPT2}"
