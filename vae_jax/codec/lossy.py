"""Lossy coding: the posterior mean, uniformly quantized, under a factorized discretized Gaussian.

The encoder quantizes each image's code (the posterior mean; a deterministic autoencoder's z)
dimension by dimension to integers q_d = round(mean_d / (step * s_d)), where s_d is dimension d's
posterior standard deviation averaged over the coded images (1 for a deterministic model): the
step is measured in the model's own uncertainty, so dimensions the decoder hardly uses get coarse
steps (at equal rate this made about a third fewer pixel errors than one step for all dimensions,
on MNIST with the tutorial model). It fits one discretized Gaussian per dimension to the q (its
mean, standard deviation and symbol range go into the header with s_d, as float16 and int16) and
pushes every q through the same ANS coder as the lossless mode. The decoder pops them and decodes
q_d * step * s_d to the decoder's most probable image (pixel = 1 where the logit is > 0). A
dimension whose symbols are all equal costs no bits. `encode_symbols`/`decode_symbols` code any integer matrix
this way (the PCA baseline uses them too).
"""

import dataclasses
import struct

import constriction
import numpy as np
from scipy.special import ndtr

from vae_jax.codec.tables import ModelTables
from vae_jax.errors import UserError

PROBABILITY_BITS = 24
MIN_SIGMA = 0.25  # in quantization steps: keeps a near-constant dimension's table finite
SYMBOL_LIMIT = 2 ** 15 - 1


@dataclasses.dataclass(frozen=True)
class FactorizedPrior:
  """Per dimension: symbol range [lo, hi] and the discretized Gaussian's mean and std (in steps)."""
  lo: np.ndarray      # int16 (D,)
  hi: np.ndarray      # int16 (D,)
  mu: np.ndarray      # float16 (D,)
  sigma: np.ndarray   # float16 (D,)

  @classmethod
  def fit(cls, q: np.ndarray) -> "FactorizedPrior":
    """Fitted to the integer codes q (N, D): their range, mean and standard deviation."""
    if np.abs(q).max(initial=0) > SYMBOL_LIMIT:
      raise UserError(f"quantized codes exceed +-{SYMBOL_LIMIT}: use a larger --step")
    q64 = q.astype(np.float64)
    return cls(q.min(0).astype(np.int16), q.max(0).astype(np.int16),
               q64.mean(0).astype(np.float16),
               np.maximum(q64.std(0), MIN_SIGMA).astype(np.float16))

  def pack(self) -> bytes:
    return (struct.pack("<H", len(self.lo)) + self.lo.astype("<i2").tobytes()
            + self.hi.astype("<i2").tobytes() + self.mu.astype("<f2").tobytes()
            + self.sigma.astype("<f2").tobytes())

  @classmethod
  def unpack(cls, raw: bytes) -> tuple["FactorizedPrior", bytes]:
    """The prior at the start of raw, and the bytes after it."""
    if len(raw) < 2:
      raise UserError("corrupt file: lossy prior missing")
    (d,) = struct.unpack_from("<H", raw)
    if len(raw) < 2 + 8 * d:
      raise UserError("corrupt file: lossy prior truncated")
    parts = [np.frombuffer(raw, dt, d, 2 + 2 * d * i) for i, dt in enumerate(("<i2", "<i2", "<f2", "<f2"))]
    prior = cls(parts[0].astype(np.int16), parts[1].astype(np.int16), parts[2].astype(np.float16),
                parts[3].astype(np.float16))
    if np.any(prior.lo > prior.hi) or not np.all(np.isfinite(prior.mu.astype(np.float64))) \
        or not np.all(prior.sigma.astype(np.float64) > 0):
      raise UserError("corrupt file: invalid lossy prior")
    return prior, raw[2 + 8 * d:]

  def table(self, d: int) -> np.ndarray:
    """Integer weights (>= 1) of symbols lo..hi of dimension d; the end bins take the tails."""
    j = np.arange(int(self.lo[d]), int(self.hi[d]) + 2, dtype=np.float64) - 0.5
    mu, sigma = float(self.mu[d]), float(self.sigma[d])
    cdf = ndtr((j - mu) / sigma)
    cdf[0], cdf[-1] = 0.0, 1.0
    mass = np.diff(cdf)
    return np.floor(mass * ((1 << PROBABILITY_BITS) - len(mass))).astype(np.int64) + 1

  def coded_dims(self) -> list[int]:
    return [d for d in range(len(self.lo)) if self.hi[d] > self.lo[d]]


def encode_symbols(q: np.ndarray, prior: FactorizedPrior) -> np.ndarray:
  """ANS words coding the integer matrix q (N, D) under the prior, dimension after dimension."""
  coder = constriction.stream.stack.AnsCoder()
  for d in reversed(prior.coded_dims()):
    model = constriction.stream.model.Categorical(prior.table(d).astype(np.float64), perfect=False)
    coder.encode_reverse((q[:, d] - int(prior.lo[d])).astype(np.int32), model)
  return coder.get_compressed()


def decode_symbols(words: np.ndarray, prior: FactorizedPrior, n: int) -> np.ndarray:
  q = np.repeat(prior.lo[None, :].astype(np.int32), n, axis=0)
  coder = constriction.stream.stack.AnsCoder(words)
  try:
    for d in prior.coded_dims():
      model = constriction.stream.model.Categorical(prior.table(d).astype(np.float64), perfect=False)
      q[:, d] = coder.decode(model, n) + int(prior.lo[d])
  except (ValueError, RuntimeError) as e:
    raise UserError(f"the compressed stream does not decode ({e})") from None
  if not coder.is_empty():
    raise UserError("corrupt file: data left over after the last latent")
  return q


def _batches(n: int, batch: int):
  return [(start, min(batch, n - start)) for start in range(0, n, batch)]


def codes(tables: ModelTables, images: np.ndarray, step: float, batch: int):
  """(q (N, latent_dim) int64, scales s_d float16): every image's quantized posterior mean."""
  outs = [tables.means(images[s:s + n], batch) for s, n in _batches(len(images), batch)]
  means = np.concatenate([o[0] for o in outs]).astype(np.float64)
  stds = np.concatenate([o[1] for o in outs]).astype(np.float64)
  scales = np.maximum(stds.mean(0), 1e-3).astype(np.float16)
  return np.rint(means / dimension_steps(step, scales)).astype(np.int64), scales


def dimension_steps(step: float, scales: np.ndarray) -> np.ndarray:
  """step * s_d in float64, from the header's float32 step and float16 scales."""
  return float(np.float32(step)) * scales.astype(np.float64)


def reconstruct(tables: ModelTables, q: np.ndarray, steps: np.ndarray, batch: int):
  """The decoder's most probable images (N, pixels) at latents q * steps, and their logits."""
  z = (q.astype(np.float64) * steps).astype(np.float32)
  outs = [tables.mode_image(z[s:s + n], batch) for s, n in _batches(len(z), batch)]
  return np.concatenate([o[0] for o in outs]), np.concatenate([o[1] for o in outs])


def pack_settings(step: float, batch: int, scales: np.ndarray, prior: FactorizedPrior) -> bytes:
  """step (float32), batch (uint16), dimension count (uint16), scales (float16 each), prior."""
  return (struct.pack("<fHH", step, batch, len(scales)) + scales.astype("<f2").tobytes()
          + prior.pack())


def unpack_settings(raw: bytes) -> tuple[float, int, np.ndarray, FactorizedPrior]:
  """(step, batch, scales, prior) from the header's lossy settings."""
  if len(raw) < 8:
    raise UserError("corrupt file: lossy settings truncated")
  step, batch, dims = struct.unpack_from("<fHH", raw)
  if len(raw) < 8 + 2 * dims:
    raise UserError("corrupt file: lossy settings truncated")
  scales = np.frombuffer(raw, "<f2", dims, 8).astype(np.float16)
  prior, rest = FactorizedPrior.unpack(raw[8 + 2 * dims:])
  if rest or len(prior.lo) != dims or not (
      np.isfinite(step) and step > 0 and batch >= 1
      and np.all(np.isfinite(scales.astype(np.float64))) and np.all(scales > 0)):
    raise UserError("corrupt file: invalid lossy settings")
  return float(step), batch, scales, prior


MAX_BATCH = 1024
_FREE_IMAGES = 1 << 20  # a file whose latents are all constant codes its images in no bits


def check_settings(raw: bytes, count: int, payload_bytes: int, name: str) -> None:
  """Refuses lossy settings and an image count beyond what the payload can hold: every image costs
  at least the sum over coded dimensions of -log2 of their most probable symbol's probability."""
  _, batch, _, prior = unpack_settings(raw)
  if batch > MAX_BATCH:
    raise UserError(f"{name}: corrupt (lossy batch {batch} above {MAX_BATCH})")
  min_bits = 0.0
  for d in prior.coded_dims():
    table = prior.table(d).astype(np.float64)
    min_bits -= np.log2(table.max() / table.sum())
  if (count * min_bits > 8 * payload_bytes + 64) or (min_bits == 0 and count > _FREE_IMAGES):
    raise UserError(f"{name}: corrupt (the header claims {count} images, more than "
                    f"{payload_bytes} bytes of payload can hold)")
