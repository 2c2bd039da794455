"""A thin supervising parent for each process of a multi-process run.

When a process of a multi-process run loses the JAX coordination service (process 0, which hosts
it, died or hangs), JAX's C++ runtime ends the process itself: its log lines, "Terminating
process because the JAX distributed service detected fatal errors", a stack trace, SIGABRT.
Python cannot catch that. So the main job, when it is one process of several (`--coordinator`,
or a cluster launcher's environment), runs itself as a child of a small parent that imports no
JAX (`maybe_supervise`, called first by `cli.start`). The parent relays the child's output,
holds back the runtime's log records (glog format: a headed line and the lines its message goes
on over, which arrive with it) until output of another kind follows them; when the child's own
one-line error follows them, or the child ends in that abort, it drops them, and for the abort
prints one line instead (unless the child's own one-line error came first: that stays the line):

    error: process 1 of 2: process 0, the coordinator, stopped responding; the last complete
    checkpoint is epoch 3; restart all processes with --resume

and exits 2. Every other end passes through: the child's exit status (a signal's as 128 + its
number). Signals sent to the parent (SIGINT, SIGTERM, SIGHUP) go to the child, which stops at its
next safe point as usual; if the parent is killed (SIGKILL), the kernel kills the child with it
(PR_SET_PDEATHSIG), so `kill -9` of either is the death of that process.

The child tells the parent which run it is (workdir, process index and count) through a small
JSON file named in its environment (`tell`), which is what the line's checkpoint comes from.
Opt out with VAE_JAX_SUPERVISE=0.
"""

import ctypes
import json
import os
import re
import select
import signal
import subprocess
import sys
import tempfile

from vae_jax.training import workdir as workdir_lib

CHILD_ENV = "VAE_JAX_SUPERVISED"        # set in the child: it runs the job itself
INFO_ENV = "VAE_JAX_SUPERVISOR_INFO"    # the file where the child says which run it is
TTY_ENV = "VAE_JAX_STDERR_IS_TTY"       # the parent's stderr is a terminal: keep progress bars
OPT_OUT = "VAE_JAX_SUPERVISE"
FATAL_MARK = "JAX distributed service detected fatal errors"
# A glog line: severity, MMDD, time, thread id, file:line]
GLOG_START = re.compile(r"[IWEF]\d{4} \d\d:\d\d:\d\d\.\d+ +\d+ [^ :\]]+:\d+\] ")
# The beginnings of one, up to its "file:line]"
GLOG_PREFIX = re.compile(r"[IWEF](\d{0,4}|\d{4} [\d:.]*|\d{4} \d\d:\d\d:\d\d\.\d+ +\d*"
                         r"|\d{4} \d\d:\d\d:\d\d\.\d+ +\d+ [^ \]\n]*\]?)")
# Environments of cluster launchers that start one process per task (their task count).
CLUSTER_SIZES = ("SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE", "PMI_SIZE")
FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
# A log record's message lines arrive together; after this long without output it has ended.
RECORD_QUIET_S = 0.25
ERROR_HEAD = "error: "  # how the main job's one-line errors begin (vae_jax.cli)


def wanted(argv: list[str], env) -> bool:
  """Whether this command is one process of several and not yet supervised."""
  if env.get(CHILD_ENV) == "1" or env.get(OPT_OUT, "1") == "0":
    return False
  if any(a == "--coordinator" or a.startswith("--coordinator=") for a in argv):
    return True
  for name in CLUSTER_SIZES:
    try:
      if int(env.get(name, "1")) > 1:
        return True
    except ValueError:
      pass
  return False


def maybe_supervise() -> None:
  """In a process of a multi-process run: runs this command as a supervised child and exits with
  its status (never returns). Otherwise (or in the child) returns at once."""
  if wanted(sys.argv[1:], os.environ):
    sys.exit(supervise([sys.executable, *sys.orig_argv[1:]]))


def tell(workdir: str, process: int, processes: int) -> None:
  """Called by the child when its run starts: which run the supervisor's line is about."""
  path = os.environ.get(INFO_ENV)
  if path:
    workdir_lib.write_atomic(path, json.dumps({"workdir": os.path.abspath(workdir),
                                               "process": process, "processes": processes}))


def progress_disable() -> bool | None:
  """tqdm's `disable` for the main process's bars: None (tqdm decides from the stream) unless the
  stream is the supervisor's pipe to a terminal."""
  return False if os.environ.get(TTY_ENV) == "1" else None


def _die_with_parent() -> None:
  """In the child, before exec: the kernel sends it SIGKILL when the supervisor dies."""
  try:
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
  except (OSError, AttributeError):
    pass


class _Relay:
  """Copies the child's stderr to ours, holding glog records back until another kind of line
  follows (then they are written, in order) or the child has ended (then `finish` decides).

  A record is its headed line and the lines after it up to the next quiet moment (`quiet`): the
  runtime writes a message over several lines (gRPC's "Additional GRPC error information ...")
  at once, and those lines carry no head of their own.

  Records held when the child's own one-line error follows ("error: ...", e.g. the lost process
  its failed collective named) are dropped: they are the runtime's account of what that line
  says, and the line is to be the whole of stderr."""

  def __init__(self, out):
    self.out, self.held, self.partial, self.passing = out, [], "", False
    self.fatal = False
    self.said_error = False  # the child's own one-line error has been written
    self.in_record = False  # a glog record began and no quiet moment has passed since

  def feed(self, text: str) -> None:
    text = self.partial + text
    self.partial = ""
    while text:
      if self.passing:  # the rest of a line already being written (e.g. a progress bar)
        end = text.find("\n") + 1 or len(text)
        self._write(text[:end])
        self.passing = not text[:end].endswith("\n")
        text = text[end:]
        continue
      end = text.find("\n") + 1
      if not end:  # no line end yet: write it now unless it may still be held
        if self.in_record or self._may_be_glog(text) or self._may_be_error(text):
          self.partial = text
        else:
          self.said_error = self.said_error or (text.startswith(ERROR_HEAD) and not self.fatal)
          self._write(text)
          self.passing = True
        return
      line, text = text[:end], text[end:]
      self._line(line)

  def _may_be_glog(self, text: str) -> bool:
    """Whether a line begun with `text` is, or may still become, a glog line."""
    return self.fatal or GLOG_START.match(text) is not None or (
        len(text) < 512 and GLOG_PREFIX.fullmatch(text) is not None)

  def _may_be_error(self, text: str) -> bool:
    """Whether a line begun with `text` is, or may still become, the child's one-line error."""
    return bool(self.held) and (text.startswith(ERROR_HEAD) or ERROR_HEAD.startswith(text))

  def quiet(self) -> None:
    """No output came for a while: the record being held has ended."""
    self.in_record = False
    if self.partial and not self._may_be_glog(self.partial) and not self._may_be_error(
        self.partial):
      self._write(self.partial)  # e.g. a progress bar begun right after a record
      self.passing, self.partial = True, ""

  def _line(self, line: str) -> None:
    if FATAL_MARK in line:
      self.fatal = True
    if GLOG_START.match(line):
      self.in_record = True
    elif line.startswith(ERROR_HEAD) and not self.fatal:
      self.held, self.in_record = [], False  # the line says what the records were about
      self.said_error = True
    if self.fatal or self.in_record:
      self.held.append(line)
    else:
      self._write(line)

  def _write(self, text: str) -> None:
    if self.held and not self.fatal:
      self.out.write("".join(self.held))
      self.held = []
    self.out.write(text)
    self.out.flush()

  def finish(self, aborted: bool) -> None:
    """The child ended: its held lines are written unless it was the coordination abort."""
    if self.partial:
      self._line(self.partial)
      self.partial = ""
    if not aborted and self.held:
      self.out.write("".join(self.held))
      self.out.flush()
    self.held = []


def _info(path: str) -> dict:
  try:
    with open(path, encoding="utf-8") as f:
      return json.load(f)
  except (OSError, ValueError):
    return {}


def abort_line(info: dict) -> str:
  """The one line for a child the coordination service's loss ended."""
  process, processes = info.get("process"), info.get("processes")
  who = "process 0, the coordinator," if process not in (None, 0) else "another process"
  where = (f"process {process} of {processes}: " if process is not None else "")
  epoch = workdir_lib.last_complete_epoch(info["workdir"]) if info.get("workdir") else 0
  kept = (f"the last complete checkpoint is epoch {epoch}" if epoch
          else "no epoch had finished, so there is no checkpoint")
  return (f"error: {where}{who} stopped responding (JAX's distributed service ended this "
          f"process); {kept}; restart all processes with --resume")


def supervise(command: list[str]) -> int:
  """Runs `command` as the supervised child; returns the exit status for this process."""
  fd, info_path = tempfile.mkstemp(prefix="vae_jax_supervisor_", suffix=".json")
  os.close(fd)
  env = dict(os.environ, **{CHILD_ENV: "1", INFO_ENV: info_path,
                            TTY_ENV: "1" if sys.stderr.isatty() else "0"})
  try:
    child = subprocess.Popen(command, env=env, stderr=subprocess.PIPE, preexec_fn=_die_with_parent,
                             process_group=0)
    previous = {s: signal.signal(s, lambda number, _frame: child.send_signal(number))
                for s in FORWARDED}
    relay = _Relay(sys.stderr)
    try:
      while True:
        fd = child.stderr.fileno()
        try:
          if relay.in_record and not select.select([fd], [], [], RECORD_QUIET_S)[0]:
            relay.quiet()
            continue
          chunk = os.read(fd, 65536)
        except InterruptedError:
          continue
        if not chunk:
          break
        relay.feed(chunk.decode(errors="replace"))
      code = child.wait()
    finally:
      for s, handler in previous.items():
        signal.signal(s, handler)
    aborted = relay.fatal and code != 0
    relay.finish(aborted)
    if aborted:
      # The runtime may abort a child that has already said its own line (its failed collective
      # named the lost process first): that line stays the only one.
      if not relay.said_error:
        sys.stdout.flush()
        print(abort_line(_info(info_path)), file=sys.stderr, flush=True)
      return 2
    return code if code >= 0 else 128 - code
  finally:
    os.unlink(info_path)
