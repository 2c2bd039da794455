"""Bits-back on the float network against the integer networks: rate, exactness and images/s.

    python -m benchmarks.codec_portable [--images N] [--rounds R] [--out results.json]

The shipped model (vae_jax/pretrained/cvae_mnist) codes the thresholded MNIST test set with
`bitsback.encode` (BB-ANS, k = 1) on each path, then `decode_chain` pops it back, rounds
alternating between the paths in one process (only their ratio means anything on a shared
machine). Rate: the payload's 32-bit words per pixel (what the file holds besides its header).
"""

import argparse
import importlib.metadata
import json
import platform
import time

import constriction
import jax
import numpy as np

from vae_jax import data, pretrained
from vae_jax.codec import bitsback
from vae_jax.codec.tables import ModelTables


def _round(tables: ModelTables, images: np.ndarray, settings: bitsback.Settings) -> dict:
  start = time.perf_counter()
  result = bitsback.encode(tables, images, settings)
  encode_s = time.perf_counter() - start
  seed = bitsback.seed_words(settings.seed_words)
  coder = constriction.stream.stack.AnsCoder(np.concatenate([seed[:result.omitted],
                                                             result.words]))
  start = time.perf_counter()
  decoded = bitsback.decode_chain(tables, coder, len(images), settings)
  decode_s = time.perf_counter() - start
  return {"bits_per_pixel": 32 * len(result.words) / images.size,
          "net_bits_per_image": float(result.bits.mean()),
          "initial_bits": result.initial_bits,
          "exact": bool(np.array_equal(decoded, images)),
          "encode_images_per_s": len(images) / encode_s,
          "decode_images_per_s": len(images) / decode_s}


def main(argv=None):
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--images", type=int, default=10000)
  parser.add_argument("--rounds", type=int, default=2)
  parser.add_argument("--out", default=None)
  args = parser.parse_args(argv)
  _, model, _ = pretrained.load()
  images = (data.load("idx:/work/shared/data/mnist").test_images[:args.images] >= 128)
  images = images.astype(np.uint8)
  settings = bitsback.Settings()
  paths = {"float": ModelTables(model, portable=False), "integer": ModelTables(model)}
  for tables in paths.values():  # compile every batch shape outside the timed rounds
    bitsback.encode(tables, images[:settings.max_batch * 40], settings)
  rounds = {name: [] for name in paths}
  for _ in range(args.rounds):
    for name, tables in paths.items():
      rounds[name].append(_round(tables, images, settings))
      print(name, json.dumps(rounds[name][-1]), flush=True)
  report = {"images": len(images), "machine": platform.processor() or platform.machine(),
            "cpus": jax.local_device_count("cpu"), "jax": jax.__version__,
            "numpy": np.__version__, "constriction": importlib.metadata.version("constriction"),
            "flax": importlib.metadata.version("flax"),
            "rounds": rounds}
  for name in paths:
    report[name] = {key: float(np.median([r[key] for r in rounds[name]]))
                    for key in rounds[name][0] if key != "exact"}
    report[name]["exact"] = all(r["exact"] for r in rounds[name])
  report["rate_ratio"] = report["integer"]["bits_per_pixel"] / report["float"]["bits_per_pixel"]
  print(json.dumps({k: report[k] for k in ("float", "integer", "rate_ratio")}, indent=1))
  if args.out:
    with open(args.out, "w") as f:
      json.dump(report, f, indent=1)


if __name__ == "__main__":
  main()
