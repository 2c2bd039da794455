"""SIGINT and SIGTERM as a request to stop the run at its next safe point.

The entry point calls `install()`. A signal then only records the request; the training loop
calls `check(epoch)` between jitted calls, which raises `Interrupted` there. Every complete
epoch's checkpoint and metrics stay; the unfinished epoch is redone, identically, by `--resume`.
A second signal stops the process at once (an unfinished checkpoint is never one a resume uses).
"""

import os
import signal

_requested: int | None = None  # the number of the first signal received


class Interrupted(Exception):
  """The run stopped on a signal during `epoch` (its earlier epochs are saved)."""

  def __init__(self, signum: int, epoch: int):
    super().__init__(f"interrupted at epoch {epoch}; continue with --resume")
    self.signum, self.epoch = signum, epoch

  @property
  def exit_code(self) -> int:
    return 128 + self.signum  # what shells report for a process a signal ended: 130, 143


def _handle(signum, frame):  # pylint: disable=unused-argument
  global _requested
  if _requested is not None:
    os.write(2, b"interrupted again: stopped at once; continue with --resume\n")
    os._exit(128 + signum)  # pylint: disable=protected-access
  _requested = signum


def install() -> None:
  """Makes SIGINT and SIGTERM requests that `check` acts on (call it in the main thread)."""
  for signum in (signal.SIGINT, signal.SIGTERM):
    signal.signal(signum, _handle)


def requested() -> bool:
  return _requested is not None


def check(epoch: int) -> None:
  """Raises Interrupted if a signal arrived; call it only where stopping loses no complete epoch."""
  if _requested is not None:
    raise Interrupted(_requested, epoch)
