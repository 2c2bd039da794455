"""Training and evaluation throughput of one framework, in its own process, on batches already on the device.

  python -m benchmarks.throughput --framework jax --batch-size 100 --latent-dim 50 --steps 500 --out jax.json

One recipe for every framework. The first call is timed apart as compile_seconds (JAX and Keras on
JAX: the ahead-of-time compile of their jitted functions; TF: the first tf.function call, which traces,
optimizes and runs one step). One untimed warm-up call follows. Then --steps training steps run
twice: synced once at the end, for images_per_sec; synced after every call, for the per-step median
and p90. JAX runs the main job's compiled lax.scan chunks, so its per-step time is a chunk's wall time
over its length; keras_jax runs benchmarks.peers.keras_reference's jitted lax.scan of Keras' stateless steps
over chunks as long as the main job's (or, with --keras-form fit, Keras' own fit); TF runs the
tutorial's tf.function train_step once per batch. Evaluation is the forward loss only: JAX's compiled
evaluate, Keras' jitted stateless call per batch, TF's eager compute_loss as in the tutorial. Peak
memory is the process's ru_maxrss (host). --dtype (jax) and --precision (tf, keras_jax) choose the
compute precision; the result's "precision" says which.
"""

import argparse
import dataclasses
import itertools
import json
import math
import os
import resource
import sys
import time
from typing import Any, Callable

import numpy as np

from vae_jax import data as data_lib
from vae_jax import cli
from vae_jax.config import get_config
from vae_jax.errors import UserError

TF_BATCHES = 10  # distinct batches TF cycles through (JAX uses one chunk's worth)
FRAMEWORKS = ("jax", "tf", "keras_jax")
KERAS_FORMS = ("scan", "fit")
FIT_EXECUTIONS = 5  # keras_jax --keras-form fit: steps_per_execution runs of one chunk each per fit call


@dataclasses.dataclass
class Bench:
  """One framework's model, ready to be timed: each call returns what `sync` waits for."""
  device: str
  train: Callable[[], Any]         # one call: `steps_per_call` optimizer steps
  steps_per_call: int
  evaluate: Callable[[], Any]      # one call: the forward loss of `eval_images_per_call` images
  eval_images_per_call: int
  sync: Callable[[Any], Any]
  compile_seconds: Callable[[float], float]  # from the first train call's seconds
  device_peak_mib: Callable[[], float | None]
  flops_per_step: float | None = None  # XLA's cost analysis of the compiled training step
  hlo_text: Callable[[], str] | None = None  # JAX: the compiled training chunk's HLO


def random_batches(seed: int, count: int, batch_size: int) -> np.ndarray:
  """(count, batch, 28, 28, 1) uint8 {0, 1}: uniform noise binarized as the data is."""
  rng = np.random.default_rng(seed)
  return data_lib.binarize(rng.integers(0, 256, (count, batch_size, 28, 28, 1), dtype=np.uint8))


def jax_bench(batch_size: int, latent_dim: int, seed: int, **overrides) -> Bench:
  """The main job's own compiled functions (vae_jax.training.train.Steps), on one device by default.

  `overrides` are Config fields (conv_transpose, dtype, steps_per_chunk, parallel, devices, ...).
  """
  # Imported here so that a TF run never loads JAX, and the other way round.
  import jax  # pylint: disable=import-outside-toplevel
  from vae_jax.nn import resolve  # pylint: disable=import-outside-toplevel
  from vae_jax.training import parallel, train  # pylint: disable=import-outside-toplevel
  config = dataclasses.replace(get_config(), batch_size=batch_size, latent_dim=latent_dim,
                               seed=seed, **{"parallel": "none", **overrides})
  resolve.check(config)
  if config.devices:  # simulated devices where the CPU is the only platform; before JAX starts
    jax.config.update("jax_num_cpu_devices", config.devices)
  strategy = parallel.make_strategy(config.parallel, config.devices)
  strategy.check_batch(batch_size)
  graphdef, state = train.init_state(config)
  steps = train.Steps(graphdef, config, strategy)
  length, unroll = train.chunk_plan(config, jax.default_backend())
  x_u8 = random_batches(seed, length, batch_size)
  xs, masks = strategy.put_batches(x_u8, np.ones(x_u8.shape[:2], np.float32))
  chunk = steps.chunk(length, unroll)
  keys = train.run_keys(seed)
  state = strategy.put_state(state)

  def train_call():
    nonlocal state  # donated by each call: only the newest state is alive
    state, sums, _ = steps.call(chunk, state, xs, masks, keys.noise, 0)
    return state, sums

  compiled = steps.compiled(chunk, state, xs, masks, keys.noise, 0)
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost  # a list in older jax

  def device_peak_mib():
    stats = jax.devices()[0].memory_stats()  # None on CPU
    return stats["peak_bytes_in_use"] / 2**20 if stats and "peak_bytes_in_use" in stats else None

  device = jax.devices()[0]
  return Bench(
      device=device.platform if device.platform == "cpu" else f"{device.platform}: {device.device_kind}",
      train=train_call, steps_per_call=length,
      evaluate=lambda: steps.call(steps.evaluate, state.params, xs, masks, keys.eval),
      eval_images_per_call=length * batch_size, sync=jax.block_until_ready,
      compile_seconds=lambda first_call: steps.compile_seconds, device_peak_mib=device_peak_mib,
      flops_per_step=cost.get("flops", 0.0) / length if cost else None, hlo_text=compiled.as_text)


def tf_bench(batch_size: int, latent_dim: int, seed: int, precision: str = "float32") -> Bench:
  """The tutorial's train_step and compute_loss (benchmarks.peers.tf_reference)."""
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  from benchmarks.peers import tf_reference as tfr  # pylint: disable=import-outside-toplevel
  tf.keras.utils.set_random_seed(seed)
  model, optimizer = tfr.make_model_and_optimizer(latent_dim, get_config().learning_rate, precision)
  # tf.identity runs on the default device (the GPU when there is one), so the batches live there.
  batches = tf.unstack(tf.identity(tf.constant(
      random_batches(seed, TF_BATCHES, batch_size).astype(np.float32))))
  cycle = itertools.cycle(batches)
  gpus = tf.config.list_physical_devices("GPU")

  def device_peak_mib():
    return tf.config.experimental.get_memory_info("GPU:0")["peak"] / 2**20 if gpus else None

  device = (f"gpu: {tf.config.experimental.get_device_details(gpus[0]).get('device_name', gpus[0].name)}"
            if gpus else "cpu")
  return Bench(
      device=device, train=lambda: tfr.train_step(model, next(cycle), optimizer), steps_per_call=1,
      evaluate=lambda: tfr.evaluate_elbo(model, batches),
      eval_images_per_call=TF_BATCHES * batch_size, sync=np.asarray,
      # No separate compile step: the first call's whole time is the price of tracing.
      compile_seconds=lambda first_call: first_call, device_peak_mib=device_peak_mib)


def keras_bench(batch_size: int, latent_dim: int, seed: int, precision: str = "float32",
                form: str = "scan", steps_per_chunk: int = 0) -> Bench:
  """The tutorial's model, loss and Adam on Keras 3 with the JAX backend (benchmarks.peers.keras_reference).

  form "scan": keras_reference's jitted stateless chunk of steps, compiled ahead of time (its
  compile_seconds). form "fit": Keras' fit(steps_per_execution=chunk) over FIT_EXECUTIONS chunks of
  numpy batches per call; its compile time is the first call's whole time, as TF's. Evaluation in
  both: the jitted stateless forward loss, one call per batch.
  """
  # Sets KERAS_BACKEND=jax before Keras loads (this process must not have loaded Keras yet).
  from benchmarks.peers import keras_reference as kr  # pylint: disable=import-outside-toplevel
  import jax  # pylint: disable=import-outside-toplevel
  import keras  # pylint: disable=import-outside-toplevel
  keras.utils.set_random_seed(seed)
  model, optimizer = kr.make_model_and_optimizer(latent_dim, get_config().learning_rate, precision)
  length, unroll = kr.chunk_plan(jax.default_backend(), steps_per_chunk)
  stateless = kr.Stateless(model, optimizer, unroll)
  x = random_batches(seed, length, batch_size).astype(np.float32)
  xs = jax.device_put(x)
  eval_state = stateless.initial_state()

  def evaluate():
    nonlocal eval_state
    losses = []
    for b in range(length):
      loss, eval_state = stateless.call(stateless.evaluate, eval_state, xs[b])
      losses.append(loss)
    return losses

  if form == "scan":
    state = stateless.initial_state()

    def train_call():
      nonlocal state  # donated by each call: only the newest state is alive
      state, losses = stateless.call(stateless.train_chunk, state, xs, 0, static=(length,))
      return losses

    steps_per_call = length
    cost = stateless.compiled(stateless.train_chunk, state, xs, 0, static=(length,)).cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    flops_per_step = cost.get("flops", 0.0) / length if cost else None
    compile_seconds = lambda first_call: stateless.compile_seconds
  elif form == "fit":
    model.compile(optimizer=optimizer, steps_per_execution=length)
    fit_x = np.concatenate([x.reshape(-1, *x.shape[2:])] * FIT_EXECUTIONS)

    def train_call():
      model.fit(fit_x, batch_size=batch_size, epochs=1, shuffle=False, verbose=0)
      return model.trainable_variables[0].value  # fit syncs the variables at its end

    steps_per_call = length * FIT_EXECUTIONS
    flops_per_step = None
    compile_seconds = lambda first_call: first_call
  else:
    raise UserError(f"--keras-form must be one of {', '.join(KERAS_FORMS)}, got {form!r}")

  def device_peak_mib():
    stats = jax.devices()[0].memory_stats()  # None on CPU
    return stats["peak_bytes_in_use"] / 2**20 if stats and "peak_bytes_in_use" in stats else None

  device = jax.devices()[0]
  return Bench(
      device=device.platform if device.platform == "cpu" else f"{device.platform}: {device.device_kind}",
      train=train_call, steps_per_call=steps_per_call, evaluate=evaluate,
      eval_images_per_call=length * batch_size, sync=jax.block_until_ready,
      compile_seconds=compile_seconds, device_peak_mib=device_peak_mib,
      flops_per_step=flops_per_step)


def time_calls(call: Callable[[], Any], sync: Callable[[Any], Any], count: int):
  """(seconds for `count` calls synced once at the end, list of each call's seconds synced after it)."""
  start = time.perf_counter()
  for _ in range(count - 1):
    call()
  sync(call())
  total = time.perf_counter() - start
  each = []
  for _ in range(count):
    start = time.perf_counter()
    sync(call())
    each.append(time.perf_counter() - start)
  return total, each


def measure(bench: Bench, batch_size: int, steps: int) -> dict:
  """The benchmark's numbers for `steps` training steps (rounded up to whole calls)."""
  start = time.perf_counter()
  bench.sync(bench.train())
  compile_seconds = bench.compile_seconds(time.perf_counter() - start)
  bench.sync(bench.train())  # warm-up
  bench.sync(bench.evaluate())  # JAX: compiles evaluate; both: warm-up
  calls = math.ceil(steps / bench.steps_per_call)
  total, each = time_calls(bench.train, bench.sync, calls)
  step_ms = np.asarray(each) * 1e3 / bench.steps_per_call
  eval_calls = math.ceil(calls * bench.steps_per_call * batch_size / bench.eval_images_per_call)
  eval_total, _ = time_calls(bench.evaluate, bench.sync, eval_calls)
  return {
      "device": bench.device,
      "batch_size": batch_size,
      "steps_timed": calls * bench.steps_per_call,
      "steps_per_call": bench.steps_per_call,
      "compile_seconds": compile_seconds,
      "images_per_sec": calls * bench.steps_per_call * batch_size / total,
      "step_ms_median": float(np.median(step_ms)),
      "step_ms_p90": float(np.percentile(step_ms, 90)),
      "eval_images_per_sec": eval_calls * bench.eval_images_per_call / eval_total,
      "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,  # KiB on Linux
      "device_peak_mib": bench.device_peak_mib(),
      "flops_per_image": bench.flops_per_step / batch_size if bench.flops_per_step else None,
  }


def emit(result: dict, out: str | None) -> None:
  """Prints the result as one JSON line, and writes it to `out` (a new file) too if given."""
  line = json.dumps(result)
  print(line)
  if out:
    with open(out, "x") as f:
      f.write(line + "\n")


def main(argv=None) -> int:
  d = get_config()
  p = cli.ArgumentParser(prog="python -m benchmarks.throughput", description=__doc__,
                         formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--framework", choices=FRAMEWORKS, required=True,
                 help="jax: the port's main job; tf: the TensorFlow tutorial; keras_jax: the "
                      "tutorial's Keras model on Keras 3 with the JAX backend")
  p.add_argument("--batch-size", type=int, default=d.batch_size)
  p.add_argument("--latent-dim", type=int, default=d.latent_dim)
  p.add_argument("--steps", type=int, default=500, help="training steps timed (whole calls)")
  p.add_argument("--seed", type=int, default=0)
  p.add_argument("--parallel", choices=("none", "sharded", "pmap"), default="none",
                 help="jax: data-parallel strategy of the main job (vae_jax.training.parallel)")
  p.add_argument("--devices", type=int,
                 help="jax: data-parallel over this many devices (simulated ones on a CPU host)")
  p.add_argument("--steps-per-chunk", type=int, default=0,
                 help="jax, keras_jax: steps per compiled chunk (0: the backend's default)")
  p.add_argument("--micro-batches", type=int, default=0,
                 help="jax: parts each step's batch is split into (0: vae_jax.training.train's default)")
  p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32",
                 help="jax: bfloat16 is mixed precision: float32 parameters, activations, loss and Adam; only the GEMMs take bfloat16 inputs, accumulating in float32")
  p.add_argument("--precision", choices=("float32", "mixed_bfloat16"), default="float32",
                 help="tf, keras_jax: Keras dtype policy (mixed_bfloat16: bfloat16 layers, float32 "
                      "weights, loss and Adam)")
  p.add_argument("--keras-form", choices=KERAS_FORMS, default="scan",
                 help="keras_jax: a jitted lax.scan of stateless steps (scan) or Keras' "
                      f"fit(steps_per_execution=chunk), {FIT_EXECUTIONS} chunks per call (fit)")
  p.add_argument("--out", help="write the result as JSON here too")
  args = p.parse_args(argv)
  for name in ("batch_size", "latent_dim", "steps"):
    if getattr(args, name) < 1:
      p.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
  if args.out and os.path.exists(args.out):
    p.error(f"--out {args.out} exists; choose a new file")
  if args.framework != "jax" and (args.parallel != "none" or args.devices or args.micro_batches
                                  or args.dtype != "float32"):
    p.error("--parallel, --devices, --micro-batches and --dtype are for --framework jax")
  if args.framework == "tf" and args.steps_per_chunk:
    p.error("--steps-per-chunk is for --framework jax and keras_jax")
  if args.framework == "jax" and args.precision != "float32":
    p.error("--precision is for --framework tf and keras_jax; jax takes --dtype")
  if args.framework != "keras_jax" and args.keras_form != "scan":
    p.error("--keras-form is for --framework keras_jax")
  result = {"framework": args.framework, "latent_dim": args.latent_dim,
            "precision": args.dtype if args.framework == "jax" else args.precision,
            "glibc_tunables": os.environ.get("GLIBC_TUNABLES", "")}  # vae_jax/training/hugepages.py
  try:
    if args.framework == "jax":
      result.update(parallel=args.parallel, devices=args.devices, micro_batches=args.micro_batches)
      bench = jax_bench(args.batch_size, args.latent_dim, args.seed, parallel=args.parallel,
                        devices=args.devices, steps_per_chunk=args.steps_per_chunk,
                        micro_batches=args.micro_batches, dtype=args.dtype)
    elif args.framework == "tf":
      bench = tf_bench(args.batch_size, args.latent_dim, args.seed, args.precision)
    else:
      result.update(keras_form=args.keras_form)
      bench = keras_bench(args.batch_size, args.latent_dim, args.seed, args.precision,
                          args.keras_form, args.steps_per_chunk)
  except UserError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  result.update(measure(bench, args.batch_size, args.steps))
  emit(result, args.out)
  return 0


if __name__ == "__main__":
  cli.start(lambda: cli.main(main))
