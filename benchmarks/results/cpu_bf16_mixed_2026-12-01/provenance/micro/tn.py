import time, jax, jax.numpy as jnp, numpy as np
bf = jnp.bfloat16; rng = np.random.default_rng(0)
def bench(f, *a, reps=15):
  jax.block_until_ready(f(*a)); ts = []
  for _ in range(reps):
    t = time.perf_counter(); jax.block_until_ready(f(*a)); ts.append(time.perf_counter() - t)
  return np.median(ts) * 1e3
TN = (((0,), (0,)), ((), ()))
forms = {
  "f32 TN": (jax.jit(lambda a, b: jax.lax.dot_general(a, b, TN)), False),
  "bf16 TN": (jax.jit(lambda a, b: jax.lax.dot_general(a, b, TN, preferred_element_type=jnp.float32)), True),
  "bf16 a.T NN": (jax.jit(lambda a, b: jnp.dot(a.T, b, preferred_element_type=jnp.float32)), True),
  "bf16 (b.T a).T": (jax.jit(lambda a, b: jax.lax.dot_general(b, a, TN, preferred_element_type=jnp.float32).T), True),
  "bf16 f32in-cvt TN": (jax.jit(lambda a, b: jax.lax.dot_general(a.astype(bf), b.astype(bf), TN, preferred_element_type=jnp.float32)), False),
}
for sa, sb in [((19600, 288), (19600, 64)), ((19600, 65), (19600, 288)), ((9800, 288), (9800, 64))]:
  a = jnp.asarray(rng.standard_normal(sa), jnp.float32); b = jnp.asarray(rng.standard_normal(sb), jnp.float32)
  out = []
  for _ in range(2):
    for name, (f, cast) in forms.items():
      args = (a.astype(bf), b.astype(bf)) if cast else (a, b)
      out.append((name, bench(f, *args, reps=8)))
  res = {}
  for n, t in out: res.setdefault(n, []).append(t)
  print(sa, sb, "  ".join(f"{n} {min(t):.3f}" for n, t in res.items()), flush=True)
