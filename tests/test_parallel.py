"""Data-parallel training gives the same run on any strategy, device count and process count.

Training runs in child processes with simulated CPU devices (JAX_NUM_CPU_DEVICES): this process's
JAX keeps its one device. Each child runs several tiny configs, since JAX start-up and compilation
dominate the cost.

Tolerances (float32; the runs differ only in the summation order of the gradients and sums):
  parameters after 10 Adam steps: atol 1e-2 * lr = 1e-6 (measured <= 1.5e-8), as in test_parity.
  test ELBO: rtol 1e-6 (measured <= 2.3e-7; the mean of 24 per-example terms of about 540).
"""

import json
import os
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest
from flax import nnx

from vae_jax import config as config_lib
from vae_jax.training import run

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PARAM_ATOL = 1e-2 * config_lib.tiny().learning_rate
ELBO_RTOL = 1e-6

# Trains each run of a JSON spec in one process; a run's UserError is printed as JSON, not raised,
# so that one child can also check refusals.
CHILD = """
import dataclasses, json, sys
from vae_jax import config
from vae_jax.training import parallel, run
from vae_jax.errors import UserError
spec = json.loads(sys.argv[1])
parallel.initialize_distributed(*spec["distributed"])
for r in spec["runs"]:
  try:
    run.train_and_evaluate(dataclasses.replace(config.tiny(), **r["config"]), r["workdir"],
                           resume=r.get("resume", False))
  except UserError as e:
    print(json.dumps({"workdir": r["workdir"], "error": str(e)}), flush=True)
"""


def _start(runs, cpu_env, num_devices: int, log: str,
           distributed=(None, None, None)) -> subprocess.Popen:
  """Starts a child; its output goes to a file, as a full pipe would stall it and its peers."""
  env = dict(cpu_env, JAX_NUM_CPU_DEVICES=str(num_devices))
  spec = json.dumps({"distributed": list(distributed), "runs": runs})
  with open(log, "w") as f:
    process = subprocess.Popen([sys.executable, "-c", CHILD, spec], cwd=REPO, env=env,
                               stdout=f, stderr=subprocess.STDOUT)
  process.log = log
  return process


def _finish(process: subprocess.Popen) -> list[dict]:
  """Waits for a child; returns the errors it reported."""
  process.wait(timeout=600)
  with open(process.log) as f:
    out = f.read()
  assert process.returncode == 0, out[-3000:]
  return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def _params(workdir: str) -> dict[str, np.ndarray]:
  """The newest checkpoint's parameters, by path."""
  _, _, model = run.restore_model(workdir)
  flat = jax.tree_util.tree_leaves_with_path(nnx.to_pure_dict(nnx.state(model, nnx.Param)))
  return {jax.tree_util.keystr(k): np.asarray(v) for k, v in flat}


def _test_elbos(workdir: str) -> list[float]:
  return [r["test_elbo"] for r in run.read_metrics(workdir)]


def _assert_same_run(workdir: str, reference: str) -> None:
  np.testing.assert_allclose(_test_elbos(workdir), _test_elbos(reference), rtol=ELBO_RTOL)
  got, want = _params(workdir), _params(reference)
  assert got.keys() == want.keys()
  for k in want:
    np.testing.assert_allclose(got[k], want[k], rtol=0, atol=PARAM_ATOL, err_msg=k)


@pytest.fixture(scope="module")
def data(idx_dir):
  return f"idx:{idx_dir}"


@pytest.fixture(scope="module")
def runs(tmp_path_factory, data, cpu_env):
  """Workdirs of every run, trained at once by 1 process x 4 CPU devices and 2 processes x 2.

  The single process runs every strategy and a resumed run; the 2 processes run sharded and
  pmap (from "multi/" on), and ask for --parallel none, which they must refuse.
  """
  root = tmp_path_factory.mktemp("runs")
  # sharded and pmap run tiny()'s scan chunks (2 + 2 + 1 steps); the rest loop one jitted step
  # at a time, so both training paths are compared.
  single = {
      "sharded": dict(parallel="sharded"),
      "pmap": dict(parallel="pmap"),
      # Epoch 1 on one device, resumed below for epoch 2 sharded over 2 devices.
      "resumed": dict(parallel="none", loop="step", epochs=1),
  }
  multi = {f"multi/{kind}": dict(parallel=kind, loop="step")
           for kind in ("sharded", "pmap", "none")}

  def spec(configs):
    return [dict(workdir=str(root / name), config=dict(data=data, **c))
            for name, c in configs.items()]

  resume = dict(workdir=str(root / "resumed"), resume=True,
                config=dict(data=data, parallel="sharded", devices=2, loop="step"))
  address = f"localhost:{_free_port()}"
  children = [_start(spec(single) + [resume], cpu_env, 4, str(root / "single.log"))]
  children += [_start(spec(multi), cpu_env, 2, str(root / f"multi{i}.log"), (address, 2, i))
               for i in range(2)]
  try:
    errors = [_finish(child) for child in children]
  finally:  # a failed process leaves its peer waiting in a collective
    for child in children:
      child.kill()
  refusal = {"workdir": str(root / "multi/none"), "error": "--parallel none runs on one device; "
             "with several processes use sharded or pmap"}
  assert errors == [[], [refusal], [refusal]]
  return {name: str(root / name) for name in (*single, "multi/sharded", "multi/pmap")}


def test_sharded_and_pmap_agree(runs):
  _assert_same_run(runs["pmap"], runs["sharded"])


def test_resume_onto_other_device_count_and_strategy(runs):
  """Epoch 1 on one device (--parallel none), epoch 2 sharded over 2: as sharded over 4."""
  assert [r["epoch"] for r in run.read_metrics(runs["resumed"])] == [1, 2]
  _assert_same_run(runs["resumed"], runs["sharded"])


def test_multiprocess_matches_one_process(runs):
  """2 processes x 2 CPU devices (Gloo collectives over localhost) train as 1 process x 4."""
  for kind in ("sharded", "pmap"):
    _assert_same_run(runs[f"multi/{kind}"], runs[kind])


def test_pictures_in_every_mode(runs):
  expected = {"image_at_epoch_0001.png", "image_at_epoch_0002.png", "training.gif", "curves.png",
              "latent_manifold.png"}
  for workdir in runs.values():
    assert expected <= set(os.listdir(workdir)), workdir


def test_batch_not_dividing_over_devices_is_a_one_line_error(tmp_path, data, cpu_env):
  env = dict(cpu_env, JAX_NUM_CPU_DEVICES="4")
  result = subprocess.run(
      [sys.executable, "-m", "experiments.mnist_vae", "--data", data, "--batch-size", "6",
       "--epochs", "1", "--workdir", str(tmp_path / "run")],
      cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
  assert result.returncode == 2, result.stderr
  assert result.stderr == ("error: --batch-size 6 does not divide over 4 devices; use a multiple "
                           "of 4 or fewer --devices\n")
  assert not (tmp_path / "run").exists()
