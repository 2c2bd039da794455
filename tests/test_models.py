"""The CVAE's architecture, API and the exact fast transposed convolution."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from vae_jax import models


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


@pytest.mark.parametrize("fast,stride,cin,cout", [
    (models.phase_conv_transpose, 2, 32, 64),
    (models.phase_conv_transpose, 2, 3, 5),
    (models.tap_matmul_conv_transpose, 1, 32, 1),
    (models.tap_matmul_conv_transpose, 1, 4, 3),
])
def test_fast_conv_transpose_equals_xla_outputs_and_gradients(fast, stride, cin, cout):
  layer = nnx.ConvTranspose(cin, cout, (3, 3), strides=stride, padding="SAME", rngs=nnx.Rngs(0))
  layer.bias[...] = jax.random.normal(jax.random.key(4), (cout,))
  x = jax.random.normal(jax.random.key(5), (3, 7, 7, cin))
  kernel, bias = layer.kernel[...], layer.bias[...]
  cotangent = jax.random.normal(jax.random.key(6), (3, 7 * stride, 7 * stride, cout))

  def reference(x, kernel, bias):
    return jax.lax.conv_transpose(x, kernel, (stride, stride), "SAME",
                                  dimension_numbers=("NHWC", "HWIO", "NHWC")) + bias.reshape(1, 1, 1, -1)

  np.testing.assert_allclose(layer(x), reference(x, kernel, bias), rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(fast(x, kernel, bias), reference(x, kernel, bias), rtol=1e-5, atol=1e-5)
  grads = jax.grad(lambda *a: jnp.sum(fast(*a) * cotangent), argnums=(0, 1, 2))(x, kernel, bias)
  want = jax.grad(lambda *a: jnp.sum(reference(*a) * cotangent), argnums=(0, 1, 2))(x, kernel, bias)
  for g, w in zip(grads, want):
    np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-4)


def test_whole_model_same_with_either_conv_transpose():
  a = models.CVAE(4, rngs=nnx.Rngs(7), conv_transpose="gemm")
  b = models.CVAE(4, rngs=nnx.Rngs(7), conv_transpose="xla")
  x = (jax.random.uniform(jax.random.key(8), (2, 28, 28, 1)) > 0.5).astype(jnp.float32)
  eps = jax.random.normal(jax.random.key(9), (2, 4))
  np.testing.assert_allclose(a(x, eps)[0], b(x, eps)[0], rtol=1e-5, atol=1e-5)
