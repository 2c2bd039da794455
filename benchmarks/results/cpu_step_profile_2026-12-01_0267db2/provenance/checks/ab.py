"""In-process A/B of the training chunk: variant functions patched into vae_jax before building each."""
import dataclasses, sys, time, jax, jax.numpy as jnp, numpy as np, optax
from vae_jax import parallel, train, losses
from vae_jax.config import get_config
from benchmarks import throughput

def tf_bll(x_logits, x):
  l = x_logits.astype(jnp.float32); x = x.astype(jnp.float32)
  ce = jnp.maximum(l, 0) - l * x + jnp.log1p(jnp.exp(-jnp.abs(l)))
  return -jnp.sum(ce.reshape(ce.shape[0], -1), axis=-1)

from vae_jax import kernels
_orig_rc = kernels._rows_contracted
def f32_rc(a, b, gemm_dtype=None):
  return jax.lax.dot_general(a.astype(jnp.float32), b.astype(jnp.float32), (((0,), (0,)), ((), ())))
VARIANTS = {"optax": losses.bernoulli_log_likelihood, "tf": tf_bll, "bf16": "bf16", "bf16_f32kgrad": "bf16_f32kgrad", "f32": "f32"}

def build(name):
  dtype = "float32"
  if name in ("optax", "tf"):
    losses.bernoulli_log_likelihood = VARIANTS[name]
  else:
    kernels._rows_contracted = f32_rc if name == "bf16_f32kgrad" else _orig_rc
    dtype = "float32" if name == "f32" else "bfloat16"
  config = dataclasses.replace(get_config(), parallel="none", dtype=dtype)
  strategy = parallel.make_strategy(config.parallel, config.devices)
  graphdef, state = train.init_state(config)
  steps = train.Steps(graphdef, config, strategy)
  length, unroll = train.chunk_plan(config, jax.default_backend())
  x_u8 = throughput.random_batches(0, length, config.batch_size)
  xs, masks = strategy.put_batches(x_u8, np.ones(x_u8.shape[:2], np.float32))
  chunk = steps.chunk(length, unroll)
  keys = train.run_keys(0)
  state = strategy.put_state(state)
  compiled = steps.compiled(chunk, state, xs, masks, keys.noise, 0)
  box = {"state": state}
  def call():
    box["state"], sums, _ = compiled(box["state"], xs, masks, keys.noise, 0)
    return sums
  return call, length

names = sys.argv[1].split(",")
calls = {n: build(n) for n in names}
res = {n: [] for n in names}
for r in range(int(sys.argv[2]) if len(sys.argv) > 2 else 6):
  for n in names:
    call, length = calls[n]
    jax.block_until_ready(call())
    s = time.perf_counter()
    for _ in range(10): out = call()
    jax.block_until_ready(out)
    res[n].append((time.perf_counter() - s) / (10 * length) * 1e3)
for n in names: print(n, "step ms: median", round(float(np.median(res[n])), 2), "min", round(min(res[n]), 2), [round(v, 2) for v in res[n]])
