"""The codec's images: read from IDX data or a PNG directory, written as IDX plus a preview mosaic.

The codec codes binary images: every source is thresholded at 0.5 (`vae_jax.data.binarize`).
Decoded images are written as one gzipped IDX file (values 0 and 255, the format `idx:` reads) and
a PNG mosaic of the first 100.
"""

import glob
import os
import shutil
import tempfile

import imageio.v3 as iio
import numpy as np

from vae_jax import data
from vae_jax.training import pictures
from vae_jax.errors import UserError

IDX_NAME, PREVIEW_NAME = "images-idx3-ubyte.gz", "preview.png"
_IMAGES_MAGIC = 2051


MAX_SIDE = 4096  # the header holds 16-bit sides; larger pages are cut into tiles first


def _check_hw(hw, where: str, first=None) -> None:
  if first is not None and tuple(hw) != tuple(first):
    raise UserError(f"{where}: {hw[0]}x{hw[1]}, but the first image is {first[0]}x{first[1]}: "
                    "one file holds images of one size")
  if not (1 <= hw[0] <= MAX_SIDE and 1 <= hw[1] <= MAX_SIDE):
    raise UserError(f"{where}: images are {hw[0]}x{hw[1]}; sides from 1 to {MAX_SIDE} work "
                    f"(the VAE codes {data.IMAGE_HW[0]}x{data.IMAGE_HW[1]}, the context coder any)")


def read_png_dir(directory: str) -> np.ndarray:
  """The directory's *.png files in name order, as grey uint8 (N, H, W, 1), all of one size."""
  paths = sorted(glob.glob(os.path.join(directory, "*.png")))
  if not paths:
    raise UserError(f"{directory}: no .png files")
  images = []
  for path in paths:
    try:
      image = iio.imread(path)
    except Exception as e:  # pylint: disable=broad-except
      raise UserError(f"{path}: not a readable PNG ({type(e).__name__})") from None
    if image.ndim == 3:  # RGB(A): the mean of the colour channels, over white where transparent
      rgb = image[..., :3].astype(np.float64)
      if image.shape[2] == 4:
        alpha = image[..., 3:4].astype(np.float64) / 255
        rgb = rgb * alpha + 255 * (1 - alpha)
      image = rgb.mean(-1).round().astype(np.uint8)
    if image.dtype != np.uint8:
      image = (image.astype(np.float64) * 255 / np.iinfo(image.dtype).max).round().astype(np.uint8)
    _check_hw(image.shape[:2], path, images[0].shape if images else None)
    images.append(image)
  return np.stack(images)[..., None]


def load(spec: str, split: str = "test", count: int | None = None) -> np.ndarray:
  """{0,1} uint8 images (N, H, W, 1) from `spec`.

  `idx:DIR` (a dataset's four IDX files; `split` picks train or test), `idx:FILE` (one images IDX
  file, such as `decode` writes), `png:DIR` or a directory of PNGs, or any other `--data` spelling
  of `vae_jax.data.load`.
  """
  path = spec[4:] if spec.startswith(("idx:", "png:")) else spec
  if spec.startswith("idx:") and os.path.isfile(path):
    raw = data.read_idx(path, _IMAGES_MAGIC)
    _check_hw(raw.shape[1:], path)
    images = raw[..., None]
  elif spec.startswith("png:") or (not spec.startswith("idx:") and os.path.isdir(path)):
    if not os.path.isdir(path):
      raise UserError(f"{path}: directory not found")
    images = read_png_dir(path)
  else:
    dataset = data.load(spec)
    if split not in ("train", "test"):
      raise UserError(f"--split must be train or test, got {split!r}")
    images = dataset.train_images if split == "train" else dataset.test_images
  if count is not None:
    if not 1 <= count <= len(images):
      raise UserError(f"--count {count} is not between 1 and the {len(images)} images of {spec}")
    images = images[:count]
  if len(images) == 0:
    raise UserError(f"{spec}: no images")
  return data.binarize(images)


def write_idx(path: str, images_u8: np.ndarray) -> None:
  """Gzipped IDX images file (N, rows, cols) of uint8 values."""
  data.write_idx(path, images_u8.reshape(len(images_u8), *images_u8.shape[1:3]), _IMAGES_MAGIC)


def preview(images01: np.ndarray, limit: int = 100) -> np.ndarray:
  shown = images01[:limit]
  return pictures.to_png_array(pictures.tile(shown, min(10, len(shown))))


def check_new_output(path: str) -> None:
  """Refuses to overwrite: `path` must not exist, or be an empty directory."""
  if os.path.isdir(path) and not os.listdir(path):
    return
  if os.path.exists(path):
    raise UserError(f"{path} exists; choose a new output path")


def _umask_mode(mode: int) -> int:
  umask = os.umask(0)
  os.umask(umask)
  return mode & ~umask


def write_decoded(out_dir: str, images01: np.ndarray) -> None:
  """IDX_NAME (0/255) and PREVIEW_NAME in out_dir, which appears complete or not at all."""
  check_new_output(out_dir)
  parent = os.path.dirname(os.path.abspath(out_dir))
  os.makedirs(parent, exist_ok=True)
  tmp = tempfile.mkdtemp(prefix=".decode-", dir=parent)
  try:
    write_idx(os.path.join(tmp, IDX_NAME), images01.astype(np.uint8) * 255)
    iio.imwrite(os.path.join(tmp, PREVIEW_NAME), preview(images01))
    os.chmod(tmp, _umask_mode(0o777))  # mkdtemp's 0700 would hide the output from others
    if os.path.isdir(out_dir):
      os.rmdir(out_dir)
    os.rename(tmp, out_dir)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise


def write_file(path: str, raw: bytes) -> None:
  """Writes raw to a new file `path` at once (a temporary file renamed into place)."""
  check_new_output(path)
  if os.path.isdir(path):
    raise UserError(f"{path} is a directory; --out names the compressed file")
  parent = os.path.dirname(os.path.abspath(path))
  os.makedirs(parent, exist_ok=True)
  fd, tmp = tempfile.mkstemp(prefix=".encode-", dir=parent)
  try:
    with os.fdopen(fd, "wb") as f:
      f.write(raw)
    os.chmod(tmp, _umask_mode(0o666))
    os.rename(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise
