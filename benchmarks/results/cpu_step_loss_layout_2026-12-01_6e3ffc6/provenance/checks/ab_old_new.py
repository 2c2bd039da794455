"""In-process A/B of the training chunk: this checkout's kernels and loss vs a previous commit's.

  PYTHONPATH=. python ab_old_new.py ROUNDS OLD_CHECKOUT [float32|bfloat16]

'old' patches the previous checkout's vae_jax.kernels entry points and
losses.bernoulli_log_likelihood into this one before benchmarks.throughput.jax_bench compiles its
chunk (the main job's own, batch 100, latent 50); 'new' compiles this checkout's. Rounds alternate,
each timing 10 chunk calls per version.
"""
import importlib.util
import sys
import time

import numpy as np

from benchmarks import throughput
from vae_jax import kernels, losses

ENTRY = ("patch_conv", "phase_conv_transpose", "tap_matmul_conv_transpose", "dense")


def load(name, path):
  spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def main():
  rounds, old_root = int(sys.argv[1]), sys.argv[2]
  dtype = sys.argv[3] if len(sys.argv) > 3 else "float32"
  old_kernels = load("old_kernels", f"{old_root}/vae_jax/kernels.py")
  old_losses = load("old_losses", f"{old_root}/vae_jax/losses.py")
  versions = {
      "old": ({n: getattr(old_kernels, n) for n in ENTRY}, old_losses.bernoulli_log_likelihood),
      "new": ({n: getattr(kernels, n) for n in ENTRY}, losses.bernoulli_log_likelihood),
  }
  benches = {}
  for name, (entry, bll) in versions.items():  # patched while jax_bench traces and compiles
    for n, fn in entry.items():
      setattr(kernels, n, fn)
    losses.bernoulli_log_likelihood = bll
    benches[name] = throughput.jax_bench(100, 50, 0, dtype=dtype)
  ms = {name: [] for name in benches}
  loss = {}
  for r in range(rounds):
    for name in (list(benches) if r % 2 == 0 else list(benches)[::-1]):
      bench = benches[name]
      bench.sync(bench.train())
      start = time.perf_counter()
      for _ in range(10):
        out = bench.train()
      bench.sync(out)
      ms[name].append((time.perf_counter() - start) / (10 * bench.steps_per_call) * 1e3)
      sums = out[1]
      loss[name] = float(sums["loss"]) / float(sums["count"])
  length = benches["new"].steps_per_call
  print(f"dtype {dtype}, {rounds} rounds of 10 chunks x {length} steps, batch 100; step ms per round:")
  for name in benches:
    print(f"  {name}: median {np.median(ms[name]):.2f}  min {min(ms[name]):.2f}  "
          f"last chunk mean loss {loss[name]:.4f}  {[round(v, 2) for v in ms[name]]}")
  print(f"new/old speed (old median / new median): {np.median(ms['old']) / np.median(ms['new']):.3f}")


if __name__ == "__main__":
  main()
