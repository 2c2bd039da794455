"""Exact GEMM forms of 2-D convolutions, each with a custom VJP whose backward pass is GEMMs.

XLA:CPU runs a transposed convolution as a convolution of the zero-dilated input and computes its
kernel gradient slowly (jax issues #23783, #31662); these forms do the same arithmetic as matrix
products over kernel taps or input windows, each with a custom VJP whose backward pass is one
matmul per gradient. Bias and ReLU sit inside, so XLA fuses them with the layout passes instead of
making passes of their own. `vae_jax.nn.layers` wraps them as NNX layers; the layout of every kernel
is Flax's (HWIO; for transposed convolutions lax.conv_transpose's semantics).

Mixed precision: with `gemm_dtype` (e.g. jnp.bfloat16) every GEMM of a kernel, forward and
backward, takes its two inputs in that dtype and accumulates and returns float32
(`preferred_element_type`); the kernels' inputs, outputs, gradients, bias and ReLU stay float32.
XLA:CPU runs bfloat16-in/float32-out GEMMs faster than float32 ones, bfloat16-out ones slower
(benchmarks/results/cpu_bf16_mixed_2026-12-01/); GPUs accumulate bfloat16 GEMMs in float32 too.
With gemm_dtype None (the default) the kernels compute in their inputs' dtype, as before.
"""

import jax
import jax.numpy as jnp


def _zero(dtype):
  return jnp.zeros((), dtype)


def _gemm_dtype(gemm_dtype):
  """None, or the GEMM input dtype as a (hashable) numpy dtype."""
  return None if gemm_dtype is None else jnp.dtype(gemm_dtype)


def _in(a, gemm_dtype):
  """a as a GEMM input: cast to gemm_dtype when one is set."""
  return a if gemm_dtype is None else a.astype(gemm_dtype)


def _acc(gemm_dtype):
  """The preferred_element_type of the GEMMs: float32 when gemm_dtype is set, else the default."""
  return None if gemm_dtype is None else jnp.float32


def _rows_contracted(a_2d, b_2d, gemm_dtype=None):
  """a_2d^T @ b_2d, contracting the (long) row axis of both, with neither transpose materialized.

  A kernel gradient. XLA:CPU runs the plain dot (Eigen) faster inside the training step than a
  materialized transpose fed to YNNPACK: XLA's transpose pass was the slow part.
  """
  return jax.lax.dot_general(_in(a_2d, gemm_dtype), _in(b_2d, gemm_dtype), (((0,), (0,)), ((), ())),
                             preferred_element_type=_acc(gemm_dtype))


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

def valid_conv_input_grad(dy, kernel, stride: int, in_hw, preferred_element_type=None):
  """The input gradient of a VALID, stride-`stride` NHWC/HWIO convolution of an input of spatial
  size in_hw: dy dilated by the stride, convolved with the flipped kernel (its in/out swapped).

  The convolution jax's own transpose rule builds, with dy and kernel in the dtype given and the
  result in preferred_element_type (the autodiff rule would cast the kernel up to dy's dtype).
  """
  k = kernel.shape[0]
  pads = [(k - 1, k - 1 + (size - k) % stride) for size in in_hw]
  return jax.lax.conv_general_dilated(dy, kernel[::-1, ::-1], (1, 1), pads, lhs_dilation=(stride, stride),
                                      dimension_numbers=("NHWC", "HWOI", "NHWC"),
                                      preferred_element_type=preferred_element_type)


def _patch_conv_apply(x, kernel, bias, stride, relu, gemm_dtype):
  kh, kw, c_in, c_out = kernel.shape
  n, h, w, _ = x.shape
  ho, wo = (h - kh) // stride + 1, (w - kw) // stride + 1
  assert kh == kw, kernel.shape
  patches = _windows(_in(x, gemm_dtype), kh, stride, (ho, wo)).reshape(n * ho * wo, kh * kw * c_in)
  y = (jnp.dot(patches, _in(kernel.reshape(-1, c_out), gemm_dtype), preferred_element_type=_acc(gemm_dtype))
       + bias.reshape(1, c_out))
  y = jnp.maximum(y, 0) if relu else y
  return patches, y.reshape(n, ho, wo, c_out)


def _patch_conv_fwd(x, kernel, bias, stride, relu, gemm_dtype):
  patches, y = _patch_conv_apply(x, kernel, bias, stride, relu, gemm_dtype)
  return y, (x, patches, kernel, y if relu else None)


def _patch_conv_bwd(stride, relu, gemm_dtype, residuals, dy):
  x, patches, kernel, y = residuals
  dy = _relu_mask(dy, y, relu)
  dy_2d = dy.reshape(-1, kernel.shape[-1])
  dkernel = _rows_contracted(patches, dy_2d, gemm_dtype).reshape(kernel.shape)
  # XLA's own input gradient is fast; unused (and dropped) for the first layer.
  if gemm_dtype is None:
    _, conv_vjp = jax.vjp(lambda x_: jax.lax.conv_general_dilated(
        x_, kernel, (stride, stride), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC")), x)
    dx, = conv_vjp(dy)
  else:
    dx = valid_conv_input_grad(_in(dy, gemm_dtype), _in(kernel, gemm_dtype), stride, x.shape[1:3],
                               _acc(gemm_dtype))
  return dx, dkernel, jnp.sum(dy_2d, axis=0)


def _patch_conv_fwd_core(x, kernel, bias, stride, relu, gemm_dtype):
  return _patch_conv_apply(x, kernel, bias, stride, relu, gemm_dtype)[1]


_patch_conv = jax.custom_vjp(_patch_conv_fwd_core, nondiff_argnums=(3, 4, 5))
_patch_conv.defvjp(_patch_conv_fwd, _patch_conv_bwd)


def patch_conv(x, kernel, bias, stride: int, relu: bool = True, gemm_dtype=None):
  """VALID convolution (square kernel, equal strides) + bias [+ relu], as nnx.Conv, as one GEMM.

  The forward pass multiplies the input's windows (patches) by the kernel; the kernel gradient
  is patches^T @ dy, where XLA:CPU's own dilated-window convolution is several times slower.
  gemm_dtype: see the module docstring (mixed precision).
  """
  return _patch_conv(x, kernel.astype(x.dtype), bias.astype(x.dtype), stride, relu,
                     _gemm_dtype(gemm_dtype))


# -- Stride-2, SAME, 3x3 transposed convolution: four output phases of tap matmuls.
# With lax.conv_transpose's SAME padding, output row 2m takes kernel row 0 from input row m-1 and
# row 2 from input row m; output row 2m+1 takes row 1 from input row m (columns alike).
# _PHASE_TAPS[phase] = ((kernel index, shift), ...): output pixel m of that phase adds the
# product of input pixel m - shift with that kernel tap.
_PHASE_TAPS = {0: ((0, 1), (2, 0)), 1: ((1, 0),)}


def _shift_down(a, sh: int, sw: int):
  """b[:, i, j] = a[:, i - sh, j - sw], zero where that is outside a."""
  return jax.lax.pad(a, _zero(a.dtype), ((0, 0, 0), (sh, -sh, 0), (sw, -sw, 0), (0, 0, 0)))


def _phase_fwd_core(x, kernel, bias, relu, gemm_dtype):
  n, h, w, c_in = x.shape
  c_out = kernel.shape[-1]
  # All nine taps' products in one GEMM: (n, h, w, kh, kw, c_out).
  taps = jnp.dot(_in(x.reshape(-1, c_in), gemm_dtype),
                 _in(kernel.transpose(2, 0, 1, 3).reshape(c_in, 9 * c_out), gemm_dtype),
                 preferred_element_type=_acc(gemm_dtype))
  taps = taps.reshape(n, h, w, 3, 3, c_out)

  def phase(a, b):
    y = sum(_shift_down(taps[:, :, :, kh, kw], sh, sw)
            for kh, sh in _PHASE_TAPS[a] for kw, sw in _PHASE_TAPS[b]) + bias.reshape(1, 1, 1, -1)
    return jnp.maximum(y, 0) if relu else y

  y = jnp.stack([phase(a, b) for a in range(2) for b in range(2)], axis=3)
  return y.reshape(n, h, w, 2, 2, c_out).transpose(0, 1, 3, 2, 4, 5).reshape(n, 2 * h, 2 * w, c_out)


def _phase_fwd(x, kernel, bias, relu, gemm_dtype):
  y = _phase_fwd_core(x, kernel, bias, relu, gemm_dtype)
  return y, (_in(x, gemm_dtype), _in(kernel, gemm_dtype), y)


def _phase_bwd(relu, gemm_dtype, residuals, dy):
  """Input pixel i reaches output rows 2i + r (r = 0, 1, 2) through kernel row 2 - r (columns
  alike), so both gradients are GEMMs over dy's 3x3 stride-2 windows with the flipped kernel."""
  x, kernel, y = residuals
  n, h, w, c_in = x.shape
  c_out = kernel.shape[-1]
  dy = jnp.pad(_in(_relu_mask(dy, y, relu), gemm_dtype),
               ((0, 0), (0, 2), (0, 2), (0, 0)))                          # row 2h reads zeros
  windows = _windows(dy, 3, 2, (h, w)).reshape(n * h * w, 9 * c_out)      # (r, s, c_out)
  flipped = kernel[::-1, ::-1].transpose(0, 1, 3, 2).reshape(9 * c_out, c_in)
  dx = jnp.dot(windows, flipped, preferred_element_type=_acc(gemm_dtype)).reshape(x.shape)
  # The kernel gradient x^T @ windows, with a column of ones beside x: its row of the product sums
  # the windows, and those with offsets r, s < 2 cover every dy value once, giving the bias
  # gradient without another pass over dy.
  x_ones = jnp.concatenate([x.reshape(-1, c_in), jnp.ones((n * h * w, 1), x.dtype)], axis=1)
  dflipped = _rows_contracted(x_ones, windows, gemm_dtype).reshape(c_in + 1, 3, 3, c_out)
  dbias = jnp.sum(dflipped[c_in, :2, :2], axis=(0, 1))
  return dx, dflipped[:c_in].transpose(1, 2, 0, 3)[::-1, ::-1], dbias


_phase_conv_transpose = jax.custom_vjp(_phase_fwd_core, nondiff_argnums=(3, 4))
_phase_conv_transpose.defvjp(_phase_fwd, _phase_bwd)


def phase_conv_transpose(x, kernel, bias, relu: bool = False, gemm_dtype=None):
  """Stride-2, SAME, 3x3 transposed convolution (lax.conv_transpose semantics) + bias [+ relu].

  One GEMM gives every input pixel's product with all nine kernel taps; each of the four output
  phases (even/odd rows and columns) sums at most four of them, shifted by at most one pixel,
  and the phases are interleaved. No multiplication by the zeros XLA's dilated form inserts.
  gemm_dtype: see the module docstring (mixed precision).
  """
  assert kernel.shape[:2] == (3, 3), kernel.shape
  return _phase_conv_transpose(x, kernel.astype(x.dtype), bias.astype(x.dtype), relu,
                               _gemm_dtype(gemm_dtype))


# -- Stride-1, SAME, 3x3 transposed convolution with few output channels (the decoder's last layer).

def _tap_fwd_core(x, kernel, bias, gemm_dtype):
  n, h, w, c_in = x.shape
  c_out = kernel.shape[-1]
  # taps[kh, kw, co, n, h, w]: pixels last, so the shifted sum runs along contiguous rows.
  taps = jax.lax.dot_general(_in(kernel.transpose(0, 1, 3, 2).reshape(9 * c_out, c_in), gemm_dtype),
                             _in(x.reshape(-1, c_in), gemm_dtype), (((1,), (1,)), ((), ())),
                             preferred_element_type=_acc(gemm_dtype))
  # One zero border around every tap's image (one pass; a pad per shifted tap would be nine).
  taps = jnp.pad(taps.reshape(3, 3, c_out, n, h, w), ((0, 0),) * 4 + ((1, 1), (1, 1)))
  # lax.conv_transpose (stride 1, SAME): output pixel o takes tap k from input o + k - 1.
  y = sum(taps[kh, kw, :, :, kh:kh + h, kw:kw + w] for kh in range(3) for kw in range(3))
  return (y + bias.astype(y.dtype).reshape(c_out, 1, 1, 1)).transpose(1, 2, 3, 0)


def _tap_fwd(x, kernel, bias, gemm_dtype):
  return _tap_fwd_core(x, kernel, bias, gemm_dtype), (_in(x, gemm_dtype), kernel)


def _tap_bwd(gemm_dtype, residuals, dy):
  x, kernel = residuals
  _, h, w, c_in = x.shape
  c_out = kernel.shape[-1]
  dy = dy.transpose(3, 0, 1, 2)  # (c_out, n, h, w)
  padded = jnp.pad(dy, ((0, 0), (0, 0), (1, 1), (1, 1)))
  # Tap k's product at input pixel p landed on output p - (k - 1).
  dtaps = [padded[:, :, 2 - kh:2 - kh + h, 2 - kw:2 - kw + w] for kh in range(3) for kw in range(3)]
  # The input gradient elementwise (9 * c_out products per value): XLA fuses it with the ReLU
  # gradient of the layer below instead of running a GEMM with a contraction of 9 (in dy's dtype).
  dx = sum(dtaps[3 * kh + kw][..., None] * kernel[kh, kw].T.reshape(c_out, 1, 1, 1, c_in)
           for kh in range(3) for kw in range(3)).sum(axis=0)
  dkernel = jnp.dot(_in(jnp.stack(dtaps).reshape(9 * c_out, -1), gemm_dtype), x.reshape(-1, c_in),
                    preferred_element_type=_acc(gemm_dtype))
  dbias = jnp.sum(dy.reshape(c_out, -1), axis=1)
  return dx, dkernel.reshape(3, 3, c_out, c_in).transpose(0, 1, 3, 2), dbias


_tap_conv_transpose = jax.custom_vjp(_tap_fwd_core, nondiff_argnums=(3,))
_tap_conv_transpose.defvjp(_tap_fwd, _tap_bwd)


def tap_matmul_conv_transpose(x, kernel, bias, gemm_dtype=None):
  """Stride-1, SAME, 3x3 transposed convolution (lax.conv_transpose semantics) + bias.

  One GEMM multiplies every input pixel by all nine taps and the shifted products are added;
  XLA's own convolution is slow here because the layer has a single output channel. The bias
  is added inside, in the taps' (channel, pixel) layout, and its gradient is summed there.
  gemm_dtype: see the module docstring (mixed precision).
  """
  assert kernel.shape[:2] == (3, 3), kernel.shape
  return _tap_conv_transpose(x, kernel.astype(x.dtype), bias.astype(x.dtype), _gemm_dtype(gemm_dtype))


# -- Dense layer (mixed precision only: float32 layers run nnx.Linear's own call).

def _dense_fwd_core(x, kernel, bias, gemm_dtype):
  return jnp.dot(_in(x, gemm_dtype), _in(kernel, gemm_dtype),
                 preferred_element_type=_acc(gemm_dtype)) + bias.reshape(1, -1)


def _dense_fwd(x, kernel, bias, gemm_dtype):
  return _dense_fwd_core(x, kernel, bias, gemm_dtype), (_in(x, gemm_dtype), _in(kernel, gemm_dtype))


def _dense_bwd(gemm_dtype, residuals, dy):
  x, kernel = residuals
  dx = jax.lax.dot_general(_in(dy, gemm_dtype), kernel, (((1,), (1,)), ((), ())),
                           preferred_element_type=_acc(gemm_dtype))
  return dx, _rows_contracted(x, dy, gemm_dtype), jnp.sum(dy, axis=0)


_dense = jax.custom_vjp(_dense_fwd_core, nondiff_argnums=(3,))
_dense.defvjp(_dense_fwd, _dense_bwd)


def dense(x, kernel, bias, gemm_dtype=None):
  """x @ kernel + bias over x's last axis (nnx.Linear's arithmetic), every GEMM of it and of its
  gradients in gemm_dtype with float32 accumulation and output (see the module docstring)."""
  lead = x.shape[:-1]
  y = _dense(x.reshape(-1, x.shape[-1]), kernel.astype(x.dtype), bias.astype(x.dtype),
             _gemm_dtype(gemm_dtype))
  return y.reshape(*lead, kernel.shape[-1])
