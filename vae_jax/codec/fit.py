"""A codec model fitted to the user's own images: the main training job, then a model folder.

`fit(spec, out_dir)` trains the tutorial's convolutional VAE with settings chosen for coding
(`coding_config`) by `vae_jax.training.run.train_and_evaluate` in the workdir `out_dir + ".run"`
(resumable with resume=True, like every run); the caller exports its newest checkpoint as a model
folder in the shipped format (`vae_jax.pretrained.export`, a floor this package does not import)
that `encode/decode --model` take.

Data: `idx:DIR` trains on its train split and reports the ELBO on its test split; any other
spelling (`png:DIR`, a PNG directory, `idx:FILE`) is written as an IDX dataset to
`out_dir + ".data"`, the last tenth held out as its test split (the held-out ELBO is the rate to
expect).
"""

import dataclasses
import os

import numpy as np

from vae_jax import data
from vae_jax.codec import images as images_lib
from vae_jax.config import Config
from vae_jax.errors import UserError
from vae_jax.training import run

HELD_OUT = 10  # 1/HELD_OUT of a user's image set is held out for the reported rate


def coding_config(data_spec: str, **overrides) -> Config:
  """The tutorial's model and optimizer; for the ELBO the closed-form KL (the same objective as
  the seed's, a lower-variance gradient); threshold binarization, which is what the codec codes."""
  config = dataclasses.replace(Config(data=data_spec, binarize="threshold"), **overrides)
  if config.objective == "elbo" and "kl" not in overrides:
    config = dataclasses.replace(config, kl="analytic")
  return config


def _dataset_spec(spec: str, directory: str, resume: bool) -> str:
  if spec.startswith("idx:") and os.path.isdir(spec[4:]):
    return "idx:" + os.path.abspath(spec[4:])
  if resume and os.path.isdir(directory):
    return "idx:" + directory  # the split written when the run began
  x = images_lib.load(spec)
  if x.shape[1:3] != data.IMAGE_HW:
    raise UserError(f"{spec}: images are {x.shape[1]}x{x.shape[2]}; fit trains the "
                    f"{data.IMAGE_HW[0]}x{data.IMAGE_HW[1]} convolutional VAE (the context coder "
                    "codes any size without a fitted model)")
  if len(x) < 2:
    raise UserError(f"{spec}: fit needs at least 2 images (one held out), got {len(x)}")
  held = max(1, len(x) // HELD_OUT)
  if os.path.exists(directory):
    raise UserError(f"{directory} exists (an earlier fit's data): pass --resume or remove it")
  x255 = x[..., 0] * np.uint8(255)
  return "idx:" + data.write_idx_dir(directory, x255[:-held], x255[-held:])


def workdir_for(out_dir: str) -> str:
  return os.path.abspath(out_dir).rstrip(os.sep) + ".run"


def fit(spec: str, out_dir: str, resume: bool = False, **overrides) -> str:
  """Trains a codec model for the images of `spec`; returns its workdir, to export to `out_dir`."""
  if os.path.exists(out_dir) and not (os.path.isdir(out_dir) and not os.listdir(out_dir)):
    raise UserError(f"{out_dir} exists; choose a new --out for the model folder")
  workdir = workdir_for(out_dir)
  if not resume and os.path.exists(workdir) and os.listdir(workdir):
    raise UserError(f"{workdir} holds an earlier fit; pass --resume to continue it")
  config = coding_config(_dataset_spec(spec, workdir[:-len(".run")] + ".data", resume),
                         **overrides)
  config.validate()
  run.train_and_evaluate(config, workdir, resume=resume)
  return workdir
