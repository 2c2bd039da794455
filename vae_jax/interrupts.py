"""SIGINT and SIGTERM as a request to stop a command at its next safe point.

The entry point installs the handler (`vae_jax.cli.main` does). A signal then only records the
request; the loops call `check(epoch)` (training) or `stop(message)` (evaluation, coding, the
study) between jitted calls, which raises `Interrupted` there. Every complete epoch's checkpoint
and metrics stay; the unfinished epoch is redone, identically, by `--resume`. A second signal
stops the process at once (an unfinished checkpoint is never one a resume uses). A command
without safe points installs with `at_once=True`: the first signal raises `Interrupted` where
the program is.
"""

import os
import signal
from typing import Callable

RESUME = "continue with --resume"

_requested: int | None = None  # the number of the first signal received
_hint = RESUME                 # what the second signal's line tells the user
_at_once = False


class Interrupted(Exception):
  """The command stopped on a signal (`epoch`: the training epoch it was in, if training)."""

  def __init__(self, signum: int, epoch: int | None = None, message: str | None = None):
    super().__init__(message or f"interrupted at epoch {epoch}; continue with --resume")
    self.signum, self.epoch = signum, epoch

  @property
  def exit_code(self) -> int:
    return 128 + self.signum  # what shells report for a process a signal ended: 130, 143


def _handle(signum, frame):  # pylint: disable=unused-argument
  global _requested
  if _at_once:
    raise Interrupted(signum, message="interrupted" + (f"; {_hint}" if _hint else ""))
  if _requested is not None:
    os.write(2, f"interrupted again: stopped at once; {_hint}\n".encode())
    os._exit(128 + signum)  # pylint: disable=protected-access
  _requested = signum


def install(hint: str = RESUME, at_once: bool = False) -> None:
  """Makes SIGINT and SIGTERM requests that `check` and `stop` act on (call it in the main thread).

  `hint` ends the line of a second signal (or of the first, `at_once`); `at_once`: no safe points.
  """
  global _hint, _at_once
  _hint, _at_once = hint, at_once
  for signum in (signal.SIGINT, signal.SIGTERM):
    signal.signal(signum, _handle)


def requested() -> bool:
  return _requested is not None


def check(epoch: int) -> None:
  """Raises Interrupted if a signal arrived; call it only where stopping loses no complete epoch."""
  if _requested is not None:
    raise Interrupted(_requested, epoch)


def stop(message: str | Callable[[], str]) -> None:
  """Raises Interrupted(message) if a signal arrived; `message` (or its call) says what was kept."""
  if _requested is not None:
    raise Interrupted(_requested, message=message if isinstance(message, str) else message())
