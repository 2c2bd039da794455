"""vae_jax.training.hugepages: when entry points re-execute themselves with glibc's huge-page tunable."""

import os
import platform
import subprocess
import sys

from vae_jax.training import hugepages

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_with_tunable_keeps_other_tunables_and_replaces_an_old_hugetlb_value():
  assert hugepages.with_tunable({})["GLIBC_TUNABLES"] == "glibc.malloc.hugetlb=1"
  env = {"GLIBC_TUNABLES": "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=0", "HOME": "/h"}
  out = hugepages.with_tunable(env)
  assert out["GLIBC_TUNABLES"] == "glibc.malloc.arena_max=2:glibc.malloc.hugetlb=1"
  assert out["HOME"] == "/h" and env["GLIBC_TUNABLES"].endswith("hugetlb=0")  # env untouched


def test_should_relaunch_only_where_the_tunable_takes_effect():
  linux = ("Linux", "glibc", "madvise")
  assert hugepages.should_relaunch({}, *linux)
  assert hugepages.should_relaunch({}, "Linux", "glibc", "always")
  assert not hugepages.should_relaunch({}, "Linux", "glibc", "never")
  assert not hugepages.should_relaunch({}, "Linux", "glibc", None)
  assert not hugepages.should_relaunch({}, "Linux", "", "madvise")  # musl
  assert not hugepages.should_relaunch({}, "Darwin", "", None)
  assert not hugepages.should_relaunch({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=1"}, *linux)
  assert not hugepages.should_relaunch({"GLIBC_TUNABLES": "glibc.malloc.hugetlb=0"}, *linux)
  assert not hugepages.should_relaunch({hugepages.OPT_OUT: "0"}, *linux)
  assert hugepages.should_relaunch({hugepages.OPT_OUT: "1"}, *linux)


def test_thp_mode_reads_the_bracketed_choice(tmp_path):
  setting = tmp_path / "enabled"
  setting.write_text("always [madvise] never\n")
  assert hugepages.thp_mode(str(setting)) == "madvise"
  setting.write_text("[always] madvise never\n")
  assert hugepages.thp_mode(str(setting)) == "always"
  assert hugepages.thp_mode(str(tmp_path / "missing")) is None


def _run(env_extra):
  env = {k: v for k, v in os.environ.items() if k not in ("GLIBC_TUNABLES", hugepages.OPT_OUT)}
  code = ("import os, sys; from vae_jax.training import hugepages; hugepages.relaunch(); "
          "print(os.environ.get('GLIBC_TUNABLES', '-'), sys.argv[1:])")
  out = subprocess.run([sys.executable, "-c", code, "a", "--b"], env={**env, **env_extra},
                       cwd=REPO, capture_output=True, text=True, check=True, timeout=60)
  return out.stdout.strip()


def test_relaunch_reexecutes_the_same_command_once_with_the_tunable():
  expected = hugepages.should_relaunch({}, platform.system(), platform.libc_ver()[0],
                                       hugepages.thp_mode())
  tunables = "glibc.malloc.hugetlb=1" if expected else "-"
  assert _run({}) == f"{tunables} ['a', '--b']"  # one line: the new process did not relaunch again
  assert _run({hugepages.OPT_OUT: "0"}) == "- ['a', '--b']"
