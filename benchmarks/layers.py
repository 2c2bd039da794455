"""Forward+backward time of each convolution layer of the CVAE, one framework per process.

  python -m benchmarks.layers --framework jax --out jax.json
  python -m benchmarks.layers --framework tf --out tf.json

Each layer at the tutorial's shapes (batch 100) with a ReLU where the model has one: the time of
one jitted / tf.function call computing the input, kernel and bias gradients of sum(y * c), with c
a fixed random array (an incoming gradient, as in the training step), best of 5 repeats of 30
calls. It says which layers a whole-step gap comes from. The layers run alone
here, so their sum is not the training step's time.
"""

import argparse
import ctypes
import ctypes.util
import os
import sys
import time

import numpy as np

from benchmarks import throughput
from vae_jax import cli

BATCH = 100
# name: (kind, input height, input channels, output channels, stride, relu)
LAYERS = {
    "enc_conv1": ("conv", 28, 1, 32, 2, True),
    "enc_conv2": ("conv", 13, 32, 64, 2, True),
    "dec_deconv1": ("conv_transpose", 7, 32, 64, 2, True),
    "dec_deconv2": ("conv_transpose", 14, 64, 32, 2, True),
    "dec_deconv3": ("conv_transpose", 28, 32, 1, 1, False),
}


def retain_freed_memory() -> bool:
  """Keeps glibc from returning freed blocks to the kernel (mallopt: no mmap, no trimming).

  Without it, an XLA:CPU call that frees tens of MB of temporaries page-faults them in again on
  the next call, while TensorFlow's allocator
  keeps its memory: a per-call benchmark would mostly time the page faults. (A training chunk's
  88 MB of temporaries are beyond what this can keep: glibc maps them afresh on every call from
  its worker thread, which vae_jax/training/hugepages.py puts on huge pages instead.)
  """
  if not sys.platform.startswith("linux"):
    return False
  try:
    mallopt = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
  except (OSError, AttributeError):  # not glibc
    return False
  mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
  return bool(mallopt(-4, 0)) and bool(mallopt(-1, 2**31 - 1))  # M_MMAP_MAX, M_TRIM_THRESHOLD


def best_ms(call, sync, repeats: int = 5, calls: int = 30) -> float:
  sync(call())
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    for _ in range(calls - 1):
      call()
    sync(call())
    times.append((time.perf_counter() - start) / calls * 1e3)
  return min(times)


def jax_layers() -> dict:
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  from vae_jax.nn import kernels  # pylint: disable=import-outside-toplevel
  out = {}
  for name, (kind, size, c_in, c_out, stride, relu) in LAYERS.items():
    keys = jax.random.split(jax.random.key(0), 3)
    x = jax.random.normal(keys[0], (BATCH, size, size, c_in))
    kernel = 0.1 * jax.random.normal(keys[1], (3, 3, c_in, c_out))
    bias = jnp.zeros((c_out,))
    out_size = (size - 3) // stride + 1 if kind == "conv" else size * stride
    cotangent = jax.random.normal(keys[2], (BATCH, out_size, out_size, c_out))
    if kind == "conv":
      layer = lambda x, k, b, s=stride: kernels.patch_conv(x, k, b, s)
    elif stride == 2:
      layer = lambda x, k, b, r=relu: kernels.phase_conv_transpose(x, k, b, r)
    else:
      layer = kernels.tap_matmul_conv_transpose
    grads = jax.jit(jax.grad(lambda x, k, b, c, f=layer: jnp.sum(f(x, k, b) * c), argnums=(0, 1, 2)))
    out[name] = best_ms(lambda g=grads, c=cotangent: g(x, kernel, bias, c), jax.block_until_ready)
  return out


def tf_layers() -> dict:
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  out = {}
  for name, (kind, size, c_in, c_out, stride, relu) in LAYERS.items():
    cls = tf.keras.layers.Conv2D if kind == "conv" else tf.keras.layers.Conv2DTranspose
    padding = "valid" if kind == "conv" else "same"
    layer = cls(c_out, 3, strides=stride, padding=padding, activation="relu" if relu else None)
    x = tf.random.normal((BATCH, size, size, c_in))
    cotangent = tf.random.normal(layer(x).shape)

    @tf.function
    def grads(x, c, layer=layer):
      with tf.GradientTape() as tape:
        tape.watch(x)
        loss = tf.reduce_sum(layer(x) * c)
      return tape.gradient(loss, [x, *layer.trainable_variables])

    out[name] = best_ms(lambda g=grads, c=cotangent: g(x, c), lambda r: [np.asarray(t) for t in r])
  return out


def main(argv=None) -> int:
  p = cli.ArgumentParser(prog="python -m benchmarks.layers", description=__doc__,
                         formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--framework", choices=("jax", "tf"), required=True)
  p.add_argument("--out", help="write the result as JSON here too (a new file)")
  args = p.parse_args(argv)
  if args.out and os.path.exists(args.out):
    p.error(f"--out {args.out} exists; choose a new file")
  result = {"framework": args.framework, "batch_size": BATCH,
            "retained_freed_memory": retain_freed_memory(),
            "fwd_bwd_ms": jax_layers() if args.framework == "jax" else tf_layers()}
  throughput.emit(result, args.out)
  return 0


if __name__ == "__main__":
  cli.start(lambda: cli.main(main))
