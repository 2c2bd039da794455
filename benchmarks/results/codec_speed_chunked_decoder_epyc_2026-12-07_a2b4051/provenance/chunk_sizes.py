import sys, time, functools
import numpy as np, jax, jax.numpy as jnp
from vae_jax import pretrained
from vae_jax.codec import integer
from vae_jax.codec.tables import ModelTables
config, model, _ = pretrained.resolve("pretrained")
t = ModelTables(model)
fn, dec = t._fns["raw_logits"]
N = int(sys.argv[1]) if len(sys.argv) > 1 else 1024
rng = np.random.default_rng(0)
z = rng.integers(0, 256, (N, 50)).astype(np.int32)
def chunked(c):
  def f(decoder, z):
    zz = z.reshape(-1, c, z.shape[-1])
    out = jax.lax.map(lambda zc: integer.raw_logits(decoder, zc, 8), zz)
    return out.reshape(z.shape[0], -1)
  return jax.jit(f)
with jax.enable_x64(True):
  ref = np.asarray(fn(dec, z))
  for c in [N, 256, 128, 64, 32, 16, 8]:
    if c > N: continue
    g = fn if c == N else chunked(c)
    out = np.asarray(g(dec, z)); assert np.array_equal(out, ref)
    ts = []
    for _ in range(5):
      s = time.perf_counter(); np.asarray(g(dec, z)); ts.append(time.perf_counter() - s)
    print(f"chunk {c:5d}: {1e6*np.median(ts)/N:7.1f} us/row", flush=True)
