"""Writes the optimized HLO of the default run's training chunk, step and evaluation.

  cd CHECKOUT && PYTHONPATH=. python benchmarks/results/redesign_throughput_2026-12-01/provenance/hlo_dump.py PREFIX

writes PREFIX_{chunk,step,evaluate}.hlo, without metadata and instruction numbers, for
hlo_compare.py (run where the before_*.hlo and after_*.hlo files are).
"""
import re
import sys

import jax
import numpy as np

from vae_jax import parallel, train
from vae_jax.config import get_config

config = get_config()
strategy = parallel.make_strategy("none", None)
graphdef, state = train.init_state(config)
steps = train.Steps(graphdef, config, strategy)
length, unroll = train.chunk_plan(config, jax.default_backend())
xs, masks = strategy.put_batches(np.zeros((length, 100, 28, 28, 1), np.uint8),
                                 np.ones((length, 100), np.float32))
state = strategy.put_state(state)
keys = train.run_keys(0)


def clean(text):
  text = re.sub(r", metadata=\{[^}]*\}", "", text)
  return re.sub(r"\.\d+", "", text)


for name, fn, args in (("chunk", steps.chunk(length, unroll), (state, xs, masks, keys.noise, 0)),
                       ("step", steps.step, (state, xs[0], masks[0], keys.noise)),
                       ("evaluate", steps.evaluate, (state.params, xs, masks, keys.eval))):
  with open(f"{sys.argv[1]}_{name}.hlo", "w") as f:
    f.write(clean(fn.lower(*args).compile().as_text()))
