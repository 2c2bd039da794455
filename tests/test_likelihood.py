"""vae_jax.research.likelihood against log p(x) by quadrature, the ELBO in closed form, and the evaluator CLI."""

import itertools
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from vae_jax.research import likelihood
from experiments import evaluate

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# A 4-pixel model with one latent: p(x|z) = prod_d Bernoulli(sigmoid(z W_d + v_d)), p(z) = N(0, 1);
# q(z|x) = N(x.A + b, exp(x.C + e)): wider than the true posterior (variances 0.55..1.1 against
# 0.4..0.5) and shifted from it, so the importance weights have finite variance but k matters.
W = np.array([[2.0, -1.5, 1.0, 0.5]])
V = np.array([0.3, -0.2, 0.1, 0.05])  # no decoded logit of the patterns is near 0
A = np.array([[0.8], [-0.6], [0.4], [0.2]])
B = np.array([0.2])
C = np.array([[-0.3], [-0.2], [-0.1], [-0.1]])
E = np.array([0.1])
PATTERNS = np.array(list(itertools.product([0, 1], repeat=4)), np.float32)  # all 16 images
GRID = np.linspace(-10.0, 10.0, 20_001)


class TinyVAE(nnx.Module):
  """Linear Gaussian encoder and linear-logit Bernoulli decoder over flat images."""

  def __init__(self, a, b, c, e, w, v):
    self.a, self.c, self.w = (nnx.Param(jnp.asarray(p, jnp.float32)) for p in (a, c, w))
    # Biases as (1, n) rows: the tests raise on implicit rank promotion.
    self.b, self.e, self.v = (nnx.Param(jnp.asarray(p, jnp.float32).reshape(1, -1))
                              for p in (b, e, v))
    self.latent_dim = a.shape[1]

  def encode(self, x):
    x = x.reshape(x.shape[0], -1)
    return x @ self.a[...] + self.b[...], x @ self.c[...] + self.e[...]

  def decode(self, z):
    return z @ self.w[...] + self.v[...]


class TinyAE(TinyVAE):
  """The same maps as a deterministic autoencoder: encode returns (z, None)."""
  stochastic = False

  def encode(self, x):
    return super().encode(x)[0], None


def tiny_vae():
  return TinyVAE(A, B, C, E, W, V)


def _log_px_given_z_grid(x):
  logits = GRID[:, None] * W + V
  return np.sum(x * logits - np.logaddexp(0.0, logits), axis=1)


def exact_log_px(x):
  """log of the integral of p(x|z) N(z; 0, 1) over the grid (trapezoid ends are ~exp(-50))."""
  log_f = _log_px_given_z_grid(x) - 0.5 * GRID**2 - 0.5 * np.log(2 * np.pi)
  top = log_f.max()
  return top + np.log(np.sum(np.exp(log_f - top)) * (GRID[1] - GRID[0]))


def exact_elbo(x):
  """E_q[log p(x|z)] by quadrature minus KL(q || N(0, 1)) in closed form."""
  mean, logvar = float(x @ A[:, 0] + B[0]), float(x @ C[:, 0] + E[0])
  q = np.exp(-0.5 * (GRID - mean) ** 2 / np.exp(logvar)) / np.sqrt(2 * np.pi * np.exp(logvar))
  expected = np.sum(q * _log_px_given_z_grid(x)) * (GRID[1] - GRID[0])
  return expected - 0.5 * (np.exp(logvar) + mean**2 - 1.0 - logvar)


def vae_terms(model, x, index, key, k, chunk):
  graphdef, state = nnx.split(model)
  out = likelihood.evaluate_batch(graphdef, state, jnp.asarray(x), jnp.asarray(index), key,
                                  stochastic=True, k=k, chunk=chunk)
  return jax.tree.map(np.asarray, out)


def test_estimate_converges_to_quadrature():
  model, x = tiny_vae(), jnp.asarray(PATTERNS)
  exact = np.array([exact_log_px(p) for p in PATTERNS])
  errors = {}
  for k in (10, 20_000):
    errors[k] = np.array([np.asarray(likelihood.iwae_log_likelihood(
        model, x, jax.random.key(seed), k, chunk=2000)) - exact for seed in range(3)])
  assert np.abs(errors[20_000]).max() < 0.03
  assert np.abs(errors[20_000]).mean() < 0.3 * np.abs(errors[10]).mean()


def test_one_sample_is_the_elbo_in_expectation():
  # 500 copies of each pattern: different image indices, so independent samples.
  x = np.repeat(PATTERNS, 500, axis=0)
  terms = vae_terms(tiny_vae(), x, np.arange(len(x)), jax.random.key(1), k=1, chunk=1)
  elbo = np.array([exact_elbo(p) for p in PATTERNS])
  for name, estimate in (("log_px", terms["log_px"]), ("-neg_elbo_mc1", -terms["neg_elbo_mc1"])):
    per_pattern = estimate.reshape(16, 500)
    se = per_pattern.std(axis=1, ddof=1) / np.sqrt(500)
    assert np.all(np.abs(per_pattern.mean(axis=1) - elbo) < 4 * se + 1e-4), name
  # rec from the samples + analytic KL estimates -ELBO too (with k=1, the same sample's rec).
  neg_elbo = (terms["rec"] + terms["kl"]).reshape(16, 500)
  se = neg_elbo.std(axis=1, ddof=1) / np.sqrt(500)
  assert np.all(np.abs(neg_elbo.mean(axis=1) + elbo) < 4 * se + 1e-4)


def test_nll_decreases_with_k_on_average():
  x = np.repeat(PATTERNS, 1000, axis=0)
  model, index = tiny_vae(), np.arange(len(x))
  nll = {}
  for k in (1, 10, 100):
    log_w = likelihood.log_importance_weights(model, jnp.asarray(x), jax.random.key(10 + k), k,
                                              chunk=100, index_B=index)
    nll[k] = -np.asarray(likelihood.log_mean_exp(log_w))
  exact_nll = -np.mean([exact_log_px(p) for p in PATTERNS])
  # Paired with the exact value per image, each mean's error is the estimator's own noise.
  excess = {k: nll[k] - np.repeat(-np.array([exact_log_px(p) for p in PATTERNS]), 1000)
            for k in nll}
  se = {k: excess[k].std(ddof=1) / np.sqrt(len(x)) for k in nll}
  assert excess[1].mean() - excess[10].mean() > 4 * np.hypot(se[1], se[10])
  assert excess[10].mean() - excess[100].mean() > 4 * np.hypot(se[10], se[100])
  assert nll[100].mean() >= exact_nll - 4 * se[100]  # a bound in expectation


def test_jensen_same_samples_and_prefixes():
  terms = vae_terms(tiny_vae(), PATTERNS, np.arange(16), jax.random.key(2), k=300, chunk=64)
  assert np.all(-terms["log_px"] <= terms["neg_elbo_same_samples"] + 1e-5)
  assert likelihood.prefix_sizes(300) == (1, 10, 100, 300)
  np.testing.assert_allclose(terms["log_px_by_k"][:, -1], terms["log_px"], rtol=1e-6)
  # A prefix estimate is the estimate of a run with that many samples (the evaluation draws its
  # importance samples from fold_in(key, 0)).
  is_key = jax.random.fold_in(jax.random.key(2), 0)
  ten = likelihood.iwae_log_likelihood(tiny_vae(), jnp.asarray(PATTERNS), is_key, 10, chunk=4)
  np.testing.assert_allclose(np.asarray(ten), terms["log_px_by_k"][:, 1], rtol=1e-5, atol=1e-5)


def test_chunked_and_unchunked_agree():
  model, x, key = tiny_vae(), jnp.asarray(PATTERNS), jax.random.key(3)
  whole = np.asarray(likelihood.log_importance_weights(model, x, key, 37, chunk=37))
  for chunk in (5, 1):
    np.testing.assert_allclose(
        np.asarray(likelihood.log_importance_weights(model, x, key, 37, chunk=chunk)), whole,
        rtol=1e-6, atol=1e-6)
  # An image's samples depend on its index, not on the rest of the batch.
  part = likelihood.log_importance_weights(model, x[jnp.array([3, 7])], key, 37, chunk=8,
                                           index_B=np.array([3, 7]))
  np.testing.assert_allclose(np.asarray(part), whole[[3, 7]], rtol=1e-6, atol=1e-6)
  # test_evaluate_cli compares chunks and batches with the CVAE's decoder.


def test_active_units():
  rng = np.random.default_rng(0)
  means = np.stack([rng.choice([-1.0, 1.0], 200),         # variance ~1: active
                    np.full(200, 0.7),                      # constant: inactive
                    rng.choice([-0.05, 0.05], 200),         # variance 0.0025: inactive
                    rng.normal(0.0, 0.2, 200)], axis=1)     # variance ~0.04: active
  assert likelihood.active_units(means) == 2
  # Through the evaluation: latent 3, where only the first dimension's mean depends on x.
  a = np.zeros((4, 3))
  a[:, 0] = [1.0, -1.0, 0.5, 0.5]
  a[:, 2] = [0.01, 0.0, 0.0, 0.0]
  model = TinyVAE(a, np.array([0.0, 2.0, 0.0]), np.zeros((4, 3)), np.zeros(3),
                  np.ones((3, 4)), np.zeros(4))
  terms = vae_terms(model, PATTERNS, np.arange(16), jax.random.key(4), k=4, chunk=4)
  summary = likelihood.summarize(terms, pixels=4, k=4)
  assert summary["active_units"] == 1 and summary["latent_dim"] == 3


def test_summary_units():
  terms = vae_terms(tiny_vae(), PATTERNS, np.arange(16), jax.random.key(5), k=50, chunk=50)
  s = likelihood.summarize(terms, pixels=4, k=50)
  nll = -terms["log_px"].astype(np.float64)
  assert s["nll"] == pytest.approx(nll.mean())
  assert s["nll_se"] == pytest.approx(np.sqrt(np.sum((nll - nll.mean()) ** 2) / 15 / 16))
  assert s["nll_bits_per_dim"] == pytest.approx(nll.mean() / 4 / np.log(2))
  assert s["neg_elbo"] == pytest.approx(s["rec"] + s["kl"])
  kl = [0.5 * (np.exp(lv) + m**2 - 1 - lv) for m, lv in zip(PATTERNS @ A[:, 0] + B[0],
                                                          PATTERNS @ C[:, 0] + E[0])]
  assert s["kl"] == pytest.approx(np.mean(kl), rel=1e-5)
  decoded = (PATTERNS @ A + B) @ W + V > 0
  assert s["pixel_error_rate"] == pytest.approx(np.mean(decoded != (PATTERNS > 0.5)))


def test_autoencoder_gets_reconstruction_terms_only():
  model = TinyAE(A, B, C, E, W, V)
  assert not likelihood.is_stochastic(model, jnp.asarray(PATTERNS[:1]))
  assert likelihood.is_stochastic(tiny_vae(), jnp.asarray(PATTERNS[:1]))
  graphdef, state = nnx.split(model)
  terms = jax.tree.map(np.asarray, likelihood.evaluate_batch(
      graphdef, state, jnp.asarray(PATTERNS), jnp.arange(16), jax.random.key(0),
      stochastic=False, k=1, chunk=1))
  logits = (PATTERNS @ A + B) @ W + V
  bce = np.sum(np.logaddexp(0.0, logits) - PATTERNS * logits, axis=1)
  s = likelihood.summarize(terms, pixels=4, k=1)
  assert s["note"] == likelihood.NO_LIKELIHOOD and "nll" not in s
  assert s["rec"] == pytest.approx(bce.mean(), rel=1e-5)
  assert s["pixel_error_rate"] == pytest.approx(np.mean((logits > 0) != (PATTERNS > 0.5)))


# ---------------------------------------------------------------- the CLI

def python_m(module, *args):
  return subprocess.run([sys.executable, "-m", module, *args], cwd=ROOT, capture_output=True,
                        text=True, timeout=300)


def _assert_one_line_error(result, *fragments):
  assert result.returncode == 2, result.stderr
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
  for fragment in fragments:
    assert fragment in lines[0], lines[0]


def test_evaluate_cli(idx_dir, tmp_path, capsys):
  workdir = str(tmp_path / "run")
  trained = python_m("experiments.mnist_vae", "--data", f"idx:{idx_dir}", "--train-size", "40",
                     "--batch-size", "8", "--latent-dim", "2", "--epochs", "1",
                     "--steps-per-chunk", "2", "--workdir", workdir)
  assert trained.returncode == 0, trained.stderr
  result = python_m("experiments.evaluate", "--workdir", workdir, "--iw-samples", "20",
                    "--test-size", "16", "--chunk", "8", "--batch", "3")
  assert result.returncode == 0, result.stderr
  assert len(result.stdout.strip().splitlines()) == 1 and "NLL" in result.stdout
  path = os.path.join(workdir, "evaluation.json")
  with open(path) as f:
    report = json.load(f)
  s, r = report["settings"], report["results"]
  assert (s["iw_samples"], s["test_size"], s["seed"], s["checkpoint_epoch"]) == (20, 16, 0, 1)
  assert s["binarize"] == "threshold" and s["data"] == f"idx:{idx_dir}"
  assert r["test_images"] == 16 and r["latent_dim"] == 2
  # Exact image by image (Jensen on the same samples); against the analytic-KL -ELBO the bound
  # holds in expectation, here up to the noise of 20 samples.
  assert r["nll"] <= r["neg_elbo_same_samples"]
  assert r["nll"] <= r["neg_elbo"] + 3 * r["nll_se"]
  assert r["nll_bits_per_dim"] == pytest.approx(r["nll"] / (784 * np.log(2)))
  for key in ("seconds", "images_per_sec", "latent_samples_per_sec", "compile_seconds"):
    assert report["timing"][key] > 0
  assert {"jax", "flax"} <= set(report["versions"])

  before = open(path).read()
  # The rest in this process: same entry point, without another interpreter start.
  def again(*flags):
    try:
      code = evaluate.main(["--workdir", workdir, "--iw-samples", "20", "--test-size", "16",
                            *flags])
    except SystemExit as e:  # argparse's errors
      code = e.code
    return code, capsys.readouterr()

  code, out = again()
  assert code == 2 and out.err.strip() == (f"error: {path} exists (an evaluation with these "
                                           "settings); pass --force to replace it")
  assert open(path).read() == before
  code, out = again("--seed", "1", "--chunk", "20", "--batch", "16")
  assert code == 0, out.err
  assert open(path).read() == before
  with open(os.path.join(workdir, "evaluation_k20_n16_s1.json")) as f:
    assert json.load(f)["settings"]["seed"] == 1
  # The same seed with another chunk and batch: the same numbers (up to rounding).
  code, out = again("--chunk", "20", "--batch", "16", "--force")
  assert code == 0, out.err
  with open(path) as f:
    assert json.load(f)["results"]["nll"] == pytest.approx(r["nll"], rel=1e-5)

  # bfloat16 GEMMs: a report of its own beside float32's, close to it but not equal.
  code, out = again("--dtype", "bfloat16")
  assert code == 0, out.err
  with open(os.path.join(workdir, "evaluation_k20_n16_s0_bfloat16.json")) as f:
    bf16 = json.load(f)
  assert s["dtype"] == "float32" and bf16["settings"]["dtype"] == "bfloat16"
  assert bf16["settings"]["batch"] == 4  # the default batch on CPU with bfloat16
  assert bf16["results"]["nll"] == pytest.approx(r["nll"], rel=1e-2)
  assert bf16["results"]["nll"] != r["nll"]
  code, out = again("--seed", "2")
  assert code == 0, out.err
  with open(os.path.join(workdir, "evaluation_k20_n16_s2.json")) as f:
    assert json.load(f)["settings"]["batch"] == 2  # the default batch on CPU with float32
  # A report written before the dtype was recorded is the run's own dtype's (float32 here).
  with open(path) as f:
    legacy = json.load(f)
  del legacy["settings"]["dtype"]
  with open(path, "w") as f:
    json.dump(legacy, f)
  code, out = again()
  assert code == 2 and out.err.strip() == (f"error: {path} exists (an evaluation with these "
                                           "settings); pass --force to replace it")

  for flags, fragment in ((["--iw-samples", "0"], "--iw-samples must be >= 1"),
                          (["--test-size", "25"], "--test-size 25 is larger than the 24"),
                          (["--chunk", "x"], "argument --chunk: invalid int value"),
                          (["--dtype", "float16"], "argument --dtype: invalid choice"),
                          (["--workdir", str(tmp_path / "none")], "holds no run")):
    code, out = again(*flags)
    lines = out.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0], out.err
    assert code == 2
