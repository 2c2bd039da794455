"""The sample-quality classifier: it learns real digits, its features, save/load, the cache."""

import dataclasses

import numpy as np
import pytest

from vae_jax.study import classifier
from vae_jax import data
from vae_jax.batched import map_batches
from vae_jax.errors import UserError

CONFIG = classifier.ClassifierConfig(epochs=2, steps_per_chunk=5)


@pytest.fixture(scope="module")
def digits_5k():
  return data.load_mnist_5k()


@pytest.fixture(scope="module")
def trained(digits_5k):
  ds = digits_5k
  model, stats = classifier.train(data.binarize(ds.train_images[:2000]), ds.train_labels[:2000],
                                  CONFIG)
  return model, stats


def test_it_learns_real_digits(trained, digits_5k):
  model, stats = trained
  assert stats["train_images"] == 2000 and len(stats["epoch_losses"]) == 2
  assert stats["epoch_losses"][1] < stats["epoch_losses"][0]
  test_x, test_y = data.binarize(digits_5k.test_images), digits_5k.test_labels
  assert classifier.accuracy(model, test_x, test_y) > 0.8  # chance: 0.1


def test_features_are_the_penultimate_layer(trained, digits_5k):
  model, _ = trained
  x = data.binarize(digits_5k.test_images[:7]).astype(np.float32)
  features, logits = classifier.embed(model, x, batch_size=3)  # padded last batch
  assert features.shape == (7, classifier.FEATURES) and logits.shape == (7, classifier.CLASSES)
  assert np.all(features >= 0)  # after the ReLU
  np.testing.assert_allclose(logits, np.asarray(model(x)), rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(features, np.asarray(model.features(x)), rtol=1e-5, atol=1e-5)


def test_save_and_load_give_the_same_outputs(trained, digits_5k, tmp_path):
  model, _ = trained
  classifier.save(model, str(tmp_path / "c"), {"note": "x"})
  loaded, info = classifier.load(str(tmp_path / "c"))
  assert info == {"note": "x"}
  x = digits_5k.test_images[:20] / 255.0
  for a, b in zip(classifier.embed(model, x), classifier.embed(loaded, x)):
    np.testing.assert_array_equal(a, b)


def test_the_cache_is_reused_and_other_settings_are_refused(trained, digits_5k, tmp_path,
                                                            monkeypatch):
  model, _ = trained
  ds = dataclasses.replace(digits_5k, name="five")
  directory = str(tmp_path / "cache")
  wanted = {"data": "five", "train_images": len(ds.train_images),
            "config": dataclasses.asdict(CONFIG), "test_accuracy": 0.5}
  classifier.save(model, directory, wanted)
  monkeypatch.setattr(classifier, "train", lambda *a, **k: pytest.fail("retrained"))
  _, info = classifier.cached_classifier(directory, ds, CONFIG)
  assert info["test_accuracy"] == 0.5
  with pytest.raises(UserError, match="other settings"):
    classifier.cached_classifier(directory, ds, dataclasses.replace(CONFIG, epochs=3))
  with pytest.raises(UserError, match="other settings"):
    classifier.cached_classifier(directory, dataclasses.replace(ds, name="six"), CONFIG)


def test_random_shifts_move_each_image_by_its_own_offset():
  rng = np.random.default_rng(0)
  images = rng.integers(0, 2, (6, 28, 28, 1)).astype(np.uint8)
  shifted = classifier.random_shifts(images, 2, np.random.default_rng(1))
  dy, dx = np.random.default_rng(1).integers(0, 5, (2, 6)) - 2  # the same draws
  for image, out, sy, sx in zip(images, shifted, dy, dx):
    expected = np.zeros_like(image)
    # out[i, j] = image[i + sy, j + sx] where that lies inside the image, else 0.
    for i in range(28):
      for j in range(28):
        if 0 <= i + sy < 28 and 0 <= j + sx < 28:
          expected[i, j] = image[i + sy, j + sx]
    np.testing.assert_array_equal(out, expected)
  np.testing.assert_array_equal(classifier.random_shifts(images, 0, rng), images)


def test_map_batches_pads_the_last_batch_and_drops_the_padding():
  x = np.arange(23, dtype=np.float32).reshape(23, 1)
  calls = []

  def fn(batch):
    calls.append(batch.shape)
    return {"double": 2 * batch, "sum": batch.sum(axis=1)}

  out = map_batches(fn, x, batch_size=10)
  np.testing.assert_array_equal(out["double"], 2 * x)
  np.testing.assert_array_equal(out["sum"], x[:, 0])
  assert calls == [(10, 1)] * 3
