import sys, time
import numpy as np, jax
from vae_jax import pretrained
from vae_jax.codec import integer
from vae_jax.codec.tables import ModelTables
config, model, _ = pretrained.resolve("pretrained")
t = ModelTables(model)
fn, dec = t._fns["raw_logits"]
rng = np.random.default_rng(0)
with jax.enable_x64(True):
  for c in [int(a) for a in sys.argv[1:]]:
    integer.DECODER_CHUNK = c
    g = jax.jit(lambda d, z: integer.raw_logits(d, z, 8))
    for N in [64, 1024, 1000]:
      z = rng.integers(0, 256, (N, 50)).astype(np.int32)
      np.asarray(g(dec, z)); ts = []
      for _ in range(5):
        s = time.perf_counter(); np.asarray(g(dec, z)); ts.append(time.perf_counter() - s)
      print(f"chunk {c:4d} rows {N:5d}: {1e6*np.median(ts)/N:7.1f} us/row", flush=True)
