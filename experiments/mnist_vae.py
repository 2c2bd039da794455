"""Trains the tutorial's convolutional VAE on binarized MNIST (or another 28x28 dataset).

    python -m experiments.mnist_vae --data idx:../shared/data/mnist --workdir runs/mnist

Defaults reproduce the TensorFlow tutorial (latent 50, batch 100, Adam 1e-4, 100 epochs; it
printed a test-set ELBO of -78.33). Other models, objectives and binarizations by name, e.g. the
IWAE paper's setting:

    python -m experiments.mnist_vae --model mlp --objective iwae --iw-samples 5 --binarize dynamic ...

and its whole protocol (--lr-schedule burda --epochs 3280 --batch-size 20), several seeds at once
into W/seed_K (--seeds 0,1,2 --workdir W): docs/iwae.md.

See docs/flags.md for every flag and the outputs written to --workdir.
"""

import argparse
import dataclasses
import importlib

from vae_jax import cli
from vae_jax.config import Config, get_config


def _sizes(text: str) -> tuple[int, ...]:
  try:
    return tuple(int(t) for t in text.split(","))
  except ValueError:
    raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def parse_args(argv=None) -> argparse.Namespace:
  d = get_config()
  p = cli.ArgumentParser(prog="python -m experiments.mnist_vae", description=__doc__,
                         formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--data", default=d.data, help="tfds:NAME | idx:DIR | mnist-5k | auto (default)")
  p.add_argument("--epochs", type=int, default=d.epochs)
  p.add_argument("--latent-dim", type=int, default=d.latent_dim)
  p.add_argument("--batch-size", type=int, default=d.batch_size, help="global batch size")
  p.add_argument("--learning-rate", type=float, default=None,
                 help=f"Adam's (default {d.learning_rate:g}; with --lr-schedule burda its fixed "
                      "base 1e-3)")
  p.add_argument("--lr-schedule", default=d.lr_schedule,
                 help="constant (default) | burda: the IWAE paper's 3,280 epochs, 3^i at "
                      "1e-3*10^(-i/7), plain Adam eps 1e-4 (vae_jax.training.schedules)")
  p.add_argument("--seed", type=int, default=None, help=f"default {d.seed}")
  p.add_argument("--seeds", type=_sizes, default=None, metavar="K,K,...",
                 help="train these seeds one after another into WORKDIR/seed_K (instead of --seed)")
  p.add_argument("--train-size", type=int, default=d.train_size,
                 help="use only the first N training examples")
  p.add_argument("--binarize", choices=("threshold", "dynamic"), default=d.binarize,
                 help="threshold: pixel >= 0.5 (the seed); dynamic: Bernoulli(intensity/255) "
                      "drawn each epoch, the test set drawn once")
  p.add_argument("--model", default=d.model,
                 help="cvae (default) | mlp | mlp_ae | conv_ae, or one registered by --import")
  p.add_argument("--hidden-sizes", type=_sizes, default=d.hidden_sizes,
                 help="mlp, mlp_ae: hidden layer widths, e.g. 200,200 (the decoder reversed)")
  p.add_argument("--activation", default=d.activation,
                 help="mlp, mlp_ae: tanh (default) | relu | softplus | elu")
  p.add_argument("--objective", default=d.objective,
                 help="elbo (default) | iwae for VAEs; bce | l2 | l1 for autoencoders; or one "
                      "registered by --import")
  p.add_argument("--kl", choices=("mc", "analytic"), default=d.kl,
                 help="elbo: one-sample Monte Carlo KL as the seed (mc) or the closed form")
  p.add_argument("--beta", type=float, default=d.beta, help="elbo, iwae: weight of the KL term")
  p.add_argument("--iw-samples", type=int, default=d.iw_samples,
                 help="iwae: importance samples per example")
  p.add_argument("--kl-warmup-epochs", type=int, default=d.kl_warmup_epochs,
                 help="elbo, iwae: KL weight rises linearly from 0 to --beta over N epochs")
  p.add_argument("--free-bits", type=float, default=d.free_bits,
                 help="elbo: nats per latent dimension below which its KL is not pushed down")
  p.add_argument("--denoise", type=float, default=d.denoise,
                 help="probability with which each input pixel is flipped during training "
                      "(target stays clean)")
  p.add_argument("--import", dest="imports", action="append", default=[], metavar="MODULE",
                 help="import MODULE first (repeatable), e.g. one that registers a model or "
                      "objective")
  p.add_argument("--loop", choices=("scan", "step"), default=d.loop,
                 help="scan: epochs as jitted lax.scan chunks; step: one jitted call per batch")
  p.add_argument("--steps-per-chunk", type=int, default=d.steps_per_chunk,
                 help="batches per jitted lax.scan call (0: 100 rolled; 10 unrolled for conv models on CPU)")
  p.add_argument("--micro-batches", type=int, default=d.micro_batches,
                 help="split each step's batch into this many parts for the gradient "
                      "(0: 2 on a single CPU device at batch >= 100, else 1)")
  p.add_argument("--parallel", choices=("auto", "none", "sharded", "pmap"), default=d.parallel)
  p.add_argument("--devices", type=int, default=d.devices,
                 help="data-parallel over this many devices (default: all visible)")
  p.add_argument("--conv-transpose", choices=("gemm", "xla"), default=d.conv_transpose,
                 help="gemm: every convolution as exact GEMMs (vae_jax.nn.models); xla: Flax's layers")
  p.add_argument("--dtype", choices=("float32", "bfloat16"), default=d.dtype,
                 help="compute dtype of the layers (parameters and loss stay float32)")
  p.add_argument("--workdir", default="runs/mnist_vae", help="outputs; never overwritten")
  p.add_argument("--resume", action="store_true", help="continue the run in --workdir")
  p.add_argument("--coordinator", help="HOST:PORT of process 0, for multi-host training")
  p.add_argument("--num-processes", type=int)
  p.add_argument("--process-id", type=int)
  args = p.parse_args(argv)
  if args.seeds is not None and args.seed is not None:
    p.error("--seed and --seeds exclude each other")
  for module in args.imports:
    try:
      importlib.import_module(module)
    except Exception as e:  # pylint: disable=broad-except
      p.exit(2, f"error: --import {module}: {type(e).__name__}: {e}\n")
  return args


def config_from_args(args: argparse.Namespace) -> Config:
  """The default Config with every field that has a flag of the same name set from it; a flag
  left unset (None) keeps the default, --learning-rate the schedule's own if it has one."""
  from vae_jax.training import schedules  # pylint: disable=import-outside-toplevel
  fields = {f.name for f in dataclasses.fields(Config)}
  values = {k: v for k, v in vars(args).items() if k in fields and v is not None}
  schedule = schedules.SCHEDULES.get(args.lr_schedule)
  if args.learning_rate is None and schedule and schedule.learning_rate_default is not None:
    values["learning_rate"] = schedule.learning_rate_default
  return dataclasses.replace(get_config(), **values)


def _run(args: argparse.Namespace) -> None:
  config = config_from_args(args)
  config.validate()  # an impossible value is one line before JAX's import (~1.5 s) starts
  from vae_jax.training import parallel, run  # pylint: disable=import-outside-toplevel
  parallel.initialize_distributed(args.coordinator, args.num_processes, args.process_id)
  if args.seeds is None:
    run.train_and_evaluate(config, args.workdir, resume=args.resume)
  else:
    from vae_jax.training import seeds  # pylint: disable=import-outside-toplevel
    seeds.train_seeds(config, args.workdir, args.seeds, resume=args.resume)


def main(argv=None) -> int:
  return cli.main(lambda: _run(parse_args(argv)), safe_points=True)


if __name__ == "__main__":
  cli.start(main, supervised=True)
