import sys, time, dataclasses, numpy as np, jax
from flax import nnx
from vae_jax.training import run
from vae_jax.research import likelihood
from vae_jax import data as data_lib
ds = data_lib.load("idx:/work/shared/data/mnist")
key = jax.random.key(0)
res = {}
for dtype in ("float32", "bfloat16"):
  config, epoch, m = run.restore_model(sys.argv[1], dtype)
  x = data_lib.binarized_test(ds.test_images, config.binarize)[:int(sys.argv[2])].astype(np.float32)
  g, s = nnx.split(m)
  for b, c in [(1, 500), (2, 500), (2, 1000), (4, 250), (4, 500), (8, 250), (4, 1250), (8, 625)]:
    idx = np.arange(b, dtype=np.int32)
    f = likelihood.evaluate_batch.lower(g, s, x[:b], idx, key, stochastic=True, k=5000, chunk=c).compile()
    jax.block_until_ready(f(s, x[:b], idx, key))
    best = 0
    for r in range(2):
      t = time.perf_counter(); outs = []
      for i in range(0, len(x), b):
        outs.append(f(s, x[i:i+b], np.arange(i, i+b, dtype=np.int32), key))
      jax.block_until_ready(outs); best = max(best, len(x) / (time.perf_counter() - t))
    lp = np.concatenate([np.asarray(o["log_px"]) for o in outs])
    print(f"{dtype:9s} b{b} c{c}: {best:6.1f} img/s  nll {-lp.mean():.4f}", flush=True)
