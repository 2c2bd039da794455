"""Compares the JAX port with the TensorFlow tutorial: learning curves over seeds, and training throughput.

  python -m benchmarks.compare --data idx:../shared/data/mnist --epochs 10 --seeds 3 --out benchmarks/results/NAME

Runs one process at a time (concurrent runs would share the cores): for each seed, the JAX main job
(experiments.mnist_vae) and the TF reference (benchmarks.tf_reference), on the same arrays in the same
batch order; then benchmarks.throughput for JAX and for TF. Writes OUT/report.json, OUT/report.md and
OUT/curves.png; each run's own outputs and log stay below OUT.
"""

import argparse
import datetime
import importlib.metadata
import json
import os
import platform
import shlex
import subprocess
import sys
import time

from benchmarks import report as report_lib
from vae_jax import data as data_lib
from vae_jax import hugepages
from vae_jax.config import get_config
from vae_jax.errors import UserError
from vae_jax.run import METRICS_FILE, read_metrics

PACKAGES = ("jax", "jaxlib", "flax", "optax", "tensorflow", "keras", "numpy")


class OneLineErrorParser(argparse.ArgumentParser):
  """Bad flags: one `error:` line and exit 2 (--help still shows the usage)."""

  def error(self, message):
    print(f"error: {message}", file=sys.stderr)  # one line; --help has the usage
    sys.exit(2)


def parse_args(argv=None) -> argparse.Namespace:
  d = get_config()
  p = OneLineErrorParser(prog="python -m benchmarks.compare", description=__doc__,
              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--data", default=d.data, help="tfds:NAME | idx:DIR | mnist-5k | auto")
  p.add_argument("--epochs", type=int, default=10)
  p.add_argument("--train-size", type=int, default=d.train_size,
                 help="use only the first N training examples (default: all)")
  p.add_argument("--seeds", type=int, default=3, help="train seeds 0..K-1 with each framework")
  p.add_argument("--batch-size", type=int, default=d.batch_size)
  p.add_argument("--latent-dim", type=int, default=d.latent_dim)
  p.add_argument("--steps", type=int, default=500, help="training steps timed in each throughput run")
  p.add_argument("--throughput-rounds", type=int, default=3,
                 help="JAX and TF throughput runs back to back this many times; the median ratio counts")
  p.add_argument("--out", required=True, help="new or empty directory for the report")
  args = p.parse_args(argv)
  for name in ("epochs", "seeds", "batch_size", "latent_dim", "steps", "train_size",
               "throughput_rounds"):
    value = getattr(args, name)
    if value is not None and value < 1:
      p.error(f"--{name.replace('_', '-')} must be >= 1, got {value}")
  if os.path.exists(args.out) and not (os.path.isdir(args.out) and not os.listdir(args.out)):
    p.error(f"--out {args.out} exists and is not an empty directory; choose a new one")
  try:  # fails here, before anything is written, rather than in the first run
    data_lib.load(args.data).take_train(args.train_size)
  except UserError as e:
    p.error(str(e))
  return args


class RunFailed(Exception):
  """A run exited non-zero; carries its exit status."""

  def __init__(self, message: str, returncode: int):
    super().__init__(message)
    self.returncode = returncode


def _last_error(log_path: str) -> str:
  with open(log_path) as f:
    lines = [line.strip() for line in f if line.strip()]
  errors = [line for line in lines if line.startswith("error:")]
  return (errors or lines or ["no output"])[-1]


def run(name: str, argv: list[str], log_path: str) -> None:
  """Runs argv to completion with its output in log_path; raises RunFailed if it fails."""
  print(f"[{name}] {shlex.join(argv)}", flush=True)
  start = time.perf_counter()
  env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2")}
  with open(log_path, "w") as log:
    returncode = subprocess.run(argv, stdout=log, stderr=subprocess.STDOUT, env=env,
                                check=False).returncode
  if returncode:
    raise RunFailed(f"{name} exited {returncode}: {_last_error(log_path)} (log: {log_path})",
                    returncode)
  print(f"[{name}] done in {time.perf_counter() - start:.0f} s", flush=True)


def machine() -> dict:
  cpu = platform.processor() or platform.machine()
  if os.path.exists("/proc/cpuinfo"):
    with open("/proc/cpuinfo") as f:
      cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
  # Both frameworks' processes inherit this process's environment (see vae_jax.hugepages).
  return {"cpu": cpu, "cores": os.cpu_count(), "platform": platform.platform(),
          "glibc_tunables": os.environ.get("GLIBC_TUNABLES", "")}


def versions() -> dict:
  found = {"python": platform.python_version()}
  for name in PACKAGES:
    try:
      found[name] = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
      found[name] = None
  return found


def main(argv=None) -> int:
  args = parse_args(argv)
  command = [sys.executable, "-m", "benchmarks.compare", *(sys.argv[1:] if argv is None else argv)]
  out = args.out
  os.makedirs(os.path.join(out, "logs"), exist_ok=True)
  common = ["--data", args.data, "--epochs", str(args.epochs), "--batch-size", str(args.batch_size),
            "--latent-dim", str(args.latent_dim)]
  if args.train_size is not None:
    common += ["--train-size", str(args.train_size)]
  py = sys.executable
  rows, throughput, runs = {"jax": [], "tf": []}, {"jax": [], "tf": []}, []

  def run_logged(name, argv):
    runs.append(argv)
    run(name, argv, os.path.join(out, "logs", name.replace(" ", "_") + ".log"))

  try:
    for seed in range(args.seeds):
      jax_dir, tf_dir = (os.path.join(out, name, f"seed{seed}") for name in ("jax", "tf"))
      run_logged(f"jax seed {seed}", [py, "-m", "experiments.mnist_vae", *common,
                                      "--seed", str(seed), "--workdir", jax_dir])
      os.makedirs(tf_dir)
      run_logged(f"tf seed {seed}", [py, "-m", "benchmarks.tf_reference", *common,
                                     "--seed", str(seed), "--out", os.path.join(tf_dir, METRICS_FILE)])
      for name, workdir in (("jax", jax_dir), ("tf", tf_dir)):
        rows[name].append(read_metrics(workdir))
        print(f"  {name} seed {seed}: final test ELBO {rows[name][-1][-1]['test_elbo']:.2f}")
    for r in range(args.throughput_rounds):
      # Back to back, TF first in every second round: slow drifts of the machine's speed hit both.
      for name in ("jax", "tf") if r % 2 == 0 else ("tf", "jax"):
        path = os.path.join(out, f"throughput_{name}_round{r + 1}.json")
        run_logged(f"{name} throughput round {r + 1}", [
            py, "-m", "benchmarks.throughput", "--framework", name,
            "--batch-size", str(args.batch_size), "--latent-dim", str(args.latent_dim),
            "--steps", str(args.steps), "--out", path])
        with open(path) as f:
          throughput[name].append(json.load(f))
        print(f"  {name}: {throughput[name][-1]['images_per_sec']:,.0f} training images/s")
  except RunFailed as e:
    print(f"error: {e}", file=sys.stderr)
    return 2 if e.returncode == 2 else 1

  settings = {"data": args.data, "epochs": args.epochs, "train_size": args.train_size,
              "seeds": list(range(args.seeds)), "batch_size": args.batch_size,
              "latent_dim": args.latent_dim, "learning_rate": get_config().learning_rate,
              "throughput_steps": args.steps, "throughput_rounds": args.throughput_rounds}
  report = report_lib.build(
      rows, throughput, command=command, runs=runs,
      date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
      settings=settings, machine=machine(), versions=versions())
  report_lib.write(report, out)
  print(report["verdict"]["text"])
  print(f"wrote {os.path.join(out, 'report.md')}, report.json and curves.png")
  return 0


if __name__ == "__main__":
  hugepages.relaunch()  # first: glibc reads GLIBC_TUNABLES at start
  sys.exit(main())
