"""Objectives by name: each a pure function (model, x, key_B, ctx) -> per-example terms.

An objective gets the model, the batch's target pixels x (float32 {0, 1}, (batch, 28, 28, 1)),
one PRNG key per example (key_B; each example's noise is drawn from its own key, so results do
not depend on micro-batches or devices) and a `Context`. It returns a dict of (batch,) arrays
with at least "loss" (what training minimizes; the step takes its batch mean), "rec" and "kl"
(0 for autoencoders). Register one with `@register_objective(name, ...)`, from any module.

In evaluation ctx.kl_weight is 1 and ctx.train False, so "loss" is the objective's bound (minus
the ELBO, minus the k-sample IWAE bound) or its reconstruction loss, whatever beta, warm-up and
free bits were in training.
"""

import dataclasses
import math
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from vae_jax.nn import losses, models
from vae_jax.config import Config
from vae_jax.errors import UserError


class Context(NamedTuple):
  """What an objective gets besides the model, the batch and the keys."""
  config: Config                # the run's settings: the objective's hyperparameters
  kl_weight: float | jax.Array  # beta times the KL warm-up factor (1 in evaluation)
  x_input: jax.Array            # what the encoder sees: x, or x with pixels flipped (--denoise)
  train: bool                   # True inside the training step (free bits apply only there)


ObjectiveFn = Callable[[models.Model, jax.Array, jax.Array, Context], dict[str, jax.Array]]


@dataclasses.dataclass(frozen=True)
class Objective:
  fn: ObjectiveFn
  stochastic: bool | None           # True: VAEs only; False: autoencoders only; None: any model
  settings: tuple[str, ...] | None  # the config.OBJECTIVE_SETTINGS it reads (others changed from
                                    # their defaults are refused); None: not checked


OBJECTIVES: dict[str, Objective] = {}


def register_objective(name: str, *, stochastic: bool | None = True,
                       settings: tuple[str, ...] | None = None):
  """Decorator: makes an objective function available as Config(objective=name) / --objective name."""
  def register(fn: ObjectiveFn) -> ObjectiveFn:
    if name in OBJECTIVES:
      raise ValueError(f"an objective named {name!r} is already registered")
    OBJECTIVES[name] = Objective(fn, stochastic, None if settings is None else tuple(settings))
    return fn
  return register


def get_objective(name: str) -> Objective:
  if name not in OBJECTIVES:
    raise UserError(f"--objective {name!r} is not registered; known: {', '.join(sorted(OBJECTIVES))}")
  return OBJECTIVES[name]


def per_example_normal(key_B, shape: tuple[int, ...]) -> jax.Array:
  """(batch, *shape) standard normal noise, example i's drawn from key_B[i]."""
  return jax.vmap(lambda key: jax.random.normal(key, shape))(key_B)


def _float32(*arrays):
  return tuple(a.astype(jnp.float32) for a in arrays)


@register_objective("elbo", settings=("kl", "beta", "kl_warmup_epochs", "free_bits", "denoise"))
def elbo(model, x, key_B, ctx: Context):
  """The seed's negative ELBO, rec + kl_weight * kl, with one z ~ q(z|x) per example.

  kl is the one-sample estimate log q(z|x) - log p(z) (--kl mc, the seed) or the closed form.
  Free bits (--free-bits lambda, training only): the KL term counts each latent dimension of
  each example as max(lambda, its KL). Kingma et al. (2016) clamp the minibatch average of each
  dimension's KL instead; the per-example form keeps the loss a sum over examples, so a step
  does not depend on how its batch is split over micro-batches and devices. The "kl" term
  reported is the unclamped one.
  """
  c = ctx.config
  posterior = model.posterior(ctx.x_input)
  latent = model.latent(posterior, per_example_normal(key_B, (model.noise_dim,)))
  rec = -losses.bernoulli_log_likelihood(models.likelihood_logits(model, latent.z, x), x)
  if c.kl == "mc":
    kl = latent.log_q() - latent.log_p()
  else:  # one Gaussian layer under N(0, I) (resolve.check refuses the others)
    kl = losses.kl_analytic(*_float32(*posterior))
  penalty = kl
  if ctx.train and c.free_bits > 0:
    mean, logvar, z = _float32(*posterior, latent.z)
    kl_BxL = (losses.kl_mc(z, mean, logvar, axis=()) if c.kl == "mc"
              else losses.kl_analytic(mean, logvar, axis=()))
    penalty = jnp.sum(jnp.maximum(kl_BxL, c.free_bits), axis=-1)
  return {"loss": rec + ctx.kl_weight * penalty, "rec": rec, "kl": kl}


@register_objective("iwae", settings=("iw_samples", "beta", "kl_warmup_epochs", "denoise"))
def iwae(model, x, key_B, ctx: Context):
  """Minus the importance-weighted bound of Burda et al. (2016) with k = --iw-samples samples:

    loss = -log (1/k) sum_j w_j,   log w_j = log p(x|z_j) - kl_weight * (log q(z_j|x) - log p(z_j)),

  z_1..z_k ~ q(z|x) drawn from the example's key (k = 1 is the seed's ELBO with the same z); with
  several stochastic layers z is all of them (Model.latent).
  "rec" and "kl" are the averages over the k samples of -log p(x|z_j) and log q(z_j|x) - log p(z_j).
  """
  k = ctx.config.iw_samples
  batch = x.shape[0]
  latent = model.latent(model.posterior(ctx.x_input),
                        per_example_normal(key_B, (k, model.noise_dim)))
  x_k = jnp.repeat(x, k, axis=0)
  x_logits = models.likelihood_logits(model, latent.z.reshape(batch * k, -1), x_k)
  log_px = losses.bernoulli_log_likelihood(x_logits, x_k).reshape(batch, k)
  kl = latent.log_q() - latent.log_p()
  log_w = log_px - ctx.kl_weight * kl
  bound = jax.nn.logsumexp(log_w, axis=1) - math.log(k)
  return {"loss": -bound, "rec": -jnp.mean(log_px, axis=1), "kl": jnp.mean(kl, axis=1)}


def reconstruction_objective(error: Callable[[jax.Array, jax.Array], jax.Array]) -> ObjectiveFn:
  """An autoencoder's objective: loss = rec = error(decode(encode(x)), x) per example, kl = 0."""
  def objective(model, x, key_B, ctx: Context):
    del key_B  # deterministic
    z, _ = model.encode(ctx.x_input)
    rec = error(model.decode(z), x)
    return {"loss": rec, "rec": rec, "kl": jnp.zeros_like(rec)}
  return objective


_AE = dict(stochastic=False, settings=("denoise",))
# Binary cross-entropy: minus the Bernoulli log-likelihood, summed over pixels.
register_objective("bce", **_AE)(reconstruction_objective(
    lambda x_logits, x: -losses.bernoulli_log_likelihood(x_logits, x)))
# Summed squared error of sigmoid(logits) against x.
register_objective("l2", **_AE)(reconstruction_objective(
    lambda x_logits, x: losses.squared_error(x_logits, x)))
# Summed absolute error of sigmoid(logits) against x.
register_objective("l1", **_AE)(reconstruction_objective(
    lambda x_logits, x: losses.absolute_error(x_logits, x)))
