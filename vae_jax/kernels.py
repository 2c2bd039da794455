"""Exact GEMM forms of 2-D convolutions, each with a custom VJP whose backward pass is GEMMs.

XLA:CPU runs a transposed convolution as a convolution of the zero-dilated input and computes its
kernel gradient slowly (jax issues #23783, #31662); these forms do the same arithmetic as matrix
products over kernel taps or input windows, each with a custom VJP whose backward pass is one
matmul per gradient. Bias and ReLU sit inside, so XLA fuses them with the layout passes instead of
making passes of their own. `vae_jax.layers` wraps them as NNX layers; the layout of every kernel
is Flax's (HWIO; for transposed convolutions lax.conv_transpose's semantics).
"""

import jax
import jax.numpy as jnp


def _zero(dtype):
  return jnp.zeros((), dtype)


def _rows_contracted(a_2d, b_2d):
  """a_2d^T @ b_2d, contracting the (long) row axis of both, with neither transpose materialized.

  A kernel gradient. XLA:CPU runs the plain dot (Eigen) faster inside the training step than a
  materialized transpose fed to YNNPACK: XLA's transpose pass was the slow part.
  """
  return jax.lax.dot_general(a_2d, b_2d, (((0,), (0,)), ((), ())))


def _relu_mask(dy, y, relu: bool):
  return jnp.where(y > 0, dy, _zero(dy.dtype)) if relu else dy


def _windows(x, size: int, stride: int, out_hw):
  """(n, ho, wo, size, size, c): x[n, stride*i + r, stride*j + s, c] for the window offsets r, s.

  One nested stack of strided slices, which XLA:CPU fuses into one pass (a flat stack of nine
  slices is not fused: each slice is copied first).
  """
  ho, wo = out_hw
  return jnp.stack([jnp.stack([x[:, r:r + stride * (ho - 1) + 1:stride, s:s + stride * (wo - 1) + 1:stride]
                               for s in range(size)], axis=3) for r in range(size)], axis=3)


# -- VALID convolution (the encoder): one GEMM over the input's windows.

def _patch_conv_apply(x, kernel, bias, stride, relu):
  kh, kw, c_in, c_out = kernel.shape
  n, h, w, _ = x.shape
  ho, wo = (h - kh) // stride + 1, (w - kw) // stride + 1
  assert kh == kw, kernel.shape
  patches = _windows(x, kh, stride, (ho, wo)).reshape(n * ho * wo, kh * kw * c_in)
  y = jnp.dot(patches, kernel.reshape(-1, c_out)) + bias.reshape(1, c_out)
  y = jnp.maximum(y, 0) if relu else y
  return patches, y.reshape(n, ho, wo, c_out)


def _patch_conv_fwd(x, kernel, bias, stride, relu):
  patches, y = _patch_conv_apply(x, kernel, bias, stride, relu)
  return y, (x, patches, kernel, y if relu else None)


def _patch_conv_bwd(stride, relu, residuals, dy):
  x, patches, kernel, y = residuals
  dy = _relu_mask(dy, y, relu)
  dy_2d = dy.reshape(-1, kernel.shape[-1])
  dkernel = _rows_contracted(patches, dy_2d).reshape(kernel.shape)
  _, conv_vjp = jax.vjp(lambda x_: jax.lax.conv_general_dilated(
      x_, kernel, (stride, stride), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC")), x)
  dx, = conv_vjp(dy)  # XLA's own input gradient is fast; unused (and dropped) for the first layer
  return dx, dkernel, jnp.sum(dy_2d, axis=0)


def _patch_conv_fwd_core(x, kernel, bias, stride, relu):
  return _patch_conv_apply(x, kernel, bias, stride, relu)[1]


_patch_conv = jax.custom_vjp(_patch_conv_fwd_core, nondiff_argnums=(3, 4))
_patch_conv.defvjp(_patch_conv_fwd, _patch_conv_bwd)


def patch_conv(x, kernel, bias, stride: int, relu: bool = True):
  """VALID convolution (square kernel, equal strides) + bias [+ relu], as nnx.Conv, as one GEMM.

  The forward pass multiplies the input's windows (patches) by the kernel; the kernel gradient
  is patches^T @ dy, where XLA:CPU's own dilated-window convolution is several times slower.
  """
  return _patch_conv(x, kernel.astype(x.dtype), bias.astype(x.dtype), stride, relu)


# -- Stride-2, SAME, 3x3 transposed convolution: four output phases of tap matmuls.
# With lax.conv_transpose's SAME padding, output row 2m takes kernel row 0 from input row m-1 and
# row 2 from input row m; output row 2m+1 takes row 1 from input row m (columns alike).
# _PHASE_TAPS[phase] = ((kernel index, shift), ...): output pixel m of that phase adds the
# product of input pixel m - shift with that kernel tap.
_PHASE_TAPS = {0: ((0, 1), (2, 0)), 1: ((1, 0),)}


def _shift_down(a, sh: int, sw: int):
  """b[:, i, j] = a[:, i - sh, j - sw], zero where that is outside a."""
  return jax.lax.pad(a, _zero(a.dtype), ((0, 0, 0), (sh, -sh, 0), (sw, -sw, 0), (0, 0, 0)))


def _phase_fwd_core(x, kernel, bias, relu):
  n, h, w, c_in = x.shape
  c_out = kernel.shape[-1]
  # All nine taps' products in one GEMM: (n, h, w, kh, kw, c_out).
  taps = jnp.dot(x.reshape(-1, c_in), kernel.transpose(2, 0, 1, 3).reshape(c_in, 9 * c_out))
  taps = taps.reshape(n, h, w, 3, 3, c_out)

  def phase(a, b):
    y = sum(_shift_down(taps[:, :, :, kh, kw], sh, sw)
            for kh, sh in _PHASE_TAPS[a] for kw, sw in _PHASE_TAPS[b]) + bias.reshape(1, 1, 1, -1)
    return jnp.maximum(y, 0) if relu else y

  y = jnp.stack([phase(a, b) for a in range(2) for b in range(2)], axis=3)
  return y.reshape(n, h, w, 2, 2, c_out).transpose(0, 1, 3, 2, 4, 5).reshape(n, 2 * h, 2 * w, c_out)


def _phase_fwd(x, kernel, bias, relu):
  y = _phase_fwd_core(x, kernel, bias, relu)
  return y, (x, kernel, y)


def _phase_bwd(relu, residuals, dy):
  """Input pixel i reaches output rows 2i + r (r = 0, 1, 2) through kernel row 2 - r (columns
  alike), so both gradients are GEMMs over dy's 3x3 stride-2 windows with the flipped kernel."""
  x, kernel, y = residuals
  n, h, w, c_in = x.shape
  c_out = kernel.shape[-1]
  dy = jnp.pad(_relu_mask(dy, y, relu), ((0, 0), (0, 2), (0, 2), (0, 0)))  # row 2h reads zeros
  windows = _windows(dy, 3, 2, (h, w)).reshape(n * h * w, 9 * c_out)      # (r, s, c_out)
  flipped = kernel[::-1, ::-1].transpose(0, 1, 3, 2).reshape(9 * c_out, c_in)
  dx = jnp.dot(windows, flipped).reshape(x.shape)
  # The kernel gradient x^T @ windows, with a column of ones beside x: its row of the product sums
  # the windows, and those with offsets r, s < 2 cover every dy value once, giving the bias
  # gradient without another pass over dy.
  x_ones = jnp.concatenate([x.reshape(-1, c_in), jnp.ones((n * h * w, 1), x.dtype)], axis=1)
  dflipped = _rows_contracted(x_ones, windows).reshape(c_in + 1, 3, 3, c_out)
  dbias = jnp.sum(dflipped[c_in, :2, :2], axis=(0, 1))
  return dx, dflipped[:c_in].transpose(1, 2, 0, 3)[::-1, ::-1], dbias


_phase_conv_transpose = jax.custom_vjp(_phase_fwd_core, nondiff_argnums=(3,))
_phase_conv_transpose.defvjp(_phase_fwd, _phase_bwd)


def phase_conv_transpose(x, kernel, bias, relu: bool = False):
  """Stride-2, SAME, 3x3 transposed convolution (lax.conv_transpose semantics) + bias [+ relu].

  One GEMM gives every input pixel's product with all nine kernel taps; each of the four output
  phases (even/odd rows and columns) sums at most four of them, shifted by at most one pixel,
  and the phases are interleaved. No multiplication by the zeros XLA's dilated form inserts.
  """
  assert kernel.shape[:2] == (3, 3), kernel.shape
  return _phase_conv_transpose(x, kernel.astype(x.dtype), bias.astype(x.dtype), relu)


# -- Stride-1, SAME, 3x3 transposed convolution with few output channels (the decoder's last layer).

def _shift(a, dh: int, dw: int):
  """b[..., i, j] = a[..., i + dh, j + dw] over the last two axes, zero outside a."""
  pads = [(0, 0, 0)] * (a.ndim - 2) + [(-dh, dh, 0), (-dw, dw, 0)]
  return jax.lax.pad(a, _zero(a.dtype), pads)


def _tap_fwd_core(x, kernel):
  n, h, w, c_in = x.shape
  c_out = kernel.shape[-1]
  # taps[kh, kw, co, n, h, w]: pixels last, so the shifted sum runs along contiguous rows.
  taps = jax.lax.dot_general(kernel.transpose(0, 1, 3, 2).reshape(9 * c_out, c_in),
                             x.reshape(-1, c_in), (((1,), (1,)), ((), ())))
  taps = taps.reshape(3, 3, c_out, n, h, w)
  # lax.conv_transpose (stride 1, SAME): output pixel o takes tap k from input o + k - 1.
  y = sum(_shift(taps[kh, kw], kh - 1, kw - 1) for kh in range(3) for kw in range(3))
  return y.transpose(1, 2, 3, 0)


def _tap_fwd(x, kernel):
  return _tap_fwd_core(x, kernel), (x, kernel)


def _tap_bwd(residuals, dy):
  x, kernel = residuals
  c_in, c_out = kernel.shape[2:]
  dy = dy.transpose(3, 0, 1, 2)  # (c_out, n, h, w)
  # Tap k's product at input pixel p landed on output p - (k - 1).
  dtaps = [_shift(dy, 1 - kh, 1 - kw) for kh in range(3) for kw in range(3)]
  # The input gradient elementwise (9 * c_out products per value): XLA fuses it with the ReLU
  # gradient of the layer below instead of running a GEMM with a contraction of 9.
  dx = sum(dtaps[3 * kh + kw][..., None] * kernel[kh, kw].T.reshape(c_out, 1, 1, 1, c_in)
           for kh in range(3) for kw in range(3)).sum(axis=0)
  dkernel = jnp.dot(jnp.stack(dtaps).reshape(9 * c_out, -1), x.reshape(-1, c_in))
  return dx, dkernel.reshape(3, 3, c_out, c_in).transpose(0, 1, 3, 2)


_tap_conv_transpose = jax.custom_vjp(_tap_fwd_core)
_tap_conv_transpose.defvjp(_tap_fwd, _tap_bwd)


def tap_matmul_conv_transpose(x, kernel, bias):
  """Stride-1, SAME, 3x3 transposed convolution (lax.conv_transpose semantics) + bias.

  One GEMM multiplies every input pixel by all nine taps and the shifted products are added;
  XLA's own convolution is slow here because the layer has a single output channel.
  """
  assert kernel.shape[:2] == (3, 3), kernel.shape
  y = _tap_conv_transpose(x, kernel.astype(x.dtype))
  return y + bias.astype(y.dtype).reshape(1, 1, 1, -1)
