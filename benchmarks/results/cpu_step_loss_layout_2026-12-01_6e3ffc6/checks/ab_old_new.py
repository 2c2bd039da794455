"""In-process A/B of the training chunk: this checkout's kernels and loss vs a previous commit's.

  PYTHONPATH=. python ab_old_new.py ROUNDS OLD_CHECKOUT
'old' patches the previous checkout's vae_jax.kernels entry points and losses.bernoulli_log_likelihood
into this one before building its chunk; 'new' builds with this checkout's. Rounds alternate.
"""
import dataclasses, importlib.util, sys, time
import jax, numpy as np
from vae_jax import kernels, losses, parallel, train
from vae_jax.config import get_config
from benchmarks import throughput

rounds, old_root = int(sys.argv[1]), sys.argv[2]

def load(name, path):
  spec = importlib.util.spec_from_file_location(name, path)
  mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod); return mod

old_k = load("old_kernels", f"{old_root}/vae_jax/kernels.py")
old_l = load("old_losses", f"{old_root}/vae_jax/losses.py")
ENTRY = ("patch_conv", "phase_conv_transpose", "tap_matmul_conv_transpose", "dense")
new_fns = {n: getattr(kernels, n) for n in ENTRY}
new_bll = losses.bernoulli_log_likelihood

def build(name, dtype):
  for n in ENTRY:
    setattr(kernels, n, getattr(old_k, n) if name == "old" else new_fns[n])
  losses.bernoulli_log_likelihood = old_l.bernoulli_log_likelihood if name == "old" else new_bll
  config = dataclasses.replace(get_config(), parallel="none", dtype=dtype)
  strategy = parallel.make_strategy(config.parallel, config.devices)
  graphdef, state = train.init_state(config)
  steps = train.Steps(graphdef, config, strategy)
  length, unroll = train.chunk_plan(config, jax.default_backend())
  x_u8 = throughput.random_batches(0, length, config.batch_size)
  xs, masks = strategy.put_batches(x_u8, np.ones(x_u8.shape[:2], np.float32))
  keys = train.run_keys(0)
  state = strategy.put_state(state)
  compiled = steps.compiled(steps.chunk(length, unroll), state, xs, masks, keys.noise, 0)
  return [compiled, state, xs, masks, keys.noise], length

dtype = sys.argv[3] if len(sys.argv) > 3 else "float32"
calls = {}
for name in ("old", "new"):
  calls[name], length = build(name, dtype)
res = {n: [] for n in calls}; losses_at = {}
for r in range(rounds):
  for n, box in (calls.items() if r % 2 == 0 else reversed(list(calls.items()))):
    c = box[0]
    box[1], sums, per = c(box[1], *box[2:], 0); jax.block_until_ready(sums)
    s = time.perf_counter()
    for _ in range(10):
      box[1], sums, per = c(box[1], *box[2:], 0)
    jax.block_until_ready(sums)
    res[n].append((time.perf_counter() - s) / (10 * length) * 1e3)
    losses_at[n] = float(per[-1])
print(f"dtype {dtype}, {rounds} rounds of 10 chunks x {length} steps, batch 100; step ms per round:")
for n in calls:
  print(f"  {n}: median {np.median(res[n]):.2f}  min {min(res[n]):.2f}  last chunk loss {losses_at[n]:.4f}  {[round(v, 2) for v in res[n]]}")
print(f"new/old speed (old median / new median): {np.median(res['old']) / np.median(res['new']):.3f}")
