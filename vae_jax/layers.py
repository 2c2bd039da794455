"""NNX layers that run the exact GEMM kernels of `vae_jax.kernels` where they cover the shape.

`GemmConv` and `GemmConvTranspose` are `nnx.Conv` and `nnx.ConvTranspose` with an activation:
the same constructor, the same parameters (`kernel` HWIO, `bias`), the same initialization and
the same outputs, so checkpoints and weight converters do not care which implementation ran.
With `impl="gemm"` (the default) a call runs a GEMM kernel when one covers the layer:

  GemmConv           2-D, square kernel, equal strides, no dilation or groups or mask, padding
                     VALID, SAME or explicit: `kernels.patch_conv` (on the padded input).
  GemmConvTranspose  2-D, 3x3 kernel, SAME padding, no dilation or mask, transpose_kernel off:
                     stride 2 -> `kernels.phase_conv_transpose`; stride 1 with at most
                     TAP_MAX_CHANNELS outputs (the seed's last layer has 1) ->
                     `kernels.tap_matmul_conv_transpose`.

Everything else, and every layer with `impl="xla"`, runs Flax's own call (XLA's convolutions).
A ReLU activation is fused into the kernels; any other activation is applied after the layer.
"""

from typing import Callable, Literal

import jax
import jax.numpy as jnp
from flax import nnx

from vae_jax import kernels

Impl = Literal["gemm", "xla"]
Activation = Callable[[jax.Array], jax.Array] | None
TAP_MAX_CHANNELS = 4


def _pairs(value, rank: int = 2) -> tuple[int, ...]:
  """Flax's broadcast of an int (or None, meaning 1) stride or dilation to every spatial axis."""
  value = 1 if value is None else value
  return (value,) * rank if isinstance(value, int) else tuple(value)


def _check_impl(impl: str) -> None:
  if impl not in ("gemm", "xla"):
    raise ValueError(f"impl must be 'gemm' or 'xla', got {impl!r}")


def _activate(y, activation: Activation, fused: bool):
  return y if activation is None or fused else activation(y)


class GemmConv(nnx.Conv):
  """nnx.Conv followed by `activation`, run as one GEMM (`kernels.patch_conv`) where covered."""

  def __init__(self, in_features: int, out_features: int, kernel_size, strides=1, *,
               activation: Activation = None, impl: Impl = "gemm", **kwargs):
    _check_impl(impl)
    super().__init__(in_features, out_features, kernel_size, strides, **kwargs)
    self.activation = activation
    self.impl = impl

  def _gemm_pads(self, x) -> list[tuple[int, int]] | None:
    """The (low, high) zero padding of both spatial axes, when the GEMM kernel covers the call."""
    k, strides = self.kernel_size, _pairs(self.strides)
    if (self.impl != "gemm" or x.ndim != 4 or len(k) != 2 or k[0] != k[1]
        or strides[0] != strides[1] or _pairs(self.input_dilation) != (1, 1)
        or _pairs(self.kernel_dilation) != (1, 1) or self.feature_group_count != 1
        or self.mask is not None):
      return None
    if self.padding == "VALID":
      return [(0, 0), (0, 0)]
    if self.padding == "SAME":
      return jax.lax.padtype_to_pads(x.shape[1:3], k, strides, "SAME")
    if isinstance(self.padding, int):
      return [(self.padding, self.padding)] * 2
    if isinstance(self.padding, str) or len(self.padding) != 2:
      return None  # CIRCULAR, REFLECT, CAUSAL or malformed: Flax handles (or refuses) them
    pads = [(p, p) if isinstance(p, int) else tuple(p) for p in self.padding]
    return pads if all(len(p) == 2 for p in pads) else None

  def __call__(self, x):
    pads = self._gemm_pads(x)
    if pads is None:
      return _activate(super().__call__(x), self.activation, fused=False)
    bias = self.bias[...] if self.bias is not None else jnp.zeros((self.out_features,))
    x, kernel, bias = self.promote_dtype((x, self.kernel[...], bias), dtype=self.dtype)
    if any(p != (0, 0) for p in pads):
      x = jnp.pad(x, ((0, 0), *pads, (0, 0)))
    relu = self.activation is jax.nn.relu
    y = kernels.patch_conv(x, kernel, bias, _pairs(self.strides)[0], relu)
    return _activate(y, self.activation, fused=relu)


class GemmConvTranspose(nnx.ConvTranspose):
  """nnx.ConvTranspose followed by `activation`, run as tap GEMMs where covered."""

  def __init__(self, in_features: int, out_features: int, kernel_size, strides=None, *,
               activation: Activation = None, impl: Impl = "gemm", **kwargs):
    _check_impl(impl)
    super().__init__(in_features, out_features, kernel_size, strides, **kwargs)
    self.activation = activation
    self.impl = impl

  def _gemm_stride(self, x) -> int | None:
    """The stride (1 or 2) when a GEMM kernel covers the call, else None."""
    strides = _pairs(self.strides)
    if (self.impl != "gemm" or x.ndim != 4 or self.kernel_size != (3, 3)
        or self.padding != "SAME" or _pairs(self.kernel_dilation) != (1, 1)
        or self.mask is not None or self.transpose_kernel or strides[0] != strides[1]):
      return None
    if strides[0] == 2 or (strides[0] == 1 and self.out_features <= TAP_MAX_CHANNELS):
      return strides[0]
    return None

  def __call__(self, x):
    stride = self._gemm_stride(x)
    if stride is None:
      return _activate(super().__call__(x), self.activation, fused=False)
    bias = self.bias[...] if self.bias is not None else jnp.zeros((self.out_features,))
    x, kernel, bias = self.promote_dtype((x, self.kernel[...], bias), dtype=self.dtype)
    relu = stride == 2 and self.activation is jax.nn.relu
    if stride == 2:
      y = kernels.phase_conv_transpose(x, kernel, bias, relu)
    else:
      y = kernels.tap_matmul_conv_transpose(x, kernel, bias)
    return _activate(y, self.activation, fused=relu)


def sequential(x, *fns):
  """fns applied in order: fns[-1](...fns[1](fns[0](x))), as the tutorial's keras.Sequential."""
  for fn in fns:
    x = fn(x)
  return x


def flatten(x):
  """(batch, ...) -> (batch, features), as keras.layers.Flatten."""
  return x.reshape(x.shape[0], -1)


def reshape(*shape: int):
  """x -> x reshaped to (batch, *shape), as keras.layers.Reshape."""
  return lambda x: x.reshape(x.shape[0], *shape)
