"""The seed's Keras model, loss and Adam on Keras 3 with the JAX backend: what a user has without the port.

Run from the repository root, e.g.
  python -m benchmarks.peers.keras_reference --data idx:../shared/data/mnist --epochs 10 --out workdirs/keras.jsonl

The tutorial's CVAE (its two Sequentials), compute_loss and keras.optimizers.Adam(1e-4), unchanged but
for the TensorFlow calls written as keras.ops so that Keras runs them on JAX. This module sets
KERAS_BACKEND=jax before Keras loads; it needs neither TensorFlow nor tfds, only Keras, JAX and numpy.

It trains in the fastest form Keras offers on JAX: the model's `stateless_call` and the optimizer's
`stateless_apply` in one pure training step, `lax.scan` over a chunk of steps and `jax.jit` around
that, as the port's main job runs (10 steps unrolled on CPU, 100 rolled elsewhere). Keras' own
`fit(steps_per_execution=k)` runs its jitted one-step function k times from a Python loop
(keras/src/backend/jax/trainer.py); `python -m benchmarks.throughput --framework keras_jax
--keras-form fit` times that form beside this one (`--keras-form scan`).

Like benchmarks.peers.tf_reference: the same arrays and batch order as the main job (vae_jax.data),
`keras.utils.set_random_seed(seed)` seeding the weights and the noise, and rows with the keys of the
main job's metrics.jsonl.
"""

import json
import os
import platform
import sys
import time

from benchmarks.peers import reference_cli
from vae_jax import cli
from vae_jax.errors import UserError
from vae_jax.training import hugepages


def parse_args(argv=None):
  """The command line, its impossible values refused (UserError); needs neither Keras nor JAX."""
  parser = reference_cli.run_parser("python -m benchmarks.peers.keras_reference", __doc__.splitlines()[0])
  parser.add_argument("--steps-per-chunk", type=int, default=0,
                      help="batches per jitted lax.scan call (0: 10 unrolled on CPU, 100 elsewhere)")
  args = parser.parse_args(argv)
  reference_cli.check_run_args(args)
  if args.steps_per_chunk < 0:
    raise UserError(f"--steps-per-chunk must be >= 0, got {args.steps_per_chunk}")
  return args


if __name__ == "__main__":
  hugepages.relaunch()  # before JAX loads: glibc reads GLIBC_TUNABLES at start
  try:  # a bad flag is one line before Keras and JAX load (~2.5 s)
    parse_args()
  except UserError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)

os.environ["KERAS_BACKEND"] = "jax"  # before Keras loads: it reads the backend once, at import

import jax  # pylint: disable=wrong-import-position
import keras  # pylint: disable=wrong-import-position
import numpy as np  # pylint: disable=wrong-import-position
from keras import ops  # pylint: disable=wrong-import-position

from vae_jax import data as data_lib  # pylint: disable=wrong-import-position

if keras.backend.backend() != "jax":
  raise ImportError(f"benchmarks.peers.keras_reference needs Keras on JAX, but Keras was imported with the "
                    f"{keras.backend.backend()} backend first; import this module in its own process")

# keras.utils.set_random_seed imports TensorFlow, where it is installed, only to seed it too; this
# run never uses it. A None entry makes that import fail (Keras then skips it) and keeps any other
# TensorFlow import out of this process loudly.
sys.modules.setdefault("tensorflow", None)



class CVAE(keras.Model):
  """Convolutional variational autoencoder."""

  def __init__(self, latent_dim):
    super(CVAE, self).__init__()
    self.latent_dim = latent_dim
    self.inference_net = keras.Sequential(
        [
            # Keras 3 deprecates InputLayer(input_shape=...) (it warns); shape= is the same thing.
            keras.layers.InputLayer(shape=(28, 28, 1)),
            keras.layers.Conv2D(
                filters=32, kernel_size=3, strides=(2, 2), activation='relu'),
            keras.layers.Conv2D(
                filters=64, kernel_size=3, strides=(2, 2), activation='relu'),
            keras.layers.Flatten(),
            # No activation
            keras.layers.Dense(latent_dim + latent_dim),
        ]
    )

    self.generative_net = keras.Sequential(
        [
            keras.layers.InputLayer(shape=(latent_dim,)),
            keras.layers.Dense(units=7*7*32, activation='relu'),  # tf.nn.relu in the tutorial
            keras.layers.Reshape(target_shape=(7, 7, 32)),
            keras.layers.Conv2DTranspose(
                filters=64, kernel_size=3, strides=(2, 2), padding="SAME",
                activation='relu'),
            keras.layers.Conv2DTranspose(
                filters=32, kernel_size=3, strides=(2, 2), padding="SAME",
                activation='relu'),
            # No activation
            keras.layers.Conv2DTranspose(
                filters=1, kernel_size=3, strides=(1, 1), padding="SAME"),
        ]
    )
    # Not in the tutorial: JAX traces the training step, and a traced random op needs a seed whose
    # state the step carries; a SeedGenerator is that state (among the non-trainable variables).
    self.noise_seed = keras.random.SeedGenerator()
    # Not in the tutorial: the InputLayers built every variable, and stateless_call needs the
    # model itself marked built (the tutorial's first call would have done that).
    self.built = True

  def sample(self, eps=None):
    if eps is None:
      eps = keras.random.normal(shape=(100, self.latent_dim), seed=self.noise_seed)
    return self.decode(eps, apply_sigmoid=True)

  def encode(self, x):
    mean, logvar = ops.split(self.inference_net(x), 2, axis=1)
    return mean, logvar

  def reparameterize(self, mean, logvar, eps=None):
    # Not in the tutorial: an optional eps so the parity tests can fix the noise; None draws as the tutorial.
    if eps is None:
      eps = keras.random.normal(shape=ops.shape(mean), seed=self.noise_seed)
    # Not in the tutorial: eps in mean's dtype (bfloat16 under mixed_bfloat16; float32 otherwise).
    return ops.cast(eps, mean.dtype) * ops.exp(logvar * .5) + mean

  def decode(self, z, apply_sigmoid=False):
    logits = self.generative_net(z)
    if apply_sigmoid:
      probs = ops.sigmoid(logits)
      return probs
    return logits

  def call(self, x, eps=None):
    """Not in the tutorial: the loss, so that `stateless_call` runs encode, sampling and decode."""
    return compute_loss_with_eps(self, x, eps)

  def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
    """Not in the tutorial: `fit`'s loss is `call`'s output (only benchmarks.throughput's fit form)."""
    return y_pred


def log_normal_pdf(sample, mean, logvar, raxis=1):
  log2pi = np.log(2. * np.pi)
  return ops.sum(
      -.5 * ((sample - mean) ** 2. * ops.exp(-logvar) + logvar + log2pi),
      axis=raxis)


def compute_loss(model, x):
  return compute_loss_with_eps(model, x, eps=None)


def compute_loss_with_eps(model, x, eps):
  """The tutorial's one-sample Monte Carlo negative ELBO; eps=None draws the noise as the tutorial does."""
  mean, logvar = model.encode(x)
  z = model.reparameterize(mean, logvar, eps)
  x_logit = model.decode(z)
  # Not in the tutorial: the loss in float32 under mixed_bfloat16 (the casts do nothing in float32).
  mean, logvar, z, x_logit = (ops.cast(a, "float32") for a in (mean, logvar, z, x_logit))
  # tf.nn.sigmoid_cross_entropy_with_logits(logits=x_logit, labels=x)
  cross_ent = ops.binary_crossentropy(x, x_logit, from_logits=True)
  logpx_z = -ops.sum(cross_ent, axis=[1, 2, 3])
  logpz = log_normal_pdf(z, 0., 0.)
  logqz_x = log_normal_pdf(z, mean, logvar)
  return -ops.mean(logpx_z + logpz - logqz_x)


def make_model_and_optimizer(latent_dim, learning_rate, precision="float32"):
  """The tutorial's model and Adam under the Keras dtype policy `precision` (global, as Keras sets it)."""
  keras.config.set_dtype_policy(precision)
  model = CVAE(latent_dim)
  optimizer = keras.optimizers.Adam(learning_rate)
  optimizer.build(model.trainable_variables)
  return model, optimizer


# Flax attribute of vae_jax.nn.models.CVAE -> (Keras Sequential attribute, index in its .layers, layer class),
# as benchmarks.peers.tf_reference.FLAX_TO_KERAS (which needs TensorFlow). Sequential.layers leaves out the
# InputLayer.
FLAX_TO_KERAS = {
    "enc_conv1": ("inference_net", 0, keras.layers.Conv2D),
    "enc_conv2": ("inference_net", 1, keras.layers.Conv2D),
    "enc_dense": ("inference_net", 3, keras.layers.Dense),
    "dec_dense": ("generative_net", 0, keras.layers.Dense),
    "dec_deconv1": ("generative_net", 2, keras.layers.Conv2DTranspose),
    "dec_deconv2": ("generative_net", 3, keras.layers.Conv2DTranspose),
    "dec_deconv3": ("generative_net", 4, keras.layers.Conv2DTranspose),
}


def _convert_kernel(cls, kernel):
  """Keras <-> Flax layout of one kernel; its own inverse.

  Conv2D and Dense kernels are stored alike. Keras' Conv2DTranspose kernel is (h, w, out, in) and is
  applied spatially flipped relative to lax.conv_transpose (nnx.ConvTranspose), on JAX as on TF.
  """
  kernel = np.asarray(kernel)
  return kernel[::-1, ::-1].transpose(0, 1, 3, 2) if cls is keras.layers.Conv2DTranspose else kernel


def _layers(model):
  for name, (net, index, cls) in FLAX_TO_KERAS.items():
    layer = getattr(model, net).layers[index]
    assert type(layer) is cls, (name, layer)
    yield name, layer, cls


def load_flax_params(model, params):
  """Writes {flax layer name: {"kernel", "bias"}} arrays in Flax layout into the Keras model."""
  for name, layer, cls in _layers(model):
    layer.kernel.assign(_convert_kernel(cls, params[name]["kernel"]))
    layer.bias.assign(np.asarray(params[name]["bias"]))


def flax_tree(model, values):
  """{flax layer name: {"kernel", "bias"}} in Flax layout of arrays given in the order of
  model.trainable_variables (the variables themselves, their gradients, their updated values)."""
  by_variable = {id(v): value for v, value in zip(model.trainable_variables, values)}
  return {name: {"kernel": _convert_kernel(cls, by_variable[id(layer.kernel)]),
                 "bias": np.asarray(by_variable[id(layer.bias)])}
          for name, layer, cls in _layers(model)}


# -- The stateless training: pure functions of the model's variables, jitted and scanned.

def chunk_plan(backend: str, steps_per_chunk: int = 0) -> tuple[int, bool]:
  """(steps per jitted chunk, unrolled?): steps_per_chunk, else 10 unrolled on CPU and 100 rolled
  elsewhere, as vae_jax.training.train.chunk_plan (XLA:CPU runs convolutions in a rolled loop slowly)."""
  length, unroll = (10, True) if backend == "cpu" else (100, False)
  return steps_per_chunk or length, unroll


class Stateless:
  """The model's and optimizer's variables as one pytree, and jitted pure functions over it.

  state = (trainable, non_trainable, optimizer variables), lists of arrays in the order of
  model.trainable_variables, model.non_trainable_variables (the noise seed) and optimizer.variables.
  Each function is compiled ahead of time for each argument shape, at its first call; that time is
  added to `compile_seconds`.
  """

  def __init__(self, model, optimizer, unroll: bool):
    self.model, self.optimizer = model, optimizer
    self.compile_seconds = 0.0
    self._compiled = {}

    def train_step(state, x):
      trainable, non_trainable, optimizer_variables = state

      def loss_fn(trainable, non_trainable):
        return model.stateless_call(trainable, non_trainable, x)

      (loss, non_trainable), grads = jax.value_and_grad(loss_fn, has_aux=True)(trainable, non_trainable)
      trainable, optimizer_variables = optimizer.stateless_apply(optimizer_variables, grads, trainable)
      return (trainable, non_trainable, optimizer_variables), loss

    def train_chunk(state, xs, start, length):
      """`length` steps on xs[start:start + length], one batch each; their losses."""
      xs = jax.lax.dynamic_slice_in_dim(xs, start, length)
      return jax.lax.scan(train_step, state, xs, unroll=unroll)

    def evaluate(state, x):
      """(the batch's loss, the state with the noise seed advanced)."""
      trainable, non_trainable, optimizer_variables = state
      loss, non_trainable = model.stateless_call(trainable, non_trainable, x)
      return loss, (trainable, non_trainable, optimizer_variables)

    self.train_step = jax.jit(train_step, donate_argnums=0)
    self.train_chunk = jax.jit(train_chunk, donate_argnums=0, static_argnums=3)
    self.evaluate = jax.jit(evaluate, donate_argnums=0)

  def initial_state(self):
    # Copies: each call donates the state, and the Keras variables keep their own arrays.
    return tuple([jax.numpy.array(v.value, copy=True) for v in variables]
                 for variables in (self.model.trainable_variables,
                                   self.model.non_trainable_variables, self.optimizer.variables))

  def assign(self, state) -> None:
    """Writes the state back into the Keras model's and optimizer's variables."""
    for variables, values in zip((self.model.trainable_variables, self.model.non_trainable_variables,
                                  self.optimizer.variables), state):
      for variable, value in zip(variables, values):
        variable.assign(value)

  def compiled(self, fn, *args, static=()):
    key = (fn, static, tuple((getattr(a, "shape", None), getattr(a, "dtype", None))
                             for a in jax.tree.leaves(args)))
    if key not in self._compiled:
      start = time.perf_counter()
      self._compiled[key] = fn.lower(*args, *static).compile()
      self.compile_seconds += time.perf_counter() - start
    return self._compiled[key]

  def call(self, fn, *args, static=()):
    """fn(*args, *static), compiling fn for these shapes first if needed (static args are left out
    of the compiled call)."""
    return self.compiled(fn, *args, static=static)(*args)


def train_epoch(stateless: Stateless, state, images, batch_size: int, length: int):
  """One epoch over `images` (already in the epoch's order) in batches of `batch_size`: as many
  `length`-step chunks as fit, then single steps, the last batch smaller when the size does not
  divide. Returns (state, [(loss, batch size), ...]) with the losses still on the device."""
  full = len(images) // batch_size
  stacked = jax.device_put(images[:full * batch_size].reshape(full, batch_size, *images.shape[1:]))
  losses = []
  chunks = full // length
  for c in range(chunks):
    state, chunk_losses = stateless.call(stateless.train_chunk, state, stacked, c * length,
                                         static=(length,))
    losses.append((chunk_losses, batch_size))
  for b in range(chunks * length, full):
    state, loss = stateless.call(stateless.train_step, state, stacked[b])
    losses.append((loss, batch_size))
  if full * batch_size < len(images):
    rest = images[full * batch_size:]
    state, loss = stateless.call(stateless.train_step, state, jax.device_put(rest))
    losses.append((loss, len(rest)))
  return state, losses


def evaluate_elbo(stateless: Stateless, state, test_x, batch_size: int):
  """Test ELBO: minus the mean of compute_loss over all test images (batches weighted by their size);
  returns (elbo, state with the noise seed advanced)."""
  total = []
  for i in range(0, len(test_x), batch_size):
    x = jax.device_put(test_x[i:i + batch_size])
    loss, state = stateless.call(stateless.evaluate, state, x)
    total.append((loss, len(x)))
  return -sum(float(loss) * n for loss, n in total) / len(test_x), state


def train_keras(train_x, test_x, *, epochs, batch_size, latent_dim, learning_rate, seed,
                precision="float32", steps_per_chunk=0, on_epoch=None):
  """Trains the tutorial model on binarized (N, 28, 28, 1) float32 arrays; returns one row per epoch.

  Epoch e visits the examples in vae_jax.data.epoch_order(seed, e, N), as the JAX main job does.
  Each jitted function is compiled ahead of time at its first call, timed apart as compile_seconds;
  images_per_sec counts every training image over the training time without it.
  """
  keras.utils.set_random_seed(seed)  # Python, numpy and Keras: the weight init and the noise seed
  model, optimizer = make_model_and_optimizer(latent_dim, learning_rate, precision)
  length, unroll = chunk_plan(jax.default_backend(), steps_per_chunk)
  stateless = Stateless(model, optimizer, unroll)
  state = stateless.initial_state()

  history = []
  for epoch in range(1, epochs + 1):
    epoch_start = time.perf_counter()
    order = data_lib.epoch_order(seed, epoch, len(train_x))
    images = train_x[order]
    compiled_before = stateless.compile_seconds
    train_start = time.perf_counter()  # after the shuffle, as the main job starts after placing batches
    state, losses = train_epoch(stateless, state, images, batch_size, length)
    jax.block_until_ready(state)
    compile_seconds = stateless.compile_seconds - compiled_before
    train_seconds = time.perf_counter() - train_start - compile_seconds
    eval_start = time.perf_counter()
    test_elbo, state = evaluate_elbo(stateless, state, test_x, batch_size)
    record = {"epoch": epoch,
              "train_loss": sum(float(np.sum(loss)) * n for loss, n in losses) / len(train_x),
              "test_elbo": test_elbo,
              "images_per_sec": len(train_x) / train_seconds,
              "compile_seconds": compile_seconds, "train_seconds": train_seconds,
              "eval_seconds": time.perf_counter() - eval_start,
              "seconds": time.perf_counter() - epoch_start}
    history.append(record)
    if on_epoch is not None:
      on_epoch(record)
  stateless.assign(state)
  return history


def main(argv=None):
  try:
    args = parse_args(argv)
    train_x, test_x = reference_cli.load_binarized(args.data, args.train_size)
  except UserError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  # The flags first: train_size is then the number of examples used, not the flag's None for all.
  meta = {**{k: v for k, v in vars(args).items() if k != "out"},
          "framework": "keras_jax", "keras_version": keras.__version__, "jax_version": jax.__version__,
          "backend": keras.backend.backend(), "devices": [str(x) for x in jax.devices()],
          "machine": platform.machine(), "cpu_count": os.cpu_count(), "train_size": len(train_x),
          "test_size": len(test_x), "form": "stateless_scan"}
  print(json.dumps({"meta": meta}), flush=True)
  out = open(args.out, "w") if args.out else None

  def emit(record):
    line = json.dumps(record)
    print(line, flush=True)
    if out is not None:
      out.write(line + "\n")
      out.flush()

  try:
    train_keras(train_x, test_x, epochs=args.epochs, batch_size=args.batch_size,
                latent_dim=args.latent_dim, learning_rate=args.learning_rate, seed=args.seed,
                precision=args.precision, steps_per_chunk=args.steps_per_chunk, on_epoch=emit)
  finally:
    if out is not None:
      out.close()
  return 0


if __name__ == "__main__":
  cli.start(lambda: cli.main(main))
