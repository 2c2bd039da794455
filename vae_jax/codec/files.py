"""Images to compressed-file bytes and back, with either codec; one `Codec` per model."""

import dataclasses
import struct
import sys
import time

import numpy as np
from flax import nnx
from tqdm import tqdm

from vae_jax.codec import bitsback, choice, container, context, lossy
from vae_jax import interrupts
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
  pixels: int = int(np.prod(IMAGE_SHAPE))  # per image

  @property
  def bits_per_pixel(self) -> float:
    return 8 * self.file_bytes / (self.images * self.pixels)

  @property
  def images_per_sec(self) -> float:
    return self.images / self.seconds if self.seconds > 0 else float("inf")

  def summary(self, verb: str) -> str:
    return (f"{verb} {self.images} images ({self.mode}): {self.file_bytes} bytes, "
            f"{self.bits_per_pixel:.4f} bits/pixel, {self.images_per_sec:.0f} images/s "
            f"(compilation {self.compile_seconds:.1f} s apart)")


def _progress(total: int, show: bool, desc: str):
  return tqdm(total=total, unit="img", desc=desc, disable=not show, leave=False, file=sys.stderr)


def _stopping(bar):
  """bar.update, then a stop on a signal: between batches, before anything is written."""
  def update(count: int) -> None:
    bar.update(count)
    interrupts.stop(lambda: f"interrupted after {bar.n} of {bar.total} images: nothing was "
                            "written; the same command again starts over")
  return update


def check_lossless(box: container.Container, name: str):
  """(settings, layout) of a lossless file, every header field bounded by what its payload holds."""
  settings = bitsback.Settings.unpack(box.settings)
  return settings, choice.parse(box.payload, box.count, box.image_shape[:2], settings, name)


def check(raw: bytes, name: str) -> container.Container:
  """The file's container after every check that needs no model: damage, and header fields
  (counts, sizes, settings) beyond what the payload can hold, refused before anything is allocated."""
  box = container.parse(raw, name)
  if box.mode == container.LOSSLESS:
    check_lossless(box, name)
  else:
    lossy.check_settings(box.settings, box.count, len(box.payload), name)
  return box


class Codec:
  """The codecs of one model; its fingerprint ties files to it. Files are written in container
  format `version` (the newest by default) and read in every format `container` knows."""

  def __init__(self, model: nnx.Module, config, settings: bitsback.Settings = bitsback.Settings(),
               version: int = container.VERSION):
    self.model, self.config = model, config
    self.settings = settings
    self.version = version
    self.integer_format = container.INTEGER_FORMATS[version]
    self.fingerprint = fingerprint(model, config, self.integer_format)
    self._tables = {}
    self._other_versions = {}

  def tables(self, precision: Precision = Precision()) -> ModelTables:
    if precision not in self._tables:
      self._tables[precision] = ModelTables(self.model, precision, fmt=self.integer_format)
    return self._tables[precision]

  def _container(self, mode, images, settings: bytes, payload: bytes) -> bytes:
    return container.Container(mode, self.fingerprint, len(images), images.shape[1:],
                               container.images_crc(images), settings, payload,
                               self.version).to_bytes()

  # ------------------------------------------------------------ lossless

  def _warm_lossless(self, tables: ModelTables, settings: bitsback.Settings, count: int) -> float:
    start = tables.compile_seconds
    rows = {(shape, shape) for shape in bitsback.batch_shapes(count, settings)}
    if settings.samples > 1:  # the importance weights' calls
      rows |= {(shape, shape * settings.samples) for shape, _ in rows}
    for shape, pixel_rows in sorted(rows):
      tables.posterior(np.zeros((shape,) + IMAGE_SHAPE, np.uint8), shape)
      tables.pixels(np.zeros((pixel_rows, tables.latent_dim), np.int32), pixel_rows,
                    np.zeros((shape,) + IMAGE_SHAPE, np.uint8), repeat=pixel_rows // shape)
    return tables.compile_seconds - start

  def encode_lossless(self, images: np.ndarray, show_progress: bool = False,
                      methods: frozenset = choice.ALL, samples: int = 1) -> tuple[bytes, Report]:
    """File bytes of {0,1} images (N, H, W, 1), each image by the shortest of `methods`
    (`choice`); the VAE takes part for images of its size, with `samples` latents per image
    (BB-IS when > 1)."""
    if images.ndim != 4 or images.shape[3] != 1:
      raise UserError(f"images of shape {images.shape[1:]} cannot be coded (one channel needed)")
    if not 1 <= samples <= bitsback.MAX_SAMPLES:
      raise UserError(f"--samples must be from 1 to {bitsback.MAX_SAMPLES}, got {samples}")
    settings = dataclasses.replace(self.settings, samples=samples,
                                   max_batch=min(self.settings.max_batch,
                                                 bitsback.MAX_ROWS // samples))
    use_vae = images.shape[1:] == IMAGE_SHAPE and context.VAE in methods
    if not use_vae and methods == {context.VAE}:
      raise UserError(f"images are {images.shape[1]}x{images.shape[2]}; the model codes "
                      f"{IMAGE_SHAPE[0]}x{IMAGE_SHAPE[1]} (the context coder takes any size)")
    tables = self.tables(settings.precision) if use_vae else None
    compile_seconds = 0.0
    if use_vae:  # the chain's shapes, and max_batch for the estimates
      compile_seconds = self._warm_lossless(tables, settings, len(images))
      compile_seconds += self._warm_lossless(tables, dataclasses.replace(settings, samples=1),
                                             10 * settings.max_batch * settings.ramp)
    start = time.perf_counter()
    with _progress(len(images), show_progress, "encode") as bar:
      result = choice.encode(tables, images, settings, frozenset(methods), _stopping(bar))
    raw = self._container(container.LOSSLESS, images, settings.pack(), result.payload)
    seconds = time.perf_counter() - start
    per_method = np.bincount(result.method, minlength=3)
    return raw, Report(len(images), len(raw), seconds, compile_seconds, "lossless",
                       {"initial_bits": result.initial_bits, "payload_bytes": len(result.payload),
                        "header_bytes": len(raw) - len(result.payload),
                        "images_per_method": {context.METHODS[m]: int(per_method[m])
                                              for m in context.METHODS},
                        "max_image_bits": float(result.bits.max()),
                        "image_bits": result.bits},
                       int(np.prod(images.shape[1:])))

  def _decode_lossless(self, box: container.Container, name: str, show_progress: bool):
    settings, layout = check_lossless(box, name)
    hw = box.image_shape[:2]
    tables, compile_seconds = None, 0.0
    if layout.per_method[context.VAE]:
      tables = self.tables(settings.precision)
      compile_seconds = self._warm_lossless(tables, settings, layout.per_method[context.VAE])
    start = time.perf_counter()
    with _progress(box.count, show_progress, "decode") as bar:
      images, _ = choice.decode(tables, layout, box.count, hw, settings, _stopping(bar))
    return images, compile_seconds, time.perf_counter() - start

  # ------------------------------------------------------------ lossy

  def encode_lossy(self, images: np.ndarray, step: float, show_progress: bool = False):
    """(file bytes, report, decoded images (N, pixels), their logits) coding quantized means;
    `step` is in units of each dimension's average posterior standard deviation."""
    if not (np.isfinite(step) and step > 0):
      raise UserError(f"--step must be a positive number, got {step}")
    if images.shape[1:] != IMAGE_SHAPE:
      raise UserError(f"images are {images.shape[1]}x{images.shape[2]}; lossy coding needs the "
                      f"model's {IMAGE_SHAPE[0]}x{IMAGE_SHAPE[1]} (lossless takes any size)")
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
                              container.words_to_bytes(words), self.version)
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
    box = check(raw, name)
    if box.version != self.version:  # an older format: its own integer networks
      if box.version not in self._other_versions:
        self._other_versions[box.version] = Codec(self.model, self.config, self.settings,
                                                  box.version)
      return self._other_versions[box.version].decode(raw, name, show_progress)
    container.check_model(box, self.fingerprint, name)
    if box.mode == container.LOSSY and box.image_shape != IMAGE_SHAPE:
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
                          container.MODES[box.mode], pixels=int(np.prod(box.image_shape)))
