"""Importance-sampled bits-back (BB-IS): exact round trips across processes, the stack's growth is
the IWAE-style net cost of every image, and the rate falls with the number of samples."""

import os
import subprocess
import sys

import numpy as np
import pytest

from vae_jax import data, pretrained
from vae_jax.codec import bitsback, context, importance
from vae_jax.codec.files import Codec
from vae_jax.training import run

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VAE_ONLY = frozenset({context.VAE})


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
  from conftest import write_workdir  # pylint: disable=import-outside-toplevel
  from tests.test_compress import TINY  # pylint: disable=import-outside-toplevel
  return write_workdir(str(tmp_path_factory.mktemp("bbis") / "model"), TINY)


@pytest.fixture(scope="module")
def codec(workdir):
  config, _, model = run.restore_model(workdir)
  return Codec(model, config)


def test_importance_weights_are_proportional_to_p_over_q():
  """The fixed-point weights against float64 p(x|z) / q(z|x) from the same integer tables."""
  rng = np.random.default_rng(0)
  posterior = rng.integers(1, 1 << 20, (2, 3, 8))
  z = rng.integers(0, 8, (2, 5, 3))
  pixels = rng.integers(1, 1 << 16, (10, 6))
  x = rng.integers(0, 2, (2, 6))
  w = importance.categorical_weights(importance.log_weights(posterior, z, pixels, x, 16))
  q = np.take_along_axis(posterior[:, None], z[..., None], -1)[..., 0].prod(-1).astype(np.float64)
  p1 = pixels.reshape(2, 5, 6) / 65536.0
  p = np.where(x[:, None] == 1, p1, 1 - p1).prod(-1)
  expected = p / q
  expected /= expected.sum(-1, keepdims=True)
  np.testing.assert_allclose(w / w.sum(-1, keepdims=True), expected, rtol=1e-4, atol=2e-9)


def test_stack_growth_is_the_sum_of_the_images_net_costs(codec, digits):
  x = data.binarize(digits[1][:12])[..., None]
  settings = bitsback.Settings(samples=4)
  import constriction  # pylint: disable=import-outside-toplevel
  seed = bitsback.seed_words(settings.seed_words)
  coder, kept, bits, _ = bitsback.encode_chain(codec.tables(), x, settings,
                                               constriction.stream.stack.AnsCoder(seed))
  assert len(kept) == len(x)
  grown = coder.num_bits() - 32 * len(seed)
  assert abs(grown - bits.sum()) < 0.002 * bits.sum() + 64, (grown, bits.sum())
  np.testing.assert_array_equal(bitsback.decode_chain(codec.tables(), coder, len(x), settings), x)
  assert np.array_equal(coder.get_compressed(), seed)


def test_rate_falls_with_the_number_of_samples(workdir, digits):
  """A tiny model whose q(z|x) is far narrower than its posterior (p(x|z) barely depends on z, so
  the posterior is about the prior): the -ELBO pays about KL(q || p), the IWAE-k bound up to
  log2 k bits less. The tables' IWAE-k value (independent latent draws) falls with k, and so does
  what the chain charges from k = 1 to 16 (its latents are drawn by the stack's bits, so one file
  is one noisy draw)."""
  config, _, model = run.restore_model(workdir)
  params = {k: v.copy() for k, v in pretrained.params_dict(model).items()}
  latent = config.latent_dim
  params["enc_dense/kernel"][:, latent:] = 0.0
  params["enc_dense/bias"][latent:] = -6.0          # std e^-3 in every latent dimension
  codec = Codec(pretrained.build(config, params), config)
  x = data.binarize(digits[1][:24])[..., None]
  iwae, charged = {}, {}
  for k in (1, 4, 16):
    settings = bitsback.Settings(samples=k)
    iwae[k] = np.mean([bitsback.estimate_bits(codec.tables(), x, settings, seed).mean()
                       for seed in range(4)])
    raw, report = codec.encode_lossless(x, methods=VAE_ONLY, samples=k)
    np.testing.assert_array_equal(codec.decode(raw, "mem")[0], x)
    charged[k] = report.extra["image_bits"].mean()
  assert iwae[1] - iwae[4] > 0.5 and iwae[4] - iwae[16] > 0.5, iwae
  assert charged[1] - charged[16] > 1.0, charged


_ENCODE = """
import sys, numpy as np
from vae_jax import data, pretrained
from vae_jax.codec import context, files
from vae_jax.training import run
config, _, model = run.restore_model(sys.argv[1])
x = data.binarize(data.load_mnist_5k().test_images[:10])
raw, _ = files.Codec(model, config).encode_lossless(x, methods=frozenset({context.VAE}), samples=4)
open(sys.argv[2], "wb").write(raw)
np.save(sys.argv[3], x)
"""
_DECODE = """
import sys, numpy as np
from vae_jax.codec import files
from vae_jax.training import run
config, _, model = run.restore_model(sys.argv[1])
images, _ = files.Codec(model, config).decode(open(sys.argv[2], "rb").read(), sys.argv[2])
np.save(sys.argv[3], images)
"""


def round_trip_in_two_processes(workdir, tmp_path, env) -> None:
  """10 test digits, VAE only, k = 4: encoded by one process, decoded by another, every pixel
  back. env: the decoder's process reads the programs the encoder's compiled from one cache."""
  run_py = lambda code, *a: subprocess.run([sys.executable, "-c", code, *a], cwd=ROOT, env=env,
                                           capture_output=True, text=True, timeout=300)
  enc = run_py(_ENCODE, workdir, str(tmp_path / "f.vjz"), str(tmp_path / "x.npy"))
  assert enc.returncode == 0, enc.stderr
  dec = run_py(_DECODE, workdir, str(tmp_path / "f.vjz"), str(tmp_path / "y.npy"))
  assert dec.returncode == 0, dec.stderr
  np.testing.assert_array_equal(np.load(tmp_path / "y.npy"), np.load(tmp_path / "x.npy"))


def test_bb_is_round_trip_in_two_processes(workdir, tmp_path, env):
  round_trip_in_two_processes(workdir, tmp_path, env)
  assert bitsback.Settings.unpack(__import__("vae_jax.codec.container", fromlist=["parse"])
                                  .parse((tmp_path / "f.vjz").read_bytes(), "f").settings).samples == 4
