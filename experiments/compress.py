"""Compresses binary images with a trained VAE: lossless bits-back coding, or lossy.

    python -m experiments.compress encode --model pretrained --data idx:../shared/data/mnist --out test.vjz
    python -m experiments.compress decode test.vjz --model pretrained --out decoded/
    python -m experiments.compress bench --model pretrained --data idx:../shared/data/mnist --out DIR
    python -m experiments.compress export --workdir runs/tutorial --out vae_jax/pretrained/cvae_mnist
    python -m experiments.compress fit --data png:my_scans/ --out my_model

--model is a run's workdir (its newest checkpoint), a model folder (`fit`'s, `export`'s),
`pretrained:NAME` (a model shipped in the package) or `pretrained`: the context model
`cvae_context_mnist` (the shortest lossless files on digits), the tutorial model `cvae_mnist` with
--lossy, and on decode whichever shipped model wrote the file. Images are thresholded at 0.5; each is
coded by the shortest of VAE bits-back, a context coder and raw bits. See docs/compression.md.
"""

import argparse
import os
import shlex
import sys

from vae_jax import cli, interrupts

STOPPED = "interrupted: nothing was written; the same command again starts over"


def parse_args(argv=None) -> argparse.Namespace:
  p = cli.ArgumentParser(prog="python -m experiments.compress", description=__doc__,
                         formatter_class=argparse.RawDescriptionHelpFormatter)
  sub = p.add_subparsers(dest="command", required=True)
  model_help = ("a run's workdir, a model folder, 'pretrained:NAME' or 'pretrained' (the shipped "
                "context model; the tutorial model with --lossy; on decode, the file's)")
  data_help = ("idx:DIR (a dataset's IDX files), idx:FILE (one images IDX file), png:DIR or a "
               "directory of PNGs of one size (the VAE codes 28x28, the context coder any), or "
               "tfds:NAME / mnist-5k")

  enc = sub.add_parser("encode", help="images -> compressed file")
  enc.add_argument("--model", required=True, help=model_help)
  enc.add_argument("--data", required=True, help=data_help)
  enc.add_argument("--split", default="test", choices=("train", "test"),
                   help="which split of a dataset (default test)")
  enc.add_argument("--count", type=int, help="only the first N images")
  enc.add_argument("--out", required=True, help="the compressed file (never overwritten)")
  enc.add_argument("--lossy", action="store_true",
                   help="code only the quantized posterior mean (decodes to the most probable image)")
  enc.add_argument("--step", type=float, default=1.0,
                   help="--lossy quantization step, in units of each latent dimension's average "
                        "posterior standard deviation (default 1)")
  enc.add_argument("--samples", type=int, default=1,
                   help="latents per image: importance-sampled bits-back (BB-IS) when > 1, a rate "
                        "nearer the likelihood at k model calls per image (default 1)")
  enc.add_argument("--quiet", action="store_true", help="no progress bar")

  dec = sub.add_parser("decode", help="compressed file -> IDX images and a preview PNG")
  dec.add_argument("file")
  dec.add_argument("--model", required=True, help=model_help)
  dec.add_argument("--out", required=True, help="new directory for images-idx3-ubyte.gz, preview.png")
  dec.add_argument("--quiet", action="store_true", help="no progress bar")

  bench = sub.add_parser("bench", help="bits-back vs classic codecs, and rate-distortion")
  bench.add_argument("--model", required=True, help=model_help)
  bench.add_argument("--data", required=True, action="append",
                     help=data_help + "; repeat for more datasets (the first gets the lossy curve)")
  bench.add_argument("--count", type=int, help="only the first N test images of each")
  bench.add_argument("--steps", type=float, nargs="+", help="lossy steps")
  bench.add_argument("--pca-steps", type=float, nargs="+", help="PCA quantization steps")
  bench.add_argument("--samples", type=int, nargs="+", default=None,
                     help="BB-IS sample counts for the rate-against-k table (default 1 4 16 64)")
  bench.add_argument("--samples-count", type=int, default=1000,
                     help="images of the first dataset in the rate-against-k table (default 1000)")
  bench.add_argument("--out", required=True, help="new directory for report.md, report.json, rd.png")

  fit = sub.add_parser("fit", help="train a codec model for your images -> a model folder")
  fit.add_argument("--data", required=True,
                   help="idx:DIR (its train split; its test split gives the held-out rate), or "
                        "png:DIR / idx:FILE (28x28; the last tenth held out)")
  fit.add_argument("--out", required=True, help="the new model folder (its run: OUT.run)")
  fit.add_argument("--resume", action="store_true", help="continue the fit's run in OUT.run")
  fit.add_argument("--model", default="cvae", choices=("cvae", "cvae_context"),
                   help="cvae (the tutorial's) or cvae_context (also a learned logit per "
                        "pixel's causal context: better rates, pixel-by-pixel decoding)")
  fit.add_argument("--epochs", type=int, default=100)
  fit.add_argument("--batch-size", type=int, default=100)
  fit.add_argument("--latent-dim", type=int, default=50)
  fit.add_argument("--learning-rate", type=float, default=1e-4)
  fit.add_argument("--objective", default="elbo", help="elbo (default) or iwae")
  fit.add_argument("--iw-samples", type=int, default=1, help="iwae: importance samples")
  fit.add_argument("--seed", type=int, default=0)

  exp = sub.add_parser("export", help="a run's newest checkpoint -> a model folder for the package")
  exp.add_argument("--workdir", required=True)
  exp.add_argument("--out", required=True)
  exp.add_argument("--train-command", default="python -m experiments.mnist_vae",
                   help="the command that trained the run, for the folder's README")
  return p.parse_args(argv)


def _encode(args) -> None:
  from vae_jax import pretrained  # pylint: disable=import-outside-toplevel
  from vae_jax.codec import files, images  # pylint: disable=import-outside-toplevel
  images.check_new_output(args.out)
  x = images.load(args.data, args.split, args.count)
  config, model, _ = pretrained.resolve(args.model, lossy=args.lossy)
  codec = files.Codec(model, config)
  if args.lossy:
    raw, report, _, _ = codec.encode_lossy(x, args.step, show_progress=not args.quiet)
  else:
    raw, report = codec.encode_lossless(x, show_progress=not args.quiet, samples=args.samples)
  interrupts.stop(STOPPED)  # a signal during the lossy pass, which has no safe point inside
  images.write_file(args.out, raw)
  print(report.summary("encoded"))


def _decode(args) -> None:
  from vae_jax.codec import files, images  # pylint: disable=import-outside-toplevel
  from vae_jax.errors import UserError  # pylint: disable=import-outside-toplevel
  images.check_new_output(args.out)
  try:
    with open(args.file, "rb") as f:
      raw = f.read()
  except OSError as e:
    raise UserError(f"{args.file}: cannot read ({e.strerror})") from None
  box = files.check(raw, args.file)  # damage and impossible headers, before the model loads
  codec = _codec_for(args.model, box.fingerprint)
  decoded, report = codec.decode(raw, args.file, show_progress=not args.quiet)
  interrupts.stop(STOPPED)
  images.write_decoded(args.out, decoded)
  print(report.summary("decoded"))


def _codec_for(spec: str, file_fingerprint: bytes):
  """The codec of --model; for plain `pretrained`, of the shipped model that wrote the file
  (whichever has its fingerprint; else the default, whose codec then refuses the file)."""
  from vae_jax import pretrained  # pylint: disable=import-outside-toplevel
  from vae_jax.codec import files  # pylint: disable=import-outside-toplevel
  if spec != "pretrained":
    config, model, _ = pretrained.resolve(spec)
    return files.Codec(model, config)
  names = [pretrained.DEFAULT, pretrained.LOSSY]
  names += [n for n in pretrained.available() if n not in names]
  first = None
  for name in names:
    config, model, _ = pretrained.load(name)
    codec = files.Codec(model, config)
    if codec.fingerprint == file_fingerprint:
      return codec
    first = first or codec
  return first


def _bench(args) -> None:
  from vae_jax import pretrained  # pylint: disable=import-outside-toplevel
  from vae_jax.codec import bench, images  # pylint: disable=import-outside-toplevel
  images.check_new_output(args.out)
  config, model, metrics = pretrained.resolve(args.model)
  os.makedirs(args.out, exist_ok=True)
  command = "python -m experiments.compress " + shlex.join(sys.argv[1:])
  report = bench.run(args.model, config, model, metrics, args.data, args.out, args.count,
                     args.steps or bench.DEFAULT_STEPS, args.pca_steps or bench.DEFAULT_PCA_STEPS,
                     command, args.samples or bench.DEFAULT_KS, args.samples_count,
                     lambda x, k: _negative_iwae(model, x, k))
  for entry in report["datasets"]:
    bb = entry["bits_back"]
    print(f"{entry['data']}: {entry['images']} images, bits-back {bb['bits_per_pixel']:.4f} "
          f"bits/pixel (exact {bb['exact']}), encode {bb['encode_images_per_sec']:.0f} images/s, "
          f"decode {bb['decode_images_per_sec']:.0f} images/s")
  print(f"wrote {os.path.join(args.out, 'report.md')}")


def _negative_iwae(model, images01, k: int, batch: int = 100) -> float:
  """Mean -log p(x) in nats by the IWAE-k estimate of the float model (fixed key)."""
  import jax  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  from vae_jax.research import likelihood  # pylint: disable=import-outside-toplevel
  values = [np.asarray(likelihood.iwae_log_likelihood(
      model, images01[s:s + batch].astype(np.float32), jax.random.key(0), k, min(k, 64)))
            for s in range(0, len(images01), batch)]
  return -float(np.concatenate(values).mean())


def _fit(args) -> None:
  from vae_jax import pretrained  # pylint: disable=import-outside-toplevel
  from vae_jax.codec import fit  # pylint: disable=import-outside-toplevel
  workdir = fit.fit(args.data, args.out, args.resume, model=args.model, epochs=args.epochs,
                    batch_size=args.batch_size, latent_dim=args.latent_dim,
                    learning_rate=args.learning_rate, objective=args.objective,
                    iw_samples=args.iw_samples, seed=args.seed)
  command = "python -m experiments.compress " + shlex.join(
      ["fit", "--data", args.data, "--out", args.out, "--model", args.model,
       "--epochs", str(args.epochs),
       "--batch-size", str(args.batch_size), "--latent-dim", str(args.latent_dim),
       "--learning-rate", str(args.learning_rate), "--objective", args.objective,
       "--iw-samples", str(args.iw_samples), "--seed", str(args.seed)])
  print(f"wrote {pretrained.export(workdir, args.out, command)} (its run: {workdir})")


def _export(args) -> None:
  from vae_jax import pretrained  # pylint: disable=import-outside-toplevel
  print(f"wrote {pretrained.export(args.workdir, args.out, args.train_command)}")


def _run(args: argparse.Namespace) -> None:
  {"encode": _encode, "decode": _decode, "bench": _bench, "export": _export,
   "fit": _fit}[args.command](args)


def main(argv=None) -> int:
  return cli.main(lambda: _run(parse_args(argv)), safe_points=True,
                  hint="nothing unfinished was written")


if __name__ == "__main__":
  cli.start(main)
