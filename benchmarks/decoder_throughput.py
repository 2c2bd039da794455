"""Latent samples per second of the seed CVAE's decoder, forward only: the cost of the likelihood.

  python -m benchmarks.decoder_throughput --chunks 500 1000 --reps 10 --out decoder.json

Two measurements per chunk size S (latent 50, float32, freshly initialized weights):
`decode`: the jitted decoder on S latent vectors (logits out); `log_weights`: the evaluator's own
jitted call (vae_jax.research.likelihood.log_importance_weights) on --images images with k = S samples
each, in one chunk: noise, decoder, cross-entropy and the importance weights. Compilation is timed
apart; each call is synced (block_until_ready); median and 10th/90th percentiles over --reps calls
after one warm-up. FLOPs per sample from XLA's cost analysis of the compiled decoder.
"""

import argparse
import json
import os
import platform
import subprocess
import sys
import time

import numpy as np

from vae_jax import cli
from vae_jax.machine import cpu_name

LATENT_DIM = 50  # the seed's


def _machine() -> dict:
  commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                          text=True, check=False).stdout.strip() or None
  return {"cpu": cpu_name(), "cpu_count": os.cpu_count(), "load_average": os.getloadavg(),
          "python": platform.python_version(), "commit": commit}


def _time_calls(fn, reps: int) -> dict:
  start = time.perf_counter()
  fn().block_until_ready()
  first = time.perf_counter() - start
  fn().block_until_ready()  # warm-up
  times = []
  for _ in range(reps):
    start = time.perf_counter()
    fn().block_until_ready()
    times.append(time.perf_counter() - start)
  return {"first_call_seconds": first, "median_seconds": float(np.median(times)),
          "p10_seconds": float(np.percentile(times, 10)),
          "p90_seconds": float(np.percentile(times, 90))}


def measure(chunk: int, images: int, reps: int, conv_transpose: str, dtype: str) -> list[dict]:
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  from flax import nnx  # pylint: disable=import-outside-toplevel
  from vae_jax.research import likelihood  # pylint: disable=import-outside-toplevel
  from vae_jax.nn.models import CVAE  # pylint: disable=import-outside-toplevel
  model = CVAE(LATENT_DIM, rngs=nnx.Rngs(params=0), conv_transpose=conv_transpose,
               dtype=jnp.bfloat16 if dtype == "bfloat16" else None)
  graphdef, state = nnx.split(model)
  rows = []

  decode = jax.jit(lambda s, z: nnx.merge(graphdef, s).decode(z))
  z = jax.random.normal(jax.random.key(1), (chunk, LATENT_DIM))
  start = time.perf_counter()
  compiled = decode.lower(state, z).compile()
  compile_seconds = time.perf_counter() - start
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  flops = (cost or {}).get("flops")
  timing = _time_calls(lambda: compiled(state, z), reps)
  rows.append({"what": "decode", "chunk": chunk, "compile_seconds": compile_seconds, **timing,
               "latent_samples_per_sec": chunk / timing["median_seconds"],
               "flops_per_sample": flops / chunk if flops else None})

  x = (jax.random.uniform(jax.random.key(2), (images, 28, 28, 1)) < 0.2).astype(jnp.float32)
  key = jax.random.key(3)
  start = time.perf_counter()
  jax.block_until_ready(likelihood.log_importance_weights(model, x, key, chunk, chunk))
  first = time.perf_counter() - start
  timing = _time_calls(lambda: likelihood.log_importance_weights(model, x, key, chunk, chunk),
                       reps)
  timing["first_call_seconds"] = first
  rows.append({"what": "log_weights", "chunk": chunk, "images": images, **timing,
               "latent_samples_per_sec": images * chunk / timing["median_seconds"]})
  return rows


def main(argv=None) -> int:
  p = cli.ArgumentParser(prog="python -m benchmarks.decoder_throughput", description=__doc__,
                         formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--chunks", type=int, nargs="+", default=[500, 1000],
                 help="latent samples per decoder call")
  p.add_argument("--images", type=int, default=1, help="images per log_weights call")
  p.add_argument("--reps", type=int, default=10)
  p.add_argument("--conv-transpose", choices=("gemm", "xla"), default="gemm")
  p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
  p.add_argument("--out", help="write the JSON report here")
  args = p.parse_args(argv)
  if min(args.chunks) < 1 or args.images < 1 or args.reps < 1:
    print("error: --chunks, --images and --reps must be >= 1", file=sys.stderr)
    return 2
  import flax  # pylint: disable=import-outside-toplevel
  import jax  # pylint: disable=import-outside-toplevel
  rows = []
  for chunk in args.chunks:
    for row in measure(chunk, args.images, args.reps, args.conv_transpose, args.dtype):
      rows.append(row)
      print(f"{row['what']:12s} chunk {chunk:6d}  {row['latent_samples_per_sec']:12,.0f} latent "
            f"samples/s  (median {1e3 * row['median_seconds']:.1f} ms, p10-p90 "
            f"{1e3 * row['p10_seconds']:.1f}-{1e3 * row['p90_seconds']:.1f} ms)")
  device = jax.devices()[0]
  report = {"command": " ".join(["python -m benchmarks.decoder_throughput", *sys.argv[1:]]),
            "latent_dim": LATENT_DIM, "conv_transpose": args.conv_transpose, "dtype": args.dtype,
            "rows": rows, "machine": _machine(),
            "versions": {"jax": jax.__version__, "flax": flax.__version__,
                         "backend": jax.default_backend(),
                         "device": getattr(device, "device_kind", str(device))}}
  if args.out:
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
      json.dump(report, f, indent=2)
  return 0


if __name__ == "__main__":
  cli.start(lambda: cli.main(main))
