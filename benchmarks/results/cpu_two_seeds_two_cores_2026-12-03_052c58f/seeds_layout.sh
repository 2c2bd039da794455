#!/bin/bash
# Two seeds on 2 cores: one process with XLA's default threads, vs two single-threaded processes
# pinned to a core each (run together). 4 epochs of the IWAE-table VAE (MLP, batch 20, dynamic).
set -u
cd /work/main
OUT=$1; mkdir -p $OUT
ARGS="--data idx:../shared/data/mnist --model mlp --latent-dim 50 --binarize dynamic --batch-size 20 --lr-schedule burda --epochs 4"
W=$(mktemp -d)
.venv/bin/python -m experiments.mnist_vae $ARGS --seeds 1 --workdir $W/default > $OUT/one_process_default_threads.log 2>&1
ONE="--xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
XLA_FLAGS="$ONE" taskset -c 0 .venv/bin/python -m experiments.mnist_vae $ARGS --seeds 1 --workdir $W/pinned > $OUT/pinned_core0_seed1.log 2>&1 &
XLA_FLAGS="$ONE" taskset -c 1 .venv/bin/python -m experiments.mnist_vae $ARGS --seeds 2 --workdir $W/pinned > $OUT/pinned_core1_seed2.log 2>&1 &
wait
rm -rf $W
for f in $OUT/*.log; do tr '\r' '\n' < $f | grep "^epoch" > $f.epochs; mv $f.epochs $f; done
