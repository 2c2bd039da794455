"""The autoencoder study's parts that need no trained model: plan, reuse, measurements on fake
models against numpy, latent sampling, verdicts and report writing, and its command's errors."""

import dataclasses
import json
import os
import subprocess
import sys

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from conftest import main_in_fresh_python
from vae_jax.study import latent, runner as study, report as study_report
from vae_jax.training.checkpoints import Checkpoints
from vae_jax.config import get_config
from vae_jax.errors import UserError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
KINDS = {"cvae": True, "mlp": True, "conv_ae": False, "mlp_ae": False}


# ---------------------------------------------------------------- plan

def test_the_default_plan_has_every_run_once():
  specs = study.plan(study.StudyConfig(), KINDS)
  names = [s.name for s in specs]
  assert len(names) == len(set(names)) == 4 * 6 + 2 + 2 * 3
  assert "cvae_elbo_L50" in names and "mlp_ae_bce_L2" in names
  assert {"conv_ae_l2_L16", "conv_ae_l1_L16", "cvae_elbo_L16_denoise0.3"} <= set(names)
  assert all(s.objective == ("elbo" if KINDS[s.model] else "bce") for s in specs
             if s.objective in ("elbo", "bce"))
  denoise = [s for s in specs if s.denoise]
  assert sorted((s.model, s.denoise) for s in denoise) == sorted(
      (m, p) for m in ("conv_ae", "cvae") for p in (0.1, 0.2, 0.3))


def test_the_quick_preset_is_small_and_valid():
  quick = study.quick()
  quick.validate()
  specs = study.plan(quick, KINDS)
  assert quick.epochs == 1 and quick.latent_sizes == (2, 4)
  assert len(specs) == 4 * 2 + 2 + 2


@pytest.mark.parametrize("change, fragment", [
    (dict(focus_latent=3), "--focus-latent 3"),
    (dict(noise_levels=(0.0,)), "--noise-levels"),
    (dict(models=()), "--models"),
    (dict(latent_sizes=(0, 2), focus_latent=2), "--latent-sizes"),
])
def test_impossible_settings_are_refused(change, fragment):
  with pytest.raises(UserError, match=fragment):
    dataclasses.replace(study.StudyConfig(), **change).validate()


def test_the_registry_refuses_a_model_objective_mismatch_naming_the_run():
  # bce is a plain autoencoder's objective; the registry refuses it for a VAE before any training.
  bad = dataclasses.replace(study.StudyConfig(), loss_model="cvae")
  with pytest.raises(UserError, match=r"run cvae_bce_L16 \(model 'cvae', objective 'bce'\).*--objective"):
    study.probe_models(bad)


def test_probe_models_reads_each_models_kind_from_the_registry():
  assert study.probe_models(study.quick()) == KINDS


def test_run_config_is_a_valid_main_job_config():
  spec = study.RunSpec("conv_ae_bce_L4_denoise0.1", "conv_ae", "bce", 4, 0.1)
  config = study.run_config(study.quick(), spec)
  config.validate()
  assert (config.model, config.objective, config.latent_dim, config.denoise) == ("conv_ae", "bce", 4, 0.1)
  assert config.epochs == 1 and config.learning_rate == study.quick().learning_rate


# ---------------------------------------------------------------- reuse of run workdirs

def _fake_run(workdir, config, epochs_done, checkpoint):
  os.makedirs(workdir)
  with open(os.path.join(workdir, "config.json"), "w") as f:
    json.dump(dataclasses.asdict(config), f)
  with open(os.path.join(workdir, "metrics.jsonl"), "w") as f:
    f.writelines(json.dumps({"epoch": e, "seconds": 1.5, "images_per_sec": 100.0 * e}) + "\n"
                 for e in range(1, epochs_done + 1))
  if checkpoint:
    checkpoints = Checkpoints(os.path.join(workdir, "checkpoints"))
    checkpoints.save(checkpoint, {"w": np.zeros(3, np.float32)})
    checkpoints.close()


def test_run_status_reuses_complete_runs_and_resumes_partial_ones(tmp_path):
  config = dataclasses.replace(get_config(), epochs=2, latent_dim=2)
  assert study.run_status(str(tmp_path / "absent"), config) == "new"
  os.makedirs(tmp_path / "empty")
  assert study.run_status(str(tmp_path / "empty"), config) == "new"

  _fake_run(str(tmp_path / "done"), config, 2, 2)
  assert study.run_status(str(tmp_path / "done"), config) == "complete"
  assert study.ensure_run(config, str(tmp_path / "done")) == "reused"
  assert study.run_timing(str(tmp_path / "done")) == {"seconds": 3.0, "images_per_sec": 150.0,
                                                      "epochs": 2}
  # More epochs asked of the same run: resume it.
  assert study.run_status(str(tmp_path / "done"), dataclasses.replace(config, epochs=3)) == "resume"

  _fake_run(str(tmp_path / "half"), config, 1, 1)
  assert study.run_status(str(tmp_path / "half"), config) == "resume"
  _fake_run(str(tmp_path / "rows_only"), config, 2, None)
  assert study.run_status(str(tmp_path / "rows_only"), config) == "resume"


def test_run_status_refuses_other_settings_and_foreign_directories(tmp_path):
  config = dataclasses.replace(get_config(), epochs=2, latent_dim=2)
  _fake_run(str(tmp_path / "run"), config, 2, 2)
  with pytest.raises(UserError, match="other settings.*latent_dim: 2 -> 3"):
    study.run_status(str(tmp_path / "run"), dataclasses.replace(config, latent_dim=3))
  with pytest.raises(UserError, match="2 epochs, more than --epochs 1"):
    study.run_status(str(tmp_path / "run"), dataclasses.replace(config, epochs=1))
  os.makedirs(tmp_path / "foreign")
  (tmp_path / "foreign" / "notes.txt").write_text("mine")
  with pytest.raises(UserError, match="holds no run"):
    study.run_status(str(tmp_path / "foreign"), config)


# ---------------------------------------------------------------- measurements on fake models

W = np.random.default_rng(0).normal(size=(28, 28, 1)).astype(np.float32)
B = np.random.default_rng(1).normal(size=(28, 28, 1)).astype(np.float32)


class FakeAE(nnx.Module):
  """code = (mean pixel, mean of the top half); logits = 3 * code[0] * W + B."""
  stochastic = False
  latent_dim = 2

  def __init__(self):
    self.w, self.b = nnx.Param(jnp.asarray(W)), nnx.Param(jnp.asarray(B))

  def encode(self, x):
    return jnp.stack([x.mean(axis=(1, 2, 3)), x[:, :14].mean(axis=(1, 2, 3))], axis=-1), None

  def decode(self, z):
    return 3.0 * z[:, 0, None, None, None] * self.w[None] + self.b[None]


class FakeVAE(FakeAE):
  """Posterior mean (10 x mean pixel, 0.01 x top-half mean, 0.7), logvar = log 0.25: one unit
  varies across digits, one barely, one not at all."""
  stochastic = True
  latent_dim = 3

  def encode(self, x):
    code, _ = FakeAE.encode(self, x)
    mean = jnp.concatenate([code * jnp.array([[10.0, 0.01]]), jnp.full((x.shape[0], 1), 0.7)], axis=-1)
    return mean, jnp.full(mean.shape, np.log(0.25), jnp.float32)


def _numpy_codes(x):
  x = x.astype(np.float64)
  return np.stack([x.mean(axis=(1, 2, 3)), x[:, :14].mean(axis=(1, 2, 3))], axis=-1)


@pytest.fixture(scope="module")
def binary_digits(digits):
  train, test = digits
  return (train[:300, ..., None] >= 128).astype(np.uint8), (test[:50, ..., None] >= 128).astype(np.uint8)


def test_reconstruction_metrics_match_numpy(binary_digits):
  _, x = binary_digits
  codes = _numpy_codes(x)
  logits = 3.0 * codes[:, 0, None, None, None] * W + B
  bce = np.sum(np.logaddexp(0, logits) - x * logits, axis=(1, 2, 3))
  wrong = np.mean((logits > 0) != (x > 0)) * 100

  ae = study.reconstruction_metrics(FakeAE(), x, batch_size=16)
  assert set(ae) == {"bce", "pixel_error"}
  np.testing.assert_allclose(ae["bce"], bce.mean(), rtol=1e-5)
  np.testing.assert_allclose(ae["pixel_error"], wrong, rtol=1e-6)

  vae = study.reconstruction_metrics(FakeVAE(), x, batch_size=16)
  mean = np.concatenate([codes * [10.0, 0.01], np.full((len(x), 1), 0.7)], axis=1)
  logits = 3.0 * mean[:, 0, None, None, None] * W + B
  bce = np.sum(np.logaddexp(0, logits) - x * logits, axis=(1, 2, 3))
  np.testing.assert_allclose(vae["bce"], bce.mean(), rtol=1e-5)
  kl = 0.5 * np.sum(0.25 + mean ** 2 - 1 - np.log(0.25), axis=1)
  np.testing.assert_allclose(vae["kl"], kl.mean(), rtol=1e-5)
  activity = np.var(mean, axis=0, ddof=1)
  assert activity[0] > 0.01 > activity[1]
  assert vae["active_units"] == 1 and vae["latent_dim"] == 3


def test_codes_decoding_and_pixel_flips(binary_digits):
  _, x = binary_digits
  np.testing.assert_allclose(study.encode_codes(FakeAE(), x, batch_size=16), _numpy_codes(x),
                             rtol=1e-6)
  z = np.random.default_rng(2).normal(size=(9, 2)).astype(np.float32)
  probs = study.decode_probs(FakeAE(), z, batch_size=4)
  np.testing.assert_allclose(probs, 1 / (1 + np.exp(-(3 * z[:, 0, None, None, None] * W + B))),
                             rtol=1e-5, atol=1e-6)
  flipped = study.flip_pixels(x, 0.2, seed=0)
  assert 0.18 < np.mean(flipped != x) < 0.22
  np.testing.assert_array_equal(flipped, study.flip_pixels(x, 0.2, seed=0))
  assert study.pixel_error(flipped, x) == pytest.approx(100 * np.mean(flipped != x))


def test_sampler_images_with_a_fake_encoder(binary_digits):
  train, test = binary_digits
  images = study.sampler_images(FakeAE(), train, test, n=40, seed=0, components=3)
  for sampler in study.SAMPLERS:
    assert images[sampler].shape == (40, 28, 28, 1)
    assert np.all((images[sampler] >= 0) & (images[sampler] <= 1))
  assert images["interpolation"].shape == (study.INTERPOLATION_PAIRS,
                                           study.INTERPOLATION_STEPS + 2, 28, 28, 1)
  # Reconstructions decode training codes: their probabilities are among the training digits'.
  every = study.reconstruct_probs(FakeAE(), train)
  assert all(np.any(np.all(np.isclose(every, r), axis=(1, 2, 3))) for r in images["reconstruction"])
  # Interpolation rows start and end at the test digits themselves.
  assert all(np.any(np.all(row[0] == test, axis=(1, 2, 3))) for row in images["interpolation"])


def test_gmm_samples_follow_the_codes_clusters():
  rng = np.random.default_rng(0)
  centres = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
  weights = np.array([0.5, 0.3, 0.2])
  labels = rng.choice(3, size=3000, p=weights)
  codes = centres[labels] + 0.3 * rng.normal(size=(3000, 2))
  draws = latent.gmm_samples(codes, 4000, components=3, seed=0)
  assert draws.shape == (4000, 2) and draws.dtype == np.float32
  nearest = np.argmin(np.linalg.norm(draws[:, None] - centres[None], axis=-1), axis=1)
  np.testing.assert_allclose(np.bincount(nearest, minlength=3) / 4000, weights, atol=0.03)
  for k in range(3):
    np.testing.assert_allclose(draws[nearest == k].std(axis=0), 0.3, rtol=0.1)
  np.testing.assert_array_equal(draws, latent.gmm_samples(codes, 4000, components=3, seed=0))
  assert len(set(nearest[:30])) == 3  # shuffled, not grouped by component


def test_interpolation_runs_from_one_code_to_the_other():
  a, b = np.array([[0.0, 2.0], [1.0, 1.0]]), np.array([[4.0, -2.0], [1.0, 3.0]])
  path = latent.interpolate(a, b, 5)
  assert path.shape == (2, 5, 2)
  np.testing.assert_allclose(path[:, 0], a)
  np.testing.assert_allclose(path[:, -1], b)
  np.testing.assert_allclose(path[:, 2], (a + b) / 2)
  np.testing.assert_allclose(np.diff(path, axis=1), np.repeat(((b - a) / 4)[:, None], 4, axis=1),
                             rtol=1e-6)


# ---------------------------------------------------------------- verdicts and the report

def _synthetic_results(ae_gmm_fcd=8.0, l1_error=7.0):
  sizes = (2, 8, 32)
  # conv models better than MLPs everywhere; cvae saturates at 8 and switches units off.
  bce = {"conv_ae": (150.0, 80.0, 50.0), "mlp_ae": (160.0, 95.0, 70.0),
         "cvae": (140.0, 90.0, 90.5), "mlp": (150.0, 100.0, 99.0)}
  bottleneck = []
  for model, values in bce.items():
    for latent_dim, b in zip(sizes, values):
      row = {"name": f"{model}_L{latent_dim}", "model": model, "latent": latent_dim,
             "objective": "elbo" if KINDS[model] else "bce", "stochastic": KINDS[model],
             "denoise": 0.0, "bce": b, "pixel_error": b / 25}
      if KINDS[model]:
        row.update(kl=20.0 + latent_dim, active_units=min(latent_dim, 8), latent_dim=latent_dim)
      bottleneck.append(row)
  loss_choice = [{"model": "conv_ae", "latent": 8, "objective": o, "bce": b, "pixel_error": e}
                 for o, b, e in (("bce", 80.0, 3.2), ("l2", 95.0, 3.5), ("l1", 120.0, l1_error))]
  denoising = [{"model": m, "noise": p, "trained_noise": t, "run": "r", "pixel_error": e,
                "input_error": 100 * p}
               for m in ("conv_ae", "cvae") for p in (0.1, 0.2)
               for t, e in ((p, 4.0 + 10 * p), (0.0, 9.0 + 40 * p))]
  score = {"confidence": 0.9, "entropy": 0.2, "label_entropy": 2.2, "score": 7.5,
           "label_counts": [1] * 10, "n": 100}
  fcd = {("conv_ae", "prior"): 60.0, ("conv_ae", "gmm"): ae_gmm_fcd, ("conv_ae", "midpoint"): 12.0,
         ("cvae", "prior"): 10.0, ("cvae", "gmm"): 9.0, ("cvae", "midpoint"): 11.0}
  rows = [{"model": m, "sampler": s, "stochastic": KINDS[m], "run": "r", "fcd": v,
           "fcd_logits": v / 3, **score} for (m, s), v in fcd.items()]
  runs = {f"{m}_L{l}": {"name": f"{m}_L{l}", "model": m, "objective": "x", "latent": l,
                        "denoise": 0.0, "outcome": "trained", "seconds": 10.0, "epochs": 1,
                        "images_per_sec": 5000.0 if m.startswith("c") else 40000.0}
          for m in bce for l in sizes}
  return {"study": dataclasses.asdict(dataclasses.replace(study.StudyConfig(), latent_sizes=sizes,
                                                          focus_latent=8)),
          "data": "idx:/x", "train_images": 100, "test_images": 50,
          "classifier": {"test_accuracy": 0.991, "grey_test_accuracy": 0.99, "train_images": 100,
                         "train_seconds": 5.0, "config": {"epochs": 5, "max_shift": 2}},
          "runs": runs, "stochastic": KINDS, "bottleneck": bottleneck, "loss_choice": loss_choice,
          "denoising": denoising,
          "sample_quality": {"reference": {"images": "binarized test digits", "n": 100},
                             "floor": {"what": "train", "fcd": 0.5, "fcd_logits": 0.2, **score},
                             "real_test": score, "rows": rows},
          "pictures": {}, "seconds": 120.0,
          "machine": {"backend": "cpu", "devices": ["cpu"], "cpus": 2, "jax": "x"}}


def test_verdicts_follow_the_stated_rules():
  claims = study_report.verdicts(_synthetic_results())
  assert claims["bottleneck"]["verdict"] == "partly agrees"  # cvae and mlp saturate
  assert any("cvae stops gaining" in n and "latent 8" in n for n in claims["bottleneck"]["disagreements"])
  assert claims["losses"]["verdict"] == "disagrees"            # l1: 7.0 / 3.2 = 2.2x > 2x
  assert claims["conv"]["verdict"] == "agrees" and "3 of 3" in claims["conv"]["measured"]
  assert "mlp_ae trains 8.0x" in claims["conv"]["measured"]
  assert claims["creativity"]["verdict"] == "partly agrees"  # prior fails, GMM generates
  assert any("Gaussian mixture" in n for n in claims["creativity"]["disagreements"])

  agreeing = study_report.verdicts(_synthetic_results(ae_gmm_fcd=30.0, l1_error=3.6))
  assert agreeing["losses"]["verdict"] == "agrees"
  assert agreeing["creativity"]["verdict"] == "agrees"


def test_loss_verdict_thresholds():
  rows = lambda e: [{"model": "m", "latent": 4, "objective": o, "bce": 1.0, "pixel_error": x}
                    for o, x in (("bce", 2.0), ("l2", 2.0), ("l1", e))]
  assert study_report.losses_verdict(rows(2.4))["verdict"] == "agrees"
  assert study_report.losses_verdict(rows(3.8))["verdict"] == "partly agrees"
  assert study_report.losses_verdict(rows(4.2))["verdict"] == "disagrees"


def test_write_report_from_a_synthetic_results_dict(tmp_path):
  out = str(tmp_path)
  results = study_report.write_report(_synthetic_results(), out)
  for name in ("report.md", "report.json", "pictures/bottleneck.png", "pictures/loss_choice.png",
               "pictures/denoising.png", "pictures/sample_quality.png"):
    assert os.path.getsize(os.path.join(out, name)) > 0, name
  with open(os.path.join(out, "report.json")) as f:
    saved = json.load(f)
  assert saved["claims"] == results["claims"] and saved["claims"]["conv"]["verdict"] == "agrees"
  text = open(os.path.join(out, "report.md")).read()
  for fragment in ("## The four claims", "## Where the measurements disagree with the article",
                   "**partly agrees**", "cvae stops gaining", "| conv_ae | 2 | 150.00 | 6.00 |",
                   "real training digits (floor)", "99.10%", "![loss choice](pictures/loss_choice.png)",
                   "## What a GPU run would add", "Verdict rules"):
    assert fragment in text, fragment


# ---------------------------------------------------------------- the command's errors

def _study(*args, timeout=300, env=None):
  return subprocess.run([sys.executable, "-m", "experiments.autoencoder_study", *args], cwd=ROOT,
                        env=env, capture_output=True, text=True, timeout=timeout)


def test_an_unknown_model_is_named_before_anything_is_written(tmp_path):
  out = tmp_path / "study"
  result = _study("--data", "idx:/nonexistent", "--out", str(out), "--models", "no_such_model",
                  "--quick")
  assert result.returncode == 2
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: ") and "'no_such_model'" in lines[0]
  assert not out.exists()


def test_a_focus_size_outside_the_latent_sizes_is_refused_before_jax_is_imported(tmp_path):
  out, err = main_in_fresh_python("experiments.autoencoder_study",
                                  ["--out", str(tmp_path / "s"), "--latent-sizes", "2,8"])
  assert out == ["2", "[]"], out + [err]
  assert err == "error: --focus-latent 16 is not one of --latent-sizes (2, 8)\n"
  assert not (tmp_path / "s").exists()


def test_the_quick_study_end_to_end_answers_the_four_claims_and_reuses_its_runs(tmp_path, idx_dir,
                                                                                env):
  out = tmp_path / "study"
  args = ("--data", f"idx:{idx_dir}", "--out", str(out), "--quick", "--models", "cvae,conv_ae",
          "--losses", "bce,l2", "--denoise-models", "conv_ae", "--num-samples", "64")
  first = _study(*args, timeout=900, env=env)  # env: the second run reads the first's programs
  assert first.returncode == 0, first.stderr[-2000:]
  with open(out / "report.json") as f:
    report = json.load(f)
  assert set(report["claims"]) == {"bottleneck", "losses", "conv", "creativity"}
  for claim in report["claims"].values():
    assert claim["verdict"] in ("agrees", "partly agrees", "disagrees", "not measured"), claim
    assert claim["measured"]
  # conv_ae and cvae: no convolutional/MLP pair, so claim 3 alone is not measured here.
  assert [k for k, c in report["claims"].items() if c["verdict"] == "not measured"] == ["conv"]
  assert {r["outcome"] for r in report["runs"].values()} == {"trained"}
  names = set(report["runs"])
  assert {"cvae_elbo_L2", "conv_ae_bce_L4", "conv_ae_l2_L4", "conv_ae_bce_L4_denoise0.1"} <= names
  for picture in report["pictures"].values():
    assert os.path.getsize(out / picture) > 0, picture
  assert "## The four claims" in (out / "report.md").read_text()

  second = _study(*args, timeout=900, env=env)
  assert second.returncode == 0, second.stderr[-2000:]
  with open(out / "report.json") as f:
    again = json.load(f)
  assert set(again["runs"]) == names
  assert {r["outcome"] for r in again["runs"].values()} == {"reused"}
  assert again["claims"] == report["claims"]
