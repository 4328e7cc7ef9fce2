"""A tensorflow-datasets builder for label-named captcha folders (the Kaggle
"captcha-version-2-images" data by default), with the same 80/10/10 split as `data.py`.

Stored as array_record and read through `as_data_source`, so neither building nor reading needs
TensorFlow. Install with `pip install 'captcha-jax[tfds]'`; train from it with
`--config.data_source=tfds`.
"""

import dataclasses
import hashlib
import json
import zipfile
from pathlib import Path

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

from captcha_jax import data
from captcha_jax.vocab import Vocab


@dataclasses.dataclass
class CaptchaConfig(tfds.core.BuilderConfig):
  """What the split depends on: the alphabet and length filter, the fractions and seed."""

  alphabet: str = '2345678bcdefgmnpwxy'
  max_label_length: int = 5
  image_height: int = 50
  image_width: int = 200
  split: tuple[float, float, float] = (0.8, 0.1, 0.1)
  split_seed: int = 0


class CaptchaImages(tfds.core.GeneratorBasedBuilder):
  """Captcha images with their text, split into train/validation/test like `data.py`."""

  VERSION = tfds.core.Version('1.0.0')
  BUILDER_CONFIGS = [CaptchaConfig(name='default')]
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
    'Download "captcha-version-2-images" from Kaggle (fournierp/captcha-version-2-images) and put '
    'its zip, or the images themselves (files like 226md.png), in the manual_dir.'
  )

  def _info(self) -> tfds.core.DatasetInfo:
    # Built directly rather than from configs, which read metadata files beside this module.
    return tfds.core.DatasetInfo(
      builder=self,
      description='CAPTCHA images named by their text.',
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
    c = self.builder_config
    dataset = data.load_dataset(
      image_folder(Path(dl_manager.manual_dir)),
      Vocab(c.alphabet),
      height=c.image_height,
      width=c.image_width,
      max_label_length=c.max_label_length,
    )
    train, val, test = data.split_indices(len(dataset), c.split, c.split_seed)
    return {
      'train': self._generate_examples(dataset, train),
      'validation': self._generate_examples(dataset, val),
      'test': self._generate_examples(dataset, test),
    }

  def _generate_examples(self, dataset: data.Dataset, indices: np.ndarray):
    for i in indices:
      name = Path(dataset.paths[i]).name
      # PIL images: tfds encodes them with Pillow, where NumPy arrays would need TensorFlow.
      yield (
        name,
        {
          'image': Image.fromarray(dataset.images[i]),
          'label': dataset.texts[i],
          'file_name': name,
        },
      )


def image_folder(manual_dir: Path) -> Path:
  """The folder of images in `manual_dir`: itself, a folder inside, or an unpacked zip."""
  zips = sorted(manual_dir.glob('*.zip'))
  if zips:
    target = manual_dir / 'extracted'
    if not target.exists():
      with zipfile.ZipFile(zips[0]) as archive:
        archive.extractall(target)
    manual_dir = target
  candidates = [manual_dir, *sorted(p for p in manual_dir.rglob('*') if p.is_dir())]
  for folder in candidates:
    if any(p.suffix.lower() in data.IMAGE_EXTENSIONS for p in folder.iterdir()):
      return folder
  raise data.DataError(
    f'No images in {str(manual_dir)!r}. {CaptchaImages.MANUAL_DOWNLOAD_INSTRUCTIONS}'
  )


def load_splits(config, vocab: Vocab) -> dict[str, data.Dataset]:
  """train/val/test from the builder (prepared on first use from config.data_dir)."""
  fields = dict(
    alphabet=config.alphabet,
    max_label_length=config.max_label_length,
    image_height=config.image_height,
    image_width=config.image_width,
    split=tuple(config.split),
    split_seed=config.split_seed,
  )
  # Named by its fields: each combination is prepared once, in its own folder.
  digest = hashlib.sha1(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:12]
  builder_config = CaptchaConfig(name=f'config_{digest}', **fields)
  builder = CaptchaImages(
    config=builder_config, data_dir=config.tfds_data_dir, file_format='array_record'
  )
  builder.download_and_prepare(
    download_config=tfds.download.DownloadConfig(manual_dir=config.data_dir)
  )
  splits = {}
  for name, split in (('train', 'train'), ('val', 'validation'), ('test', 'test')):
    source = builder.as_data_source(split)
    records = [source[i] for i in range(len(source))]
    texts = [r['label'].decode() for r in records]
    images = [data.load_image(r['image'], config.image_height, config.image_width) for r in records]
    names = [r['file_name'].decode() for r in records]
    splits[name] = data.dataset_from_arrays(images, texts, names, vocab, config.max_label_length)
  return splits
