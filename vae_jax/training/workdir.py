"""A run's workdir: one run at a time (a lock), files written whole or not at all, state read back.

Every write turns an `OSError` into a `UserError` naming the file and the reason (a full disk, a
file where a directory should be), so the run ends with one line and keeps what it wrote before.
"""

import contextlib
import dataclasses
import errno
import fcntl
import json
import os
import time
import warnings

from vae_jax.config import Config
from vae_jax.errors import UserError

CONFIG_FILE, METRICS_FILE = "config.json", "metrics.jsonl"
MANIFEST = "vae_jax_files.json"  # in each complete checkpoint (checkpoints.py)
LOCK_FILE = ".lock"  # holds the running process's PID while it holds the flock


def reason(error: OSError) -> str:
  """The operating system's words for an OSError ('No space left on device')."""
  return error.strerror or (os.strerror(error.errno) if error.errno else str(error))


@contextlib.contextmanager
def writing(path: str):
  """Turns an OSError inside the block into a one-line UserError naming `path` and the reason."""
  try:
    yield
  except OSError as e:
    raise UserError(f"cannot write {path}: {reason(e)}") from None


def create(workdir: str) -> bool:
  """Makes `workdir` (and its parents) if needed; True when it did not exist before."""
  if os.path.isdir(workdir):
    return False
  if os.path.lexists(workdir):
    raise UserError(f"workdir {workdir} is a file, not a directory")
  try:
    os.makedirs(workdir)
  except OSError as e:
    if e.errno == errno.EEXIST and os.path.isdir(workdir):  # made meanwhile by a peer process
      return False
    raise UserError(f"cannot create workdir {workdir}: {reason(e)}") from None
  return True


def _holder(fd: int) -> str:
  """The PID the lock's holder wrote (it writes it right after taking the lock)."""
  for _ in range(20):
    pid = os.pread(fd, 32, 0).decode(errors="replace").strip()
    if pid:
      return pid
    time.sleep(0.05)
  return "unknown"


@contextlib.contextmanager
def locked(workdir: str):
  """Holds an exclusive lock on `workdir` for the block, creating the directory if needed.

  The lock is `flock` on LOCK_FILE: the kernel drops it when the process ends in any way, so a
  killed run never leaves a stale lock. A second run is refused with the holder's PID. A workdir
  this call created and nothing else wrote to is removed again at the end.
  """
  created = create(workdir)
  path = os.path.join(workdir, LOCK_FILE)
  with writing(path):
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
  try:
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      raise UserError(f"workdir {workdir} is in use by another run (PID {_holder(fd)})") from None
    with writing(path):
      os.ftruncate(fd, 0)
      os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    yield
  finally:
    with contextlib.suppress(OSError):
      if created and os.listdir(workdir) == [LOCK_FILE]:  # the run failed before writing anything
        os.unlink(path)
        os.rmdir(workdir)
    os.close(fd)


def write_atomic(path: str, text: str) -> None:
  """Writes `text` to a temporary file beside `path`, syncs it, then renames it over `path`."""
  tmp = os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.tmp")
  try:
    with writing(path):
      with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
      os.replace(tmp, path)
  finally:
    with contextlib.suppress(OSError):
      os.unlink(tmp)


def append_line(path: str, line: str) -> None:
  """Appends one line and syncs it; a write cut short leaves a torn last line `read_rows` drops."""
  with writing(path):
    with open(path, "a", encoding="utf-8") as f:
      f.write(line + "\n")
      f.flush()
      os.fsync(f.fileno())


# ---------------------------------------------------------------- config.json

def _json_form(config: Config) -> dict:
  """The config as JSON gives it back (tuples become lists)."""
  return json.loads(json.dumps(dataclasses.asdict(config)))


def write_config(workdir: str, config: Config) -> None:
  write_atomic(os.path.join(workdir, CONFIG_FILE),
               json.dumps(dataclasses.asdict(config), indent=2) + "\n")


def read_config(workdir: str) -> dict | None:
  """The saved settings of the run in `workdir` as JSON values, every field present; None if none.

  Fields the file lacks (written before they existed) take their defaults, which reproduce the
  earlier behaviour.
  """
  path = os.path.join(workdir, CONFIG_FILE)
  if not os.path.exists(path):
    return None
  try:
    with open(path, encoding="utf-8") as f:
      saved = json.load(f)
  except OSError as e:
    raise UserError(f"cannot read {path}: {reason(e)}") from None
  except ValueError as e:
    raise UserError(f"{path} is damaged ({e}); it is not the JSON a run writes") from None
  if not isinstance(saved, dict):
    raise UserError(f"{path} is damaged (a JSON {type(saved).__name__}, not an object)")
  unknown = sorted(set(saved) - {f.name for f in dataclasses.fields(Config)})
  if unknown:
    raise UserError(f"{path} has settings this version does not know: {', '.join(unknown)}")
  return {**_json_form(Config()), **saved}


def settings_differ(config: Config, saved: dict) -> list[str]:
  """Names of the fields where `config` differs from the saved JSON settings.

  A field the saved settings lack was added after that run was made, which ran with its default.
  """
  current, defaults = _json_form(config), _json_form(Config())
  return [k for k, v in current.items() if saved.get(k, defaults[k]) != v]


def load_config(workdir: str) -> Config:
  """The Config of the run in `workdir`."""
  saved = read_config(workdir)
  if saved is None:
    raise UserError(f"{workdir} holds no run ({CONFIG_FILE} not found)")
  defaults = Config()
  return Config(**{k: tuple(v) if isinstance(getattr(defaults, k), tuple) else v
                   for k, v in saved.items()})


# ---------------------------------------------------------------- metrics.jsonl

def read_rows(path: str) -> list[dict]:
  """The per-epoch rows of a metrics file (epochs 1..N in order); [] if there is no file.

  A last line that is not JSON is a write the run did not finish (a crash, a full disk): it is
  dropped with a warning, and its epoch is redone on resume. Anything else is damage: UserError.
  """
  if not os.path.exists(path):
    return []
  try:
    with open(path, "rb") as f:
      lines = f.read().split(b"\n")
  except OSError as e:
    raise UserError(f"cannot read {path}: {reason(e)}") from None
  numbered = [(i + 1, line) for i, line in enumerate(lines) if line.strip()]
  rows = []
  for n, (number, line) in enumerate(numbered):
    try:
      row = json.loads(line)
    except ValueError:
      if n == len(numbered) - 1:
        warnings.warn(f"{path}: dropped the torn last line {number} (a write that did not "
                      "finish); its epoch is redone", stacklevel=2)
        break
      raise UserError(f"{path}: line {number} is not JSON; the file is damaged") from None
    rows.append(row)
  epochs = [r.get("epoch") if isinstance(r, dict) else None for r in rows]
  if epochs != list(range(1, len(rows) + 1)):
    raise UserError(f"{path} is damaged: its rows are epochs {epochs}, not 1..{len(rows)}")
  return rows


def write_rows(path: str, rows: list[dict]) -> None:
  write_atomic(path, "".join(json.dumps(r) + "\n" for r in rows))


# ---------------------------------------------------------------- checkpoints, without orbax

def complete_epochs(directory: str) -> list[int]:
  """The epochs whose checkpoint under `directory` was written to the end (its manifest is there)."""
  try:
    names = os.listdir(directory)
  except FileNotFoundError:
    return []
  return sorted(int(n) for n in names
                if n.isdigit() and os.path.isfile(os.path.join(directory, n, MANIFEST)))


def last_complete_epoch(workdir: str) -> int:
  """The newest epoch that a resumed run restores: its checkpoint complete, its metrics row written
  (0: none). Reads files only, so a process without JAX (the supervisor) can say it too."""
  rows = len(read_rows(os.path.join(workdir, METRICS_FILE)))
  return max((e for e in complete_epochs(os.path.join(workdir, "checkpoints")) if e <= rows),
             default=0)
