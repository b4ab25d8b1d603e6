#!/usr/bin/env bash
# Issue 20's experiments on the quickstart's models, in one script, then their report:
#
#   benchmarks/hallucination_lab.sh [OUT] [QUICKSTART]     (defaults: runs/hallucination, runs/quickstart)
#
# Runs from the repository root after `make quickstart`, with lmlab on the PATH (LMLAB=... to change, e.g.
# LMLAB=".venv/bin/lmlab"). About 30-40 minutes on a 2-core CPU; each step logs to OUT/NAME.log and a
# failing step does not stop the next. Every figure ends in OUT/report.md (`lmlab hallucination report`).
set -u
OUT=${1:-runs/hallucination}
QS=${2:-runs/quickstart}
LM=${LMLAB:-lmlab}
mkdir -p "$OUT"
step() {  # step NAME CMD...: run, log to OUT/NAME.log, print the exit code and time
  local name=$1; shift
  local t0=$SECONDS
  "$@" >"$OUT/$name.log" 2>&1
  echo "== $name: exit $? in $((SECONDS - t0)) s"
}
W=(--world "$QS/world")
step eval_pretrained $LM hallucination eval --model "$QS/checkpoint" "${W[@]}" --questions 400 \
  --out "$OUT/eval/pretrained" --force
step eval_dpo $LM hallucination eval --model "$QS/dpo/checkpoint" "${W[@]}" --questions 400 \
  --out "$OUT/eval/dpo" --force
for s in 0 1 2; do  # three seeds: other people held out, another SFT order; the report pools them
  step unknown_sft_$s $LM hallucination unknown-sft --model "$QS/checkpoint" "${W[@]}" --seed $s \
    --train.seed $((1337 + s)) --out "$OUT/unknown_sft/seed_$s"
done
step snowball $LM hallucination snowball --model "$QS/checkpoint" "${W[@]}" --out "$OUT/snowball/measure" --force
step snowball_corrected $LM hallucination snowball --model "$QS/checkpoint" "${W[@]}" --group qa_test \
  --prefixes 1 --mitigate --rl --out "$OUT/snowball/corrected" --force
step retrieval $LM hallucination retrieval --model "$QS/checkpoint" "${W[@]}" --out "$OUT/retrieval/plain" --force
step retrieval_read50 $LM hallucination retrieval --model "$QS/checkpoint" "${W[@]}" --read_share 0.5 \
  --out "$OUT/retrieval/read50" --force
step penalty $LM hallucination penalty --model "$QS/sft/checkpoint" "${W[@]}" --penalties 0,0.1,0.25,1,4 \
  --learned --out "$OUT/penalty"
step report $LM hallucination report --dir "$OUT"
tail -n 3 "$OUT/report.log"
