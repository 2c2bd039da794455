"""Lossless bits-back coding with ANS (BB-ANS, Townsend, Bird & Barber 2019) on constriction.

One ANS stack carries the whole image set, batch after batch. Encoding a batch: pop its latents
from q(z|x) (getting bits back), push the pixels under p(x|z) at those latents, push the latents
under the prior (uniform over the equal-mass buckets: exactly latent_bits each). Decoding runs the
batches in reverse and mirrors every step: pop latents under the prior, pop pixels under p(x|z),
recompute q(z|x) from the decoded pixels and push the latents back.

With `samples` k > 1 the chain is importance-sampled bits-back (BB-IS, Ruan et al. 2021,
"Improving Lossless Compression Rates via Monte Carlo Bits-Back Coding"): k latents per image are
popped from q(z|x) and one of them, j, from the importance weights (`importance`); the other k - 1
go back under q, the image is pushed at z_j. The net cost per image is then
-log2 (1/k) sum_i p(x, z_i) / q(z_i|x) (the IWAE-k bound of the integer tables) instead of the
-ELBO, at k model calls per image and k times the initial bits (a batch dips k latents deep).

Initial bits. Popping from an empty stack yields degenerate latents (constriction decodes symbol
0 from an empty coder), so the stack starts as `seed_words` pseudo-random words that both sides
derive from a fixed string (SHAKE-256). The first batches pop from them; the words they never
reached stay as they were and are left out of the file (the decoder regenerates them): the file
holds every word the chain needed, and 32 bits for each seed word it consumed are the
initial-bits cost. After decoding, the stack must be exactly the seed again, a check of the whole
chain. Batch sizes grow with the images already coded (at most 1 / `ramp` of them, a power of
two, up to `max_batch`), so only the first few images borrow seed bits: a batch pops about three
times the bits it adds on MNIST, so the images before it must have added that much.
"""

import dataclasses
import hashlib
import struct
from typing import Callable

import constriction
import numpy as np

from vae_jax.codec import importance
from vae_jax.codec.tables import ModelTables, Precision
from vae_jax.errors import UserError
from vae_jax.nn.models import IMAGE_SHAPE

_SEED_STRING = b"vae_jax bits-back initial words v1"
MAX_BATCH = 1024
MAX_SEED_WORDS = 1 << 16
MAX_SAMPLES = 1024
MAX_ROWS = 1 << 16           # latents per model call (max_batch * samples)


@dataclasses.dataclass(frozen=True)
class Settings:
  """Coder settings, written into every file's header."""
  precision: Precision = Precision()
  max_batch: int = 64         # images per model call at most
  ramp: int = 4               # a batch holds at most 1/ramp of the images coded before it
  seed_words: int = 1 << 16   # initial stack (only the consumed part is stored)
  samples: int = 1            # k latents per image: BB-IS (importance-sampled bits-back) if > 1

  _FORMAT = "<BBBHBIH"

  def pack(self) -> bytes:
    p = self.precision
    return struct.pack(self._FORMAT, p.latent_bits, p.posterior_bits, p.pixel_bits,
                       self.max_batch, self.ramp, self.seed_words, self.samples)

  @classmethod
  def unpack(cls, raw: bytes) -> "Settings":
    if len(raw) != struct.calcsize(cls._FORMAT):
      raise UserError("corrupt file: lossless coder settings have the wrong size")
    latent, posterior, pixel, max_batch, ramp, seed, samples = struct.unpack(cls._FORMAT, raw)
    settings = cls(Precision(latent, posterior, pixel), max_batch, ramp, seed, samples)
    settings.validate()
    return settings

  def validate(self) -> None:
    p = self.precision
    # bounded so that a crafted header cannot ask for a huge seed or batch shape
    if not (1 <= p.latent_bits <= 12 and p.latent_bits < p.posterior_bits <= 24
            and 2 <= p.pixel_bits <= 24 and 1 <= self.max_batch <= MAX_BATCH
            and 1 <= self.ramp <= 1024 and 2 <= self.seed_words <= MAX_SEED_WORDS
            and 1 <= self.samples <= MAX_SAMPLES and self.max_batch * self.samples <= MAX_ROWS):
      raise UserError(f"unsupported lossless coder settings {self}")


def seed_words(n: int) -> np.ndarray:
  """The fixed initial stack: n uint32 words of SHAKE-256 of a constant (last word nonzero)."""
  words = np.frombuffer(hashlib.shake_256(_SEED_STRING).digest(4 * n), "<u4").astype(np.uint32)
  words[-1] |= np.uint32(1)  # constriction drops trailing zero words
  return words


def _batch_size(done: int, remaining: int, settings: Settings) -> int:
  # a batch pops k latents per image before it pushes k - 1 of them back
  allowed = max(1, min(settings.max_batch, done // (settings.ramp * settings.samples)))
  return min(1 << (allowed.bit_length() - 1), remaining)


def schedule(count: int, settings: Settings) -> list[tuple[int, int, int]]:
  """(start, size, padded shape) of every batch, in encoding order."""
  batches, done = [], 0
  while done < count:
    size = _batch_size(done, count - done, settings)
    batches.append((done, size, _shape(size, settings.max_batch)))
    done += size
  return batches


def _shape(size: int, max_batch: int) -> int:
  """The compiled batch shape a batch of `size` is padded to: a power of 4, or max_batch."""
  shape = 1
  while shape < size:
    shape *= 4
  return min(shape, max_batch)


def batch_shapes(count: int, settings: Settings) -> list[int]:
  return sorted({shape for _, _, shape in schedule(count, settings)})


_POSTERIOR = constriction.stream.model.Categorical(perfect=False)
_PIXEL = constriction.stream.model.Bernoulli(perfect=False)


def _pixel_probabilities(pixel_ints: np.ndarray, pixel_bits: int) -> np.ndarray:
  return pixel_ints.reshape(-1).astype(np.float64) / (1 << pixel_bits)


def image_bits(posterior: np.ndarray, z: np.ndarray, pixel_ints: np.ndarray, x01: np.ndarray,
               precision: Precision) -> np.ndarray:
  """Each image's net cost in bits on the chain, from the integer tables: -log2 P(x|z) plus
  latent_bits per latent (the prior) minus the bits got back, -log2 Q(z|x)."""
  b = len(x01)
  weights = posterior.astype(np.float64)
  chosen = np.take_along_axis(weights, z.reshape(-1, 1).astype(np.int64), -1)[:, 0]
  back = -np.log2(chosen / weights.sum(-1)).reshape(b, -1).sum(-1)
  k = pixel_ints.reshape(b, -1).astype(np.float64)
  one = float(1 << precision.pixel_bits)
  pixels = -np.log2(np.where(x01.reshape(b, -1) == 1, k, one - k) / one).sum(-1)
  return pixels + z.reshape(b, -1).shape[1] * precision.latent_bits - back


class _BatchModel:
  """One batch's tables as both sides compute them, in the same calls (shapes fixed per batch)."""

  def __init__(self, tables: ModelTables, settings: Settings, size: int, shape: int):
    self.tables, self.size, self.shape = tables, size, shape
    self.k, self.p = settings.samples, settings.precision
    self.buckets = 1 << self.p.latent_bits

  def posterior(self, x: np.ndarray) -> np.ndarray:
    return self.tables.posterior(x, self.shape)                       # (B, L, K)

  def rows(self, posterior: np.ndarray, repeat: int) -> np.ndarray:
    """q(z|x) rows for `repeat` latents per image, image-major (as constriction takes them)."""
    rows = posterior.astype(np.float64)[:, None]     # one float64 copy, repeated (not twice)
    return np.repeat(rows, repeat, 1).reshape(-1, self.buckets)

  def pixels(self, z_bl: np.ndarray, x: np.ndarray) -> np.ndarray:
    return self.tables.pixels(z_bl, self.shape, x)

  def push_pixels(self, coder, x: np.ndarray, pixels: np.ndarray) -> None:
    """x under its tables, so that `pop_pixels` pops it: image by image, or for a context model
    position by position (its decoder needs every image's earlier pixels first)."""
    probabilities = pixels.reshape(len(x), -1)
    symbols = x.reshape(len(x), -1)
    if self.tables.context:
      probabilities, symbols = probabilities.T, symbols.T
    coder.encode_reverse(np.ascontiguousarray(symbols).reshape(-1).astype(np.int32), _PIXEL,
                         _pixel_probabilities(np.ascontiguousarray(probabilities),
                                              self.p.pixel_bits))

  def pop_pixels(self, coder, z_j: np.ndarray) -> np.ndarray:
    if self.tables.context:
      return self.tables.decode_pixels(z_j, self.shape, lambda p: coder.decode(_PIXEL, p))
    pixels = self.pixels(z_j, None)
    x = coder.decode(_PIXEL, _pixel_probabilities(pixels, self.p.pixel_bits))
    return x.astype(np.uint8).reshape((len(z_j),) + IMAGE_SHAPE)

  def weights(self, posterior, z_bkl, x) -> tuple[np.ndarray, np.ndarray]:
    """(B, k) integer importance weights from the k latents' tables (one call of shape*k rows),
    and those tables (B, k, pixels)."""
    pixels = self.tables.pixels(z_bkl.reshape(-1, z_bkl.shape[-1]), self.shape * self.k, x,
                                repeat=self.k)
    weights = importance.categorical_weights(
        importance.log_weights(posterior, z_bkl, pixels, x, self.p.pixel_bits))
    return weights, pixels.reshape(len(x), self.k, -1)


def _others(z_bkl: np.ndarray, j: np.ndarray) -> np.ndarray:
  """(B, k - 1, L): every latent but the j-th of each image, in order."""
  keep = np.arange(z_bkl.shape[1])[None, :] != j[:, None]
  return z_bkl[keep].reshape(z_bkl.shape[0], -1, z_bkl.shape[2])


def encode_chain(tables: ModelTables, images: np.ndarray, settings: Settings, coder,
                 accept: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None,
                 progress: Callable[[int], None] = lambda n: None):
  """Pushes {0,1} images (N, 28, 28, 1) onto `coder` batch after batch.

  With k = settings.samples (BB-IS; k = 1 is BB-ANS), per batch: pop k latents per image from
  q(z|x); pop an index j from the importance weights; push the other k - 1 latents back under
  q(z|x); push x under p(x|z_j), z_j under the prior and j uniformly (log2 k bits). The decoder
  mirrors it in reverse order: j, z_j, x, the k - 1 others, then pushes j and all k latents back.

  `accept(indices, bits)` sees each batch's images and net costs before anything is pushed; the
  images it rejects are taken out, the batch's pops undone (the coder as it was before the batch)
  and the batch formed again from the images left, so the schedule is the one the decoder computes
  from the count of images kept. Returns (coder, indices of the images kept, their net bits,
  their latents z_j)."""
  p, k = settings.precision, settings.samples
  prior = constriction.stream.model.Uniform(1 << p.latent_bits)
  order = np.arange(len(images))
  kept_bits = np.zeros(len(images))
  latents = np.zeros((len(images), tables.latent_dim), np.int32)
  done = 0
  while done < len(order):
    size = _batch_size(done, len(order) - done, settings)
    batch = _BatchModel(tables, settings, size, _shape(size, settings.max_batch))
    idx = order[done:done + size]
    x = images[idx]
    before = coder.clone() if accept is not None else None
    posterior = batch.posterior(x)
    z = np.asarray(coder.decode(_POSTERIOR, batch.rows(posterior, k))).reshape(size, k, -1)
    if k > 1:
      weights, pixels_k = batch.weights(posterior, z, x)
      j = np.asarray(coder.decode(_POSTERIOR, weights.astype(np.float64)), np.int64)
      back_j = np.log2(weights[np.arange(size), j] / weights.sum(-1))
    else:
      j, back_j = np.zeros(size, np.int64), np.zeros(size)
    z_j = z[np.arange(size), j]
    # integer networks give the same tables at any batch shape, so z_j's come from the k-row call;
    # a float network's must come from the call the decoder makes (shape rows)
    pixels = (pixels_k[np.arange(size), j] if k > 1 and tables.portable
              else batch.pixels(z_j, x))
    bits = image_bits(posterior.reshape(size * tables.latent_dim, -1), z_j, pixels, x, p) \
        + back_j + np.log2(k)
    if accept is not None:
      ok = np.asarray(accept(idx, bits), bool)
      if not ok.all():
        coder = before
        order = np.concatenate([order[:done], idx[ok], order[done + size:]])
        continue
    if k > 1:
      coder.encode_reverse(_others(z, j).reshape(-1), _POSTERIOR, batch.rows(posterior, k - 1))
    batch.push_pixels(coder, x, pixels)
    coder.encode_reverse(z_j.reshape(-1), prior)
    if k > 1:
      coder.encode_reverse(j.astype(np.int32), constriction.stream.model.Uniform(k))
    kept_bits[idx] = bits
    latents[idx] = z_j
    done += size
    progress(size)
  return coder, order, kept_bits[order], latents[order]


def decode_chain(tables: ModelTables, coder, count: int, settings: Settings,
                 progress: Callable[[int], None] = lambda n: None) -> np.ndarray:
  """Pops the `count` images `encode_chain` pushed (mirroring every step), in their order."""
  p, k = settings.precision, settings.samples
  prior = constriction.stream.model.Uniform(1 << p.latent_bits)
  images = np.zeros((count,) + IMAGE_SHAPE, np.uint8)
  for start, size, shape in reversed(schedule(count, settings)):
    batch = _BatchModel(tables, settings, size, shape)
    j = (np.asarray(coder.decode(constriction.stream.model.Uniform(k), size), np.int64) if k > 1
         else np.zeros(size, np.int64))
    z_j = np.asarray(coder.decode(prior, size * tables.latent_dim)).reshape(size, -1)
    x = batch.pop_pixels(coder, z_j)
    posterior = batch.posterior(x)
    if k > 1:
      others = np.asarray(coder.decode(_POSTERIOR, batch.rows(posterior, k - 1)))
      z = np.zeros((size, k, tables.latent_dim), z_j.dtype)
      keep = np.arange(k)[None, :] != j[:, None]
      z[keep] = others.reshape(-1, tables.latent_dim)
      z[np.arange(size), j] = z_j
      coder.encode_reverse(j.astype(np.int32), _POSTERIOR,
                           batch.weights(posterior, z, x)[0].astype(np.float64))
    else:
      z = z_j[:, None]
    coder.encode_reverse(z.reshape(-1), _POSTERIOR, batch.rows(posterior, k))
    images[start:start + size] = x
    progress(size)
  return images


def estimate_bits(tables: ModelTables, images: np.ndarray, settings: Settings,
                  seed: int = 0) -> np.ndarray:
  """Each image's expected net cost from k = settings.samples latents drawn from its q(z|x)
  tables: -log2 of the mean of 2^-(net bits at z_i), the IWAE-k bound of the tables (an estimate
  of what the chain will charge, which draws its latents from the stack)."""
  p, k = settings.precision, settings.samples
  rng = np.random.default_rng(seed)
  out = np.zeros(len(images))
  per_call = max(1, settings.max_batch // k)
  for start in range(0, len(images), per_call):
    x = images[start:start + per_call]
    b = len(x)
    posterior = tables.posterior(x, settings.max_batch).astype(np.int64)
    posterior = np.repeat(posterior[:, None], k, 1).reshape(-1, 1 << p.latent_bits)
    cdf = np.cumsum(posterior, -1)
    r = (rng.random(len(cdf)) * cdf[:, -1]).astype(np.int64)
    z = (cdf <= r[:, None]).sum(-1).astype(np.int32)
    pixels = tables.pixels(z.reshape(b * k, -1), settings.max_batch, x, repeat=k)
    bits = image_bits(posterior, z, pixels, np.repeat(x, k, 0), p).reshape(b, k)
    low = bits.min(-1)
    out[start:start + b] = low - np.log2(np.mean(np.exp2(low[:, None] - bits), -1))
  return out


@dataclasses.dataclass
class EncodeResult:
  words: np.ndarray       # the stack above the untouched seed words (uint32)
  omitted: int            # seed words left out of the file (untouched)
  initial_bits: int       # 32 * seed words the chain consumed
  latents: np.ndarray     # (N, latent_dim) the bucket indices popped for each image
  bits: np.ndarray        # (N,) each image's net cost (`image_bits`)


def split_seed(stack: np.ndarray, seed: np.ndarray) -> int:
  """How many bottom words of `stack` are the seed's own (left out of the file)."""
  limit = min(len(stack), len(seed))
  differs = np.nonzero(stack[:limit] != seed[:limit])[0]
  return int(differs[0]) if len(differs) else limit


def encode(tables: ModelTables, images: np.ndarray, settings: Settings,
           progress: Callable[[int], None] = lambda n: None) -> EncodeResult:
  """Encodes {0,1} uint8 images (N, 28, 28, 1) into one ANS stack on top of the seed words."""
  seed = seed_words(settings.seed_words)
  coder, _, bits, latents = encode_chain(tables, images, settings,
                                         constriction.stream.stack.AnsCoder(seed),
                                         progress=progress)
  stack = coder.get_compressed()
  omitted = split_seed(stack, seed)
  return EncodeResult(stack[omitted:].copy(), omitted, 32 * (len(seed) - omitted), latents, bits)
