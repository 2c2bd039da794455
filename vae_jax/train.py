"""Pure jitted training and evaluation steps for the CVAE, and whole epochs as one lax.scan.

Randomness: one root key per run. Example i of global batch b (at optimizer step s) gets its noise
from fold_in(fold_in(noise_key, s), i): it depends only on the step and on the example's position
in the global batch, never on the device or process that holds it.
"""

import functools
import time
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from vae_jax import losses
from vae_jax.config import Config
from vae_jax.errors import UserError
from vae_jax.models import CVAE
from vae_jax.parallel import Strategy

METRIC_KEYS = ("loss", "rec", "kl")


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


def create_model(config: Config, key: jax.Array) -> CVAE:
  dtype = jnp.bfloat16 if config.dtype == "bfloat16" else None
  return CVAE(config.latent_dim, rngs=nnx.Rngs(params=key),
              conv_transpose=config.conv_transpose, dtype=dtype)


def keras_adam(learning_rate: float, b1: float = 0.9, b2: float = 0.999,
               eps: float = 1e-7) -> optax.GradientTransformation:
  """Adam exactly as tf.keras computes it, so a step matches the TensorFlow original.

  Keras adds its epsilon to the uncorrected sqrt(v) ("epsilon hat"): that is optax.adam with
  eps / sqrt(1 - b2^t) at step t (3.2e-6 at step 1, where optax's default would be 1e-8).
  """
  return optax.inject_hyperparams(optax.adam)(
      learning_rate=learning_rate, b1=b1, b2=b2,
      eps=lambda count: eps / jnp.sqrt(1.0 - b2 ** (count + 1)))


def make_optimizer(config: Config) -> optax.GradientTransformation:
  return keras_adam(config.learning_rate)


def init_state(config: Config) -> tuple[nnx.GraphDef, TrainState]:
  """The model's graph definition and its initial training state (on the default device)."""
  graphdef, params = nnx.split(create_model(config, run_keys(config.seed).init))
  opt_state = make_optimizer(config).init(params)
  return graphdef, TrainState(jnp.zeros((), jnp.int32), params, opt_state)


def example_noise(key, index_B, latent_dim: int):
  """eps ~ N(0, I) for each example, drawn from fold_in(key, its global index)."""
  return jax.vmap(lambda i: jax.random.normal(jax.random.fold_in(key, i), (latent_dim,)))(index_B)


def _global_index(batch_size_local: int, axis_name: str | None):
  offset = 0 if axis_name is None else jax.lax.axis_index(axis_name) * batch_size_local
  return offset + jnp.arange(batch_size_local)


def _psum(tree, axis_name):
  return tree if axis_name is None else jax.lax.psum(tree, axis_name)


def batch_sums(model: CVAE, x_u8, mask_B, eps, kl: str):
  """Sums over the real (mask 1) examples of the per-example loss terms; x_u8 holds {0,1} pixels."""
  x = x_u8.astype(jnp.float32)
  dtype = model.enc_conv1.dtype or jnp.float32
  x_logits, z, mean, logvar = model(x.astype(dtype), eps.astype(dtype))
  terms = losses.negative_elbo_terms(x_logits, x, z, mean, logvar, kl)
  return {k: jnp.sum(v * mask_B) for k, v in terms.items()}


def micro_batches(config: Config, batch: int) -> int:
  """How many parts the step splits the batch it traces into; their loss sums add up to the batch's.

  config.micro_batches, else 2 on a single CPU device (when the batch splits evenly), else 1. On
  XLA:CPU two half-batch graphs run faster than one (1.09x,
  benchmarks/results/cpu_micro_batches_2026-11-26_db23437/): their activations are half the size. (Under pmap the traced batch is a device's share; under
  sharded jit, the global one.)
  """
  single_cpu = jax.default_backend() == "cpu" and (config.devices or jax.device_count()) == 1
  parts = config.micro_batches or (2 if single_cpu and batch % 2 == 0 else 1)
  if batch % parts:
    raise UserError(f"a batch of {batch} per step does not split into {parts} micro-batches")
  return parts


def make_train_step(graphdef, tx, config: Config, axis_name: str | None):
  """(state, x_u8, mask, noise_key) -> (state, sums): one Adam step on the batch's mean loss."""

  def train_step(state: TrainState, x_u8, mask_B, noise_key):
    eps = example_noise(jax.random.fold_in(noise_key, state.step),
                        _global_index(x_u8.shape[0], axis_name), config.latent_dim)
    count = _psum(jnp.sum(mask_B), axis_name)

    parts = micro_batches(config, x_u8.shape[0])

    def loss_fn(params):
      model = nnx.merge(graphdef, params)
      size = x_u8.shape[0] // parts
      sums = [batch_sums(model, *(a[i * size:(i + 1) * size] for a in (x_u8, mask_B, eps)), config.kl)
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

  XLA:CPU runs convolutions inside a rolled while loop ~20x slower than unrolled (measured here,
  jax 0.10), so on CPU the chunk is unrolled and kept short; accelerators scan it rolled.
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
      eps = example_noise(eval_key, b * global_batch + index, config.latent_dim)
      sums = batch_sums(model, x_u8, mask_B, eps, config.kl)
      return carry, {**sums, "count": jnp.sum(mask_B)}

    _, per_batch = jax.lax.scan(body, None, (jnp.arange(xs.shape[0]), xs, masks))
    return _psum(jax.tree.map(lambda a: jnp.sum(a, axis=0), per_batch), axis_name)

  return evaluate


def means(sums) -> dict[str, float]:
  """Per-example means of the summed terms (host floats)."""
  count = float(sums["count"])
  return {k: float(sums[k]) / count for k in METRIC_KEYS}


def chunk_plan(config: Config, backend: str) -> tuple[int, bool]:
  """(steps per jitted chunk, unrolled?): config.steps_per_chunk, else 10 unrolled on CPU, else 100."""
  length, unroll = (10, True) if backend == "cpu" else (100, False)
  return config.steps_per_chunk or length, unroll


class Steps:
  """The compiled functions of a run for one strategy (pmap, sharded jit, or one device).

  Each function is compiled ahead of time at its first call, and that time is added to
  `compile_seconds`, so throughput numbers never include compilation.
  """

  def __init__(self, graphdef, config: Config, strategy: Strategy):
    self.strategy = strategy
    self.compile_seconds = 0.0
    self._compiled = {}
    axis = strategy.axis_name
    self.train_step = make_train_step(graphdef, make_optimizer(config), config, axis)
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


def fetch(tree) -> Any:
  """Host numpy copy of replicated outputs (the first replica's for pmap's per-device outputs)."""
  def first(a):
    shard = a.addressable_shards[0]
    data = np.asarray(shard.data)
    return data[0] if data.ndim and shard.data.shape != a.shape else data
  return jax.tree.map(first, tree)
