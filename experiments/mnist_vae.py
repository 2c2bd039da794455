"""Trains the tutorial's convolutional VAE on binarized MNIST (or another 28x28 dataset).

    python -m experiments.mnist_vae --data idx:../shared/data/mnist --workdir runs/mnist

Defaults reproduce the TensorFlow tutorial (latent 50, batch 100, Adam 1e-4, 100 epochs; it
printed a test-set ELBO of -78.33). See README.md for the outputs written to --workdir.
"""

import argparse
import dataclasses
import os
import sys
import warnings

from vae_jax import hugepages, interrupts
from vae_jax.config import Config, get_config
from vae_jax.errors import UserError, flush_std_streams, report


def parse_args(argv=None) -> argparse.Namespace:
  d = get_config()
  p = argparse.ArgumentParser(prog="python -m experiments.mnist_vae", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--data", default=d.data, help="tfds:NAME | idx:DIR | mnist-5k | auto (default)")
  p.add_argument("--epochs", type=int, default=d.epochs)
  p.add_argument("--latent-dim", type=int, default=d.latent_dim)
  p.add_argument("--batch-size", type=int, default=d.batch_size, help="global batch size")
  p.add_argument("--learning-rate", type=float, default=d.learning_rate)
  p.add_argument("--seed", type=int, default=d.seed)
  p.add_argument("--train-size", type=int, default=d.train_size,
                 help="use only the first N training examples")
  p.add_argument("--kl", choices=("mc", "analytic"), default=d.kl,
                 help="one-sample Monte Carlo KL as the seed (mc) or the closed form")
  p.add_argument("--loop", choices=("scan", "step"), default=d.loop,
                 help="scan: epochs as jitted lax.scan chunks; step: one jitted call per batch")
  p.add_argument("--steps-per-chunk", type=int, default=d.steps_per_chunk,
                 help="batches per jitted lax.scan call (0: 10 unrolled on CPU, 100 elsewhere)")
  p.add_argument("--micro-batches", type=int, default=d.micro_batches,
                 help="split each step's batch into this many parts for the gradient "
                      "(0: 2 on a single CPU device, else 1)")
  p.add_argument("--parallel", choices=("auto", "none", "sharded", "pmap"), default=d.parallel)
  p.add_argument("--devices", type=int, default=d.devices,
                 help="data-parallel over this many devices (default: all visible)")
  p.add_argument("--conv-transpose", choices=("gemm", "xla"), default=d.conv_transpose,
                 help="gemm: every convolution as exact GEMMs (vae_jax.models); xla: Flax's layers")
  p.add_argument("--dtype", choices=("float32", "bfloat16"), default=d.dtype,
                 help="compute dtype of the layers (parameters and loss stay float32)")
  p.add_argument("--workdir", default="runs/mnist_vae", help="outputs; never overwritten")
  p.add_argument("--resume", action="store_true", help="continue the run in --workdir")
  p.add_argument("--coordinator", help="HOST:PORT of process 0, for multi-host training")
  p.add_argument("--num-processes", type=int)
  p.add_argument("--process-id", type=int)
  return p.parse_args(argv)


def main(argv=None) -> int:
  interrupts.install()  # first: Ctrl-C at any point asks the run to stop where nothing is lost
  args = parse_args(argv)
  config = dataclasses.replace(
      get_config(), data=args.data, epochs=args.epochs, latent_dim=args.latent_dim,
      batch_size=args.batch_size, learning_rate=args.learning_rate, seed=args.seed,
      train_size=args.train_size, kl=args.kl, loop=args.loop, parallel=args.parallel,
      devices=args.devices, steps_per_chunk=args.steps_per_chunk,
      micro_batches=args.micro_batches,
      conv_transpose=args.conv_transpose, dtype=args.dtype)
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # tfds imports TensorFlow
  warnings.formatwarning = lambda message, *_, **__: f"warning: {message}\n"
  try:
    from vae_jax import parallel, run  # pylint: disable=import-outside-toplevel
    parallel.initialize_distributed(args.coordinator, args.num_processes, args.process_id)
    run.train_and_evaluate(config, args.workdir, resume=args.resume)
  except UserError as e:
    report(f"error: {e}")
    return 2
  except interrupts.Interrupted as e:
    report(str(e))
    return e.exit_code
  except OSError as e:  # an I/O failure no narrower handler named
    from vae_jax.workdir import reason  # pylint: disable=import-outside-toplevel
    report(f"error: {e.filename}: {reason(e)}" if e.filename else f"error: {reason(e)}")
    return 2
  return 0


if __name__ == "__main__":
  hugepages.relaunch()  # first: glibc reads GLIBC_TUNABLES at start
  sys.exit(flush_std_streams(main()))
