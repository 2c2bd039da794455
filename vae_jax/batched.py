"""Host-side application of a jitted function to a large array in fixed-size batches."""

import jax
import numpy as np


def map_batches(fn, *arrays, batch_size: int = 500):
  """fn(*batches) over the leading axis of `arrays`, concatenated on the host as numpy arrays.

  Every call gets the same batch shape (the last batch is zero-padded and its padding dropped),
  so a jitted `fn` compiles once. `fn` returns an array or a tuple/dict of arrays.
  """
  n = len(arrays[0])
  if any(len(a) != n for a in arrays):
    raise ValueError(f"arrays of different lengths: {[len(a) for a in arrays]}")
  size = min(batch_size, n)
  outputs = []
  for start in range(0, n, size):
    parts = [np.asarray(a[start:start + size]) for a in arrays]
    count = len(parts[0])
    if count < size:
      parts = [np.concatenate([p, np.zeros((size - count, *p.shape[1:]), p.dtype)]) for p in parts]
    outputs.append(jax.tree.map(lambda y, c=count: np.asarray(y)[:c], fn(*parts)))
  return jax.tree.map(lambda *ys: np.concatenate(ys), *outputs)
