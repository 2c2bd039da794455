"""The compressed file format (little-endian throughout).

    offset  size  field
    0       8     magic b"\\x89VJZ\\r\\n\\x1a\\n"
    8       2     format version (3: lossless images by the shortest of bits-back (BB-IS with k samples),
                  context coder, raw, and integer networks of format 1; 4: the same with format 2)
    10      1     mode: 1 lossless bits-back, 2 lossy
    11      32    model fingerprint (SHA-256 of its config and parameters, tables.fingerprint)
    43      4     image count
    47      2, 2, 1  image height, width, channels
    52      4     CRC32 of the decoded images (np.packbits of their {0,1} pixels)
    56      2     length S of the coder settings, then S bytes of them (the mode's own layout)
    58+S    8     length P of the payload, then P bytes of it
    66+S+P  4     CRC32 of every byte before it

Any damage (a flipped bit, truncation, trailing bytes, another file) is reported by `parse` as a
one-line UserError before decoding starts; a file from another model by `check_model`.
"""

import dataclasses
import struct
import zlib

import numpy as np

from vae_jax.errors import UserError

MAGIC = b"\x89VJZ\r\n\x1a\n"
VERSION = 4                      # what encoders write
INTEGER_FORMATS = {3: 1, 4: 2}   # the versions decoders read: their integer networks' format
LOSSLESS, LOSSY = 1, 2
MODES = {LOSSLESS: "lossless", LOSSY: "lossy"}
_HEAD = struct.Struct("<8sHB32sIHHBI")


@dataclasses.dataclass(frozen=True)
class Container:
  mode: int
  fingerprint: bytes
  count: int
  image_shape: tuple[int, int, int]
  images_crc: int
  settings: bytes
  payload: bytes
  version: int = VERSION

  def to_bytes(self) -> bytes:
    head = _HEAD.pack(MAGIC, self.version, self.mode, self.fingerprint, self.count, *self.image_shape,
                      self.images_crc)
    body = (head + struct.pack("<H", len(self.settings)) + self.settings
            + struct.pack("<Q", len(self.payload)) + self.payload)
    return body + struct.pack("<I", zlib.crc32(body))


def images_crc(images_u8: np.ndarray) -> int:
  """CRC32 of {0,1} images, packed 8 pixels a byte in C order."""
  return zlib.crc32(np.packbits(np.asarray(images_u8, np.uint8).reshape(-1)).tobytes())


def parse(raw: bytes, name: str) -> Container:
  """The container in `raw` (the bytes of file `name`), or a one-line UserError saying what is wrong."""
  if not raw:
    raise UserError(f"{name}: the file is empty")
  if len(raw) < len(MAGIC) or raw[:len(MAGIC)] != MAGIC:
    raise UserError(f"{name}: not a vae_jax compressed file (wrong magic bytes)")
  if len(raw) < _HEAD.size + 2:
    raise UserError(f"{name}: truncated ({len(raw)} bytes, shorter than the header)")
  _, version, mode, fp, count, h, w, c, crc_images = _HEAD.unpack_from(raw)
  if version not in INTEGER_FORMATS:
    raise UserError(f"{name}: format version {version} is not supported (this codec reads "
                    f"{', '.join(map(str, INTEGER_FORMATS))})")
  offset = _HEAD.size
  (settings_len,) = struct.unpack_from("<H", raw, offset)
  offset += 2
  if len(raw) < offset + settings_len + 8:
    raise UserError(f"{name}: truncated ({len(raw)} bytes, the header needs more)")
  settings = raw[offset:offset + settings_len]
  offset += settings_len
  (payload_len,) = struct.unpack_from("<Q", raw, offset)
  offset += 8
  expected = offset + payload_len + 4
  if len(raw) < expected:
    raise UserError(f"{name}: truncated ({len(raw)} bytes, the header says {expected})")
  if len(raw) > expected:
    raise UserError(f"{name}: corrupt ({len(raw) - expected} bytes after the end of the data)")
  (crc,) = struct.unpack_from("<I", raw, expected - 4)
  if zlib.crc32(raw[:expected - 4]) != crc:
    raise UserError(f"{name}: corrupt (CRC32 mismatch)")
  if mode not in MODES:
    raise UserError(f"{name}: unknown coding mode {mode}")
  if c != 1 or h < 1 or w < 1 or count < 1:
    raise UserError(f"{name}: corrupt ({count} images of {h}x{w}x{c})")
  return Container(mode, fp, count, (h, w, c), crc_images, settings,
                   raw[offset:offset + payload_len], version)


def check_model(container: Container, fingerprint: bytes, name: str) -> None:
  if container.fingerprint != fingerprint:
    raise UserError(f"{name}: compressed with another model (fingerprint "
                    f"{container.fingerprint.hex()[:12]}, this model's is {fingerprint.hex()[:12]})")


def words_to_bytes(words: np.ndarray) -> bytes:
  return np.asarray(words, "<u4").tobytes()


def bytes_to_words(raw: bytes, name: str) -> np.ndarray:
  if len(raw) % 4:
    raise UserError(f"{name}: corrupt (payload is not a whole number of 32-bit words)")
  return np.frombuffer(raw, "<u4").astype(np.uint32)
