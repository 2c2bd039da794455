"""Multi-host runs through the real CLI: one process per device, a lost process, an exact restart.

One uninterrupted run of 1 process x 2 CPU devices is the reference. Beside it, 2 processes x 1
device start the same run and process 1 is killed (SIGKILL) during epoch 2; both are then
restarted with --resume by the launcher, with the command of docs/multihost.md. Tolerances as in
tests/test_parallel.py (the runs differ only in the summation order of the gradients and sums).
"""

import json
import os
import re
import signal
import subprocess
import sys
import time

import jax
import pytest

from vae_jax.training import parallel, run
from test_parallel import ELBO_RTOL, REPO, _assert_same_run, _free_port

# tiny(): 10 steps of 8 per epoch, so that the kill lands inside an epoch; --loop step compiles
# only the step and the evaluation.
TINY = ["--epochs", "3", "--latent-dim", "2", "--batch-size", "8", "--train-size", "80",
        "--loop", "step", "--parallel", "sharded"]
# The survivor's stated bound (docs/multihost.md), and slack for a loaded machine.
BOUND_SECONDS = parallel.HEARTBEAT_SECONDS + 30


def _cli(args, cpu_env, devices: int, out: str) -> subprocess.Popen:
  env = dict(cpu_env, JAX_NUM_CPU_DEVICES=str(devices))
  with open(out + ".out", "w") as stdout, open(out + ".err", "w") as stderr:
    return subprocess.Popen([sys.executable, "-m", *args], cwd=REPO, env=env, stdout=stdout,
                            stderr=stderr)


def _read(path: str) -> str:
  with open(path) as f:
    return f.read()


def _docs_example() -> list[str]:
  """The launcher command of docs/multihost.md, after its environment variable."""
  text = _read(os.path.join(REPO, "docs", "multihost.md"))
  line = next(l for l in text.splitlines() if "python -m experiments.launch --processes 2" in l)
  return line.split("python -m ", 1)[1].split()


@pytest.fixture(scope="module")
def runs(tmp_path_factory, idx_dir, cpu_env):
  root = tmp_path_factory.mktemp("multihost")
  data = ["--data", f"idx:{idx_dir}"]
  reference = str(root / "reference")
  killed = str(root / "killed")
  children = [_cli(["experiments.mnist_vae", *data, *TINY, "--workdir", reference], cpu_env, 2,
                   reference)]
  address = f"localhost:{_free_port()}"
  children += [_cli(["experiments.mnist_vae", *data, *TINY, "--workdir", killed,
                     "--coordinator", address, "--num-processes", "2", "--process-id", str(i)],
                    cpu_env, 1, f"{killed}.p{i}") for i in range(2)]
  try:
    deadline = time.monotonic() + 600
    while "epoch    1" not in _read(f"{killed}.p0.out"):
      assert children[1].poll() is None and time.monotonic() < deadline, _read(f"{killed}.p0.err")
      time.sleep(0.05)
    os.kill(children[2].pid, signal.SIGKILL)
    killed_at = time.monotonic()
    children[1].wait(timeout=BOUND_SECONDS + 60)
    survivor_seconds = time.monotonic() - killed_at
    children[0].wait(timeout=600)
  finally:
    for child in children:
      child.kill()
  assert children[0].returncode == 0, _read(reference + ".err")[-3000:]
  rows_after_kill = run.read_metrics(killed)
  checkpoints_after_kill = sorted(os.listdir(os.path.join(killed, "checkpoints")))
  env = dict(cpu_env, JAX_NUM_CPU_DEVICES="1")
  restart = subprocess.run([sys.executable, "-m", *_docs_example(), *data, *TINY,
                            "--workdir", killed, "--resume"],
                           cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
  return dict(reference=reference, killed=killed, survivor=children[1],
              survivor_seconds=survivor_seconds, rows_after_kill=rows_after_kill,
              checkpoints_after_kill=checkpoints_after_kill, restart=restart)


def test_one_process_per_device_matches_one_process(runs):
  """2 processes x 1 device trained the epochs before the kill as 1 process x 2 devices."""
  got, want = runs["rows_after_kill"], run.read_metrics(runs["reference"])
  assert len(got) >= 1
  for key in ("train_loss", "test_elbo"):
    for g, w in zip(got, want):
      assert g[key] == pytest.approx(w[key], rel=ELBO_RTOL), key


def test_each_process_feeds_its_own_half_of_every_batch(runs):
  """Both processes name their rows of each global batch of 8: disjoint halves that cover it
  (--train-size 80: 10 steps, 40 of the 80 slots each)."""
  lines = {}
  for i in range(2):
    out = _read(f"{runs['killed']}.p{i}.out")
    lines[i] = next(l for l in out.splitlines() if l.startswith(f"process {i} of 2 feeds"))
  assert lines[0].startswith("process 0 of 2 feeds rows 0..3 of every global batch of 8: 40 of ")
  assert lines[1].startswith("process 1 of 2 feeds rows 4..7 of every global batch of 8: 40 of ")
  assert all(l.endswith("the 80 training slots an epoch") for l in lines.values())


def test_lost_process_ends_the_survivor_with_one_line(runs):
  survivor, killed = runs["survivor"], runs["killed"]
  err = _read(f"{killed}.p0.err")
  assert survivor.returncode == 2, err[-3000:]
  assert runs["survivor_seconds"] < BOUND_SECONDS
  epoch = len(runs["rows_after_kill"])
  assert str(epoch) in runs["checkpoints_after_kill"]
  assert err.splitlines()[-1] == (f"error: process 1 of 2 stopped responding; the last complete "
                                  f"checkpoint is epoch {epoch}; restart all processes with "
                                  "--resume")
  assert "Traceback" not in err
  assert [l for l in err.splitlines() if l.startswith("error:")] == err.splitlines()[-1:]


def test_restart_with_resume_ends_as_the_uninterrupted_run(runs):
  restart = runs["restart"]
  assert restart.returncode == 0, restart.stderr[-3000:]
  assert [r["epoch"] for r in run.read_metrics(runs["killed"])] == [1, 2, 3]
  _assert_same_run(runs["killed"], runs["reference"])


def test_launcher_prefixes_each_process_and_names_the_coordinator(runs):
  out = runs["restart"].stdout
  lines = [l for l in out.splitlines() if l]
  assert lines and all(re.match(r"\[p[01]\] ", l) for l in lines), out
  start = next(l for l in lines if l.startswith("[p0] data "))
  assert "2 processes (--coordinator localhost:" in start and "this one 0" in start
  epoch = len(runs["rows_after_kill"])
  assert f"epochs {epoch + 1}..3" in start
  assert json.loads(json.dumps(run.read_metrics(runs["killed"])))  # rows are whole JSON


def test_launcher_stops_all_when_one_dies(tmp_path, cpu_env):
  """A process that fails makes the launcher stop the others and say which (no JAX needed)."""
  script = tmp_path / "job.py"
  script.write_text("import sys, time\n"
                    "i = int(sys.argv[sys.argv.index('--process-id') + 1])\n"
                    "print('started', flush=True)\n"
                    "sys.exit(3) if i == 1 else time.sleep(600)\n")
  env = dict(cpu_env, PYTHONPATH=f"{REPO}{os.pathsep}{tmp_path}")
  start = time.monotonic()
  result = subprocess.run([sys.executable, "-m", "experiments.launch", "--processes", "2",
                           "--module", "job", "--", "--x"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)
  assert time.monotonic() - start < 60
  assert result.returncode == 3
  assert sorted(result.stdout.splitlines()) == ["[p0] started", "[p1] started"]
  assert result.stderr.splitlines()[-1] == ("error: process 1 of 2 exited with status 3; "
                                            "stopped the others")


def test_cluster_environment_is_jax_detection(monkeypatch):
  """srun's variables are found as jax.distributed.initialize() finds them; one task stays alone."""
  for name in ("SLURM_JOB_ID", "OMPI_MCA_orte_hnp_uri", "KUBERNETES_SERVICE_HOST"):
    monkeypatch.delenv(name, raising=False)
  assert parallel.cluster_environment() is None
  srun = dict(SLURM_JOB_ID="7", SLURM_STEP_NODELIST="localhost", SLURM_NTASKS="2",
              SLURM_PROCID="1", SLURM_LOCALID="0")
  for name, value in srun.items():
    monkeypatch.setenv(name, value)
  env = parallel.cluster_environment()
  assert env.__name__ == "SlurmCluster"
  assert (env.get_process_count(), env.get_process_id()) == (2, 1)
  monkeypatch.setenv("SLURM_NTASKS", "1")
  parallel.initialize_distributed(None, None, None)
  assert not jax.distributed.is_initialized()


def test_lost_coordinator_ends_the_survivor_with_one_line(tmp_path, idx_dir, cpu_env):
  """kill -9 of process 0, which hosts JAX's coordination service: the survivor ends with one line,
  whether its own collective fails first or JAX's C++ runtime aborts it and its supervising parent
  (vae_jax.training.supervise) says so."""
  workdir = str(tmp_path / "run")
  address = f"localhost:{_free_port()}"
  children = [_cli(["experiments.mnist_vae", "--data", f"idx:{idx_dir}", *TINY, "--workdir",
                    workdir, "--coordinator", address, "--num-processes", "2", "--process-id",
                    str(i)], cpu_env, 1, f"{workdir}.p{i}") for i in range(2)]
  try:
    deadline = time.monotonic() + 600
    while "epoch    1" not in _read(f"{workdir}.p0.out"):
      assert children[0].poll() is None and time.monotonic() < deadline, _read(f"{workdir}.p0.err")
      time.sleep(0.05)
    os.kill(children[0].pid, signal.SIGKILL)
    killed_at = time.monotonic()
    children[1].wait(timeout=BOUND_SECONDS + 60)
    seconds = time.monotonic() - killed_at
  finally:
    for child in children:
      child.kill()
  err = _read(f"{workdir}.p1.err")
  assert children[1].returncode == 2, err[-3000:]
  assert seconds < BOUND_SECONDS
  epoch = run.workdir_lib.last_complete_epoch(workdir)
  assert epoch >= 1
  # Which of the two ends comes first is a race: the survivor's next collective raising in Python
  # (vae_jax.training.parallel.lost_process), or JAX's C++ runtime aborting it (the supervisor's
  # line). Either is the whole of stderr, one line naming process 0 and the checkpoint.
  kept = f"the last complete checkpoint is epoch {epoch}; restart all processes with --resume"
  assert err.splitlines() in (
      [f"error: process 0 of 2 stopped responding; {kept}"],
      ["error: process 1 of 2: process 0, the coordinator, stopped responding (JAX's distributed "
       f"service ended this process); {kept}"]), err[-3000:]
