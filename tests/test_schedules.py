"""Learning-rate schedules: the IWAE protocol's rates at its stage boundaries, Adam and resume."""

import dataclasses
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vae_jax import config as config_lib
from vae_jax.errors import UserError
from vae_jax.training import run, schedules, train
from vae_jax.training.checkpoints import Checkpoints


def _paper_rate(epoch: int) -> float:
  """Burda et al.'s rate of a 0-based epoch: stage i is 3^i epochs after stages 0..i-1."""
  first = 0
  for i in range(8):
    if epoch < first + 3**i:
      return 1e-3 * 10 ** (-i / 7)
    first += 3**i
  raise AssertionError("past the protocol")


def test_burda_rates_at_every_stage_boundary():
  steps_per_epoch = 3
  firsts = np.cumsum([0] + [3**i for i in range(7)])  # first epoch of stages 0..7
  assert firsts[-1] + 3**7 == 3280
  epochs = sorted({int(e) for f in firsts for e in (f - 1, f) if e >= 0} | {3279})
  steps = np.array([e * steps_per_epoch + d for e in epochs for d in (0, steps_per_epoch - 1)])
  got = jax.jit(lambda s: schedules.burda_learning_rate(s, steps_per_epoch))(jnp.asarray(steps))
  want = [_paper_rate(int(s) // steps_per_epoch) for s in steps]
  np.testing.assert_allclose(np.asarray(got), want, rtol=1e-7)
  assert schedules.BURDA_EPOCHS == 3280


def _burda(cfg, **changes):
  return dataclasses.replace(cfg, lr_schedule="burda", learning_rate=1e-3, **changes)


def test_burda_is_plain_adam_with_eps_1e_4():
  cfg = _burda(config_lib.tiny())
  tx = train.make_optimizer(cfg, steps_per_epoch=2)
  g = {"w": jnp.array([1e-4, -3e-4, 2.0])}
  state = tx.init(g)
  # Adam's first step is -lr * g / (|g| + eps) (bias-corrected moments are g and g^2).
  updates, state = tx.update(g, state)
  want = -1e-3 * np.array([1e-4, -3e-4, 2.0]) / (np.abs([1e-4, -3e-4, 2.0]) + 1e-4)
  np.testing.assert_allclose(np.asarray(updates["w"]), want, rtol=1e-6)
  with pytest.raises(ValueError, match="steps_per_epoch"):
    train.make_optimizer(cfg).update(g, state)


def test_burda_refuses_another_base_and_more_epochs():
  with pytest.raises(UserError, match="base learning rate 0.001; got --learning-rate 0.0001"):
    train.make_optimizer(dataclasses.replace(config_lib.tiny(), lr_schedule="burda"), 2)
  with pytest.raises(UserError, match="ends after 3280 epochs"):
    train.make_optimizer(_burda(config_lib.tiny(), epochs=3281), 2)
  with pytest.raises(UserError, match="--lr-schedule 'nope' is not registered"):
    train.make_optimizer(dataclasses.replace(config_lib.tiny(), lr_schedule="nope"), 2)


def _final_state(workdir):
  config = run.workdir_lib.load_config(workdir)
  checkpoints = Checkpoints(os.path.join(workdir, "checkpoints"), config.checkpoints_to_keep)
  try:
    _, like = train.init_state(config)
    return checkpoints.restore_newest(like, jax.sharding.SingleDeviceSharding(jax.devices()[0]))
  finally:
    checkpoints.close()


def test_burda_resume_mid_stage_across_a_boundary_equals_one_run(idx_dir, tmp_path):
  # 40 images in batches of 8: 5 steps an epoch. Epoch 1 is stage 0, epochs 2-4 stage 1, epoch 5
  # stage 2: the resumed run starts inside stage 1 and crosses into stage 2.
  cfg = _burda(config_lib.tiny(), data=f"idx:{idx_dir}", model="mlp", hidden_sizes=(16,),
               epochs=5)
  run.train_and_evaluate(cfg, str(tmp_path / "one"))
  run.train_and_evaluate(dataclasses.replace(cfg, epochs=2), str(tmp_path / "two"))
  run.train_and_evaluate(cfg, str(tmp_path / "two"), resume=True)
  epoch_a, a = _final_state(str(tmp_path / "one"))
  epoch_b, b = _final_state(str(tmp_path / "two"))
  assert epoch_a == epoch_b == 5 and int(a.step) == int(b.step) == 25
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  # The rate the optimizer applied last (step 24, epoch index 4) is stage 2's.
  np.testing.assert_allclose(float(a.opt_state.hyperparams["learning_rate"]),
                             1e-3 * 10 ** (-2 / 7), rtol=1e-7)
