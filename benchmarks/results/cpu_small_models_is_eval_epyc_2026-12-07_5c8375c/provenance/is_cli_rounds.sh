#!/bin/bash
# IS evaluation speed, k=5000, through the CLI; every training paused. Rounds alternate.
cd /work/main
W=/tmp/is_bench/seed_2
O=/tmp/is_bench/out; mkdir -p $O
for round in 1 2 3; do
  for v in "batch1:--batch 1" "default:" "bf16:--dtype bfloat16"; do
    name=${v%%:*}; flags=${v#*:}
    echo "\$ python -m experiments.evaluate --workdir W --iw-samples 5000 --test-size 1000 $flags --force" >> $O/commands.log
    python -m experiments.evaluate --workdir $W --iw-samples 5000 --test-size 1000 $flags --force 2>/dev/null >> $O/commands.log
    cp $W/evaluation*.json $O/ 2>/dev/null
    python -c "
import json,glob,os
for f in glob.glob('$W/evaluation*.json'):
  r=json.load(open(f)); print(json.dumps({'round': $round, 'variant': '$name', 'file': os.path.basename(f), 'batch': r['settings']['batch'], 'dtype': r['settings']['dtype'], 'nll': r['results']['nll'], 'images_per_sec': r['timing']['images_per_sec']}))
  os.remove(f)" >> $O/rounds.jsonl
  done
done
echo "\$ python -m experiments.evaluate --workdir W --iw-samples 5000 --test-size 10000 --dtype bfloat16" >> $O/commands.log
python -m experiments.evaluate --workdir $W --iw-samples 5000 --test-size 10000 --dtype bfloat16 2>/dev/null >> $O/commands.log
cp $W/evaluation*.json $O/full_bf16.json
echo done
