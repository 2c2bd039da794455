"""Lossless bits-back coding with ANS (BB-ANS, Townsend, Bird & Barber 2019) on constriction.

One ANS stack carries the whole image set, batch after batch. Encoding a batch: pop its latents
from q(z|x) (getting bits back), push the pixels under p(x|z) at those latents, push the latents
under the prior (uniform over the equal-mass buckets: exactly latent_bits each). Decoding runs the
batches in reverse and mirrors every step: pop latents under the prior, pop pixels under p(x|z),
recompute q(z|x) from the decoded pixels and push the latents back.

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

from vae_jax.codec.tables import ModelTables, Precision
from vae_jax.errors import UserError
from vae_jax.nn.models import IMAGE_SHAPE

_SEED_STRING = b"vae_jax bits-back initial words v1"
MAX_BATCH = 1024
MAX_SEED_WORDS = 1 << 16


@dataclasses.dataclass(frozen=True)
class Settings:
  """Coder settings, written into every file's header."""
  precision: Precision = Precision()
  max_batch: int = 64         # images per model call at most
  ramp: int = 4               # a batch holds at most 1/ramp of the images coded before it
  seed_words: int = 1 << 16   # initial stack (only the consumed part is stored)

  _FORMAT = "<BBBHBI"

  def pack(self) -> bytes:
    p = self.precision
    return struct.pack(self._FORMAT, p.latent_bits, p.posterior_bits, p.pixel_bits,
                       self.max_batch, self.ramp, self.seed_words)

  @classmethod
  def unpack(cls, raw: bytes) -> "Settings":
    if len(raw) != struct.calcsize(cls._FORMAT):
      raise UserError("corrupt file: lossless coder settings have the wrong size")
    latent, posterior, pixel, max_batch, ramp, seed = struct.unpack(cls._FORMAT, raw)
    settings = cls(Precision(latent, posterior, pixel), max_batch, ramp, seed)
    settings.validate()
    return settings

  def validate(self) -> None:
    p = self.precision
    # bounded so that a crafted header cannot ask for a huge seed or batch shape
    if not (1 <= p.latent_bits <= 12 and p.latent_bits < p.posterior_bits <= 24
            and 2 <= p.pixel_bits <= 24 and 1 <= self.max_batch <= MAX_BATCH
            and 1 <= self.ramp <= 1024 and 2 <= self.seed_words <= MAX_SEED_WORDS):
      raise UserError(f"unsupported lossless coder settings {self}")


def seed_words(n: int) -> np.ndarray:
  """The fixed initial stack: n uint32 words of SHAKE-256 of a constant (last word nonzero)."""
  words = np.frombuffer(hashlib.shake_256(_SEED_STRING).digest(4 * n), "<u4").astype(np.uint32)
  words[-1] |= np.uint32(1)  # constriction drops trailing zero words
  return words


def _batch_size(done: int, remaining: int, settings: Settings) -> int:
  allowed = max(1, min(settings.max_batch, done // settings.ramp))
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


def encode_chain(tables: ModelTables, images: np.ndarray, settings: Settings, coder,
                 accept: Callable[[np.ndarray, np.ndarray], np.ndarray] | None = None,
                 progress: Callable[[int], None] = lambda n: None):
  """Pushes {0,1} images (N, 28, 28, 1) onto `coder` batch after batch.

  `accept(indices, bits)` sees each batch's images and net costs (bits per image, `image_bits`) before anything is
  pushed; the images it rejects are taken out, the batch's pops are undone (the coder as it was
  before the batch) and the batch formed again from the images left, so the schedule is the one
  the decoder computes from the count of images kept. Returns (coder, indices of the images kept,
  their net bits, their latents)."""
  p = settings.precision
  prior = constriction.stream.model.Uniform(1 << p.latent_bits)
  order = np.arange(len(images))
  kept_bits = np.zeros(len(images))
  latents = np.zeros((len(images), tables.latent_dim), np.int32)
  done = 0
  while done < len(order):
    size = _batch_size(done, len(order) - done, settings)
    shape = _shape(size, settings.max_batch)
    idx = order[done:done + size]
    x = images[idx]
    before = coder.clone() if accept is not None else None
    posterior = tables.posterior(x, shape).reshape(-1, 1 << p.latent_bits)
    z = coder.decode(_POSTERIOR, posterior.astype(np.float64))
    pixels = tables.pixels(z.reshape(size, -1), shape)
    bits = image_bits(posterior, z, pixels, x, p)
    if accept is not None:
      ok = np.asarray(accept(idx, bits), bool)
      if not ok.all():
        coder = before
        order = np.concatenate([order[:done], idx[ok], order[done + size:]])
        continue
    coder.encode_reverse(x.reshape(-1).astype(np.int32), _PIXEL,
                         _pixel_probabilities(pixels, p.pixel_bits))
    coder.encode_reverse(z, prior)
    kept_bits[idx] = bits
    latents[idx] = z.reshape(size, -1)
    done += size
    progress(size)
  return coder, order, kept_bits[order], latents[order]


def decode_chain(tables: ModelTables, coder, count: int, settings: Settings,
                 progress: Callable[[int], None] = lambda n: None) -> np.ndarray:
  """Pops the `count` images `encode_chain` pushed (mirroring every step), in their order."""
  p = settings.precision
  prior = constriction.stream.model.Uniform(1 << p.latent_bits)
  images = np.zeros((count,) + IMAGE_SHAPE, np.uint8)
  for start, size, shape in reversed(schedule(count, settings)):
    z = coder.decode(prior, size * tables.latent_dim)
    pixels = tables.pixels(z.reshape(size, -1), shape)
    x = coder.decode(_PIXEL, _pixel_probabilities(pixels, p.pixel_bits))
    x = x.astype(np.uint8).reshape((size,) + IMAGE_SHAPE)
    posterior = tables.posterior(x, shape).reshape(-1, 1 << p.latent_bits)
    coder.encode_reverse(z, _POSTERIOR, posterior.astype(np.float64))
    images[start:start + size] = x
    progress(size)
  return images


def estimate_bits(tables: ModelTables, images: np.ndarray, settings: Settings,
                  seed: int = 0) -> np.ndarray:
  """Each image's net cost at one latent drawn from its q(z|x) table (an estimate of what the
  chain will charge, which draws its latents from the stack), in batches of max_batch."""
  p = settings.precision
  rng = np.random.default_rng(seed)
  out = np.zeros(len(images))
  batch = settings.max_batch
  for start in range(0, len(images), batch):
    x = images[start:start + batch]
    posterior = tables.posterior(x, batch).reshape(-1, 1 << p.latent_bits).astype(np.int64)
    cdf = np.cumsum(posterior, -1)
    r = (rng.random(len(cdf)) * cdf[:, -1]).astype(np.int64)
    z = (cdf <= r[:, None]).sum(-1).astype(np.int32)
    pixels = tables.pixels(z.reshape(len(x), -1), batch)
    out[start:start + batch] = image_bits(posterior, z, pixels, x, p)
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
