"""benchmarks.peers.keras_reference: the tutorial's Keras model on Keras 3 with the JAX backend.

Keras picks its backend once per process, and other tests load it with TensorFlow's, so every Keras
side here runs in its own process. Parity: with the port's weights copied in, the Keras model's loss,
gradients and first Adam step on a batch with fixed noise equal the port's (tolerances and their
reasons as in tests/test_parity.py).
"""

import json
import math
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from flax import nnx

from vae_jax.nn import losses, models
from vae_jax.training.train import keras_adam

BATCH, LATENT, LR = 8, 4, 1e-4
ACT_TOL = dict(rtol=1e-5, atol=1e-5)
GRAD_RTOL, GRAD_ATOL_PER_MAX = 1e-4, 2e-5
PARAM_ATOL = 1e-2 * LR
ROW_KEYS = ("epoch", "train_loss", "test_elbo", "images_per_sec", "compile_seconds", "train_seconds",
            "eval_seconds", "seconds")
ENV = {**os.environ, "VAE_JAX_HUGE_PAGES": "0"}

# The Keras side of the parity test: weights, batch and noise from argv[1]; loss, gradients and the
# weights after one keras.optimizers.Adam step (Flax layout) to argv[2].
KERAS_SIDE = """
import sys
import numpy as np
from benchmarks.peers import keras_reference as kr
import jax, keras
d = dict(np.load(sys.argv[1]))
x, eps = d.pop("x"), d.pop("eps")
params = {}
for key, value in d.items():
  name, part = key.split("/")
  params.setdefault(name, {})[part] = value
keras.utils.set_random_seed(0)
model, optimizer = kr.make_model_and_optimizer(eps.shape[1], float(sys.argv[3]))
kr.load_flax_params(model, params)
trainable = [v.value for v in model.trainable_variables]
non_trainable = [v.value for v in model.non_trainable_variables]
loss_fn = lambda tr: model.stateless_call(tr, non_trainable, x, eps=eps)[0]
loss, grads = jax.jit(jax.value_and_grad(loss_fn))(trainable)
after, _ = jax.jit(optimizer.stateless_apply)([v.value for v in optimizer.variables], grads, trainable)
out = {"loss": np.asarray(loss)}
for prefix, values in (("grad", grads), ("after", after), ("loaded", trainable)):
  for name, p in kr.flax_tree(model, values).items():
    for part, value in p.items():
      out[f"{prefix}/{name}/{part}"] = value
# Drawing the noise advances the seed that the stateless step carries: each step gets new noise.
_, advanced = jax.jit(lambda tr, nt: model.stateless_call(tr, nt, x))(trainable, non_trainable)
assert len(non_trainable) == 1 and not np.array_equal(advanced[0], non_trainable[0])
# TensorFlow is installed here, yet the Keras-on-JAX side never loaded it.
assert sys.modules["tensorflow"] is None, sys.modules["tensorflow"]
assert not [m for m in sys.modules if m.startswith("tensorflow.")]
np.savez(sys.argv[2], **out)
"""


def _run(argv, env=None):
  return subprocess.run(argv, capture_output=True, text=True, env=env or ENV, timeout=600,
                        check=False)


def test_keras_on_jax_computes_what_the_port_computes(tmp_path):
  model = models.CVAE(LATENT, rngs=nnx.Rngs(0))
  rng = np.random.default_rng(1)
  for name in ("enc_conv1", "enc_conv2", "enc_dense", "dec_dense", "dec_deconv1", "dec_deconv2",
               "dec_deconv3"):
    bias = getattr(model, name).bias  # the init zeroes them, which would leave the bias mapping untested
    bias[...] = 0.1 * rng.normal(size=bias.shape).astype(np.float32)
  x = (rng.random((BATCH, 28, 28, 1)) > 0.5).astype(np.float32)
  eps = rng.normal(size=(BATCH, LATENT)).astype(np.float32)
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)

  def loss_fn(params):
    x_logits, z, mean, logvar = nnx.merge(graphdef, params, rest)(x, eps)
    return losses.negative_elbo_terms(x_logits, x, z, mean, logvar)["loss"].mean()

  loss, grads = jax.jit(jax.value_and_grad(loss_fn))(params)
  params = jax.tree.map(np.asarray, nnx.to_pure_dict(params))
  grads = jax.tree.map(np.asarray, nnx.to_pure_dict(grads))
  tx = keras_adam(LR)
  updates, _ = tx.update(grads, tx.init(params), params)
  after = jax.tree.map(lambda p, u: np.asarray(p + u), params, updates)

  np.savez(tmp_path / "in.npz", x=x, eps=eps,
           **{f"{n}/{k}": v for n, p in params.items() for k, v in p.items()})
  done = _run([sys.executable, "-c", KERAS_SIDE, str(tmp_path / "in.npz"), str(tmp_path / "out.npz"),
               str(LR)])
  assert done.returncode == 0, done.stderr[-3000:]
  keras_side = np.load(tmp_path / "out.npz")
  np.testing.assert_allclose(keras_side["loss"], loss, **ACT_TOL)
  for name in params:
    for key in ("kernel", "bias"):
      # The converter round trip is exact; the rest is float rounding.
      np.testing.assert_array_equal(keras_side[f"loaded/{name}/{key}"], params[name][key])
      g = grads[name][key]
      np.testing.assert_allclose(keras_side[f"grad/{name}/{key}"], g, rtol=GRAD_RTOL,
                                 atol=GRAD_ATOL_PER_MAX * np.abs(g).max(),
                                 err_msg=f"gradient of {name}.{key}")
      np.testing.assert_allclose(keras_side[f"after/{name}/{key}"], after[name][key], rtol=0,
                                 atol=PARAM_ATOL, err_msg=f"{name}.{key} after one Adam step")


def test_writes_the_main_jobs_rows(tmp_path, idx_dir):
  # 80 train images in batches of 7: two 4-step chunks, three single steps and a batch of 3.
  out = tmp_path / "keras.jsonl"
  done = _run([sys.executable, "-m", "benchmarks.peers.keras_reference", "--data", f"idx:{idx_dir}",
               "--epochs", "2", "--batch-size", "7", "--latent-dim", "2", "--steps-per-chunk", "4",
               "--out", str(out)])
  assert done.returncode == 0, done.stderr[-3000:]
  meta = json.loads(done.stdout.splitlines()[0])["meta"]
  assert meta["framework"] == "keras_jax" and meta["backend"] == "jax"
  assert meta["train_size"] == 80 and meta["test_size"] == 24 and meta["precision"] == "float32"
  rows = [json.loads(line) for line in out.read_text().splitlines()]
  assert [r["epoch"] for r in rows] == [1, 2]
  for row in rows:
    assert set(ROW_KEYS) <= set(row), row
    assert all(math.isfinite(row[k]) for k in ROW_KEYS)
    # 784 Bernoulli pixels: an untrained model's -ELBO is some hundreds of nats.
    assert 100 < row["train_loss"] < 1000 and -1000 < row["test_elbo"] < -100
  # Every shape compiles in the first epoch; the second reuses them.
  assert rows[0]["compile_seconds"] > 0 and rows[1]["compile_seconds"] == 0
  assert rows[1]["train_loss"] < rows[0]["train_loss"]


@pytest.mark.parametrize("argv,message", [
    (["--batch-size", "0"], "--batch-size must be >= 1"),
    (["--out", "EXISTING"], "exists; choose a new file"),
])
def test_bad_input_is_one_line_error(argv, message, tmp_path):
  existing = tmp_path / "earlier.jsonl"
  existing.write_text("keep me\n")
  argv = [str(existing) if a == "EXISTING" else a for a in argv]
  done = _run([sys.executable, "-m", "benchmarks.peers.keras_reference", "--data", "mnist-5k", *argv])
  assert done.returncode == 2
  assert done.stderr.startswith("error: ") and message in done.stderr
  assert done.stderr.count("\n") == 1
  assert existing.read_text() == "keep me\n"


def test_refuses_keras_loaded_with_another_backend():
  done = _run([sys.executable, "-c", "import keras; import benchmarks.peers.keras_reference"],
              env={**ENV, "KERAS_BACKEND": "numpy"})
  assert done.returncode != 0
  assert "needs Keras on JAX, but Keras was imported with the numpy backend" in done.stderr


def test_throughput_of_keras_fit(tmp_path):
  path = tmp_path / "fit.json"
  done = _run([sys.executable, "-m", "benchmarks.throughput", "--framework", "keras_jax",
               "--keras-form", "fit", "--batch-size", "4", "--latent-dim", "2", "--steps", "1",
               "--steps-per-chunk", "2", "--out", str(path)])
  assert done.returncode == 0, done.stderr[-3000:]
  result = json.loads(path.read_text())
  assert result["framework"] == "keras_jax" and result["keras_form"] == "fit"
  assert result["precision"] == "float32"
  assert result["steps_per_call"] == 10  # 5 executions of 2 steps each per fit call
  assert result["images_per_sec"] > 0 and result["eval_images_per_sec"] > 0
