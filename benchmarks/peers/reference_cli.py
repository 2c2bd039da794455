"""What the TensorFlow and Keras-on-JAX references share: their data and their command line.

Imports neither TensorFlow nor Keras, so each reference loads only its own framework.
"""

import argparse
import os

import numpy as np

from vae_jax import cli
from vae_jax import data as data_lib
from vae_jax.config import get_config
from vae_jax.errors import UserError

PRECISIONS = ("float32", "mixed_bfloat16")  # Keras dtype policies


def load_binarized(spec, train_size):
  """(train, test) float32 {0, 1} images of `--data spec`, exactly the pixels the JAX main job trains on."""
  dataset = data_lib.load(spec).take_train(train_size)
  return (data_lib.binarize(dataset.train_images).astype(np.float32),
          data_lib.binarize(dataset.test_images).astype(np.float32))


def run_parser(prog: str, description: str) -> argparse.ArgumentParser:
  """The flags of a reference run, with the main job's defaults, so every side trains the same run."""
  d = get_config()
  parser = cli.ArgumentParser(prog=prog, description=description)
  parser.add_argument("--data", default=d.data, help="tfds:NAME | idx:DIR | mnist-5k | auto")
  parser.add_argument("--epochs", type=int, default=d.epochs)
  parser.add_argument("--train-size", type=int, default=d.train_size,
                      help="use only the first N training examples")
  parser.add_argument("--batch-size", type=int, default=d.batch_size)
  parser.add_argument("--latent-dim", type=int, default=d.latent_dim)
  parser.add_argument("--learning-rate", type=float, default=d.learning_rate)
  parser.add_argument("--seed", type=int, default=d.seed)
  parser.add_argument("--precision", choices=PRECISIONS, default="float32",
                      help="Keras dtype policy (mixed_bfloat16: bfloat16 layers, float32 weights and loss)")
  parser.add_argument("--out", help="JSONL file, one row per epoch (the main job's metrics.jsonl keys)")
  return parser


def check_run_args(args) -> None:
  """Raises UserError for the shared flags' impossible values or an existing --out."""
  for name in ("epochs", "batch_size", "latent_dim"):
    if getattr(args, name) < 1:
      raise UserError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
  if args.out and os.path.exists(args.out):
    raise UserError(f"--out {args.out} exists; choose a new file")
