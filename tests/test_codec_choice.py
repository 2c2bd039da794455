"""The lossless codec's per-image choice: the context coder against a pixel-by-pixel reference,
the bound (no image above its raw bits plus its flag), other image sizes, hostile headers."""

import math
import os
import struct
import subprocess
import sys
import zlib

import imageio.v3 as iio
import numpy as np
import pytest

from vae_jax import data
from vae_jax.codec import bitsback, choice, container, context, files
from vae_jax.config import Config
from vae_jax.errors import UserError
from vae_jax.training import train

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FLAG_MAX_BITS = 5.0 + 1e-6  # each method keeps >= 1/32 of the flag's mass


@pytest.fixture(scope="module")
def codec():
  from flax import nnx  # pylint: disable=import-outside-toplevel
  config = Config(latent_dim=4, batch_size=8, epochs=1)
  graphdef, state = train.init_state(config)
  return files.Codec(nnx.merge(graphdef, state.params), config)


def _reference_k(images01, start_counts):
  """KT probabilities pixel by pixel, each image from start_counts, with plain Python neighbours."""
  b, h, w = images01.shape
  out = np.zeros((b, h * w), np.int64)
  for i in range(b):
    n = start_counts.copy()
    for r in range(h):
      for c in range(w):
        ctx = 0
        for bit, (dr, dc) in enumerate(context.TEMPLATE):
          rr, cc = r + dr, c + dc
          if 0 <= rr < h and 0 <= cc < w and images01[i, rr, cc]:
            ctx |= 1 << bit
        n0, n1 = n[ctx]
        p = (n1 + 0.5) / (n0 + n1 + 1)  # KT, then the coder's fixed point and floor
        k = min(max(math.floor(p * 65536), 64), 65536 - 64)
        out[i, r * w + c] = k
        n[ctx, images01[i, r, c]] += 1
  return out


def test_context_coder_is_kt_on_the_jbig_template():
  rng = np.random.default_rng(0)
  x = (rng.random((3, 7, 9)) < 0.4).astype(np.uint8)
  counts = context.Counts()
  counts.n[:] = rng.integers(0, 6, counts.n.shape)
  k, _ = counts.code(x)
  np.testing.assert_array_equal(k, _reference_k(x, counts.n))


def test_context_decode_inverts_encode_and_counts_agree():
  import constriction  # pylint: disable=import-outside-toplevel
  rng = np.random.default_rng(1)
  x = (rng.random((4, 6, 5)) < 0.3).astype(np.uint8)
  enc, dec = context.Counts(), context.Counts()
  k, ctx = enc.code(x)
  enc.add(ctx, x)
  coder = constriction.stream.stack.AnsCoder()
  model = constriction.stream.model.Bernoulli(perfect=False)
  coder.encode_reverse(x.reshape(4, -1).T.reshape(-1).astype(np.int32), model,
                       context.probabilities(k.T.reshape(-1)))
  decoded = dec.decode(lambda p: coder.decode(model, p), 4, 6, 5)
  np.testing.assert_array_equal(decoded, x)
  dec.add(context.contexts(decoded), decoded)
  np.testing.assert_array_equal(dec.n, enc.n)
  assert coder.is_empty()


def _hard(digits01):
  rng = np.random.default_rng(0)
  checker = (np.indices((28, 28)).sum(0) % 2).astype(np.uint8)
  return np.concatenate([np.ones((3, 28, 28), np.uint8), rng.integers(0, 2, (6, 28, 28), dtype=np.uint8),
                         1 - digits01[:3], digits01[3:9], np.stack([checker] * 2)])[..., None]


def test_no_image_costs_more_than_its_raw_bits_plus_its_flag(codec, digits):
  """All-white, noise, inverted and real digits, checkerboards, mixed in one file: each image's
  cost (its method's bits + its flag) <= 784 + 5 bits, and the file is their sum plus the header
  and the coder's last words; the choice is the cheapest of the three (numpy, from the tables)."""
  x = _hard(data.binarize(digits[1][:9]))
  raw, report = codec.encode_lossless(x)
  decoded, _ = codec.decode(raw, "mem")
  np.testing.assert_array_equal(decoded, x)
  image_bits = report.extra["image_bits"]
  assert image_bits.max() <= 784 + FLAG_MAX_BITS
  assert report.extra["images_per_method"]["raw"] >= 1  # the noise
  payload_bits = 8 * report.extra["payload_bytes"]
  assert payload_bits <= image_bits.sum() + 8 * choice._HEAD.size + 64 + 32  # ANS' last words
  assert 8 * len(raw) <= len(x) * (784 + FLAG_MAX_BITS) + 8 * report.extra["header_bytes"] + 96


def test_the_choice_is_never_worse_than_the_context_coder_alone(codec, digits):
  x = _hard(data.binarize(digits[1][:9]))
  mixed, _ = codec.encode_lossless(x)
  alone, _ = codec.encode_lossless(x, methods=frozenset({context.CONTEXT}))
  decoded, _ = codec.decode(alone, "mem")
  np.testing.assert_array_equal(decoded, x)
  assert len(mixed) <= len(alone)


def test_other_sizes_round_trip_in_two_processes(tmp_path, codec):
  """32x32 PNGs through the CLI (encode and decode in separate processes); 64x64 in memory."""
  from experiments import compress  # pylint: disable=import-outside-toplevel,unused-import
  from conftest import write_workdir  # pylint: disable=import-outside-toplevel
  from tests.test_compress import TINY  # pylint: disable=import-outside-toplevel
  workdir = write_workdir(str(tmp_path / "model"), TINY)
  rng = np.random.default_rng(2)
  glyphs = np.zeros((5, 32, 32), np.uint8)
  for i, g in enumerate(glyphs):
    g[4 + i:20 + i, 8:12] = 1
    g[rng.integers(0, 32, 10), rng.integers(0, 32, 10)] = 1
  (tmp_path / "png").mkdir()
  for i, g in enumerate(glyphs):
    iio.imwrite(tmp_path / "png" / f"{i}.png", g * 255)
  run = lambda *a: subprocess.run([sys.executable, "-m", "experiments.compress", *a], cwd=ROOT,
                                  capture_output=True, text=True, timeout=300)
  enc = run("encode", "--model", workdir, "--data", f"png:{tmp_path / 'png'}", "--out",
            str(tmp_path / "g.vjz"), "--quiet")
  assert enc.returncode == 0, enc.stderr
  dec = run("decode", str(tmp_path / "g.vjz"), "--model", workdir, "--out", str(tmp_path / "out"),
            "--quiet")
  assert dec.returncode == 0, dec.stderr
  from vae_jax.codec import images  # pylint: disable=import-outside-toplevel
  np.testing.assert_array_equal(images.load(f"idx:{tmp_path / 'out' / images.IDX_NAME}")[..., 0],
                                glyphs)
  big = (rng.random((2, 64, 64, 1)) < 0.1).astype(np.uint8)
  raw, report = codec.encode_lossless(big)
  np.testing.assert_array_equal(codec.decode(raw, "mem")[0], big)
  assert report.extra["images_per_method"]["VAE bits-back"] == 0


def _hostile(count=1 << 31, hw=(28, 28), head=None, settings=bitsback.Settings(), words=4):
  head = head or struct.pack("<IIIII", settings.seed_words, 0, count, 0, words)
  payload = head + bytes(4 * words)
  return container.Container(container.LOSSLESS, bytes(32), count, (*hw, 1), 0, settings.pack(),
                             payload).to_bytes()


def test_hostile_headers_are_refused_before_allocating(codec):
  """Headers with valid CRCs asking for billions of images, huge images, a 16 GiB seed or huge
  batches are refused by the structural checks (no model call, no image array)."""
  cases = {"billions": _hostile(), "huge images": _hostile(count=1, hw=(4096, 4096)),
           "many raw": _hostile(head=struct.pack("<IIIII", 1 << 16, 0, 0, 1000, 4), count=1000)}
  for name, raw in cases.items():
    box = container.parse(raw, name)
    with pytest.raises(UserError, match="more than"):
      choice.parse(box.payload, box.count, box.image_shape[:2], bitsback.Settings(), name)
  fmt = bitsback.Settings._FORMAT  # latent, posterior, pixel bits, max_batch, ramp, seed, samples
  for field, (index, value) in {"max_batch": (3, 65535), "seed_words": (5, (1 << 32) - 1),
                                "samples": (6, 65535)}.items():
    raw = bytearray(bitsback.Settings().pack())
    struct.pack_into("<" + fmt[1 + index], raw, struct.calcsize(fmt[:1 + index]), value)
    with pytest.raises(UserError, match="unsupported"):
      bitsback.Settings.unpack(bytes(raw))
  with pytest.raises(UserError, match="more than"):
    codec.decode(_refingerprint(cases["billions"], codec.fingerprint), "f")


def _refingerprint(raw, fingerprint):
  body = raw[:11] + fingerprint + raw[43:-4]
  return body + struct.pack("<I", zlib.crc32(body))


def test_hostile_header_exits_2_in_one_line(tmp_path):
  from conftest import write_workdir  # pylint: disable=import-outside-toplevel
  from tests.test_compress import TINY  # pylint: disable=import-outside-toplevel
  (tmp_path / "bad.vjz").write_bytes(_hostile())
  workdir = write_workdir(str(tmp_path / "model"), TINY)
  out = subprocess.run([sys.executable, "-m", "experiments.compress", "decode",
                        str(tmp_path / "bad.vjz"), "--model", workdir, "--out", str(tmp_path / "o")],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
  lines = out.stderr.strip().splitlines()
  assert out.returncode == 2 and len(lines) == 1 and "more than" in lines[0], out.stderr
  assert not os.path.exists(tmp_path / "o")
