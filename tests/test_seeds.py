"""--seeds: several seeds as one command into W/seed_K, and experiments.evaluate over them."""

import json
import os
import shutil

import jax
import numpy as np
import pytest

from experiments import evaluate as evaluate_main
from experiments import mnist_vae
from vae_jax.research import evaluation
from vae_jax.training import run


def _flags(idx_dir, workdir, epochs=2):
  return ["--data", f"idx:{idx_dir}", "--model", "mlp", "--hidden-sizes", "16", "--latent-dim",
          "2", "--batch-size", "8", "--train-size", "40", "--binarize", "dynamic", "--epochs",
          str(epochs), "--steps-per-chunk", "5", "--workdir", workdir]


def _params(workdir):
  _, epoch, model = run.restore_model(workdir)
  return epoch, [np.asarray(p) for p in jax.tree.leaves(model)]


@pytest.fixture(scope="module")
def runs(idx_dir, tmp_path_factory):
  """W: --seeds 0,1 as one command (seed 1 begun, interrupted after epoch 1, resumed); alone: --seed 1."""
  root = tmp_path_factory.mktemp("seeds")
  together, alone = str(root / "W"), str(root / "alone")
  assert mnist_vae.main(_flags(idx_dir, together, epochs=1) + ["--seeds", "1"]) == 0
  assert mnist_vae.main(_flags(idx_dir, together) + ["--seeds", "0,1", "--resume"]) == 0
  assert mnist_vae.main(_flags(idx_dir, alone) + ["--seed", "1"]) == 0
  return together, alone


def test_seeds_as_one_command_equal_the_seeds_run_alone(runs):
  together, alone = runs
  assert sorted(os.listdir(together)) == ["seed_0", "seed_1"]
  epoch_1, seed_1 = _params(os.path.join(together, "seed_1"))
  epoch_alone, seed_1_alone = _params(alone)
  assert epoch_1 == epoch_alone == 2
  for a, b in zip(seed_1, seed_1_alone, strict=True):
    np.testing.assert_array_equal(a, b)
  _, seed_0 = _params(os.path.join(together, "seed_0"))
  assert any(not np.array_equal(a, b) for a, b in zip(seed_0, seed_1))
  with open(os.path.join(together, "seed_0", "config.json")) as f:
    assert json.load(f)["seed"] == 0


def test_evaluate_reports_each_seed_and_their_mean_and_spread(runs, capsys):
  together, alone = runs
  flags = ["--iw-samples", "8", "--test-size", "6"]
  assert evaluate_main.main(["--workdir", together] + flags) == 0
  line = capsys.readouterr().out
  assert "2 seeds (0,1)" in line and "mean ± sd over seeds" in line
  [name] = [n for n in os.listdir(together) if n.startswith("evaluation_seeds")]
  with open(os.path.join(together, name)) as f:
    summary = json.load(f)
  settings = evaluation.Settings(iw_samples=8, test_size=6)
  _, alone_report = evaluation.evaluate_run(alone, settings)
  assert summary["per_seed"]["1"]["nll"] == alone_report["results"]["nll"]
  nll = np.array([summary["per_seed"][s]["nll"] for s in ("0", "1")])
  assert nll[0] != nll[1]
  np.testing.assert_allclose(summary["results"]["nll"]["mean"], nll.mean(), rtol=1e-12)
  np.testing.assert_allclose(summary["results"]["nll"]["sd"], abs(nll[0] - nll[1]) / np.sqrt(2),
                             rtol=1e-9)
  assert summary["results"]["nll"]["min"] == nll.min()
  # Again: each seed's report is reused (no "exists" refusal), the summary is the same.
  assert evaluate_main.main(["--workdir", together] + flags) == 0
  with open(os.path.join(together, name)) as f:
    assert json.load(f) == summary
  # bfloat16 GEMMs: each seed evaluated again (not the float32 reports reused), their own summary.
  assert evaluate_main.main(["--workdir", together, "--dtype", "bfloat16"] + flags) == 0
  with open(os.path.join(together, name.replace(".json", "_bfloat16.json"))) as f:
    bf16 = json.load(f)
  assert summary["settings"]["dtype"] == "float32" and bf16["settings"]["dtype"] == "bfloat16"
  for seed in ("0", "1"):
    assert bf16["per_seed"][seed]["nll"] != summary["per_seed"][seed]["nll"]
    assert bf16["per_seed"][seed]["nll"] == pytest.approx(summary["per_seed"][seed]["nll"],
                                                          rel=1e-2)
  with open(os.path.join(together, name)) as f:
    assert json.load(f) == summary


def test_refusals(runs, idx_dir, tmp_path, capsys):
  together, _ = runs
  with pytest.raises(SystemExit) as e:
    mnist_vae.parse_args(_flags(idx_dir, str(tmp_path / "x")) + ["--seed", "1", "--seeds", "1"])
  assert e.value.code == 2
  assert mnist_vae.main(_flags(idx_dir, str(tmp_path / "y")) + ["--seeds", "1,1"]) == 2
  assert "--seeds must be distinct" in capsys.readouterr().err
  assert evaluate_main.main(["--workdir", str(tmp_path)]) == 2
  assert "no seed_K runs" in capsys.readouterr().err
  # Seed folders of different runs are not seeds of one.
  other = tmp_path / "mixed"
  os.makedirs(other)
  os.symlink(os.path.join(together, "seed_0"), other / "seed_0")
  shutil.copytree(os.path.join(together, "seed_1"), other / "seed_5")
  with open(other / "seed_5" / "config.json") as f:
    config = json.load(f)
  with open(other / "seed_5" / "config.json", "w") as f:
    json.dump({**config, "seed": 5, "epochs": 3}, f)
  assert evaluate_main.main(["--workdir", str(other), "--iw-samples", "2"]) == 2
  assert "differ in epochs" in capsys.readouterr().err
