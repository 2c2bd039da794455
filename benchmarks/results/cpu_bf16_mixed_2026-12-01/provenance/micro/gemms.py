"""Median ms of each GEMM form of the training step (batch 50 per micro-batch), f32 vs bf16->f32, alternating."""
import time, jax, jax.numpy as jnp, numpy as np
bf = jnp.bfloat16
def dg(dims, pref):
  return jax.jit(lambda a, b: jax.lax.dot_general(a, b, dims, preferred_element_type=pref))
NN = (((1,), (0,)), ((), ()))
TN = (((0,), (0,)), ((), ()))
NT = (((1,), (1,)), ((), ()))
cases = [("conv2 fwd", (1800, 288), (288, 64), NN), ("conv2 dk", (1800, 288), (1800, 64), TN),
         ("deconv1 fwd", (2450, 32), (32, 576), NN), ("deconv1 dx", (2450, 576), (576, 32), NN),
         ("deconv1 dk", (2450, 33), (2450, 576), TN),
         ("deconv2 fwd", (9800, 64), (64, 288), NN), ("deconv2 dx", (9800, 288), (288, 64), NN),
         ("deconv2 dk", (9800, 65), (9800, 288), TN),
         ("tap fwd", (9, 32), (39200, 32), NT), ("tap dk", (9, 39200), (39200, 32), NN),
         ("conv1 fwd", (8450, 9), (9, 32), NN), ("conv1 dk", (8450, 9), (8450, 32), TN),
         ("dense enc dk", (50, 2304), (50, 100), TN), ("dense dec fwd", (50, 50), (50, 1568), NN)]
rng = np.random.default_rng(0)
def bench(f, a, b, reps=15):
  f(a, b).block_until_ready()
  ts = []
  for _ in range(reps):
    t = time.perf_counter(); f(a, b).block_until_ready(); ts.append(time.perf_counter() - t)
  return ts
for name, sa, sb, dims in cases:
  a = jnp.asarray(rng.standard_normal(sa), jnp.float32); b = jnp.asarray(rng.standard_normal(sb), jnp.float32)
  f32, mixed = dg(dims, None), dg(dims, jnp.float32)
  ab, bb = a.astype(bf), b.astype(bf)
  t32, tbf = [], []
  for _ in range(3):
    t32 += bench(f32, a, b, 5); tbf += bench(mixed, ab, bb, 5)
  print(f"{name:14s} {str(sa):13s} {str(sb):13s} f32 {np.median(t32)*1e3:7.3f} ms  bf16->f32 {np.median(tbf)*1e3:7.3f} ms  ratio {np.median(t32)/np.median(tbf):.2f}", flush=True)
# conv2 input gradient as a convolution
from vae_jax import kernels
dy = jnp.asarray(rng.standard_normal((50, 6, 6, 64)), jnp.float32); k = jnp.asarray(rng.standard_normal((3, 3, 32, 64)), jnp.float32)
f32 = jax.jit(lambda d, k: kernels.valid_conv_input_grad(d, k, 2, (13, 13)))
mixed = jax.jit(lambda d, k: kernels.valid_conv_input_grad(d, k, 2, (13, 13), jnp.float32))
t32, tbf = [], []
for _ in range(3):
  t32 += bench(f32, dy, k, 5); tbf += bench(mixed, dy.astype(bf), k.astype(bf), 5)
print(f"conv2 dx conv  f32 {np.median(t32)*1e3:7.3f} ms  bf16->f32 {np.median(tbf)*1e3:7.3f} ms  ratio {np.median(t32)/np.median(tbf):.2f}")
