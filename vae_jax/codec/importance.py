"""Importance weights for importance-sampled bits-back (BB-IS, Ruan et al. 2021), in fixed point.

With k latents z_1..k drawn from q(z|x), BB-IS codes x at one of them, index j drawn with
probability w_j / sum_i w_i, w_i = p(x|z_i) p(z_i) / q(z_i|x); its net rate is
-log2 (1/k) sum_i w_i, the IWAE-k bound. Encoder and decoder must draw j from the same integer
weights. Both compute them from the coder's integer tables only: log2 of every table entry in
fixed point (units of 2^-LOG_BITS bits, from float64 log2 rounded: the same on any IEEE-754
machine unless a value lies within an ulp of a rounding boundary), summed in int64 (exact), and
2^(-e) of the differences from one fixed table. The prior p(z_i) is uniform over the equal-mass
buckets and q's per-latent normalizers are the same for every sample of an image, so both cancel.
"""

import numpy as np

LOG_BITS = 16
WEIGHT_BITS = 30
_FRACTION = 1 << LOG_BITS
# 2^(WEIGHT_BITS - m / 2^LOG_BITS) for m < 2^LOG_BITS, rounded
_EXP2 = np.rint(np.exp2(WEIGHT_BITS - np.arange(_FRACTION) / _FRACTION)).astype(np.int64)


def fixed_log2(ints: np.ndarray) -> np.ndarray:
  """round(log2(ints) * 2^LOG_BITS) as int64, for positive integers."""
  return np.rint(np.log2(ints.astype(np.float64)) * _FRACTION).astype(np.int64)


def log_weights(posterior: np.ndarray, z: np.ndarray, pixel_ints: np.ndarray, x01: np.ndarray,
                pixel_bits: int) -> np.ndarray:
  """(B, k) log2 w_i up to a per-image constant, in units of 2^-LOG_BITS.

  posterior (B, L, K) integer weights of q(z|x); z (B, k, L) buckets; pixel_ints (B*k, P) P(x=1)
  in units of 2^-pixel_bits at each z; x01 (B, ...) the images."""
  b, k, latents = z.shape
  chosen = np.take_along_axis(posterior[:, None], z[..., None].astype(np.int64), -1)[..., 0]
  log_q = fixed_log2(chosen).sum(-1)                                     # (B, k)
  ints = pixel_ints.reshape(b, k, -1).astype(np.int64)
  x = x01.reshape(b, 1, -1)
  log_p = fixed_log2(np.where(x == 1, ints, (1 << pixel_bits) - ints)).sum(-1)
  return log_p - log_q


def categorical_weights(log_w: np.ndarray) -> np.ndarray:
  """(B, k) integer weights >= 1, proportional to 2^(log_w / 2^LOG_BITS) within each row."""
  e = log_w.max(-1, keepdims=True) - log_w
  shift = np.minimum(e >> LOG_BITS, 62)
  return (_EXP2[e & (_FRACTION - 1)] >> shift) + 1
