import time, numpy as np, constriction
from vae_jax import template
from vae_jax.codec import integer
rng = np.random.default_rng(0)
PIX = constriction.stream.model.Bernoulli(perfect=False)
top = integer.LOGIT_MAX << integer.LOGIT_BITS
tabf = integer._probability_table(16) / float(1 << 16)
for b in [2, 8, 64]:
  logits = rng.integers(-3000, 3000, (784, b)).astype(np.int64)
  cint = rng.integers(-3000, 3000, 1 << 16).astype(np.int64)
  words = rng.integers(1, 2**32, 100000, dtype=np.uint64).astype(np.uint32)
  def run(variant):
    coder = constriction.stream.stack.AnsCoder(words.copy())
    one = float(1 << 16)
    if variant == 0:
      pop = lambda k: np.asarray(coder.decode(PIX, k.astype(np.float64) / one), np.int64)
      f = lambda i, ctx: pop(integer.probabilities_np(logits[i] + cint[ctx], 16))
    else:
      def f(i, ctx):
        idx = logits[i] + cint[ctx]
        np.maximum(idx, -top, out=idx)
        np.minimum(idx, top, out=idx)
        return coder.decode(PIX, tabf[idx + top])
    s = time.perf_counter()
    out = template.decode_raster(b, 28, 28, f)
    return (time.perf_counter() - s) / 784 * 1e6, out
  r = [run(v) for v in [0, 1, 0, 1, 0, 1]]
  assert all(np.array_equal(r[0][1], x[1]) for x in r)
  print(b, "old", [f"{x[0]:.2f}" for x in r[0::2]], "new", [f"{x[0]:.2f}" for x in r[1::2]])
