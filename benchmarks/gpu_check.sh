#!/usr/bin/env bash
# The one-call GPU check: tests on the GPU, the full tutorial run, its likelihood, and throughput.
#
#   bash benchmarks/gpu_check.sh [OUTDIR]      (OUTDIR defaults to $OUT, else benchmarks/results/gpu)
#   RUN_ARGS="--dtype bfloat16" TRAIN_TESTS=0 bash benchmarks/gpu_check.sh   (a bf16 tutorial run)
#
# Needs jax, flax, optax, orbax, matplotlib, imageio, tqdm; wheels in .whl/ (e.g. mlxtend) are
# installed to /tmp/site first, and the canonical MNIST IDX files are read from ${DATA:-data/mnist}.
# No TensorFlow is needed: parity runs against the stored TF numbers (tests/test_golden_parity.py).
# Writes OUTDIR/gpu_check.log, OUTDIR/sweep.jsonl, OUTDIR/tutorial_run.tar.gz (no checkpoints),
# OUTDIR/evaluation.json (the tutorial run's likelihood) and OUTDIR/decoder_throughput.json.
set -uo pipefail
out=${1:-${OUT:-benchmarks/results/gpu}}
data=${DATA:-data/mnist}
epochs=${EPOCHS:-100}
run_args=${RUN_ARGS:-}          # e.g. "--dtype bfloat16" for the tutorial run
train_tests=${TRAIN_TESTS:-1}   # 0 skips the training and CLI tests at the end
mkdir -p "$out"
exec > >(tee -a "$out/gpu_check.log") 2>&1
export PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=2
if compgen -G ".whl/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
section() { echo; echo "== $* ($(date -u +%H:%M:%S))"; }

section machine
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null || echo "no nvidia-smi"
python3 - <<'PY'
import platform, jax, flax, optax, orbax.checkpoint as ocp, numpy
print("python", platform.python_version(), "| jax", jax.__version__, "| flax", flax.__version__,
      "| optax", optax.__version__, "| orbax", ocp.__version__, "| numpy", numpy.__version__)
print("devices", jax.devices())
PY

section "parity and model tests on the accelerator (float32 matmuls at highest precision)"
JAX_DEFAULT_MATMUL_PRECISION=highest timeout 150 python3 -m pytest -q -p no:cacheprovider \
  tests/test_golden_parity.py tests/test_models.py tests/test_losses.py

section "the tutorial run: canonical MNIST, latent 50, batch 100, Adam 1e-4, $epochs epochs $run_args"
rm -rf /tmp/tutorial_run
timeout 240 python3 -m experiments.mnist_vae --data "idx:$data" --epochs "$epochs" \
  --workdir /tmp/tutorial_run $run_args
tar czf "$out/tutorial_run.tar.gz" -C /tmp/tutorial_run --exclude checkpoints .

# Here, while the run's checkpoints exist: the tarball leaves them out. 10,000 images x 5,000
# samples is 5e7 decoder passes of ~9.8 MFLOP each (XLA's count), ~0.5 PFLOP.
section "likelihood of the tutorial run: k=5000 importance samples, the whole test set"
timeout 300 python3 -m experiments.evaluate --workdir /tmp/tutorial_run --iw-samples 5000 \
  --chunk 500 --batch 20
cp /tmp/tutorial_run/evaluation*.json "$out/"

section "decoder throughput (latent samples/s, forward only)"
timeout 90 python3 -m benchmarks.decoder_throughput --chunks 1000 10000 --reps 20 \
  --out "$out/decoder_throughput.json"

section "throughput sweep"
timeout 150 python3 -m benchmarks.gpu_sweep --out "$out/sweep.jsonl" ${SWEEP_ARGS:-}

if [ "$train_tests" != 0 ]; then
  section "training and CLI tests on the accelerator"
  timeout 120 python3 -m pytest -q -p no:cacheprovider tests/test_train.py tests/test_cli.py
fi
section done
