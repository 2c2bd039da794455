"""Training throughput of the data-parallel strategies against device count, one process per run.

    python -m benchmarks.scaling --devices 1 2 4 --out DIR

For each strategy (--strategies) and device count n, runs benchmarks.throughput in its own process
with --parallel STRATEGY --devices n: the main job's compiled training chunk, compile timed apart,
one warm-up call, then --steps timed steps. On a host without accelerators the n devices are
simulated by XLA on the host's cores; elsewhere they are the first n real devices. The global batch
stays --batch-size at every n, or with --scale-batch grows to --batch-size per device. Writes
DIR/scaling.json and DIR/scaling.md (machine, versions, command); each run's log is in DIR/logs.
"""

import argparse
import datetime
import json
import os
import shlex
import sys

from benchmarks.compare import RunFailed, machine, run, versions
from vae_jax import cli
from vae_jax.config import get_config


def parse_args(argv=None) -> argparse.Namespace:
  d = get_config()
  p = cli.ArgumentParser(prog="python -m benchmarks.scaling", description=__doc__,
                         formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--devices", type=int, nargs="+", default=[1, 2, 4], help="device counts")
  p.add_argument("--strategies", nargs="+", choices=("sharded", "pmap"),
                 default=["sharded", "pmap"])
  p.add_argument("--batch-size", type=int, default=d.batch_size,
                 help="global batch (per device with --scale-batch)")
  p.add_argument("--scale-batch", action="store_true",
                 help="weak scaling: the global batch grows with the device count")
  p.add_argument("--latent-dim", type=int, default=d.latent_dim)
  p.add_argument("--steps", type=int, default=200, help="training steps timed (whole chunks)")
  p.add_argument("--steps-per-chunk", type=int, default=0,
                 help="steps per compiled chunk (0: the backend's default)")
  p.add_argument("--out", required=True, help="a new or empty directory")
  args = p.parse_args(argv)
  if min(args.devices) < 1 or min(args.batch_size, args.steps, args.latent_dim) < 1:
    p.error("--devices, --batch-size, --steps and --latent-dim must be >= 1")
  if not args.scale_batch and any(args.batch_size % n for n in args.devices):
    p.error(f"--batch-size {args.batch_size} does not divide over every device count "
            f"{args.devices}; choose a multiple of each, or --scale-batch")
  if os.path.isdir(args.out) and os.listdir(args.out):
    p.error(f"--out {args.out} is not empty; choose a new directory")
  return args


def measure_all(args, out: str) -> list[dict]:
  """One benchmarks.throughput process per (strategy, device count); a failed one is recorded."""
  results = []
  for strategy in args.strategies:
    for n in sorted(args.devices):
      name = f"{strategy}_{n}"
      batch = args.batch_size * n if args.scale_batch else args.batch_size
      path = os.path.join(out, "logs", name + ".json")
      argv = [sys.executable, "-m", "benchmarks.throughput", "--framework", "jax",
              "--parallel", strategy, "--devices", str(n), "--batch-size", str(batch),
              "--latent-dim", str(args.latent_dim), "--steps", str(args.steps),
              "--steps-per-chunk", str(args.steps_per_chunk), "--out", path]
      row = {"strategy": strategy, "devices": n, "batch_size": batch, "batch_per_device": batch // n}
      try:
        run(name, argv, os.path.join(out, "logs", name + ".log"))
        with open(path) as f:
          row.update(json.load(f))
      except RunFailed as e:
        row["error"] = str(e)
      results.append(row)
  for row in results:  # speed-up over the same strategy on its fewest devices
    if "error" not in row:
      base = next(r for r in results if r["strategy"] == row["strategy"] and "error" not in r)
      row["speedup"] = row["images_per_sec"] / base["images_per_sec"]
      row["efficiency"] = row["speedup"] / (row["devices"] / base["devices"])
  return results


def markdown(report: dict) -> str:
  rows = report["results"]
  simulated = all(r.get("device", "cpu") == "cpu" for r in rows)
  m, v = report["machine"], report["versions"]
  lines = [
      "# Data-parallel scaling of training throughput",
      "",
      f"Command: `{report['command']}`  ",
      f"Date: {report['date']}  ",
      f"Machine: {m['cpu']}, {m['cores']} cores, {m['platform']}  ",
      "Versions: " + ", ".join(f"{k} {v[k]}" for k in ("python", "jax", "jaxlib", "flax", "optax")),
      "",
      f"{'Weak' if report['scale_batch'] else 'Strong'} scaling: the global batch is "
      f"{'--batch-size per device' if report['scale_batch'] else 'the same at every count'}; "
      f"latent {report['latent_dim']}, {report['steps']} timed steps per run, each run in its own "
      "process (benchmarks.throughput). Speed-up is over the same strategy on its fewest devices; "
      "efficiency is speed-up / (device ratio).",
      "",
      "| strategy | devices | device | global batch | per device | images/s | speed-up | efficiency "
      "| step ms median | p90 | compile s |",
      "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|",
  ]
  for r in rows:
    if "error" in r:
      lines.append(f"| {r['strategy']} | {r['devices']} | failed: {r['error']} |||||||||")
      continue
    lines.append(
        f"| {r['strategy']} | {r['devices']} | {r['device']} | {r['batch_size']} | "
        f"{r['batch_per_device']} | {r['images_per_sec']:,.0f} | {r['speedup']:.2f} | "
        f"{r['efficiency']:.2f} | {r['step_ms_median']:.1f} | {r['step_ms_p90']:.1f} | "
        f"{r['compile_seconds']:.1f} |")
  if simulated:
    lines += ["", f"These devices are simulated: XLA splits one CPU host ({m['cores']} cores) into "
              "N devices, which all share the same cores. No speed-up is expected; the numbers "
              "show what splitting the batch and all-reducing the gradients cost. A speed-up needs "
              "several accelerators or hosts."]
  return "\n".join(lines) + "\n"


def main(argv=None) -> int:
  args = parse_args(argv)
  command = shlex.join(["python", "-m", "benchmarks.scaling",
                        *(sys.argv[1:] if argv is None else argv)])
  os.makedirs(os.path.join(args.out, "logs"), exist_ok=True)
  report = {"command": command, "date": datetime.datetime.now().isoformat(timespec="seconds"),
            "machine": machine(), "versions": versions(), "scale_batch": args.scale_batch,
            "latent_dim": args.latent_dim, "steps": args.steps,
            "results": measure_all(args, args.out)}
  with open(os.path.join(args.out, "scaling.json"), "w") as f:
    json.dump(report, f, indent=2)
  with open(os.path.join(args.out, "scaling.md"), "w") as f:
    f.write(markdown(report))
  print(f"wrote {os.path.join(args.out, 'scaling.md')}")
  return 0 if all("error" not in r for r in report["results"]) else 1


if __name__ == "__main__":
  cli.start(lambda: cli.main(main))
