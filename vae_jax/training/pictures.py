"""Pictures of a run: per-epoch sample/reconstruction grids, their GIF, curves, the latent manifold."""

import glob
import os
import statistics

import imageio.v3 as iio
import numpy as np

from vae_jax.training.workdir import writing

_SCALE = 3  # nearest-neighbour upscaling so 28x28 digits are visible
_GAP = 0.2  # gap intensity: a light grey line once inverted


def tile(images: np.ndarray, cols: int) -> np.ndarray:
  """(n, h, w[, 1]) images in [0, 1] -> one (rows*h, cols*w) array, row-major, 1-pixel gaps."""
  images = np.asarray(images, np.float32).reshape(len(images), *images.shape[1:3])
  n, h, w = images.shape
  rows = -(-n // cols)
  canvas = np.full((rows * (h + 1) + 1, cols * (w + 1) + 1), _GAP, np.float32)
  for i, image in enumerate(images):
    r, c = divmod(i, cols)
    canvas[1 + r * (h + 1):1 + r * (h + 1) + h, 1 + c * (w + 1):1 + c * (w + 1) + w] = image
  return canvas


def to_png_array(canvas: np.ndarray) -> np.ndarray:
  big = np.kron(np.clip(canvas, 0.0, 1.0), np.ones((_SCALE, _SCALE), np.float32))
  return (255 * (1.0 - big)).round().astype(np.uint8)  # dark digits on white, as printed figures


def epoch_grid(samples: np.ndarray, originals: np.ndarray, reconstructions: np.ndarray) -> np.ndarray:
  """Generated samples (a square grid) beside originals and their reconstructions (pairs in a row)."""
  side = int(round(len(samples) ** 0.5))
  left = tile(samples, side)
  pairs = np.stack([originals, reconstructions], axis=1).reshape(-1, *originals.shape[1:])
  right = tile(pairs, 4)
  height = max(left.shape[0], right.shape[0])
  pad = lambda a: np.pad(a, ((0, height - a.shape[0]), (0, 0)), constant_values=_GAP)
  return to_png_array(np.concatenate([pad(left), np.full((height, 6), _GAP), pad(right)], axis=1))


def epoch_grid_path(workdir: str, epoch: int) -> str:
  return os.path.join(workdir, f"image_at_epoch_{epoch:04d}.png")


def save_epoch_grid(workdir: str, epoch: int, image: np.ndarray) -> str:
  path = epoch_grid_path(workdir, epoch)
  with writing(path):
    iio.imwrite(path, image)
  return path


def save_gif(workdir: str) -> str | None:
  """All epoch grids of the workdir, in order, as one animated GIF."""
  paths = sorted(glob.glob(os.path.join(workdir, "image_at_epoch_*.png")))
  if not paths:
    return None
  out = os.path.join(workdir, "training.gif")
  with writing(out):
    iio.imwrite(out, np.stack([iio.imread(p) for p in paths]), duration=200, loop=0)
  return out


def save_curves(workdir: str, rows: list[dict]) -> str:
  """Train loss and test -ELBO per epoch."""
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  epochs = [r["epoch"] for r in rows]
  fig, ax = plt.subplots(figsize=(6, 4))
  ax.plot(epochs, [r["train_loss"] for r in rows], "o-", label="train loss (-ELBO)")
  ax.plot(epochs, [-r["test_elbo"] for r in rows], "s-", label="test -ELBO")
  ax.set_xlabel("epoch")
  ax.set_ylabel("nats per image")
  ax.legend()
  ax.grid(alpha=0.3)
  out = os.path.join(workdir, "curves.png")
  fig.tight_layout()
  with writing(out):
    fig.savefig(out, dpi=100)
  plt.close(fig)
  return out


def manifold_grid(n: int = 20) -> np.ndarray:
  """(n*n, 2) latent points at the standard normal's quantiles 0.05..0.95 (the tutorial's grid)."""
  # The standard library's quantile function: JAX's would compile its ops one by one, and
  # scipy.special costs every run's start 0.2 s of imports.
  q = np.array([statistics.NormalDist().inv_cdf(p) for p in np.linspace(0.05, 0.95, n)])
  zy, zx = np.meshgrid(q[::-1], q, indexing="ij")
  return np.stack([zx.ravel(), zy.ravel()], axis=-1).astype(np.float32)


def save_manifold(workdir: str, decoded: np.ndarray, n: int = 20) -> str:
  """Decoded digits over the 2-D latent grid of `manifold_grid`, with z axes."""
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  q = manifold_grid(n)[:n, 0]
  canvas = tile(decoded, n)
  fig, ax = plt.subplots(figsize=(8, 8))
  ax.imshow(canvas, cmap="Greys_r", extent=(q[0], q[-1], q[0], q[-1]))
  ax.set_xlabel("z[0]")
  ax.set_ylabel("z[1]")
  ax.set_title("decoded p(x|z) over the 2-D latent space")
  out = os.path.join(workdir, "latent_manifold.png")
  fig.tight_layout()
  with writing(out):
    fig.savefig(out, dpi=100)
  plt.close(fig)
  return out
