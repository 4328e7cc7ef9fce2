"""Reading captchas with a trained run: `Predictor`, and reading files in batches as they come.

The saved config carries the model and its image size, and the model carries its preprocessing,
so a loaded reader reads images exactly as evaluation did.
"""

import functools
import itertools
import logging
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from captcha_jax import checkpoints, decoding, images, labelled, models, readers
from captcha_jax import workdir as run_folder
from captcha_jax.errors import ConfigError, DataError
from captcha_jax.readers import BATCH_SIZE
from captcha_jax.vocab import Vocab

# Batches of at least this many images are split over the mesh's devices; smaller ones run on
# one, where the hand-off to a second device would cost more than it saves (bench/README.md).
MIN_SPLIT = 16
# A readings file (`captcha-jax-predict --output FILE.csv`), as config.pseudo_labels reads it.
READINGS_COLUMNS = ('file', 'text', 'raw_text', 'confidence')


class Predictor(readers.ImageReader):
  """A trained CRNN; `predict` reads a list of images (`readers.ImageReader`).

  Batches of MIN_SPLIT images or more are split over all axes of `mesh` (default: every device
  of this process); smaller ones run on one device, each call on the next in turn, so calls
  from several threads (the service's) run side by side. Each batch is padded to a power of two,
  so at most log2(batch_size) + 1 shapes are ever compiled per device.
  """

  def __init__(
    self,
    config: ml_collections.ConfigDict,
    variables: dict,
    batch_size: int = BATCH_SIZE,
    mesh: Mesh | None = None,
  ):
    self.config = config
    self.vocab = Vocab(config.alphabet)
    self.height, self.width = config.image_height, config.image_width
    self.fixed_label_length = config.fixed_label_length
    self.model = models.create_model(config.model, self.vocab.num_classes)
    self.batch_size = batch_size
    self.step: int | None = None  # the checkpoint's step, when read from a workdir
    self._check_variables(variables)
    self.mesh = mesh or Mesh(np.asarray(jax.local_devices()), ('batch',))
    self.variables = jax.device_put(variables, NamedSharding(self.mesh, P()))
    self._split = NamedSharding(self.mesh, P(self.mesh.axis_names))  # batch over every axis
    self._devices = list(self.mesh.devices.flat)
    self._variables_on = {  # each device's replica of the weights, without a copy
      d: jax.tree.map(functools.partial(self._on, d), self.variables) for d in self._devices
    }
    self._turn = itertools.count()
    self._apply = jax.jit(lambda v, x: jax.nn.log_softmax(self.model.apply(v, x, train=False)))

  @classmethod
  def from_workdir(cls, workdir: str | Path, step: int | None = None, **kwargs) -> 'Predictor':
    """WORKDIR's saved config and its chosen intact checkpoint (`checkpoints.reading_order`),
    or `step`; or, for a folder `export --format reader` wrote, that reader."""
    from captcha_jax import transfer

    if step is None and transfer.is_reader(workdir):
      return cls(*transfer.load_pretrained(Path(workdir).expanduser()), **kwargs)
    workdir = Path(workdir)
    config = run_folder.read_config(workdir)
    candidates = [step] if step is not None else checkpoints.reading_order(workdir)
    if not candidates:
      raise ConfigError(
        f'{str(workdir)!r} has no checkpoint yet: train first, or wait for the first epoch.'
      )
    step, state = checkpoints.first_intact(
      candidates, functools.partial(checkpoints.restore_raw, workdir), repr(str(workdir))
    )
    if not isinstance(state, dict) or not {'ema_params', 'batch_stats'} <= set(state):
      raise ConfigError(
        f'The checkpoint in {str(workdir)!r} is not a captcha_jax one (no ema_params and '
        'batch_stats): was this workdir written by another program?'
      )
    predictor = cls(
      config, {'params': state['ema_params'], 'batch_stats': state['batch_stats']}, **kwargs
    )
    predictor.step = step
    return predictor

  @classmethod
  def pretrained(cls, **kwargs) -> 'Predictor':
    """The general captcha reader shipped with the package, for any captcha with no training;
    `predict(images, allowed=..., length=...)` restricts it to a site's characters and length."""
    from captcha_jax import transfer

    return cls(*transfer.load_pretrained(), **kwargs)

  def _check_variables(self, variables: dict) -> None:
    expected = jax.eval_shape(
      functools.partial(self.model.init, train=False),
      jax.random.key(0),
      jax.ShapeDtypeStruct((1, self.height, self.width, 3), jnp.uint8),
    )
    got = jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), x.dtype), variables)
    if jax.tree.structure(expected) != jax.tree.structure(got) or any(
      a.shape != b.shape
      for a, b in zip(jax.tree.leaves(expected), jax.tree.leaves(got), strict=True)
    ):
      raise ConfigError(
        'The checkpoint does not fit the model of its config (another alphabet or '
        'architecture?): retrain, or load it with the config it was trained with.'
      )

  def log_probs(self, pixels: np.ndarray) -> np.ndarray:
    """The model's per-step log-probabilities [n, steps, classes] of decoded images, batch_size
    at a time, each batch padded to a power of two, so a few batch sizes are ever compiled."""
    images.check_batch(pixels, self.height, self.width)
    return np.concatenate(
      [
        self._batch_log_probs(pixels[i : i + self.batch_size])
        for i in range(0, len(pixels), self.batch_size)
      ]
    )

  def _batch_log_probs(self, pixels: np.ndarray) -> np.ndarray:
    n = len(pixels)
    size = min(1 << (n - 1).bit_length(), self.batch_size)
    devices = self.mesh.size if size >= MIN_SPLIT else 1
    size = -(-size // devices) * devices
    padded = np.concatenate([pixels, np.repeat(pixels[:1], size - n, 0)])
    return np.asarray(self._log_probs(padded, split=devices > 1))[:n]

  @staticmethod
  def _on(device, x: jax.Array) -> jax.Array:
    return next(s.data for s in x.addressable_shards if s.device == device)

  def _log_probs(self, pixels: np.ndarray, split: bool) -> jax.Array:
    if split:
      return self._apply(self.variables, jax.device_put(pixels, self._split))
    device = self._devices[next(self._turn) % len(self._devices)]
    return self._apply(self._variables_on[device], jax.device_put(pixels, device))


def expand_paths(inputs: Iterable[str]) -> Iterator[Path]:
  """Files as given, and the images directly inside any folder given (or inside the folder it
  alone holds, as a zip unpacks: `labelled.inside_lone_folders`), lazily; what a folder holds
  besides (sub-folders, other files) is named in a warning."""
  for item in inputs:
    path = Path(item)
    if path.is_dir():
      found, passed_over = labelled.find_images(labelled.inside_lone_folders(path))
      if passed_over:
        logging.warning(
          'Passing over %d entries of %s:\n  %s', len(passed_over), path, '\n  '.join(passed_over)
        )
      yield from found
    else:
      yield path


def readings_row(path: Path, reading: decoding.Reading) -> list[str]:
  """A reading as a row of a readings file (READINGS_COLUMNS); the path absolute, so the file is
  read from other folders."""
  return [os.path.abspath(path), reading.text, reading.raw_text, f'{reading.confidence:.6f}']


def read_files(
  reader, paths: Iterable[Path], allowed: str = '', length: int = 0
) -> Iterator[tuple[Path, decoding.Reading | DataError]]:
  """(path, reading) for every path, in order, or (path, the error) for a file that cannot be
  read. Decodes and reads `reader.batch_size` images at a time, so memory stays flat however
  many files come."""
  pending: list[tuple[Path, np.ndarray | DataError]] = []
  decoded = 0

  def flush():
    pixels = [x for _, x in pending if isinstance(x, np.ndarray)]
    readings = iter(reader.read_pixels(np.stack(pixels), allowed, length) if pixels else ())
    for path, x in pending:
      yield path, next(readings) if isinstance(x, np.ndarray) else x
    pending.clear()

  for path in paths:
    try:
      pending.append((path, reader.decode(path)))
      decoded += 1
    except DataError as e:
      pending.append((path, e))
    if decoded == reader.batch_size:
      yield from flush()
      decoded = 0
  yield from flush()


if __name__ == '__main__':
  from captcha_jax import cli

  cli.predict()
