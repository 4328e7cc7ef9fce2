"""Reading captchas with an exported .onnx file: onnxruntime, NumPy and Pillow, no JAX.

    reader = OnnxReader('reader.onnx')
    reader.predict(['226md.png'])[0].text

Images are decoded and read by `readers.ImageReader`, the same code the JAX Predictor uses, so
both read an image alike. This module must stay importable without jax, flax
or optax: a deployment installs only onnxruntime, numpy and pillow (tests check sys.modules).
"""

import hashlib
from pathlib import Path

import numpy as np
import onnxruntime as ort

from captcha_jax import images, readers
from captcha_jax.errors import DataError
from captcha_jax.vocab import Vocab

# The file's contract, written by `onnx_export.to_onnx`: metadata_props keys, all string values.
FORMAT_VERSION = 2  # 2: signed with META_SHA256
META_FORMAT = 'captcha_jax_format'
META_KEYS = ('alphabet', 'image_height', 'image_width', 'fixed_label_length')
# The sha256 of the file as written with UNSIGNED in its place: the one value a file cannot hold
# a digest of itself in, so the exporter hashes first, then writes the digest over the zeros.
META_SHA256 = 'captcha_jax_sha256'
UNSIGNED = '0' * 64


def _entry(digest: str) -> bytes:
  """The metadata entry {META_SHA256: digest} as protobuf writes it (StringStringEntryProto:
  field 1 the key, field 2 the 64-character value)."""
  key = META_SHA256.encode()
  return b'\x0a' + bytes([len(key)]) + key + b'\x12\x40' + digest.encode()


def sign(blob: bytes) -> bytes:
  """A serialized model holding {META_SHA256: UNSIGNED}, with the digest written in."""
  digest = hashlib.sha256(blob).hexdigest()
  if blob.count(_entry(UNSIGNED)) != 1:
    raise ValueError(f'the model must hold {META_SHA256} = UNSIGNED exactly once')
  return blob.replace(_entry(UNSIGNED), _entry(digest))


def signature_holds(blob: bytes, digest: str) -> bool:
  """Whether `blob`, a file `sign` wrote, is as it was signed with `digest`."""
  entry = _entry(digest)
  return (
    blob.count(entry) == 1
    and hashlib.sha256(blob.replace(entry, _entry(UNSIGNED))).hexdigest() == digest
  )


class OnnxReader(readers.ImageReader):
  """An exported CRNN with its alphabet and image size; `predict` reads a list of images.

  `threads`: onnxruntime's intra-op threads (None: its default, one per physical core).
  """

  def __init__(
    self, path: str | Path, threads: int | None = None, batch_size: int = readers.BATCH_SIZE
  ):
    self.path = Path(path)
    self.batch_size = batch_size
    if not self.path.is_file():
      raise DataError(f'{str(self.path)!r}: no such file (expected a .onnx from onnx_export).')
    options = ort.SessionOptions()
    if threads is not None:
      options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1  # the graph is one chain: parallelism is within ops
    options.log_severity_level = 3  # errors only; onnxruntime warns about unused initializers
    blob = self.path.read_bytes()
    try:
      self._session = ort.InferenceSession(blob, options, providers=['CPUExecutionProvider'])
    except Exception as e:  # onnxruntime raises its own Fail/InvalidProtobuf/... classes
      raise DataError(f'{str(self.path)!r} is not a readable ONNX model ({e}).') from e
    meta = self._session.get_modelmeta().custom_metadata_map
    missing = [k for k in (META_FORMAT, *META_KEYS) if k not in meta]
    if missing:
      raise DataError(
        f'{str(self.path)!r} is an ONNX model but not a captcha_jax reader (no {missing} in its '
        'metadata): export one with captcha_jax.onnx_export.'
      )
    if meta[META_FORMAT] != str(FORMAT_VERSION):
      raise DataError(
        f'{str(self.path)!r} has captcha_jax ONNX format {meta[META_FORMAT]}, this reader '
        f'reads format {FORMAT_VERSION}: use the captcha_jax version that exported it, or '
        'export it again.'
      )
    if not signature_holds(blob, meta.get(META_SHA256, '')):
      raise DataError(
        f'{str(self.path)!r} is damaged or altered: its sha256 is not the one it was exported '
        'with. Export it again.'
      )
    self.vocab = Vocab(meta['alphabet'])
    self.height = int(meta['image_height'])
    self.width = int(meta['image_width'])
    self.fixed_label_length = int(meta['fixed_label_length'])
    (self._input,) = self._session.get_inputs()

  def log_probs(self, pixels: np.ndarray) -> np.ndarray:
    """log-probabilities [batch, time, classes] float32 of uint8 [batch, height, width, 3]."""
    images.check_batch(pixels, self.height, self.width)
    return self._session.run(None, {self._input.name: pixels})[0]
