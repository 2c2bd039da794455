import time, jax, jax.numpy as jnp, numpy as np
bf = jnp.bfloat16; rng = np.random.default_rng(0)
def bench(f, *a, reps=10):
  jax.block_until_ready(f(*a)); ts = []
  for _ in range(reps):
    t = time.perf_counter(); jax.block_until_ready(f(*a)); ts.append(time.perf_counter() - t)
  return np.median(ts) * 1e3
f32 = jax.jit(lambda a, b: jnp.dot(a, b)); mixed = jax.jit(lambda a, b: jnp.dot(a, b, preferred_element_type=jnp.float32))
a = jnp.asarray(rng.standard_normal((288, 19600)), jnp.float32); b = jnp.asarray(rng.standard_normal((19600, 64)), jnp.float32)
for _ in range(2):
  print("NN (288x19600)@(19600x64) f32", round(bench(f32, a, b), 3), "bf16->f32", round(bench(mixed, a.astype(bf), b.astype(bf)), 3), flush=True)
