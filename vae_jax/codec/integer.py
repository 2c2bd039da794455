"""Integer networks for the codec's tables: the same integers on every machine.

Ballé, Johnston & Minnen 2019 ("Integer networks for data compression"): a decoder can compute
the encoder's probabilities bit for bit only if no float rounding enters them. Here every tensor
of the folded network is an integer held in float64 or float32, and every operation on it is exact:

- GEMMs and convolutions of integer weights with integer activations, each layer in its own
  dtype: in float64 layers |w| <= 2^(WEIGHT_BITS - 1) and 0 <= a < 2^ACT_BITS, so every product
  and partial sum is an integer below 2^53; in float32 layers (the decoder's transposed
  convolutions, nearly all of the arithmetic, at twice float64's speed) 0 <= a < 2^F32_ACT_BITS
  and the weights as wide as keeps every sum below 2^24. `fold` checks each bound from the layer's
  shapes (fan-in * max|w| * max|a| + max|b|), so a sum is exact in any order, vector width, FMA
  or fast-math reassociation;
- every accumulator is requantized in float64: multiplied by a power of two, then floor and clip;
- probabilities come from integer lookup tables (sigmoid, Gaussian CDF, exp(-logvar / 2), the
  latent buckets' edges and centres) computed once by `compute_tables` in arbitrary precision
  (mpmath) and shipped as `integer_tables.npz`, checked against its SHA-256 on load.

Folding is a pure function of the float parameters: each output channel's weights are scaled by
the power of two that maps its largest |w| to the layer's widest weight and rounded (exact in
float64); each layer's activation scale is the power of two that maps twice the largest
activation seen on fixed calibration inputs to the next layer's input width, measured with the
integer network itself (exact), the calibration latents drawn by PCG64 integers and the
calibration images the integer decoder's mode images at them. Supported: the tutorial's
convolutional nets (`cvae`, `conv_ae`).
"""

import dataclasses
import functools
import hashlib
import pathlib

import jax
import jax.numpy as jnp
import numpy as np

from vae_jax.errors import UserError
from vae_jax.nn import kernels
from vae_jax.nn.models import _ConvNets

FORMAT = 2                 # the newest format; bump on any change to the folding or arithmetic
FORMATS = (1, 2)           # 1: every layer in float64; 2: the decoder's convolutions in float32
WEIGHT_BITS = 14           # float64 layers: signed weights, |w| <= 2^13 ...
ACT_BITS = 14              # ... and hidden activations in [0, 2^14)
F32_ACT_BITS = 9           # float32 layers: inputs in [0, 2^9), weights as wide as the sums'
F32_WEIGHT_BITS = 12       # 2^24 bound allows, at most 12 bits (both exact in TF32's 11 bits too)
MEAN_BITS = 16             # posterior means and bucket edges in units of 2^-16
MEAN_MAX = 8               # |mean| clipped to 8 (every edge lies within +-3.4)
LOGVAR_BITS = 8            # log-variances in units of 2^-8 ...
LOGVAR_RANGE = (-16, 8)    # ... clipped to this range
INV_STD_BITS = 20          # exp(-logvar / 2) in units of 2^-20
U_BITS, U_MAX = 10, 6      # standardized edges (e - mean) / std in units of 2^-10, clipped to +-6
CDF_BITS = 28              # Phi(u) in units of 2^-28
LOGIT_BITS, LOGIT_MAX = 8, 18   # pixel logits in units of 2^-8, clipped to +-18
RAW_LOGIT_MAX = 1 << 20    # a logit before a context term is added, clipped to +-4096
SIGMOID_BITS = 24          # sigmoid(logit) in units of 2^-24
Z_BITS, Z_MAX = 12, 16     # decoder inputs in units of 2^-12, clipped to +-16
MAX_LATENT_BITS = 12
CALIBRATION = 256          # latents (and images) the activation scales are measured on
DECODER_CHUNK = 32         # latent rows per step of the integer decoder (speed only)
EXACT = 2.0 ** 53          # integers below this are exact in float64 ...
EXACT_F32 = 2.0 ** 24      # ... and below this in float32

TABLES_PATH = pathlib.Path(__file__).with_name("integer_tables.npz")
TABLES_SHA256 = "70f061c73d715fe774f598d63dc32e16ff2014e0f8b1c71375f4117a0ddbc50f"


def compute_tables() -> dict[str, np.ndarray]:
  """Every lookup table, each entry the exact value rounded to the nearest integer (mpmath, 40
  digits: no platform's float functions are involved)."""
  import mpmath  # only to (re)build the shipped file and in its test
  mpmath.mp.dps = 40

  def ints(values):
    return np.array([int(mpmath.nint(v)) for v in values], np.int64)

  u = [mpmath.mpf(i) / (1 << U_BITS) for i in range(-U_MAX << U_BITS, (U_MAX << U_BITS) + 1)]
  logit = [mpmath.mpf(i) / (1 << LOGIT_BITS)
           for i in range(-LOGIT_MAX << LOGIT_BITS, (LOGIT_MAX << LOGIT_BITS) + 1)]
  lo, hi = LOGVAR_RANGE
  logvar = [mpmath.mpf(i) / (1 << LOGVAR_BITS) for i in range(lo << LOGVAR_BITS,
                                                              (hi << LOGVAR_BITS) + 1)]
  out = {
      "phi": ints(mpmath.ncdf(v) * (1 << CDF_BITS) for v in u),
      "sigmoid": ints((1 << SIGMOID_BITS) / (1 + mpmath.exp(-v)) for v in logit),
      "inv_std": ints(mpmath.exp(-v / 2) * (1 << INV_STD_BITS) for v in logvar),
  }
  for bits in range(1, MAX_LATENT_BITS + 1):
    k = 1 << bits
    quantile = lambda p: mpmath.sqrt(2) * mpmath.erfinv(2 * p - 1)
    out[f"edges_{bits}"] = ints(quantile(mpmath.mpf(i) / k) * (1 << MEAN_BITS)
                                for i in range(1, k))
    out[f"centres_{bits}"] = ints(quantile((mpmath.mpf(i) + 0.5) / k) * (1 << Z_BITS)
                                  for i in range(k))
  return out


@functools.cache
def tables() -> dict[str, np.ndarray]:
  """The shipped lookup tables, refused (one line) unless their bytes hash to TABLES_SHA256."""
  try:
    raw = TABLES_PATH.read_bytes()
  except OSError as e:
    raise UserError(f"the codec's integer tables cannot be read ({e})") from None
  if hashlib.sha256(raw).hexdigest() != TABLES_SHA256:
    raise UserError(f"{TABLES_PATH} is damaged (its SHA-256 is not this codec's)")
  with np.load(TABLES_PATH) as data:
    return {name: data[name] for name in data.files}


def identity(fmt: int = FORMAT) -> bytes:
  """What a decoder must share with the encoder besides the float parameters: the format, the
  arithmetic's constants and the tables (hashed into the model fingerprint)."""
  common = (MEAN_BITS, MEAN_MAX, LOGVAR_BITS, LOGVAR_RANGE, INV_STD_BITS, U_BITS, U_MAX, CDF_BITS,
            LOGIT_BITS, LOGIT_MAX, SIGMOID_BITS, Z_BITS, Z_MAX, CALIBRATION)
  constants = (fmt, WEIGHT_BITS, ACT_BITS) + common
  if fmt != 1:
    constants += (F32_ACT_BITS, F32_WEIGHT_BITS) + _plan(fmt)
  tables()
  return f"integer-net {constants} tables {TABLES_SHA256}".encode()


def supports(model) -> bool:
  return isinstance(model, _ConvNets)


def _pow2(e):
  """2.0 ** e for integer arrays e, exactly."""
  return np.ldexp(np.ones(np.shape(e)), np.asarray(e, np.int64))


def _weights(kernel: np.ndarray, bits: int) -> tuple[np.ndarray, np.ndarray]:
  """(integer kernel, per-output-channel exponents e): w * 2^e rounded, max |w * 2^e| <= 2^(bits-1)."""
  w = np.asarray(kernel, np.float64)
  peak = np.abs(w.reshape(-1, w.shape[-1])).max(0)
  e = (bits - 1) - np.frexp(peak)[1]
  return np.rint(w * _pow2(e)), e


def _scale(peak: float, bits: int) -> int:
  """The activation exponent s mapping 2 * peak below 2^bits (peak * 2^s < 2^(bits-1))."""
  return (bits - 1) - int(np.frexp(max(peak, 2.0 ** -40))[1])


# The layers of _ConvNets in order: (name, operation, output kind, GEMM dtype). The decoder's
# transposed convolutions, nearly all of the codec's arithmetic, run in float32 (twice as fast as
# float64 on CPUs), with inputs and weights narrow enough that every sum stays below 2^24.
_ENCODER = (("enc_conv1", "conv", "hidden", "float64"), ("enc_conv2", "conv", "hidden", "float64"),
            ("enc_dense", "dense", "code", "float64"))
_DECODER = (("dec_dense", "dense", "hidden", "float64"),
            ("dec_deconv1", "deconv2", "hidden", "float32"),
            ("dec_deconv2", "deconv2", "hidden", "float32"),
            ("dec_deconv3", "deconv1", "logit", "float32"))


def _plan(fmt: int):
  """(encoder layers, decoder layers) of an integer format."""
  if fmt == 1:
    return _ENCODER, tuple(layer[:3] + ("float64",) for layer in _DECODER)
  if fmt == 2:
    return _ENCODER, _DECODER
  raise UserError(f"integer network format {fmt} is not known to this codec (it knows {FORMATS})")


def _fan_in(op: str, kernel_shape) -> int:
  """The most products one output of the layer sums: a stride-2 3x3 transposed convolution's
  output phase takes at most 2 x 2 of the 9 taps (`kernels.phase_conv_transpose`)."""
  c_in = kernel_shape[-2]
  if op == "deconv2":
    return 4 * c_in
  return int(np.prod(kernel_shape[:-1]))


def _limit(dtype: str) -> float:
  return EXACT if dtype == "float64" else EXACT_F32


def _act_bits(dtype: str) -> int:
  """The width of a float64 or float32 layer's integer inputs (hidden activations)."""
  return ACT_BITS if dtype == "float64" else F32_ACT_BITS


def _apply(op: str, a, kernel, bias):
  """One layer's integer accumulator, through the same GEMM kernels the float model runs."""
  if op == "conv":
    return kernels.patch_conv(a, kernel, bias, 2, relu=False)
  if op == "dense":
    y = a.reshape(a.shape[0], -1) @ kernel
    return y + _channels(bias, y)
  if op == "deconv2":
    return kernels.phase_conv_transpose(a, kernel, bias, relu=False)
  return kernels.tap_matmul_conv_transpose(a, kernel, bias)


def _channels(v, like):
  """Per-channel v (C,) shaped to broadcast against `like` (..., C) without rank promotion."""
  return v.reshape((1,) * (like.ndim - 1) + (-1,))


def _forward(layers, names, a):
  """(last accumulator, each hidden layer's largest real-valued pre-activation). Each layer runs
  in its kernel's dtype; its accumulator (an exact integer) is requantized in float64."""
  peaks = []
  for (name, op, kind, _), layer in zip(names, layers):
    kernel = layer["kernel"]
    acc = _apply(op, a.astype(kernel.dtype), kernel, layer["bias"]).astype(jnp.float64)
    if kind != "hidden":
      return acc, peaks
    peaks.append(jnp.max(acc * _channels(layer["dequant"], acc)))
    a = jnp.clip(jnp.floor(acc * _channels(layer["multiplier"], acc) + 0.5), 0, layer["top"])
    if name == "dec_dense":
      a = a.reshape(a.shape[0], 7, 7, 32)
  raise AssertionError("no output layer")


def _code(encoder, x_u8, fmt):
  """The encoder's last layer requantized: (mean in units of 2^-MEAN_BITS, log-variance in units
  of 2^-LOGVAR_BITS) side by side, or a deterministic model's code in units of 2^-Z_BITS."""
  acc, _ = _forward(encoder["layers"], _plan(fmt)[0], x_u8.astype(jnp.float64))
  return jnp.clip(jnp.floor(acc * _channels(encoder["code_multiplier"], acc) + 0.5),
                  _channels(encoder["code_lo"], acc), _channels(encoder["code_hi"], acc))


def _decoder_acc(decoder, z_q, fmt=FORMAT):
  """(rows, pixels) output accumulators, DECODER_CHUNK rows at a time (the last chunk padded with
  zero latents): each row's integers are the same in any chunk, and a chunk's activations stay in
  the CPU's caches, where a call on every row at once (e.g. 16 samples x 64 images) waits on memory
  (the codec_speed report: 4x the time per row at 1,024 rows)."""
  rows = z_q.shape[0]
  run = lambda z: _forward(decoder["layers"], _plan(fmt)[1], z)[0].reshape(z.shape[0], -1)
  if rows <= DECODER_CHUNK:
    return run(z_q)
  chunks = -(-rows // DECODER_CHUNK)
  padded = jnp.pad(z_q, ((0, chunks * DECODER_CHUNK - rows), (0, 0)))
  acc = jax.lax.map(run, padded.reshape(chunks, DECODER_CHUNK, -1))
  return acc.reshape(chunks * DECODER_CHUNK, -1)[:rows]


def posterior(encoder, x_u8, latent_bits: int, posterior_bits: int, fmt: int = FORMAT):
  """(B, L, K) int32 q(z|x) bucket weights floor(mass * (2^posterior_bits - K)) + 1, each mass
  the difference of the Phi table at the bucket's standardized edges."""
  t = tables()
  code = _code(encoder, x_u8, fmt)
  latent = code.shape[-1] // 2
  mean_q = code[:, :latent]
  logvar_i = (code[:, latent:] - (LOGVAR_RANGE[0] << LOGVAR_BITS)).astype(jnp.int32)
  edges = jnp.asarray(t[f"edges_{latent_bits}"], jnp.float64)
  inv_std = jnp.asarray(t["inv_std"], jnp.float64)[logvar_i]
  u = (edges[None, None, :] - mean_q[..., None]) * inv_std[..., None]
  u = jnp.floor(u * 2.0 ** (U_BITS - MEAN_BITS - INV_STD_BITS) + 0.5)
  u = jnp.clip(u, -U_MAX << U_BITS, U_MAX << U_BITS).astype(jnp.int32) + (U_MAX << U_BITS)
  cdf = jnp.asarray(t["phi"], jnp.float64)[u]
  zeros = jnp.zeros(cdf.shape[:-1] + (1,), cdf.dtype)
  cdf = jnp.concatenate([zeros, cdf, zeros + (1 << CDF_BITS)], -1)
  mass = cdf[..., 1:] - cdf[..., :-1]
  scale = float((1 << posterior_bits) - (1 << latent_bits)) * 2.0 ** -CDF_BITS
  return (jnp.floor(mass * scale) + 1).astype(jnp.int32)


def raw_logits(decoder, z_index, latent_bits: int, fmt: int = FORMAT):
  """(B, pixels) int32 logits at the bucket centres in units of 2^-LOGIT_BITS, clipped only to
  +-RAW_LOGIT_MAX (a context term is added before the sigmoid's clip)."""
  t = tables()
  z_q = jnp.asarray(t[f"centres_{latent_bits}"], jnp.float64)[z_index]
  acc = _decoder_acc(decoder, z_q, fmt)
  logit = jnp.floor(acc * _channels(decoder["logit_multiplier"], acc) + 0.5)
  return jnp.clip(logit, -RAW_LOGIT_MAX, RAW_LOGIT_MAX).astype(jnp.int32)


def context_logits(table: np.ndarray) -> np.ndarray:
  """A context model's float table (`vae_jax.nn.cvae_context`) as int64 logits in units of
  2^-LOGIT_BITS: float32 -> float64 is exact and the rounding IEEE-754's, so the same everywhere."""
  ints = np.rint(np.asarray(table, np.float32).astype(np.float64) * (1 << LOGIT_BITS))
  return np.clip(ints, -RAW_LOGIT_MAX, RAW_LOGIT_MAX).astype(np.int64)


@functools.cache
def _probability_table(pixel_bits: int) -> np.ndarray:
  """P(x = 1) in units of 2^-pixel_bits at every logit of -LOGIT_MAX..LOGIT_MAX (int64)."""
  shift = SIGMOID_BITS - pixel_bits
  return np.clip((tables()["sigmoid"] + (1 << (shift - 1))) >> shift, 1, (1 << pixel_bits) - 1)


@functools.cache
def _probability_fractions(pixel_bits: int) -> np.ndarray:
  """`_probability_table` divided by 2^pixel_bits (exact in float64): what the pixel coder takes."""
  return _probability_table(pixel_bits) / float(1 << pixel_bits)


def _table_index(logit: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
  """The probability tables' index of int64 logits clipped to +-LOGIT_MAX (into `out` if given).
  np.minimum / np.maximum: np.clip's overhead is the larger part of a decode step's time."""
  top = LOGIT_MAX << LOGIT_BITS
  index = np.maximum(logit, -top, out=out)
  np.minimum(index, top, out=index)
  index += top
  return index


def probabilities_np(logit: np.ndarray, pixel_bits: int) -> np.ndarray:
  """`pixels`' last steps in numpy integers: P(x = 1) in units of 2^-pixel_bits at integer logits
  (any int array, clipped to +-LOGIT_MAX here)."""
  return _probability_table(pixel_bits)[_table_index(np.asarray(logit, np.int64))]


def probability_fractions_np(logit: np.ndarray, pixel_bits: int) -> np.ndarray:
  """`probabilities_np` / 2^pixel_bits as float64 (exact), for an int64 array it may overwrite:
  a context model's decode step, where every numpy call counts."""
  return _probability_fractions(pixel_bits)[_table_index(logit, out=logit)]


def pixels(decoder, z_index, latent_bits: int, pixel_bits: int, fmt: int = FORMAT):
  """(B, pixels) int32 P(x = 1 | bucket centres) in units of 2^-pixel_bits, from the sigmoid
  table at the logits in units of 2^-LOGIT_BITS."""
  t = tables()
  logit = raw_logits(decoder, z_index, latent_bits, fmt)
  logit = jnp.clip(logit, -LOGIT_MAX << LOGIT_BITS, LOGIT_MAX << LOGIT_BITS)
  p = jnp.asarray(t["sigmoid"], jnp.float64)[logit + (LOGIT_MAX << LOGIT_BITS)]
  p = jnp.floor(p * 2.0 ** (pixel_bits - SIGMOID_BITS) + 0.5)
  return jnp.clip(p, 1, (1 << pixel_bits) - 1).astype(jnp.int32)


def quantize_latents(z):
  """Float latents as decoder inputs: round(z * 2^Z_BITS), clipped to +-Z_MAX."""
  z_q = jnp.floor(z.astype(jnp.float64) * float(1 << Z_BITS) + 0.5)
  return jnp.clip(z_q, -Z_MAX << Z_BITS, Z_MAX << Z_BITS)


def mode_image(decoder, z, fmt: int = FORMAT):
  """The decoder's most probable image (B, pixels) uint8 at float latents z (the integer logit's
  sign), and the logits as float32."""
  acc = _decoder_acc(decoder, quantize_latents(z), fmt)
  logits = acc * _channels(decoder["logit_dequant"], acc)
  return (acc > 0).astype(jnp.uint8), logits.astype(jnp.float32)


# u's largest partial product, |edge - mean| * max exp(-logvar / 2), and the posterior weights'
# mass * (2^24 - K) stay integers below 2^53.
assert (4 + MEAN_MAX) * 2.0 ** MEAN_BITS * np.exp(-LOGVAR_RANGE[0] / 2) * 2 ** INV_STD_BITS < EXACT
assert 2.0 ** (CDF_BITS + 24) < EXACT


@dataclasses.dataclass
class Folded:
  """A model's integer encoder and decoder: pytrees of integers (float64 or float32) and powers
  of two."""
  encoder: dict
  decoder: dict


def _layer_params(model, name):
  layer = getattr(model, name)
  kernel = np.asarray(layer.kernel[...], np.float32)
  bias = (np.zeros(kernel.shape[-1], np.float32) if layer.bias is None
          else np.asarray(layer.bias[...], np.float32))
  return kernel, bias


def _check_exact(name, kernel_q, bias_q, input_peak, fan_in=None, limit=EXACT):
  """Every partial sum of the layer an integer below `limit` (2^53 for float64, 2^24 for float32
  GEMMs): fan-in * max|w| * max|a| + max|b|."""
  fan_in = int(np.prod(kernel_q.shape[:-1])) if fan_in is None else fan_in
  bound = fan_in * float(np.abs(kernel_q).max()) * input_peak + float(np.abs(bias_q).max())
  if not bound < limit:
    raise AssertionError(f"{name}: partial sums up to {bound:.3g} exceed 2^{int(np.log2(limit))}")


def _quantize_layer(name, op, dtype, kernel, bias, s_in, input_peak):
  """(integer kernel, bias, exponent e): the widest weights (at most WEIGHT_BITS) whose sums stay
  exact in `dtype` for inputs in units of 2^-s_in up to input_peak."""
  fan_in, limit = _fan_in(op, kernel.shape), _limit(dtype)
  widest = WEIGHT_BITS if dtype == "float64" else F32_WEIGHT_BITS
  bits = min(widest, 1 + int(np.floor(np.log2(limit / (fan_in * input_peak)))))
  while bits > 1:
    kernel_q, e = _weights(kernel, bits)
    bias_q = np.rint(bias.astype(np.float64) * _pow2(e + s_in))
    bound = fan_in * float(np.abs(kernel_q).max()) * input_peak + float(np.abs(bias_q).max())
    if bound < limit:
      break
    bits -= 1
  _check_exact(name, kernel_q, bias_q, input_peak, fan_in, limit)
  return kernel_q, bias_q, e


@functools.partial(jax.jit, static_argnums=0)
def _peaks(names, layers, a):
  return _forward(layers, names, a)[1]


@functools.partial(jax.jit, static_argnums=0)
def _last(names, layers, a):
  return _forward(layers, names, a)[0]


def _fold(model, names, s_in: int, input_peak: float, calibration: np.ndarray):
  """(integer layers, the last accumulator's per-channel exponent) for inputs in units of 2^-s_in
  up to input_peak: weights folded, each hidden layer's activation scale measured on
  `calibration` with the layers before it."""
  params = [_layer_params(model, name) for name, *_ in names]
  layers = []
  for i, ((name, op, kind, dtype), (kernel, bias)) in enumerate(zip(names, params)):
    kernel_q, bias_q, e = _quantize_layer(name, op, dtype, kernel, bias, s_in, input_peak)
    out_bits = _act_bits(names[i + 1][3]) if kind == "hidden" else 0
    layer = {"kernel": kernel_q.astype(dtype), "bias": bias_q.astype(dtype),
             "dequant": _pow2(-(e + s_in)), "multiplier": np.ones_like(bias_q),
             "top": np.float64((1 << out_bits) - 1)}
    layers.append(layer)
    if kind != "hidden":
      return layers, e + s_in
    # the layers after this one only fill the pytree (their outputs are not read)
    rest = [{"kernel": np.zeros(k.shape, d), "bias": np.zeros(k.shape[-1], d),
             "dequant": np.ones(k.shape[-1]), "multiplier": np.ones(k.shape[-1]),
             "top": np.float64(1)}
            for (_, _, _, d), (k, _) in zip(names[i + 1:], params[i + 1:])]
    with jax.enable_x64(True):
      peak = float(_peaks(names, _device(layers + rest), jnp.asarray(calibration))[i])
    s_out = _scale(peak, out_bits)
    layer["multiplier"] = _pow2(s_out - e - s_in)
    s_in, input_peak = s_out, float((1 << out_bits) - 1)
  raise AssertionError("no output layer")


def _device(tree):
  """Numpy leaves as device arrays of their own dtypes (float64 or float32)."""
  return jax.tree.map(jnp.asarray, tree)


def fold(model, latent_bits: int, fmt: int = FORMAT) -> Folded:
  """The model's integer nets: a pure function of its float parameters, latent_bits and the
  format."""
  if not supports(model):
    raise UserError(f"no integer network for {type(model).__name__}")
  t = tables()
  latent = int(model.latent_dim)
  encoder_plan, decoder_plan = _plan(fmt)
  rng = np.random.Generator(np.random.PCG64(fmt))
  z_q = t[f"centres_{latent_bits}"][rng.integers(0, 1 << latent_bits, (CALIBRATION, latent))]
  z_q = z_q.astype(np.float64)
  layers, e_logit = _fold(model, decoder_plan, Z_BITS, float(Z_MAX << Z_BITS), z_q)
  decoder = {"layers": layers, "logit_multiplier": _pow2(LOGIT_BITS - e_logit),
             "logit_dequant": _pow2(-e_logit)}
  with jax.enable_x64(True):
    logits = np.asarray(_last(decoder_plan, _device(layers), jnp.asarray(z_q)))
  images = (logits > 0).reshape(CALIBRATION, 28, 28, 1).astype(np.float64)
  layers, e_code = _fold(model, encoder_plan, 0, 1.0, images)
  if bool(getattr(model, "stochastic", True)):
    exponents = np.repeat([MEAN_BITS, LOGVAR_BITS], latent)
    lo = np.repeat([-MEAN_MAX << MEAN_BITS, LOGVAR_RANGE[0] << LOGVAR_BITS], latent)
    hi = np.repeat([MEAN_MAX << MEAN_BITS, LOGVAR_RANGE[1] << LOGVAR_BITS], latent)
  else:
    exponents = np.full(latent, Z_BITS)
    lo, hi = np.full(latent, -Z_MAX << Z_BITS), np.full(latent, Z_MAX << Z_BITS)
  encoder = {"layers": layers, "code_multiplier": _pow2(exponents - e_code),
             "code_lo": lo.astype(np.float64), "code_hi": hi.astype(np.float64)}
  return Folded(encoder, decoder)


if __name__ == "__main__":
  np.savez_compressed(TABLES_PATH, **compute_tables())
  print(TABLES_PATH, hashlib.sha256(TABLES_PATH.read_bytes()).hexdigest())
