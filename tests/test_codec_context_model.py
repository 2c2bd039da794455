"""The context model (`--model cvae_context`): its contexts, likelihood and generation against
independent computations, and exact codec round trips through the CLI in separate processes."""

import dataclasses
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from vae_jax import data
from vae_jax.codec import bitsback, context
from vae_jax.codec.files import Codec
from vae_jax.codec.tables import bucket_centres
from vae_jax.config import Config
from vae_jax.nn import cvae_context, losses, objectives
from vae_jax.training import run, train
from vae_jax.training.checkpoints import Checkpoints

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = Config(model="cvae_context", latent_dim=4, batch_size=8, epochs=1)


def _brute_contexts(x01: np.ndarray) -> np.ndarray:
  """Each pixel's template index by plain loops over JBIG2's template."""
  b, h, w = x01.shape
  out = np.zeros((b, h * w), np.int64)
  for n in range(b):
    for r in range(h):
      for c in range(w):
        for t, (dr, dc) in enumerate(context.TEMPLATE):
          rr, cc = r + dr, c + dc
          if 0 <= rr < h and 0 <= cc < w and x01[n, rr, cc]:
            out[n, r * w + c] |= 1 << t
  return out


def _model(seed: int = 0):
  graphdef, state = train.init_state(TINY)
  model = nnx.merge(graphdef, state.params)
  rng = np.random.default_rng(seed)
  model.context_table[...] = jnp.asarray(rng.normal(0, 3, context.CONTEXTS).astype(np.float32))
  return model


def test_contexts_are_the_templates_bits():
  x = (np.random.default_rng(1).random((2, 28, 28)) < 0.4).astype(np.uint8)
  want = _brute_contexts(x)
  np.testing.assert_array_equal(np.asarray(cvae_context.contexts(jnp.asarray(x[..., None]))), want)
  np.testing.assert_array_equal(context.contexts(x.astype(np.int64)), want)


def test_elbo_adds_the_table_at_each_pixels_context(digits):
  """The objective's reconstruction term against numpy: sigmoid BCE of decoder(z) + table[ctx]."""
  model = _model()
  x = data.binarize(digits[1][:3])[..., None].astype(np.float32)
  key = jax.random.split(jax.random.key(0), 3)
  ctx = objectives.Context(config=dataclasses.replace(TINY, kl="analytic"), kl_weight=1.0,
                           x_input=x, train=False)
  out = objectives.elbo(model, x, key, ctx)
  mean, logvar = (np.asarray(a) for a in model.encode(x))
  eps = np.asarray(objectives.per_example_normal(key, (4,)))
  z = mean + np.exp(0.5 * logvar) * eps
  logits = (np.asarray(model.decode_logits(jnp.asarray(z))).reshape(3, -1).astype(np.float64)
            + np.asarray(model.context_table[...], np.float64)[_brute_contexts(x[..., 0] > 0.5)])
  t = x.reshape(3, -1)
  log_p = -(np.maximum(logits, 0) - logits * t + np.log1p(np.exp(-np.abs(logits))))
  np.testing.assert_allclose(np.asarray(out["rec"]), -log_p.sum(-1), rtol=2e-5)
  assert not np.allclose(np.asarray(out["rec"]), -np.asarray(
      losses.bernoulli_log_likelihood(model.decode_logits(jnp.asarray(z)), x)), rtol=1e-3)


def test_generation_is_the_greedy_raster_path():
  """decode(z) without x: each pixel the sign of its logit given the pixels before it, and the
  logits those of teacher forcing on the image it made."""
  model = _model()
  z = jnp.asarray(np.random.default_rng(2).normal(size=(3, 4)).astype(np.float32))
  greedy = np.asarray(model.decode(z)).reshape(3, -1)
  image = (greedy > 0).astype(np.uint8)
  forced = np.asarray(model.decode(z, x=jnp.asarray(image.reshape(3, 28, 28, 1), jnp.float32)))
  np.testing.assert_allclose(greedy, forced.reshape(3, -1), atol=1e-5)
  vae = np.asarray(model.decode_logits(z)).reshape(3, -1)
  table = np.asarray(model.context_table[...])
  np.testing.assert_allclose(greedy, vae + table[_brute_contexts(image.reshape(3, 28, 28))],
                             atol=1e-5)


def test_codec_tables_follow_the_float_model(digits):
  """The integer tables' P(x = 1 | z, context) against the float model's at the same latents."""
  model = _model()
  codec = Codec(model, TINY)
  tables = codec.tables()
  x = data.binarize(digits[1][:4])[..., None]
  z = np.random.default_rng(3).integers(0, 256, (4, 4)).astype(np.int32)
  p_int = tables.pixels(z, 4, x) / 65536.0
  centres = jnp.asarray(bucket_centres(8)[z])
  p_float = np.asarray(model.decode(centres, apply_sigmoid=True, x=jnp.asarray(x, jnp.float32)))
  np.testing.assert_allclose(p_int, p_float.reshape(4, -1), atol=0.02)


@pytest.mark.parametrize("samples", [1, 4])
def test_chain_round_trip_and_growth(digits, samples):
  model = _model()
  tables = Codec(model, TINY).tables()
  x = data.binarize(digits[1][:10])[..., None]
  settings = bitsback.Settings(samples=samples)
  import constriction  # pylint: disable=import-outside-toplevel
  seed = bitsback.seed_words(settings.seed_words)
  coder, kept, bits, _ = bitsback.encode_chain(tables, x, settings,
                                               constriction.stream.stack.AnsCoder(seed))
  assert len(kept) == len(x)
  grown = coder.num_bits() - 32 * len(seed)
  assert abs(grown - bits.sum()) < 0.002 * bits.sum() + 64, (grown, bits.sum())
  np.testing.assert_array_equal(bitsback.decode_chain(tables, coder, len(x), settings), x)
  assert np.array_equal(coder.get_compressed(), seed)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
  directory = str(tmp_path_factory.mktemp("context_model") / "model")
  os.makedirs(directory)
  with open(os.path.join(directory, run.CONFIG_FILE), "w") as f:
    json.dump(dataclasses.asdict(TINY), f)
  _, state = train.init_state(TINY)
  state = state._replace(params=nnx.state(_model(), nnx.Param))
  checkpoints = Checkpoints(os.path.join(directory, "checkpoints"))
  checkpoints.save(1, state)
  checkpoints.close()
  return directory


def test_round_trip_in_two_processes(workdir, tmp_path, env):
  """BB-IS (k = 4) with the VAE forced, encoded in one process and decoded in another."""
  from test_codec_bbis import round_trip_in_two_processes  # pylint: disable=import-outside-toplevel
  round_trip_in_two_processes(workdir, tmp_path, env)


def test_lossy_is_refused_with_one_line(workdir, idx_dir, tmp_path):
  r = subprocess.run([sys.executable, "-m", "experiments.compress", "encode", "--model", workdir,
                      "--data", f"idx:{idx_dir}", "--count", "4", "--lossy", "--out",
                      str(tmp_path / "l.vjz"), "--quiet"], cwd=ROOT, capture_output=True,
                     text=True, timeout=300)
  assert r.returncode == 2 and r.stderr.strip().splitlines() == [
      "error: lossy coding takes a model without a context term (cvae); this one codes "
      "losslessly only"], r.stderr
  assert not os.path.exists(tmp_path / "l.vjz")


def test_shipped_context_model_codes_digits_exactly_and_shorter(digits):
  """On 50 real digits (not MNIST's test set) the shipped context model's file decodes exactly
  and is shorter than the tutorial model's."""
  from vae_jax import pretrained  # pylint: disable=import-outside-toplevel
  x = data.binarize(digits[1][:50])[..., None]
  sizes = {}
  for name in ("cvae_mnist", "cvae_context_mnist"):
    config, model, _ = pretrained.load(name)
    codec = Codec(model, config)
    raw, _ = codec.encode_lossless(x)
    back, _ = codec.decode(raw, name)
    np.testing.assert_array_equal(back, x)
    sizes[name] = len(raw)
  assert sizes["cvae_context_mnist"] < 0.95 * sizes["cvae_mnist"], sizes


def test_bench_codes_exactly_and_skips_the_lossy_curve(workdir, idx_dir, tmp_path):
  from vae_jax.codec import bench  # pylint: disable=import-outside-toplevel
  config, _, model = run.restore_model(workdir)
  report = bench.run("tiny context", config, model, [], [f"idx:{idx_dir}"], str(tmp_path), None,
                     steps=(1.0,), pca_steps=(1.0,), command="test", ks=(1, 2), k_count=4)
  entry = report["datasets"][0]
  for part in ("bits_back", "context_alone", "vae_alone"):
    assert entry[part]["exact"], part
  assert all(r["exact"] for r in entry["rate_against_k"])
  assert "lossy" not in entry and "no lossy mode" in entry["lossy_skipped"]
  assert "no lossy mode" in (tmp_path / "report.md").read_text()
  assert not (tmp_path / "rd.png").exists() and (tmp_path / "rate_k.png").stat().st_size > 0


def test_integer_probabilities_follow_the_sigmoid():
  """P(x = 1) in units of 2^-16 at every integer logit (and beyond the clip) against float64
  expit: within one unit (the table's two roundings), clipped to 1 .. 2^16 - 1."""
  from scipy.special import expit  # pylint: disable=import-outside-toplevel
  from vae_jax.codec import integer  # pylint: disable=import-outside-toplevel
  top = integer.LOGIT_MAX << integer.LOGIT_BITS
  logits = np.arange(-top - 300, top + 301 + 2)  # 9,819 = 3 x 3,273
  got = integer.probabilities_np(logits.reshape(3, -1), 16).reshape(-1)
  clipped = np.clip(logits, -top, top) / (1 << integer.LOGIT_BITS)
  want = np.clip(np.rint(expit(clipped) * 65536), 1, 65535)
  assert np.abs(got - want).max() <= 1
  assert np.mean(got == want) > 0.99
  assert got[0] == 1 and got[-1] == 65535 and np.all(np.diff(got) >= 0)
