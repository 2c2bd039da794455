"""Pictures of the autoencoder study: labelled digit grids and the plots of its numbers."""

import os

import numpy as np

from vae_jax.training.pictures import tile

SAMPLER_TITLES = {"prior": "decode(z ~ N(0, I))", "gmm": "decode(GMM draw)",
                  "midpoint": "decode(midpoint of 2 test codes)",
                  "reconstruction": "reconstructions (reference)"}


def _pyplot():
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  return plt


def _save(fig, path: str) -> str:
  os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
  fig.savefig(path, dpi=100, bbox_inches="tight")
  _pyplot().close(fig)
  return path


def _canvas_figure(path: str, cells, row_labels, col_labels, title: str, cell_inches: float = 2.6):
  """A table of digit canvases (2-D arrays in [0, 1], 1 = ink; None leaves a cell blank)."""
  plt = _pyplot()
  rows, cols = len(cells), max(len(r) for r in cells)
  heights = [max((c.shape[0] for c in r if c is not None), default=1) for r in cells]
  widths = [max((r[j].shape[1] for r in cells if j < len(r) and r[j] is not None), default=1)
            for j in range(cols)]
  scale = cell_inches / max(widths)
  fig, axes = plt.subplots(rows, cols, squeeze=False, layout="constrained",
                           figsize=(sum(widths) * scale + 1.5, sum(heights) * scale + 0.05 * rows + 0.6),
                           gridspec_kw={"height_ratios": heights, "width_ratios": widths})
  for i, row in enumerate(cells):
    for j in range(cols):
      ax = axes[i][j]
      ax.set_xticks([])
      ax.set_yticks([])
      for spine in ax.spines.values():
        spine.set_visible(False)
      if j < len(row) and row[j] is not None:
        ax.imshow(row[j], cmap="Greys", vmin=0.0, vmax=1.0, interpolation="nearest")
      if i == 0 and col_labels:
        ax.set_title(col_labels[j], fontsize=9)
      if j == 0 and row_labels:
        ax.set_ylabel(row_labels[i], fontsize=9, rotation=0, ha="right", va="center")
  fig.suptitle(title, fontsize=10)
  return _save(fig, path)


def reconstruction_grid(path: str, originals, recons: dict, latent_sizes) -> str:
  """Test digits (top row) and each model's reconstructions at each latent size (a column per model)."""
  models = list(recons)
  cells = [[tile(originals, len(originals)) for _ in models]]
  cells += [[tile(recons[m][i], len(originals)) for m in models] for i in range(len(latent_sizes))]
  return _canvas_figure(path, cells, ["test digits"] + [f"latent {l}" for l in latent_sizes],
                        models, "reconstructions decode(encode(x)) by bottleneck size", 3.2)


def sampler_grid(path: str, images: dict, latent_dim: int) -> str:
  """A row per model, a column per sampler: decoded prior, GMM and midpoint codes, reconstructions."""
  models = list(images)
  samplers = [s for s in SAMPLER_TITLES if all(s in images[m] for m in models)]
  cells = [[tile(images[m][s], int(np.ceil(np.sqrt(len(images[m][s]))))) for s in samplers]
           for m in models]
  return _canvas_figure(path, cells, models, [SAMPLER_TITLES[s] for s in samplers],
                        f"what each model generates (latent size {latent_dim})")


def interpolation_grid(path: str, rows: dict, latent_dim: int) -> str:
  """Per model: test digit a, decoded codes on the line from a's code to b's, test digit b."""
  cells = [[tile(r.reshape(-1, *r.shape[2:]), r.shape[1])] for r in rows.values()]
  return _canvas_figure(path, cells, list(rows), None,
                        f"linear interpolation between the codes of two test digits (latent size "
                        f"{latent_dim}); first and last column: the test digits", 6.0)


def denoising_grid(path: str, clean, examples: dict, models) -> str:
  """Per noise level: noisy inputs, then each denoising model's outputs; clean digits on top."""
  cells = [[tile(clean, len(clean))]]
  labels = ["clean"]
  for p, row in examples.items():
    cells.append([tile(row["input"], len(clean))])
    labels.append(f"flipped {p:.0%}")
    for m in models:
      cells.append([tile(row[m], len(clean))])
      labels.append(f"{m} output")
  return _canvas_figure(path, cells, labels, None, "denoising: inputs with pixels flipped, outputs "
                        "of models trained on such inputs", 4.0)


# ---------------------------------------------------------------- plots of the numbers

def bottleneck_plot(path: str, rows: list[dict]) -> str:
  """BCE, pixel error and (VAEs) active units against latent size, a line per model."""
  plt = _pyplot()
  models = list(dict.fromkeys(r["model"] for r in rows))
  vaes = [m for m in models if any(r["model"] == m and r.get("stochastic") for r in rows)]
  panels = 3 if vaes else 2
  fig, axes = plt.subplots(1, panels, figsize=(5 * panels, 4))
  for m in models:
    mine = sorted((r for r in rows if r["model"] == m), key=lambda r: r["latent"])
    sizes = [r["latent"] for r in mine]
    style = "o-" if m in vaes else "s--"
    axes[0].plot(sizes, [r["bce"] for r in mine], style, label=m)
    axes[1].plot(sizes, [r["pixel_error"] for r in mine], style, label=m)
    if m in vaes:
      axes[2].plot(sizes, [r["active_units"] for r in mine], style, label=m)
  axes[0].set_ylabel("test BCE (nats/image)")
  axes[1].set_ylabel("test pixel error (%)")
  if vaes:
    sizes = sorted({r["latent"] for r in rows})
    axes[2].plot(sizes, sizes, ":", color="grey", label="all units")
    axes[2].set_ylabel("active units (Cov E[z] > 0.01)")
  sizes = sorted({r["latent"] for r in rows})
  for ax in axes:
    ax.set_xscale("log", base=2)
    ax.set_xticks(sizes, labels=[str(l) for l in sizes])
    ax.minorticks_off()
    ax.set_xlabel("latent size")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
  fig.suptitle("reconstruction of the test digits against the bottleneck size")
  fig.tight_layout()
  return _save(fig, path)


def loss_choice_plot(path: str, rows: list[dict]) -> str:
  """Bars of pixel error and BCE per training objective."""
  plt = _pyplot()
  names = [r["objective"] for r in rows]
  fig, axes = plt.subplots(1, 2, figsize=(8, 3.5))
  for ax, key, label in ((axes[0], "pixel_error", "test pixel error (%)"),
                         (axes[1], "bce", "test BCE (nats/image)")):
    values = [r[key] for r in rows]
    bars = ax.bar(names, values, color=["C0", "C1", "C2", "C3"][:len(rows)])
    ax.bar_label(bars, fmt="%.2f", fontsize=8)
    ax.set_ylabel(label)
    ax.set_xlabel("training loss")
    ax.grid(alpha=0.3, axis="y")
  model, latent_dim = rows[0]["model"], rows[0]["latent"]
  fig.suptitle(f"{model}, latent size {latent_dim}: the reconstruction loss it was trained with")
  fig.tight_layout()
  return _save(fig, path)


def denoising_plot(path: str, rows: list[dict]) -> str:
  """Pixel error of the output against the noise level; the noisy input's own error as a line."""
  plt = _pyplot()
  fig, ax = plt.subplots(figsize=(6, 4))
  noise = sorted({r["noise"] for r in rows})
  inputs = {r["noise"]: r["input_error"] for r in rows}
  ax.plot([100 * p for p in noise], [inputs[p] for p in noise], "k:^", label="noisy input itself")
  for i, m in enumerate(dict.fromkeys(r["model"] for r in rows)):
    for denoise, style in ((True, "o-"), (False, "x--")):
      mine = sorted((r for r in rows if r["model"] == m and bool(r["trained_noise"]) == denoise),
                    key=lambda r: r["noise"])
      label = f"{m}, trained on noisy inputs" if denoise else f"{m}, trained on clean digits"
      ax.plot([100 * r["noise"] for r in mine], [r["pixel_error"] for r in mine], style,
              color=f"C{i}", label=label)
  ax.set_xlabel("pixels flipped in the input (%)")
  ax.set_ylabel("output pixel error vs clean digit (%)")
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
  fig.suptitle("denoising")
  fig.tight_layout()
  return _save(fig, path)


def sample_quality_plot(path: str, rows: list[dict], floor: float) -> str:
  """FCD of each (model, sampler), log scale, with the real-digit floor."""
  plt = _pyplot()
  labels = [f"{r['model']}: {r['sampler']}" for r in rows]
  fig, ax = plt.subplots(figsize=(7, 0.3 * len(rows) + 1.5))
  order = list(SAMPLER_TITLES)
  colors = [f"C{order.index(r['sampler'])}" if r["sampler"] in order else "C9" for r in rows]
  ax.barh(labels, [max(r["fcd"], 1e-6) for r in rows], color=colors)
  ax.axvline(max(floor, 1e-6), color="k", linestyle=":", label=f"real digits (floor) {floor:.2f}")
  ax.set_xscale("log")
  ax.invert_yaxis()
  ax.set_xlabel("FCD to the test digits (lower is better)")
  ax.grid(alpha=0.3, axis="x")
  ax.legend(fontsize=8)
  fig.tight_layout()
  return _save(fig, path)
