#!/bin/bash
# 2 alternating rounds: float32, bfloat16 mixed (this branch), bfloat16 whole-layer (commit 2e40b2f).
R=$(pwd)/benchmarks/results/cpu_bf16_mixed_2026-12-01
PY=/work/main/.venv/bin/python
LOG=$R/raw/runs.log
: > $LOG
for round in 1 2; do
  for form in float32 bfloat16 bfloat16_old; do
    if [ $form = bfloat16_old ]; then dir=/tmp/bf16_old; dtype=bfloat16; else dir=/work/wt/bf16; dtype=$form; fi
    echo "round $round $form start $(date -u +%H:%M:%S) uptime: $(uptime)" >> $LOG
    (cd $dir && $PY -m benchmarks.throughput --framework jax --steps 200 --dtype $dtype --out $R/raw/round${round}_${form}.json > $R/raw/round${round}_${form}.stdout 2>&1)
    echo "round $round $form end   $(date -u +%H:%M:%S) uptime: $(uptime) rc=$?" >> $LOG
  done
done
