"""A trained reader as one `jax.export` file that runs without captcha_jax's model code.

    python -m captcha_jax.export --workdir runs/default --out model.bin
    python -m captcha_jax.export --workdir runs/default --format onnx --out model.onnx
    python -m captcha_jax.export --workdir runs/default --format reader --out my_reader/

(ONNX: `onnx_export.py`; a reader folder like captcha_jax/pretrained/: `transfer.save_reader`.)

The file: MAGIC, a format version, the header's length, the sha256 of header and payload, a
JSON header (alphabet, image size, fixed label length), and the serialized `jax.export` of uint8
images [batch, height, width, 3] → log-probabilities [batch, time, classes], weights and
preprocessing baked in, the batch size symbolic. `load` checks every part before use, so a
damaged file is an error, never wrong readings. It needs jax and NumPy alone.
"""

import hashlib
import json
import struct
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from captcha_jax import images, readers
from captcha_jax.errors import DataError
from captcha_jax.vocab import Vocab

MAGIC = b'CAPTCHAJAX'
VERSION = 2


def export_predictor(predictor) -> bytes:
  """The predictor's model, preprocessing included, as bytes for `load`."""
  config = predictor.config
  variables = jax.tree.map(jnp.asarray, predictor.variables)

  def infer(pixels):
    return jax.nn.log_softmax(predictor.model.apply(variables, pixels, train=False))

  (batch,) = jax.export.symbolic_shape('batch')
  spec = jax.ShapeDtypeStruct((batch, config.image_height, config.image_width, 3), jnp.uint8)
  payload = bytes(
    jax.export.export(jax.jit(infer), platforms=('cpu', 'cuda', 'tpu'))(spec).serialize()
  )
  header = json.dumps(
    {
      'alphabet': config.alphabet,
      'image_height': config.image_height,
      'image_width': config.image_width,
      'fixed_label_length': config.fixed_label_length,
    }
  ).encode()
  digest = hashlib.sha256(header + payload).digest()
  return MAGIC + struct.pack('<HI', VERSION, len(header)) + digest + header + payload


class ExportedReader(readers.ImageReader):
  """An exported model: `predict(images)` reads images of any source, as the Predictor does."""

  def __init__(self, blob: bytes, name: str = 'the file', batch_size: int = readers.BATCH_SIZE):
    fixed = len(MAGIC) + struct.calcsize('<HI')
    if not blob.startswith(MAGIC):
      raise DataError(f'{name} is not a captcha_jax export (it does not start with {MAGIC!r}).')
    if len(blob) < fixed + 32:
      raise DataError(f'{name} is truncated ({len(blob)} bytes): export the run again.')
    version, size = struct.unpack('<HI', blob[len(MAGIC) : fixed])
    if version != VERSION:
      raise DataError(
        f'{name} is a captcha_jax export of format {version}; this version reads format '
        f'{VERSION}: export the run again.'
      )
    digest, rest = blob[fixed : fixed + 32], blob[fixed + 32 :]
    if hashlib.sha256(rest).digest() != digest:
      raise DataError(f'{name} is damaged (truncated or altered): export the run again.')
    self.meta = json.loads(rest[:size])
    payload = rest[size:]
    self._exported = jax.export.deserialize(bytearray(payload))
    self.vocab = Vocab(self.meta['alphabet'])
    self.height, self.width = self.meta['image_height'], self.meta['image_width']
    self.fixed_label_length = self.meta['fixed_label_length']
    self.batch_size = batch_size

  def log_probs(self, pixels: np.ndarray) -> np.ndarray:
    """log-probabilities [batch, time, classes] float32 of uint8 [batch, height, width, 3]."""
    images.check_batch(pixels, self.height, self.width)
    return np.asarray(self._exported.call(jnp.asarray(pixels)))


def load(path: str | Path) -> ExportedReader:
  """Reads a file written by `python -m captcha_jax.export`."""
  path = Path(path)
  try:
    blob = path.read_bytes()
  except OSError as e:
    raise DataError(f'{str(path)!r} cannot be read ({e}).') from e
  return ExportedReader(blob, repr(str(path)))


if __name__ == '__main__':
  from captcha_jax import cli

  cli.export()
