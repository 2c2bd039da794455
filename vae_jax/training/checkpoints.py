"""Orbax checkpoints of the training state, one per epoch, restorable onto any device layout.

Orbax writes a step into a temporary directory and renames it once complete, so a crash never
leaves a step that looks finished. `save` then records the size and CRC-32 of each of its files
in MANIFEST, and `restore` checks them before orbax reads anything: a checkpoint damaged later (a
partial copy, a torn file) is found. `restore_newest` skips a checkpoint that does not restore for
the next older one, with a warning.
"""

import contextlib
import gc
import json
import logging
import os
import re
import sys
import traceback
import warnings
import zlib

import jax
import orbax.checkpoint as ocp

from vae_jax.training import workdir
from vae_jax.errors import UserError

MANIFEST = workdir.MANIFEST
complete_epochs = workdir.complete_epochs
# tensorstore's words for I/O failures (orbax passes them on as ValueError)
_IO_STATUS = ("RESOURCE_EXHAUSTED", "PERMISSION_DENIED", "UNAVAILABLE", "DATA_LOSS", "NOT_FOUND")


class DamagedCheckpoint(Exception):
  """A checkpoint that does not restore; str(error) says why."""


def _first_line(error: Exception) -> str:
  text = str(error).strip()
  return (text.splitlines()[0] if text else type(error).__name__)[:200]


def _io_reason(error: Exception) -> str | None:
  """The OS reason of an I/O failure inside orbax or tensorstore; None for any other error."""
  if isinstance(error, OSError):
    return workdir.reason(error)
  text = str(error)
  code = re.search(r"os_error_code='(\d+)'", text)
  if code:
    return os.strerror(int(code.group(1)))
  return _first_line(error) if text.startswith(_IO_STATUS) else None


def _from_orbax(record: logging.LogRecord) -> bool:
  return f"{os.sep}orbax{os.sep}" in record.pathname and record.levelno < logging.CRITICAL


def _hide_closed_loop_reports() -> None:
  """Drops the 'Event loop is closed' reports that tensorstore's callbacks print (as unraisable
  exceptions) after a failed read or write has closed orbax's event loop; others print as before."""
  if getattr(sys.unraisablehook, "hides_closed_loop", False):
    return
  previous = sys.unraisablehook

  def hook(unraisable):
    if not (unraisable.exc_type is RuntimeError
            and str(unraisable.exc_value) == "Event loop is closed"):
      previous(unraisable)

  hook.hides_closed_loop = True
  sys.unraisablehook = hook


@contextlib.contextmanager
def _quiet_orbax():
  """Orbax logs each failing background task with a traceback; the caller reports one line."""
  _hide_closed_loop_reports()
  loggers = [logging.getLogger("absl"), logging.getLogger("asyncio")]
  quiet = lambda record: not (_from_orbax(record) or record.name == "asyncio")
  for logger in loggers:
    logger.addFilter(quiet)
  try:
    yield
  except Exception as e:
    # The failed operation's tasks are reachable from the locals of the traceback's frames; freed
    # and collected here, while their reports are filtered, not later wherever the error is dropped.
    traceback.clear_frames(e.__traceback__)
    gc.collect()
    raise
  finally:
    for logger in loggers:
      logger.removeFilter(quiet)


def _crc32(path: str) -> int:
  crc = 0
  with open(path, "rb") as f:
    while block := f.read(1 << 20):
      crc = zlib.crc32(block, crc)
  return crc


def _files(step_dir: str) -> dict[str, list[int]]:
  """{path relative to step_dir: [size, crc32]} of every file but the manifest."""
  files = {}
  for root, _, names in os.walk(step_dir):
    for name in names:
      path = os.path.join(root, name)
      rel = os.path.relpath(path, step_dir)
      if rel != MANIFEST:
        files[rel] = [os.path.getsize(path), _crc32(path)]
  return files


def _verify(step_dir: str) -> None:
  """Raises DamagedCheckpoint unless every file the manifest lists is there, whole and unchanged."""
  manifest = os.path.join(step_dir, MANIFEST)
  if not os.path.exists(manifest):
    return  # written before manifests existed: orbax's own checks are all there is
  try:
    with open(manifest, encoding="utf-8") as f:
      listed = json.load(f)
  except (OSError, ValueError) as e:
    raise DamagedCheckpoint(f"its {MANIFEST} is unreadable ({_first_line(e)})") from None
  for rel, (size, crc) in sorted(listed.items()):
    path = os.path.join(step_dir, rel)
    if not os.path.isfile(path):
      raise DamagedCheckpoint(f"{rel} is missing")
    if os.path.getsize(path) != size:
      raise DamagedCheckpoint(f"{rel} has {os.path.getsize(path)} of its {size} bytes")
    if _crc32(path) != crc:
      raise DamagedCheckpoint(f"{rel} does not match its CRC-32")


class Checkpoints:
  """Epoch-numbered checkpoints under `directory` (the newest `keep` are kept)."""

  def __init__(self, directory: str, keep: int = 2):
    self.directory = os.path.abspath(directory)
    with workdir.writing(self.directory):
      self.manager = ocp.CheckpointManager(
          self.directory, options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True))

  def step_dir(self, epoch: int) -> str:
    return os.path.join(self.directory, str(epoch))

  def epochs(self) -> list[int]:
    return sorted(self.manager.all_steps())

  def latest_epoch(self) -> int | None:
    return self.manager.latest_step()

  def save(self, epoch: int, state) -> None:
    """Writes epoch's checkpoint and its manifest; an I/O failure is a UserError naming it."""
    path = self.step_dir(epoch)
    try:
      with _quiet_orbax():
        self.manager.save(epoch, args=ocp.args.StandardSave(state))
        self.manager.wait_until_finished()
    except Exception as e:  # pylint: disable=broad-except
      why = _io_reason(e)
      if why is None:
        raise
      raise UserError(f"cannot write checkpoint {path}: {why}") from None
    if jax.process_index() == 0:
      with workdir.writing(path):
        manifest = json.dumps(_files(path), indent=0, sort_keys=True)
      workdir.write_atomic(os.path.join(path, MANIFEST), manifest)

  def restore(self, epoch: int, like, sharding):
    """Restores epoch's state with the structure of `like`, every leaf placed with `sharding`.

    Raises DamagedCheckpoint when the checkpoint fails its manifest or orbax cannot read it.
    """
    _verify(self.step_dir(epoch))
    abstract = jax.tree.map(
        lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sharding), like)
    try:
      with _quiet_orbax():
        return self.manager.restore(epoch, args=ocp.args.StandardRestore(abstract))
    except Exception as e:  # pylint: disable=broad-except  # orbax raises many kinds here
      raise DamagedCheckpoint(_first_line(e)) from None

  def restore_newest(self, like, sharding, at_most: int | None = None):
    """(epoch, state) of the newest checkpoint of an epoch <= at_most that restores.

    Older ones are tried in turn, each skip with a warning; (0, None) when there is no candidate;
    UserError when none restores.
    """
    epochs = self.epochs()
    candidates = [e for e in reversed(epochs) if at_most is None or e <= at_most]
    for epoch in epochs:
      if epoch not in candidates:
        warnings.warn(f"checkpoint {self.step_dir(epoch)} is past the last epoch of the metrics "
                      f"(epoch {at_most}); epoch {epoch} is redone", stacklevel=2)
    restored, failures = (0, None), []
    for epoch in candidates:
      try:
        restored = (epoch, self.restore(epoch, like, sharding))
        break
      except DamagedCheckpoint as e:
        failures.append(f"epoch {epoch}: {e}")
        older = [c for c in candidates if c < epoch]
        then = f"trying epoch {older[0]}'s checkpoint" if older else "no older one is left"
        warnings.warn(f"checkpoint {self.step_dir(epoch)} does not restore ({e}); {then}",
                      stacklevel=2)
    else:
      if candidates:
        raise UserError(f"no checkpoint in {self.directory} restores ({'; '.join(failures)}); "
                        f"remove {self.directory} to start the run over")
    return restored

  def remove_after(self, epoch: int) -> None:
    """Deletes the checkpoints newer than `epoch`, so that the run can write those epochs again."""
    for newer in self.epochs():
      if newer > epoch:
        with workdir.writing(self.step_dir(newer)):
          self.manager.delete(newer)

  def close(self) -> None:
    self.manager.close()
