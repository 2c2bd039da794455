"""`train_and_evaluate(config, workdir)`: the whole run, its workdir, metrics, pictures and resume."""

import contextlib
import dataclasses
import functools
import json
import os
import sys
import time

import jax
import numpy as np
from flax import nnx
from tqdm import tqdm

from vae_jax import data as data_lib
from vae_jax.nn import models, resolve
from vae_jax import interrupts
from vae_jax.training import parallel, pictures, supervise, tensorboard, train
from vae_jax.training import workdir as workdir_lib
from vae_jax.training.checkpoints import Checkpoints
from vae_jax.config import Config
from vae_jax.errors import UserError
from vae_jax.training.workdir import CONFIG_FILE, METRICS_FILE

# Settings a resumed run may change: results depend on neither the placement nor the device count.
RESUMABLE_CHANGES = ("epochs", "parallel", "devices", "micro_batches")


class TrainingDiverged(UserError):
  """The loss became NaN or infinite."""


def _is_main() -> bool:
  return jax.process_index() == 0


def _log(message: str, every_process: bool = False) -> None:
  if every_process or _is_main():
    try:
      tqdm.write(message, file=sys.stdout)
    except OSError as e:
      raise UserError(f"cannot write to standard output: {workdir_lib.reason(e)}") from None


def _kept(epoch: int) -> str:
  """What a run stopped during `epoch` leaves to resume from."""
  if epoch > 1:
    return f"the checkpoint of epoch {epoch - 1} is kept"
  return "no epoch had finished, so there is no checkpoint"


def read_metrics(workdir: str) -> list[dict]:
  """The run's rows of metrics.jsonl (epochs 1..N); a torn last line is dropped with a warning."""
  return workdir_lib.read_rows(os.path.join(workdir, METRICS_FILE))


def _prepare_workdir(config: Config, workdir: str, resume: bool) -> None:
  """Refuses to overwrite an earlier run; on resume, insists on the same settings."""
  if not resume:
    if os.path.isdir(workdir) and set(os.listdir(workdir)) - {workdir_lib.LOCK_FILE}:
      raise UserError(f"workdir {workdir} is not empty; pass --resume to continue its run "
                      "or choose a new --workdir")
    return
  saved = workdir_lib.read_config(workdir)
  if saved is None:
    raise UserError(f"--resume: {workdir} holds no run ({CONFIG_FILE} not found)")
  differ = [k for k in workdir_lib.settings_differ(config, saved) if k not in RESUMABLE_CHANGES]
  if differ:
    changes = ", ".join(f"{k}: {saved.get(k)!r} -> {getattr(config, k)!r}" for k in differ)
    raise UserError(f"--resume: settings differ from the run in {workdir} ({changes})")


class _Run:
  """The state of one invocation: data on the host, compiled steps, fixed picture inputs."""

  def __init__(self, config: Config, workdir: str, dataset: data_lib.Dataset):
    self.config, self.workdir = config, workdir
    self.strategy = parallel.make_strategy(config.parallel, config.devices)
    self.strategy.check_batch(config.batch_size)
    self.train_images = dataset.train_images
    # Fixed pixels are binarized once; dynamic ones are drawn by the training step itself from
    # the intensities, afresh at every step (train.dynamic_pixels).
    self.train_x = (data_lib.binarize(dataset.train_images) if config.binarize == "threshold"
                    else dataset.train_images)
    self.test_x = data_lib.binarized_test(dataset.test_images, config.binarize)
    self.rows = self.strategy.process_rows(config.batch_size)
    self.steps_per_epoch = data_lib.num_batches(len(self.train_images), config.batch_size)
    self.graphdef, state = train.init_state(config)
    self.state = self.strategy.put_state(state)
    self.steps = train.Steps(self.graphdef, config, self.strategy, self.steps_per_epoch)
    self.keys = train.run_keys(config.seed)
    order = np.arange(len(self.test_x))
    eval_batch = train.eval_batch_size(config)
    self.test_batches = self.strategy.put_batches(*data_lib.batch_stack(
        self.test_x, order, eval_batch, self.strategy.process_rows(eval_batch)))

  def host_params(self):
    return self.strategy.fetch(self.state.params)

  # ------------------------------------------------------------ pictures

  @functools.cached_property
  def _picture_arrays(self):
    """Jitted (params) -> (samples from the fixed eps, reconstructions of the fixed test digits)."""
    c = self.config
    eps = jax.random.normal(self.keys.pictures, (c.num_samples, c.latent_dim))
    originals = self.test_x[:c.num_reconstructions].astype(np.float32)

    @jax.jit
    def arrays(params):
      model = nnx.merge(self.graphdef, params)
      mean, _ = model.encode(originals)
      return model.sample(eps_BxL=eps), model.decode(mean, apply_sigmoid=True)

    return originals, arrays

  def save_pictures(self, epoch: int) -> None:
    if not _is_main():
      return
    originals, arrays = self._picture_arrays
    samples, recons = (np.asarray(a) for a in arrays(self.host_params()))
    pictures.save_epoch_grid(self.workdir, epoch, pictures.epoch_grid(samples, originals, recons))

  def save_final_pictures(self, rows: list[dict]) -> None:
    if not _is_main():
      return
    pictures.save_gif(self.workdir)
    pictures.save_curves(self.workdir, rows)
    if self.config.latent_dim == 2:
      # jitted: run eagerly, each of the decoder's ops would be compiled on its own (~100 compiles,
      # seconds at the end of every 2-D run)
      decode = jax.jit(lambda params, z: nnx.merge(self.graphdef, params).decode(
          z, apply_sigmoid=True))
      decoded = np.asarray(decode(self.host_params(), pictures.manifold_grid()))
      pictures.save_manifold(self.workdir, decoded)

  # ------------------------------------------------------------ one epoch

  def train_epoch(self, epoch: int) -> tuple[dict, float]:
    c = self.config
    order = data_lib.epoch_order(c.seed, epoch, len(self.train_images))
    xs, masks = self.strategy.put_batches(
        *data_lib.batch_stack(self.train_x, order, c.batch_size, self.rows))
    length, unroll = train.chunk_plan(c, jax.default_backend())
    if c.loop == "step" or length > self.steps_per_epoch:
      length = 1
    full = self.steps_per_epoch - self.steps_per_epoch % length if length > 1 else 0
    totals = {k: 0.0 for k in (*train.METRIC_KEYS, "count")}
    first_step = int(self.strategy.fetch(self.state.step))
    pending = []  # outputs not yet read: the host reads one call behind, so the device never waits

    def consume():
      start, size, sums, losses = pending.pop(0)
      sums, losses = self.strategy.fetch((sums, losses))
      bad = np.flatnonzero(~np.isfinite(np.atleast_1d(losses)))
      if bad.size:
        step = first_step + start + int(bad[0]) + 1
        raise TrainingDiverged(f"non-finite loss at step {step} (epoch {epoch}); stopped, "
                               f"{_kept(epoch)}")
      for k in totals:
        totals[k] += float(sums[k])
      bar.update(size)

    bar = tqdm(total=self.steps_per_epoch, desc=f"epoch {epoch}/{c.epochs}", unit="batch",
               leave=False, disable=supervise.progress_disable() if _is_main() else True)
    start_time = time.perf_counter()
    compile_before = self.steps.compile_seconds
    for start in range(0, self.steps_per_epoch):
      if interrupts.requested():
        bar.close()
        interrupts.check(epoch)
      if start < full:
        if start % length:
          continue
        self.state, sums, losses = self.steps.call(
            self.steps.chunk(length, unroll), self.state, xs, masks, self.keys.noise, start)
        pending.append((start, length, sums, losses))
      else:  # the steps that do not fill a chunk, or every step with --loop step
        self.state, sums = self.steps.call(
            self.steps.step, self.state, *self.strategy.batch_at((xs, masks), start),
            self.keys.noise)
        pending.append((start, 1, sums, sums["loss"] / sums["count"]))
      if len(pending) > 1:
        consume()
    while pending:
      consume()
    compile_seconds = self.steps.compile_seconds - compile_before
    seconds = time.perf_counter() - start_time - compile_seconds
    bar.close()
    row = {f"train_{k}": totals[k] / totals["count"] for k in train.METRIC_KEYS}
    row["images_per_sec"] = totals["count"] / seconds
    row["compile_seconds"] = compile_seconds
    return row, seconds

  def evaluate(self, epoch: int) -> dict:
    params = self.state.params
    sums = self.steps.call(self.steps.evaluate, params, *self.test_batches,
                           jax.random.fold_in(self.keys.eval, epoch))
    m = train.means(self.strategy.fetch(sums))
    return {"test_elbo": -m["loss"], "test_rec": m["rec"], "test_kl": m["kl"]}


def train_and_evaluate(config: Config, workdir: str, resume: bool = False) -> list[dict]:
  """Trains config.epochs epochs, writing metrics, pictures and checkpoints to `workdir`.

  The workdir is locked for the run (by the main process); a second run on it is refused.
  """
  resolve.check(config)
  with workdir_lib.locked(workdir) if _is_main() else contextlib.nullcontext():
    try:
      return _train_and_evaluate(config, workdir, resume)
    except jax.errors.JaxRuntimeError as e:
      lost = parallel.lost_process(e, workdir_lib.last_complete_epoch(workdir))
      if lost is None:
        raise
      raise lost from None


def _train_and_evaluate(config: Config, workdir: str, resume: bool) -> list[dict]:
  _prepare_workdir(config, workdir, resume)
  supervise.tell(workdir, jax.process_index(), jax.process_count())
  earlier_rows = read_metrics(workdir)
  parallel.sync_processes("workdir read")  # by every process before any process writes to it
  dataset = data_lib.load(config.data).take_train(config.train_size)
  if len(dataset.test_images) == 0:
    raise UserError(f"{dataset.name} has no test images")
  run = _Run(config, workdir, dataset)
  workdir_lib.create(workdir)
  checkpoints = Checkpoints(os.path.join(workdir, "checkpoints"), config.checkpoints_to_keep)
  start_epoch = 0
  if resume:  # the newest checkpoint that restores on every process and has its metrics row
    like, at_most = run.strategy.host_state(run.state), len(earlier_rows)
    while True:
      try:
        start_epoch, host, failed = *checkpoints.restore_newest(
            like, run.strategy.replicated, at_most=at_most), None
      except UserError as e:  # told to the others first, so that none waits for this process
        start_epoch, host, failed = -1, None, e
      at_most, newest = parallel.min_max_over_processes(start_epoch)
      if failed is not None:
        raise failed
      if at_most < 0:
        raise UserError("--resume: another process found no checkpoint that restores (its own "
                        "error says why); nothing was changed")
      if at_most == newest:
        break
    checkpoints.remove_after(start_epoch)
    if host is not None:
      run.state = run.strategy.put_state(host)
  if _is_main():  # on --resume too: the run now goes to config.epochs, perhaps on other devices
    workdir_lib.write_config(workdir, config)
  rows = [r for r in earlier_rows if r["epoch"] <= start_epoch]
  metrics_path = os.path.join(workdir, METRICS_FILE)
  if _is_main():  # epochs after the last checkpoint are redone, identically, so drop their rows
    workdir_lib.write_rows(metrics_path, rows)
  events = tensorboard.EpochWriter(workdir, start_epoch + 1) if _is_main() else None
  _log(f"data {dataset.name}: {len(run.train_images)} train / {len(run.test_x)} test images; "
       f"{run.strategy.kind} on {run.strategy.num_devices} {jax.devices()[0].platform} device(s), "
       f"{parallel.processes_text()}; epochs {start_epoch + 1}..{config.epochs}")
  if jax.process_count() > 1:  # every process says which part of each batch it feeds
    mine = run.rows
    _log(f"process {jax.process_index()} of {jax.process_count()} feeds rows "
         f"{mine.start}..{mine.stop - 1} of every global batch of {config.batch_size}: "
         f"{run.steps_per_epoch * (mine.stop - mine.start)} of the "
         f"{run.steps_per_epoch * config.batch_size} training slots an epoch", every_process=True)
  # An autoencoder's test_elbo is minus its reconstruction loss (objectives.py), not an ELBO.
  test_label = "test ELBO" if models.get_model_class(config.model).stochastic else "test -loss"
  try:
    for epoch in range(start_epoch + 1, config.epochs + 1):
      interrupts.check(epoch)
      epoch_start = time.perf_counter()
      row, train_seconds = run.train_epoch(epoch)
      eval_start = time.perf_counter()
      row.update(run.evaluate(epoch))
      row.update(epoch=epoch, step=epoch * run.steps_per_epoch,
                 train_seconds=train_seconds, eval_seconds=time.perf_counter() - eval_start)
      if not np.isfinite(row["test_elbo"]):
        raise TrainingDiverged(f"non-finite test ELBO after epoch {epoch}; stopped, "
                               f"{_kept(epoch)}")
      run.save_pictures(epoch)
      checkpoints.save(epoch, run.strategy.host_state(run.state))
      row["seconds"] = time.perf_counter() - epoch_start
      rows.append(row)
      if _is_main():
        workdir_lib.append_line(metrics_path, json.dumps(row))
        events.write(row, pictures.epoch_grid_path(workdir, epoch))
      _log(f"epoch {epoch:4d}  train loss {row['train_loss']:9.3f}  {test_label} "
           f"{row['test_elbo']:9.3f}  {row['images_per_sec']:9.0f} images/s  "
           f"{row['seconds']:6.1f} s")
  finally:
    checkpoints.close()
    if events is not None:
      events.close()
  if rows:
    run.save_final_pictures(rows)
  # The others wait for process 0's pictures here, not in JAX's time-limited shutdown barrier.
  parallel.sync_processes("run finished")
  return rows


def restore_model(workdir: str, dtype: str | None = None) -> tuple[Config, int, nnx.Module]:
  """(config, epoch, model) of a run's newest checkpoint that restores, on the default device.

  dtype: the model's GEMM inputs ('float32' or 'bfloat16', `Config.dtype`) if not the run's own;
  the parameters are the same either way (float32)."""
  config = workdir_lib.load_config(workdir)
  checkpoints = Checkpoints(os.path.join(workdir, "checkpoints"), config.checkpoints_to_keep)
  try:
    graphdef, like = train.abstract_state(config if dtype is None
                                          else dataclasses.replace(config, dtype=dtype))
    epoch, state = checkpoints.restore_newest(
        like, jax.sharding.SingleDeviceSharding(jax.devices()[0]))
    if state is None:
      raise UserError(f"{workdir} has no checkpoint")
  finally:
    checkpoints.close()
  return config, epoch, nnx.merge(graphdef, state.params)
