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
    if not (1 <= p.latent_bits <= 12 and p.latent_bits < p.posterior_bits <= 24
            and 2 <= p.pixel_bits <= 24 and self.max_batch >= 1 and self.ramp >= 1
            and self.seed_words >= 2):
      raise UserError(f"unsupported lossless coder settings {self}")


def seed_words(n: int) -> np.ndarray:
  """The fixed initial stack: n uint32 words of SHAKE-256 of a constant (last word nonzero)."""
  words = np.frombuffer(hashlib.shake_256(_SEED_STRING).digest(4 * n), "<u4").astype(np.uint32)
  words[-1] |= np.uint32(1)  # constriction drops trailing zero words
  return words


def schedule(count: int, settings: Settings) -> list[tuple[int, int, int]]:
  """(start, size, padded shape) of every batch, in encoding order."""
  batches, done = [], 0
  while done < count:
    allowed = max(1, min(settings.max_batch, done // settings.ramp))
    size = min(1 << (allowed.bit_length() - 1), count - done)
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


@dataclasses.dataclass
class EncodeResult:
  words: np.ndarray       # the stack above the untouched seed words (uint32)
  omitted: int            # seed words left out of the file (untouched)
  initial_bits: int       # 32 * seed words the chain consumed
  min_stack_words: int    # the lowest the stack went
  latents: np.ndarray     # (N, latent_dim) the bucket indices popped for each image


def encode(tables: ModelTables, images: np.ndarray, settings: Settings,
           progress: Callable[[int], None] = lambda n: None) -> EncodeResult:
  """Encodes {0,1} uint8 images (N, 28, 28, 1) into one ANS stack on top of the seed words."""
  p = settings.precision
  seed = seed_words(settings.seed_words)
  prior = constriction.stream.model.Uniform(1 << p.latent_bits)
  coder = constriction.stream.stack.AnsCoder(seed)
  lowest = coder.num_words()
  latents = np.zeros((len(images), tables.latent_dim), np.int32)
  for start, size, shape in schedule(len(images), settings):
    x = images[start:start + size]
    posterior = tables.posterior(x, shape).reshape(-1, 1 << p.latent_bits)
    z = coder.decode(_POSTERIOR, posterior.astype(np.float64))
    lowest = min(lowest, coder.num_words())  # a pop only shrinks the stack: the low point
    pixels = tables.pixels(z.reshape(size, -1), shape)
    coder.encode_reverse(x.reshape(-1).astype(np.int32), _PIXEL,
                         _pixel_probabilities(pixels, p.pixel_bits))
    coder.encode_reverse(z, prior)
    latents[start:start + size] = z.reshape(size, -1)
    progress(size)
  stack = coder.get_compressed()
  limit = min(len(stack), len(seed))
  differs = np.nonzero(stack[:limit] != seed[:limit])[0]
  omitted = int(differs[0]) if len(differs) else limit
  return EncodeResult(stack[omitted:].copy(), omitted, 32 * (len(seed) - omitted), lowest,
                      latents)


def decode(tables: ModelTables, words: np.ndarray, omitted: int, count: int,
           settings: Settings, progress: Callable[[int], None] = lambda n: None) -> np.ndarray:
  """The N images encoded into `words`; UserError when the chain does not close on the seed."""
  p = settings.precision
  seed = seed_words(settings.seed_words)
  if omitted > len(seed):
    raise UserError("corrupt file: more omitted seed words than the seed has")
  prior = constriction.stream.model.Uniform(1 << p.latent_bits)
  images = np.zeros((count,) + IMAGE_SHAPE, np.uint8)
  try:
    coder = constriction.stream.stack.AnsCoder(np.concatenate([seed[:omitted], words]))
    for start, size, shape in reversed(schedule(count, settings)):
      z = coder.decode(prior, size * tables.latent_dim)
      pixels = tables.pixels(z.reshape(size, -1), shape)
      x = coder.decode(_PIXEL, _pixel_probabilities(pixels, p.pixel_bits))
      x = x.astype(np.uint8).reshape((size,) + IMAGE_SHAPE)
      posterior = tables.posterior(x, shape).reshape(-1, 1 << p.latent_bits)
      coder.encode_reverse(z, _POSTERIOR, posterior.astype(np.float64))
      images[start:start + size] = x
      progress(size)
    closed = np.array_equal(coder.get_compressed(), seed)
  except (ValueError, RuntimeError, OverflowError) as e:
    raise UserError(f"the compressed stream does not decode with this model ({e})") from None
  if not closed:
    raise UserError("the decoded stream does not end in the codec's initial words: the file is "
                    "corrupt or was made by another model or on a machine computing it differently")
  return images
