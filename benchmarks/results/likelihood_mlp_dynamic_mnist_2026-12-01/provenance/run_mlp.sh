#!/bin/bash
# Burda et al. protocol, one stochastic layer: MLP 784-200-200-50 tanh, dynamic binarization, batch 20, Adam lr 1e-3.
cd /work/wt/results10
PY=/work/main/.venv/bin/python
name=$1; shift
COMMON="--model mlp --hidden-sizes 200,200 --activation tanh --latent-dim 50 --binarize dynamic --batch-size 20 --learning-rate 1e-3 --epochs ${EPOCHS:-10} --seed 0 --data idx:/work/shared/data/mnist"
echo "=== $name $(date -u +%T) $*"
$PY -m experiments.mnist_vae $COMMON "$@" --workdir /tmp/v10/$name > /tmp/v10/$name.train.log 2>&1
echo "train rc=$? $(date -u +%T)"
