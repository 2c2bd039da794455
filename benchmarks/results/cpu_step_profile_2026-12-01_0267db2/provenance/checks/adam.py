import time, jax, jax.numpy as jnp, optax, numpy as np
from flax import nnx
from vae_jax import train
from vae_jax.config import get_config
cfg = get_config()
graphdef, state = train.init_state(cfg)
params = state.params
tx = train.make_optimizer(cfg)
txf = optax.flatten(train.make_optimizer(cfg))
grads = jax.tree.map(lambda p: jnp.full_like(p, 1e-3), params)
def step(tx):
  def f(params, opt_state, grads):
    u, o = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, u), o
  return jax.jit(f, donate_argnums=(0, 1))
for name, t in (("tree", tx), ("flat", txf)):
  o = t.init(params); p = params
  f = step(t)
  c = f.lower(p, o, grads).compile()
  txt = c.as_text()
  print(name, "fusions in entry:", sum(1 for l in txt.split("ENTRY")[1].splitlines() if " fusion(" in l))
  p2, o2 = jax.tree.map(jnp.copy, p), jax.tree.map(jnp.copy, o)
  for _ in range(20): p2, o2 = f(p2, o2, grads)
  jax.block_until_ready(p2)
  ts=[]
  for r in range(5):
    s=time.perf_counter()
    for _ in range(200): p2, o2 = f(p2, o2, grads)
    jax.block_until_ready(p2); ts.append((time.perf_counter()-s)/200*1e3)
  print(name, "ms per update", min(ts))
n = sum(x.size for x in jax.tree.leaves(params)); print("params", n, "leaves", len(jax.tree.leaves(params)))
