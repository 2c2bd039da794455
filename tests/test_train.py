"""End-to-end training: improvement, determinism, resume, divergence and workdir safety."""

import dataclasses
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from vae_jax import config as config_lib
from vae_jax.nn import losses, models
from vae_jax.training import run, train
from vae_jax.training import workdir as workdir_lib
from vae_jax.errors import UserError


@pytest.fixture(scope="module")
def cfg(idx_dir):
  return dataclasses.replace(config_lib.tiny(), data=f"idx:{idx_dir}", learning_rate=1e-3)


@pytest.fixture(scope="module")
def reference_run(cfg, tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp("ref") / "run")
  rows = run.train_and_evaluate(cfg, workdir)
  return workdir, rows


def _params(workdir):
  _, epoch, model = run.restore_model(workdir)
  return epoch, jax.tree.leaves(nnx.state(model, nnx.Param))


def test_training_improves_the_test_elbo_and_writes_outputs(reference_run, cfg):
  workdir, rows = reference_run
  assert [r["epoch"] for r in rows] == [1, 2]
  assert rows[1]["test_elbo"] > rows[0]["test_elbo"]
  assert rows[1]["train_loss"] < rows[0]["train_loss"]
  for r in rows:
    assert r["test_elbo"] < 0 and r["images_per_sec"] > 0
    np.testing.assert_allclose(r["train_loss"], r["train_rec"] + r["train_kl"], rtol=1e-5)
    np.testing.assert_allclose(-r["test_elbo"], r["test_rec"] + r["test_kl"], rtol=1e-5)
  assert run.read_metrics(workdir) == rows
  with open(os.path.join(workdir, "config.json")) as f:
    assert config_lib.Config(**json.load(f)) == cfg
  for name in ("image_at_epoch_0001.png", "image_at_epoch_0002.png", "training.gif",
               "curves.png", "latent_manifold.png"):
    assert os.path.getsize(os.path.join(workdir, name)) > 0, name


def test_same_seed_same_parameters_other_seed_differs(reference_run, cfg, tmp_path):
  epoch, want = _params(reference_run[0])
  again = run.train_and_evaluate(cfg, str(tmp_path / "again"))
  for a, b in zip(again, reference_run[1]):
    assert (a["train_loss"], a["test_elbo"]) == (b["train_loss"], b["test_elbo"])
  _, got = _params(str(tmp_path / "again"))
  assert epoch == 2
  for g, w in zip(got, want):
    np.testing.assert_array_equal(g, w)
  run.train_and_evaluate(dataclasses.replace(cfg, seed=1, epochs=1), str(tmp_path / "other"))
  _, other = _params(str(tmp_path / "other"))
  assert not all(np.array_equal(o, w) for o, w in zip(other, want))


def test_resume_ends_with_the_same_parameters(reference_run, cfg, tmp_path):
  workdir = str(tmp_path / "resumed")
  first = run.train_and_evaluate(dataclasses.replace(cfg, epochs=1), workdir)
  second = run.train_and_evaluate(cfg, workdir, resume=True)
  assert [r["epoch"] for r in first] == [1] and [r["epoch"] for r in second] == [1, 2]
  assert [r["test_elbo"] for r in second] == [r["test_elbo"] for r in reference_run[1]]
  epoch, got = _params(workdir)
  _, want = _params(reference_run[0])
  assert epoch == 2
  for g, w in zip(got, want):
    np.testing.assert_array_equal(g, w)


def test_resume_stops_when_another_process_has_no_checkpoint(reference_run, cfg, tmp_path,
                                                             monkeypatch):
  """The resume agreement: a process whose checkpoints all fail to restore says so to the others
  (epoch -1) before it raises, so none of them waits for it; each refuses with one line and
  leaves the workdir as it was."""
  workdir = str(tmp_path / "run")
  run.train_and_evaluate(dataclasses.replace(cfg, epochs=1), workdir)
  before = _outputs(workdir), sorted(os.listdir(os.path.join(workdir, "checkpoints")))
  told = []
  monkeypatch.setattr(run.parallel, "min_max_over_processes",
                      lambda v: (told.append(v), (-1, v))[1])  # another process sent -1
  with pytest.raises(UserError, match="another process found no checkpoint that restores"):
    run.train_and_evaluate(cfg, workdir, resume=True)
  assert told == [1]  # this process restored epoch 1 and said so
  assert (_outputs(workdir), sorted(os.listdir(os.path.join(workdir, "checkpoints")))) == before


def _outputs(workdir):
  """Modification times of a workdir's files (the lock file is every run's, not an output)."""
  return {n: os.path.getmtime(os.path.join(workdir, n)) for n in os.listdir(workdir)
          if n != workdir_lib.LOCK_FILE}


def test_workdir_is_never_overwritten(reference_run, cfg):
  workdir, _ = reference_run
  before = _outputs(workdir)
  with pytest.raises(UserError, match="not empty; pass --resume"):
    run.train_and_evaluate(cfg, workdir)
  with pytest.raises(UserError, match=r"settings differ .*latent_dim: 2 -> 3"):
    run.train_and_evaluate(dataclasses.replace(cfg, latent_dim=3), workdir, resume=True)
  assert before == _outputs(workdir)


def test_divergence_stops_with_the_step_and_keeps_the_last_checkpoint(cfg, tmp_path, monkeypatch):
  workdir = str(tmp_path / "nan")
  run.train_and_evaluate(dataclasses.replace(cfg, epochs=1), workdir)
  _, before = _params(workdir)
  # From now on every reconstruction term is NaN: the resumed epoch 2 diverges at its first step.
  monkeypatch.setattr(losses, "bernoulli_log_likelihood", lambda x_logits, x: jnp.full(
      x_logits.shape[0], jnp.nan))
  steps_per_epoch = cfg.train_size // cfg.batch_size
  with pytest.raises(run.TrainingDiverged,
                     match=rf"non-finite loss at step {steps_per_epoch + 1} \(epoch 2\)"):
    run.train_and_evaluate(cfg, workdir, resume=True)
  epoch, after = _params(workdir)
  assert epoch == 1 and [r["epoch"] for r in run.read_metrics(workdir)] == [1]
  for a, b in zip(after, before):
    np.testing.assert_array_equal(a, b)


def test_micro_batches_give_the_same_step_and_bad_splits_fail(cfg):
  from vae_jax.training import train  # pylint: disable=import-outside-toplevel
  # Dynamic binarization: each part draws its own examples' pixels on the device.
  config = dataclasses.replace(cfg, batch_size=8, binarize="dynamic")
  graphdef, state = train.init_state(config)
  x = jax.random.randint(jax.random.key(1), (8, 28, 28, 1), 0, 256).astype(jnp.uint8)
  mask = jnp.ones((8,)).at[7].set(0.0)  # a padded example must not count in any part
  key = jax.random.key(2)

  def step(parts):
    c = dataclasses.replace(config, micro_batches=parts)
    assert train.micro_batches(c, 8) == parts
    # Full float32 matmuls: a GPU's default TF32 would differ between the splits by more than
    # the float32 summation order does, and Adam magnifies that where gradients are near zero.
    with jax.default_matmul_precision("highest"):
      return jax.jit(train.make_train_step(graphdef, train.make_optimizer(c), c, None))(
          state, x, mask, key)

  (one, sums_one), (four, sums_four) = step(1), step(4)
  assert float(sums_one["count"]) == 7
  np.testing.assert_allclose(sums_four["loss"], sums_one["loss"], rtol=1e-6)
  moved = False
  for a, b, p in zip(jax.tree.leaves(four.params), jax.tree.leaves(one.params),
                     jax.tree.leaves(state.params)):
    # Adam moves each parameter by up to lr = 1e-3: 1e-6 is 0.1% of a step (float sum order).
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)
    moved |= bool(np.any(np.asarray(b) != np.asarray(p)))
  assert moved
  # The default: 2 on a single CPU device (this process) when the batch is even and >= 100, else 1.
  assert jax.default_backend() != "cpu" or train.micro_batches(config, 100) == 2
  assert train.micro_batches(config, 8) == 1 and train.micro_batches(config, 101) == 1
  with pytest.raises(UserError, match="a batch of 8 per step does not split into 3 micro-batches"):
    train.micro_batches(dataclasses.replace(config, micro_batches=3), 8)
  with pytest.raises(UserError, match="--micro-batches must be >= 0"):
    dataclasses.replace(config, micro_batches=-1).validate()


def test_evaluation_sums_do_not_depend_on_the_evaluation_batch(cfg):
  from vae_jax import data  # pylint: disable=import-outside-toplevel
  from vae_jax.training import train  # pylint: disable=import-outside-toplevel
  config = dataclasses.replace(cfg, model="mlp", hidden_sizes=(8,), batch_size=4)
  assert train.eval_batch_size(config) == train.EVAL_MIN_BATCH  # a multiple of 4
  iwae = dataclasses.replace(config, batch_size=20, objective="iwae", iw_samples=50)
  assert train.eval_batch_size(iwae) == 20  # already 1,000 decoder samples a batch
  graphdef, state = train.init_state(config)
  x = (np.random.default_rng(0).random((10, 28, 28, 1)) > 0.5).astype(np.uint8)
  evaluate = jax.jit(train.make_evaluate(graphdef, config, None))
  sums = [evaluate(state.params, *data.batch_stack(x, np.arange(10), b), jax.random.key(3))
          for b in (4, 12)]  # 3 padded batches of 4; 1 of 12
  assert float(sums[0]["count"]) == float(sums[1]["count"]) == 10
  for k in train.METRIC_KEYS:
    np.testing.assert_allclose(sums[1][k], sums[0][k], rtol=1e-6)


@pytest.mark.parametrize("model,schedule", [("cvae", "constant"), ("mlp2", "burda")])
def test_init_state_is_the_eager_initialization_bit_for_bit(model, schedule):
  """init_state's one compiled program computes what the initializers compute op by op, and
  abstract_state has its layout."""
  config = dataclasses.replace(config_lib.tiny(), model=model, lr_schedule=schedule,
                               learning_rate=1e-3, seed=3)
  graphdef, state = train.init_state(config)
  eager_graphdef, params = nnx.split(models.create_model(config, train.run_keys(config.seed).init))
  want = train.TrainState(jnp.zeros((), jnp.int32), params,
                          train.make_optimizer(config).init(params))
  assert graphdef == eager_graphdef
  assert jax.tree.structure(state) == jax.tree.structure(want)
  for got, expected in zip(jax.tree.leaves(state), jax.tree.leaves(want)):
    assert got.dtype == expected.dtype
    np.testing.assert_array_equal(np.asarray(got), np.asarray(expected))
  abstract_graphdef, abstract = train.abstract_state(config)
  assert abstract_graphdef == graphdef
  assert jax.tree.map(lambda a: (a.shape, a.dtype), abstract) == jax.tree.map(
      lambda a: (a.shape, a.dtype), state)
