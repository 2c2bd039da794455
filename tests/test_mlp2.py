"""The two-stochastic-layer VAE (--model mlp2): its ELBO, IWAE bound, IS-NLL and layer means
against numpy on a tiny net, with the densities written out here and the same noise."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from vae_jax import config as config_lib
from vae_jax.errors import UserError
from vae_jax.nn import models, objectives, resolve
from vae_jax.nn.mlp2 import MLP2VAE
from vae_jax.research import likelihood

Z2, Z1, H1, H2 = 2, 3, 4, 3
NOISE = Z1 + Z2
LOG2PI = np.log(2 * np.pi)


@pytest.fixture(scope="module")
def net():
  model = MLP2VAE(Z2, rngs=nnx.Rngs(params=jax.random.key(0)), z1_dim=Z1, hidden1=H1, hidden2=H2)
  # Nonzero biases, so a bias left out anywhere shows.
  _, state = nnx.split(model)
  state = jax.tree.map(lambda p: p + 0.1 * jnp.cos(jnp.arange(p.size).reshape(p.shape)), state)
  nnx.update(model, state)
  return model


def _layers(gaussian):
  """[(W, b)] of one of the model's nets as float64 numpy, the output layer last."""
  return [(np.asarray(l.kernel[...], np.float64), np.asarray(l.bias[...], np.float64))
          for l in [*gaussian.hidden, gaussian.out]]


def _mlp(params, h):
  for w, b in params[:-1]:
    h = np.tanh(h @ w + b)
  w, b = params[-1]
  return h @ w + b


def _split(params, h):
  out = _mlp(params, h)
  return out[..., :out.shape[-1] // 2], out[..., out.shape[-1] // 2:]


def _log_normal(z, mean, logvar):
  return np.sum(-0.5 * ((z - mean) ** 2 * np.exp(-logvar) + logvar + LOG2PI), axis=-1)


def _log_bernoulli(logits, x):
  return np.sum(x * logits - np.logaddexp(0.0, logits), axis=-1)


def _log_weights(model, x_BxD, eps_BxSxN):
  """(log w, log p(x|z1), E_q[z2|z1]) by hand: log p(x|z1) + log p(z1|z2) + log p(z2)
  - log q(z1|x) - log q(z2|z1)."""
  mean1, logvar1 = _split(_layers(model.q_z1), x_BxD)
  mean1, logvar1 = mean1[:, None], logvar1[:, None]
  z1 = mean1 + np.exp(logvar1 / 2) * eps_BxSxN[..., :Z1]
  mean2, logvar2 = _split(_layers(model.q_z2), z1)
  z2 = mean2 + np.exp(logvar2 / 2) * eps_BxSxN[..., Z1:]
  prior_mean, prior_logvar = _split(_layers(model.p_z1), z2)
  log_px = _log_bernoulli(_mlp(_layers(model.p_x), z1), x_BxD[:, None])
  log_w = (log_px + _log_normal(z1, prior_mean, prior_logvar) + _log_normal(z2, 0.0, 0.0)
           - _log_normal(z1, mean1, logvar1) - _log_normal(z2, mean2, logvar2))
  return log_w, log_px, mean2


def _log_mean_exp(a):
  top = np.max(a, axis=-1, keepdims=True)
  return np.log(np.mean(np.exp(a - top), axis=-1)) + top[..., 0]


def _images(n):
  return (jax.random.uniform(jax.random.key(7), (n, 28, 28, 1)) < 0.3).astype(jnp.float32)


def _keys(n):
  return jax.vmap(lambda i: jax.random.fold_in(jax.random.key(3), i))(jnp.arange(n))


def test_elbo_and_iwae_bound_against_numpy(net):
  x = _images(2)
  x_np = np.asarray(x, np.float64).reshape(2, -1)
  k = 3
  config = dataclasses.replace(config_lib.Config(), model="mlp2", latent_dim=Z2, iw_samples=k)
  ctx = objectives.Context(config, 1.0, x, False)
  # The objectives' noise: example i's from its key (objectives.per_example_normal).
  eps1 = np.asarray(jax.vmap(lambda key: jax.random.normal(key, (NOISE,)))(_keys(2)), np.float64)
  epsk = np.asarray(jax.vmap(lambda key: jax.random.normal(key, (k, NOISE)))(_keys(2)), np.float64)

  got = objectives.elbo(net, x, _keys(2), ctx)
  log_w, log_px, _ = _log_weights(net, x_np, eps1[:, None])
  np.testing.assert_allclose(got["loss"], -log_w[:, 0], rtol=1e-5)
  np.testing.assert_allclose(got["rec"], -log_px[:, 0], rtol=1e-5)
  np.testing.assert_allclose(got["kl"], log_px[:, 0] - log_w[:, 0], rtol=1e-4, atol=1e-4)

  got = objectives.iwae(net, x, _keys(2), ctx)
  log_w, log_px, _ = _log_weights(net, x_np, epsk)
  np.testing.assert_allclose(got["loss"], -_log_mean_exp(log_w), rtol=1e-5)
  np.testing.assert_allclose(got["rec"], -np.mean(log_px, axis=1), rtol=1e-5)


def test_importance_sampled_nll_and_layer_means_against_numpy(net):
  x = _images(2)
  x_np = np.asarray(x, np.float64).reshape(2, -1)
  k, chunk, key = 6, 4, jax.random.key(11)
  index = np.array([5, 9])

  def noise(key, samples):  # likelihood.sample_noise's definition: fold_in(fold_in(key, i), j)
    return np.asarray([[jax.random.normal(jax.random.fold_in(jax.random.fold_in(key, i), j),
                                          (NOISE,)) for j in range(samples)] for i in index],
                      np.float64)

  got = likelihood.iwae_log_likelihood(net, x, key, k, chunk, index)
  np.testing.assert_allclose(got, _log_mean_exp(_log_weights(net, x_np, noise(key, k))[0]),
                             rtol=1e-5)

  graphdef, state = nnx.split(net)
  terms = likelihood.evaluate_batch(graphdef, state, x, jnp.asarray(index), key, stochastic=True,
                                    k=k, chunk=chunk)
  log_w, log_px, _ = _log_weights(net, x_np, noise(jax.random.fold_in(key, 0), k))
  np.testing.assert_allclose(terms["log_px"], _log_mean_exp(log_w), rtol=1e-5)
  np.testing.assert_allclose(terms["kl"], np.mean(log_px - log_w, axis=1), rtol=1e-4)
  # E_q[z1|x] exactly; E_q[z2|x] as the mean of q(z2|z1) over the active-unit samples of z1.
  mean1, _ = _split(_layers(net.q_z1), x_np)
  np.testing.assert_allclose(terms["mean"], mean1, rtol=1e-5, atol=1e-6)
  _, _, mean2 = _log_weights(net, x_np, noise(jax.random.fold_in(key, 2),
                                              likelihood.ACTIVE_UNIT_SAMPLES))
  np.testing.assert_allclose(terms["mean_z2"], np.mean(mean2, axis=1), rtol=1e-5, atol=1e-6)


def test_samples_decode_the_prior_mean_of_z1(net):
  eps = np.array([[0.5, -1.0], [2.0, 0.3]])
  z1, _ = _split(_layers(net.p_z1), eps)
  want = 1 / (1 + np.exp(-_mlp(_layers(net.p_x), z1)))
  got = net.sample(eps_BxL=jnp.asarray(eps, jnp.float32))
  np.testing.assert_allclose(np.asarray(got).reshape(2, -1), want, rtol=1e-5, atol=1e-6)


def test_registered_at_the_paper_sizes_and_refuses_one_layer_settings():
  config = dataclasses.replace(config_lib.Config(), model="mlp2")
  model = models.create_model(config, jax.random.key(0))
  sizes = lambda g: [l.kernel.shape for l in [*g.hidden, g.out]]
  assert sizes(model.q_z1) == [(784, 100), (100, 100), (100, 200)]
  assert sizes(model.q_z2) == [(100, 50), (50, 50), (50, 100)]
  assert sizes(model.p_z1) == [(50, 50), (50, 50), (50, 200)]
  assert sizes(model.p_x) == [(100, 100), (100, 100), (100, 784)]
  for change in ({"kl": "analytic"}, {"free_bits": 0.5}):
    with pytest.raises(UserError, match="several stochastic layers"):
      resolve.check(dataclasses.replace(config, **change))
  with pytest.raises(UserError, match="--hidden-sizes does not apply to --model mlp2"):
    resolve.check(dataclasses.replace(config, hidden_sizes=(10,)))
