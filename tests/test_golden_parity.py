"""Parity with stored TensorFlow numbers (benchmarks/peers/tf_golden.py): runs where TF is not installed.

tests/test_parity.py compares live against TensorFlow; this file checks the same quantities against
TF's outputs saved in tests/data/tf_golden.npz, so GPU machines without TF check them too. On GPUs
run it with JAX_DEFAULT_MATMUL_PRECISION=highest: TF32 matmuls would exceed float32 tolerances.
Tolerances as in tests/test_parity.py, except the Adam step: 2e-2 * lr, because on an H100 the
xla variant's cuDNN kernel gradient rounded one of 18,432 entries to 1.6e-2 * lr after the step
(Adam's first step is ~lr * sign(grad), so near-zero gradients amplify rounding; a wrong layout
gives errors of order lr).
"""

import os

import jax
import numpy as np
import optax
import pytest
from flax import nnx

from vae_jax.nn import losses, models
from vae_jax.training.train import keras_adam

GOLDEN = os.path.join(os.path.dirname(__file__), "data", "tf_golden.npz")
LR = 1e-4


@pytest.fixture(scope="module")
def golden():
  with np.load(GOLDEN) as f:
    return dict(f)


def _tree(golden, prefix):
  tree = {}
  for name, value in golden.items():
    if name.startswith(prefix + "/"):
      _, layer, key = name.split("/")
      tree.setdefault(layer, {})[key] = value
  return tree


@pytest.mark.parametrize("conv_transpose", ["xla", "gemm"])
def test_golden_parity(golden, conv_transpose):
  model = models.CVAE(golden["eps"].shape[1], rngs=nnx.Rngs(0), conv_transpose=conv_transpose)
  graphdef, params = nnx.split(model)
  nnx.replace_by_pure_dict(params, _tree(golden, "param"))
  x, eps = golden["x"], golden["eps"]

  def loss_fn(params):
    x_logits, z, mean, logvar = nnx.merge(graphdef, params)(x, eps)
    return losses.negative_elbo_terms(x_logits, x, z, mean, logvar)["loss"].mean(), (
        x_logits, mean, logvar)

  (loss, (logits, mean, logvar)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
  for got, name in ((mean, "mean"), (logvar, "logvar"), (logits, "logits"), (loss, "loss")):
    np.testing.assert_allclose(got, golden[name], rtol=1e-5, atol=1e-5, err_msg=name)
  want_grads = _tree(golden, "grad")
  got_grads = nnx.to_pure_dict(grads)
  for layer, arrays in want_grads.items():
    for key, want in arrays.items():
      np.testing.assert_allclose(got_grads[layer][key], want, rtol=1e-4,
                                 atol=2e-5 * np.abs(want).max(), err_msg=f"grad {layer}.{key}")
  tx = keras_adam(LR)
  updates, _ = tx.update(grads, tx.init(params), params)
  after = nnx.to_pure_dict(optax.apply_updates(params, updates))
  for layer, arrays in _tree(golden, "after_adam").items():
    for key, want in arrays.items():
      np.testing.assert_allclose(after[layer][key], want, rtol=0, atol=2e-2 * LR,
                                 err_msg=f"{layer}.{key} after one Adam step")

