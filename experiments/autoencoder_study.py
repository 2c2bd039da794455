"""The article's autoencoder study in one command: bottleneck size, loss choice, creativity, denoising.

    python -m experiments.autoencoder_study --data idx:../shared/data/mnist --out DIR

trains conv_ae, mlp_ae (plain autoencoders, BCE) and cvae, mlp (VAEs, ELBO) at latent sizes
2..50, conv_ae with l2 and l1 as well, and conv_ae and cvae on inputs with flipped pixels, each
run in DIR/runs/<name>/ (a complete run is reused, an interrupted one resumed); trains the
sample-quality classifier once into DIR/classifier/; and writes DIR/report.md, DIR/report.json and
DIR/pictures/. Defaults: every training digit, 10 epochs per run (32 runs; about an hour of
training on a quiet 2-core CPU); `--quick` is a minutes-long preset for tests (latent sizes 2
and 4, one epoch, 1,000 samples per sampler).
"""

import argparse
import dataclasses
import os
import sys

from vae_jax import cli
from vae_jax.errors import UserError
from vae_jax.study.config import StudyConfig, quick


def _ints(text: str) -> tuple[int, ...]:
  try:
    return tuple(int(t) for t in text.split(",") if t.strip())
  except ValueError:
    raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


def _floats(text: str) -> tuple[float, ...]:
  try:
    return tuple(float(t) for t in text.split(",") if t.strip())
  except ValueError:
    raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def _names(text: str) -> tuple[str, ...]:
  return tuple(t.strip() for t in text.split(",") if t.strip())


FLAGS = {  # flag: (StudyConfig field, parser, help)
    "--data": ("data", str, "tfds:NAME | idx:DIR | mnist-5k | auto"),
    "--models": ("models", _names, "comma-separated models of the registry"),
    "--latent-sizes": ("latent_sizes", _ints, "comma-separated bottleneck sizes"),
    "--epochs": ("epochs", int, "epochs of every run"),
    "--train-size": ("train_size", int, "use only the first N training digits"),
    "--batch-size": ("batch_size", int, "batch of every run"),
    "--learning-rate": ("learning_rate", float, "Adam's learning rate of every run"),
    "--seed": ("seed", int, "seed of every run, sampler and noise draw"),
    "--focus-latent": ("focus_latent", int,
                       "latent size of the loss-choice, denoising and creativity parts"),
    "--loss-model": ("loss_model", str, "the model trained with each --losses"),
    "--losses": ("losses", _names, "reconstruction losses compared"),
    "--denoise-models": ("denoise_models", _names, "models trained to denoise"),
    "--noise-levels": ("noise_levels", _floats, "probabilities with which each input pixel is flipped"),
    "--num-samples": ("num_samples", int, "images per sampler for FCD and the MNIST score"),
    "--classifier-epochs": ("classifier_epochs", int, "epochs of the sample-quality classifier"),
}


def parse_args(argv=None) -> argparse.Namespace:
  defaults = StudyConfig()
  p = cli.ArgumentParser(prog="python -m experiments.autoencoder_study", description=__doc__,
                         formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--out", required=True, help="the study's directory (runs are reused from it)")
  p.add_argument("--quick", action="store_true",
                 help="tiny preset for tests: latent sizes 2,4, 1 epoch, 1,000 samples")
  for flag, (field, kind, help_text) in FLAGS.items():
    default = getattr(defaults, field)
    shown = ",".join(map(str, default)) if isinstance(default, tuple) else default
    p.add_argument(flag, type=kind, default=None, help=f"{help_text} (default {shown})")
  return p.parse_args(argv)


def study_config(args: argparse.Namespace):
  """StudyConfig from the flags: the defaults (or --quick's), overridden by every flag given."""
  base = quick() if args.quick else StudyConfig()
  given = {field: getattr(args, flag[2:].replace("-", "_")) for flag, (field, _, _) in FLAGS.items()}
  return dataclasses.replace(base, **{k: v for k, v in given.items() if v is not None})


def _commit() -> str | None:
  """The source tree's git commit (with '+changes' when it differs from it), None outside git."""
  import subprocess  # pylint: disable=import-outside-toplevel
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  try:
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True,
                          text=True, check=True).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root,
                           capture_output=True, text=True, check=True).stdout.strip()
  except (OSError, subprocess.CalledProcessError):
    return None
  return head + ("+changes" if dirty else "")


def _run(args: argparse.Namespace) -> None:
  if os.path.exists(args.out) and not os.path.isdir(args.out):
    raise UserError(f"{args.out} is a file; --out names the study's directory")
  config = study_config(args)
  config.validate()  # an impossible setting is one line before JAX's import (~1.5 s) starts
  from vae_jax.study import runner as study, report as study_report  # pylint: disable=import-outside-toplevel
  results = study.run_study(config, args.out)
  results["command"] = " ".join(["python -m experiments.autoencoder_study", *sys.argv[1:]])
  results["commit"] = _commit()
  study_report.write_report(results, args.out)
  print(f"wrote {os.path.join(args.out, 'report.md')}")


def main(argv=None) -> int:
  return cli.main(lambda: _run(parse_args(argv)), safe_points=True,
                  hint="the same command again continues")


if __name__ == "__main__":
  cli.start(main)
