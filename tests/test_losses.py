"""The ELBO terms against independent numpy computations and closed forms."""

import math

import jax
import jax.numpy as jnp
import numpy as np

from vae_jax.nn import losses, models

RNG = np.random.default_rng(0)


def _np_gauss_logpdf(x, mean, var):
  return -0.5 * np.log(2 * math.pi * var) - (x - mean) ** 2 / (2 * var)


def _np_sigmoid_xent(logits, labels):
  p = 1.0 / (1.0 + np.exp(-logits.astype(np.float64)))
  return -(labels * np.log(p) + (1 - labels) * np.log1p(-p))


def test_log_normal_pdf_matches_numpy():
  x, mean = RNG.normal(size=(5, 7)), RNG.normal(size=(5, 7))
  logvar = RNG.normal(size=(5, 7)) * 0.5
  want = _np_gauss_logpdf(x, mean, np.exp(logvar)).sum(axis=1)
  np.testing.assert_allclose(losses.log_normal_pdf(x, mean, logvar), want, rtol=1e-5)


def test_negative_elbo_terms_match_numpy():
  x = (RNG.random((4, 28, 28, 1)) > 0.5).astype(np.float32)
  x_logits = RNG.normal(size=(4, 28, 28, 1)).astype(np.float32) * 3
  mean = RNG.normal(size=(4, 6)).astype(np.float32)
  logvar = RNG.normal(size=(4, 6)).astype(np.float32) * 0.3
  z = RNG.normal(size=(4, 6)).astype(np.float32)
  terms = losses.negative_elbo_terms(x_logits, x, z, mean, logvar)
  rec = _np_sigmoid_xent(x_logits, x).reshape(4, -1).sum(axis=1)
  kl = (_np_gauss_logpdf(z, mean, np.exp(logvar)) - _np_gauss_logpdf(z, 0.0, 1.0)).sum(axis=1)
  np.testing.assert_allclose(terms["rec"], rec, rtol=1e-5)
  np.testing.assert_allclose(terms["kl"], kl, rtol=1e-4, atol=1e-4)
  np.testing.assert_allclose(terms["loss"], rec + kl, rtol=1e-5)
  analytic = losses.negative_elbo_terms(x_logits, x, z, mean, logvar, kl="analytic")["kl"]
  want = 0.5 * (np.exp(logvar) + mean**2 - 1 - logvar).sum(axis=1)
  np.testing.assert_allclose(analytic, want, rtol=1e-5)


def test_kl_vanishes_when_posterior_is_the_prior():
  z = RNG.normal(size=(3, 5)).astype(np.float32)
  zeros = np.zeros((3, 5), np.float32)
  np.testing.assert_allclose(losses.kl_mc(z, zeros, zeros), 0.0, atol=1e-6)
  np.testing.assert_allclose(losses.kl_analytic(zeros, zeros), 0.0, atol=1e-7)


def test_monte_carlo_kl_averages_to_the_closed_form():
  mean = jnp.array([[0.7, -1.2, 0.1]])
  logvar = jnp.array([[-0.5, 0.4, -1.5]])
  z = models.reparameterize(jax.random.key(0), jnp.broadcast_to(mean, (200_000, 3)),
                            jnp.broadcast_to(logvar, (200_000, 3)))
  mc = float(jnp.mean(losses.kl_mc(z, mean, logvar)))
  assert abs(mc - float(losses.kl_analytic(mean, logvar)[0])) < 0.02


def test_gradients_reach_mean_and_logvar_through_reparameterization():
  mean = jnp.array([[0.3, -0.2]])
  logvar = jnp.array([[0.1, -0.4]])
  eps = jnp.array([[1.5, -0.7]])
  # d/dmean sum(z) = 1; d/dlogvar sum(z) = eps * exp(logvar / 2) / 2
  g_mean, g_logvar = jax.grad(lambda m, lv: jnp.sum(models.reparameterize_with_eps(eps, m, lv)),
                              argnums=(0, 1))(mean, logvar)
  np.testing.assert_allclose(g_mean, np.ones((1, 2)), rtol=1e-6)
  np.testing.assert_allclose(g_logvar, 0.5 * eps * np.exp(0.5 * np.asarray(logvar)), rtol=1e-6)



def test_bernoulli_log_likelihood_and_its_gradient_match_numpy_for_any_logit():
  x = (RNG.random((3, 5, 4, 1)) > 0.5).astype(np.float32)
  x_logits = (RNG.normal(size=(3, 5, 4, 1)) * 4).astype(np.float32)
  x_logits[0, 0, :, 0] = [-120.0, -30.0, 0.0, 95.0]  # far tails and the kink of max(l, 0)
  value, grad = jax.value_and_grad(lambda l: jnp.sum(losses.bernoulli_log_likelihood(l, x)))(x_logits)
  l64 = x_logits.astype(np.float64)
  # -softplus(l) + l x, stable in numpy via logaddexp; its derivative is x - sigmoid(l).
  want = (l64 * x - np.logaddexp(0.0, l64)).reshape(3, -1).sum(axis=1)
  np.testing.assert_allclose(losses.bernoulli_log_likelihood(x_logits, x), want, rtol=1e-5)
  np.testing.assert_allclose(value, want.sum(), rtol=1e-5)
  np.testing.assert_allclose(grad, x - 1.0 / (1.0 + np.exp(-l64)), atol=1e-6)


def test_per_example_sum_is_the_sum_over_all_but_the_first_axis():
  a = RNG.normal(size=(6, 7, 3, 2)).astype(np.float32) * 1e3
  np.testing.assert_allclose(losses.per_example_sum(a), a.astype(np.float64).reshape(6, -1).sum(1),
                             rtol=1e-6)
