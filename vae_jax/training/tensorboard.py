"""TensorBoard event files in the workdir: each epoch's metrics as scalars, its picture as an image.

    tensorboard --logdir runs/

shows every run under runs/ (tensorboardX writes the files; TensorFlow is not needed). Events are
written synchronously at the end of each epoch, so a full disk is reported like any other write.
"""

import os
import struct
import time

from tensorboardX.event_file_writer import EventsWriter
from tensorboardX.proto.event_pb2 import Event, SessionLog
from tensorboardX.proto.summary_pb2 import Summary

from vae_jax.training.workdir import writing

_GROUPS = ("train", "test")


def tag(key: str) -> str:
  """'train_loss' -> 'train/loss', 'test_elbo' -> 'test/elbo', others under 'run/'."""
  group, _, name = key.partition("_")
  return f"{group}/{name}" if group in _GROUPS and name else f"run/{key}"


def png_image(path: str) -> Summary.Image:
  """A PNG file as TensorBoard's image summary (the encoded bytes as they are)."""
  with open(path, "rb") as f:
    png = f.read()
  width, height = struct.unpack(">II", png[16:24])  # the IHDR chunk
  return Summary.Image(height=height, width=width, colorspace=1, encoded_image_string=png)


class EpochWriter:
  """One process's event file; with `first_epoch` > 1 (a resume), TensorBoard drops the earlier
  files' events from that epoch on, as those epochs are trained again."""

  def __init__(self, workdir: str, first_epoch: int):
    self.workdir = workdir
    with writing(workdir):
      self._writer = EventsWriter(os.path.join(workdir, "events"), f".{os.getpid()}")
    self.path = self._writer._file_name  # pylint: disable=protected-access
    if first_epoch > 1:  # TensorBoard drops the earlier files' events from this step on
      self._write(Event(wall_time=time.time(), step=first_epoch,
                        session_log=SessionLog(status=SessionLog.START)))

  def _write(self, event: Event) -> None:
    with writing(self.path):
      self._writer.write_event(event)
      self._writer.flush()

  def write(self, row: dict, picture: str | None = None) -> None:
    """The row's numbers at step row['epoch'], and the PNG at `picture` if that file exists."""
    values = [Summary.Value(tag=tag(k), simple_value=float(v)) for k, v in row.items()
              if k not in ("epoch", "step") and isinstance(v, (int, float))]
    if picture and os.path.exists(picture):
      values.append(Summary.Value(tag="pictures/samples_and_reconstructions",
                                  image=png_image(picture)))
    self._write(Event(wall_time=time.time(), step=row["epoch"], summary=Summary(value=values)))

  def close(self) -> None:
    with writing(self.path):
      self._writer.close()
