"""Compares the JAX port with its peers: learning curves over seeds, and training throughput.

  python -m benchmarks.compare --data idx:../shared/data/mnist --epochs 10 --seeds 3 --out benchmarks/results/NAME

The peers (benchmarks/peers/): the TensorFlow tutorial (tf: benchmarks.peers.tf_reference) and the
tutorial's Keras model, loss and Adam on Keras 3 with the JAX backend (keras_jax:
benchmarks.peers.keras_reference). --frameworks picks them (default: all three); a peer whose
package is not installed is skipped, and the report says why.
Runs one process at a time (concurrent runs would share the cores): for each seed, the JAX main job
(experiments.mnist_vae) and each peer, on the same arrays in the same batch order; then
benchmarks.throughput for every framework in rounds, the order rotating from round to round. Writes
OUT/report.json, OUT/report.md and OUT/curves.png; each run's own outputs and log stay below OUT.
"""

import argparse
import datetime
import importlib.metadata
import importlib.util
import json
import os
import platform
import shlex
import subprocess
import sys
import time

from benchmarks import report as report_lib
from vae_jax import data as data_lib
from vae_jax import cli
from vae_jax.config import get_config
from vae_jax.errors import UserError
from vae_jax.machine import cpu_name
from vae_jax.training.run import METRICS_FILE, read_metrics

PACKAGES = ("jax", "jaxlib", "flax", "optax", "tensorflow", "keras", "numpy")
FRAMEWORKS = tuple(report_lib.FRAMEWORKS)  # jax (the port), tf, keras_jax


def missing(name: str) -> str | None:
  """Why framework `name` cannot run here, or None when it can."""
  if name == "tf" and importlib.util.find_spec("tensorflow") is None:
    return "tensorflow is not installed"
  if name == "keras_jax":
    if importlib.util.find_spec("keras") is None:
      return "keras is not installed"
    version = importlib.metadata.version("keras")
    if int(version.split(".")[0]) < 3:
      return f"keras {version} is not Keras 3 (the JAX backend needs keras>=3)"
  return None


def parse_args(argv=None) -> argparse.Namespace:
  d = get_config()
  p = cli.ArgumentParser(prog="python -m benchmarks.compare", description=__doc__,
                         formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--data", default=d.data, help="tfds:NAME | idx:DIR | mnist-5k | auto")
  p.add_argument("--epochs", type=int, default=10)
  p.add_argument("--train-size", type=int, default=d.train_size,
                 help="use only the first N training examples (default: all)")
  p.add_argument("--seeds", type=int, default=3, help="train seeds 0..K-1 with each framework")
  p.add_argument("--batch-size", type=int, default=d.batch_size)
  p.add_argument("--latent-dim", type=int, default=d.latent_dim)
  p.add_argument("--steps", type=int, default=500, help="training steps timed in each throughput run")
  p.add_argument("--steps-per-chunk", type=int, default=0,
                 help="jax and keras_jax throughput runs: steps per compiled chunk (0: each one's "
                      "default; a small chunk compiles fast, for smoke runs)")
  p.add_argument("--throughput-rounds", type=int, default=3,
                 help="JAX and TF throughput runs back to back this many times; the median ratio counts")
  p.add_argument("--frameworks", default=",".join(FRAMEWORKS),
                 help="comma-separated, jax first: jax (the port), tf (the TensorFlow tutorial), "
                      "keras_jax (the tutorial's Keras model on Keras 3 with the JAX backend); "
                      "those not installed are skipped")
  p.add_argument("--jax-dtype", choices=("float32", "bfloat16"), default="float32",
                 help="the port's --dtype: bfloat16 is mixed precision: float32 parameters, activations, loss and Adam; only the GEMMs take bfloat16 inputs, accumulating in float32")
  p.add_argument("--tf-precision", choices=("float32", "mixed_bfloat16"), default="float32",
                 help="Keras dtype policy of the TF reference")
  p.add_argument("--keras-precision", choices=("float32", "mixed_bfloat16"), default="float32",
                 help="Keras dtype policy of the Keras-on-JAX reference")
  p.add_argument("--out", required=True, help="new or empty directory for the report")
  args = p.parse_args(argv)
  names = [n.strip() for n in args.frameworks.split(",") if n.strip()]
  unknown = [n for n in names if n not in FRAMEWORKS]
  if unknown:
    p.error(f"--frameworks: unknown {', '.join(unknown)}; choose from {', '.join(FRAMEWORKS)}")
  if not names or names[0] != report_lib.PORT or len(set(names)) != len(names):
    p.error(f"--frameworks must start with jax and name each framework once, got {args.frameworks!r}")
  args.skipped = {n: missing(n) for n in names if missing(n)}
  args.frameworks = [n for n in names if n not in args.skipped]
  if len(args.frameworks) < 2:
    p.error("--frameworks: no peer to compare with ("
            + ("; ".join(f"{n} skipped: {why}" for n, why in args.skipped.items()) or "only jax given")
            + ")")
  for name in ("epochs", "seeds", "batch_size", "latent_dim", "steps", "train_size",
               "throughput_rounds"):
    value = getattr(args, name)
    if value is not None and value < 1:
      p.error(f"--{name.replace('_', '-')} must be >= 1, got {value}")
  if args.steps_per_chunk < 0:
    p.error(f"--steps-per-chunk must be >= 0, got {args.steps_per_chunk}")
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
  # Every framework's processes inherit this process's environment (see vae_jax.training.hugepages).
  return {"cpu": cpu_name(), "cores": os.cpu_count(), "platform": platform.platform(),
          "glibc_tunables": os.environ.get("GLIBC_TUNABLES", "")}


def versions() -> dict:
  return report_lib.versions(PACKAGES)


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
  names = args.frameworks
  precision = {"jax": args.jax_dtype, "tf": args.tf_precision, "keras_jax": args.keras_precision}
  precision_flags = {"jax": ["--dtype", args.jax_dtype], "tf": ["--precision", args.tf_precision],
                     "keras_jax": ["--precision", args.keras_precision]}
  modules = {"tf": "benchmarks.peers.tf_reference",
             "keras_jax": "benchmarks.peers.keras_reference"}
  rows, throughput, runs = {n: [] for n in names}, {n: [] for n in names}, []
  for name, why in args.skipped.items():
    print(f"[{name}] skipped: {why}", flush=True)

  def run_logged(name, argv):
    runs.append(argv)
    run(name, argv, os.path.join(out, "logs", name.replace(" ", "_") + ".log"))

  try:
    for seed in range(args.seeds):
      for name in names:
        workdir = os.path.join(out, name, f"seed{seed}")
        if name == "jax":
          cmd = [py, "-m", "experiments.mnist_vae", *common, *precision_flags[name],
                   "--seed", str(seed), "--workdir", workdir]
        else:
          os.makedirs(workdir)
          cmd = [py, "-m", modules[name], *common, *precision_flags[name], "--seed", str(seed),
                   "--out", os.path.join(workdir, METRICS_FILE)]
        run_logged(f"{name} seed {seed}", cmd)
        rows[name].append(read_metrics(workdir))
        print(f"  {name} seed {seed}: final test ELBO {rows[name][-1][-1]['test_elbo']:.2f}")
    for r in range(args.throughput_rounds):
      # Back to back, the order rotating each round: slow drifts of the machine's speed hit all.
      for name in names[r % len(names):] + names[:r % len(names)]:
        path = os.path.join(out, f"throughput_{name}_round{r + 1}.json")
        run_logged(f"{name} throughput round {r + 1}", [
            py, "-m", "benchmarks.throughput", "--framework", name, *precision_flags[name],
            "--batch-size", str(args.batch_size), "--latent-dim", str(args.latent_dim),
            "--steps", str(args.steps), "--out", path,
            *(["--steps-per-chunk", str(args.steps_per_chunk)]
              if args.steps_per_chunk and name != "tf" else [])])
        with open(path) as f:
          throughput[name].append(json.load(f))
        print(f"  {name}: {throughput[name][-1]['images_per_sec']:,.0f} training images/s")
  except RunFailed as e:
    print(f"error: {e}", file=sys.stderr)
    return 2 if e.returncode == 2 else 1

  settings = {"data": args.data, "epochs": args.epochs, "train_size": args.train_size,
              "seeds": list(range(args.seeds)), "batch_size": args.batch_size,
              "latent_dim": args.latent_dim, "learning_rate": get_config().learning_rate,
              "throughput_steps": args.steps, "throughput_rounds": args.throughput_rounds,
              "throughput_steps_per_chunk": args.steps_per_chunk or "default",
              "frameworks": names}
  report = report_lib.build(
      rows, throughput, precision={n: precision[n] for n in names}, skipped=args.skipped,
      command=command, runs=runs,
      date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
      settings=settings, machine=machine(), versions=versions())
  report_lib.write(report, out)
  print(report["verdict"]["text"])
  print(f"wrote {os.path.join(out, 'report.md')}, report.json and curves.png")
  return 0


if __name__ == "__main__":
  cli.start(lambda: cli.main(main))
