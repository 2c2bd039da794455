"""Pure jitted training and evaluation steps for any model and objective, and epochs as lax.scan.

The step computes the objective named by config.objective (vae_jax.nn.objectives) for the model named
by config.model (vae_jax.nn.models) and takes an Adam step on the batch mean of its "loss".

Randomness: one root key per run. Example i of global batch b (at optimizer step s) gets the key
fold_in(fold_in(noise_key, s), i), from which the objective draws its noise (the ELBO:
eps = normal(key, (latent_dim,)), the seed's draw); with --denoise its flipped pixels come from
fold_in(fold_in(fold_in(noise_key, DENOISE_STREAM), s), i). Both depend only on the step and on
the example's position in the global batch, never on the device or process that holds it.
With --binarize dynamic the step gets uint8 intensities and draws its {0, 1} pixels itself, pixel
~ Bernoulli(intensity / 255) from the key fold_in(fold_in(fold_in(noise_key, BINARIZE_STREAM), s), i),
so each epoch's pixels are fresh and, like the noise, independent of devices, processes and
micro-batches.
"""

import dataclasses
import functools
import time
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from vae_jax.nn import models, objectives
from vae_jax.config import Config
from vae_jax.errors import UserError
from vae_jax.training import schedules
from vae_jax.training.parallel import Strategy

METRIC_KEYS = ("loss", "rec", "kl")
# fold_in data of the denoising stream: above every int32 step, so never a step's key.
DENOISE_STREAM = 2**32 - 1
BINARIZE_STREAM = 2**32 - 2  # the dynamic binarization's stream, likewise never a step's key
# A smaller batch is evaluated in batches of the smallest multiple of it whose decoder sees this
# many samples (images x --iw-samples): at batch 20 the test set's 500 scan steps of tiny GEMMs
# cost more than the arithmetic; IWAE k=50 evaluated slower in batches of 500 images than of 20.
EVAL_MIN_BATCH = 500


class TrainState(NamedTuple):
  step: jax.Array          # int32 scalar: optimizer steps taken
  params: Any              # nnx.State of the model's Params
  opt_state: Any           # optax Adam state


class Keys(NamedTuple):
  """The run's independent random streams, all derived from config.seed."""
  init: jax.Array
  noise: jax.Array
  eval: jax.Array
  pictures: jax.Array


def run_keys(seed: int) -> Keys:
  root = jax.random.key(seed)
  return Keys(*(jax.random.fold_in(root, i) for i in range(4)))


def keras_adam(learning_rate: float, b1: float = 0.9, b2: float = 0.999,
               eps: float = 1e-7) -> optax.GradientTransformation:
  """Adam exactly as tf.keras computes it, so a step matches the TensorFlow original.

  Keras adds its epsilon to the uncorrected sqrt(v) ("epsilon hat"): that is optax.adam with
  eps / sqrt(1 - b2^t) at step t (3.2e-6 at step 1, where optax's default would be 1e-8).
  """
  return optax.inject_hyperparams(optax.adam)(
      learning_rate=learning_rate, b1=b1, b2=b2,
      eps=lambda count: eps / jnp.sqrt(1.0 - b2 ** (count + 1)))


def make_optimizer(config: Config,
                   steps_per_epoch: int | None = None) -> optax.GradientTransformation:
  """Adam at config.lr_schedule's learning rate (vae_jax.training.schedules): the tutorial's Keras
  form (keras_adam) unless the schedule names its own eps for plain optax.adam.

  A schedule of epochs needs steps_per_epoch; built without it, the optimizer only initializes its
  state (init_state: the layout does not depend on it) and refuses to update.
  """
  schedule = schedules.get_schedule(config.lr_schedule)
  schedule.check(config)
  layout_only = schedule.needs_steps_per_epoch and steps_per_epoch is None
  learning_rate = schedule.learning_rate(config, 1 if layout_only else steps_per_epoch)
  tx = (keras_adam(learning_rate) if schedule.adam_eps is None else
        optax.inject_hyperparams(optax.adam)(learning_rate=learning_rate, eps=schedule.adam_eps))
  if not layout_only:
    return tx

  def refuse(*args, **kwargs):
    raise ValueError(f"--lr-schedule {config.lr_schedule} needs the optimizer built with "
                     "steps_per_epoch (train.Steps passes it)")
  return optax.GradientTransformation(tx.init, refuse)


def _initializer(config: Config):
  """(init, graphdefs): init(key) -> the initial TrainState; tracing it appends the graphdef."""
  graphdefs = []

  def init(key) -> TrainState:
    graphdef, params = nnx.split(models.create_model(config, key))
    graphdefs.append(graphdef)
    return TrainState(jnp.zeros((), jnp.int32), params, make_optimizer(config).init(params))

  return init, graphdefs


@functools.lru_cache(maxsize=8)
def _jitted_initializer(config: Config, model_class: type):  # pylint: disable=unused-argument
  """init_state's compiled program and its graphdefs, kept for the next call with this config
  (model_class in the key: a model registered again under the same name is another program)."""
  init, graphdefs = _initializer(config)
  return jax.jit(init), graphdefs


def init_state(config: Config) -> tuple[nnx.GraphDef, TrainState]:
  """The model's graph definition and its initial training state (on the default device).

  One compiled program: run eagerly, each initializer's ops would be compiled on their own
  (~50 small compiles, ~0.7 s of every command's start). The values are the same bit for bit
  (tests/test_train.py)."""
  # The seed is the program's argument, not part of it: one program serves every seed.
  init, graphdefs = _jitted_initializer(dataclasses.replace(config, seed=0),
                                        models.get_model_class(config.model))
  state = init(run_keys(config.seed).init)
  return graphdefs[0], state


def abstract_state(config: Config) -> tuple[nnx.GraphDef, TrainState]:
  """init_state's graph definition and the shapes and dtypes of its state (jax.ShapeDtypeStruct
  leaves), computing nothing: the layout a checkpoint or a parameter file is read into."""
  init, graphdefs = _initializer(config)
  state = jax.eval_shape(lambda: init(run_keys(config.seed).init))  # the keys traced too
  return graphdefs[0], state


def example_keys(key, index_B):
  """One key per example: fold_in(key, its global index)."""
  return jax.vmap(lambda i: jax.random.fold_in(key, i))(index_B)


def _global_index(batch_size_local: int, axis_name: str | None):
  offset = 0 if axis_name is None else jax.lax.axis_index(axis_name) * batch_size_local
  return offset + jnp.arange(batch_size_local)


def _psum(tree, axis_name):
  return tree if axis_name is None else jax.lax.psum(tree, axis_name)


def batch_sums(model, x_u8, mask_B, key_B, config: Config, kl_weight=1.0, x_input_u8=None,
               train: bool = False):
  """Sums over the real (mask 1) examples of the objective's terms; x_u8 holds {0,1} pixels.

  x_input_u8 (default x_u8) is what the encoder sees; the defaults are the evaluation's.
  """
  x = x_u8.astype(jnp.float32)
  x_input = x if x_input_u8 is None else x_input_u8.astype(jnp.float32)
  ctx = objectives.Context(config, kl_weight, x_input, train)
  terms = objectives.get_objective(config.objective).fn(model, x, key_B, ctx)
  missing = [k for k in METRIC_KEYS if k not in terms]
  if missing:
    raise ValueError(f"objective {config.objective!r} returned no {', '.join(missing)} term")
  return {k: jnp.sum(terms[k] * mask_B) for k in METRIC_KEYS}


def kl_weight(config: Config, step, steps_per_epoch: int | None):
  """beta times the warm-up factor min(1, step / (kl_warmup_epochs * steps_per_epoch)).

  `step` counts the optimizer steps already taken, so the first step has weight 0 under warm-up.
  """
  if not config.kl_warmup_epochs:
    return config.beta
  if not steps_per_epoch:
    raise ValueError("--kl-warmup-epochs needs the step function built with steps_per_epoch")
  warmup_steps = config.kl_warmup_epochs * steps_per_epoch
  return config.beta * jnp.minimum(1.0, step.astype(jnp.float32) / warmup_steps)


def denoised_input(x_u8, p: float, key, step, index_B):
  """x_u8 with each pixel flipped with probability p, drawn from the denoising stream."""
  step_key = jax.random.fold_in(jax.random.fold_in(key, DENOISE_STREAM), step)
  flip = jax.vmap(lambda k: jax.random.bernoulli(k, p, x_u8.shape[1:]))(
      example_keys(step_key, index_B))
  return jnp.where(flip, 1 - x_u8, x_u8)


def dynamic_pixels(intensity_u8, key, step, index_B):
  """{0, 1} uint8 pixels, each 1 with probability intensity / 255, drawn from the binarization
  stream with one key per example (its position index_B in the global batch at `step`)."""
  step_key = jax.random.fold_in(jax.random.fold_in(key, BINARIZE_STREAM), step)
  u = jax.vmap(lambda k: jax.random.uniform(k, intensity_u8.shape[1:]))(
      example_keys(step_key, index_B))
  # u in [0, 1): intensity 0 is never 1, intensity 255 always.
  return (u * 255.0 < intensity_u8.astype(jnp.float32)).astype(jnp.uint8)


def micro_batches(config: Config, batch: int) -> int:
  """How many parts the step splits the batch it traces into; their loss sums add up to the batch's.

  config.micro_batches, else 2 on a single CPU device for a batch of at least 100 that splits
  evenly, else 1. On XLA:CPU two half-batch graphs of the CVAE at batch 100 run faster than one
  (1.09x, benchmarks/results/cpu_micro_batches_2026-11-26_db23437/): their activations are half the
  size; the MLP at batch 20 ran faster in one (benchmarks/results/cpu_small_models_*). (Under pmap
  the traced batch is a device's share; under sharded jit, the global one.)
  """
  single_cpu = jax.default_backend() == "cpu" and (config.devices or jax.device_count()) == 1
  parts = config.micro_batches or (2 if single_cpu and batch % 2 == 0 and batch >= 100 else 1)
  if batch % parts:
    raise UserError(f"a batch of {batch} per step does not split into {parts} micro-batches")
  return parts


def make_train_step(graphdef, tx, config: Config, axis_name: str | None,
                    steps_per_epoch: int | None = None):
  """(state, x_u8, mask, noise_key) -> (state, sums): one Adam step on the batch's mean loss.

  x_u8 holds {0, 1} pixels, or with --binarize dynamic the uint8 intensities (dynamic_pixels).

  steps_per_epoch is needed only for the KL warm-up (config.kl_warmup_epochs).
  """

  def train_step(state: TrainState, x_u8, mask_B, noise_key):
    index = _global_index(x_u8.shape[0], axis_name)
    if config.binarize == "dynamic":
      x_u8 = dynamic_pixels(x_u8, noise_key, state.step, index)
    key_B = example_keys(jax.random.fold_in(noise_key, state.step), index)
    x_input = (x_u8 if not config.denoise else
               denoised_input(x_u8, config.denoise, noise_key, state.step, index))
    weight = kl_weight(config, state.step, steps_per_epoch)
    count = _psum(jnp.sum(mask_B), axis_name)

    parts = micro_batches(config, x_u8.shape[0])

    def loss_fn(params):
      model = nnx.merge(graphdef, params)
      size = x_u8.shape[0] // parts
      part = lambda a, i: a[i * size:(i + 1) * size]
      sums = [batch_sums(model, part(x_u8, i), part(mask_B, i), part(key_B, i), config, weight,
                         part(x_input, i), train=True)
              for i in range(parts)]
      sums = jax.tree.map(lambda *s: functools.reduce(jnp.add, s), *sums)
      # Local sum over the global count: summing the devices' gradients gives the global mean's.
      return sums["loss"] / count, sums

    grads, sums = jax.grad(loss_fn, has_aux=True)(state.params)
    grads, sums = _psum((grads, sums), axis_name)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    return TrainState(state.step + 1, params, opt_state), {**sums, "count": count}

  return train_step


def make_train_chunk(train_step, length: int, unroll: bool):
  """(state, xs, masks, noise_key, start) -> (state, sums, per-step losses) over `length` batches.

  unroll: True (every step inlined), False (a rolled while loop) or an int (steps per iteration).
  """

  def train_chunk(state, xs, masks, noise_key, start):
    xs = jax.lax.dynamic_slice_in_dim(xs, start, length)
    masks = jax.lax.dynamic_slice_in_dim(masks, start, length)

    def body(state, batch):
      return train_step(state, *batch, noise_key)

    state, per_step = jax.lax.scan(body, state, (xs, masks), unroll=unroll)
    totals = jax.tree.map(lambda a: jnp.sum(a, axis=0), per_step)
    return state, totals, per_step["loss"] / per_step["count"]

  return train_chunk


def make_evaluate(graphdef, config: Config, axis_name: str | None):
  """(params, xs, masks, eval_key) -> sums of the loss terms over the whole (padded) test stack."""

  def evaluate(params, xs, masks, eval_key):
    model = nnx.merge(graphdef, params)
    batch_local = xs.shape[1]
    index = _global_index(batch_local, axis_name)
    global_batch = batch_local * (1 if axis_name is None else jax.lax.psum(1, axis_name))

    def body(carry, batch):
      b, x_u8, mask_B = batch
      key_B = example_keys(eval_key, b * global_batch + index)
      sums = batch_sums(model, x_u8, mask_B, key_B, config)
      return carry, {**sums, "count": jnp.sum(mask_B)}

    _, per_batch = jax.lax.scan(body, None, (jnp.arange(xs.shape[0]), xs, masks))
    return _psum(jax.tree.map(lambda a: jnp.sum(a, axis=0), per_batch), axis_name)

  return evaluate


def means(sums) -> dict[str, float]:
  """Per-example means of the summed terms (host floats)."""
  count = float(sums["count"])
  return {k: float(sums[k]) / count for k in METRIC_KEYS}


def has_convolutions(config: Config) -> bool:
  """Whether the run's model has convolution layers (the models that read --conv-transpose)."""
  return "conv_transpose" in models.get_model_class(config.model).settings


def chunk_plan(config: Config, backend: str) -> tuple[int, bool]:
  """(steps per jitted chunk, unrolled?): config.steps_per_chunk steps (default 100), rolled,
  except for models with convolutions on CPU: 10 unrolled.

  XLA:CPU ran the CVAE's convolutions inside a rolled while loop ~20x slower than unrolled
  (jax 0.10); a fully connected model runs faster rolled, with fewer dispatches, and compiles in a
  fraction of the time (benchmarks/results/cpu_small_models_*).
  """
  length, unroll = (10, True) if backend == "cpu" and has_convolutions(config) else (100, False)
  return config.steps_per_chunk or length, unroll


def eval_batch_size(config: Config) -> int:
  """The test set's batch: the training batch, or for a model without convolutions the smallest
  multiple of it with EVAL_MIN_BATCH decoder samples (the sums do not depend on it: every test
  image's noise comes from its global index)."""
  if has_convolutions(config):
    return config.batch_size
  samples = config.batch_size * (config.iw_samples if config.objective == "iwae" else 1)
  return config.batch_size * max(1, -(-EVAL_MIN_BATCH // samples))


class Steps:
  """The compiled functions of a run for one strategy (pmap, sharded jit, or one device).

  Each function is compiled ahead of time at its first call, and that time is added to
  `compile_seconds`, so throughput numbers never include compilation.
  """

  def __init__(self, graphdef, config: Config, strategy: Strategy,
               steps_per_epoch: int | None = None):
    self.strategy = strategy
    self.compile_seconds = 0.0
    self._compiled = {}
    axis = strategy.axis_name
    self.train_step = make_train_step(graphdef, make_optimizer(config, steps_per_epoch), config,
                                      axis, steps_per_epoch)
    self.step = strategy.jit(self.train_step, ("state", "batch", "batch", "shared"),
                             donate_state=True)
    self.evaluate = strategy.jit(make_evaluate(graphdef, config, axis),
                                 ("state", "batch", "batch", "shared"), donate_state=False)

  @functools.lru_cache(maxsize=4)
  def chunk(self, length: int, unroll: bool):
    return self.strategy.jit(make_train_chunk(self.train_step, length, unroll),
                             ("state", "batch", "batch", "shared", "shared"), donate_state=True)

  def compiled(self, fn, *args):
    """fn compiled for these argument shapes (cached; the compile time is added up)."""
    key = (fn, tuple((getattr(a, "shape", None), getattr(a, "dtype", None))
                     for a in jax.tree.leaves(args)))
    if key not in self._compiled:
      start = time.perf_counter()
      self._compiled[key] = fn.lower(*args).compile()
      self.compile_seconds += time.perf_counter() - start
    return self._compiled[key]

  def call(self, fn, *args):
    """fn(*args), compiling fn for these argument shapes first if needed."""
    compiled = self.compiled(fn, *args)
    if self.strategy.kind == "pmap" and jax.process_count() > 1:
      # Multi-process pmap compiles for global arrays and only its wrapper turns this process's
      # arrays into them (jax 0.10 pmap.py); the wrapper reuses the compilation above.
      return fn(*args)
    return compiled(*args)
