"""Images to compressed-file bytes and back, with either codec; one `Codec` per model."""

import dataclasses
import struct
import sys
import time

import numpy as np
from flax import nnx
from tqdm import tqdm

from vae_jax.codec import bitsback, container, lossy
from vae_jax.codec.tables import ModelTables, Precision, fingerprint
from vae_jax.errors import UserError
from vae_jax.nn.models import IMAGE_SHAPE


@dataclasses.dataclass
class Report:
  """What one encode or decode did; `seconds` excludes `compile_seconds`."""
  images: int
  file_bytes: int
  seconds: float
  compile_seconds: float
  mode: str
  extra: dict = dataclasses.field(default_factory=dict)

  @property
  def bits_per_pixel(self) -> float:
    return 8 * self.file_bytes / (self.images * int(np.prod(IMAGE_SHAPE)))

  @property
  def images_per_sec(self) -> float:
    return self.images / self.seconds if self.seconds > 0 else float("inf")

  def summary(self, verb: str) -> str:
    return (f"{verb} {self.images} images ({self.mode}): {self.file_bytes} bytes, "
            f"{self.bits_per_pixel:.4f} bits/pixel, {self.images_per_sec:.0f} images/s "
            f"(compilation {self.compile_seconds:.1f} s apart)")


def _progress(total: int, show: bool, desc: str):
  return tqdm(total=total, unit="img", desc=desc, disable=not show, leave=False, file=sys.stderr)


class Codec:
  """The codecs of one model; its fingerprint ties files to it."""

  def __init__(self, model: nnx.Module, config, settings: bitsback.Settings = bitsback.Settings()):
    self.model = model
    self.settings = settings
    self.fingerprint = fingerprint(model, config)
    self._tables = {}

  def tables(self, precision: Precision = Precision()) -> ModelTables:
    if precision not in self._tables:
      self._tables[precision] = ModelTables(self.model, precision)
    return self._tables[precision]

  def _container(self, mode, images, settings: bytes, payload: bytes) -> bytes:
    return container.Container(mode, self.fingerprint, len(images), IMAGE_SHAPE,
                               container.images_crc(images), settings, payload).to_bytes()

  # ------------------------------------------------------------ lossless

  def _warm_lossless(self, tables: ModelTables, settings: bitsback.Settings, count: int) -> float:
    start = tables.compile_seconds
    for shape in bitsback.batch_shapes(count, settings):
      tables.posterior(np.zeros((shape,) + IMAGE_SHAPE, np.uint8), shape)
      tables.pixels(np.zeros((shape, tables.latent_dim), np.int32), shape)
    return tables.compile_seconds - start

  def encode_lossless(self, images: np.ndarray, show_progress: bool = False) -> tuple[bytes, Report]:
    """File bytes of {0,1} images (N, 28, 28, 1) under bits-back coding."""
    settings = self.settings
    tables = self.tables(settings.precision)
    compile_seconds = self._warm_lossless(tables, settings, len(images))
    start = time.perf_counter()
    with _progress(len(images), show_progress, "encode") as bar:
      result = bitsback.encode(tables, images, settings, bar.update)
    payload = struct.pack("<I", result.omitted) + container.words_to_bytes(result.words)
    raw = self._container(container.LOSSLESS, images, settings.pack(), payload)
    seconds = time.perf_counter() - start
    return raw, Report(len(images), len(raw), seconds, compile_seconds, "lossless",
                       {"initial_bits": result.initial_bits, "payload_bytes": len(payload),
                        "header_bytes": len(raw) - len(payload)})

  def _decode_lossless(self, box: container.Container, name: str, show_progress: bool):
    settings = bitsback.Settings.unpack(box.settings)
    if len(box.payload) < 4:
      raise UserError(f"{name}: corrupt (lossless payload too short)")
    (omitted,) = struct.unpack_from("<I", box.payload)
    words = container.bytes_to_words(box.payload[4:], name)
    tables = self.tables(settings.precision)
    compile_seconds = self._warm_lossless(tables, settings, box.count)
    start = time.perf_counter()
    with _progress(box.count, show_progress, "decode") as bar:
      images = bitsback.decode(tables, words, omitted, box.count, settings, bar.update)
    return images, compile_seconds, time.perf_counter() - start

  # ------------------------------------------------------------ lossy

  def encode_lossy(self, images: np.ndarray, step: float, show_progress: bool = False):
    """(file bytes, report, decoded images (N, pixels), their logits) coding quantized means;
    `step` is in units of each dimension's average posterior standard deviation."""
    if not (np.isfinite(step) and step > 0):
      raise UserError(f"--step must be a positive number, got {step}")
    step = float(np.float32(step))  # the header's precision, so both sides dequantize alike
    tables, batch = self.tables(), self.settings.max_batch
    compile_seconds = self._warm_lossy(tables, batch)
    start = time.perf_counter()
    q, scales = lossy.codes(tables, images, step, batch)
    prior = lossy.FactorizedPrior.fit(q)
    words = lossy.encode_symbols(q, prior)
    decoded, logits = lossy.reconstruct(tables, q, lossy.dimension_steps(step, scales), batch)
    box = container.Container(container.LOSSY, self.fingerprint, len(images), IMAGE_SHAPE,
                              container.images_crc(decoded),
                              lossy.pack_settings(step, batch, scales, prior),
                              container.words_to_bytes(words))
    raw = box.to_bytes()
    seconds = time.perf_counter() - start
    return raw, Report(len(images), len(raw), seconds, compile_seconds, f"lossy, step {step:g}",
                       {"coded_dims": len(prior.coded_dims())}), decoded, logits

  def _warm_lossy(self, tables: ModelTables, batch: int) -> float:
    start = tables.compile_seconds
    tables.means(np.zeros((batch,) + IMAGE_SHAPE, np.uint8), batch)
    tables.mode_image(np.zeros((batch, tables.latent_dim), np.float32), batch)
    return tables.compile_seconds - start

  def _decode_lossy(self, box: container.Container, name: str):
    step, batch, scales, prior = lossy.unpack_settings(box.settings)
    if len(prior.lo) != self.tables().latent_dim:
      raise UserError(f"{name}: corrupt (the lossy prior has {len(prior.lo)} dimensions)")
    tables = self.tables()
    compile_seconds = self._warm_lossy(tables, batch)
    start = time.perf_counter()
    q = lossy.decode_symbols(container.bytes_to_words(box.payload, name), prior, box.count)
    decoded, _ = lossy.reconstruct(tables, q, lossy.dimension_steps(step, scales), batch)
    return decoded.reshape((box.count,) + IMAGE_SHAPE), compile_seconds, time.perf_counter() - start

  # ------------------------------------------------------------ either

  def decode(self, raw: bytes, name: str, show_progress: bool = False) -> tuple[np.ndarray, Report]:
    """The images in a compressed file's bytes; UserError (one line) for any mismatch or damage."""
    box = container.parse(raw, name)
    container.check_model(box, self.fingerprint, name)
    if box.image_shape != IMAGE_SHAPE:
      raise UserError(f"{name}: holds {box.image_shape} images; the model codes {IMAGE_SHAPE}")
    if box.count < 1:
      raise UserError(f"{name}: corrupt (image count {box.count})")
    try:
      if box.mode == container.LOSSLESS:
        images, compile_seconds, seconds = self._decode_lossless(box, name, show_progress)
      else:
        images, compile_seconds, seconds = self._decode_lossy(box, name)
    except MemoryError:
      raise UserError(f"{name}: {box.count} images do not fit in memory") from None
    if container.images_crc(images) != box.images_crc:
      raise UserError(f"{name}: the decoded images fail their CRC32: the model computes "
                      "differently here than where the file was made")
    return images, Report(box.count, len(raw), seconds, compile_seconds,
                          container.MODES[box.mode])
