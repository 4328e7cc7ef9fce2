"""A tensorflow-datasets builder for a resolved captcha set: the same splits as the folder
pipeline, stored as array_record and read record by record (`sources.RecordSource`), so neither
building nor reading needs TensorFlow, and a set of any size trains in flat memory. Install with
`pip install 'captcha-jax[tfds]'`; train from it with `--config.data_source=tfds`.

A prepared copy is named by a fingerprint of everything it was made from (the settings and
every source file's path, size and modification time), so a changed folder is prepared anew
rather than silently read stale, and tfds writes a split only once it is complete.
"""

import dataclasses
import hashlib
import json
import os
from pathlib import Path

import ml_collections
import tensorflow_datasets as tfds
from PIL import Image

from captcha_jax import images, labelled
from captcha_jax.errors import DataError

TFDS_SPLITS = {'train': 'train', 'val': 'validation', 'test': 'test'}


@dataclasses.dataclass
class CaptchaConfig(tfds.core.BuilderConfig):
  """What a prepared copy holds: its image size, and the examples of each split."""

  image_height: int = 50
  image_width: int = 200
  # split → [(path, text)]; left out of its repr, which tfds logs: a line of every file otherwise.
  examples: dict = dataclasses.field(default_factory=dict, repr=False)


class CaptchaImages(tfds.core.GeneratorBasedBuilder):
  """Captcha images with their text, split into train/validation/test like `data.py`."""

  VERSION = tfds.core.Version('2.0.0')
  RELEASE_NOTES = {'2.0.0': 'Splits given by captcha_jax.data.resolve; images stored resized.'}

  def _info(self) -> tfds.core.DatasetInfo:
    # Built directly rather than from configs, which read metadata files beside this module.
    return tfds.core.DatasetInfo(
      builder=self,
      description='CAPTCHA images with their text.',
      features=tfds.features.FeaturesDict(
        {
          'image': tfds.features.Image(shape=(None, None, 3)),
          'label': tfds.features.Text(),
          'file_name': tfds.features.Text(),
        }
      ),
      supervised_keys=('image', 'label'),
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # the examples are given, nothing to download
    c = self.builder_config
    size = part_size(c.image_height, c.image_width)
    return {
      part: self._generate_examples(examples[i * size : (i + 1) * size])
      for name, examples in c.examples.items()
      for i, part in enumerate(part_names(name, len(examples), size))
    }

  def _generate_examples(self, examples):
    c = self.builder_config
    for path, text in examples:
      try:
        pixels = images.load_image(path, c.image_height, c.image_width)
      except DataError:
        continue  # reported when the in-memory pipeline decodes; here only skipped
      # PIL images: tfds encodes them with Pillow, where NumPy arrays would need TensorFlow.
      yield path, {'image': Image.fromarray(pixels), 'label': text, 'file_name': path}


def part_size(height: int, width: int) -> int:
  """Examples per tfds split. tfds holds a split's records in memory while it writes them, and
  past MAX_MEM_BUFFER_SIZE (1 GB) spills them to disk through TensorFlow's file API, which this
  package does not install; so a large split is written as parts that each fit that buffer, an
  uncompressed image being the most a record's PNG takes."""
  from tensorflow_datasets.core import shuffle

  return max(1, int(0.9 * shuffle.MAX_MEM_BUFFER_SIZE) // (height * width * 3 + 1024))


def part_names(split: str, count: int, size: int) -> list[str]:
  """The tfds splits holding `count` examples of `split`, `size` to a part, in order."""
  name = TFDS_SPLITS[split]
  parts = max(1, -(-count // size))
  return [name] if parts == 1 else [f'{name}_part{i}' for i in range(parts)]


def fingerprint(
  config: ml_collections.ConfigDict, examples: dict[str, list[labelled.Example]]
) -> str:
  """A hash of the settings and of every source file's path, size and modification time."""
  digest = hashlib.sha256()
  fields = [config.image_height, config.image_width, config.alphabet, config.max_label_length]
  fields.append(part_size(config.image_height, config.image_width))
  digest.update(json.dumps(fields).encode())
  for name, split in sorted(examples.items()):
    for e in split:
      stat = os.stat(e.path)
      digest.update(f'{name}\0{e.path}\0{e.text}\0{stat.st_size}\0{stat.st_mtime_ns}\n'.encode())
  return digest.hexdigest()[:16]


def builder(
  config: ml_collections.ConfigDict, examples: dict[str, list[labelled.Example]]
) -> CaptchaImages:
  """The builder of these examples, prepared (once per fingerprint) under config.tfds_data_dir."""
  builder_config = CaptchaConfig(
    name=f'set_{fingerprint(config, examples)}',
    image_height=config.image_height,
    image_width=config.image_width,
    examples={k: [(e.path, e.text) for e in v] for k, v in examples.items()},
  )
  result = CaptchaImages(
    config=builder_config,
    data_dir=str(Path(config.tfds_data_dir).expanduser()),
    file_format='array_record',
  )
  result.download_and_prepare()
  return result
