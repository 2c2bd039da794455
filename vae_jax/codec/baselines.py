"""Classic lossless codecs on binary image sets, every output byte counted.

gzip, bz2 and xz code np.packbits of the whole set (N x 784 bits); PNG (1 bit per pixel) and WebP
(lossless) code each image as its own file; JBIG (ISO 11544, `pbmtojbg` of Debian's
`jbigkit-bin`, sequential mode `-q`, which beats its default resolution layers) codes the set
as one mosaic of 100 images a row, as a PBM (1 = ink). WebP uses its slowest, strongest method (6).
"""

import bz2
import gzip
import io
import lzma
import shutil
import subprocess

import numpy as np
from PIL import Image

JBIG_TOOL = "pbmtojbg"


def _packed(images01: np.ndarray) -> bytes:
  return np.packbits(images01.astype(np.uint8).reshape(-1)).tobytes()


def gzip_bytes(images01) -> int:
  return len(gzip.compress(_packed(images01), compresslevel=9, mtime=0))


def bz2_bytes(images01) -> int:
  return len(bz2.compress(_packed(images01), compresslevel=9))


def xz_bytes(images01) -> int:
  return len(lzma.compress(_packed(images01), preset=9 | lzma.PRESET_EXTREME))


def _each_image(images01, save) -> int:
  total = 0
  for image in images01.reshape(len(images01), *images01.shape[1:3]):
    buffer = io.BytesIO()
    save(Image.fromarray(image.astype(np.uint8) * 255), buffer)
    total += buffer.tell()
  return total


def png_bytes(images01) -> int:
  return _each_image(images01, lambda im, f: im.convert("1").save(f, "PNG", optimize=True))


def webp_bytes(images01) -> int:
  return _each_image(images01, lambda im, f: im.save(f, "WEBP", lossless=True, quality=100,
                                                     method=6))


def mosaic(images01: np.ndarray, per_row: int = 100) -> np.ndarray:
  """(rows*28, per_row*28) {0,1}: the images row-major, the last row padded with blank images."""
  n, h, w = len(images01), images01.shape[1], images01.shape[2]
  rows = -(-n // per_row)
  padded = np.zeros((rows * per_row, h, w), np.uint8)
  padded[:n] = images01.reshape(n, h, w)
  return padded.reshape(rows, per_row, h, w).transpose(0, 2, 1, 3).reshape(rows * h, per_row * w)


def pbm(bitmap01: np.ndarray) -> bytes:
  height, width = bitmap01.shape
  return f"P4\n{width} {height}\n".encode() + np.packbits(bitmap01.astype(np.uint8), axis=1).tobytes()


def jbig_bytes(images01) -> int | None:
  """Bytes of `pbmtojbg` on the set's mosaic, or None when the tool is not installed."""
  if shutil.which(JBIG_TOOL) is None:
    return None
  out = subprocess.run([JBIG_TOOL, "-q"], input=pbm(mosaic(images01)), capture_output=True, check=True)
  return len(out.stdout)


CODECS = {
    "gzip -9 (packbits of the set)": gzip_bytes,
    "bz2 -9 (packbits of the set)": bz2_bytes,
    "xz -9e (packbits of the set)": xz_bytes,
    "PNG 1-bit, per image": png_bytes,
    "WebP lossless (method 6), per image": webp_bytes,
    "JBIG (pbmtojbg -q, 100-wide mosaic)": jbig_bytes,
}


def measure(images01: np.ndarray) -> dict[str, int | None]:
  """Output bytes of every codec in CODECS (None: not available here)."""
  return {name: fn(images01) for name, fn in CODECS.items()}
