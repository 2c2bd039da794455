"""benchmarks.step_profile's reading of compiled HLO: GEMM FLOPs from shapes, layers from scopes."""

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from benchmarks import step_profile
from vae_jax.nn import layers


def _classified(fn, *args):
  return step_profile.classify(step_profile.parse_hlo(jax.jit(fn).lower(*args).compile().as_text()))


def test_dot_flops_are_two_m_n_k():
  a, b = jnp.ones((64, 48)), jnp.ones((48, 16))
  info = _classified(lambda a, b: jnp.tanh(a @ b), a, b)
  gemms = [v for v in info.values() if v[0] == "gemm"]
  assert len(gemms) == 1
  assert gemms[0][2] == 2 * 64 * 48 * 16


def test_rows_contracted_dot_counts_the_contracted_axis():
  a, b = jnp.ones((300, 7)), jnp.ones((300, 5))
  info = _classified(lambda a, b: jax.lax.dot_general(a, b, (((0,), (0,)), ((), ()))), a, b)
  flops = [v[2] for v in info.values() if v[0] == "gemm"]
  assert flops == [2 * 7 * 5 * 300]


def test_convolution_flops():
  x, k = jnp.ones((2, 9, 9, 3)), jnp.ones((3, 3, 3, 4))
  conv = lambda x, k: jax.lax.conv_general_dilated(x, k, (1, 1), "VALID",
                                                   dimension_numbers=("NHWC", "HWIO", "NHWC"))
  info = _classified(conv, x, k)
  flops = [v[2] for v in info.values() if v[0] == "gemm"]
  # Each of the 2*7*7*4 outputs is a sum over a 3x3x3 window: one multiply and one add each.
  assert flops == [2 * (2 * 7 * 7 * 4) * (3 * 3 * 3)]


def test_layer_scope_reaches_forward_and_backward_gemms():
  layer = layers.GemmConv(2, 3, (3, 3), 2, padding="VALID", activation=jax.nn.relu,
                          rngs=nnx.Rngs(0))
  graphdef, params = nnx.split(layer)
  x = jnp.asarray(np.random.default_rng(0).normal(size=(4, 9, 9, 2)), jnp.float32)

  def loss(params, x):
    return jnp.sum(nnx.merge(graphdef, params)(x) ** 2)

  info = _classified(jax.grad(loss, argnums=(0, 1)), params, x)
  scope = layers.scope_name(layer)
  assert scope == "GemmConv_2_3"
  gemms = [v for v in info.values() if v[0] == "gemm"]
  # Forward patches @ kernel, kernel gradient patches^T @ dy, input gradient (a convolution).
  assert len(gemms) == 3 and all(v[1] == scope for v in gemms)
  # Both dots multiply the 4*4*4 output pixels' 18-long windows by 3 output channels.
  dots = sorted(v[2] for v in gemms if "dot_general" in v[3])
  assert dots == [2 * (4 * 4 * 4) * 18 * 3] * 2


def test_entry_with_a_long_tuple_is_read():
  """XLA writes /*index=5*/ comments into long tuple signatures; the entry's GEMM is still found."""
  args = [jnp.ones((8, 8)) * i for i in range(7)]
  info = _classified(lambda *a: tuple(x @ a[0] for x in a), *args)
  assert sum(v[0] == "gemm" for v in info.values()) == 7
  assert all(v[2] == 2 * 8 * 8 * 8 for v in info.values() if v[0] == "gemm")
