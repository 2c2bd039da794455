"""The TensorFlow CVAE tutorial (tensorflow.org/tutorials/generative/cvae) as the baseline, with weight converters.

Run from the repository root, e.g.
  python -m benchmarks.peers.tf_reference --data idx:../shared/data/mnist --epochs 10 --out workdirs/tf.jsonl
It trains on the arrays the JAX main job trains on (vae_jax.data), in the same batch order, and writes rows
with the keys of the main job's metrics.jsonl. TensorFlow is imported only here and in tests, never in vae_jax/.
"""

import json
import os
import platform
import sys
import time

from vae_jax import cli
from vae_jax.training import hugepages

if __name__ == "__main__":
  hugepages.relaunch()  # before TensorFlow loads: glibc reads GLIBC_TUNABLES at start

import jax.numpy as jnp  # pylint: disable=wrong-import-position
import numpy as np  # pylint: disable=wrong-import-position
import tensorflow as tf  # pylint: disable=wrong-import-position

from vae_jax import data as data_lib  # pylint: disable=wrong-import-position
from benchmarks.peers import reference_cli  # pylint: disable=wrong-import-position
from vae_jax.errors import UserError  # pylint: disable=wrong-import-position


class CVAE(tf.keras.Model):
  """Convolutional variational autoencoder."""

  def __init__(self, latent_dim):
    super(CVAE, self).__init__()
    self.latent_dim = latent_dim
    self.inference_net = tf.keras.Sequential(
        [
            # Keras 3 deprecates InputLayer(input_shape=...) (it warns); shape= is the same thing.
            tf.keras.layers.InputLayer(shape=(28, 28, 1)),
            tf.keras.layers.Conv2D(
                filters=32, kernel_size=3, strides=(2, 2), activation='relu'),
            tf.keras.layers.Conv2D(
                filters=64, kernel_size=3, strides=(2, 2), activation='relu'),
            tf.keras.layers.Flatten(),
            # No activation
            tf.keras.layers.Dense(latent_dim + latent_dim),
        ]
    )

    self.generative_net = tf.keras.Sequential(
        [
            # Keras 3 deprecates InputLayer(input_shape=...) (it warns); shape= is the same thing.
            tf.keras.layers.InputLayer(shape=(latent_dim,)),
            tf.keras.layers.Dense(units=7*7*32, activation=tf.nn.relu),
            tf.keras.layers.Reshape(target_shape=(7, 7, 32)),
            tf.keras.layers.Conv2DTranspose(
                filters=64, kernel_size=3, strides=(2, 2), padding="SAME",
                activation='relu'),
            tf.keras.layers.Conv2DTranspose(
                filters=32, kernel_size=3, strides=(2, 2), padding="SAME",
                activation='relu'),
            # No activation
            tf.keras.layers.Conv2DTranspose(
                filters=1, kernel_size=3, strides=(1, 1), padding="SAME"),
        ]
    )

  @tf.function
  def sample(self, eps=None):
    if eps is None:
      eps = tf.random.normal(shape=(100, self.latent_dim))
    return self.decode(eps, apply_sigmoid=True)

  def encode(self, x):
    mean, logvar = tf.split(self.inference_net(x), num_or_size_splits=2, axis=1)
    return mean, logvar

  def reparameterize(self, mean, logvar, eps=None):
    # Not in the tutorial: an optional eps so the parity tests can fix the noise; None draws as the tutorial.
    if eps is None:
      eps = tf.random.normal(shape=mean.shape)
    # Not in the tutorial: eps in mean's dtype (bfloat16 under mixed_bfloat16; float32 otherwise).
    return tf.cast(eps, mean.dtype) * tf.exp(logvar * .5) + mean

  def decode(self, z, apply_sigmoid=False):
    logits = self.generative_net(z)
    if apply_sigmoid:
      probs = tf.sigmoid(logits)
      return probs
    return logits


def log_normal_pdf(sample, mean, logvar, raxis=1):
  log2pi = tf.math.log(2. * np.pi)
  return tf.reduce_sum(
      -.5 * ((sample - mean) ** 2. * tf.exp(-logvar) + logvar + log2pi),
      axis=raxis)


def compute_loss(model, x):
  return compute_loss_with_eps(model, x, eps=None)


def compute_loss_with_eps(model, x, eps):
  """The tutorial's one-sample Monte Carlo negative ELBO; eps=None draws the noise as the tutorial does."""
  mean, logvar = model.encode(x)
  z = model.reparameterize(mean, logvar, eps)
  x_logit = model.decode(z)
  # Not in the tutorial: the loss in float32 under mixed_bfloat16 (the casts do nothing in float32).
  mean, logvar, z, x_logit = (tf.cast(a, tf.float32) for a in (mean, logvar, z, x_logit))
  cross_ent = tf.nn.sigmoid_cross_entropy_with_logits(logits=x_logit, labels=x)
  logpx_z = -tf.reduce_sum(cross_ent, axis=[1, 2, 3])
  logpz = log_normal_pdf(z, 0., 0.)
  logqz_x = log_normal_pdf(z, mean, logvar)
  return -tf.reduce_mean(logpx_z + logpz - logqz_x)


@tf.function
def train_step(model, x, optimizer):
  """Executes one training step and returns the loss.

  This function computes the loss and gradients, and uses the latter to
  update the model's parameters.
  """
  with tf.GradientTape() as tape:
    loss = compute_loss(model, x)
  gradients = tape.gradient(loss, model.trainable_variables)
  optimizer.apply_gradients(zip(gradients, model.trainable_variables))
  # Not in the tutorial (it returns nothing despite its docstring): the loss, for the train-loss log.
  return loss


# Flax attribute of vae_jax.nn.models.CVAE -> (Keras Sequential attribute, index in its .layers, layer class).
# Keras 3's Sequential.layers leaves out the InputLayer.
FLAX_TO_KERAS = {
    "enc_conv1": ("inference_net", 0, tf.keras.layers.Conv2D),
    "enc_conv2": ("inference_net", 1, tf.keras.layers.Conv2D),
    "enc_dense": ("inference_net", 3, tf.keras.layers.Dense),
    "dec_dense": ("generative_net", 0, tf.keras.layers.Dense),
    "dec_deconv1": ("generative_net", 2, tf.keras.layers.Conv2DTranspose),
    "dec_deconv2": ("generative_net", 3, tf.keras.layers.Conv2DTranspose),
    "dec_deconv3": ("generative_net", 4, tf.keras.layers.Conv2DTranspose),
}


def tf_weights(tf_model):
  """{flax layer name: {"kernel", "bias"}} of the Keras model's variables, in Keras layout."""
  weights = {}
  for name, (net, index, cls) in FLAX_TO_KERAS.items():
    layer = getattr(tf_model, net).layers[index]
    assert type(layer) is cls, (name, layer)
    weights[name] = {"kernel": layer.kernel, "bias": layer.bias}
  return weights


def convert_layout(tree):
  """Keras <-> Flax layout of a {layer: {"kernel", "bias"}} tree (weights or gradients); its own inverse.

  Conv2D and Dense kernels are stored alike, (h, w, in, out) and (in, out). Keras' Conv2DTranspose
  kernel is (h, w, out, in) and, being the gradient of a convolution, applies the kernel spatially
  flipped relative to lax.conv_transpose (nnx.ConvTranspose, transpose_kernel=False).
  """
  out = {}
  for name, params in tree.items():
    kernel = np.asarray(params["kernel"])
    if FLAX_TO_KERAS[name][2] is tf.keras.layers.Conv2DTranspose:
      kernel = kernel[::-1, ::-1].transpose(0, 1, 3, 2)
    out[name] = {"kernel": kernel, "bias": np.asarray(params["bias"])}
  return out


def flax_params_from_tf(tf_model):
  """The Keras model's weights as numpy arrays in the layout of nnx.to_pure_dict(nnx.state(flax_cvae, nnx.Param))."""
  return convert_layout(tf.nest.map_structure(lambda v: v.numpy(), tf_weights(tf_model)))


def load_flax_params(flax_model, params):
  """Writes {layer: {"kernel", "bias"}} arrays (Flax layout) into the Flax CVAE."""
  for name, p in params.items():
    layer = getattr(flax_model, name)
    layer.kernel[...] = jnp.asarray(p["kernel"])
    layer.bias[...] = jnp.asarray(p["bias"])


def load_tf_into_flax(tf_model, flax_model):
  """Copies the Keras model's weights into the Flax CVAE."""
  load_flax_params(flax_model, flax_params_from_tf(tf_model))


def load_flax_into_tf(flax_model, tf_model):
  """Copies the Flax CVAE's weights into the Keras model."""
  flax_params = {name: {"kernel": getattr(flax_model, name).kernel[...],
                        "bias": getattr(flax_model, name).bias[...]} for name in FLAX_TO_KERAS}
  keras_params = convert_layout(flax_params)
  for name, variables in tf_weights(tf_model).items():
    for key, variable in variables.items():
      variable.assign(keras_params[name][key])


def evaluate_elbo(model, test_dataset):
  """Test ELBO: minus the mean of compute_loss over all test images (batches weighted by their size)."""
  total, count = 0.0, 0
  for test_x in test_dataset:
    n = int(test_x.shape[0])
    total += float(compute_loss(model, test_x)) * n
    count += n
  return -total / count




def make_model_and_optimizer(latent_dim, learning_rate, precision="float32"):
  """The tutorial's model and Adam under the Keras dtype policy `precision` (global, as Keras sets it).

  mixed_bfloat16: the layers compute in bfloat16 on float32 weights; the loss and Adam stay float32
  (bfloat16 needs no loss scaling).
  """
  tf.keras.mixed_precision.set_global_policy(precision)
  model = CVAE(latent_dim)
  optimizer = tf.keras.optimizers.Adam(learning_rate)
  # Not in the tutorial: Keras 3 creates Adam's slots on the first apply_gradients, which the shared
  # tf.function train_step allows only on its very first trace, so a second model would fail.
  optimizer.build(model.trainable_variables)
  return model, optimizer


def train_tf(train_x, test_x, *, epochs, batch_size, latent_dim, learning_rate, seed,
             precision="float32", on_epoch=None):
  """Trains the tutorial model on binarized (N, 28, 28, 1) float32 arrays; returns one row per epoch.

  Epoch e visits the examples in vae_jax.data.epoch_order(seed, e, N), as the JAX main job does. The
  first train_step call of each batch shape traces the tf.function: it is timed apart as
  compile_seconds, and its images are left out of images_per_sec (None when no other call ran).
  """
  # Seeds Python, numpy and TF: the weight init and the reparameterization noise.
  tf.keras.utils.set_random_seed(seed)
  test_dataset = tf.data.Dataset.from_tensor_slices(test_x).batch(batch_size)
  model, optimizer = make_model_and_optimizer(latent_dim, learning_rate, precision)
  traced = set()

  history = []
  for epoch in range(1, epochs + 1):
    epoch_start = time.perf_counter()
    order = data_lib.epoch_order(seed, epoch, len(train_x))
    train_dataset = tf.data.Dataset.from_tensor_slices(train_x[order]).batch(batch_size)
    train_start = time.perf_counter()  # after the shuffle, as the main job starts after placing batches
    losses, compile_seconds, traced_images = [], 0.0, 0
    for x in train_dataset:
      if tuple(x.shape) in traced:
        losses.append((train_step(model, x, optimizer), int(x.shape[0])))
        continue
      call_start = time.perf_counter()
      loss = train_step(model, x, optimizer)
      loss.numpy()
      compile_seconds += time.perf_counter() - call_start
      traced.add(tuple(x.shape))
      traced_images += int(x.shape[0])
      losses.append((loss, int(x.shape[0])))
    # One sync at the end: TF may run ahead of the Python loop, and the last step must be in the time.
    losses[-1][0].numpy()
    train_seconds = time.perf_counter() - train_start - compile_seconds
    timed_images = len(train_x) - traced_images
    eval_start = time.perf_counter()
    test_elbo = evaluate_elbo(model, test_dataset)
    record = {"epoch": epoch,
              "train_loss": sum(float(loss) * n for loss, n in losses) / len(train_x),
              "test_elbo": test_elbo,
              "images_per_sec": timed_images / train_seconds if timed_images else None,
              "compile_seconds": compile_seconds, "train_seconds": train_seconds,
              "eval_seconds": time.perf_counter() - eval_start,
              "seconds": time.perf_counter() - epoch_start}
    history.append(record)
    if on_epoch is not None:
      on_epoch(record)
  return history


def main(argv=None):
  parser = reference_cli.run_parser("python -m benchmarks.peers.tf_reference", __doc__.splitlines()[0])
  args = parser.parse_args(argv)

  try:
    reference_cli.check_run_args(args)
    train_x, test_x = reference_cli.load_binarized(args.data, args.train_size)
  except UserError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  # The flags first: train_size is then the number of examples used, not the flag's None for all.
  meta = {**{k: v for k, v in vars(args).items() if k != "out"},
          "framework": "tensorflow", "tf_version": tf.__version__, "keras_version": tf.keras.__version__,
          "devices": [d.name for d in tf.config.list_logical_devices()], "machine": platform.machine(),
          "cpu_count": os.cpu_count(), "train_size": len(train_x), "test_size": len(test_x)}
  print(json.dumps({"meta": meta}), flush=True)
  out = open(args.out, "w") if args.out else None

  def emit(record):
    line = json.dumps(record)
    print(line, flush=True)
    if out is not None:
      out.write(line + "\n")
      out.flush()

  try:
    train_tf(train_x, test_x, epochs=args.epochs, batch_size=args.batch_size,
             latent_dim=args.latent_dim, learning_rate=args.learning_rate, seed=args.seed,
             precision=args.precision, on_epoch=emit)
  finally:
    if out is not None:
      out.close()
  return 0


if __name__ == "__main__":
  cli.start(lambda: cli.main(main))
