import sys, time, numpy as np, jax, jax.numpy as jnp
from flax import nnx
from vae_jax.training import run
from vae_jax.research import likelihood
from vae_jax import data as data_lib
ds = data_lib.load("idx:/work/shared/data/mnist")
key = jax.random.key(0)
dtype = sys.argv[2]
config, epoch, m = run.restore_model(sys.argv[1], dtype)
x = data_lib.binarized_test(ds.test_images, config.binarize)[:200].astype(np.float32)
g, s = nnx.split(m)
b = int(sys.argv[3])
full = likelihood.evaluate_batch.lower(g, s, x[:b], np.arange(b, dtype=np.int32), key, stochastic=True, k=5000, chunk=500).compile()
lw = jax.jit(lambda s, x, i, k: likelihood._sample_terms(g, s, x, i, k, 5000, 500)[1]).lower(s, x[:b], np.arange(b, dtype=np.int32), key).compile()
for name, f in [("full evaluate_batch", full), ("log weights only", lw), ("full evaluate_batch", full), ("log weights only", lw)]:
  t = time.perf_counter(); outs = []
  for i in range(0, len(x), b):
    outs.append(f(s, x[i:i+b], np.arange(i, i+b, dtype=np.int32), key))
  jax.block_until_ready(outs)
  print(f"{dtype} b{b} {name:22s} {len(x)/(time.perf_counter()-t):6.1f} img/s", flush=True)
