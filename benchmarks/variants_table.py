"""A likelihood table from runs of python -m experiments.mnist_vae evaluated by python -m experiments.evaluate.

  python -m benchmarks.variants_table RUN_DIR... --out benchmarks/results/NAME [--notes notes.md]
      [--title TITLE] [--reference "label=nats" ...]

Each RUN_DIR holds config.json, metrics.jsonl and evaluation.json. The table is written from those files
(never typed): one row per run, named by its directory, with its binarization, model, objective and the
settings that differ from the first run; from the last epoch's metrics on the whole test set, the
run's objective as evaluated (minus metrics' test_elbo, with KL weight 1 and no free bits: the -ELBO
for elbo, the k-sample bound for iwae) and the one-sample -ELBO, test_rec + test_kl; the importance-sampled NLL (± standard error), -ELBO, KL,
reconstruction and active units from evaluation.json (on its own test images, k as stated); training
images/s as the median over epochs after the first (the first includes compilation). The three files of
each run are copied to OUT/runs/NAME/; OUT/report.md (with --notes pasted above the table, and the
machine, versions and commit below it) and OUT/report.json are written. --reference adds rows of
published numbers (label=nats) after the table. An existing OUT/report.md is never overwritten.
"""

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys

from vae_jax import cli
from vae_jax.machine import cpu_name

FILES = ("config.json", "metrics.jsonl", "evaluation.json")
# Settings that tell the variants apart (shown when they differ from the first run).
VARYING = ("model", "objective", "kl", "beta", "iw_samples", "kl_warmup_epochs", "free_bits",
           "hidden_sizes", "activation", "latent_dim", "batch_size", "learning_rate", "epochs",
           "train_size", "denoise")


def parse_args(argv=None) -> argparse.Namespace:
  p = cli.ArgumentParser(prog="python -m benchmarks.variants_table", description=__doc__,
                         formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("runs", nargs="+", help="run directories")
  p.add_argument("--out", required=True, help="result folder")
  p.add_argument("--title", default="Likelihood of trained variants")
  p.add_argument("--notes", help="markdown file pasted above the table (commands, budget, load)")
  p.add_argument("--reference", action="append", default=[],
                 help="published row as LABEL=NATS (repeatable)")
  return p.parse_args(argv)


def load_run(path: str) -> dict:
  """The config, per-epoch metrics and evaluation of one run directory."""
  for name in FILES:
    if not os.path.exists(os.path.join(path, name)):
      raise FileNotFoundError(f"{path} has no {name}")
  with open(os.path.join(path, "config.json")) as f:
    config = json.load(f)
  with open(os.path.join(path, "metrics.jsonl")) as f:
    metrics = [json.loads(line) for line in f if line.strip()]
  with open(os.path.join(path, "evaluation.json")) as f:
    evaluation = json.load(f)
  return {"name": os.path.basename(os.path.normpath(path)), "path": path, "config": config,
          "metrics": metrics, "evaluation": evaluation}


def row(run: dict, first_config: dict) -> dict:
  """One table row of a loaded run."""
  config, metrics, ev = run["config"], run["metrics"], run["evaluation"]
  last = metrics[-1]
  later = [m["images_per_sec"] for m in metrics[1:]] or [metrics[0]["images_per_sec"]]
  differs = {k: config.get(k) for k in VARYING if config.get(k) != first_config.get(k)}
  res, settings = ev["results"], ev["settings"]
  return {
      "name": run["name"], "binarize": config.get("binarize", "threshold"),
      "model": config.get("model", "cvae"), "objective": config.get("objective", "elbo"),
      "differs": differs, "epochs_done": last["epoch"],
      # metrics' "test_elbo" is minus the objective evaluated with KL weight 1 (for iwae the k-sample
      # bound); rec + kl is the one-sample -ELBO for every objective.
      "test_objective": -last["test_elbo"], "test_neg_elbo": last["test_rec"] + last["test_kl"],
      "test_rec": last["test_rec"], "test_kl": last["test_kl"],
      "nll": res["nll"], "nll_se": res["nll_se"], "nll_bits_per_dim": res["nll_bits_per_dim"],
      "eval_neg_elbo": res["neg_elbo"], "kl": res["kl"], "rec": res["rec"],
      "active_units": res["active_units"], "latent_dim": res["latent_dim"],
      "iw_samples": settings["iw_samples"], "test_images": res["test_images"],
      "nll_by_k": res.get("nll_by_k", {}), "images_per_sec": statistics.median(later),
      "train_seconds": sum(m.get("seconds", 0.0) for m in metrics),
      "eval_seconds": ev.get("timing", {}).get("seconds"), "versions": ev.get("versions", {}),
  }


def _settings(differs: dict) -> str:
  return ", ".join(f"{k}={v}" for k, v in differs.items()) or "—"


def markdown_table(rows: list[dict]) -> list[str]:
  header = ["run", "binarization", "model / objective", "settings vs first row", "epochs",
            "test loss (objective)", "−ELBO test (rec + KL)", "IS NLL (nats)", "−ELBO (same images)", "KL", "rec",
            "active units", "train images/s"]
  lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
  for r in rows:
    lines.append("| " + " | ".join([
        r["name"], r["binarize"], f"{r['model']} / {r['objective']}", _settings(r["differs"]),
        str(r["epochs_done"]), f"{r['test_objective']:.2f}", f"{r['test_neg_elbo']:.2f}",
        f"{r['nll']:.2f} ± {r['nll_se']:.2f} (k={r['iw_samples']}, {r['test_images']} images)",
        f"{r['eval_neg_elbo']:.2f}", f"{r['kl']:.2f}", f"{r['rec']:.2f}",
        f"{r['active_units']}/{r['latent_dim']}", f"{r['images_per_sec']:.0f}"]) + " |")
  return lines


def machine() -> dict:
  return {"cpu": cpu_name(), "cores": os.cpu_count(), "platform": platform.platform(),
          "python": platform.python_version()}


def commit() -> str:
  try:
    return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                          check=True).stdout.strip()
  except (OSError, subprocess.CalledProcessError):
    return "unknown"


def main(argv=None) -> int:
  args = parse_args(argv)
  report_md = os.path.join(args.out, "report.md")
  if os.path.exists(report_md):
    print(f"error: {report_md} exists; choose another --out", file=sys.stderr)
    return 2
  try:
    runs = [load_run(p) for p in args.runs]
    references = []
    for ref in args.reference:
      label, _, nats = ref.rpartition("=")
      references.append({"label": label, "nats": float(nats)})
  except (FileNotFoundError, ValueError, KeyError, json.JSONDecodeError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  rows = [row(r, runs[0]["config"]) for r in runs]
  first = runs[0]["config"]
  info = {"machine": machine(), "versions": rows[0]["versions"], "table_commit": commit(),
          "first_run_config": first}
  os.makedirs(args.out, exist_ok=True)
  for r in runs:
    dst = os.path.join(args.out, "runs", r["name"])
    os.makedirs(dst, exist_ok=True)
    for name in FILES:
      shutil.copy(os.path.join(r["path"], name), os.path.join(dst, name))
  lines = [f"# {args.title}", ""]
  if args.notes:
    with open(args.notes) as f:
      lines += [f.read().rstrip(), ""]
  common = {k: first.get(k) for k in VARYING}
  lines += [f"Settings of the first row: {_settings(common)}; data {first.get('data')}.", ""]
  lines += markdown_table(rows) + [""]
  if references:
    lines += ["Published (for comparison, not run here):", "", "| reference | NLL (nats) |", "|---|---|"]
    lines += [f"| {ref['label']} | {ref['nats']:.2f} |" for ref in references] + [""]
  lines += ["IS NLL by k (nats): " + "; ".join(
      f"{r['name']}: " + ", ".join(f"k={k} {v:.2f}" for k, v in r["nll_by_k"].items()) for r in rows), ""]
  lines += [f"Machine: {info['machine']['cpu']}, {info['machine']['cores']} cores, "
            f"{info['machine']['platform']}, Python {info['machine']['python']}; versions "
            + ", ".join(f"{k} {v}" for k, v in info["versions"].items())
            + f". Table written at commit {info['table_commit']}.", ""]
  lines += ["Each run's config.json, metrics.jsonl and evaluation.json are in runs/NAME/. "
            "Table written by `python -m benchmarks.variants_table`.", ""]
  with open(report_md, "w") as f:
    f.write("\n".join(lines))
  with open(os.path.join(args.out, "report.json"), "w") as f:
    json.dump({"rows": rows, "references": references, **info}, f, indent=2)
  print("\n".join(markdown_table(rows)))
  return 0


if __name__ == "__main__":
  cli.start(lambda: cli.main(main))
