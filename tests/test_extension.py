"""A variant registered from outside the package trains: docs/extending.md's example, as written."""

import dataclasses
import importlib.util
import os
import re

import jax.numpy as jnp
import numpy as np

from vae_jax import config as config_lib
from vae_jax import data
from vae_jax.nn import objectives
from vae_jax.training import run

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _docs_example() -> str:
  """The Python block of docs/extending.md's "Add your own variant" section."""
  with open(os.path.join(ROOT, "docs", "extending.md"), encoding="utf-8") as f:
    page = f.read()
  section = page[page.index("## Add your own variant"):]
  return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_documented_objective_registers_from_outside_and_trains(tmp_path, idx_dir):
  path = tmp_path / "rae.py"
  path.write_text(_docs_example())
  spec = importlib.util.spec_from_file_location("rae", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  try:
    assert objectives.OBJECTIVES["rae"].stochastic is False
    config = dataclasses.replace(config_lib.tiny(), data=f"idx:{idx_dir}", model="mlp_ae",
                                 hidden_sizes=(16,), objective="rae", learning_rate=1e-3)
    rows = run.train_and_evaluate(config, str(tmp_path / "run"))
    assert [r["epoch"] for r in rows] == [1, 2]
    assert rows[1]["train_loss"] < rows[0]["train_loss"]
    # The objective that ran is the documented one: the test loss is the cross-entropy plus
    # GAMMA/2 |z|^2, the penalty recomputed here from the trained encoder's codes.
    _, _, model = run.restore_model(str(tmp_path / "run"))
    test_x = data.binarize(data.load(config.data).test_images).astype(np.float32)
    z = np.asarray(model.encode(jnp.asarray(test_x))[0], np.float64)
    penalty = module.GAMMA / 2 * np.mean(np.sum(z ** 2, axis=-1))
    assert penalty > 0
    # Both means are float32 sums of 24 terms of ~540 nats: each rounds by about 3e-5.
    np.testing.assert_allclose(-rows[1]["test_elbo"] - rows[1]["test_rec"], penalty, rtol=0,
                               atol=1e-4)
    assert rows[1]["test_kl"] == 0.0
  finally:
    del objectives.OBJECTIVES["rae"]
