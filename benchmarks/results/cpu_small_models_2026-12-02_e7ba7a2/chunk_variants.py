import dataclasses, time, sys
import jax, jax.numpy as jnp, numpy as np
from vae_jax.config import get_config
from vae_jax.training import parallel, train
from benchmarks.throughput import random_batches
B = int(sys.argv[1]) if len(sys.argv) > 1 else 20
obj = sys.argv[2] if len(sys.argv) > 2 else "elbo"
k = int(sys.argv[3]) if len(sys.argv) > 3 else 1
variants = [(10, True, 0), (10, True, 1), (100, False, 1), (100, 10, 1), (500, False, 1), (500, 5, 1)]
strategy = parallel.make_strategy("none")
benches = []
for length, unroll, mb in variants:
  c = dataclasses.replace(get_config(), model="mlp", batch_size=B, binarize="dynamic", objective=obj,
                          iw_samples=k, micro_batches=mb, parallel="none")
  gd, st = train.init_state(c)
  steps = train.Steps(gd, c, strategy)
  x = random_batches(0, length, B)
  xs, m = strategy.put_batches(x, np.ones(x.shape[:2], np.float32))
  ch = steps.chunk(length, unroll)
  st = strategy.put_state(st)
  keys = train.run_keys(0)
  box = [st]
  def call(ch=ch, steps=steps, xs=xs, m=m, box=box, keys=keys):
    box[0], s, _ = steps.call(ch, box[0], xs, m, keys.noise, 0)
    return s
  t = time.perf_counter(); jax.block_until_ready(call()); ct = time.perf_counter() - t
  benches.append((f"len{length} unroll{unroll} mb{mb}", call, length, ct))
res = {n: [] for n, *_ in benches}
for r in range(5):
  for n, call, length, _ in benches:
    calls = max(1, 2000 // length)
    jax.block_until_ready(call())
    t = time.perf_counter()
    for _ in range(calls - 1): call()
    jax.block_until_ready(call())
    res[n].append(calls * length * B / (time.perf_counter() - t))
for n, call, length, ct in benches:
  print(f"{n:28s} compile {ct:5.1f}s  img/s median {np.median(res[n]):8.0f}  max {max(res[n]):8.0f}")
