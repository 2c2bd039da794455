"""A classical context-model coder for bi-level images (JBIG's idea) and the per-image method flags.

Each pixel, in raster order, is coded with P(1) from adaptive counts of the bits seen after its
context: 16 already-coded neighbours on three lines (`TEMPLATE`; outside the image: 0).
The estimate is Krichevsky–Trofimov, P(1) = (n1 + 1/2) / (n0 + n1 + 1), as an integer k / 2^16
computed in integer arithmetic (so it is the same on every machine), kept in
[2^-FLOOR_BITS, 1 - 2^-FLOOR_BITS]: that floor bounds how cheap a pixel can be, which bounds what a
file's header may claim (`min_bits`).

Images are coded in blocks, vectorised over the block's images. Every image of a block starts
from the counts of all the images of the blocks before it (whichever method coded them: the
decoder knows them all by then) and adapts within itself pixel by pixel, so no image's cost
depends on which method any image takes. The decoder replays the same steps, so encoder and
decoder hold the same counts at every pixel.

The method flag of every image (VAE, context coder or raw) is coded the same way per block: KT
counts of the flags before the block, each method kept at >= 1/32 of the mass, so a flag costs
at most about 5 bits and at least FLAG_MIN_BITS.
"""

import math

import numpy as np

from vae_jax import template

from vae_jax.template import CONTEXTS, TEMPLATE  # noqa: F401  (the coder's template)
PROB_BITS = 16
FLOOR_BITS = 10
_ONE = 1 << PROB_BITS
_FLOOR = 1 << (PROB_BITS - FLOOR_BITS)

VAE, CONTEXT, RAW = 0, 1, 2
METHODS = {VAE: "VAE bits-back", CONTEXT: "context coder", RAW: "raw"}
_FLAG_FLOOR = 1 << 11                      # of 2^16: each method keeps >= 1/32
FLAG_MIN_BITS = -math.log2(1 - 2 * _FLAG_FLOOR / _ONE)  # the most probable flag's cost, at least
PIXEL_MIN_BITS = -math.log2(1 - _FLOOR / _ONE)          # the most probable pixel's cost, at least


def blocks(count: int, largest: int = 256, ramp: int = 4) -> list[tuple[int, int]]:
  """(start, size) of the blocks: each at most 1/ramp of the images before it, up to `largest`,
  so the counts adapt early in a small file."""
  out, done = [], 0
  while done < count:
    size = min(count - done, max(1, min(largest, done // ramp)))
    out.append((done, size))
    done += size
  return out


contexts = template.contexts


def p_one(n0: np.ndarray, n1: np.ndarray) -> np.ndarray:
  """KT P(1) in units of 2^-16, integer arithmetic, clipped to the floor."""
  k = ((2 * n1 + 1) << PROB_BITS) // (2 * (n0 + n1) + 2)
  return np.clip(k, _FLOOR, _ONE - _FLOOR)


def probabilities(k: np.ndarray) -> np.ndarray:
  """P(1) as constriction takes it (exact binary fractions)."""
  return k.astype(np.float64) / _ONE


def bits(k: np.ndarray, x01: np.ndarray) -> np.ndarray:
  """-log2 P(x) summed over the last axis."""
  k = k.astype(np.float64)
  return -np.sum(np.log2(np.where(x01 == 1, k, _ONE - k) / _ONE), axis=-1)


class Counts:
  """The shared adaptive counts (CONTEXTS, 2) of the context coder."""

  def __init__(self):
    self.n = np.zeros((CONTEXTS, 2), np.int64)

  def code(self, images01: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(k (B, H*W), contexts (B, H*W)) for a block of images, each from these counts adapting
    within itself: a pixel's counts are the shared ones plus its image's earlier pixels of the
    same context, found at once for the whole block by a stable sort on (image, context)."""
    b = len(images01)
    ctx = contexts(images01)
    x = images01.reshape(b, -1).astype(np.int64)
    key = (np.arange(b)[:, None] * CONTEXTS + ctx).reshape(-1)
    order = np.argsort(key, kind="stable")
    key_sorted, x_sorted = key[order], x.reshape(-1)[order]
    first = np.ones(len(key), bool)
    first[1:] = key_sorted[1:] != key_sorted[:-1]
    group_start = np.maximum.accumulate(np.where(first, np.arange(len(key)), 0))
    ones_before = np.cumsum(x_sorted) - x_sorted
    seen1 = ones_before - ones_before[group_start]
    seen = np.arange(len(key)) - group_start
    n1, n0 = np.empty(len(key), np.int64), np.empty(len(key), np.int64)
    n1[order], n0[order] = seen1, seen - seen1
    c = ctx.reshape(-1)
    k = p_one(self.n[c, 0] + n0, self.n[c, 1] + n1)
    return k.reshape(b, -1), ctx

  def add(self, ctx: np.ndarray, x01: np.ndarray) -> None:
    """Adds the counts of a block's images (their contexts and pixels)."""
    np.add.at(self.n, (ctx.reshape(-1), x01.reshape(-1).astype(np.int64)), 1)

  def decode(self, pop, b: int, h: int, w: int) -> np.ndarray:
    """(b, h, w) images popped pixel by pixel: pop(P(1) array of b) returns b bits."""
    # each image's own counts so far, which never exceed its pixel count
    own = np.zeros((b, CONTEXTS, 2), np.int16 if h * w < 1 << 15 else np.int32)
    rows = np.arange(b)

    def next_bits(_, c):
      n = self.n[c] + own[rows, c]
      x = np.asarray(pop(probabilities(p_one(n[:, 0], n[:, 1]))), np.int64)
      own[rows, c, x] += 1
      return x

    return template.decode_raster(b, h, w, next_bits)


def flag_weights(counts: np.ndarray) -> np.ndarray:
  """(3,) integer weights (of <= 2^16) of the next flags from the flag counts before them."""
  kt = 2 * counts.astype(np.int64) + 1
  return kt * (_ONE - 3 * _FLAG_FLOOR) // int(kt.sum()) + _FLAG_FLOOR


def flag_bits(counts: np.ndarray) -> np.ndarray:
  """(3,) cost in bits of each method's flag given the flag counts before it."""
  w = flag_weights(counts).astype(np.float64)
  return -np.log2(w / w.sum())
