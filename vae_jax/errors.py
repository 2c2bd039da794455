"""The one exception type the entry points turn into a one-line message and a non-zero exit."""

import os
import sys


class UserError(Exception):
  """Bad input or an impossible request; str(error) is a complete one-line explanation."""


def report(line: str) -> None:
  """Prints one line on stderr in one write, so that no other writer's output (JAX's C++ runtime
  logs on the same descriptor) lands between the line and its end; a stderr that cannot take it
  (a full disk) loses only the line."""
  try:
    sys.stderr.write(line + "\n")  # print() writes the line and "\n" separately
    sys.stderr.flush()
  except (OSError, ValueError):
    pass


def flush_std_streams(code: int) -> int:
  """Flushes stdout and stderr before the interpreter does, so a full disk is no shutdown traceback.

  Returns the exit code: `code`, or 2 with one line on stderr when stdout could not be written.
  A stream that fails is pointed at /dev/null, so the interpreter's own final flush succeeds.
  """
  for stream in (sys.stdout, sys.stderr):
    try:
      stream.flush()
    except (OSError, ValueError) as e:
      try:
        os.dup2(os.open(os.devnull, os.O_WRONLY), stream.fileno())
      except (OSError, ValueError):
        pass
      if stream is sys.stdout and code == 0:
        report(f"error: cannot write to standard output: {getattr(e, 'strerror', None) or e}")
        code = 2
  return code
