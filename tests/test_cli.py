"""The main job as a user runs it: `python -m experiments.mnist_vae`."""

import gzip
import json
import os
import shutil
import subprocess
import sys

import pytest

from conftest import main_in_fresh_python

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main_job(*args):
  return subprocess.run([sys.executable, "-m", "experiments.mnist_vae", *args], cwd=ROOT,
                        capture_output=True, text=True, timeout=300)


def test_smoke_run_writes_every_output(idx_dir, tmp_path):
  workdir = str(tmp_path / "run")
  result = main_job("--data", f"idx:{idx_dir}", "--epochs", "2", "--train-size", "40",
                    "--batch-size", "8", "--latent-dim", "2", "--learning-rate", "1e-3",
                    "--steps-per-chunk", "2", "--workdir", workdir)
  assert result.returncode == 0, result.stderr
  rows = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
  assert [r["epoch"] for r in rows] == [1, 2]
  for key in ("train_loss", "train_rec", "train_kl", "test_elbo", "test_rec", "test_kl",
              "images_per_sec", "seconds"):
    assert all(isinstance(r[key], float) for r in rows), key
  assert rows[1]["test_elbo"] > rows[0]["test_elbo"]
  assert "test ELBO" in result.stdout and result.stdout.count("epoch ") >= 2
  for name in ("config.json", "image_at_epoch_0002.png", "training.gif", "latent_manifold.png",
               "curves.png", "checkpoints"):
    assert os.path.exists(os.path.join(workdir, name)), name


def _assert_one_line_error(result, *fragments):
  assert result.returncode == 2
  lines = result.stderr.strip().splitlines()
  assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
  assert "Traceback" not in result.stderr
  for fragment in fragments:
    assert fragment in lines[0]


def test_missing_data_directory(tmp_path):
  result = main_job("--data", "idx:/nonexistent", "--workdir", str(tmp_path / "w"))
  _assert_one_line_error(result, "/nonexistent", "directory not found")
  assert not os.path.exists(tmp_path / "w")


def test_corrupt_idx_file(idx_dir, tmp_path):
  broken = shutil.copytree(idx_dir, tmp_path / "broken")
  with open(broken / "t10k-images-idx3-ubyte.gz", "wb") as f:
    f.write(gzip.compress(b"\x00\x00\x08\x03" + b"\x00" * 20))
  result = main_job("--data", f"idx:{broken}", "--workdir", str(tmp_path / "w"))
  _assert_one_line_error(result, "t10k-images-idx3-ubyte.gz", "header says")


@pytest.mark.parametrize("flags,fragment", [
    (["--epochs", "0"], "--epochs must be >= 1"),
    (["--train-size", "100000"], "--train-size 100000"),
    (["--model", "conv_ae", "--objective", "iwae"], "--objective iwae needs a VAE"),
    (["--import", "no_such_module_here"], "--import no_such_module_here: ModuleNotFoundError"),
])
def test_impossible_flags(idx_dir, tmp_path, flags, fragment):
  result = main_job("--data", f"idx:{idx_dir}", "--workdir", str(tmp_path / "w"), *flags)
  _assert_one_line_error(result, fragment)


def test_an_impossible_value_is_refused_before_jax_is_imported(tmp_path):
  """A typo costs a user a fraction of a second, not JAX's import."""
  out, err = main_in_fresh_python("experiments.mnist_vae",
                                  ["--epochs", "0", "--workdir", str(tmp_path / "w")])
  assert out == ["2", "[]"], out + [err]
  assert err == "error: --epochs must be >= 1, got 0\n"
  assert not os.path.exists(tmp_path / "w")


def test_models_objectives_and_binarizations_by_name(idx_dir, tmp_path):
  """The research variants from the command line, at tiny size: two metric rows each."""
  common = ["--data", f"idx:{idx_dir}", "--epochs", "2", "--train-size", "40", "--batch-size", "8",
            "--latent-dim", "2", "--steps-per-chunk", "2"]
  runs = {"A": ["--model", "mlp", "--objective", "iwae", "--iw-samples", "5",
                "--binarize", "dynamic"],
          "B": ["--model", "conv_ae", "--objective", "l2"]}
  for name, flags in runs.items():
    workdir = str(tmp_path / name)
    result = main_job(*flags, *common, "--workdir", workdir)
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
    assert [r["epoch"] for r in rows] == [1, 2]
    with open(os.path.join(workdir, "config.json")) as f:
      saved = json.load(f)
    assert saved["model"] == flags[1] and saved["objective"] == flags[3]
    assert os.path.exists(os.path.join(workdir, "image_at_epoch_0002.png"))
    # An autoencoder has no ELBO: its log line names the number it prints.
    assert ("test ELBO" in result.stdout) == (name == "A")
    assert ("test -loss" in result.stdout) == (name == "B")
  assert saved["binarize"] == "threshold"
  assert all(r["test_kl"] == 0.0 for r in rows)  # B: an autoencoder
  # --resume refuses to change a research setting (every new Config field is non-resumable).
  result = main_job(*runs["B"], *common, "--objective", "l1", "--epochs", "3", "--resume",
                    "--workdir", str(tmp_path / "B"))
  _assert_one_line_error(result, "settings differ", "objective: 'l2' -> 'l1'")
