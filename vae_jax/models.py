"""The seed's convolutional VAE in Flax NNX, with an exact fast transposed convolution."""

from typing import Literal

import jax
import jax.numpy as jnp
from flax import nnx

IMAGE_SHAPE = (28, 28, 1)
# Keras' default initializers, so a fresh model is distributed like the TensorFlow original.
_KERNEL_INIT = nnx.initializers.glorot_uniform()
_BIAS_INIT = nnx.initializers.zeros_init()

ConvTransposeImpl = Literal["gemm", "xla"]


# Stride-2 transposed convolution, phase by phase. With lax.conv_transpose's SAME padding (2
# before, 1 after the dilated input), output row 2m takes kernel row 0 from input row m-1 and
# row 2 from input row m; output row 2m+1 takes row 1 from input row m (columns alike).
# _PHASE_TAPS[phase] = ((kernel index, shift), ...): output pixel m of that phase adds the
# product of input pixel m - shift with that kernel tap.
_PHASE_TAPS = {0: ((0, 1), (2, 0)), 1: ((1, 0),)}
# The nine (output phase, kernel tap) pairs: each tap serves exactly one phase.
_TAP_ORDER = tuple((a, b, kh, sh, kw, sw) for a in range(2) for b in range(2)
                   for kh, sh in _PHASE_TAPS[a] for kw, sw in _PHASE_TAPS[b])


def _phase_sums(x, kernel):
  n, h, w, c_in = x.shape
  c_out = kernel.shape[-1]
  x_2d = x.reshape(-1, c_in)

  def tap(kh, kw, sh, sw):  # the tap's product, moved down/right by its shifts
    y = jnp.dot(x_2d, kernel[kh, kw]).reshape(n, h, w, c_out)
    return jnp.pad(y, ((0, 0), (sh, 0), (sw, 0), (0, 0)))[:, :h, :w]

  phases = [sum(tap(kh, kw, sh, sw) for kh, sh in _PHASE_TAPS[a] for kw, sw in _PHASE_TAPS[b])
            for a in range(2) for b in range(2)]
  y = jnp.stack(phases, axis=3).reshape(n, h, w, 2, 2, c_out)
  return y.transpose(0, 1, 3, 2, 4, 5).reshape(n, 2 * h, 2 * w, c_out)


def _phase_conv_transpose_fwd(x, kernel):
  return _phase_sums(x, kernel), (x, kernel)


def _phase_conv_transpose_bwd(residuals, dy):
  """Both gradients as one matmul each over the nine taps' output gradients side by side."""
  x, kernel = residuals
  n, h, w, c_in = x.shape
  c_out = kernel.shape[-1]
  dy_phases = dy.reshape(n, h, 2, w, 2, c_out)
  # Tap (kh, kw)'s product at input pixel i landed on output pixel i + shift of its phase.
  dtaps = [jnp.pad(dy_phases[:, sh:, a, sw:, b, :], ((0, 0), (0, sh), (0, sw), (0, 0)))
           for a, b, kh, sh, kw, sw in _TAP_ORDER]
  dtaps = jnp.stack(dtaps, axis=3).reshape(n * h * w, 9 * c_out)
  kernels = jnp.stack([kernel[kh, kw] for _, _, kh, _, kw, _ in _TAP_ORDER], axis=1)
  dx = jnp.dot(dtaps, kernels.reshape(c_in, 9 * c_out).T).reshape(x.shape)
  dkernels = jnp.dot(x.reshape(-1, c_in).T, dtaps).reshape(c_in, 9, c_out)
  dkernel = jnp.zeros_like(kernel)
  for i, (_, _, kh, _, kw, _) in enumerate(_TAP_ORDER):
    dkernel = dkernel.at[kh, kw].set(dkernels[:, i])
  return dx, dkernel


_phase_conv_transpose = jax.custom_vjp(_phase_sums)
_phase_conv_transpose.defvjp(_phase_conv_transpose_fwd, _phase_conv_transpose_bwd)


def phase_conv_transpose(x, kernel, bias):
  """Stride-2, SAME, 3x3 transposed convolution (lax.conv_transpose semantics) as matmuls.

  Each kernel tap is one matmul over all input pixels; the four output phases (even/odd rows
  and columns) are sums of those products shifted by at most one pixel, interleaved. The
  numbers are the same as XLA's dilated form without its multiplications by inserted zeros,
  whose kernel gradient XLA computes slowly (jax issues #23783, #31662); the backward pass is
  one matmul per gradient.
  """
  assert kernel.shape[:2] == (3, 3), kernel.shape
  y = _phase_conv_transpose(x, kernel.astype(x.dtype))
  return y + bias.astype(y.dtype).reshape(1, 1, 1, -1)


def tap_matmul_conv_transpose(x, kernel, bias):
  """Stride-1, SAME, 3x3 transposed convolution (lax.conv_transpose semantics) as one matmul.

  Output pixel o takes tap k from input o + k - 1. Multiplying every input pixel by all nine taps
  at once (one GEMM to 9*out channels) and adding the nine shifted results gives the same
  numbers; XLA's own convolution is slow here because the layer has a single output channel.
  """
  assert kernel.shape[:2] == (3, 3), kernel.shape
  n, h, w, c_in = x.shape
  c_out = kernel.shape[-1]
  taps = jnp.dot(x.reshape(-1, c_in), kernel.astype(x.dtype).transpose(2, 0, 1, 3).reshape(c_in, -1))
  taps = taps.reshape(n, h, w, 3, 3, c_out)
  zero = jnp.zeros((), taps.dtype)
  y = 0
  for kh in range(3):
    for kw in range(3):
      # lax.pad with negative padding shifts: input pixel i lands on output pixel i + 1 - k.
      y = y + jax.lax.pad(taps[:, :, :, kh, kw, :], zero,
                          ((0, 0, 0), (1 - kh, kh - 1, 0), (1 - kw, kw - 1, 0), (0, 0, 0)))
  return y + bias.astype(y.dtype).reshape(1, 1, 1, -1)


class CVAE(nnx.Module):
  """Convolutional VAE of the TensorFlow tutorial: q(z|x) diagonal Gaussian, p(x|z) Bernoulli logits."""

  def __init__(self, latent_dim: int = 50, *, rngs: nnx.Rngs,
               conv_transpose: ConvTransposeImpl = "gemm", dtype=None):
    if latent_dim < 1:
      raise ValueError(f"latent_dim must be >= 1, got {latent_dim}")
    if conv_transpose not in ("gemm", "xla"):
      raise ValueError(f"conv_transpose must be 'gemm' or 'xla', got {conv_transpose!r}")
    self.latent_dim = latent_dim
    self.conv_transpose = conv_transpose
    init = dict(kernel_init=_KERNEL_INIT, bias_init=_BIAS_INIT, dtype=dtype, rngs=rngs)
    self.enc_conv1 = nnx.Conv(1, 32, (3, 3), strides=2, padding="VALID", **init)
    self.enc_conv2 = nnx.Conv(32, 64, (3, 3), strides=2, padding="VALID", **init)
    self.enc_dense = nnx.Linear(6 * 6 * 64, 2 * latent_dim, **init)
    self.dec_dense = nnx.Linear(latent_dim, 7 * 7 * 32, **init)
    self.dec_deconv1 = nnx.ConvTranspose(32, 64, (3, 3), strides=2, padding="SAME", **init)
    self.dec_deconv2 = nnx.ConvTranspose(64, 32, (3, 3), strides=2, padding="SAME", **init)
    self.dec_deconv3 = nnx.ConvTranspose(32, 1, (3, 3), strides=1, padding="SAME", **init)

  def encode(self, x_BHWC):
    """Returns (mean, logvar) of q(z|x), each (batch, latent_dim)."""
    h = nnx.relu(self.enc_conv1(x_BHWC))
    h = nnx.relu(self.enc_conv2(h))
    h = self.enc_dense(h.reshape(h.shape[0], -1))
    mean, logvar = jnp.split(h, 2, axis=-1)
    return mean, logvar

  def _deconv(self, layer, h, stride: int):
    if self.conv_transpose == "xla":
      return layer(h)
    fast = phase_conv_transpose if stride == 2 else tap_matmul_conv_transpose
    return fast(h, layer.kernel[...], layer.bias[...])

  def decode(self, z_BxL, apply_sigmoid: bool = False):
    """Returns Bernoulli logits of p(x|z), (batch, 28, 28, 1); probabilities with apply_sigmoid."""
    h = nnx.relu(self.dec_dense(z_BxL)).reshape(-1, 7, 7, 32)
    h = nnx.relu(self._deconv(self.dec_deconv1, h, 2))
    h = nnx.relu(self._deconv(self.dec_deconv2, h, 2))
    x_logits = self._deconv(self.dec_deconv3, h, 1)
    return nnx.sigmoid(x_logits) if apply_sigmoid else x_logits

  def __call__(self, x_BHWC, eps_BxL):
    """Encodes, reparameterizes with the given noise, decodes: (x_logits, z, mean, logvar)."""
    mean, logvar = self.encode(x_BHWC)
    z = reparameterize_with_eps(eps_BxL, mean, logvar)
    return self.decode(z), z, mean, logvar

  def sample(self, key=None, n: int = 100, eps_BxL=None):
    """Decoded probabilities for eps ~ N(0, I) drawn from `key` (or the given eps)."""
    if eps_BxL is None:
      if key is None:
        raise ValueError("sample needs a jax.random key or eps_BxL")
      eps_BxL = jax.random.normal(key, (n, self.latent_dim))
    return self.decode(eps_BxL, apply_sigmoid=True)


def reparameterize_with_eps(eps, mean, logvar):
  """z = mean + exp(logvar / 2) * eps."""
  return eps * jnp.exp(logvar * 0.5) + mean


def reparameterize(key, mean, logvar):
  """z ~ q(z|x) = N(mean, exp(logvar)), drawn with the given key."""
  return reparameterize_with_eps(jax.random.normal(key, mean.shape, mean.dtype), mean, logvar)
