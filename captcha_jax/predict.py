"""Reading captchas with a trained run: `Predictor` and a command line.

    python -m captcha_jax.predict --workdir runs/default path/to/226md.png more/images/

prints `path<TAB>text<TAB>confidence` per image. The saved config carries the preprocessing, so a
loaded model reads images exactly as it did in training.
"""

import dataclasses
import functools
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from captcha_jax import checkpoints, ctc, data, host, models
from captcha_jax.vocab import Vocab

# Batches of at least this many images are split over the mesh's devices; smaller ones run on
# one. On 2 CPU devices a batch of 64 read 349 → 467 images/s split, but one image took 5 → 12 ms
# (the hand-off to the other device costs more than it saves); 8 images broke even.
MIN_SPLIT = 16
BATCH_SIZE = 32  # images per call of the model; the commands split it over the CPU's cores


@dataclasses.dataclass(frozen=True)
class Prediction:
  text: str  # post-processed to config.label_length when that is set
  raw_text: str  # greedy CTC decoding
  confidence: float  # probability of the greedy path


class Predictor:
  """A trained CRNN with its preprocessing; `predict` reads a list of images.

  Batches of MIN_SPLIT images or more are split over all axes of `mesh` (default: every device
  of this process), smaller ones run on its first device.
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
    self.model = models.create_model(config.model, self.vocab.num_classes)
    self.batch_size = batch_size
    self._check_variables(variables)
    self.mesh = mesh or Mesh(np.asarray(jax.local_devices()), ('batch',))
    self.variables = jax.device_put(variables, NamedSharding(self.mesh, P()))
    self._split = NamedSharding(self.mesh, P(self.mesh.axis_names))  # batch over every axis
    self._one_device = self.mesh.devices.flat[0]
    self._variables_one = jax.tree.map(self._on_one_device, self.variables)  # no copy
    self._apply = jax.jit(lambda v, x: jax.nn.log_softmax(self.model.apply(v, x, train=False)))

  @classmethod
  def from_workdir(cls, workdir: str | Path, step: int | None = None, **kwargs) -> 'Predictor':
    """Loads WORKDIR's saved config and its best checkpoint (or `step`)."""
    workdir = Path(workdir)
    config_path = workdir / 'config.json'
    if not config_path.exists():
      raise FileNotFoundError(
        f'{str(workdir)!r} has no config.json: is it the --workdir of a training run?'
      )
    config = ml_collections.ConfigDict(json.loads(config_path.read_text()))
    manager = checkpoints.checkpoint_manager(workdir, read_only=True)
    step = step if step is not None else checkpoints.best_step(manager)
    if step is None:
      raise FileNotFoundError(
        f'{str(workdir)!r} has no checkpoint yet: train first, or wait for the first epoch.'
      )
    state = checkpoints.restore_raw(manager, step)
    manager.close()
    if not isinstance(state, dict) or not {'params', 'batch_stats'} <= set(state):
      raise ValueError(
        f'Step {step} in {str(workdir)!r} is not a captcha_jax checkpoint (no params and '
        'batch_stats): was this workdir written by another program?'
      )
    # Checkpoints from before the moving average was added hold only the raw weights.
    params = state.get('ema_params', state['params'])
    variables = {'params': params, 'batch_stats': state['batch_stats']}
    return cls(config, variables, **kwargs)

  def _check_variables(self, variables: dict) -> None:
    shape = (1, self.config.image_height, self.config.image_width, 3)
    expected = jax.eval_shape(
      functools.partial(self.model.init, train=False),
      jax.random.key(0),
      jax.ShapeDtypeStruct(shape, jnp.float32),
    )
    got = jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), x.dtype), variables)
    if jax.tree.structure(expected) != jax.tree.structure(got) or any(
      a.shape != b.shape
      for a, b in zip(jax.tree.leaves(expected), jax.tree.leaves(got), strict=True)
    ):
      raise ValueError(
        'The checkpoint does not fit the model of its config (another alphabet or '
        'architecture?): retrain, or load it with the config it was trained with.'
      )

  def predict(self, images: Sequence) -> list[Prediction]:
    """Reads images given as paths, PIL images or uint8 arrays, in order."""
    h, w = self.config.image_height, self.config.image_width
    pixels = np.stack([data.load_image(im, h, w) for im in images]) if len(images) else None
    results = []
    for start in range(0, len(images), self.batch_size):
      chunk = pixels[start : start + self.batch_size]
      # Pad to a power of two: one image costs one image, and at most log2(batch_size) + 1
      # shapes are ever compiled.
      size = min(1 << (len(chunk) - 1).bit_length(), self.batch_size)
      devices = self.mesh.size if size >= MIN_SPLIT else 1
      size = -(-size // devices) * devices
      padded = np.concatenate([chunk, np.repeat(chunk[:1], size - len(chunk), 0)])
      log_probs = np.asarray(self._log_probs(data.normalize(padded), split=devices > 1))
      log_probs = log_probs[: len(chunk)]
      raw, confidence, fixed = ctc.decode_texts(log_probs, self.vocab, self.config.label_length)
      results += [
        Prediction(f, r, float(c)) for f, r, c in zip(fixed, raw, confidence, strict=True)
      ]
    return results

  def _on_one_device(self, x: jax.Array) -> jax.Array:
    return next(s.data for s in x.addressable_shards if s.device == self._one_device)

  def _log_probs(self, images: np.ndarray, split: bool) -> jax.Array:
    if split:
      return self._apply(self.variables, jax.device_put(images, self._split))
    return self._apply(self._variables_one, jax.device_put(images, self._one_device))


def expand_paths(inputs: Sequence[str]) -> list[Path]:
  """Files as given, and the images inside any folder given."""
  paths = []
  for item in inputs:
    path = Path(item)
    if path.is_dir():
      paths += data.find_images(path)
    elif path.exists():
      paths.append(path)
    else:
      raise FileNotFoundError(f'{item!r}: no such file or folder.')
  return paths


def main(argv):
  from absl import flags

  host.use_cpu_cores(BATCH_SIZE)  # before JAX starts its CPU backend
  checkpoints.quiet_orbax()
  if len(argv) < 2:
    raise SystemExit('Give one or more image files or folders to read.')
  try:
    predictor = Predictor.from_workdir(flags.FLAGS.workdir)
    paths = expand_paths(argv[1:])
    predictions = predictor.predict(paths)
  except (FileNotFoundError, ValueError) as e:
    raise SystemExit(f'error: {e}') from None
  for path, p in zip(paths, predictions, strict=True):
    sys.stdout.write(f'{path}\t{p.text}\t{p.confidence:.3f}\n')


if __name__ == '__main__':
  from absl import app, flags

  flags.DEFINE_string('workdir', None, 'The --workdir of a training run.', required=True)
  app.run(main)
