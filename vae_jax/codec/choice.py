"""Lossless coding that never expands: each image by the shortest of VAE bits-back, the context
coder and raw bits, the choice in the stream, all on one ANS stack.

The stack, bottom to top: the seed words (bitsback), the context section — every image's method
flag, then block by block the raw images (1 bit a pixel) and the context-coded images — and on
top the bits-back chain of the images the VAE codes, which gets its first bits back from the
context section below it. The decoder runs the chain first (the header says how many images it
holds), then pops the flags, places the chain's images, and decodes the raw and context images
block by block in image order, so the context coder's counts learn from every earlier image,
whichever method coded it; it must end on the seed.

The encoder:
1. block by block, each image takes the cheapest of its estimated VAE cost (its net bits at
   latents drawn from its q(z|x), `bitsback.estimate_bits`), its context cost and raw — unless what
   the VAE saves in all is below the chain's initial bits (about one image's latents,
   k * L * latent_bits), then the context coder and raw alone;
2. pushes the context section, then runs the chain over the images that chose the VAE; if one of
   them costs more than its raw bits on the chain (or below VAE_MIN_BITS), it is moved to raw and
   both are pushed again (the context costs do not depend on the choices, so nothing else moves).

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


def _context_costs(images, schedule):
  """Each block's context-coder probabilities and every image's cost, from the counts of all the
  images of the blocks before it."""
  counts, ks, bits = context.Counts(), [], np.zeros(len(images))
  for start, size in schedule:
    x = images[start:start + size, ..., 0]
    k, ctx = counts.code(x)
    ks.append(k)
    bits[start:start + size] = context.bits(k, x.reshape(size, -1))
    counts.add(ctx, x)
  return ks, bits


class _Reject(Exception):
  def __init__(self, indices):
    super().__init__()
    self.indices = indices


def _push_context_section(coder, images, method, ks, schedule) -> None:
  """Flags, then block by block raw and context images, pushed so that they pop in that order."""
  for (start, size), k in zip(reversed(schedule), reversed(ks)):
    m = method[start:start + size]
    take = m == CONTEXT
    if take.any():
      x = images[start:start + size][take].reshape(int(take.sum()), -1)
      coder.encode_reverse(x.T.reshape(-1).astype(np.int32), _PIXEL,
                           context.probabilities(k[take].T.reshape(-1)))
    raw = images[start:start + size][m == RAW].reshape(-1)
    if raw.size:
      coder.encode_reverse(raw.astype(np.int32), _PIXEL, np.full(raw.size, 0.5))
  for start, size in reversed(schedule):
    coder.encode_reverse(method[start:start + size].astype(np.int32), _FLAG,
                         _flag_rows(np.bincount(method[:start], minlength=3), size))


def encode(tables: ModelTables | None, images: np.ndarray, settings: bitsback.Settings,
           methods: frozenset = ALL, progress: Callable[[int], None] = lambda n: None) -> Result:
  """The payload of {0,1} images (N, H, W, 1); the VAE takes part when `tables` is given and the
  images are its size. With RAW among `methods`, no image costs more than raw bits + its flag."""
  n, h, w = images.shape[:3]
  raw_bits = float(h * w) if RAW in methods else np.inf
  seed = bitsback.seed_words(settings.seed_words)
  use_vae = VAE in methods and tables is not None and images.shape[1:] == IMAGE_SHAPE
  schedule = context.blocks(n)
  costs = np.full((3, n), np.inf)
  costs[RAW] = raw_bits
  ks = [None] * len(schedule)
  if CONTEXT in methods:
    ks, costs[CONTEXT] = _context_costs(images, schedule)
  if use_vae:
    costs[VAE] = (bitsback.estimate_bits(tables, images, settings) if len(methods) > 1
                  else 0.0)
  method = np.argmin(costs, axis=0)
  vae = method == VAE
  saving = float(np.sum(np.min(costs[1:, vae], 0) - costs[VAE, vae])) if vae.any() else 0.0
  if use_vae and len(methods) > 1 and saving < settings.samples * tables.latent_dim * \
      settings.precision.latent_bits:
    # the chain's initial bits would cost more than the VAE saves here
    costs[VAE] = np.inf
    method = np.argmin(costs, axis=0)
  progress(int((method != VAE).sum()))
  strict = RAW in methods and len(methods) > 1

  def accept(idx, b):
    bad = ~((b <= raw_bits) & (b >= VAE_MIN_BITS))
    if bad.any():
      raise _Reject(idx[bad])
    return np.ones(len(idx), bool)

  while True:
    coder = constriction.stream.stack.AnsCoder(seed)
    _push_context_section(coder, images, method, ks, schedule)
    ctx_words = coder.num_words() - len(seed)
    chosen = np.nonzero(method == VAE)[0]
    try:
      if len(chosen):
        coder, _, vae_bits, _ = bitsback.encode_chain(tables, images[chosen], settings, coder,
                                                      accept if strict else None, progress)
      break
    except _Reject as rejected:
      method[chosen[rejected.indices]] = RAW   # raw changes no other image's cost
  bits = costs[method, np.arange(n)]
  if len(chosen):
    bits[chosen] = vae_bits
  for start, size in schedule:
    bits[start:start + size] += context.flag_bits(
        np.bincount(method[:start], minlength=3))[method[start:start + size]]
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
    n_vae = layout.per_method[VAE]
    chain = (bitsback.decode_chain(tables, coder, n_vae, settings, progress)[..., 0] if n_vae
             else None)
    if coder.num_words() != len(seed) + layout.ctx_words:
      raise UserError("corrupt file: the bits-back chain does not end where the header says")
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
    if n_vae:
      images[method == VAE] = chain
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
      block = images[start:start + size]
      counts.add(context.contexts(block), block)
      progress(int(len(raw) + len(ctx)))
    closed = np.array_equal(coder.get_compressed(), seed)
  except (ValueError, RuntimeError, OverflowError) as e:
    raise UserError(f"the compressed stream does not decode with this model ({e})") from None
  if not closed:
    raise UserError("the decoded stream does not end in the codec's initial words: the file is "
                    "corrupt or was made by another model or on a machine computing it differently")
  return images[..., None], method
