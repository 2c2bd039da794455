"""Importance-sampled log-likelihood of a trained VAE, its ELBO terms, and autoencoder reconstruction.

    log p(x) ~= log (1/k) sum_j p(x|z_j) p(z_j) / q(z_j|x),   z_j ~ q(z|x)   (Burda et al., 2016)

The estimate is a lower bound in expectation that tightens as k grows (k = 1 is the one-sample
ELBO). The encoder runs once per image; the k samples go through the decoder in chunks (one
`lax.map` step each), so memory is bounded by the chunk and the function compiles once. Sample j
of test image i has noise from fold_in(fold_in(key, i), j): it depends on neither the chunk size,
the number of images per call, nor how many images are evaluated. log p(x|z) is the sigmoid
cross-entropy of the decoder's logits in float32 (never of clamped probabilities), and the
log-mean-exp is taken in float32.

Models follow the project's interface: VAEs give z ~ q(z|x) with log q(z|x) and log p(z) over all
their stochastic layers by `latent(posterior(x), eps)` (vae_jax.nn.models.Model), deterministic
autoencoders (`stochastic = False`) `encode(x) -> (z, None)`; `decode(z) -> Bernoulli logits`.
"""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from vae_jax.nn import losses, models

ACTIVE_UNIT_THRESHOLD = 0.01  # Burda et al.: a unit is active when Cov_x(E_q[z_u]) > 0.01
ACTIVE_UNIT_SAMPLES = 100  # samples of the layers below that E_q[z_i|x] of a higher layer averages
NO_LIKELIHOOD = "no likelihood: deterministic autoencoder"


def sample_noise(key, index_B, sample_index_S, latent_dim: int):
  """(B, S, latent_dim) eps ~ N(0, I): image index_B[b], sample j from fold_in(fold_in(key, b), j)."""
  def one_image(i):
    image_key = jax.random.fold_in(key, i)
    return jax.vmap(lambda j: jax.random.normal(jax.random.fold_in(image_key, j), (latent_dim,)))(
        sample_index_S)
  return jax.vmap(one_image)(index_B)


def _bernoulli_log_prob(x_logits_BxSxD, x_Bx1xD):
  """log p(x|z) summed over pixels, from logits: -sum sigmoid cross-entropy, float32.

  In TensorFlow's stable form, max(l, 0) - l x + log1p(exp(-|l|)): one exp and one log1p per
  pixel (optax's two log-sigmoids cost twice that, and the k=5000 evaluation is mostly this and
  the decoder's GEMMs).
  """
  logits = x_logits_BxSxD.astype(jnp.float32)
  cross_ent = (jnp.maximum(logits, 0.0) - logits * x_Bx1xD
               + jnp.log1p(jnp.exp(-jnp.abs(logits))))
  return -jnp.sum(cross_ent, axis=-1)


def _flat(x):
  return x.reshape(x.shape[0], -1).astype(jnp.float32)


def _default_index(x, index_B):
  return jnp.arange(x.shape[0]) if index_B is None else jnp.asarray(index_B)


def _sample_terms(graphdef, state, x, index_B, key, k: int, chunk: int):
  """(posterior, log_w (B, k), log p(x|z) (B, k)) for the k samples of each image."""
  model = nnx.merge(graphdef, state)
  posterior_fn, latent_fn, noise_dim, _ = models.latent_interface(model)
  posterior = jax.tree.map(lambda a: a.astype(jnp.float32), posterior_fn(x))
  x_Bx1xD = _flat(x)[:, None, :]
  chunk = min(chunk, k)
  num_chunks = -(-k // chunk)
  batch = x.shape[0]

  def one_chunk(c):
    eps = sample_noise(key, index_B, c * chunk + jnp.arange(chunk), noise_dim)  # (B, S, N)
    latent = latent_fn(posterior, eps)
    x_logits = models.likelihood_logits(model, latent.z.reshape(batch * chunk, -1),
                                        jnp.repeat(x, chunk, axis=0))
    log_px_z = _bernoulli_log_prob(x_logits.reshape(batch, chunk, -1), x_Bx1xD)
    return log_px_z + latent.log_p() - latent.log_q(), log_px_z

  log_w, log_px_z = jax.lax.map(one_chunk, jnp.arange(num_chunks))  # (C, B, S) each
  def samples_last(a):
    return a.transpose(1, 0, 2).reshape(batch, num_chunks * chunk)[:, :k]
  return posterior, samples_last(log_w), samples_last(log_px_z)


@functools.partial(jax.jit, static_argnames=("graphdef", "k", "chunk"))
def _log_weights(graphdef, state, x, index_B, key, k, chunk):
  return _sample_terms(graphdef, state, x, index_B, key, k, chunk)[1]


def log_importance_weights(model, x, key, k: int, chunk: int, index_B=None):
  """(B, k) log w_ij = log p(x_i|z_ij) + log p(z_ij) - log q(z_ij|x_i), z_ij ~ q(z|x_i).

  index_B: each image's index in its data set, which fixes its noise (default 0..B-1).
  """
  graphdef, state = nnx.split(model)
  return _log_weights(graphdef, state, x, _default_index(x, index_B), key, k, chunk)


def log_mean_exp(log_w, axis=-1):
  """log (1/k) sum_j exp(log_w_j) over `axis`, in float32."""
  log_w = log_w.astype(jnp.float32)
  return jax.nn.logsumexp(log_w, axis=axis) - jnp.log(jnp.float32(log_w.shape[axis]))


def iwae_log_likelihood(model, x, key, k: int, chunk: int, index_B=None):
  """(B,) importance-sampled estimate of log p(x_i) with k samples from q(z|x_i)."""
  return log_mean_exp(log_importance_weights(model, x, key, k, chunk, index_B))


def prefix_sizes(k: int) -> tuple[int, ...]:
  """1, 10, 100, ... below k, then k: the sample counts whose estimates the evaluation reports."""
  return tuple(sorted({10 ** p for p in range(len(str(k))) if 10 ** p < k} | {k}))


def _evaluate_vae(graphdef, state, x, index_B, key, k, chunk):
  is_key, elbo_key = jax.random.fold_in(key, 0), jax.random.fold_in(key, 1)
  posterior, log_w, log_px_z = _sample_terms(graphdef, state, x, index_B, is_key, k, chunk)
  model = nnx.merge(graphdef, state)
  _, latent_fn, noise_dim, gaussian_latent = models.latent_interface(model)
  # The seed's one-sample Monte Carlo ELBO, with noise of its own.
  eps = sample_noise(elbo_key, index_B, jnp.zeros(1, jnp.int32), noise_dim)[:, 0]
  latent = latent_fn(posterior, eps)
  rec_mc1 = -losses.bernoulli_log_likelihood(models.likelihood_logits(model, latent.z, x), x)
  neg_elbo_mc1 = (rec_mc1
                  + (latent.log_q() - latent.log_p()))
  # E_q[z_i|x] of each layer, for the active units: exact for the first, over samples above it.
  means = latent_fn(posterior, sample_noise(jax.random.fold_in(key, 2), index_B,
                                            jnp.arange(ACTIVE_UNIT_SAMPLES), noise_dim))
  weights = jax.nn.softmax(log_w, axis=-1)
  mean = model.encode(x)[0]
  mean_logits = _flat(model.decode(mean))
  # The analytic KL where q is one Gaussian under N(0, I), else its estimate on the k samples.
  kl = (losses.kl_analytic(*posterior) if gaussian_latent
        else jnp.mean(log_px_z - log_w, axis=-1))
  return {
      "log_px": log_mean_exp(log_w),
      "log_px_by_k": jnp.stack([log_mean_exp(log_w[:, :n]) for n in prefix_sizes(k)], axis=-1),
      "rec": -jnp.mean(log_px_z, axis=-1),
      "neg_elbo_same_samples": -jnp.mean(log_w, axis=-1),
      "kl": kl,
      "neg_elbo_mc1": neg_elbo_mc1,
      "ess": 1.0 / jnp.sum(jnp.square(weights), axis=-1),
      "pixel_errors": jnp.sum((mean_logits > 0) != (_flat(x) > 0.5), axis=-1),
      **{f"mean_z{i + 1}" if i else "mean": jnp.mean(m.astype(jnp.float32), axis=1)
         for i, m in enumerate(means.means)},
  }


def _evaluate_autoencoder(graphdef, state, x):
  model = nnx.merge(graphdef, state)
  z, _ = model.encode(x)
  x_logits = _flat(model.decode(z))
  x_flat = _flat(x)
  return {
      "rec": jnp.sum(optax.sigmoid_binary_cross_entropy(x_logits, x_flat), axis=-1),
      "pixel_errors": jnp.sum((x_logits > 0) != (x_flat > 0.5), axis=-1),
  }


@functools.partial(jax.jit, static_argnames=("graphdef", "stochastic", "k", "chunk"))
def evaluate_batch(graphdef, state, x, index_B, key, *, stochastic: bool, k: int, chunk: int):
  """Per-image terms of one batch (see `summarize`); an autoencoder's are reconstruction only."""
  if stochastic:
    return _evaluate_vae(graphdef, state, x, index_B, key, k, chunk)
  return _evaluate_autoencoder(graphdef, state, x)


def is_stochastic(model, x) -> bool:
  """True for a VAE: `model.stochastic` (default True) and its encoder returns a logvar."""
  if not getattr(model, "stochastic", True):
    return False
  graphdef, state = nnx.split(model)
  _, logvar = jax.eval_shape(lambda s: nnx.merge(graphdef, s).encode(x[:1]), state)
  return logvar is not None


def active_units(mean_NxL, threshold: float = ACTIVE_UNIT_THRESHOLD) -> int:
  """Latent dimensions u whose posterior mean varies over the images: Var_x(E_q[z_u]) > threshold."""
  return int(np.sum(np.var(np.asarray(mean_NxL, np.float64), axis=0) > threshold))


def _layer_units(terms: dict) -> dict:
  """With several stochastic layers, the active units and size of each (bottom first)."""
  names = ["mean"] + sorted((n for n in terms if n.startswith("mean_z")), key=lambda n: int(n[6:]))
  if len(names) == 1:
    return {}
  return {"active_units_by_layer": [active_units(terms[n]) for n in names],
          "latent_dims_by_layer": [int(np.shape(terms[n])[1]) for n in names]}


def summarize(terms: dict, pixels: int, k: int) -> dict:
  """Means over the test images of the per-image terms (concatenated batches of `evaluate_batch`).

  nll: -log p(x) in nats per image, with its standard error std/sqrt(N) (sample std over images),
  and in bits/dim (nats / (pixels ln 2)); neg_elbo: reconstruction (E_q[-log p(x|z)] over the same
  k samples) plus the analytic KL; neg_elbo_same_samples: -mean_j log w_j, which is >= nll image
  by image (Jensen's inequality on the same samples); neg_elbo_mc1: the one-sample Monte Carlo
  -ELBO as in training (its own noise). Autoencoders: reconstruction terms only.
  """
  def mean(name):
    return float(np.mean(np.asarray(terms[name], np.float64)))

  n = len(terms["rec"])
  out = {"test_images": n, "pixel_error_rate": mean("pixel_errors") / pixels}
  if "log_px" not in terms:
    return {**out, "note": NO_LIKELIHOOD, "rec": mean("rec")}
  nll = -np.asarray(terms["log_px"], np.float64)
  nll_se = float(np.std(nll, ddof=1) / math.sqrt(n)) if n > 1 else float("nan")
  to_bits = 1.0 / (pixels * math.log(2.0))
  by_k = -np.mean(np.asarray(terms["log_px_by_k"], np.float64), axis=0)
  return {
      **out,
      "nll": float(np.mean(nll)), "nll_se": nll_se,
      "nll_bits_per_dim": float(np.mean(nll)) * to_bits, "nll_bits_per_dim_se": nll_se * to_bits,
      "neg_elbo": mean("rec") + mean("kl"),
      "neg_elbo_same_samples": mean("neg_elbo_same_samples"),
      "neg_elbo_mc1": mean("neg_elbo_mc1"),
      "kl": mean("kl"), "rec": mean("rec"),
      "active_units": active_units(terms["mean"]), "latent_dim": int(np.shape(terms["mean"])[1]),
      **_layer_units(terms),
      "ess_mean": mean("ess"),
      "nll_by_k": {str(s): float(v) for s, v in zip(prefix_sizes(k), by_k)},
  }
