"""The supervising parent of a multi-process run's process (vae_jax.training.supervise).

The parent is checked with a stand-in child (no JAX) that prints what JAX's C++ runtime prints
when it loses the coordination service and then aborts; tests/test_multihost.py kills the real
coordinator.
"""

import io
import json
import os
import signal
import subprocess
import sys
import textwrap
import time

from vae_jax import errors
from vae_jax.training import supervise, workdir

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GLOG_E = ("E1203 06:07:16.269854   29113 coordination_service_agent.cc:289] Polled an error from "
          "coordination service (this can be an error from this or another task).\n")
GLOG_F = ("F1203 06:07:16.269975   29113 client.h:80] Terminating process because the JAX "
          "distributed service detected fatal errors. This most likely indicates that another "
          "task died\n")


def test_wanted_only_for_one_process_of_several():
  assert supervise.wanted(["--coordinator", "h:1", "--num-processes", "2"], {})
  assert supervise.wanted(["--coordinator=h:1"], {})
  assert supervise.wanted([], {"SLURM_NTASKS": "4"})
  assert not supervise.wanted([], {"SLURM_NTASKS": "1"})
  assert not supervise.wanted(["--data", "mnist-5k"], {})
  assert not supervise.wanted(["--coordinator", "h:1"], {supervise.CHILD_ENV: "1"})
  assert not supervise.wanted(["--coordinator", "h:1"], {supervise.OPT_OUT: "0"})


def _relay(chunks, aborted):
  out = io.StringIO()
  relay = supervise._Relay(out)  # pylint: disable=protected-access
  for c in chunks:
    relay.feed(c)
  relay.finish(aborted)
  return out.getvalue(), relay.fatal


def test_relay_keeps_every_line_of_a_run_that_did_not_abort():
  text = "data x\n" + GLOG_E + "epoch    1\n" + GLOG_E + "\rbar 1/3\rbar 2/3\rbar 3/3\ndone\n"
  # However the stream is cut into reads, the output is the input.
  for size in (1, 7, 64, len(text)):
    got, fatal = _relay([text[i:i + size] for i in range(0, len(text), size)], aborted=False)
    assert got == text and not fatal, size


def test_relay_writes_a_progress_bar_before_its_line_ends():
  out = io.StringIO()
  relay = supervise._Relay(out)  # pylint: disable=protected-access
  relay.feed("epoch 1/3:  50%|#####     | 5/10")
  assert out.getvalue() == "epoch 1/3:  50%|#####     | 5/10"


def test_relay_drops_the_runtime_lines_of_the_abort():
  text = "epoch    3 done\n" + GLOG_E + GLOG_F + "*** Check failure stack trace: ***\n    @ 0x7f\n"
  got, fatal = _relay([text[i:i + 5] for i in range(0, len(text), 5)], aborted=True)
  assert got == "epoch    3 done\n" and fatal


GLOG_W_GRPC = (  # one record over three lines, as the runtime wrote it when the coordinator died
    "W1203 08:47:37.338473   23800 preemption_sync_manager.cc:147] Failed to retrieve preemption "
    "notice from coordination service: UNAVAILABLE: Socket closed\n"
    "Additional GRPC error information from remote target coordination_service while calling "
    "/xla.coordination.CoordinationService/GetKeyValue:\n"
    ":UNKNOWN:Error received from peer  {grpc_status:14, grpc_message:\"Socket closed\"}. This is "
    "only expected if one of the tasks is unhealthy. Check the logs for the actual root cause.\n")


def test_relay_drops_a_record_whose_message_goes_on_over_several_lines():
  text = "epoch    1 done\n" + GLOG_W_GRPC + GLOG_E + GLOG_F
  for size in (3, 64, len(text)):
    got, fatal = _relay([text[i:i + size] for i in range(0, len(text), size)], aborted=True)
    assert got == "epoch    1 done\n" and fatal, size


def test_relay_drops_the_records_that_the_childs_own_error_line_follows():
  """The survivor's failed collective ends it with its own line; the runtime's records of the
  same loss came just before it (CI saw this order) and are not part of what the user sees."""
  glog_e_barrier = ("E1203 16:53:17.863393    9347 preemption_sync_manager.cc:159] Failed to "
                    "cancel preemption barrier: FAILED_PRECONDITION\n")
  line = ("error: process 0 of 2 stopped responding; the last complete checkpoint is epoch 1; "
          "restart all processes with --resume\n")
  records = "epoch    1 done\n" + GLOG_W_GRPC + glog_e_barrier
  for size in (1, 3, 64, len(records)):
    out = io.StringIO()
    relay = supervise._Relay(out)  # pylint: disable=protected-access
    for i in range(0, len(records), size):
      relay.feed(records[i:i + size])
    relay.quiet()  # the records ended; the line comes later, maybe cut into reads
    for i in range(0, len(line), size):
      relay.feed(line[i:i + size])
      relay.quiet()
    relay.finish(aborted=False)
    assert out.getvalue() == "epoch    1 done\n" + line and not relay.fatal, size
  # A line that only begins like one is output of the job: the records before it stay.
  got, _ = _relay([GLOG_E, "e", "rrors so far: 0\n"], aborted=False)
  assert got == GLOG_E + "errors so far: 0\n"


def test_relay_ends_a_record_at_a_quiet_moment():
  out = io.StringIO()
  relay = supervise._Relay(out)  # pylint: disable=protected-access
  relay.feed(GLOG_W_GRPC)
  assert out.getvalue() == "" and relay.in_record  # held: it may still be the abort
  relay.quiet()
  relay.feed("epoch    2 done\n")  # output of the job: the record was not the abort
  assert out.getvalue() == GLOG_W_GRPC + "epoch    2 done\n"
  relay.feed("epoch 3/3:  50%|#####")  # and what follows passes at once again
  assert out.getvalue().endswith("epoch 3/3:  50%|#####")
  relay.finish(aborted=False)
  assert not relay.fatal


def _workdir(tmp_path, rows: int, checkpoints: list[int], manifest: list[int]) -> str:
  d = tmp_path / "run"
  (d / "checkpoints").mkdir(parents=True)
  workdir.write_rows(str(d / workdir.METRICS_FILE), [{"epoch": e} for e in range(1, rows + 1)])
  for e in checkpoints:
    (d / "checkpoints" / str(e)).mkdir()
    if e in manifest:
      (d / "checkpoints" / str(e) / workdir.MANIFEST).write_text("{}")
  return str(d)


def test_last_complete_epoch_needs_the_manifest_and_the_metrics_row(tmp_path):
  # Epoch 4's checkpoint has no manifest (torn), epoch 5's no metrics row: epoch 3 is restored.
  d = _workdir(tmp_path, rows=4, checkpoints=[2, 3, 4, 5], manifest=[2, 3, 5])
  assert workdir.last_complete_epoch(d) == 3
  assert workdir.last_complete_epoch(str(tmp_path / "none")) == 0


def test_abort_line_names_the_coordinator_and_the_checkpoint(tmp_path):
  d = _workdir(tmp_path, rows=3, checkpoints=[2, 3], manifest=[2, 3])
  assert supervise.abort_line({"workdir": d, "process": 1, "processes": 2}) == (
      "error: process 1 of 2: process 0, the coordinator, stopped responding (JAX's distributed "
      "service ended this process); the last complete checkpoint is epoch 3; restart all "
      "processes with --resume")
  assert "no epoch had finished" in supervise.abort_line({})


CHILD = textwrap.dedent("""
    import os, sys, time
    from vae_jax.training import supervise
    mode = sys.argv[1]
    supervise.tell(sys.argv[2], 1, 2)
    print("epoch    1", flush=True)
    sys.stderr.write({glog_e!r})
    sys.stderr.flush()
    time.sleep(4 * supervise.RECORD_QUIET_S)  # the record has ended: what follows is not its part
    sys.stderr.write("a line of its own\\n")
    sys.stderr.flush()
    if mode == "abort":
        sys.stderr.write({glog_e!r} + {glog_f!r} + "*** Check failure stack trace: ***\\n")
        sys.stderr.flush()
        os.abort()
    if mode == "error_then_abort":  # its own line first, then the runtime's abort
        sys.stderr.write("error: process 0 of 2 stopped responding; restart\\n")
        sys.stderr.flush()
        sys.stderr.write({glog_e!r} + {glog_f!r} + "*** Check failure stack trace: ***\\n")
        sys.stderr.flush()
        os.abort()
    if mode == "sleep":
        print(os.getpid(), flush=True)
        time.sleep(600)
    sys.exit(int(mode))
""").format(glog_e=GLOG_E, glog_f=GLOG_F)


def _supervised(tmp_path, mode: str, **kwargs):
  script = tmp_path / "child.py"
  script.write_text(CHILD)
  run_dir = _workdir(tmp_path, rows=2, checkpoints=[1, 2], manifest=[1, 2])
  code = ("import sys; from vae_jax.training import supervise; "
          f"sys.exit(supervise.supervise([sys.executable, {str(script)!r}, {mode!r}, "
          f"{run_dir!r}]))")
  env = dict(os.environ, PYTHONPATH=REPO)
  env.pop(supervise.CHILD_ENV, None)
  return subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, **kwargs)


def test_an_aborted_child_becomes_one_line_and_status_2(tmp_path):
  parent = _supervised(tmp_path, "abort")
  out, err = parent.communicate(timeout=60)
  assert parent.returncode == 2
  assert out == "epoch    1\n"
  assert err.splitlines() == [
      GLOG_E.rstrip("\n"), "a line of its own",
      "error: process 1 of 2: process 0, the coordinator, stopped responding (JAX's distributed "
      "service ended this process); the last complete checkpoint is epoch 2; restart all "
      "processes with --resume"]


def test_a_child_that_said_its_line_before_the_abort_keeps_its_line(tmp_path):
  """Which end comes first is a race (tests/test_multihost.py): the child's own line, once said,
  is the only error line, and the abort adds none."""
  parent = _supervised(tmp_path, "error_then_abort")
  out, err = parent.communicate(timeout=60)
  assert parent.returncode == 2
  assert err.splitlines() == [GLOG_E.rstrip("\n"), "a line of its own",
                              "error: process 0 of 2 stopped responding; restart"]


def test_an_error_line_is_one_write(monkeypatch):
  """JAX's C++ runtime writes to the same stderr: a line written in two parts (print's text, then
  its newline) can have a log record land inside it."""
  writes = []

  class Stream:
    def write(self, text):
      writes.append(text)

    def flush(self):
      pass

  monkeypatch.setattr(sys, "stderr", Stream())
  errors.report("error: one line")
  assert writes == ["error: one line\n"]


def test_other_ends_pass_through(tmp_path):
  parent = _supervised(tmp_path, "3")
  out, err = parent.communicate(timeout=60)
  assert (parent.returncode, out, err) == (3, "epoch    1\n", GLOG_E + "a line of its own\n")


def test_signals_reach_the_child_and_sigkill_takes_it_along(tmp_path):
  for sig, expected in ((signal.SIGTERM, 128 + signal.SIGTERM), (signal.SIGKILL, -signal.SIGKILL)):
    (tmp_path / sig.name).mkdir()
    parent = _supervised(tmp_path / sig.name, "sleep")
    assert parent.stdout.readline() == "epoch    1\n"
    child = int(parent.stdout.readline())
    parent.send_signal(sig)
    assert parent.wait(timeout=60) == expected
    deadline = time.monotonic() + 10
    while os.path.exists(f"/proc/{child}") and _state(child) != "Z":
      assert time.monotonic() < deadline, f"child {child} outlived its supervisor ({sig.name})"
      time.sleep(0.05)
    parent.stdout.close()
    parent.stderr.close()


def _state(pid: int) -> str:
  try:
    with open(f"/proc/{pid}/stat") as f:
      return f.read().rsplit(")", 1)[1].split()[0]
  except OSError:
    return "gone"
