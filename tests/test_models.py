"""The models by name, their interface, the GEMM layers and the exact fast kernels."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from vae_jax import config as config_lib
from vae_jax.nn import kernels, layers, models, resolve
from vae_jax.errors import UserError


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


# ---------------------------------------------------------------- layers

def _conv_pair(cls, gemm_cls, *args, activation=None, **kwargs):
  """A Flax layer and the GEMM layer built with the same arguments and the same key."""
  flax_layer = cls(*args, rngs=nnx.Rngs(3), **kwargs)
  gemm = gemm_cls(*args, activation=activation, rngs=nnx.Rngs(3), **kwargs)
  _random_bias(flax_layer, 5)
  _random_bias(gemm, 5)
  return flax_layer, gemm


@pytest.mark.parametrize("kind,args,kwargs,activation,covered", [
    ("conv", (3, 4, (3, 3), 2), dict(padding="VALID"), jax.nn.relu, True),
    ("conv", (3, 4, (3, 3), 1), dict(padding="SAME"), jnp.tanh, True),
    ("conv", (3, 4, (3, 3), 1), dict(padding="SAME", kernel_dilation=2), None, False),
    ("conv_transpose", (3, 4, (3, 3), 2), dict(padding="SAME"), None, True),
    ("conv_transpose", (3, 8, (3, 3), 1), dict(padding="SAME"), jax.nn.relu, False),
])
def test_gemm_layers_are_flax_layers_with_the_same_params_outputs_and_gradients(
    kind, args, kwargs, activation, covered):
  cls, gemm_cls = ((nnx.Conv, layers.GemmConv) if kind == "conv"
                   else (nnx.ConvTranspose, layers.GemmConvTranspose))
  flax_layer, gemm = _conv_pair(cls, gemm_cls, *args, activation=activation, **kwargs)
  want_params = nnx.to_pure_dict(nnx.state(flax_layer, nnx.Param))
  got_params = nnx.to_pure_dict(nnx.state(gemm, nnx.Param))
  assert got_params.keys() == want_params.keys() == {"kernel", "bias"}
  for k in want_params:
    np.testing.assert_array_equal(got_params[k], want_params[k])
  used = (gemm._gemm_pads if kind == "conv" else gemm._gemm_stride)(jnp.zeros((1, 7, 6, 3)))
  assert (used is not None) == covered
  x = jax.random.normal(jax.random.key(8), (2, 7, 6, 3))
  act = activation or (lambda y: y)
  reference = lambda x, k, b: act(nnx.merge(*_with(flax_layer, k, b))(x))
  fast = lambda x, k, b: nnx.merge(*_with(gemm, k, b))(x)
  cotangent = jax.random.normal(jax.random.key(9), reference(x, gemm.kernel[...], gemm.bias[...]).shape)
  _assert_same_values_and_grads(fast, reference, (x, gemm.kernel[...], gemm.bias[...]), cotangent)


def _with(layer, kernel, bias):
  """The layer's graphdef and a state holding `kernel` and `bias` (so gradients reach them)."""
  graphdef, state = nnx.split(layer)
  nnx.replace_by_pure_dict(state, {"kernel": kernel, "bias": bias})
  return graphdef, state


def test_gemm_layers_refuse_an_unknown_impl():
  with pytest.raises(ValueError, match="impl"):
    layers.GemmConv(1, 2, (3, 3), impl="fft", rngs=nnx.Rngs(0))


def test_cvae_params_are_the_tutorial_layers_in_flax_layout():
  """Names, shapes and initial values as a CVAE built from nnx.Conv/ConvTranspose/Linear, so
  checkpoints and the TF weight converters see the same tree."""
  got = nnx.to_pure_dict(nnx.state(models.CVAE(5, rngs=nnx.Rngs(2)), nnx.Param))
  rngs, init = nnx.Rngs(2), dict(kernel_init=nnx.initializers.glorot_uniform())
  want = {
      "enc_conv1": nnx.Conv(1, 32, (3, 3), 2, padding="VALID", rngs=rngs, **init),
      "enc_conv2": nnx.Conv(32, 64, (3, 3), 2, padding="VALID", rngs=rngs, **init),
      "enc_dense": nnx.Linear(2304, 10, rngs=rngs, **init),
      "dec_dense": nnx.Linear(5, 1568, rngs=rngs, **init),
      "dec_deconv1": nnx.ConvTranspose(32, 64, (3, 3), 2, rngs=rngs, **init),
      "dec_deconv2": nnx.ConvTranspose(64, 32, (3, 3), 2, rngs=rngs, **init),
      "dec_deconv3": nnx.ConvTranspose(32, 1, (3, 3), 1, rngs=rngs, **init),
  }
  assert got.keys() == want.keys()
  for name, layer in want.items():
    for key, value in nnx.to_pure_dict(nnx.state(layer, nnx.Param)).items():
      np.testing.assert_array_equal(got[name][key], value, err_msg=f"{name}.{key}")


# ---------------------------------------------------------------- models by name

@pytest.mark.parametrize("name", ["cvae", "mlp", "mlp_ae", "conv_ae"])
def test_every_model_has_the_interface(name):
  config = dataclasses.replace(config_lib.Config(), model=name, latent_dim=3)
  model = models.create_model(config, jax.random.key(0))
  assert model.latent_dim == 3 and model.stochastic == (name in ("cvae", "mlp"))
  x = (jax.random.uniform(jax.random.key(1), (2, 28, 28, 1)) > 0.5).astype(jnp.float32)
  code, logvar = model.encode(x)
  assert code.shape == (2, 3)
  assert (logvar.shape == (2, 3)) if model.stochastic else logvar is None
  logits = model.decode(code)
  assert logits.shape == (2, 28, 28, 1)
  np.testing.assert_allclose(model.decode(code, apply_sigmoid=True), jax.nn.sigmoid(logits),
                             rtol=1e-6)
  assert model.sample(jax.random.key(2), n=4).shape == (4, 28, 28, 1)


def test_mlp_defaults_are_the_iwae_papers_net():
  """784-200-200-50 with tanh (Burda et al. 2016), the decoder mirrored."""
  model = models.create_model(dataclasses.replace(config_lib.Config(), model="mlp"),
                              jax.random.key(0))
  shapes = jax.tree.map(np.shape, nnx.to_pure_dict(nnx.state(model, nnx.Param)))
  assert [shapes["enc_hidden"][i]["kernel"] for i in (0, 1)] == [(784, 200), (200, 200)]
  assert shapes["enc_out"]["kernel"] == (200, 100)  # mean and logvar
  assert [shapes["dec_hidden"][i]["kernel"] for i in (0, 1)] == [(50, 200), (200, 200)]
  assert shapes["dec_out"]["kernel"] == (200, 784)
  x = jnp.ones((1, 28, 28, 1))
  h = jnp.tanh(model.enc_hidden[1](jnp.tanh(model.enc_hidden[0](x.reshape(1, -1)))))
  np.testing.assert_allclose(model.encode(x)[0], model.enc_out(h)[:, :50], rtol=1e-5, atol=1e-6)


def test_register_model_from_outside_and_unknown_names():
  @models.register_model("test_linear_ae")
  class LinearAE(models.Model):  # pylint: disable=unused-variable
    stochastic = False

    def __init__(self, latent_dim, rngs):
      self.latent_dim = latent_dim
      self.enc = nnx.Linear(784, latent_dim, rngs=rngs)
      self.dec = nnx.Linear(latent_dim, 784, rngs=rngs)

    @classmethod
    def from_config(cls, config, rngs):
      return cls(config.latent_dim, rngs)

    def encode(self, x_BHWC):
      return self.enc(x_BHWC.reshape(x_BHWC.shape[0], -1)), None

    def decode_logits(self, z_BxL):
      return self.dec(z_BxL).reshape(-1, 28, 28, 1)

  try:
    config = dataclasses.replace(config_lib.Config(), model="test_linear_ae", objective="l2",
                                 latent_dim=4)
    resolve.check(config)
    model = models.create_model(config, jax.random.key(0))
    assert model.decode(model.encode(jnp.zeros((2, 28, 28, 1)))[0]).shape == (2, 28, 28, 1)
    with pytest.raises(ValueError, match="already registered"):
      models.register_model("test_linear_ae")(LinearAE)
  finally:
    del models.MODELS["test_linear_ae"]
  with pytest.raises(UserError, match="--model 'test_linear_ae' is not registered; known: conv_ae"):
    resolve.check(dataclasses.replace(config_lib.Config(), model="test_linear_ae"))
