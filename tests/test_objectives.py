"""The objectives by name against numpy computations of their formulas on a tiny model."""

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vae_jax import config as config_lib
from vae_jax.nn import models, objectives, resolve
from vae_jax.training import train
from vae_jax.errors import UserError

BATCH, LATENT = 4, 3
LOG2PI = math.log(2 * math.pi)


def _config(**overrides):
  return dataclasses.replace(config_lib.Config(), latent_dim=LATENT, hidden_sizes=(8,),
                             **overrides)


@pytest.fixture(scope="module")
def x():
  return (jax.random.uniform(jax.random.key(1), (BATCH, 28, 28, 1)) > 0.6).astype(jnp.float32)


@pytest.fixture(scope="module")
def key_B():
  return train.example_keys(jax.random.key(2), jnp.arange(BATCH))


@pytest.fixture(scope="module")
def vae():
  return models.create_model(_config(model="mlp"), jax.random.key(0))


def _terms(name, model, x, key_B, kl_weight=1.0, train_=False, **overrides):
  config = _config(model="mlp" if model.stochastic else "mlp_ae", objective=name, **overrides)
  resolve.check(config)
  ctx = objectives.Context(config, kl_weight, x, train_)
  return {k: np.asarray(v, np.float64) for k, v in objectives.get_objective(name).fn(
      model, x, key_B, ctx).items()}


# numpy formulas, from the model's own encoder and decoder outputs

def _np_log_bernoulli(logits, x):
  """sum over pixels of x log sigmoid(l) + (1 - x) log(1 - sigmoid(l)), per example."""
  logits, x = (np.asarray(a, np.float64).reshape(len(a), -1) for a in (logits, x))
  return np.sum(x * logits - np.logaddexp(0.0, logits), axis=-1)


def _np_log_normal(z, mean, logvar):
  return np.sum(-0.5 * ((z - mean) ** 2 * np.exp(-logvar) + logvar + LOG2PI), axis=-1)


def _posterior(model, x):
  return (np.asarray(a, np.float64) for a in model.encode(x))


def _eps(key_B, shape):
  """The documented draw: example i's noise is normal(key_B[i], shape)."""
  return np.stack([np.asarray(jax.random.normal(k, shape), np.float64) for k in key_B])


def _decode_np(model, z):
  return np.asarray(model.decode(jnp.asarray(z, jnp.float32)), np.float64)


def test_elbo_is_the_seeds_monte_carlo_elbo(vae, x, key_B):
  mean, logvar = _posterior(vae, x)
  z = mean + np.exp(logvar / 2) * _eps(key_B, (LATENT,))
  rec = -_np_log_bernoulli(_decode_np(vae, z), x)
  kl = _np_log_normal(z, mean, logvar) - _np_log_normal(z, 0.0, 0.0)
  got = _terms("elbo", vae, x, key_B)
  np.testing.assert_allclose(got["rec"], rec, rtol=1e-5)
  np.testing.assert_allclose(got["kl"], kl, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(got["loss"], rec + kl, rtol=1e-5)


def test_beta_weights_only_the_kl_term(vae, x, key_B):
  plain = _terms("elbo", vae, x, key_B, kl="analytic")
  beta = _terms("elbo", vae, x, key_B, kl_weight=0.25, kl="analytic", beta=0.25)
  mean, logvar = _posterior(vae, x)
  kl = 0.5 * np.sum(np.exp(logvar) + mean ** 2 - 1 - logvar, axis=-1)
  np.testing.assert_allclose(beta["kl"], kl, rtol=1e-5)
  np.testing.assert_allclose(beta["rec"], plain["rec"], rtol=1e-6)
  np.testing.assert_allclose(beta["loss"], plain["rec"] + 0.25 * kl, rtol=1e-5)


def test_free_bits_clamp_each_dimension_of_each_example_in_training_only(vae, x, key_B):
  mean, logvar = _posterior(vae, x)
  kl_BxL = 0.5 * (np.exp(logvar) + mean ** 2 - 1 - logvar)
  lam = float(np.median(kl_BxL))  # some dimensions below the floor, some above
  assert (kl_BxL < lam).any() and (kl_BxL > lam).any()
  got = _terms("elbo", vae, x, key_B, train_=True, kl="analytic", free_bits=lam)
  np.testing.assert_allclose(got["loss"], got["rec"] + np.maximum(kl_BxL, lam).sum(-1), rtol=1e-5)
  np.testing.assert_allclose(got["kl"], kl_BxL.sum(-1), rtol=1e-5)  # reported unclamped
  evaluation = _terms("elbo", vae, x, key_B, kl="analytic", free_bits=lam)
  np.testing.assert_allclose(evaluation["loss"], evaluation["rec"] + kl_BxL.sum(-1), rtol=1e-5)


def test_iwae_with_one_sample_is_the_elbo(vae, x, key_B):
  elbo, iwae = _terms("elbo", vae, x, key_B), _terms("iwae", vae, x, key_B, iw_samples=1)
  for k in ("loss", "rec", "kl"):
    np.testing.assert_allclose(iwae[k], elbo[k], rtol=1e-6, atol=1e-5, err_msg=k)


def test_iwae_bound_is_the_logsumexp_of_the_importance_weights(vae, x, key_B):
  k = 5
  mean, logvar = _posterior(vae, x)
  z = mean[:, None] + np.exp(logvar / 2)[:, None] * _eps(key_B, (k, LATENT))  # (B, k, L)
  logits = _decode_np(vae, z.reshape(BATCH * k, LATENT))
  log_px = _np_log_bernoulli(logits, np.repeat(np.asarray(x), k, axis=0)).reshape(BATCH, k)
  log_q = _np_log_normal(z, mean[:, None], logvar[:, None])
  log_p = _np_log_normal(z, 0.0, 0.0)
  log_w = log_px + log_p - log_q
  peak = log_w.max(axis=1, keepdims=True)
  bound = peak[:, 0] + np.log(np.mean(np.exp(log_w - peak), axis=1))
  got = _terms("iwae", vae, x, key_B, iw_samples=k)
  np.testing.assert_allclose(got["loss"], -bound, rtol=1e-5)
  np.testing.assert_allclose(got["rec"], -log_px.mean(1), rtol=1e-5)
  np.testing.assert_allclose(got["kl"], (log_q - log_p).mean(1), rtol=1e-4, atol=1e-4)
  elbo_mean = (log_px + log_p - log_q).mean(1)
  assert np.all(bound >= elbo_mean - 1e-4)  # Jensen: the k-sample bound is at least the average ELBO


@pytest.mark.parametrize("name", ["bce", "l2", "l1"])
def test_autoencoder_reconstruction_losses(x, key_B, name):
  ae = models.create_model(_config(model="mlp_ae"), jax.random.key(0))
  z, _ = ae.encode(x)
  logits = _decode_np(ae, z)
  p, target = 1 / (1 + np.exp(-logits)), np.asarray(x, np.float64)
  want = {"bce": -_np_log_bernoulli(logits, x),
          "l2": ((p - target) ** 2).reshape(BATCH, -1).sum(-1),
          "l1": np.abs(p - target).reshape(BATCH, -1).sum(-1)}[name]
  got = _terms(name, ae, x, key_B)
  np.testing.assert_allclose(got["rec"], want, rtol=1e-5)
  np.testing.assert_allclose(got["loss"], want, rtol=1e-5)
  np.testing.assert_array_equal(got["kl"], 0.0)


def test_kl_warmup_factor_is_linear_from_zero_to_beta():
  config = _config(model="mlp", kl_warmup_epochs=2, beta=0.5)
  for step, want in ((0, 0.0), (5, 0.5 * 5 / 20), (10, 0.25), (20, 0.5), (35, 0.5)):
    np.testing.assert_allclose(train.kl_weight(config, jnp.int32(step), 10), want, rtol=1e-6)
  assert train.kl_weight(_config(beta=0.3), jnp.int32(7), None) == 0.3
  with pytest.raises(ValueError, match="steps_per_epoch"):
    train.kl_weight(config, jnp.int32(0), None)


def test_the_train_step_weights_the_kl_by_its_own_step(x):
  """Under warm-up the step's loss is rec + beta * min(1, step / warm-up steps) * kl."""
  config = _config(model="mlp", kl_warmup_epochs=1, beta=0.5, batch_size=BATCH, micro_batches=1)
  graphdef, state = train.init_state(config)
  step = jax.jit(train.make_train_step(graphdef, train.make_optimizer(config), config, None,
                                       steps_per_epoch=4))
  x_u8, mask = x.astype(jnp.uint8), jnp.ones((BATCH,))
  for s, weight in ((0, 0.0), (2, 0.25), (6, 0.5)):
    _, sums = step(state._replace(step=jnp.int32(s)), x_u8, mask, jax.random.key(3))
    np.testing.assert_allclose(sums["loss"], sums["rec"] + weight * sums["kl"], rtol=1e-6)


def test_denoising_flips_a_fraction_of_the_inputs_and_keeps_the_target():
  x_u8 = (jax.random.uniform(jax.random.key(4), (64, 28, 28, 1)) > 0.5).astype(jnp.uint8)
  index = jnp.arange(64)
  a = train.denoised_input(x_u8, 0.2, jax.random.key(5), 3, index)
  again = train.denoised_input(x_u8, 0.2, jax.random.key(5), 3, index)
  other_step = train.denoised_input(x_u8, 0.2, jax.random.key(5), 4, index)
  flipped = np.asarray(a != x_u8)
  # 50,176 pixels, each flipped with p = 0.2: the fraction's standard deviation is 0.0018.
  assert abs(flipped.mean() - 0.2) < 0.01
  assert set(np.unique(np.asarray(a))) <= {0, 1}
  np.testing.assert_array_equal(a, again)
  assert not np.array_equal(a, other_step)
  # Example i's flips depend on its global index only, not on the rest of the batch.
  np.testing.assert_array_equal(
      train.denoised_input(x_u8[5:6], 0.2, jax.random.key(5), 3, index[5:6]), a[5:6])


def test_objective_and_model_pairs_that_make_no_sense_are_refused():
  with pytest.raises(UserError, match="--objective iwae needs a VAE but --model conv_ae"):
    resolve.check(_config(model="conv_ae", objective="iwae"))
  with pytest.raises(UserError, match="--objective l2 needs a deterministic autoencoder"):
    resolve.check(_config(model="mlp", objective="l2"))
  with pytest.raises(UserError, match="--iw-samples does not apply to --objective elbo"):
    resolve.check(_config(model="mlp", iw_samples=4))
  with pytest.raises(UserError, match="--free-bits does not apply to --objective iwae"):
    resolve.check(_config(model="mlp", objective="iwae", free_bits=0.5))
  with pytest.raises(UserError, match="--beta does not apply to --objective bce"):
    resolve.check(_config(model="mlp_ae", objective="bce", beta=2.0))
  with pytest.raises(UserError, match="--hidden-sizes does not apply to --model cvae"):
    resolve.check(dataclasses.replace(config_lib.Config(), hidden_sizes=(10,)))
  with pytest.raises(UserError, match="--objective 'nope' is not registered"):
    resolve.check(_config(objective="nope"))
  for bad, message in ((dict(beta=-1.0), "--beta must be >= 0"),
                       (dict(iw_samples=0), "--iw-samples must be >= 1"),
                       (dict(kl_warmup_epochs=-1), "--kl-warmup-epochs must be >= 0"),
                       (dict(free_bits=float("nan")), "--free-bits must be >= 0"),
                       (dict(denoise=1.0), r"--denoise must be in \[0, 1\)"),
                       (dict(binarize="otsu"), "--binarize must be threshold or dynamic"),
                       (dict(model="mlp", activation="sin"), "--activation must be one of")):
    with pytest.raises(UserError, match=message):
      resolve.check(_config(**bad))
