"""The CVAE's architecture, API and the exact fast transposed convolution."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from vae_jax import kernels, models


@pytest.fixture(scope="module")
def model():
  return models.CVAE(latent_dim=3, rngs=nnx.Rngs(0))


def test_encoder_shapes_follow_keras_valid_padding(model):
  x = jnp.zeros((2, 28, 28, 1))
  h1 = model.enc_conv1(x)
  h2 = model.enc_conv2(h1)
  assert h1.shape == (2, 13, 13, 32)
  assert h2.shape == (2, 6, 6, 64)
  assert model.enc_dense.kernel.shape == (2304, 6)
  mean, logvar = model.encode(x)
  assert mean.shape == logvar.shape == (2, 3)


def test_decoder_shapes_and_sigmoid(model):
  z = jax.random.normal(jax.random.key(0), (2, 3))
  logits = model.decode(z)
  assert logits.shape == (2, 28, 28, 1)
  np.testing.assert_allclose(model.decode(z, apply_sigmoid=True), jax.nn.sigmoid(logits), rtol=1e-6)


def test_sample_uses_the_key_or_given_eps(model):
  a = model.sample(jax.random.key(1), n=4)
  b = model.sample(jax.random.key(1), n=4)
  c = model.sample(jax.random.key(2), n=4)
  assert a.shape == (4, 28, 28, 1)
  np.testing.assert_array_equal(a, b)
  assert not np.allclose(a, c)
  eps = jax.random.normal(jax.random.key(1), (4, 3))
  np.testing.assert_array_equal(model.sample(eps_BxL=eps), a)
  with pytest.raises(ValueError):
    model.sample()


def test_reparameterize_matches_formula():
  mean, logvar = jnp.array([[1.0, -2.0]]), jnp.array([[0.5, -1.0]])
  z = models.reparameterize(jax.random.key(3), mean, logvar)
  eps = jax.random.normal(jax.random.key(3), (1, 2))
  np.testing.assert_allclose(z, mean + np.exp(0.5 * np.asarray(logvar)) * eps, rtol=1e-6)


def test_invalid_constructor_arguments():
  with pytest.raises(ValueError):
    models.CVAE(0, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError):
    models.CVAE(2, rngs=nnx.Rngs(0), conv_transpose="fft")


def _assert_same_values_and_grads(fast, reference, args, cotangent):
  np.testing.assert_allclose(fast(*args), reference(*args), rtol=1e-5, atol=1e-5)
  argnums = tuple(range(len(args)))
  grads = jax.grad(lambda *a: jnp.sum(fast(*a) * cotangent), argnums=argnums)(*args)
  want = jax.grad(lambda *a: jnp.sum(reference(*a) * cotangent), argnums=argnums)(*args)
  for g, w in zip(grads, want):
    np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-4)


def _random_bias(layer, key):
  # Non-zero biases, so that ReLU cuts through the outputs and bias gradients matter.
  layer.bias[...] = jax.random.normal(jax.random.key(key), layer.bias.shape)
  return layer.kernel[...], layer.bias[...]


@pytest.mark.parametrize("stride,cin,cout,relu", [
    (2, 32, 64, True), (2, 3, 5, False), (1, 32, 1, False), (1, 4, 3, False)])
def test_fast_conv_transpose_equals_xla_outputs_and_gradients(stride, cin, cout, relu):
  layer = nnx.ConvTranspose(cin, cout, (3, 3), strides=stride, padding="SAME", rngs=nnx.Rngs(0))
  kernel, bias = _random_bias(layer, 4)
  x = jax.random.normal(jax.random.key(5), (3, 7, 6, cin))  # not square: rows and columns apart
  cotangent = jax.random.normal(jax.random.key(6), (3, 7 * stride, 6 * stride, cout))

  def reference(x, kernel, bias):
    y = jax.lax.conv_transpose(x, kernel, (stride, stride), "SAME",
                               dimension_numbers=("NHWC", "HWIO", "NHWC")) + bias.reshape(1, 1, 1, -1)
    return jax.nn.relu(y) if relu else y

  flax_out = jax.nn.relu(layer(x)) if relu else layer(x)  # the reference is what Flax computes
  np.testing.assert_allclose(flax_out, reference(x, kernel, bias), rtol=1e-5, atol=1e-5)
  if stride == 2:
    fast = lambda x, k, b: kernels.phase_conv_transpose(x, k, b, relu)
  else:
    fast = kernels.tap_matmul_conv_transpose
  _assert_same_values_and_grads(fast, reference, (x, kernel, bias), cotangent)


@pytest.mark.parametrize("size,cin,cout", [(28, 1, 32), (13, 32, 64), (8, 3, 5)])
def test_patch_conv_equals_flax_conv_outputs_and_gradients(size, cin, cout):
  layer = nnx.Conv(cin, cout, (3, 3), strides=2, padding="VALID", rngs=nnx.Rngs(1))
  kernel, bias = _random_bias(layer, 7)
  x = jax.random.normal(jax.random.key(8), (2, size, size + 1, cin))
  out = (size - 3) // 2 + 1, (size + 1 - 3) // 2 + 1
  cotangent = jax.random.normal(jax.random.key(9), (2, *out, cout))

  def reference(x, kernel, bias):
    return jax.nn.relu(jax.lax.conv_general_dilated(
        x, kernel, (2, 2), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC")) + bias.reshape(1, 1, 1, -1))

  np.testing.assert_allclose(jax.nn.relu(layer(x)), reference(x, kernel, bias), rtol=1e-5, atol=1e-5)
  fast = lambda x, k, b: kernels.patch_conv(x, k, b, 2)
  _assert_same_values_and_grads(fast, reference, (x, kernel, bias), cotangent)


def test_whole_model_same_with_either_conv_transpose():
  a = models.CVAE(4, rngs=nnx.Rngs(7), conv_transpose="gemm")
  b = models.CVAE(4, rngs=nnx.Rngs(7), conv_transpose="xla")
  x = (jax.random.uniform(jax.random.key(8), (2, 28, 28, 1)) > 0.5).astype(jnp.float32)
  eps = jax.random.normal(jax.random.key(9), (2, 4))
  np.testing.assert_allclose(a(x, eps)[0], b(x, eps)[0], rtol=1e-5, atol=1e-5)
