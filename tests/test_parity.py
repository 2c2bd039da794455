"""The Flax CVAE computes what the TensorFlow tutorial's model computes: forward, loss, gradients, one Adam step.

Float32 tolerances, from the errors measured on CPU (TF with oneDNN vs XLA, different summation orders):
  activations and loss: rtol 1e-5, atol 1e-5 (measured <= 3e-7; a layout error gives O(1)).
  gradients: rtol 1e-4, atol 2e-5 * max|grad| per tensor. Each entry sums batch x pixel terms of mixed
    sign, so entries near zero carry the rounding of the large ones (measured <= 3.4e-6 * max|grad|).
  one Adam step: parameters within 1e-2 * lr (measured <= 3e-3 * lr). Adam's first step is about
    lr * sign(grad), so entries whose gradient is near Adam's epsilon amplify the gradient's rounding.
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from vae_jax.nn import losses, models
from vae_jax.training.train import keras_adam

# TensorFlow and the tutorial's model, imported by the fixture below when this file's tests run:
# every pytest-xdist worker imports every test file, and TensorFlow's import takes seconds.
tf = tfr = None


@pytest.fixture(scope="module", autouse=True)
def _tensorflow():
  global tf, tfr  # pylint: disable=global-statement
  import tensorflow  # pylint: disable=import-outside-toplevel
  from benchmarks.peers import tf_reference  # pylint: disable=import-outside-toplevel
  tf, tfr = tensorflow, tf_reference

BATCH = 8
LATENT = 4
LR = 1e-4
ACT_TOL = dict(rtol=1e-5, atol=1e-5)
GRAD_RTOL = 1e-4
GRAD_ATOL_PER_MAX = 2e-5
PARAM_ATOL = 1e-2 * LR


def _data(latent_dim):
  rng = np.random.default_rng(0)
  x = (rng.random((BATCH, 28, 28, 1)) > 0.5).astype(np.float32)
  eps = rng.normal(size=(BATCH, latent_dim)).astype(np.float32)
  return x, eps


def _models(direction, conv_transpose, latent_dim=LATENT):
  """A TF and a Flax CVAE with the same weights, initialized on one side and converted to the other."""
  tf.keras.utils.set_random_seed(0)
  # Keras 3 creates the weights at construction: each Sequential starts with an InputLayer.
  tf_model = tfr.CVAE(latent_dim)
  flax_model = models.CVAE(latent_dim, rngs=nnx.Rngs(0), conv_transpose=conv_transpose)
  # Both inits zero the biases, which would leave the bias mapping untested.
  rng = np.random.default_rng(1)
  if direction == "tf_to_flax":
    for weights in tfr.tf_weights(tf_model).values():
      weights["bias"].assign(0.1 * rng.normal(size=weights["bias"].shape).astype(np.float32))
    tfr.load_tf_into_flax(tf_model, flax_model)
  else:
    for name in tfr.FLAX_TO_KERAS:
      bias = getattr(flax_model, name).bias
      bias[...] = 0.1 * rng.normal(size=bias.shape).astype(np.float32)
    tfr.load_flax_into_tf(flax_model, tf_model)
  return tf_model, flax_model


def _flax_params(flax_model):
  return jax.tree.map(np.asarray, nnx.to_pure_dict(nnx.state(flax_model, nnx.Param)))


def _assert_forward_parity(tf_model, flax_model, x, eps):
  mean_tf, logvar_tf = tf_model.encode(x)
  z_tf = tf_model.reparameterize(mean_tf, logvar_tf, eps)
  logits_tf = tf_model.decode(z_tf)
  logits, z, mean, logvar = flax_model(x, eps)
  np.testing.assert_allclose(mean, mean_tf, **ACT_TOL)
  np.testing.assert_allclose(logvar, logvar_tf, **ACT_TOL)
  np.testing.assert_allclose(z, z_tf, **ACT_TOL)
  np.testing.assert_allclose(logits, logits_tf, **ACT_TOL)


def _train_step_results(tf_model, flax_model, x, eps):
  """Loss and gradients of both models (gradients in Flax layout), and the TF weights after one Keras Adam step."""
  variables = tfr.tf_weights(tf_model)
  with tf.GradientTape() as tape:
    loss_tf = tfr.compute_loss_with_eps(tf_model, x, eps)
  grads_tf = tape.gradient(loss_tf, variables)
  tf.keras.optimizers.Adam(LR).apply_gradients(
      zip(tf.nest.flatten(grads_tf), tf.nest.flatten(variables)))

  graphdef, params, rest = nnx.split(flax_model, nnx.Param, ...)

  def loss_fn(params):
    x_logits, z, mean, logvar = nnx.merge(graphdef, params, rest)(x, eps)
    return losses.negative_elbo_terms(x_logits, x, z, mean, logvar)["loss"].mean()

  loss, grads = jax.value_and_grad(loss_fn)(params)
  return {"loss_tf": float(loss_tf), "loss": float(loss),
          "grads_tf": tfr.convert_layout(tf.nest.map_structure(lambda g: g.numpy(), grads_tf)),
          "grads": jax.tree.map(np.asarray, nnx.to_pure_dict(grads)),
          "params_tf_after": tfr.flax_params_from_tf(tf_model)}


def _adam_step(params, grads, tx):
  updates, _ = tx.update(grads, tx.init(params), params)
  return optax.apply_updates(params, updates)


def _assert_training_parity(tf_model, flax_model, x, eps):
  params = _flax_params(flax_model)
  r = _train_step_results(tf_model, flax_model, x, eps)
  np.testing.assert_allclose(r["loss"], r["loss_tf"], **ACT_TOL)
  for name, grads_tf in r["grads_tf"].items():
    for key, g_tf in grads_tf.items():
      np.testing.assert_allclose(
          r["grads"][name][key], g_tf, rtol=GRAD_RTOL, atol=GRAD_ATOL_PER_MAX * np.abs(g_tf).max(),
          err_msg=f"gradient of {name}.{key}")
  params_after = _adam_step(params, r["grads"], keras_adam(LR))
  for name, after_tf in r["params_tf_after"].items():
    for key, p_tf in after_tf.items():
      np.testing.assert_allclose(params_after[name][key], p_tf, rtol=0, atol=PARAM_ATOL,
                                 err_msg=f"{name}.{key} after one Adam step")


@pytest.mark.parametrize("conv_transpose", ["xla", "gemm"])
@pytest.mark.parametrize("direction", ["tf_to_flax", "flax_to_tf"])
def test_forward_and_training_parity(direction, conv_transpose):
  tf_model, flax_model = _models(direction, conv_transpose)
  x, eps = _data(LATENT)
  _assert_forward_parity(tf_model, flax_model, x, eps)
  _assert_training_parity(tf_model, flax_model, x, eps)


def test_latent_50_parity():
  tf_model, flax_model = _models("tf_to_flax", "gemm", latent_dim=50)
  x, eps = _data(50)
  _assert_forward_parity(tf_model, flax_model, x, eps)
  _assert_training_parity(tf_model, flax_model, x, eps)


def test_conversion_round_trip_parity():
  """The converters cover every trainable variable and are exact: Flax -> TF -> Flax is the identity."""
  tf_model, flax_model = _models("flax_to_tf", "xla")
  covered = {id(v) for v in tf.nest.flatten(tfr.tf_weights(tf_model))}
  assert covered == {id(v) for v in tf_model.trainable_variables}
  params = _flax_params(flax_model)
  back = tfr.flax_params_from_tf(tf_model)
  for name in params:
    for key in ("kernel", "bias"):
      np.testing.assert_array_equal(back[name][key], params[name][key])


@pytest.mark.parametrize("conv_transpose", ["xla", "gemm"])
@pytest.mark.parametrize("name,wrong_layout", [
    pytest.param("dec_deconv1", lambda k: k.transpose(0, 1, 3, 2), id="deconv1-unflipped"),
    pytest.param("dec_deconv3", lambda k: k.transpose(0, 1, 3, 2), id="deconv3-unflipped"),
    pytest.param("dec_deconv1", lambda k: k.transpose(1, 0, 3, 2), id="deconv1-hw-transposed"),
    pytest.param("enc_conv2", lambda k: k[::-1, ::-1], id="conv2-flipped"),
])
def test_parity_check_rejects_wrong_kernel_layout(name, wrong_layout, conv_transpose):
  """The forward check has teeth: one layer converted with a plausible wrong layout fails it."""
  tf_model, flax_model = _models("tf_to_flax", conv_transpose)
  keras_kernel = tfr.tf_weights(tf_model)[name]["kernel"].numpy()
  wrong = wrong_layout(keras_kernel)
  assert wrong.shape == getattr(flax_model, name).kernel.shape
  getattr(flax_model, name).kernel[...] = wrong
  x, eps = _data(LATENT)
  with pytest.raises(AssertionError):
    _assert_forward_parity(tf_model, flax_model, x, eps)


def test_default_optax_adam_breaks_parity():
  """The Adam check has teeth: optax.adam's default eps (1e-8, on the corrected sqrt(v)) is not Keras' Adam."""
  tf_model, flax_model = _models("tf_to_flax", "xla")
  x, eps = _data(LATENT)
  params = _flax_params(flax_model)
  r = _train_step_results(tf_model, flax_model, x, eps)
  params_after = _adam_step(params, r["grads"], optax.adam(LR))
  worst = max(np.abs(params_after[n][k] - r["params_tf_after"][n][k]).max()
              for n in params for k in ("kernel", "bias"))
  assert worst > 10 * PARAM_ATOL, worst
