"""A LeNet-sized MNIST classifier in Flax NNX: the feature extractor behind the sample-quality numbers.

conv 3x3x32 - maxpool 2 - conv 3x3x64 - maxpool 2 - dense 128 - dense 10, ReLU, trained with Adam
(cosine-decayed learning rate) on the real labels of the *binarized* training digits (pixel/255 >=
0.5, the images every model of the study is trained and tested on). At evaluation it is fed decoder
probabilities in [0, 1] as they are (what the seed's `sample()` returns), so blurry or grey samples
count against a sampler; `grey_test_accuracy` in its info says how it copes with grey-level digits.
`features(x)` is the 128-wide penultimate layer (after its ReLU): the space of the Fréchet
Classifier Distance (`vae_jax.study.sample_quality`).

The parameters are saved as one .npz beside a JSON of the settings and the measured accuracies, so
a study trains the classifier once and loads it afterwards (`cached_classifier`).
"""

import dataclasses
import json
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx
from tqdm import tqdm

from vae_jax import data as data_lib
from vae_jax import interrupts
from vae_jax.batched import map_batches
from vae_jax.errors import UserError
from vae_jax.nn.kernels import patch_conv

FEATURES = 128
CLASSES = 10
PARAMS_FILE, INFO_FILE = "params.npz", "classifier.json"


@dataclasses.dataclass(frozen=True)
class ClassifierConfig:
  """How the classifier is trained; saved with its parameters."""
  epochs: int = 5
  batch_size: int = 100
  learning_rate: float = 1e-3        # Adam's peak, cosine-decayed to 0 over the run
  max_shift: int = 2                 # each training digit moved by up to this many pixels per axis
  seed: int = 0                      # init, shuffling and shifts
  steps_per_chunk: int = 10          # batches per jitted (unrolled) lax.scan call


def _max_pool(h):
  """2x2 max pooling, stride 2 (an odd last row/column is dropped), as a reshape and a max.

  Its gradient is an elementwise mask; XLA:CPU's select-and-scatter for nnx.max_pool made the
  training step 5x slower here.
  """
  b, height, width, c = h.shape
  h = h[:, :height // 2 * 2, :width // 2 * 2]
  return h.reshape(b, height // 2, 2, width // 2, 2, c).max(axis=(2, 4))


class Classifier(nnx.Module):
  """conv32 - pool - conv64 - pool - dense128 - dense10 over (B, 28, 28, 1) images in [0, 1]."""

  def __init__(self, *, rngs: nnx.Rngs):
    self.conv1 = nnx.Conv(1, 32, (3, 3), padding="VALID", rngs=rngs)
    self.conv2 = nnx.Conv(32, 64, (3, 3), padding="VALID", rngs=rngs)
    self.dense = nnx.Linear(5 * 5 * 64, FEATURES, rngs=rngs)
    self.out = nnx.Linear(FEATURES, CLASSES, rngs=rngs)

  def features(self, x_BHWC):
    """Penultimate-layer activations, (B, 128)."""
    # VALID 3x3 convolutions as patch GEMMs with their own VJP (vae_jax.nn.models): XLA:CPU's own
    # convolution gradients are several times slower. 28 -> 26 -> 13 -> 11 -> 5.
    h = _max_pool(patch_conv(x_BHWC, self.conv1.kernel[...], self.conv1.bias[...], 1))
    h = _max_pool(patch_conv(h, self.conv2.kernel[...], self.conv2.bias[...], 1))
    return nnx.relu(self.dense(h.reshape(h.shape[0], -1)))

  def __call__(self, x_BHWC):
    """Class logits, (B, 10)."""
    return self.out(self.features(x_BHWC))


def create(seed: int = 0) -> Classifier:
  return Classifier(rngs=nnx.Rngs(params=jax.random.key(seed)))


# ---------------------------------------------------------------- inference

@jax.jit
def _embed_batch(graphdef_params, x):
  graphdef, params = graphdef_params
  model = nnx.merge(graphdef, params)
  features = model.features(x)
  return features, model.out(features)


def embed(model: Classifier, images, batch_size: int = 1000) -> tuple[np.ndarray, np.ndarray]:
  """(features (N, 128), logits (N, 10)) of (N, 28, 28[, 1]) images with values in [0, 1]."""
  images = np.asarray(images, np.float32).reshape(-1, 28, 28, 1)
  split = nnx.split(model)
  return map_batches(lambda x: _embed_batch(split, x), images, batch_size=batch_size)


def accuracy(model: Classifier, images, labels) -> float:
  """Fraction of images whose arg-max class is the label."""
  _, logits = embed(model, images)
  return float(np.mean(np.argmax(logits, axis=-1) == np.asarray(labels)))


# ---------------------------------------------------------------- training

def random_shifts(images, max_shift: int, rng: np.random.Generator) -> np.ndarray:
  """Each (28, 28, 1) image translated by its own offsets in [-max_shift, max_shift], zero-filled."""
  if max_shift == 0:
    return images
  n, h, w, _ = images.shape
  padded = np.pad(images, ((0, 0), (max_shift, max_shift), (max_shift, max_shift), (0, 0)))
  dy, dx = rng.integers(0, 2 * max_shift + 1, (2, n))
  rows = dy[:, None] + np.arange(h)[None, :]
  cols = dx[:, None] + np.arange(w)[None, :]
  return padded[np.arange(n)[:, None, None], rows[:, :, None], cols[:, None, :]]


def _make_chunk(graphdef, tx, length: int):
  """(params, opt_state, xs, ys, start) -> (params, opt_state, loss sum) over `length` batches."""

  def step(carry, batch):
    params, opt_state = carry
    x_u8, y = batch

    def loss_fn(p):
      logits = nnx.merge(graphdef, p)(x_u8.astype(jnp.float32))
      return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, y))

    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return (optax.apply_updates(params, updates), opt_state), loss

  def chunk(params, opt_state, xs, ys, start):
    xs = jax.lax.dynamic_slice_in_dim(xs, start, length)
    ys = jax.lax.dynamic_slice_in_dim(ys, start, length)
    # Unrolled: XLA:CPU runs convolutions inside a rolled while loop many times slower (train.py).
    (params, opt_state), losses = jax.lax.scan(step, (params, opt_state), (xs, ys), unroll=True)
    return params, opt_state, jnp.sum(losses)

  return jax.jit(chunk, donate_argnums=(0, 1))


def train(train_x_u8, train_y, config: ClassifierConfig = ClassifierConfig()) -> tuple[Classifier, dict]:
  """Trains on binarized digits (N, 28, 28, 1) in {0, 1} with integer labels; returns (model, stats)."""
  train_x_u8 = np.asarray(train_x_u8, np.uint8).reshape(-1, 28, 28, 1)
  train_y = np.asarray(train_y, np.int32)
  n = len(train_x_u8)
  if n == 0 or len(train_y) != n:
    raise UserError(f"classifier: {n} training images but {len(train_y)} labels")
  batch = min(config.batch_size, n)
  steps = n // batch
  length = max(1, min(config.steps_per_chunk, steps))
  tx = optax.adam(optax.cosine_decay_schedule(config.learning_rate, config.epochs * steps))
  graphdef, params = nnx.split(create(config.seed))
  opt_state = tx.init(params)
  chunks = {size: _make_chunk(graphdef, tx, size) for size in {length, 1}}
  start_time = time.perf_counter()
  losses = []
  bar = tqdm(total=config.epochs * steps, desc="classifier", unit="batch", leave=False,
             mininterval=2.0)
  for epoch in range(config.epochs):
    interrupts.stop("interrupted while training the sample-quality classifier: it is trained "
                    "anew by the same command again")
    order = data_lib.epoch_order(config.seed, epoch, n)[:steps * batch]
    shifted = random_shifts(train_x_u8[order], config.max_shift,
                            np.random.default_rng([config.seed, epoch, 1]))
    xs = jnp.asarray(shifted.reshape(steps, batch, 28, 28, 1))
    ys = jnp.asarray(train_y[order].reshape(steps, batch))
    total = 0.0
    start = 0
    while start < steps:
      size = length if steps - start >= length else 1
      params, opt_state, loss_sum = chunks[size](params, opt_state, xs, ys, start)
      total += float(loss_sum)
      start += size
      bar.update(size)
    losses.append(total / steps)
    if not np.isfinite(losses[-1]):
      bar.close()
      raise UserError(f"classifier: non-finite training loss in epoch {epoch + 1}")
  bar.close()
  stats = {"train_seconds": time.perf_counter() - start_time, "train_images": n,
           "epoch_losses": losses}
  return nnx.merge(graphdef, params), stats


# ---------------------------------------------------------------- save / load

def _flat(model: Classifier) -> dict[str, np.ndarray]:
  leaves = jax.tree_util.tree_leaves_with_path(nnx.state(model, nnx.Param))
  return {jax.tree_util.keystr(path): np.asarray(leaf) for path, leaf in leaves}


def save(model: Classifier, directory: str, info: dict) -> None:
  """Writes directory/params.npz and directory/classifier.json (`info`)."""
  os.makedirs(directory, exist_ok=True)
  np.savez(os.path.join(directory, PARAMS_FILE), **_flat(model))
  with open(os.path.join(directory, INFO_FILE), "w") as f:
    json.dump(info, f, indent=2)


def load(directory: str) -> tuple[Classifier, dict]:
  """(model, info) saved by `save`."""
  params_path, info_path = (os.path.join(directory, f) for f in (PARAMS_FILE, INFO_FILE))
  if not (os.path.exists(params_path) and os.path.exists(info_path)):
    raise UserError(f"{directory} holds no saved classifier ({PARAMS_FILE}, {INFO_FILE})")
  with open(info_path) as f:
    info = json.load(f)
  model = create()
  state = nnx.state(model, nnx.Param)
  with np.load(params_path) as saved:
    paths, treedef = jax.tree_util.tree_flatten_with_path(state)
    names = [jax.tree_util.keystr(p) for p, _ in paths]
    if sorted(names) != sorted(saved.files):
      raise UserError(f"{params_path}: parameters {sorted(saved.files)} do not match the "
                      f"classifier's {sorted(names)}")
    leaves = []
    for name, (_, like) in zip(names, paths):
      if saved[name].shape != like.shape:
        raise UserError(f"{params_path}: {name} has shape {saved[name].shape}, expected {like.shape}")
      leaves.append(jnp.asarray(saved[name], like.dtype))
  nnx.update(model, jax.tree_util.tree_unflatten(treedef, leaves))
  return model, info


def cached_classifier(directory: str, dataset: data_lib.Dataset,
                      config: ClassifierConfig = ClassifierConfig()) -> tuple[Classifier, dict]:
  """The classifier saved in `directory` for this data and config, trained and saved if absent.

  Trains on every training digit of `dataset` (binarized) and records its test accuracy on the
  binarized and on the grey-level test digits. A directory holding a classifier of other settings
  is an error, never overwritten.
  """
  wanted = {"data": dataset.name, "train_images": len(dataset.train_images),
            "config": dataclasses.asdict(config)}
  info_path = os.path.join(directory, INFO_FILE)
  if os.path.exists(info_path):
    model, info = load(directory)
    saved = {k: info.get(k) for k in wanted}
    if saved != wanted:
      raise UserError(f"{directory} holds a classifier trained with other settings ({saved}, "
                      f"wanted {wanted}); remove it or choose another --out")
    return model, info
  model, stats = train(data_lib.binarize(dataset.train_images), dataset.train_labels, config)
  test_x = data_lib.binarize(dataset.test_images)
  info = {**wanted, **stats,
          "test_accuracy": accuracy(model, test_x, dataset.test_labels),
          "grey_test_accuracy": accuracy(model, dataset.test_images / 255.0, dataset.test_labels),
          "test_images": len(test_x)}
  save(model, directory, info)
  return model, info
