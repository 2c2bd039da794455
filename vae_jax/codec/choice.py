"""Lossless coding that never expands: each image by the shortest of VAE bits-back, the context
coder and raw bits, the choice in the stream, all on one ANS stack.

The stack, bottom to top: the seed words (bitsback), the bits-back chain of the images the VAE
codes, then the context section — every image's method flag, then block by block the raw images
(1 bit a pixel) and the context-coded images. The decoder pops the context section first
(flags, then the raw and context images, in image order, so the context coder's counts adapt
forward), then runs the chain backwards, and must end on the seed.

The encoder decides in two passes:
1. block by block, each image takes the cheapest of its estimated VAE cost (its net bits at one
   latent drawn from its q(z|x), `bitsback.estimate_bits`), its context cost (from the counts the
   blocks before left) and raw — unless what the VAE saves in all is below the chain's initial
   bits (about one image's latents, k * L * latent_bits), then the context coder and raw alone;
2. the chain runs over the images that chose the VAE; any image whose cost on it is above its raw
   bits (or below VAE_MIN_BITS) moves to raw, its batch undone and formed again
   (`bitsback.encode_chain`'s `accept`). Raw images leave the context counts alone, so no other
   choice changes.

Bound: an image costs its method's bits (VAE: its net bits on the chain, which `accept` keeps
<= raw; context: <= raw by the choice) plus its flag (<= 5 bits), so never more than H*W + 5 bits;
the file adds its header and the ANS coder's final words. (Bits are the information content
under the integer tables; the ANS stack spends that within a few bits per file.)
"""

import dataclasses
import struct
from typing import Callable

import constriction
import numpy as np

from vae_jax.codec import bitsback, context
from vae_jax.codec.context import CONTEXT, RAW, VAE
from vae_jax.codec.tables import ModelTables
from vae_jax.errors import UserError
from vae_jax.nn.models import IMAGE_SHAPE

VAE_MIN_BITS = 2.0   # an image the VAE codes costs at least this (else raw): bounds the header
ALL = frozenset((VAE, CONTEXT, RAW))
_HEAD = struct.Struct("<IIIII")  # omitted seed words, images per method (3), context-section words
_FLAG = constriction.stream.model.Categorical(perfect=False)
_PIXEL = constriction.stream.model.Bernoulli(perfect=False)


@dataclasses.dataclass
class Result:
  payload: bytes
  method: np.ndarray      # (N,) each image's method
  bits: np.ndarray        # (N,) each image's cost: its method's bits plus its flag's
  initial_bits: int       # 32 * seed words the chain consumed


def _flag_rows(counts: np.ndarray, size: int) -> np.ndarray:
  return np.tile(context.flag_weights(counts).astype(np.float64), (size, 1))


def _decide(images, estimate, raw_bits, methods, schedule):
  """Block by block, each image's cheapest method from its VAE estimate, its context cost (from
  the counts the context images of the blocks before left) and raw bits. Returns (method, bits,
  the context images' probabilities by block start, the bits the VAE saves over the others)."""
  n = len(images)
  method, bits = np.zeros(n, np.int64), np.zeros(n)
  counts, coded, saving = context.Counts(), {}, 0.0
  for start, size in schedule:
    x = images[start:start + size, ..., 0]
    costs = np.full((3, size), np.inf)
    costs[VAE], costs[RAW] = estimate[start:start + size], raw_bits
    if CONTEXT in methods:
      k, ctx = counts.code(x)
      costs[CONTEXT] = context.bits(k, x.reshape(size, -1))
    m = np.argmin(costs, axis=0)
    method[start:start + size], bits[start:start + size] = m, costs[m, np.arange(size)]
    vae = m == VAE
    if vae.any():
      saving += float(np.sum(np.min(costs[1:, vae], 0) - costs[VAE, vae]))
    take = m == CONTEXT
    if take.any():
      counts.add(ctx[take], x[take])
      coded[start] = (k[take], x[take].reshape(int(take.sum()), -1))
  return method, bits, coded, saving


def encode(tables: ModelTables | None, images: np.ndarray, settings: bitsback.Settings,
           methods: frozenset = ALL, progress: Callable[[int], None] = lambda n: None) -> Result:
  """The payload of {0,1} images (N, H, W, 1); the VAE takes part when `tables` is given and the
  images are its size. With RAW among `methods`, no image costs more than raw bits + its flag."""
  n, h, w = images.shape[:3]
  raw_bits = float(h * w) if RAW in methods else np.inf
  seed = bitsback.seed_words(settings.seed_words)
  coder = constriction.stream.stack.AnsCoder(seed)
  use_vae = VAE in methods and tables is not None and images.shape[1:] == IMAGE_SHAPE
  if not use_vae:
    estimate = np.full(n, np.inf)
  elif len(methods) == 1:
    estimate = np.zeros(n)  # nothing to choose
  else:
    estimate = bitsback.estimate_bits(tables, images, settings)
  schedule = context.blocks(n)
  method, bits, coded, saving = _decide(images, estimate, raw_bits, methods, schedule)
  if use_vae and len(methods) > 1 and saving < settings.samples * tables.latent_dim * \
      settings.precision.latent_bits:
    # the chain's initial bits (about one image's latents popped from the seed: k * L * latent_bits)
    # would cost more than the VAE saves here
    method, bits, coded, _ = _decide(images, np.full(n, np.inf), raw_bits, methods, schedule)
  progress(int((method != VAE).sum()))
  chosen = np.nonzero(method == VAE)[0]
  if len(chosen):
    # raw images leave the context counts alone, so moving an image there changes no other choice
    accept = ((lambda _, b: (b <= raw_bits) & (b >= VAE_MIN_BITS))
              if RAW in methods and len(methods) > 1 else None)
    coder, kept, kept_bits, _ = bitsback.encode_chain(tables, images[chosen], settings, coder,
                                                      accept, progress)
    method[chosen], bits[chosen] = RAW, raw_bits
    method[chosen[kept]], bits[chosen[kept]] = VAE, kept_bits
    progress(len(chosen) - len(kept))
  chain_words = coder.num_words()
  for start, size in reversed(schedule):
    if start in coded:
      k, x = coded[start]
      coder.encode_reverse(x.T.reshape(-1).astype(np.int32), _PIXEL,
                           context.probabilities(k.T.reshape(-1)))
    raw = images[start:start + size][method[start:start + size] == RAW].reshape(-1)
    if raw.size:
      coder.encode_reverse(raw.astype(np.int32), _PIXEL, np.full(raw.size, 0.5))
  flag_counts = [np.bincount(method[:start], minlength=3) for start, _ in schedule]
  for (start, size), before in zip(reversed(schedule), reversed(flag_counts)):
    coder.encode_reverse(method[start:start + size].astype(np.int32), _FLAG,
                         _flag_rows(before, size))
    bits[start:start + size] += context.flag_bits(before)[method[start:start + size]]
  ctx_words = coder.num_words() - chain_words
  stack = coder.get_compressed()
  omitted = bitsback.split_seed(stack, seed)
  head = _HEAD.pack(omitted, *np.bincount(method, minlength=3).tolist(), ctx_words)
  return Result(head + np.asarray(stack[omitted:], "<u4").tobytes(), method, bits,
                32 * (len(seed) - omitted))


@dataclasses.dataclass(frozen=True)
class Layout:
  """What a lossless payload's head says, checked against what the payload can hold."""
  omitted: int
  per_method: tuple[int, int, int]
  ctx_words: int
  words: np.ndarray


def parse(payload: bytes, count: int, hw: tuple[int, int], settings: bitsback.Settings,
          name: str) -> Layout:
  """The payload's layout, or a one-line UserError when its head claims more than it holds.

  Every image's flag costs >= FLAG_MIN_BITS, a raw pixel 1 bit, a context pixel >=
  PIXEL_MIN_BITS, all in the context section; a VAE image >= VAE_MIN_BITS of chain growth. So the
  counts are bounded by the payload's bits before anything the size of the images is allocated."""
  if len(payload) < _HEAD.size or (len(payload) - _HEAD.size) % 4:
    raise UserError(f"{name}: corrupt (lossless payload of {len(payload)} bytes)")
  omitted, n_vae, n_ctx, n_raw, ctx_words = _HEAD.unpack_from(payload)
  n_words = (len(payload) - _HEAD.size) // 4
  pixels = hw[0] * hw[1]
  slack = 64 + 1e-3 * 32 * n_words
  if omitted > settings.seed_words:
    raise UserError(f"{name}: corrupt (more omitted seed words than the seed has)")
  if n_vae + n_ctx + n_raw != count:
    raise UserError(f"{name}: corrupt (the methods' image counts do not add up to {count})")
  if ctx_words > omitted + n_words:
    raise UserError(f"{name}: corrupt (the context section is longer than the stack)")
  needed = (count * context.FLAG_MIN_BITS + n_raw * pixels
            + n_ctx * pixels * context.PIXEL_MIN_BITS)
  chain_growth = 32 * (omitted + n_words - ctx_words - settings.seed_words)
  if needed > 32 * ctx_words + slack or n_vae * VAE_MIN_BITS > chain_growth + slack:
    raise UserError(f"{name}: corrupt (the header claims {count} images of {hw[0]}x{hw[1]}, more "
                    f"than {len(payload)} bytes of payload can hold)")
  return Layout(omitted, (n_vae, n_ctx, n_raw), ctx_words,
                np.frombuffer(payload, "<u4", offset=_HEAD.size).astype(np.uint32))


def decode(tables: ModelTables | None, layout: Layout, count: int, hw: tuple[int, int],
           settings: bitsback.Settings, progress: Callable[[int], None] = lambda n: None):
  """(N, H, W, 1) images of a payload `parse` checked; UserError when the stream does not close."""
  h, w = hw
  seed = bitsback.seed_words(settings.seed_words)
  if layout.per_method[VAE] and (tables is None or (h, w, 1) != IMAGE_SHAPE):
    raise UserError(f"corrupt file: VAE-coded images of {h}x{w}, the model codes "
                    f"{IMAGE_SHAPE[0]}x{IMAGE_SHAPE[1]}")
  try:
    coder = constriction.stream.stack.AnsCoder(np.concatenate([seed[:layout.omitted],
                                                               layout.words]))
    total = coder.num_words()
    schedule = context.blocks(count)
    method = np.zeros(count, np.int64)
    flag_counts = np.zeros(3, np.int64)
    for start, size in schedule:
      m = np.asarray(coder.decode(_FLAG, _flag_rows(flag_counts, size)), np.int64)
      method[start:start + size] = m
      flag_counts += np.bincount(m, minlength=3)
    if tuple(flag_counts.tolist()) != layout.per_method:
      raise UserError("corrupt file: the method flags disagree with the header")
    images = np.zeros((count, h, w), np.uint8)
    counts = context.Counts()
    for start, size in schedule:
      m = method[start:start + size]
      raw = start + np.nonzero(m == RAW)[0]
      if len(raw):
        images[raw] = np.asarray(coder.decode(_PIXEL, np.full(len(raw) * h * w, 0.5)),
                                 np.uint8).reshape(len(raw), h, w)
      ctx = start + np.nonzero(m == CONTEXT)[0]
      if len(ctx):
        images[ctx] = counts.decode(lambda p: coder.decode(_PIXEL, p), len(ctx), h, w)
      progress(int(len(raw) + len(ctx)))
    if coder.num_words() != total - layout.ctx_words:
      raise UserError("corrupt file: the context section does not end where the header says")
    vae = np.nonzero(method == VAE)[0]
    if len(vae):
      images[vae] = bitsback.decode_chain(tables, coder, len(vae), settings, progress)[..., 0]
    closed = np.array_equal(coder.get_compressed(), seed)
  except (ValueError, RuntimeError, OverflowError) as e:
    raise UserError(f"the compressed stream does not decode with this model ({e})") from None
  if not closed:
    raise UserError("the decoded stream does not end in the codec's initial words: the file is "
                    "corrupt or was made by another model or on a machine computing it differently")
  return images[..., None], method
