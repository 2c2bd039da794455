"""The model as the coder sees it: integer probability tables, computed in one fixed way.

Exactness is the codec's contract: the decoder must compute the encoder's probabilities bit for
bit, on any machine. For the convolutional models (`integer.supports`) the tables come from the
model's integer networks (`integer`): exact integer arithmetic and shipped lookup tables, so the
same integers on every CPU, vector width, thread count, XLA version or accelerator; the model
fingerprint covers the integer format and the tables' SHA-256. Other models fall back to their
float network, run in one jitted XLA program per batch shape on the CPU and turned into integers
inside it (exact on the machine and XLA build that wrote the file only). Either way:

- latents live in 2^latent_bits buckets of equal mass under the N(0, 1) prior (BB-ANS); a latent is
  decoded at its bucket's centre (the prior's median inside the bucket);
- q(z|x) gives each bucket floor(mass * (2^posterior_bits - K)) + 1 (K buckets, every one >= 1),
  the mass from the Gaussian CDF at the bucket edges;
- p(x|z) gives each pixel P(x = 1) as an integer k / 2^pixel_bits with 1 <= k < 2^pixel_bits.

Callers pad a batch to a fixed shape (both sides of the codec pad the same batch the same way) and
give constriction only these integers (as exactly representable floats).
"""

import contextlib
import dataclasses
import functools
import hashlib
import json
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from scipy.special import ndtri

from vae_jax import template
from vae_jax.codec import context, integer
from vae_jax.errors import UserError

# Config fields that change the function a model computes, with the values configs without the
# field mean; the rest (epochs, seed, ...) only change how its parameters were found, and the
# parameters are hashed themselves.
_MODEL_FIELDS = {"model": "cvae", "latent_dim": 50, "conv_transpose": "gemm", "dtype": "float32",
                 "hidden_sizes": [200, 200], "activation": "tanh"}


def cpu_device():
  return jax.devices("cpu")[0]


def fingerprint(model: nnx.Module, config, fmt: int = integer.FORMAT) -> bytes:
  """SHA-256 of the model-defining config fields, every parameter (path, dtype, shape, bytes) and,
  for a model with integer networks, what else their integers depend on (`integer.identity` of
  format fmt)."""
  settings = {k: getattr(config, k, default) for k, default in _MODEL_FIELDS.items()}
  h = hashlib.sha256(json.dumps(settings, sort_keys=True, default=list).encode())
  if integer.supports(model):
    h.update(integer.identity(fmt))
  if getattr(model, "autoregressive", False):
    h.update(f"context logits {context.TEMPLATE} clip {integer.RAW_LOGIT_MAX}, pixels "
             "position-major".encode())
  for path, leaf in sorted(nnx.to_flat_state(nnx.state(model, nnx.Param)),
                           key=lambda item: tuple(map(str, item[0]))):
    array = np.asarray(leaf[...])
    h.update("/".join(map(str, path)).encode())
    h.update(f"{array.dtype.str}{array.shape}".encode())
    h.update(np.ascontiguousarray(array).tobytes())
  return h.digest()


def bucket_edges(latent_bits: int) -> np.ndarray:
  """The K - 1 interior edges Phi^-1(k / K) of the equal-prior-mass buckets (float32)."""
  k = 1 << latent_bits
  return ndtri(np.arange(1, k) / k).astype(np.float32)


def bucket_centres(latent_bits: int) -> np.ndarray:
  """Phi^-1((k + 1/2) / K): the latent value each bucket stands for (float32)."""
  k = 1 << latent_bits
  return ndtri((np.arange(k) + 0.5) / k).astype(np.float32)


def _posterior_ints(graphdef, latent_bits, posterior_bits, state, x_u8):
  model = nnx.merge(graphdef, state)
  mean, logvar = model.encode(x_u8.astype(jnp.float32))
  mean, logvar = mean.astype(jnp.float32), logvar.astype(jnp.float32)
  edges = jnp.asarray(bucket_edges(latent_bits))
  u = (edges[None, None, :] - mean[..., None]) * jnp.exp(-0.5 * logvar)[..., None]  # (B, L, K-1)
  # tail = the smaller of Phi(u) and 1 - Phi(u), accurate in float32 in both tails. With
  # g = Phi(u) below the mean and -(1 - Phi(u)) above it, a bucket's mass is the difference of g
  # at its edges, plus 1 for the bucket holding the mean; the differences of `above` add that 1.
  tail = 0.5 * jax.lax.erfc(jnp.abs(u) * np.float32(np.sqrt(0.5)))
  above = u > 0
  g = jnp.where(above, -tail, tail)
  zeros, ones = jnp.zeros(u.shape[:-1] + (1,), u.dtype), jnp.ones(u.shape[:-1] + (1,), u.dtype)
  g = jnp.concatenate([zeros, g, zeros], -1)                    # Phi(-inf) = 0, 1 - Phi(inf) = 0
  steps = jnp.concatenate([zeros, above.astype(u.dtype), ones], -1)
  mass = (g[..., 1:] - g[..., :-1]) + (steps[..., 1:] - steps[..., :-1])
  mass = jnp.clip(mass, 0.0, 1.0)
  k = 1 << latent_bits
  scale = np.float32((1 << posterior_bits) - k)
  return jnp.floor(mass * scale).astype(jnp.int32) + 1


def _pixel_ints(graphdef, latent_bits, pixel_bits, state, z_index):
  model = nnx.merge(graphdef, state)
  z = jnp.asarray(bucket_centres(latent_bits))[z_index]
  p = model.decode(z, apply_sigmoid=True).astype(jnp.float32).reshape(z.shape[0], -1)
  top = (1 << pixel_bits) - 1
  return jnp.clip(jnp.round(p * np.float32(1 << pixel_bits)), 1, top).astype(jnp.int32)


def _means(graphdef, state, x_u8):
  model = nnx.merge(graphdef, state)
  mean, logvar = model.encode(x_u8.astype(jnp.float32))
  std = jnp.ones_like(mean) if logvar is None else jnp.exp(0.5 * logvar)
  return mean.astype(jnp.float32), std.astype(jnp.float32)


def _mode_image(graphdef, state, z):
  model = nnx.merge(graphdef, state)
  x_logits = model.decode(z).astype(jnp.float32)
  return (x_logits > 0).astype(jnp.uint8).reshape(z.shape[0], -1), x_logits.reshape(z.shape[0], -1)


@dataclasses.dataclass(frozen=True)
class Precision:
  """Bucket count and fixed-point precisions of the integer tables."""
  latent_bits: int = 8        # 2^8 buckets per latent dimension
  posterior_bits: int = 24    # q(z|x) bucket masses in units of 2^-24 (constriction's precision)
  pixel_bits: int = 16        # P(pixel = 1) in units of 2^-16


class ModelTables:
  """A model's integer tables for padded batches, each batch shape compiled once, on the CPU."""

  def __init__(self, model: nnx.Module, precision: Precision = Precision(),
               portable: bool | None = None, fmt: int = integer.FORMAT):
    """portable: the integer networks (default where `integer.supports` the model) or the float
    network (the only choice for other models); fmt: the integer networks' format."""
    self.precision = precision
    self.latent_dim = int(model.latent_dim)
    self.stochastic = bool(getattr(model, "stochastic", True))
    self.portable = integer.supports(model) if portable is None else portable
    # A context model (`vae_jax.nn.cvae_context`): P(x_i = 1) also depends on x's earlier pixels,
    # through its table folded to integer logits added to the integer network's.
    self.context = bool(getattr(model, "autoregressive", False))
    if self.context and not self.portable:
      raise UserError(f"{type(model).__name__} is coded with its integer networks only")
    self.context_ints = (integer.context_logits(model.context_table[...]) if self.context
                         else None)
    graphdef, state = nnx.split(model)
    p = precision
    self._float = jax.device_put(state, cpu_device())
    self._fns = {"means": (jax.jit(functools.partial(_means, graphdef)), self._float)}
    self.compile_seconds = 0.0
    if self.portable:
      start = time.perf_counter()
      folded = integer.fold(model, p.latent_bits, fmt)
      self.compile_seconds = time.perf_counter() - start  # mostly the calibration's compiles
      with jax.enable_x64(True):
        encoder = jax.device_put(folded.encoder, cpu_device())
        decoder = jax.device_put(folded.decoder, cpu_device())
      self._fns.update({
          "posterior": (jax.jit(functools.partial(integer.posterior, latent_bits=p.latent_bits,
                                                  posterior_bits=p.posterior_bits, fmt=fmt)),
                        encoder),
          "pixels": (jax.jit(functools.partial(integer.pixels, latent_bits=p.latent_bits,
                                               pixel_bits=p.pixel_bits, fmt=fmt)), decoder),
          "raw_logits": (jax.jit(functools.partial(integer.raw_logits,
                                                   latent_bits=p.latent_bits, fmt=fmt)), decoder),
          "mode_image": (jax.jit(functools.partial(integer.mode_image, fmt=fmt)), decoder)})
    else:
      self._fns.update({
          "posterior": (jax.jit(functools.partial(_posterior_ints, graphdef, p.latent_bits,
                                                  p.posterior_bits)), self._float),
          "pixels": (jax.jit(functools.partial(_pixel_ints, graphdef, p.latent_bits,
                                               p.pixel_bits)), self._float),
          "mode_image": (jax.jit(functools.partial(_mode_image, graphdef)), self._float)})
    self._compiled = {}

  def _run(self, name: str, batch: np.ndarray, shape: int):
    """fns[name] on `batch` padded with zeros to `shape` rows; the outputs' first len(batch) rows."""
    n = len(batch)
    if n > shape:
      raise ValueError(f"batch of {n} does not fit shape {shape}")
    padded = np.zeros((shape,) + batch.shape[1:], batch.dtype)
    padded[:n] = batch
    key = (name, padded.shape, padded.dtype.str)
    fn, state = self._fns[name]
    exact = self.portable and name != "means"
    with jax.default_device(cpu_device()), (jax.enable_x64(True) if exact
                                           else contextlib.nullcontext()):
      if key not in self._compiled:
        start = time.perf_counter()
        self._compiled[key] = fn.lower(state, padded).compile()
        self.compile_seconds += time.perf_counter() - start
      out = self._compiled[key](state, jax.device_put(padded, cpu_device()))
    return jax.tree.map(lambda a: np.asarray(a)[:n], out)

  def _require_stochastic(self):
    if not self.stochastic:
      raise UserError("lossless bits-back coding needs a VAE (a model with q(z|x)); "
                      "this model is deterministic: use --lossy")

  def posterior(self, x_u8: np.ndarray, shape: int) -> np.ndarray:
    """(b, latent_dim, K) int32 bucket weights of q(z|x) for {0,1} images (b, 28, 28, 1)."""
    self._require_stochastic()
    return self._run("posterior", x_u8, shape)

  def pixels(self, z_index: np.ndarray, shape: int, x: np.ndarray | None = None,
             repeat: int = 1) -> np.ndarray:
    """(b, pixels) int32: P(x = 1 | bucket centres) in units of 2^-pixel_bits; for a context
    model, of the images x (b / repeat, 28, 28, 1) at their own earlier pixels, each image's rows
    `repeat` consecutive rows of z_index."""
    if not self.context:
      return self._run("pixels", z_index.astype(np.int32), shape)
    if x is None:
      raise ValueError("a context model's pixel tables need the images")
    logits = self.raw_logits(z_index, shape)
    ctx = np.repeat(context.contexts(x.reshape(x.shape[0], *x.shape[1:3]).astype(np.int64)),
                    repeat, 0)
    return self.context_probabilities(logits + self.context_ints[ctx]).astype(np.int32)

  def raw_logits(self, z_index: np.ndarray, shape: int) -> np.ndarray:
    """(b, pixels) int64 integer-network logits, before a context term (context models)."""
    return self._run("raw_logits", z_index.astype(np.int32), shape).astype(np.int64)

  def context_probabilities(self, logits: np.ndarray) -> np.ndarray:
    """P(x = 1) in units of 2^-pixel_bits at integer logits (numpy integers, any shape)."""
    return integer.probabilities_np(logits, self.precision.pixel_bits)

  def decode_pixels(self, z_index: np.ndarray, shape: int, pop) -> np.ndarray:
    """A context model's images (b, 28, 28, 1) uint8 at latents z_index, popped pixel position
    by pixel position in raster order: pop(P(x = 1) as float64 multiples of 2^-pixel_bits, the
    `context_probabilities` integers divided exactly, one per image) -> the b bits there."""
    logits = np.ascontiguousarray(self.raw_logits(z_index, shape).T)    # (pixels, b)
    n, b = logits.shape
    context_ints, pixel_bits = self.context_ints, self.precision.pixel_bits
    step = lambda i, ctx: pop(integer.probability_fractions_np(logits[i] + context_ints[ctx],
                                                                pixel_bits))
    return template.decode_raster(b, 28, n // 28, step)[..., None]

  def means(self, x_u8: np.ndarray, shape: int) -> tuple[np.ndarray, np.ndarray]:
    """(b, latent_dim) float32 posterior means and standard deviations (a deterministic
    model's code, and ones)."""
    return self._run("means", x_u8, shape)

  def mode_image(self, z: np.ndarray, shape: int) -> tuple[np.ndarray, np.ndarray]:
    """The decoder's most probable image (b, pixels) uint8 at latents z, and its logits."""
    if self.context:
      raise UserError("lossy coding takes a model without a context term (cvae); this one "
                      "codes losslessly only")
    return self._run("mode_image", z.astype(np.float32), shape)
