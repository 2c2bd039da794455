#!/bin/bash
# Variants table: CVAE latent 50, thresholded MNIST, 3 epochs on the first 20,000 training images, seed 0.
cd /work/wt/results10
PY=/work/main/.venv/bin/python
COMMON="--model cvae --latent-dim 50 --epochs 3 --train-size 20000 --seed 0 --data idx:/work/shared/data/mnist --binarize threshold"
run() {
  name=$1; shift
  echo "=== $name $(date -u +%T) $*"
  $PY -m experiments.mnist_vae $COMMON "$@" --workdir /tmp/v10/$name > /tmp/v10/$name.train.log 2>&1
  echo "train rc=$? $(date -u +%T)"
  $PY -m experiments.evaluate --workdir /tmp/v10/$name --iw-samples 100 --test-size 500 --batch 10 > /tmp/v10/$name.eval.log 2>&1
  echo "eval rc=$? $(date -u +%T)"
}
run elbo_mc --objective elbo
run elbo_analytic --objective elbo --kl analytic
run beta_0.5 --objective elbo --beta 0.5
run beta_2 --objective elbo --beta 2
run beta_4 --objective elbo --beta 4
run warmup_2 --objective elbo --kl-warmup-epochs 2
run free_bits_0.5 --objective elbo --free-bits 0.5
run iwae_5 --objective iwae --iw-samples 5
echo "=== done $(date -u +%T)"
