"""Export a trained reader as one file that runs without captcha_jax's model code.

    python -m captcha_jax.export --workdir runs/default --out model.bin

The file holds a JSON header (alphabet, image size, known length) and a serialized `jax.export`
of uint8 images [batch, height, width, 3] → log-probabilities [batch, time, classes], with the
weights and the normalisation baked in and the batch size left symbolic. `load` reads it back with
jax and NumPy alone.
"""

import json
import struct
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

MAGIC = b'CAPTCHAJAX1'


def export_predictor(predictor) -> bytes:
  """The predictor's model, preprocessing included, as bytes for `load`."""
  from captcha_jax import data

  config = predictor.config
  mean = jnp.asarray(data.IMAGENET_MEAN)
  std = jnp.asarray(data.IMAGENET_STD)
  variables = jax.tree.map(jnp.asarray, predictor.variables)

  def infer(images):
    x = (images.astype(jnp.float32) / 255.0 - mean) / std
    return jax.nn.log_softmax(predictor.model.apply(variables, x, train=False))

  (batch,) = jax.export.symbolic_shape('batch')
  spec = jax.ShapeDtypeStruct((batch, config.image_height, config.image_width, 3), jnp.uint8)
  exported = jax.export.export(jax.jit(infer), platforms=('cpu', 'cuda', 'tpu'))(spec)
  header = json.dumps(
    {
      'alphabet': config.alphabet,
      'image_height': config.image_height,
      'image_width': config.image_width,
      'label_length': config.label_length,
    }
  ).encode()
  return MAGIC + struct.pack('<I', len(header)) + header + bytes(exported.serialize())


class ExportedReader:
  """An exported model: `read(images)` → texts (greedy CTC) of uint8 [b, h, w, 3] images."""

  def __init__(self, blob: bytes):
    if not blob.startswith(MAGIC):
      raise ValueError('Not a captcha_jax export (wrong magic bytes).')
    offset = len(MAGIC)
    (size,) = struct.unpack('<I', blob[offset : offset + 4])
    self.meta = json.loads(blob[offset + 4 : offset + 4 + size])
    self._exported = jax.export.deserialize(bytearray(blob[offset + 4 + size :]))

  def log_probs(self, images: np.ndarray) -> np.ndarray:
    return np.asarray(self._exported.call(jnp.asarray(images, jnp.uint8)))

  def read(self, images: np.ndarray) -> list[str]:
    best = self.log_probs(images).argmax(-1)
    texts = []
    for path in best:
      keep = np.r_[True, path[1:] != path[:-1]] & (path != 0)
      texts.append(''.join(self.meta['alphabet'][c - 1] for c in path[keep]))
    return texts


def load(path: str | Path) -> ExportedReader:
  """Reads a file written by `python -m captcha_jax.export`."""
  return ExportedReader(Path(path).read_bytes())


def main(argv):
  del argv
  from absl import flags

  from captcha_jax import checkpoints
  from captcha_jax.predict import Predictor

  checkpoints.quiet_orbax()
  try:
    predictor = Predictor.from_workdir(flags.FLAGS.workdir)
  except (FileNotFoundError, ValueError) as e:
    raise SystemExit(f'error: {e}') from None
  blob = export_predictor(predictor)
  Path(flags.FLAGS.out).write_bytes(blob)
  print(f'Wrote {flags.FLAGS.out} ({len(blob) / 1e6:.1f} MB): load it with captcha_jax.export.load')


if __name__ == '__main__':
  from absl import app, flags

  flags.DEFINE_string('workdir', None, 'The --workdir of a training run.', required=True)
  flags.DEFINE_string('out', None, 'File to write.', required=True)
  app.run(main)
