"""Mixed precision (--dtype bfloat16): bfloat16 GEMM inputs, float32 accumulation and everything else.

Each GEMM kernel with gemm_dtype=bfloat16 is compared with its float32 form: on inputs that
bfloat16 represents exactly the two must agree to float32 accumulation error (products of
bfloat16 numbers are exact in float32, so only a GEMM that rounds its output or accumulates in
bfloat16 would differ), and on general inputs within bfloat16's rounding.
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from vae_jax import config as config_lib
from vae_jax.nn import kernels, layers
from vae_jax.training import train

BF16 = jnp.bfloat16

# name -> (kernel(x, k, b, gemm_dtype, relu), x shape, kernel shape, output shape)
KERNELS = {
    "patch_conv": (lambda x, k, b, g, relu: kernels.patch_conv(x, k, b, 2, relu, g),
                   (2, 8, 9, 3), (3, 3, 3, 5), (2, 3, 4, 5)),
    "phase_conv_transpose": (lambda x, k, b, g, relu: kernels.phase_conv_transpose(x, k, b, relu, g),
                             (2, 4, 3, 6), (3, 3, 6, 5), (2, 8, 6, 5)),
    "tap_matmul_conv_transpose": (lambda x, k, b, g, relu: kernels.tap_matmul_conv_transpose(x, k, b, g),
                                  (2, 5, 4, 6), (3, 3, 6, 1), (2, 5, 4, 1)),
    "dense": (lambda x, k, b, g, relu: kernels.dense(x, k, b, g), (6, 20), (20, 7), (6, 7)),
}


def _inputs(name, representable: bool):
  _, x_shape, k_shape, y_shape = KERNELS[name]
  keys = jax.random.split(jax.random.key(len(name)), 4)
  arrays = [jax.random.normal(key, shape) for key, shape in
            zip(keys, (x_shape, k_shape, k_shape[-1:], y_shape))]
  return [a.astype(BF16).astype(jnp.float32) if representable else a for a in arrays]


def _value_and_grads(name, gemm_dtype, x, k, b, cotangent, relu):
  fn = KERNELS[name][0]
  y, vjp = jax.vjp(lambda x, k, b: fn(x, k, b, gemm_dtype, relu), x, k, b)
  return (y, *vjp(cotangent))


def _rel(a, b):
  return float(jnp.linalg.norm((a - b).ravel()) / jnp.linalg.norm(b.ravel()))


@pytest.mark.parametrize("name", sorted(KERNELS))
def test_bf16_gemms_accumulate_in_float32(name):
  x, k, b, cotangent = _inputs(name, representable=True)
  mixed = _value_and_grads(name, BF16, x, k, b, cotangent, relu=True)
  exact = _value_and_grads(name, None, x, k, b, cotangent, relu=True)
  for what, m, e in zip(("y", "dx", "dkernel", "dbias"), mixed, exact):
    assert m.dtype == jnp.float32, (what, m.dtype)
    assert _rel(m, e) < 1e-5, (what, _rel(m, e))


@pytest.mark.parametrize("name", sorted(KERNELS))
def test_bf16_kernels_match_float32_within_bf16_rounding(name):
  x, k, b, cotangent = _inputs(name, representable=False)
  # Without the ReLU: an output near 0 can change sign under rounding and move its gradient.
  mixed = _value_and_grads(name, BF16, x, k, b, cotangent, relu=False)
  exact = _value_and_grads(name, None, x, k, b, cotangent, relu=False)
  for what, m, e in zip(("y", "dx", "dkernel", "dbias"), mixed, exact):
    assert m.dtype == jnp.float32, (what, m.dtype)
    assert _rel(m, e) < 1e-2, (what, _rel(m, e))
  assert _rel(mixed[0], exact[0]) > 1e-5  # the GEMM inputs really were rounded to bfloat16


def test_valid_conv_input_grad_is_autodiffs():
  for size in (8, 9):  # both remainders of (size - 3) % 2
    x = jax.random.normal(jax.random.key(size), (2, size, size + 1, 3))
    kernel = jax.random.normal(jax.random.key(1), (3, 3, 3, 4))
    conv = lambda x_: jax.lax.conv_general_dilated(x_, kernel, (2, 2), "VALID",
                                                   dimension_numbers=("NHWC", "HWIO", "NHWC"))
    y, vjp = jax.vjp(conv, x)
    dy = jax.random.normal(jax.random.key(2), y.shape)
    np.testing.assert_allclose(kernels.valid_conv_input_grad(dy, kernel, 2, x.shape[1:3]), vjp(dy)[0],
                               rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("impl", ["gemm", "xla"])
def test_mixed_layers_keep_float32_params_and_outputs(impl):
  x = jax.random.normal(jax.random.key(0), (2, 7, 7, 4))
  make = lambda cls, g, *a, **kw: cls(*a, gemm_dtype=g, rngs=nnx.Rngs(3), **kw)
  for cls, args, kw in [(layers.GemmConv, (4, 6, (3, 3), 2), dict(padding="VALID", impl=impl)),
                        (layers.GemmConvTranspose, (4, 6, (3, 3), 2), dict(padding="SAME", impl=impl)),
                        (layers.Linear, (4, 6), {})]:
    mixed, exact = make(cls, BF16, *args, **kw), make(cls, None, *args, **kw)
    assert mixed.kernel[...].dtype == jnp.float32
    y_mixed, y_exact = mixed(x), exact(x)
    assert y_mixed.dtype == jnp.float32, cls
    assert 0 < _rel(y_mixed, y_exact) < 1e-2, cls
  with pytest.raises(ValueError, match="gemm_dtype"):
    layers.GemmConv(4, 6, (3, 3), gemm_dtype=BF16, dtype=BF16, rngs=nnx.Rngs(0))


def test_bf16_training_lowers_the_loss_with_float32_state(digits):
  config = dataclasses.replace(config_lib.tiny(), dtype="bfloat16", learning_rate=1e-3)
  graphdef, state = train.init_state(config)
  step = jax.jit(train.make_train_step(graphdef, train.make_optimizer(config), config, None))
  x = jnp.asarray(digits[0][:8] >= 128, jnp.uint8)[..., None]
  mask, key = jnp.ones((8,)), jax.random.key(0)
  losses = []
  for _ in range(30):
    state, sums = step(state, x, mask, key)
    losses.append(float(sums["loss"]) / 8)
  assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(state.params))
  assert sums["loss"].dtype == jnp.float32
  assert np.mean(losses[-5:]) < 0.8 * np.mean(losses[:5]), losses
