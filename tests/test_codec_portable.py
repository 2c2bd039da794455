"""The integer networks' tables: a file decodes exactly in another process under other XLA:CPU
flags (threads, vector width, fast-math), the lookup tables are the exact values rounded, and
what a decoder must share is in the fingerprint."""

import json
import os
import subprocess
import sys

import constriction
import jax
import jax.numpy as jnp
import mpmath
import numpy as np
import pytest
from scipy.special import expit, ndtr, ndtri

from vae_jax.codec import bitsback, container, integer
from vae_jax.codec.tables import ModelTables, fingerprint
from vae_jax.config import Config
from vae_jax.errors import UserError
from vae_jax.nn.models import create_model
from vae_jax.pretrained import params_dict

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SETTINGS = bitsback.Settings(max_batch=4)

# Decodes the words in argv[1]'s folder with the model saved there; writes the images back.
DECODE = """
import json, sys
import constriction, numpy as np
from vae_jax.codec import bitsback
from vae_jax.codec.tables import ModelTables
from vae_jax.config import Config
from vae_jax.pretrained import build
folder = sys.argv[1]
meta = json.load(open(folder + "/meta.json"))
with np.load(folder + "/params.npz") as f:
  model = build(Config(**meta["config"]), {k: f[k] for k in f.files})
settings = bitsback.Settings(max_batch=meta["max_batch"])
stack = np.concatenate([bitsback.seed_words(settings.seed_words)[:meta["omitted"]],
                        np.load(folder + "/words.npy")])
images = bitsback.decode_chain(ModelTables(model), constriction.stream.stack.AnsCoder(stack),
                               meta["count"], settings)
np.save(folder + "/decoded.npy", images)
"""


@pytest.fixture(scope="module")
def coded(tmp_path_factory):
  """A tiny random CVAE, 6 binary digit-like images and their bits-back words on the integer path."""
  folder = tmp_path_factory.mktemp("portable")
  config = Config(latent_dim=3)
  model = create_model(config, jax.random.key(0))
  rng = np.random.default_rng(0)
  images = np.zeros((6, 28, 28, 1), np.uint8)
  for i, image in enumerate(images):  # a filled rectangle and noise: varied, non-trivial tables
    image[4 + i:20, 6:18 + i] = 1
    image[rng.random((28, 28, 1)) < 0.05] ^= 1
  tables = ModelTables(model)
  result = bitsback.encode(tables, images, SETTINGS)
  np.savez(folder / "params.npz", **params_dict(model))
  np.save(folder / "words.npy", result.words)
  with open(folder / "meta.json", "w") as f:
    json.dump({"config": {"latent_dim": 3}, "max_batch": SETTINGS.max_batch,
               "omitted": result.omitted, "count": len(images)}, f)
  return folder, model, config, tables, images


def test_decodes_in_another_process_under_other_xla_flags(coded):
  """Encoded here (XLA's defaults: multi-threaded Eigen, its vector width, no fast-math), decoded
  on one core with 128-bit vectors, single-threaded Eigen and fast-math on (another machine's exp,
  log and summation order): one process changes all of them, to keep the suite short."""
  folder, _, _, _, images = coded
  flags = ("--xla_cpu_enable_fast_math=true --xla_cpu_prefer_vector_width=128"
           " --xla_cpu_multi_thread_eigen=false")
  env = dict(os.environ, XLA_FLAGS=f"{os.environ.get('XLA_FLAGS', '')} {flags}".strip(),
             PYTHONPATH=ROOT)
  subprocess.run(["taskset", "-c", "0", sys.executable, "-c", DECODE, str(folder)], env=env,
                 cwd=ROOT, check=True, capture_output=True, timeout=300)
  np.testing.assert_array_equal(np.load(folder / "decoded.npy"), images)


def test_integer_tables_follow_the_float_network(coded):
  """Quantization moves each probability by little: pixels against the float network's sigmoid,
  q(z|x) against float64 Gaussian masses from the float network's mean and log-variance (its
  rate cost, the KL divergence, below 2e-3 bits per latent: a mean off by 5% of a standard
  deviation would cost more)."""
  _, model, _, tables, images = coded
  z = np.array([[0, 100, 255], [128, 3, 200]], np.int32)
  centres = ndtri((z + 0.5) / 256).astype(np.float32)
  p_float = np.asarray(jax.nn.sigmoid(model.decode_logits(centres))).reshape(2, -1)
  np.testing.assert_allclose(tables.pixels(z, 4) / 2.0 ** 16, p_float, atol=2e-3)
  mean, logvar = (np.asarray(a, np.float64) for a in model.encode(images[:2].astype(np.float32)))
  edges = ndtri(np.arange(257) / 256)
  mass = np.diff(ndtr((edges - mean[..., None]) / np.exp(0.5 * logvar)[..., None]), axis=-1)
  weights = tables.posterior(images[:2], 4)
  assert weights.min() >= 1 and weights.sum(-1).max() <= 1 << 24
  q = weights / weights.sum(-1, keepdims=True)
  assert (mass * np.log2(mass / q)).sum(-1).max() < 2e-3


def test_shipped_tables_are_the_exact_values_rounded():
  """Entries checked against 40-digit mpmath (the rounded value) and scipy (within one unit)."""
  t = integer.tables()
  mpmath.mp.dps = 40
  rng = np.random.default_rng(1)
  checks = {
      "phi": (integer.U_BITS, -integer.U_MAX, integer.CDF_BITS, mpmath.ncdf, ndtr),
      "sigmoid": (integer.LOGIT_BITS, -integer.LOGIT_MAX, integer.SIGMOID_BITS,
                  lambda v: 1 / (1 + mpmath.exp(-v)), expit),
      "inv_std": (integer.LOGVAR_BITS, integer.LOGVAR_RANGE[0], integer.INV_STD_BITS,
                  lambda v: mpmath.exp(-v / 2), lambda v: np.exp(-v / 2)),
  }
  for name, (bits, lo, unit, exact, close) in checks.items():
    table = t[name]
    for i in rng.integers(0, len(table), 40):
      v = mpmath.mpf(int(i)) / (1 << bits) + lo
      assert table[i] == int(mpmath.nint(exact(v) * (1 << unit))), (name, i)
    v = np.arange(len(table)) / 2.0 ** bits + lo
    assert np.abs(table - close(v) * 2.0 ** unit).max() <= 1, name
  k = 256
  np.testing.assert_allclose(t["edges_8"] / 2.0 ** integer.MEAN_BITS, ndtri(np.arange(1, k) / k),
                             atol=2.0 ** -integer.MEAN_BITS)
  np.testing.assert_allclose(t["centres_8"] / 2.0 ** integer.Z_BITS,
                             ndtri((np.arange(k) + 0.5) / k), atol=2.0 ** -integer.Z_BITS)


def test_damaged_tables_are_refused(tmp_path, monkeypatch):
  damaged = tmp_path / "tables.npz"
  raw = bytearray(integer.TABLES_PATH.read_bytes())
  raw[len(raw) // 2] ^= 1
  damaged.write_bytes(bytes(raw))
  monkeypatch.setattr(integer, "TABLES_PATH", damaged)
  integer.tables.cache_clear()
  try:
    with pytest.raises(UserError, match="damaged"):
      integer.tables()
  finally:
    monkeypatch.undo()
    integer.tables.cache_clear()


def test_another_integer_format_is_refused_before_decoding(coded, monkeypatch):
  """The fingerprint in the header covers the integer format, its constants and the tables' hash;
  a format this codec does not know is refused with one line."""
  _, model, config, _, _ = coded
  box = container.Container(container.LOSSLESS, fingerprint(model, config), 1, (28, 28, 1), 0,
                            b"", b"")
  assert fingerprint(model, config, 1) != fingerprint(model, config, 2)
  for name, value in (("WEIGHT_BITS", integer.WEIGHT_BITS - 1),
                      ("F32_ACT_BITS", integer.F32_ACT_BITS + 1), ("TABLES_SHA256", "0" * 64)):
    with monkeypatch.context() as patch:
      patch.setattr(integer, name, value)
      patch.setattr(integer, "tables", lambda: {})
      with pytest.raises(UserError, match="another model"):
        container.check_model(box, fingerprint(model, config), "f.vjz")
  container.check_model(box, fingerprint(model, config), "f.vjz")
  with pytest.raises(UserError, match="format 3 is not known"):
    fingerprint(model, config, 3)


def _products_per_output(op, c_in):
  """The most products one output of a 3x3 layer sums, counted by XLA's own transposed
  convolution of ones (independent of `integer`'s fan-in rule)."""
  stride = 2 if op == "deconv2" else 1
  with jax.enable_x64(True):
    counts = jax.lax.conv_transpose(jnp.ones((1, 7, 7, c_in)), jnp.ones((3, 3, c_in, 1)),
                                    (stride, stride), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return int(counts.max())


def test_float32_layers_compute_the_exact_integers(coded):
  """The decoder's float32 GEMM kernels give exactly the integers of an independent float64
  computation of the same folded network (numpy matmul, XLA's lax.conv_transpose), and every
  float32 layer's sums are bounded below 2^24 (float32's exact integers). The rows span two whole
  chunks of the integer decoder and a padded third."""
  _, model, _, _, _ = coded
  folded = integer.fold(model, 8)
  layers = folded.decoder["layers"]
  assert [layer["kernel"].dtype for layer in layers][1:] == [np.float32] * 3
  z_index = np.random.default_rng(1).integers(0, 256, (2 * integer.DECODER_CHUNK + 5, 3))
  z_q = integer.tables()["centres_8"][z_index].astype(np.float64)
  a, peak = z_q, float(np.abs(z_q).max())
  for (name, op, kind, dtype), layer in zip(integer._DECODER, layers):
    kernel, bias = (np.asarray(layer[k], np.float64) for k in ("kernel", "bias"))
    if dtype == "float32":
      fan_in = (kernel.shape[-2] if op == "dense"
                else _products_per_output(op, kernel.shape[-2]))
      assert fan_in * np.abs(kernel).max() * peak + np.abs(bias).max() < 2 ** 24, name
    if op == "dense":
      acc = a.reshape(len(a), -1) @ kernel + bias
    else:
      stride = 2 if op == "deconv2" else 1
      with jax.enable_x64(True):
        acc = np.asarray(jax.lax.conv_transpose(a, kernel, (stride, stride), "SAME",
                                                dimension_numbers=("NHWC", "HWIO", "NHWC"))) + bias
    if kind != "hidden":
      break
    a = np.clip(np.floor(acc * layer["multiplier"] + 0.5), 0, layer["top"])
    a = a.reshape(len(a), 7, 7, 32) if name == "dec_dense" else a
    peak = float(layer["top"])
  with jax.enable_x64(True):
    got = integer._decoder_acc(jax.tree.map(jnp.asarray, folded.decoder), jnp.asarray(z_q))
  np.testing.assert_array_equal(np.asarray(got), acc.reshape(len(acc), -1))


def test_every_partial_sum_bound_is_checked():
  kernel = np.full((3, 3, 4096, 8), 1 << 13, np.float64)   # fan-in 36,864
  integer._check_exact("ok", kernel, np.zeros(8), float((1 << 14) - 1))
  with pytest.raises(AssertionError, match="exceed 2"):
    integer._check_exact("wide", kernel * 2 ** 20, np.zeros(8), float((1 << 14) - 1))


def test_decoded_words_round_trip_in_process(coded):
  """The same process decodes too (a baseline for the subprocess tests above)."""
  folder, _, _, tables, images = coded
  meta = json.loads((folder / "meta.json").read_text())
  stack = np.concatenate([bitsback.seed_words(SETTINGS.seed_words)[:meta["omitted"]],
                          np.load(folder / "words.npy")])
  decoded = bitsback.decode_chain(tables, constriction.stream.stack.AnsCoder(stack), len(images),
                                  SETTINGS)
  np.testing.assert_array_equal(decoded, images)


def test_files_of_the_previous_format_still_decode(coded):
  """A version-3 file (integer format 1: every layer in float64) decodes with the default codec,
  which writes version 4 (format 2); both exact, and the two formats' integers differ."""
  from vae_jax.codec import files
  _, model, config, _, images = coded
  old, _ = files.Codec(model, config, version=3).encode_lossless(images)
  new, _ = files.Codec(model, config).encode_lossless(images)
  assert container.parse(old, "old").version == 3 and container.parse(new, "new").version == 4
  assert container.parse(old, "old").fingerprint != container.parse(new, "new").fingerprint
  codec = files.Codec(model, config)
  for raw in (old, new):
    decoded, _ = codec.decode(raw, "f.vjz")
    np.testing.assert_array_equal(decoded, images)
  old_layers = integer.fold(model, 8, fmt=1).decoder["layers"]
  assert {layer["kernel"].dtype for layer in old_layers} == {np.dtype(np.float64)}
