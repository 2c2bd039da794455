"""The comparison's report: spread over seeds, the verdicts, and report.json, report.md and curves.png.

The port ("jax") is set against each peer that ran: the TensorFlow tutorial ("tf") and the tutorial's
Keras model on Keras 3 with the JAX backend ("keras_jax").
"""

import importlib.metadata
import json
import os
import platform

import numpy as np

PORT = "jax"
FRAMEWORKS = {"jax": "JAX", "tf": "TF", "keras_jax": "Keras on JAX"}  # in the report's column order
CURVES = ("test_elbo", "train_loss", "seconds", "train_seconds")  # per-epoch keys of every row format
THROUGHPUT = ("images_per_sec", "compile_seconds", "step_ms_median", "step_ms_p90",
              "eval_images_per_sec", "peak_rss_mib", "device_peak_mib", "device", "steps_timed",
              "steps_per_call")
SINGLE_SEED_NATS = 1.0  # a peer's "spread" when it has one seed: its final test ELBO +- this


def versions(packages) -> dict:
  """Python's version and each package's (None where it is not installed)."""
  found = {"python": platform.python_version()}
  for name in packages:
    try:
      found[name] = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
      found[name] = None
  return found


def spread(curves) -> dict:
  """Per-epoch mean, min and max over seeds of equally long curves (one list per seed)."""
  a = np.asarray(curves, np.float64)
  return {"mean": a.mean(0).tolist(), "min": a.min(0).tolist(), "max": a.max(0).tolist()}


def verdict(jax_final, peer_final, jax_images_per_sec: float, peer_images_per_sec: float,
            round_ratios=None, peer: str = "tf") -> dict:
  """Does JAX's mean final test ELBO lie in the peer seeds' range? And the training throughput ratio.

  The range is min..max of the peer seeds' final test ELBO; with one peer seed, that value +- 1 nat.
  The ratio is jax_images_per_sec / peer_images_per_sec: with several rounds, pass the round with the
  median ratio (`median_round`) and every round's ratio.
  """
  label = FRAMEWORKS[peer]
  jax_mean = float(np.mean(jax_final))
  low, high = float(min(peer_final)), float(max(peer_final))
  if len(peer_final) == 1:
    low, high = low - SINGLE_SEED_NATS, high + SINGLE_SEED_NATS
    rule = f"the one {label} seed +- {SINGLE_SEED_NATS:g} nat"
  else:
    rule = f"min..max of {len(peer_final)} {label} seeds"
  within = low <= jax_mean <= high
  if within:
    where = "lies within"
  elif jax_mean < low:
    where = f"lies {low - jax_mean:.2f} nats below"
  else:
    where = f"lies {jax_mean - high:.2f} nats above"
  ratio = jax_images_per_sec / peer_images_per_sec
  rounds = ""
  if round_ratios and len(round_ratios) > 1:
    rounds = (f", the median of {len(round_ratios)} alternating rounds "
              f"({', '.join(f'{r:.2f}' for r in round_ratios)})")
  text = (f"JAX's final test ELBO {jax_mean:.2f} (mean of {len(jax_final)} seed(s)) {where} the "
          f"{label} range [{low:.2f}, {high:.2f}] ({rule}). Training throughput JAX/{label} = "
          f"{ratio:.2f}x ({jax_images_per_sec:,.0f} vs {peer_images_per_sec:,.0f} images/s{rounds}): "
          f"JAX is {'faster' if ratio > 1 else 'not faster'}.")
  return {"peer": peer, "elbo_within_peer_range": within, "jax_final_test_elbo": jax_mean,
          "peer_final_test_elbo_range": [low, high], "range_rule": rule, "throughput_ratio": ratio,
          "throughput_round_ratios": list(round_ratios or [ratio]), "text": text}


def median_round(runs: dict, peer: str = "tf") -> tuple[int, list[float]]:
  """(index of the round with the median JAX/peer ratio, every round's JAX/peer ratio).

  `runs[name]` lists the benchmarks.throughput results, one per round (every framework runs back
  to back in each round, so a round's ratio sees one state of a noisy machine). With an even
  count, the lower of the two middle rounds.
  """
  ratios = [j["images_per_sec"] / p["images_per_sec"] for j, p in zip(runs[PORT], runs[peer])]
  return sorted(range(len(ratios)), key=ratios.__getitem__)[(len(ratios) - 1) // 2], ratios


def build(rows: dict, throughput: dict, precision: dict | None = None, skipped: dict | None = None,
          **meta) -> dict:
  """report.json's content from each framework's per-seed epoch rows and its throughput run(s).

  `rows` and `throughput` hold the port ("jax") and at least one peer. Each peer's throughput numbers
  are those of the round with the median JAX/peer ratio; the port's, those of the round with the
  median ratio against the first peer (TF when it ran). `precision` labels each framework's compute
  precision (default float32); `skipped` gives the reason for each framework that did not run.
  """
  names = [n for n in FRAMEWORKS if n in rows]
  peers = [n for n in names if n != PORT]
  if PORT not in names or not peers:
    raise ValueError(f"a report needs {PORT!r} and a peer, got {sorted(rows)}")
  report = dict(meta)
  report["frameworks"] = names
  report["precision"] = {n: (precision or {}).get(n, "float32") for n in names}
  report["skipped"] = dict(skipped or {})
  # One throughput result per framework, or a list of them (one per round).
  runs = {n: v if isinstance(v, list) else [v] for n, v in throughput.items()}
  middle, ratios = {}, {}
  for peer in peers:
    middle[peer], ratios[peer] = median_round(runs, peer)
  middle[PORT] = middle[peers[0]]
  for name in names:
    report[name] = {k: [[r[k] for r in seed_rows] for seed_rows in rows[name]] for k in CURVES}
    report[name].update({k: runs[name][middle[name]][k] for k in THROUGHPUT})
    report[name]["images_per_sec_rounds"] = [r["images_per_sec"] for r in runs[name]]
    report[name]["precision"] = report["precision"][name]
  jax_final = [c[-1] for c in report[PORT]["test_elbo"]]
  verdicts = {peer: verdict(jax_final, [c[-1] for c in report[peer]["test_elbo"]],
                            runs[PORT][middle[peer]]["images_per_sec"],
                            report[peer]["images_per_sec"], ratios[peer], peer)
              for peer in peers}
  report["verdict"] = {"text": " ".join(v["text"] for v in verdicts.values()), **verdicts}
  return report


def write(report: dict, out_dir: str) -> None:
  with open(os.path.join(out_dir, "report.json"), "w") as f:
    json.dump(report, f, indent=2)
  with open(os.path.join(out_dir, "report.md"), "w") as f:
    f.write(markdown(report))
  plot(report, os.path.join(out_dir, "curves.png"))


def _cell(s: dict, i: int) -> str:
  if s["min"][i] == s["max"][i]:
    return f"{s['mean'][i]:.2f}"
  return f"{s['mean'][i]:.2f} [{s['min'][i]:.2f}, {s['max'][i]:.2f}]"


def _table(header, rows) -> list[str]:
  return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header),
          *("| " + " | ".join(str(c) for c in row) + " |" for row in rows)]


def _number(value, digits=1) -> str:
  return "n/a" if value is None else f"{value:,.{digits}f}"


def _ratio(a, b) -> str:
  return "n/a" if a is None or b is None else f"{a / b:.2f}x"


def column(report: dict, name: str) -> str:
  """A framework's column header: its name and compute precision."""
  return f"{FRAMEWORKS[name]} ({report['precision'][name]})"


def markdown(report: dict) -> str:
  """report.md: the verdicts, per-epoch tables, throughput, and how the numbers were made."""
  s = report["settings"]
  names = report["frameworks"]
  peers = [n for n in names if n != PORT]
  headers = [column(report, n) for n in names]
  seeds = len(report[PORT]["test_elbo"])
  lines = [f"# {' vs '.join(FRAMEWORKS[n] for n in names)}: the tutorial's CVAE on {s['data']}", ""]
  for p in peers:
    lines += [f"**Verdict against {FRAMEWORKS[p]}.** {report['verdict'][p]['text']}", ""]
  if report.get("skipped"):
    lines += ["Skipped: " + "; ".join(f"{FRAMEWORKS.get(n, n)} ({why})"
                                      for n, why in report["skipped"].items()) + ".", ""]
  lines += [f"Epochs {s['epochs']}, train size {s['train_size'] or 'all'}, batch {s['batch_size']}, "
            f"latent {s['latent_dim']}, seeds {s['seeds']}. Compute precision: "
            + ", ".join(f"{FRAMEWORKS[n]} {report['precision'][n]}" for n in names)
            + " (weights, loss and Adam are float32 everywhere). Every framework trains on the same "
            "binarized arrays in the same batch order (vae_jax.data.epoch_order); their noise draws "
            "differ, so curves agree statistically, not bitwise.", ""]
  for key, title in (("test_elbo", "Test ELBO (nats, higher is better)"),
                     ("train_loss", "Train loss (-ELBO, nats)"),
                     ("train_seconds", "Training seconds per epoch (compile/trace excluded)"),
                     ("seconds", "Wall seconds per epoch (compile, evaluation and JAX's pictures and "
                                 "checkpoint included)")):
    spreads = {n: spread(report[n][key]) for n in names}
    lines += [f"## {title}", "", f"Mean over {seeds} seed(s), [min, max] when they differ.", "",
              *_table(["epoch", *headers],
                      [[i + 1, *(_cell(spreads[n], i) for n in names)]
                       for i in range(len(spreads[PORT]["mean"]))]), ""]
  r = {n: report[n] for n in names}
  j = r[PORT]

  def row(label, key, digits, ratio=None):
    cells = [_number(r[n][key], digits) if digits is not None else r[n][key] for n in names]
    return [label, *cells, *(ratio(p) if ratio else "" for p in peers)]

  rows = [["precision", *(report["precision"][n] for n in names), *("" for _ in peers)],
          row("training images/s (steady state)", "images_per_sec", 0,
              lambda p: f"{report['verdict'][p]['throughput_ratio']:.2f}x"),
          row("step time median (ms)", "step_ms_median", 2),
          row("step time p90 (ms)", "step_ms_p90", 2),
          row("compile / first call (s)", "compile_seconds", 2),
          row("evaluation images/s (forward loss)", "eval_images_per_sec", 0,
              lambda p: _ratio(j["eval_images_per_sec"], r[p]["eval_images_per_sec"])),
          row("peak host memory (MiB, ru_maxrss)", "peak_rss_mib", 0),
          row("peak device memory (MiB)", "device_peak_mib", 0),
          row("device", "device", None),
          row("steps timed", "steps_timed", None)]
  m = report["machine"]
  rounds = report["verdict"][peers[0]]["throughput_round_ratios"]
  lines += ["## Throughput", "",
            f"Each framework in its own process (benchmarks.throughput), batch {s['batch_size']}, "
            "fixed random binarized batches already on the device.", ""]
  if len(rounds) > 1:
    lines += [f"{len(rounds)} rounds, every framework back to back in each (the order rotates from "
              "round to round), because this machine's speed drifts by 10-20% over minutes. Each "
              "peer's column is its round with the median JAX/peer ratio, and the ratio is that "
              f"median; JAX's column is its round with the median JAX/{FRAMEWORKS[peers[0]]} "
              "ratio.", "",
              *_table(["round", *(f"{h} images/s" for h in headers),
                       *(f"JAX/{FRAMEWORKS[p]}" for p in peers)],
                      [[i + 1, *(_number(r[n]["images_per_sec_rounds"][i], 0) for n in names),
                        *(f"{report['verdict'][p]['throughput_round_ratios'][i]:.2f}x" for p in peers)]
                       for i in range(len(rounds))]),
              ""]
  lines += [*_table(["", *headers, *(f"JAX/{FRAMEWORKS[p]}" for p in peers)], rows), "",
            f"JAX runs the main job's compiled lax.scan chunks of {j['steps_per_call']} steps: its "
            "step time is a chunk's wall time divided by its length."]
  if "tf" in names:
    lines[-1] += (" TF runs the tutorial's tf.function train_step once per step; its compile time "
                  "is the first call (trace, optimize, one step). TF's evaluation is the tutorial's "
                  "eager compute_loss.")
  if "keras_jax" in names:
    lines[-1] += (" Keras on JAX runs the tutorial's model, loss and Adam unchanged "
                  "(benchmarks.peers.keras_reference) as jitted lax.scan chunks of "
                  f"{r['keras_jax']['steps_per_call']} steps of Keras' stateless_call and "
                  "stateless_apply, compiled ahead of time; its evaluation is the jitted stateless "
                  "loss per batch.")
  lines += ["", "## How these numbers were made", "",
            f"- command: `{' '.join(report['command'])}`",
            f"- date: {report['date']}",
            f"- machine: {m['cpu']}, {m['cores']} cores, {m['platform']}",
            f"- environment of every framework's runs: GLIBC_TUNABLES="
            f"`{m.get('glibc_tunables') or '(unset)'}` (vae_jax/training/hugepages.py)",
            "- versions: " + ", ".join(f"{k} {v}" for k, v in report["versions"].items()), ""]
  return "\n".join(lines)


def plot(report: dict, path: str) -> None:
  """Test ELBO and train loss per epoch (mean line, min-max band) and training images/s bars."""
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  from matplotlib.ticker import MaxNLocator  # pylint: disable=import-outside-toplevel
  names = report["frameworks"]
  colors = {n: f"C{i}" for i, n in enumerate(FRAMEWORKS)}
  fig, axes = plt.subplots(1, 3, figsize=(16, 4.4))
  for ax, key, label in ((axes[0], "test_elbo", "test ELBO (nats, higher is better)"),
                         (axes[1], "train_loss", "train loss (nats)")):
    for name in names:
      s = spread(report[name][key])
      epochs = np.arange(1, len(s["mean"]) + 1)
      ax.plot(epochs, s["mean"], "o-", color=colors[name],
              label=f"{column(report, name)}: mean, min-max of {len(report[name][key])} seed(s)")
      ax.fill_between(epochs, s["min"], s["max"], color=colors[name], alpha=0.25)
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel(label)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
  values = [report[n]["images_per_sec"] for n in names]
  bars = axes[2].bar([column(report, n).replace(" (", "\n(") for n in names], values,
                     color=[colors[n] for n in names])
  axes[2].bar_label(bars, labels=[f"{v:,.0f}" for v in values])
  axes[2].set_ylabel("training images/s (steady state)")
  axes[2].set_title(", ".join(f"JAX/{FRAMEWORKS[p]} = {report['verdict'][p]['throughput_ratio']:.2f}x"
                              for p in names if p != PORT)
                    + f", batch {report['settings']['batch_size']}", fontsize=10)
  fig.suptitle(f"{' vs '.join(FRAMEWORKS[n] for n in names)} CVAE: {report['settings']['data']}, "
               f"{report['machine']['cpu']}")
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)
