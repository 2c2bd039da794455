"""What reports record about the machine they ran on."""

import platform


def cpu_name() -> str:
  """The CPU's model name from /proc/cpuinfo (Linux), else what platform knows of it."""
  name = platform.processor() or platform.machine()
  try:
    with open("/proc/cpuinfo") as f:
      return next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), name)
  except OSError:
    return name
