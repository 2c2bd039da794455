"""A/B of likelihood.evaluate_batch at k=5000, alternating in one process. "before" is the file at
5d124f4: git show 5d124f4:vae_jax/research/likelihood.py > /tmp/exp/likelihood_before.py"""
import time, sys, importlib.util
import jax, jax.numpy as jnp, numpy as np
from flax import nnx
from vae_jax.config import Config
from vae_jax.nn import models
from vae_jax.research import likelihood as new
spec = importlib.util.spec_from_file_location("lik_before", "/tmp/exp/likelihood_before.py")
old = importlib.util.module_from_spec(spec); spec.loader.exec_module(old)
model = models.create_model(Config(model="mlp"), jax.random.key(0))
gd, st = nnx.split(model)
x = (np.random.default_rng(0).random((100, 28, 28, 1)) > 0.7).astype(np.float32)
key = jax.random.key(1)
K = 5000
fns = {}
for name, mod in (("before", old), ("after", new)):
  for B, chunk in ((1, 500), (10, 500), (25, 200)):
    xb = jnp.asarray(x[:B]); idx = jnp.arange(B)
    f = mod.evaluate_batch.lower(gd, st, xb, idx, key, stochastic=True, k=K, chunk=chunk).compile()
    fns[(name, B, chunk)] = (f, xb, idx)
ref = np.asarray(fns[("before", 1, 500)][0](st, *fns[("before", 1, 500)][1:], key)["log_px"])
got = np.asarray(fns[("after", 10, 500)][0](st, *fns[("after", 10, 500)][1:], key)["log_px"])[:1]
print("log_px before B1 vs after B10:", ref, got)
res = {k: [] for k in fns}
for r in range(3):
  for k_, (f, xb, idx) in fns.items():
    t = time.perf_counter(); n = 0
    while n < 20:
      jax.block_until_ready(f(st, xb, idx, key)); n += xb.shape[0]
    res[k_].append(n / (time.perf_counter() - t))
base = res[("before", 1, 500)]
for k_, v in res.items():
  print(k_, f"median {np.median(v):.2f} img/s, ratio to before B1 {np.median(np.array(v)/np.array(base)):.2f}", flush=True)
