"""The comparison's report: spread over seeds, the verdict, and report.json, report.md and curves.png."""

import json
import os

import numpy as np

FRAMEWORKS = {"jax": "JAX", "tf": "TF"}
CURVES = ("test_elbo", "train_loss", "seconds", "train_seconds")  # per-epoch keys of both row formats
THROUGHPUT = ("images_per_sec", "compile_seconds", "step_ms_median", "step_ms_p90",
              "eval_images_per_sec", "peak_rss_mib", "device_peak_mib", "device", "steps_timed",
              "steps_per_call")
SINGLE_SEED_NATS = 1.0  # the TF "spread" when there is one TF seed: its final test ELBO +- this


def spread(curves) -> dict:
  """Per-epoch mean, min and max over seeds of equally long curves (one list per seed)."""
  a = np.asarray(curves, np.float64)
  return {"mean": a.mean(0).tolist(), "min": a.min(0).tolist(), "max": a.max(0).tolist()}


def verdict(jax_final, tf_final, jax_images_per_sec: float, tf_images_per_sec: float,
            round_ratios=None) -> dict:
  """Does JAX's mean final test ELBO lie in the TF seeds' range? And the training throughput ratio.

  The range is min..max of the TF seeds' final test ELBO; with one TF seed, that value +- 1 nat.
  The images/s are those of the round with the median JAX/TF ratio when there were several.
  """
  jax_mean = float(np.mean(jax_final))
  low, high = float(min(tf_final)), float(max(tf_final))
  if len(tf_final) == 1:
    low, high = low - SINGLE_SEED_NATS, high + SINGLE_SEED_NATS
    rule = f"the one TF seed +- {SINGLE_SEED_NATS:g} nat"
  else:
    rule = f"min..max of {len(tf_final)} TF seeds"
  within = low <= jax_mean <= high
  if within:
    where = "lies within"
  elif jax_mean < low:
    where = f"lies {low - jax_mean:.2f} nats below"
  else:
    where = f"lies {jax_mean - high:.2f} nats above"
  ratio = jax_images_per_sec / tf_images_per_sec
  rounds = ""
  if round_ratios and len(round_ratios) > 1:
    rounds = (f", the median of {len(round_ratios)} alternating rounds "
              f"({', '.join(f'{r:.2f}' for r in round_ratios)})")
  text = (f"JAX's final test ELBO {jax_mean:.2f} (mean of {len(jax_final)} seed(s)) {where} the TF "
          f"range [{low:.2f}, {high:.2f}] ({rule}). Training throughput JAX/TF = {ratio:.2f}x "
          f"({jax_images_per_sec:,.0f} vs {tf_images_per_sec:,.0f} images/s{rounds}): JAX is "
          f"{'faster' if ratio > 1 else 'not faster'}.")
  return {"elbo_within_tf_range": within, "jax_final_test_elbo": jax_mean,
          "tf_final_test_elbo_range": [low, high], "range_rule": rule, "throughput_ratio": ratio,
          "throughput_round_ratios": list(round_ratios or [ratio]), "text": text}


def median_round(runs: dict) -> tuple[dict, list[float]]:
  """({framework: its result in the round with the median JAX/TF ratio}, every round's ratio).

  `runs[name]` lists the benchmarks.throughput results, one per round (JAX and TF run back to
  back in each round, so a round's ratio sees one state of a noisy machine).
  """
  ratios = [j["images_per_sec"] / t["images_per_sec"] for j, t in zip(runs["jax"], runs["tf"])]
  middle = sorted(range(len(ratios)), key=ratios.__getitem__)[(len(ratios) - 1) // 2]
  return {n: runs[n][middle] for n in runs}, ratios


def build(rows: dict, throughput: dict, **meta) -> dict:
  """report.json's content from each framework's per-seed epoch rows and its throughput run(s)."""
  report = dict(meta)
  # One throughput result per framework, or a list of them (one per round).
  runs = {n: v if isinstance(v, list) else [v] for n, v in throughput.items()}
  chosen, ratios = median_round(runs)
  for name in FRAMEWORKS:
    report[name] = {k: [[r[k] for r in seed_rows] for seed_rows in rows[name]] for k in CURVES}
    report[name].update({k: chosen[name][k] for k in THROUGHPUT})
    report[name]["images_per_sec_rounds"] = [r["images_per_sec"] for r in runs[name]]
  report["verdict"] = verdict(*([c[-1] for c in report[n]["test_elbo"]] for n in FRAMEWORKS),
                              *(report[n]["images_per_sec"] for n in FRAMEWORKS), ratios)
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


def markdown(report: dict) -> str:
  """report.md: the verdict, per-epoch tables, throughput, and how the numbers were made."""
  s = report["settings"]
  seeds = len(report["jax"]["test_elbo"])
  lines = [f"# JAX vs TensorFlow: the tutorial's CVAE on {s['data']}", "",
           f"**Verdict.** {report['verdict']['text']}", "",
           f"Epochs {s['epochs']}, train size {s['train_size'] or 'all'}, batch {s['batch_size']}, "
           f"latent {s['latent_dim']}, seeds {s['seeds']}. Both frameworks train on the same "
           "binarized arrays in the same batch order (vae_jax.data.epoch_order); their noise draws "
           "differ, so curves agree statistically, not bitwise.", ""]
  for key, title in (("test_elbo", "Test ELBO (nats, higher is better)"),
                     ("train_loss", "Train loss (-ELBO, nats)"),
                     ("train_seconds", "Training seconds per epoch (compile/trace excluded)"),
                     ("seconds", "Wall seconds per epoch (compile, evaluation and JAX's pictures and "
                                 "checkpoint included)")):
    spreads = {n: spread(report[n][key]) for n in FRAMEWORKS}
    lines += [f"## {title}", "", f"Mean over {seeds} seed(s), [min, max] when they differ.", "",
              *_table(["epoch", *FRAMEWORKS.values()],
                      [[i + 1, *(_cell(spreads[n], i) for n in FRAMEWORKS)]
                       for i in range(len(spreads["jax"]["mean"]))]), ""]
  j, t = report["jax"], report["tf"]
  rows = [["training images/s (steady state)", _number(j["images_per_sec"], 0),
           _number(t["images_per_sec"], 0), f"{j['images_per_sec'] / t['images_per_sec']:.2f}x"],
          ["step time median (ms)", _number(j["step_ms_median"], 2), _number(t["step_ms_median"], 2), ""],
          ["step time p90 (ms)", _number(j["step_ms_p90"], 2), _number(t["step_ms_p90"], 2), ""],
          ["compile / first call (s)", _number(j["compile_seconds"], 2),
           _number(t["compile_seconds"], 2), ""],
          ["evaluation images/s (forward loss)", _number(j["eval_images_per_sec"], 0),
           _number(t["eval_images_per_sec"], 0),
           f"{j['eval_images_per_sec'] / t['eval_images_per_sec']:.2f}x"],
          ["peak host memory (MiB, ru_maxrss)", _number(j["peak_rss_mib"], 0),
           _number(t["peak_rss_mib"], 0), ""],
          ["peak device memory (MiB)", _number(j["device_peak_mib"], 0),
           _number(t["device_peak_mib"], 0), ""],
          ["device", j["device"], t["device"], ""],
          ["steps timed", j["steps_timed"], t["steps_timed"], ""]]
  m = report["machine"]
  rounds = report["verdict"]["throughput_round_ratios"]
  lines += ["## Throughput", "",
            f"Each framework in its own process (benchmarks.throughput), batch {s['batch_size']}, "
            "fixed random binarized batches already on the device.", ""]
  if len(rounds) > 1:
    lines += [f"{len(rounds)} rounds, JAX and TF back to back in each (TF first in every second "
              "round), because this machine's speed drifts by 10-20% over minutes; the table is "
              "the round with the median JAX/TF ratio.", "",
              *_table(["round", "JAX images/s", "TF images/s", "JAX/TF"],
                      [[i + 1, _number(a, 0), _number(b, 0), f"{r:.2f}x"] for i, (a, b, r) in
                       enumerate(zip(j["images_per_sec_rounds"], t["images_per_sec_rounds"], rounds))]),
              ""]
  lines += [*_table(["", "JAX", "TF", "JAX/TF"], rows), "",
            f"JAX runs the main job's compiled lax.scan chunks of {j['steps_per_call']} steps: its "
            "step time is a chunk's wall time divided by its length. TF runs the tutorial's "
            "tf.function train_step once per step; its compile time is the first call (trace, "
            "optimize, one step). TF's evaluation is the tutorial's eager compute_loss.", "",
            "## How these numbers were made", "",
            f"- command: `{' '.join(report['command'])}`",
            f"- date: {report['date']}",
            f"- machine: {m['cpu']}, {m['cores']} cores, {m['platform']}",
            f"- environment of both frameworks' runs: GLIBC_TUNABLES="
            f"`{m.get('glibc_tunables') or '(unset)'}` (vae_jax/hugepages.py)",
            "- versions: " + ", ".join(f"{k} {v}" for k, v in report["versions"].items()), ""]
  return "\n".join(lines)


def plot(report: dict, path: str) -> None:
  """Test ELBO and train loss per epoch (mean line, min-max band) and training images/s bars."""
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  from matplotlib.ticker import MaxNLocator  # pylint: disable=import-outside-toplevel
  fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
  for ax, key, label in ((axes[0], "test_elbo", "test ELBO (nats, higher is better)"),
                         (axes[1], "train_loss", "train loss (nats)")):
    for i, name in enumerate(FRAMEWORKS):
      s = spread(report[name][key])
      epochs = np.arange(1, len(s["mean"]) + 1)
      ax.plot(epochs, s["mean"], "o-", color=f"C{i}",
              label=f"{FRAMEWORKS[name]}: mean, min-max of {len(report[name][key])} seed(s)")
      ax.fill_between(epochs, s["min"], s["max"], color=f"C{i}", alpha=0.25)
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel(label)
    ax.grid(alpha=0.3)
    ax.legend()
  values = [report[n]["images_per_sec"] for n in FRAMEWORKS]
  bars = axes[2].bar(list(FRAMEWORKS.values()), values, color=["C0", "C1"])
  axes[2].bar_label(bars, labels=[f"{v:,.0f}" for v in values])
  axes[2].set_ylabel("training images/s (steady state)")
  axes[2].set_title(f"JAX/TF = {report['verdict']['throughput_ratio']:.2f}x, "
                    f"batch {report['settings']['batch_size']}")
  fig.suptitle(f"JAX vs TF CVAE: {report['settings']['data']}, {report['machine']['cpu']}")
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)
