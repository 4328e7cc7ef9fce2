"""What every reader shares (`predict.Predictor`, `onnx_reader.OnnxReader`,
`export.ExportedReader`): images of any source in, readings out, `batch_size` at a time.

NumPy and Pillow only, so the readers that never import JAX read exactly as the Predictor does.
"""

from collections.abc import Sequence

import numpy as np

from captcha_jax import decoding, images
from captcha_jax.vocab import Vocab

BATCH_SIZE = 32  # images per call of the model


class ImageReader:
  """A model's reading of images. A subclass sets height, width, vocab, fixed_label_length and
  batch_size, and gives `log_probs`."""

  height: int
  width: int
  vocab: Vocab
  fixed_label_length: int  # 0: texts of any length
  batch_size: int = BATCH_SIZE

  def log_probs(self, pixels: np.ndarray) -> np.ndarray:
    """log-probabilities [n, time, classes] float32 of uint8 [n, height, width, 3]."""
    raise NotImplementedError

  def decode(self, source: images.ImageSource) -> np.ndarray:
    """One image (a path, bytes, a PIL image or a uint8 array) as this model's input."""
    return images.load_image(source, self.height, self.width)

  def check_restriction(self, allowed: str = '', length: int = 0) -> None:
    """Raises ConfigError now for characters the model never reads or a length it cannot read
    (too few CTC steps): restricted so, every image would fail."""
    decoding.check_allowed(allowed, self.vocab.alphabet)
    if length:
      self.read_pixels(np.full((1, self.height, self.width, 3), 255, np.uint8), allowed, length)

  def read_pixels(
    self, pixels: np.ndarray, allowed: str = '', length: int = 0
  ) -> list[decoding.Reading]:
    """Readings of decoded images [n, height, width, 3] uint8."""
    return decoding.read(
      self.log_probs(pixels), self.vocab, self.fixed_label_length, allowed, length
    )

  def predict(
    self, sources: Sequence[images.ImageSource], allowed: str = '', length: int = 0
  ) -> list[decoding.Reading]:
    """Readings of images given as paths, encoded bytes, PIL images or uint8 arrays, in order.

    Each is decoded and resized to the model's size; `allowed` restricts the readings to those
    characters (the others are masked out before the argmax), `length` > 0 to texts of that
    length (by default the model's fixed length, if it has one; `decoding.read`). Raises
    DataError naming the first image that cannot be decoded.
    """
    readings = []
    for start in range(0, len(sources), self.batch_size):
      chunk = sources[start : start + self.batch_size]
      readings += self.read_pixels(np.stack([self.decode(s) for s in chunk]), allowed, length)
    return readings
