"""Orbax checkpoints of the training state, one per epoch, restorable onto any device layout."""

import os

import jax
import orbax.checkpoint as ocp


class Checkpoints:
  """Epoch-numbered checkpoints under `directory` (the newest `keep` are kept)."""

  def __init__(self, directory: str, keep: int = 2):
    self.manager = ocp.CheckpointManager(
        os.path.abspath(directory),
        options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True))

  def latest_epoch(self) -> int | None:
    return self.manager.latest_step()

  def save(self, epoch: int, state) -> None:
    self.manager.save(epoch, args=ocp.args.StandardSave(state))
    self.manager.wait_until_finished()

  def restore(self, epoch: int, like, sharding):
    """Restores epoch's state with the structure of `like`, every leaf placed with `sharding`."""
    abstract = jax.tree.map(
        lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=sharding), like)
    return self.manager.restore(epoch, args=ocp.args.StandardRestore(abstract))

  def close(self) -> None:
    self.manager.close()
