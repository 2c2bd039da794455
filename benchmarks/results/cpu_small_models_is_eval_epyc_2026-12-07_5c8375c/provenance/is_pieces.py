import sys, time, dataclasses, numpy as np, jax, jax.numpy as jnp
from flax import nnx
from vae_jax.training import run
from vae_jax.research import likelihood
from vae_jax import data as data_lib
from vae_jax.nn import models

config, epoch, model = run.restore_model(sys.argv[1])
ds = data_lib.load("idx:/work/shared/data/mnist")
x = data_lib.binarized_test(ds.test_images, config.binarize)[:int(sys.argv[2])].astype(np.float32)
key = jax.random.key(0)
def make(dtype):
  cfg = dataclasses.replace(config, dtype=dtype)
  m = models.MODELS[cfg.model].from_config(cfg, nnx.Rngs(0)) if hasattr(models, "MODELS") else None
  nnx.update(m, nnx.state(model))
  return m
def timeit(m, batch, chunk, label):
  g, s = nnx.split(m)
  n = len(x)
  idx = np.arange(batch, dtype=np.int32)
  f = likelihood.evaluate_batch.lower(g, s, x[:batch], idx, key, stochastic=True, k=5000, chunk=chunk).compile()
  out = [f(s, x[:batch], idx, key) for _ in range(2)]
  jax.block_until_ready(out)
  t = time.perf_counter(); outs = []
  for i in range(0, n, batch):
    outs.append(f(s, x[i:i+batch], np.arange(i, i+batch, dtype=np.int32), key))
  jax.block_until_ready(outs); dt = time.perf_counter() - t
  lp = np.concatenate([np.asarray(o["log_px"]) for o in outs])
  print(f"{label:30s} {n/dt:7.1f} img/s  nll {-lp.mean():.4f}", flush=True)
  return lp
m32 = make("float32"); mbf = make("bfloat16")
base = timeit(m32, 1, 500, "f32 b1 c500")
for b, c in [(1, 1000), (1, 2500), (1, 5000), (2, 500), (4, 250)]:
  timeit(m32, b, c, f"f32 b{b} c{c}")
for b, c in [(1, 500), (1, 2500)]:
  lp = timeit(mbf, b, c, f"bf16 b{b} c{c}")
  print("   bf16 - f32 per image: mean %.4f  max|.| %.4f" % ((lp-base).mean(), np.abs(lp-base).max()))
# pieces at 5000 rows
z = jax.random.normal(key, (5000, 50))
xf = jnp.asarray(x[0].reshape(1, -1))
for label, m in [("f32", m32), ("bf16", mbf)]:
  g, s = nnx.split(m)
  dec = jax.jit(lambda s, z: nnx.merge(g, s).decode(z).reshape(5000, -1))
  def full(s, z):
    l = nnx.merge(g, s).decode(z).reshape(5000, -1)
    return likelihood._bernoulli_log_prob(l, xf)
  full = jax.jit(full)
  for name, f in [("decoder", dec), ("decoder+logprob", full)]:
    f(s, z).block_until_ready()
    t = time.perf_counter()
    for _ in range(20): r = f(s, z)
    r.block_until_ready(); dt = (time.perf_counter() - t) / 20
    print(f"{label} {name}: {dt*1e3:.2f} ms per 5000 rows = {1/dt:.0f} img/s ceiling, {2.07e9/dt/1e9:.0f} GFLOP/s", flush=True)
a = jnp.ones((5000, 200)); b = jnp.ones((200, 784))
mm = jax.jit(lambda a, b: a @ b)
for dt_name, dt_ in [("f32", jnp.float32), ("bf16", jnp.bfloat16)]:
  aa, bb = a.astype(dt_), b.astype(dt_)
  f = jax.jit(lambda a, b: jnp.dot(a, b, preferred_element_type=jnp.float32))
  f(aa, bb).block_until_ready(); t = time.perf_counter()
  for _ in range(50): r = f(aa, bb)
  r.block_until_ready(); dt = (time.perf_counter() - t) / 50
  print(f"GEMM 5000x200x784 {dt_name}: {2*5000*200*784/dt/1e9:.0f} GFLOP/s", flush=True)
