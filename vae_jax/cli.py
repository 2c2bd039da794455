"""The one way in for every entry point of experiments/ and benchmarks/.

    def main(argv=None) -> int:
      return cli.main(lambda: _run(parse_args(argv)), safe_points=True)

    if __name__ == "__main__":
      cli.start(main)

`main` turns what ends a command into one line on stderr and an exit code: a UserError or an
OSError `error: ...` and 2 (argparse's errors too, through `ArgumentParser`); SIGINT 130 and
SIGTERM 143 with the `Interrupted` line saying what was kept. A command with `safe_points` stops
at the next `interrupts.check`/`interrupts.stop` of its loops; one without stops at once.
Warnings print as one line each. No module of the package imports this one.
"""

import argparse
import os
import sys
import warnings
from typing import Callable, NoReturn

from vae_jax import interrupts
from vae_jax.errors import UserError, flush_std_streams, report
from vae_jax.training import hugepages, supervise


class ArgumentParser(argparse.ArgumentParser):
  """Bad flags: one `error:` line and exit 2 (--help still shows the usage)."""

  def error(self, message):
    report(f"error: {message}")
    sys.exit(2)


def _warning_line(message, *_, **__) -> str:
  return f"warning: {message}\n"


def main(command: Callable[[], int | None], safe_points: bool = False,
         hint: str = interrupts.RESUME) -> int:
  """Runs `command()` (parsing included) and returns its exit code (None: 0) or the failure's.

  `hint` ends the line of a second signal, or of the first one without `safe_points`.
  """
  interrupts.install(hint, at_once=not safe_points)  # first: a signal from now on is handled
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # tfds imports TensorFlow
  warnings.formatwarning = _warning_line
  try:
    return command() or 0
  except UserError as e:
    report(f"error: {e}")
    return 2
  except interrupts.Interrupted as e:
    report(str(e))
    return e.exit_code
  except OSError as e:  # an I/O failure no narrower handler named
    from vae_jax.training.workdir import reason  # pylint: disable=import-outside-toplevel
    report(f"error: {e.filename}: {reason(e)}" if e.filename else f"error: {reason(e)}")
    return 2


def start(entry: Callable[[], int], supervised: bool = False) -> NoReturn:
  """The `if __name__ == "__main__":` line: huge pages, then `entry()`'s code, streams flushed.

  supervised: a process of a multi-process run runs under a supervising parent
  (vae_jax.training.supervise), which turns JAX's C++ abort at a lost coordinator into one line.
  """
  if supervised:
    supervise.maybe_supervise()  # first of all: the parent never returns from it
  hugepages.relaunch()  # first: glibc reads GLIBC_TUNABLES at start
  sys.exit(flush_std_streams(entry()))
