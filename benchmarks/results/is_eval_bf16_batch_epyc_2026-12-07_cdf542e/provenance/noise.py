import time, jax, jax.numpy as jnp, numpy as np
from vae_jax.research import likelihood
key = jax.random.key(0)
f = jax.jit(lambda k, idx: likelihood.sample_noise(k, idx, jnp.arange(5000), 50).sum())
g = jax.jit(lambda k, idx: jax.vmap(lambda i: jax.random.normal(jax.random.fold_in(k, i), (5000, 50)))(idx).sum())
for name, fn in [("per-sample keys (now)", f), ("one key per image", g)]:
  idx = jnp.arange(1, dtype=jnp.int32)
  fn(key, idx).block_until_ready()
  ts = []
  for i in range(20):
    s = time.perf_counter(); fn(key, idx + i).block_until_ready(); ts.append(time.perf_counter() - s)
  print(name, f"{np.median(ts)*1e3:.2f} ms per image (5000 x 50)")
