"""Data-parallel training gives the same run on any strategy, device count and process count.

Training runs in child processes with simulated CPU devices (JAX_NUM_CPU_DEVICES): this process's
JAX keeps its one device. Each child runs several tiny configs, since JAX start-up and compilation
dominate the cost.

Tolerances (float32; the runs differ only in the summation order of the gradients and sums):
  parameters after 10 Adam steps: atol 1e-2 * lr = 1e-6 (measured <= 2.3e-8), as in test_parity.
  test ELBO: rtol 1e-6 (measured <= 2.3e-7: sums of 16 per-example terms of about 500).
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
from vae_jax import run

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = config_lib.tiny()
PARAM_ATOL = 1e-2 * TINY.learning_rate
ELBO_RTOL = 1e-6

# Trains each run of a JSON spec in one process; a run's UserError is printed as JSON, not raised,
# so that one child can also check refusals.
CHILD = """
import dataclasses, json, sys
from vae_jax import config, parallel, run
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


def _start(runs, num_devices: int, distributed=(None, None, None)) -> subprocess.Popen:
  env = dict(os.environ, JAX_NUM_CPU_DEVICES=str(num_devices), PYTHONPATH=REPO)
  spec = json.dumps({"distributed": list(distributed), "runs": runs})
  return subprocess.Popen([sys.executable, "-c", CHILD, spec], cwd=REPO, env=env, text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _finish(process: subprocess.Popen) -> list[dict]:
  """Waits for a child; returns the errors it reported."""
  out, err = process.communicate(timeout=600)
  assert process.returncode == 0, err[-3000:]
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
def four_devices(tmp_path_factory, data):
  """Workdirs of runs in one process with 4 CPU devices: every strategy, and a resumed run."""
  root = tmp_path_factory.mktemp("four_devices")
  # The reference loops one jitted step at a time; tiny()'s scan chunks (2 + 2 + 1 steps) run
  # under sharded and pmap, so both training paths are compared.
  runs = {
      "none": dict(parallel="none", loop="step"),
      "sharded": dict(parallel="sharded"),
      "pmap": dict(parallel="pmap"),
      # Epoch 1 on 2 devices, resumed for epoch 2 under the other strategy on 4 devices.
      "resumed": dict(parallel="sharded", devices=2, loop="step", epochs=1),
  }
  spec = [dict(workdir=str(root / name), config=dict(data=data, **c)) for name, c in runs.items()]
  spec.append(dict(workdir=str(root / "resumed"), resume=True,
                   config=dict(data=data, parallel="pmap", devices=4, loop="step")))
  assert _finish(_start(spec, 4)) == []
  return {name: str(root / name) for name in runs}


def test_strategies_agree(four_devices):
  for name in ("sharded", "pmap"):
    _assert_same_run(four_devices[name], four_devices["none"])


def test_resume_onto_other_device_count_and_strategy(four_devices):
  resumed = run.read_metrics(four_devices["resumed"])
  assert [r["epoch"] for r in resumed] == [1, 2]
  _assert_same_run(four_devices["resumed"], four_devices["none"])


def test_pictures_in_every_mode(four_devices):
  for workdir in four_devices.values():
    names = set(os.listdir(workdir))
    expected = {"image_at_epoch_0001.png", "image_at_epoch_0002.png", "training.gif",
                "curves.png", "latent_manifold.png"}
    assert expected <= names, (workdir, sorted(names))


def test_batch_not_dividing_over_devices_is_a_one_line_error(tmp_path, data):
  env = dict(os.environ, JAX_NUM_CPU_DEVICES="4")
  result = subprocess.run(
      [sys.executable, "-m", "experiments.mnist_vae", "--data", data, "--batch-size", "6",
       "--epochs", "1", "--workdir", str(tmp_path / "run")],
      cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
  assert result.returncode == 2, result.stderr
  assert result.stderr == ("error: --batch-size 6 does not divide over 4 devices; use a multiple "
                           "of 4 or fewer --devices\n")
  assert not (tmp_path / "run").exists()


def test_multiprocess_matches_one_process(tmp_path, four_devices, data):
  """2 processes x 2 CPU devices (Gloo collectives over localhost) train as 1 process x 4."""
  runs = [dict(workdir=str(tmp_path / kind), config=dict(data=data, parallel=kind, loop="step"))
          for kind in ("sharded", "pmap", "none")]
  address = f"localhost:{_free_port()}"
  children = [_start(runs, 2, (address, 2, i)) for i in range(2)]
  errors = [_finish(child) for child in children]
  refusal = {"workdir": runs[2]["workdir"], "error": "--parallel none runs on one device; with "
             "several processes use sharded or pmap"}
  assert errors == [[refusal], [refusal]]
  for kind in ("sharded", "pmap"):
    _assert_same_run(str(tmp_path / kind), four_devices[kind])
    assert "image_at_epoch_0002.png" in os.listdir(tmp_path / kind)
