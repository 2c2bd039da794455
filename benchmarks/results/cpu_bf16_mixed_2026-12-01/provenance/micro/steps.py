"""Median ms of the jitted train step (batch 100), float32 vs bfloat16 mixed (two kernel-gradient forms), alternating."""
import dataclasses, time, jax, jax.numpy as jnp, numpy as np
from vae_jax import train, kernels
from vae_jax.config import Config
orig = kernels._rows_contracted
def nn_form(a, b, g=None):
  if g is None: return orig(a, b, g)
  return jnp.dot(kernels._in(a, g).T, kernels._in(b, g), preferred_element_type=jnp.float32)
x = jnp.asarray(np.random.default_rng(0).integers(0, 2, (100, 28, 28, 1)), jnp.uint8); m = jnp.ones((100,))
steps = {}
for name, dtype, rc in (("float32", "float32", orig), ("bf16 TN", "bfloat16", orig), ("bf16 a.T NN", "bfloat16", nn_form)):
  kernels._rows_contracted = rc
  c = dataclasses.replace(Config(), dtype=dtype)
  g, s = train.init_state(c)
  f = jax.jit(train.make_train_step(g, train.make_optimizer(c), c, None))
  jax.block_until_ready(f(s, x, m, jax.random.key(0)))
  steps[name] = (f, s)
kernels._rows_contracted = orig
times = {d: [] for d in steps}
for _ in range(5):
  for d, (f, s) in steps.items():
    for _ in range(6):
      t = time.perf_counter(); jax.block_until_ready(f(s, x, m, jax.random.key(0))); times[d].append(time.perf_counter() - t)
for d, ts in times.items():
  print(f"{d:12s} median {np.median(ts)*1e3:.1f} ms  p10 {np.percentile(ts, 10)*1e3:.1f} ms  ({len(ts)} steps)")
