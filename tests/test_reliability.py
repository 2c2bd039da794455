"""A run survives what happens to real runs: signals, torn files, full disks, a second run.

Every case runs the main job as a user does, in a subprocess, and ends with one line and no
traceback; a `--resume` afterwards must end with the metrics of an uninterrupted run (timings
apart). The runs share a JAX compilation cache, so only the first one compiles; the cases run
concurrently where they are independent.
"""

import contextlib
import dataclasses
import errno
import os
import shutil
import signal
import struct
import subprocess
import sys

import pytest
from tensorboardX.proto.event_pb2 import Event, SessionLog

from vae_jax.training import workdir

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["--epochs", "3", "--train-size", "40", "--batch-size", "8", "--latent-dim", "2",
        "--steps-per-chunk", "2"]
TIMINGS = ("images_per_sec", "compile_seconds", "train_seconds", "eval_seconds", "seconds")
ENOSPC = os.strerror(errno.ENOSPC)

# The main job with one thing done to it from inside, at a known point: the signal named by
# argv[1] is sent to the process itself during the second jitted call after epoch 1's metrics
# row is written, i.e. in the middle of epoch 2; ENOSPC makes epoch 3's picture hit a full disk.
CHILD = """
import errno, os, signal, sys
from vae_jax.training import pictures, train
from experiments import mnist_vae
what, argv = sys.argv[1], sys.argv[2:]
metrics = os.path.join(argv[argv.index("--workdir") + 1], "metrics.jsonl")
if what == "ENOSPC":
  imwrite = pictures.iio.imwrite
  def full_disk(path, *args, **kwargs):
    if path.endswith("_0003.png"):
      raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    return imwrite(path, *args, **kwargs)
  pictures.iio.imwrite = full_disk
else:
  call, seen = train.Steps.call, []
  def signalling_call(self, *args):
    if os.path.exists(metrics) and open(metrics).read().count("\\n") == 1:
      seen.append(1)
      if len(seen) == 2:
        os.kill(os.getpid(), getattr(signal, what))
    return call(self, *args)
  train.Steps.call = signalling_call
sys.exit(mnist_vae.main(argv))
"""


@pytest.fixture(scope="module")
def data(idx_dir):
  return ["--data", f"idx:{idx_dir}", *TINY]


@pytest.fixture(scope="module")
def reference(env, data, tmp_path_factory):
  """An uninterrupted run (the first one, alone: it fills the compilation cache)."""
  path = str(tmp_path_factory.mktemp("reference") / "run")
  code, _, err = Job(env, [*data, "--workdir", path]).finish()
  assert code == 0, err
  assert [r["epoch"] for r in _rows(path)] == [1, 2, 3]
  return path


class Job:
  """A started main job (`python -m experiments.mnist_vae ARGS`, or CHILD with `inject`)."""

  def __init__(self, env, args, inject=None, stdout=subprocess.PIPE):
    cmd = ([sys.executable, "-c", CHILD, inject] if inject else
           [sys.executable, "-m", "experiments.mnist_vae"])
    self.process = subprocess.Popen(cmd + list(args), cwd=ROOT, env=env, text=True,
                                    stdout=stdout, stderr=subprocess.PIPE)

  def finish(self):
    """(exit code, stdout, stderr) once it ends."""
    out, err = self.process.communicate(timeout=600)
    return self.process.returncode, out, err


def _one_line(err, *fragments):
  """The single line on stderr (no traceback), holding every fragment."""
  lines = err.strip().splitlines()
  assert len(lines) == 1 and "Traceback" not in err, err
  for fragment in fragments:
    assert fragment in lines[0], (fragment, lines[0])
  return lines[0]


def _rows(path):
  return workdir.read_rows(os.path.join(path, workdir.METRICS_FILE))


def _results(rows):
  """The rows without their timings: what a seed fixes."""
  return [{k: v for k, v in r.items() if k not in TIMINGS} for r in rows]


def _events(path):
  """The Event protos of a TFRecord file (8-byte length, 4-byte CRC, data, 4-byte CRC)."""
  events, raw, at = [], open(path, "rb").read(), 0
  while at < len(raw):
    length, = struct.unpack("<Q", raw[at:at + 8])
    events.append(Event.FromString(raw[at + 12:at + 12 + length]))
    at += 12 + length + 4
  assert at == len(raw)
  return events


def _event_files(path):
  return sorted(os.path.join(path, n) for n in os.listdir(path) if ".tfevents." in n)


@contextlib.contextmanager
def _small_disk(path, size):
  """A tmpfs of `size` bytes at `path`; None where mounting is not allowed."""
  os.makedirs(path)
  mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", path],
                           capture_output=True, check=False).returncode == 0
  try:
    yield path if mounted else None
  finally:
    if mounted:
      subprocess.run(["umount", path], check=True)


def _wait_stopped(job):
  _, status = os.waitpid(job.process.pid, os.WUNTRACED)
  assert os.WIFSTOPPED(status), f"the run ended (status {status}) instead of stopping"


def test_signals_a_second_run_and_damaged_files(env, data, reference, tmp_path):
  want = _results(_rows(reference))
  w = {name: str(tmp_path / name) for name in ("sigint", "held", "config", "stdout")}

  # Started together: a SIGINT mid-epoch; a run stopped mid-epoch while two more want its
  # workdir; a damaged config.json; a file as workdir and a path under it; a full stdout.
  sigint = Job(env, [*data, "--workdir", w["sigint"]], inject="SIGINT")
  held = Job(env, [*data, "--workdir", w["held"]], inject="SIGSTOP")
  os.makedirs(w["config"])
  with open(os.path.join(w["config"], "config.json"), "w") as f:
    f.write('{"data": "idx:')
  a_file = tmp_path / "a_file"
  a_file.write_text("not a directory")
  with open("/dev/full", "w") as full:
    quick = [Job(env, [*data, "--workdir", w["config"], "--resume"]),
             Job(env, [*data, "--workdir", str(a_file)]),
             Job(env, [*data, "--workdir", str(a_file / "run")]),
             Job(env, [*data, "--workdir", w["stdout"]], stdout=full)]
  _wait_stopped(held)
  pid = held.process.pid
  refused = [Job(env, [*data, "--workdir", w["held"]]),
             Job(env, [*data, "--workdir", w["held"], "--resume"])]
  for job in refused:
    code, _, err = job.finish()
    assert code == 2
    _one_line(err, f"error: workdir {w['held']} is in use by another run (PID {pid})")
  os.kill(pid, signal.SIGTERM)
  os.kill(pid, signal.SIGCONT)

  code, _, err = sigint.finish()
  assert code == 130
  _one_line(err, "interrupted at epoch 2; continue with --resume")
  code, _, err = held.finish()
  assert code == 143
  _one_line(err, "interrupted at epoch 2; continue with --resume")
  for path in (w["sigint"], w["held"]):  # epoch 1 is kept whole, nothing of epoch 2
    assert [r["epoch"] for r in _rows(path)] == [1]
    assert sorted(os.listdir(os.path.join(path, "checkpoints"))) == ["1"]
  messages = [f"{w['config']}/config.json is damaged",
              f"workdir {a_file} is a file, not a directory",
              f"cannot create workdir {a_file}/run: Not a directory",
              f"cannot write to standard output: {ENOSPC}"]
  for job, message in zip(quick, messages):
    code, _, err = job.finish()
    assert code == 2
    _one_line(err, "error: " + message)
  assert a_file.read_text() == "not a directory"

  # The resumes, together: of both interrupted runs; of a copy of the finished run whose newest
  # checkpoint lost a data file's tail; of a copy whose last metrics line is half written.
  damaged, torn = str(tmp_path / "damaged"), str(tmp_path / "torn")
  shutil.copytree(reference, damaged)
  data_files = sorted(os.path.join(root, n) for root, _, names in
                      os.walk(os.path.join(damaged, "checkpoints", "3")) for n in names
                      if os.path.basename(root) == "d")
  biggest = max(data_files, key=os.path.getsize)
  os.truncate(biggest, os.path.getsize(biggest) // 2)
  shutil.copytree(reference, torn)
  metrics = os.path.join(torn, "metrics.jsonl")
  text = open(metrics).read()
  with open(metrics, "w") as f:
    f.write(text[:len(text) - len(text.splitlines()[-1]) // 2 - 1])
  resumes = {path: Job(env, [*data, "--workdir", path, "--resume"])
             for path in (w["sigint"], w["held"], damaged, torn)}
  for path, job in resumes.items():
    code, out, err = job.finish()
    assert code == 0, err
    assert _results(_rows(path)) == want
    warnings = err.strip().splitlines()
    assert "Traceback" not in err
    if path == damaged:
      assert len(warnings) == 1, err
      assert warnings[0].startswith(f"warning: checkpoint {damaged}/checkpoints/3 does not "
                                    "restore (") and "trying epoch 2's checkpoint" in warnings[0]
      assert "epochs 3..3" in out
    elif path == torn:
      assert warnings[0].startswith(f"warning: {metrics}: dropped the torn last line 3"), err
      assert warnings[1].startswith(f"warning: checkpoint {torn}/checkpoints/3 is past"), err
      assert len(warnings) == 2 and "epochs 3..3" in out
    else:
      assert not warnings and "epochs 2..3" in out
  # TensorBoard hides the earlier files' events from the resumed epoch on.
  start = [e for e in _events(_event_files(damaged)[-1]) if e.HasField("session_log")]
  assert [(e.step, e.session_log.status) for e in start] == [(3, SessionLog.START)]


def test_a_full_disk_keeps_every_earlier_epoch(env, data, reference, tmp_path):
  ref, want = reference, _rows(reference)
  # Room for everything but a third checkpoint (orbax drops the oldest only after saving).
  checkpoint = sum(-(-os.path.getsize(os.path.join(r, n)) // 4096) * 4096 for r, _, names in
                   os.walk(os.path.join(ref, "checkpoints", "3")) for n in names)
  with _small_disk(str(tmp_path / "disk"), int(2.5 * checkpoint) + (64 << 10)) as disk:
    run = os.path.join(disk or str(tmp_path), "run")
    code, out, err = Job(env, [*data, "--workdir", run],
                         inject=None if disk else "ENOSPC").finish()
    assert code == 2
    _one_line(err, "error: cannot write ", f" {run}/", f": {ENOSPC}")
    assert "epoch    2" in out and "epoch    3" not in out
    assert _results(_rows(run)) == _results(want[:2])
    copy = shutil.copytree(run, str(tmp_path / "copy"))
  code, _, err = Job(env, [*data, "--workdir", copy, "--resume"]).finish()
  assert code == 0 and not err.strip(), err
  assert _results(_rows(copy)) == _results(want)
  # The event file holds each epoch's metrics and picture.
  events = [e for e in _events(_event_files(ref)[0]) if e.HasField("summary")]
  assert [e.step for e in events] == [1, 2, 3]
  for event, row in zip(events, want):
    values = {v.tag: v for v in event.summary.value}
    assert values["train/loss"].simple_value == pytest.approx(row["train_loss"], rel=1e-6)
    assert values["test/elbo"].simple_value == pytest.approx(row["test_elbo"], rel=1e-6)
    assert values["run/images_per_sec"].simple_value == pytest.approx(row["images_per_sec"],
                                                                       rel=1e-6)
    with open(os.path.join(ref, f"image_at_epoch_{row['epoch']:04d}.png"), "rb") as f:
      assert values["pictures/samples_and_reconstructions"].image.encoded_image_string == f.read()


def test_the_lock_names_its_holder_and_dies_with_it(tmp_path):
  path = str(tmp_path / "w")
  holder = subprocess.Popen(
      [sys.executable, "-c", "import sys, time\nfrom vae_jax.training import workdir\n"
       "with workdir.locked(sys.argv[1]):\n  print('locked', flush=True)\n  time.sleep(600)",
       path], cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT), stdout=subprocess.PIPE, text=True)
  try:
    assert holder.stdout.readline() == "locked\n"
    with pytest.raises(workdir.UserError, match=rf"in use by another run \(PID {holder.pid}\)"):
      with workdir.locked(path):
        pass
  finally:
    holder.kill()  # SIGKILL: no cleanup code runs
    holder.wait()
  with workdir.locked(path):
    assert open(os.path.join(path, workdir.LOCK_FILE)).read() == f"{os.getpid()}\n"


def test_torn_and_damaged_files_are_told_apart(tmp_path):
  path = str(tmp_path / "metrics.jsonl")
  rows = [{"epoch": 1, "x": 0.5}, {"epoch": 2, "x": 0.25}]
  workdir.write_rows(path, rows)
  assert workdir.read_rows(path) == rows
  good = open(path).read()
  with open(path, "w") as f:
    f.write(good + '{"epoch": 3, "x": 0.1')
  with pytest.warns(UserWarning, match="dropped the torn last line 3"):
    assert workdir.read_rows(path) == rows
  with open(path, "w") as f:
    f.write('{"epoch": 1, "x\n' + good)
  with pytest.raises(workdir.UserError, match="line 1 is not JSON"):
    workdir.read_rows(path)
  with open(path, "w") as f:
    f.write(good + good)  # two runs' rows interleaved
  with pytest.raises(workdir.UserError, match=r"rows are epochs \[1, 2, 1, 2\], not 1..4"):
    workdir.read_rows(path)


def test_divergence_in_the_first_epoch_says_no_checkpoint_is_kept(idx_dir, tmp_path):
  from vae_jax import config
  from vae_jax.training import run  # pylint: disable=import-outside-toplevel
  # Adam's first step moves every parameter by about the learning rate: the second step overflows.
  cfg = dataclasses.replace(config.tiny(), data=f"idx:{idx_dir}", learning_rate=1e30, epochs=1)
  path = str(tmp_path / "w")
  with pytest.raises(run.TrainingDiverged,
                     match=r"\(epoch 1\); stopped, no epoch had finished, so there is no checkpoint"):
    run.train_and_evaluate(cfg, path)
  assert run.read_metrics(path) == [] and os.listdir(os.path.join(path, "checkpoints")) == []
