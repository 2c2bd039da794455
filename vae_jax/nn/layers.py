"""NNX layers that run the exact GEMM kernels of `vae_jax.nn.kernels` where they cover the shape.

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

Mixed precision: `gemm_dtype=jnp.bfloat16` on GemmConv, GemmConvTranspose and `Linear` (nnx.Linear
with that one option) keeps the parameters, inputs, outputs, bias and activation float32 and runs
only the GEMMs, forward and backward, on bfloat16 inputs with float32 accumulation and output
(`vae_jax.nn.kernels`). A convolution Flax runs gets Flax's nearest form: dtype=gemm_dtype (inputs,
kernel and bias cast) with preferred_element_type float32, differentiated by autodiff (whose
backward GEMMs XLA runs in float32, and which rounds the kernel gradient to bfloat16).
"""

from typing import Callable, Literal

import jax
import jax.numpy as jnp
from flax import nnx

from vae_jax.nn import kernels

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


def _mixed(kwargs: dict, gemm_dtype) -> dict:
  """Flax constructor kwargs for gemm_dtype: its dtype and float32 output for Flax's own call."""
  if gemm_dtype is None:
    return kwargs
  if kwargs.get("dtype") is not None or kwargs.get("preferred_element_type") is not None:
    raise ValueError("gemm_dtype sets the layer's dtype and preferred_element_type; pass neither")
  return {**kwargs, "dtype": gemm_dtype, "preferred_element_type": jnp.float32}


def _gemm_operands(layer, x):
  """x, kernel and bias for a GEMM kernel: float32 (promoted) in mixed precision, else layer.dtype."""
  bias = layer.bias[...] if layer.bias is not None else jnp.zeros((layer.out_features,))
  dtype = None if layer.gemm_dtype is not None else layer.dtype
  return layer.promote_dtype((x, layer.kernel[...], bias), dtype=dtype)


def scope_name(layer) -> str:
  """The layer's name in compiled programs' metadata (profiles): class and feature sizes, e.g.
  GemmConvTranspose_64_32; benchmarks.step_profile attributes the step's time to layers by it."""
  return f"{type(layer).__name__}_{layer.in_features}_{layer.out_features}"


class Linear(nnx.Linear):
  """nnx.Linear; with gemm_dtype its GEMMs, forward and backward, take gemm_dtype inputs and
  return float32 (`kernels.dense`), everything else staying float32."""

  def __init__(self, in_features: int, out_features: int, *, gemm_dtype=None, **kwargs):
    super().__init__(in_features, out_features, **kwargs)
    self.gemm_dtype = gemm_dtype

  def __call__(self, x):
    with jax.named_scope(scope_name(self)):
      if self.gemm_dtype is None:
        return super().__call__(x)
      x, kernel, bias = _gemm_operands(self, x)
      return kernels.dense(x, kernel, bias, self.gemm_dtype)


class GemmConv(nnx.Conv):
  """nnx.Conv followed by `activation`, run as one GEMM (`kernels.patch_conv`) where covered."""

  def __init__(self, in_features: int, out_features: int, kernel_size, strides=1, *,
               activation: Activation = None, impl: Impl = "gemm", gemm_dtype=None, **kwargs):
    _check_impl(impl)
    super().__init__(in_features, out_features, kernel_size, strides, **_mixed(kwargs, gemm_dtype))
    self.activation = activation
    self.impl = impl
    self.gemm_dtype = gemm_dtype

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
    with jax.named_scope(scope_name(self)):
      return self._call(x)

  def _call(self, x):
    pads = self._gemm_pads(x)
    if pads is None:
      return _activate(super().__call__(x), self.activation, fused=False)
    x, kernel, bias = _gemm_operands(self, x)
    if any(p != (0, 0) for p in pads):
      x = jnp.pad(x, ((0, 0), *pads, (0, 0)))
    relu = self.activation is jax.nn.relu
    y = kernels.patch_conv(x, kernel, bias, _pairs(self.strides)[0], relu, self.gemm_dtype)
    return _activate(y, self.activation, fused=relu)


class GemmConvTranspose(nnx.ConvTranspose):
  """nnx.ConvTranspose followed by `activation`, run as tap GEMMs where covered."""

  def __init__(self, in_features: int, out_features: int, kernel_size, strides=None, *,
               activation: Activation = None, impl: Impl = "gemm", gemm_dtype=None, **kwargs):
    _check_impl(impl)
    super().__init__(in_features, out_features, kernel_size, strides, **_mixed(kwargs, gemm_dtype))
    self.activation = activation
    self.impl = impl
    self.gemm_dtype = gemm_dtype

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
    with jax.named_scope(scope_name(self)):
      return self._call(x)

  def _call(self, x):
    stride = self._gemm_stride(x)
    if stride is None:
      return _activate(super().__call__(x), self.activation, fused=False)
    x, kernel, bias = _gemm_operands(self, x)
    relu = stride == 2 and self.activation is jax.nn.relu
    if stride == 2:
      y = kernels.phase_conv_transpose(x, kernel, bias, relu, self.gemm_dtype)
    else:
      y = kernels.tap_matmul_conv_transpose(x, kernel, bias, self.gemm_dtype)
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
