#!/bin/bash
cd /work/wt/results10
PY=/work/main/.venv/bin/python
while pgrep -f "evaluate --workdir /tmp/v10/mlp_elbo --iw" >/dev/null; do sleep 5; done
for name in mlp_iwae50 mlp_elbo_1epoch; do
  while [ ! -f /tmp/v10/$name.log ] || ! grep -q "train rc" /tmp/v10/$name.log; do sleep 5; done
  echo "=== eval $name $(date -u +%T)"
  $PY -m experiments.evaluate --workdir /tmp/v10/$name --iw-samples 5000 --test-size 1000 --batch 2 > /tmp/v10/$name.eval.log 2>&1
  echo "eval rc=$? $(date -u +%T)"
done
