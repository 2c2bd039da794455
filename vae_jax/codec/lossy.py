"""Lossy coding: the posterior mean, uniformly quantized, under a factorized discretized Gaussian.

The encoder quantizes each image's code (the posterior mean; a deterministic autoencoder's z) to
integers q = round(mean / step), fits one discretized Gaussian per latent dimension to them (its
mean, standard deviation and symbol range go into the header, as float16 and int16), and pushes
every q through the same ANS coder as the lossless mode. The decoder pops them, and decodes
q * step to the decoder's most probable image (pixel = 1 where the logit is > 0). A dimension whose
symbols are all equal costs no bits. `encode_symbols`/`decode_symbols` code any integer matrix
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


def codes(tables: ModelTables, images: np.ndarray, step: float, batch: int) -> np.ndarray:
  """round(mean / step) of every image, (N, latent_dim) int32."""
  means = np.concatenate([tables.means(images[s:s + n], batch) for s, n in _batches(len(images), batch)])
  return np.rint(means.astype(np.float64) / step).astype(np.int64)


def reconstruct(tables: ModelTables, q: np.ndarray, step: float, batch: int):
  """The decoder's most probable images (N, pixels) at q * step, and their logits."""
  z = (q.astype(np.float64) * step).astype(np.float32)
  outs = [tables.mode_image(z[s:s + n], batch) for s, n in _batches(len(z), batch)]
  return np.concatenate([o[0] for o in outs]), np.concatenate([o[1] for o in outs])


def pack_settings(step: float, batch: int, prior: FactorizedPrior) -> bytes:
  return struct.pack("<fH", step, batch) + prior.pack()


def unpack_settings(raw: bytes) -> tuple[float, int, FactorizedPrior]:
  if len(raw) < 6:
    raise UserError("corrupt file: lossy settings truncated")
  step, batch = struct.unpack_from("<fH", raw)
  prior, rest = FactorizedPrior.unpack(raw[6:])
  if rest or not (np.isfinite(step) and step > 0 and batch >= 1):
    raise UserError("corrupt file: invalid lossy settings")
  return float(step), batch, prior
