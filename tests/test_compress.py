"""The codec: exact round trips (across processes), its file checks, and its rates against numpy."""

import dataclasses
import gzip
import os
import struct
import subprocess
import sys

import imageio.v3 as iio
import jax
import numpy as np
import pytest
from scipy.special import ndtr, ndtri

from conftest import write_workdir
from experiments import compress as compress_cli
from vae_jax import data, pretrained
from vae_jax.training import run
from vae_jax.codec import baselines, bitsback, container, files, images, lossy
from vae_jax.codec.tables import ModelTables
from vae_jax.config import Config
from vae_jax.errors import UserError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = Config(latent_dim=4, batch_size=8, epochs=1)  # randomly initialized: exactness holds for any model


@pytest.fixture(scope="module")
def workdirs(tmp_path_factory):
  """Two tiny models that differ only in their seed (so in their parameters)."""
  base = tmp_path_factory.mktemp("models")
  return [write_workdir(str(base / f"seed{seed}"), dataclasses.replace(TINY, seed=seed))
          for seed in (0, 1)]


@pytest.fixture(scope="module")
def codec(workdirs):
  config, _, model = run.restore_model(workdirs[0])
  return files.Codec(model, config)


def adversarial(digits01):
  """All black, all white, uniform noise, inverted digits and a checkerboard, 2 of each."""
  rng = np.random.default_rng(0)
  checker = (np.indices((28, 28)).sum(0) % 2).astype(np.uint8)
  return np.concatenate([np.zeros((2, 28, 28), np.uint8), np.ones((2, 28, 28), np.uint8),
                         rng.integers(0, 2, (2, 28, 28), dtype=np.uint8), 1 - digits01[:2],
                         np.stack([checker, 1 - checker])])[..., None]


def compress(*args, env=None):
  return subprocess.run([sys.executable, "-m", "experiments.compress", *args], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=300)


def read_decoded(out_dir):
  with gzip.open(os.path.join(out_dir, images.IDX_NAME)) as f:
    raw = f.read()
  n, h, w = struct.unpack(">III", raw[4:16])
  return np.frombuffer(raw, np.uint8, offset=16).reshape(n, h, w, 1)


def test_round_trip_in_two_processes(workdirs, digits, tmp_path, env):
  """Real digits and adversarial images, as a PNG directory: encoded by one process, decoded by
  another, every pixel back (the decoded IDX file reads back as the same images)."""
  expected = np.concatenate([data.binarize(digits[1][:6])[..., None],
                             adversarial(data.binarize(digits[1][6:8]))])
  png_dir = tmp_path / "pngs"
  png_dir.mkdir()
  for i, image in enumerate(expected):
    iio.imwrite(png_dir / f"{i:02d}.png", image[..., 0] * 255)
  encoded = compress("encode", "--model", workdirs[0], "--data", str(png_dir),
                     "--out", str(tmp_path / "a.vjz"), env=env)
  assert encoded.returncode == 0, encoded.stderr
  assert "16 images" in encoded.stdout and "bits/pixel" in encoded.stdout and "images/s" in encoded.stdout
  decoded = compress("decode", str(tmp_path / "a.vjz"), "--model", workdirs[0], "--out",
                     str(tmp_path / "out"), env=env)
  assert decoded.returncode == 0, decoded.stderr
  np.testing.assert_array_equal(read_decoded(tmp_path / "out") // 255, expected)
  np.testing.assert_array_equal(images.load(f"idx:{tmp_path / 'out' / images.IDX_NAME}"), expected)
  assert iio.imread(tmp_path / "out" / images.PREVIEW_NAME).ndim == 2


def test_bad_inputs_give_one_line_and_no_output(workdirs, idx_dir, tmp_path, capsys):
  def cli(*args):
    code = compress_cli.main(list(args))
    return code, capsys.readouterr().err

  def assert_error(result, fragment):
    code, err = result
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0], err

  good = tmp_path / "good.vjz"
  assert cli("encode", "--model", workdirs[0], "--data", f"idx:{idx_dir}", "--count", "3",
             "--out", str(good), "--quiet")[0] == 0
  raw = good.read_bytes()
  cases = {"truncated": (raw[:-7], "truncated"), "empty": (b"", "empty"),
           "flipped": (raw[:60] + bytes([raw[60] ^ 0x10]) + raw[61:], "CRC32"),
           "foreign": (b"GIF89a" + raw[6:], "not a vae_jax compressed file")}
  for name, (content, fragment) in cases.items():
    (tmp_path / name).write_bytes(content)
    assert_error(cli("decode", str(tmp_path / name), "--model", workdirs[0], "--out",
                     str(tmp_path / f"{name}_out")), fragment)
    assert not os.path.exists(tmp_path / f"{name}_out")
  assert_error(cli("decode", str(good), "--model", workdirs[1], "--out", str(tmp_path / "other")),
               "another model")
  assert not os.path.exists(tmp_path / "other")
  big = tmp_path / "big"
  big.mkdir()
  iio.imwrite(big / "a.png", np.zeros((32, 32), np.uint8))
  assert_error(cli("encode", "--model", workdirs[0], "--data", str(big), "--lossy", "--out",
                   str(tmp_path / "b.vjz")), "32x32")  # lossless takes it (the context coder)
  assert not os.path.exists(tmp_path / "b.vjz")
  assert_error(cli("encode", "--model", workdirs[0], "--data", f"idx:{idx_dir}", "--out", str(good)),
               "exists")
  assert good.read_bytes() == raw
  assert sorted(os.listdir(tmp_path)) == sorted(["good.vjz", "big", *cases])


def test_container_detects_every_single_byte_change_and_truncation():
  box = container.Container(container.LOSSLESS, bytes(range(32)), 3, (28, 28, 1), 1234, b"set",
                            b"payload bytes")
  raw = box.to_bytes()
  assert container.parse(raw, "f") == box
  for i in range(len(raw)):
    with pytest.raises(UserError):
      container.parse(raw[:i] + bytes([raw[i] ^ 0xFF]) + raw[i + 1:], "f")
    with pytest.raises(UserError):
      container.parse(raw[:i], "f")
  with pytest.raises(UserError, match="another model"):
    container.check_model(box, bytes(32), "f")
  container.check_model(box, bytes(range(32)), "f")


def test_fingerprint_depends_on_parameters_and_config(workdirs):
  (c0, _, m0), (c1, _, m1) = (run.restore_model(w) for w in workdirs)
  assert files.Codec(m0, c0).fingerprint == files.Codec(m0, dataclasses.replace(c0, seed=5)).fingerprint
  assert files.Codec(m0, c0).fingerprint != files.Codec(m1, c1).fingerprint
  assert files.Codec(m0, c0).fingerprint != files.Codec(m0, dataclasses.replace(c0, conv_transpose="xla")).fingerprint


def test_adversarial_images_round_trip(codec, digits):
  hard = adversarial(data.binarize(digits[1][:2]))
  raw, report = codec.encode_lossless(hard)
  decoded, _ = codec.decode(raw, "mem")
  np.testing.assert_array_equal(decoded, hard)
  assert report.file_bytes == len(raw)


def test_posterior_table_matches_the_gaussian_masses_in_float64(codec, digits):
  x = data.binarize(digits[1][:4])[..., None]
  # the float network's tables (the integer networks': test_codec_portable.py)
  table = ModelTables(codec.model, portable=False).posterior(x, 4)
  mean, logvar = (np.asarray(a, np.float64) for a in codec.model.encode(x.astype(np.float32)))
  edges = np.concatenate([[-np.inf], ndtri(np.arange(1, 256) / 256), [np.inf]])
  cdf = ndtr((edges - mean[..., None]) / np.exp(0.5 * logvar)[..., None])
  masses = np.diff(cdf, axis=-1)
  k = 256
  np.testing.assert_allclose((table - 1) / ((1 << 24) - k), masses, atol=2e-6)
  assert table.min() >= 1


def test_rate_equals_the_codelength_of_the_quantized_probabilities(codec, digits):
  """Stack growth = sum of -log2 P(pixel) + prior bits - bits got back (-log2 Q(popped bucket)),
  computed in numpy from the integer tables."""
  x = data.binarize(digits[1][:24])[..., None]
  settings = codec.settings
  tables = codec.tables()
  result = bitsback.encode(tables, x, settings)
  posterior = tables.posterior(x, 64).astype(np.float64)
  q = np.take_along_axis(posterior, result.latents[..., None], -1)[..., 0] / posterior.sum(-1)
  p1 = tables.pixels(result.latents, 64).astype(np.float64) / (1 << settings.precision.pixel_bits)
  flat = x.reshape(len(x), -1)
  pixel_bits = -np.log2(np.where(flat == 1, p1, 1 - p1)).sum()
  expected = pixel_bits + result.latents.size * settings.precision.latent_bits + np.log2(q).sum()
  grown = 32 * (result.omitted + len(result.words) - settings.seed_words)
  assert abs(grown - expected) < 0.002 * pixel_bits + 64, (grown, expected)


def test_lossy_decode_is_the_decoders_most_probable_image(codec, digits):
  x = data.binarize(digits[1][:10])[..., None]
  step = 0.3
  raw, _, decoded, _ = codec.encode_lossy(x, step)
  again, _ = codec.decode(raw, "mem")
  mean, logvar = (np.asarray(a, np.float64) for a in codec.model.encode(x.astype(np.float32)))
  # the step is in units of each dimension's mean posterior std, which the header holds as float16
  steps = float(np.float32(step)) * np.exp(0.5 * logvar).mean(0).astype(np.float16).astype(np.float64)
  z = (np.rint(mean / steps) * steps).astype(np.float32)
  expected = np.asarray(codec.model.decode(z)).reshape(len(x), -1) > 0
  np.testing.assert_array_equal(again.reshape(len(x), -1), expected)
  np.testing.assert_array_equal(decoded, expected)


def test_lossy_symbols_round_trip_and_cost_their_entropy():
  rng = np.random.default_rng(0)
  q = np.stack([np.rint(rng.normal(0, 3, 500)), np.zeros(500), rng.integers(-1, 2, 500)], 1).astype(np.int64)
  prior = lossy.FactorizedPrior.fit(q)
  words = lossy.encode_symbols(q, prior)
  np.testing.assert_array_equal(lossy.decode_symbols(words, prior, len(q)), q)
  bits = 0.0
  for d in prior.coded_dims():
    table = prior.table(d).astype(np.float64)
    bits -= np.log2(table[q[:, d] - prior.lo[d]] / table.sum()).sum()
  assert prior.coded_dims() == [0, 2]
  assert abs(32 * len(words) - bits) <= 64


def test_schedule_covers_every_image_in_batches_the_chain_can_afford():
  settings = bitsback.Settings(max_batch=16, ramp=4)
  batches = bitsback.schedule(300, settings)
  done = 0
  for start, size, shape in batches:
    assert start == done
    assert size <= max(1, done // 4) and size <= shape <= 16
    assert size & (size - 1) == 0 or start + size == 300  # powers of two, but the last
    done += size
  assert done == 300 and max(size for _, size, _ in batches) == 16


def test_pretrained_export_builds_the_same_model(workdirs, tmp_path):
  out = pretrained.export(workdirs[0], str(tmp_path / "shipped"), "python -m experiments.mnist_vae")
  config, model, _ = pretrained.load_folder(out)
  c0, _, m0 = run.restore_model(workdirs[0])
  assert files.Codec(model, config).fingerprint == files.Codec(m0, c0).fingerprint


@pytest.mark.parametrize("name", ["cvae_mnist", "cvae_fashion_mnist", "cvae_context_mnist",
                                  "cvae_context_fashion_mnist"])
def test_the_shipped_models_load(name):
  assert name in pretrained.available()
  config, model, rows = pretrained.load(name)
  assert model.latent_dim == config.latent_dim == 50
  assert rows[-1]["epoch"] == config.epochs and config.binarize == "threshold"


def test_jbig_mosaic_is_the_images_row_major(digits):
  x = data.binarize(digits[1][:5])
  canvas = baselines.mosaic(x, per_row=2)
  assert canvas.shape == (3 * 28, 2 * 28)
  np.testing.assert_array_equal(canvas[28:56, 28:56], x[3])
  assert not canvas[56:, 28:].any()
  decoded = iio.imread(baselines.pbm(canvas), extension=".pbm")
  np.testing.assert_array_equal(decoded == 0, canvas == 1)  # PBM: 1 is black


def test_bench_end_to_end_on_tiny_data(codec, workdirs, idx_dir, tmp_path):
  """`bench` on 24 digits with a tiny model: every file decodes exactly, the bound is the
  formula's value computed here in float64 numpy, JBIG is the baseline's own call, and the
  pictures are written."""
  from vae_jax.codec import bench  # pylint: disable=import-outside-toplevel
  config, _, model = run.restore_model(workdirs[0])
  spec = f"idx:{idx_dir}"
  out = tmp_path / "bench"
  out.mkdir()
  report = bench.run("tiny", config, model, [], [spec], str(out), None, steps=(1.0, 4.0),
                     pca_steps=(0.5, 2.0), command="test", ks=(1, 2), k_count=6)
  entry = report["datasets"][0]
  test = images.load(spec, "test")
  assert entry["images"] == len(test) == 24
  for part in ("bits_back", "context_alone", "vae_alone"):
    assert entry[part]["exact"], part
  assert all(r["exact"] for r in entry["rate_against_k"])
  assert all(r["exact"] and r["context_alone"]["exact"] for r in entry["adversarial"].values())
  # The bound: analytic KL + BCE at z = mean + sigma * eps, eps the bench's own draw, in numpy.
  x = test.astype(np.float32)
  mean, logvar = (np.asarray(a, np.float64) for a in model.encode(x))
  eps = np.asarray(jax.random.normal(jax.random.fold_in(jax.random.key(0), 0), mean.shape))
  z = mean + np.exp(0.5 * logvar) * eps
  logits = np.asarray(model.decode(z.astype(np.float32)), np.float64).reshape(len(x), -1)
  flat = x.reshape(len(x), -1).astype(np.float64)
  rec = np.sum(np.logaddexp(0.0, logits) - flat * logits, axis=1)
  kl = 0.5 * np.sum(np.exp(logvar) + mean ** 2 - 1.0 - logvar, axis=1)
  assert entry["bound"]["computed_nats"] == pytest.approx(float(np.mean(rec + kl)), rel=1e-5)
  jbig = next(v for n, v in entry["baselines"].items() if n.startswith("JBIG"))
  want = baselines.jbig_bytes(test)
  assert (jbig is None and want is None) or jbig["bytes"] == want
  # PCA: a coarser step costs fewer bytes and makes more pixel errors.
  fine, coarse = entry["pca"]
  assert coarse["bytes"] <= fine["bytes"] and coarse["pixel_error_rate"] >= fine["pixel_error_rate"]
  for name in ("report.json", "report.md", "rd.png", "rate_k.png"):
    assert (out / name).stat().st_size > 0, name
  assert "![rate against k](rate_k.png)" in (out / "report.md").read_text()


def test_pretrained_is_the_context_model_lossless_the_tutorial_lossy(tmp_path, idx_dir, env):
  """`--model pretrained`: lossless files come from the shipped context model, lossy ones from
  the tutorial model, and `decode --model pretrained` finds whichever wrote the file."""
  want = {}
  for name in ("cvae_context_mnist", "cvae_mnist"):
    config, model, _ = pretrained.load(name)
    want[name] = files.Codec(model, config).fingerprint
  for flags, name in (([], "cvae_context_mnist"), (["--lossy"], "cvae_mnist")):
    out = tmp_path / f"{name}.vjz"
    r = compress("encode", "--model", "pretrained", "--data", f"idx:{idx_dir}", "--count", "20",
                 "--out", str(out), "--quiet", *flags, env=env)
    assert r.returncode == 0, r.stderr
    assert container.parse(out.read_bytes(), "f").fingerprint == want[name]
    r = compress("decode", str(out), "--model", "pretrained", "--out", str(tmp_path / name),
                 "--quiet", env=env)
    assert r.returncode == 0, r.stderr
    if not flags:  # lossless: the test digits, thresholded, exactly
      np.testing.assert_array_equal(read_decoded(tmp_path / name) // 255,
                                    images.load(f"idx:{idx_dir}", "test", 20))
