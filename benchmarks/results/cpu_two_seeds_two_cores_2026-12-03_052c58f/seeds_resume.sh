#!/bin/bash
# The same comparison on the table's real regime: resumed copies of the committed VAE state
# (epoch 998), 3 more epochs each.
set -u
cd /work/main
OUT=$1; mkdir -p $OUT
SRC=benchmarks/results/iwae_table1_mnist_state_2026-12-03_131da62/vae_k1
ARGS="--data idx:../shared/data/mnist --model mlp --latent-dim 50 --binarize dynamic --batch-size 20 --lr-schedule burda --epochs 1001 --seeds 0 --resume"
W=$(mktemp -d)
for c in a b c; do mkdir -p $W/$c; cp -r $SRC/seed_0 $W/$c/seed_0; done
.venv/bin/python -m experiments.mnist_vae $ARGS --workdir $W/a > $OUT/one_process_default_threads.log 2>&1
ONE="--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
XLA_FLAGS="$ONE" taskset -c 0 .venv/bin/python -m experiments.mnist_vae $ARGS --workdir $W/b > $OUT/pinned_core0.log 2>&1 &
XLA_FLAGS="$ONE" taskset -c 1 .venv/bin/python -m experiments.mnist_vae $ARGS --workdir $W/c > $OUT/pinned_core1.log 2>&1 &
wait
rm -rf $W
for f in $OUT/*.log; do tr '\r' '\n' < $f | grep "^epoch" > $f.epochs; mv $f.epochs $f; done
