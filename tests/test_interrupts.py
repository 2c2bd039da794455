"""Ctrl-C in the long commands other than training, sent from outside while they work, as a user
sends it: one line, exit 130, no partial output; an interrupted evaluation continues when run
again and ends with the numbers of an uninterrupted one."""

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from conftest import write_idx, write_workdir
from vae_jax.config import Config
from vae_jax.research import evaluation

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, idx_dir):
  """A run's workdir: config.json and one checkpoint of the freshly initialized tiny model."""
  return write_workdir(str(tmp_path_factory.mktemp("model") / "run"),
                       Config(data=f"idx:{idx_dir}", latent_dim=4, batch_size=8, epochs=1))


class Command:
  """`python -m MODULE ARGS`, started; its stderr read as it comes."""

  def __init__(self, env, module, *args):
    self.process = subprocess.Popen([sys.executable, "-m", module, *args], cwd=ROOT, env=env,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    self.err = b""
    self._reader = threading.Thread(target=self._read, daemon=True)
    self._reader.start()

  def _read(self):
    for chunk in iter(lambda: os.read(self.process.stderr.fileno(), 4096), b""):
      self.err += chunk

  def interrupt_when(self, pattern: str, timeout: float = 240.0):
    """SIGINT once stderr matches `pattern` (the command visibly working); (exit code, stderr)."""
    deadline = time.monotonic() + timeout
    while not re.search(pattern, self.err.decode(errors="replace")):
      assert self.process.poll() is None, f"ended before the signal: {self.err.decode()}"
      assert time.monotonic() < deadline, self.err.decode()
      time.sleep(0.02)
    self.process.send_signal(signal.SIGINT)
    return self.finish()

  def finish(self):
    self.process.wait(timeout=240)
    self._reader.join()
    return self.process.returncode, self.err.decode()


def _progress(desc: str, total: int, first: int = 1) -> str:
  """A tqdm bar of `desc` at `first` items or more (1: a complete call of the loop's body)."""
  return rf"{desc}: +\d+%\|[^\r\n]*\| *{'[1-9]' if first else ''}\d*/{total} "


def _last_line(err: str, *fragments) -> str:
  """The last line on stderr (progress bars end in carriage returns), without a traceback."""
  assert "Traceback" not in err, err
  line = re.split(r"[\r\n]", err.strip())[-1]
  assert line.startswith("interrupted"), err
  for fragment in fragments:
    assert fragment in line, (fragment, line)
  return line


def _files(directory) -> list[str]:
  return sorted(os.listdir(directory))


def test_evaluate_stops_keeps_its_images_and_continues(env, workdir, idx_dir):
  flags = ["--workdir", workdir, "--data", f"idx:{idx_dir}", "--iw-samples", "400", "--chunk",
           "100", "--batch", "1", "--test-size", "12"]
  code, err = Command(env, "experiments.evaluate", *flags).interrupt_when(_progress("evaluate", 12))
  line = _last_line(err, "of 12 test images", "the same command again continues")
  kept = int(re.search(r"after (\d+) of 12", line).group(1))
  assert code == 130 and 0 < kept < 12
  partial = os.path.join(workdir, "evaluation_k400_n12_s0.partial.npz")
  assert not os.path.exists(os.path.join(workdir, evaluation.REPORT_FILE))
  with np.load(partial) as f:
    assert len(f["rec"]) == kept

  code, err = Command(env, "experiments.evaluate", *flags).finish()
  assert code == 0, err
  with open(os.path.join(workdir, evaluation.REPORT_FILE)) as f:
    resumed = json.load(f)
  assert resumed["timing"]["resumed_images"] == kept and not os.path.exists(partial)
  # Uninterrupted, in this process: the same numbers, exactly.
  _, whole = evaluation.evaluate_run(workdir, evaluation.Settings(
      iw_samples=400, test_size=12, chunk=100, batch=1, data=f"idx:{idx_dir}"),
      force=True)
  assert "resumed_images" not in whole["timing"]
  assert whole["results"] == resumed["results"]


@pytest.fixture(scope="module")
def many_images(tmp_path_factory, digits):
  """An IDX images file of 1,000 test digits (repeated): an encode long enough to interrupt."""
  path = str(tmp_path_factory.mktemp("many") / "images-idx3-ubyte.gz")
  write_idx(path, np.resize(digits[1], (1000, 28, 28)), 2051)
  return path


def test_compress_encode_and_decode_stop_without_output(env, workdir, many_images, tmp_path):
  out = str(tmp_path / "a.vjz")
  code, err = Command(env, "experiments.compress", "encode", "--model", workdir, "--data",
                      f"idx:{many_images}", "--out", out).interrupt_when(
                          _progress("encode", 1000, 0))
  # At a safe point between batches, or before the file is written.
  _last_line(err, "nothing was written; the same command again starts over")
  assert code == 130 and _files(tmp_path) == []

  code, err = Command(env, "experiments.compress", "encode", "--model", workdir, "--data",
                      f"idx:{many_images}", "--out", out, "--quiet").finish()
  assert code == 0, err
  decoded = str(tmp_path / "decoded")
  code, err = Command(env, "experiments.compress", "decode", out, "--model", workdir, "--out",
                      decoded).interrupt_when(_progress("decode", 1000, 0))
  _last_line(err, "nothing was written; the same command again starts over")
  assert code == 130 and _files(tmp_path) == ["a.vjz"]


def test_autoencoder_study_stops_in_a_run(env, idx_dir, tmp_path):
  out = tmp_path / "study"
  command = Command(env, "experiments.autoencoder_study", "--quick", "--data", f"idx:{idx_dir}",
                    "--classifier-epochs", "1", "--train-size", "40", "--out", str(out))
  code, err = command.interrupt_when(r"runs: +\d+%")
  _last_line(err, "interrupted in run ", "the same command again continues")
  assert code == 130 and not (out / "report.md").exists()
