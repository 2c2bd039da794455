"""Transparent huge pages for XLA:CPU's temporaries, through glibc's malloc tunable.

Each call of a compiled XLA:CPU program mallocs its temporaries (88 MB for the main job's chunk of
10 training steps), and glibc serves a block that large with a fresh mmap, released again when
the call ends. Every call then faults those pages in one 4 KiB page at a time and the kernel
zeroes each of them. With `GLIBC_TUNABLES=glibc.malloc.hugetlb=1`, glibc asks for transparent
huge pages (2 MiB) on such blocks. The main job's training step then ran 1.07x as fast on the
2-core development machine (median of 5 alternating rounds;
benchmarks/results/cpu_hugepages_2026-11-26_00b882e/).

glibc reads GLIBC_TUNABLES only when a process starts. So the entry points call `relaunch()`
first: it re-executes the same command once with the tunable added. Opt out with
VAE_JAX_HUGE_PAGES=0. Without glibc, on other systems, or with huge pages off, nothing changes.
"""

import os
import platform
import sys
from typing import Mapping

TUNABLE = "glibc.malloc.hugetlb=1"
OPT_OUT = "VAE_JAX_HUGE_PAGES"
THP_SETTING = "/sys/kernel/mm/transparent_hugepage/enabled"


def thp_mode(path: str = THP_SETTING) -> str | None:
  """The kernel's transparent-huge-page mode ('always', 'madvise', 'never'), or None if unknown."""
  try:
    with open(path, encoding="ascii") as f:
      text = f.read()
  except OSError:
    return None
  start, end = text.find("["), text.find("]")
  return text[start + 1:end] if 0 <= start < end else None


def with_tunable(env: Mapping[str, str]) -> dict[str, str]:
  """A copy of env whose GLIBC_TUNABLES also holds TUNABLE (other tunables are kept)."""
  tunables = [t for t in env.get("GLIBC_TUNABLES", "").split(":")
              if t and not t.startswith("glibc.malloc.hugetlb=")]
  return {**env, "GLIBC_TUNABLES": ":".join(tunables + [TUNABLE])}


def should_relaunch(env: Mapping[str, str], system: str, libc: str, mode: str | None) -> bool:
  """True when the tunable would take effect and is not set yet (nor refused by OPT_OUT)."""
  if env.get(OPT_OUT, "1") == "0" or "glibc.malloc.hugetlb=" in env.get("GLIBC_TUNABLES", ""):
    return False
  return system == "Linux" and libc == "glibc" and mode in ("always", "madvise")


def relaunch() -> None:
  """Re-executes this Python command with TUNABLE in GLIBC_TUNABLES, when that would help.

  Call it first thing in an entry point's `if __name__ == "__main__":` block, before anything
  starts threads; the new process sees the tunable and so does not relaunch again.
  """
  if should_relaunch(os.environ, platform.system(), platform.libc_ver()[0], thp_mode()):
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], with_tunable(os.environ))
