"""Value and gradient of the per-example Bernoulli log-likelihood sum, in several forms, on XLA:CPU.

  PYTHONPATH=. python loss_forms.py            # logits shaped as the decoder's, (50, 28, 28, 1)
  XLA_FLAGS=--xla_cpu_experimental_ynn_fusion_type=-reduce PYTHONPATH=. python loss_forms.py

One jitted value_and_grad over 20 independent micro-batches of 50 images (so that dispatch does
not dominate); microseconds per micro-batch.
"""
import time
import jax, jax.numpy as jnp, numpy as np, optax

r = np.random.default_rng(0)
L = jnp.asarray(r.normal(size=(20, 50, 28, 28, 1)), jnp.float32)
X = jnp.asarray(r.integers(0, 2, size=(20, 50, 28, 28, 1)), jnp.float32)
W = jnp.asarray(r.normal(size=(20, 50)), jnp.float32)
flat = lambda a: a.reshape(50, -1)

def optax_late(l, x):   # the previous vae_jax.losses: optax's form on (50, 28, 28, 1), then flattened
  return jnp.sum(flat(optax.sigmoid_binary_cross_entropy(l, x)), axis=-1)

def optax_flat(l, x):   # optax's form on the flattened pixels
  return jnp.sum(optax.sigmoid_binary_cross_entropy(flat(l), flat(x)), axis=-1)

def softplus_flat(l, x):
  l, x = flat(l), flat(x)
  return jnp.sum(jax.nn.softplus(l) - l * x, axis=-1)

def tf_flat(l, x):      # TF's max(l, 0) - l x + log1p(exp(-|l|)) (its gradient at l = 0 is off)
  l, x = flat(l), flat(x)
  return jnp.sum(jnp.maximum(l, 0) - l * x + jnp.log1p(jnp.exp(-jnp.abs(l))), axis=-1)

def where_flat(l, x):   # vae_jax.losses now: TF's form with one comparison
  l, x = flat(l), flat(x)
  p = l > 0
  return jnp.sum(jnp.where(p, l, 0.0) - l * x + jnp.log1p(jnp.exp(jnp.where(p, -l, l))), axis=-1)

for name, ce in [("optax, (50,28,28,1)", optax_late), ("optax, flattened", optax_flat),
                 ("softplus, flattened", softplus_flat), ("TF form, flattened", tf_flat),
                 ("TF form by where, flattened", where_flat)]:
  f = lambda L, X, W: sum(jnp.sum(W[i] * ce(L[i], X[i])) for i in range(20))
  g = jax.jit(jax.value_and_grad(f))
  jax.block_until_ready(g(L, X, W))
  times = []
  for _ in range(5):
    t = time.perf_counter()
    for _ in range(40):
      out = g(L, X, W)
    jax.block_until_ready(out)
    times.append((time.perf_counter() - t) / 40 / 20 * 1e6)
  print(f"{name:30s} {np.median(times):7.1f} us per micro-batch (median of 5 x 40 calls)")
