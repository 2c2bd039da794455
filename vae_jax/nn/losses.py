"""The objectives' terms: log densities, KL divergences, reconstruction errors, of model outputs."""

import math

import jax
import jax.numpy as jnp

_LOG2PI = math.log(2.0 * math.pi)


def log_normal_pdf(sample, mean, logvar, axis=-1):
  """log N(sample; mean, exp(logvar)) summed over `axis`: -1/2 ((s-m)^2 e^-logvar + logvar + log 2pi)."""
  return jnp.sum(-0.5 * ((sample - mean) ** 2 * jnp.exp(-logvar) + logvar + _LOG2PI), axis=axis)


def per_example_sum(a):
  """a summed over all axes but the first: (batch, ...) -> (batch,), as one reduction of the
  flattened (batch, features) array."""
  return jnp.sum(a.reshape(a.shape[0], -1), axis=1)


def bernoulli_log_likelihood(x_logits, x):
  """log p(x|z) = -sum over pixels of sigmoid cross-entropy(logits, x), per example.

  The cross-entropy in TensorFlow's form, max(l, 0) - l x + log1p(exp(-|l|)), stable for any
  logit, with autodiff's gradient sigmoid(l) - x (tests/test_losses.py). On XLA:CPU it and its
  gradient cost half as much as optax.sigmoid_binary_cross_entropy's two log-sigmoids. The pixels
  are flattened first: XLA:CPU gives the sum over a (batch, 28, 28, 1) array's last three axes to
  a YNNPACK reduction that costs about as much again as the loss
  (benchmarks/results/cpu_step_loss_layout_2026-12-01_6e3ffc6/).
  """
  x_logits = x_logits.astype(jnp.float32).reshape(x_logits.shape[0], -1)
  x = x.astype(jnp.float32).reshape(x_logits.shape)
  # max(l, 0) and -|l| by one comparison, so that autodiff's gradient at l = 0 is 1/2 - x too.
  positive = x_logits > 0
  cross_ent = (jnp.where(positive, x_logits, 0.0) - x_logits * x
               + jnp.log1p(jnp.exp(jnp.where(positive, -x_logits, x_logits))))
  return -per_example_sum(cross_ent)


def kl_mc(z, mean, logvar, axis=-1):
  """One-sample estimate of KL(q(z|x) || N(0, I)): log q(z|x) - log p(z), per example.

  Summed over `axis`; axis=() gives each latent dimension's term.
  """
  return log_normal_pdf(z, mean, logvar, axis) - log_normal_pdf(z, 0.0, 0.0, axis)


def kl_analytic(mean, logvar, axis=-1):
  """KL(N(mean, exp(logvar)) || N(0, I)) = 1/2 sum(exp(logvar) + mean^2 - 1 - logvar), per example.

  Summed over `axis`; axis=() gives each latent dimension's term.
  """
  return 0.5 * jnp.sum(jnp.exp(logvar) + mean**2 - 1.0 - logvar, axis=axis)


def squared_error(x_logits, x):
  """sum over pixels of (sigmoid(logits) - x)^2, per example."""
  return per_example_sum((jax.nn.sigmoid(x_logits.astype(jnp.float32)) - x) ** 2)


def absolute_error(x_logits, x):
  """sum over pixels of |sigmoid(logits) - x|, per example."""
  return per_example_sum(jnp.abs(jax.nn.sigmoid(x_logits.astype(jnp.float32)) - x))


def negative_elbo_terms(x_logits, x, z, mean, logvar, kl: str = "mc"):
  """Per-example terms: rec = -log p(x|z), kl (Monte Carlo as in the seed, or analytic), loss = rec + kl."""
  mean, logvar, z = (a.astype(jnp.float32) for a in (mean, logvar, z))
  rec = -bernoulli_log_likelihood(x_logits, x)
  if kl == "mc":
    kl_term = kl_mc(z, mean, logvar)
  elif kl == "analytic":
    kl_term = kl_analytic(mean, logvar)
  else:
    raise ValueError(f"kl must be 'mc' or 'analytic', got {kl!r}")
  return {"loss": rec + kl_term, "rec": rec, "kl": kl_term}

