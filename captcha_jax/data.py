"""Label-named image folders → decoded arrays in memory, the split, and fixed-shape batches.

NumPy and Pillow only: the jitted steps get plain arrays of one shape, so they compile once.
"""

import dataclasses
import logging
import math
import re
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from captcha_jax.vocab import Vocab

IMAGE_EXTENSIONS = ('.png', '.jpg', '.jpeg')
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)
# `abcde (1).png` is how browsers and file managers name a second copy of `abcde.png`.
_COPY_SUFFIX = re.compile(r' \(\d+\)$')

Batch = dict[str, np.ndarray]


class DataError(ValueError):
  """Input data that cannot be used; the message names the file(s) and what to do."""


@dataclasses.dataclass(frozen=True)
class Dataset:
  """Decoded images with their labels, all in memory.

  images: [n, height, width, 3] uint8 RGB.
  labels: [n, max_label_length] int32 class ids, right-padded with the blank (0).
  lengths: [n] int32 label lengths.
  """

  images: np.ndarray
  labels: np.ndarray
  lengths: np.ndarray
  texts: tuple[str, ...]
  paths: tuple[str, ...]

  def __len__(self) -> int:
    return len(self.paths)

  def subset(self, indices: np.ndarray) -> 'Dataset':
    return Dataset(
      images=self.images[indices],
      labels=self.labels[indices],
      lengths=self.lengths[indices],
      texts=tuple(self.texts[i] for i in indices),
      paths=tuple(self.paths[i] for i in indices),
    )


def find_images(data_dir: str | Path) -> list[Path]:
  """Image files (png/jpg) directly in `data_dir`, sorted by name so every OS sees one order."""
  folder = Path(data_dir).expanduser()
  if not folder.is_dir():
    raise DataError(
      f'Data folder {str(folder)!r} does not exist. Download the Kaggle dataset '
      '"captcha-version-2-images" and unpack its images there, or set --config.data_dir.'
    )
  paths = sorted(
    p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
  )
  if not paths:
    raise DataError(
      f'Data folder {str(folder)!r} holds no {"/".join(IMAGE_EXTENSIONS)} images: '
      'it should hold images named by their text, like 226md.png.'
    )
  return paths


def label_from_path(path: str | Path) -> str:
  """The text an image shows: its file name without extension or a ` (1)` copy suffix."""
  return _COPY_SUFFIX.sub('', Path(path).stem)


def load_image(
  source: 'str | Path | Image.Image | np.ndarray', height: int, width: int
) -> np.ndarray:
  """Decodes an image (path, PIL image or array) to [height, width, 3] uint8 RGB.

  Transparent pixels are laid on white, as the captchas are drawn on white. Raises DataError
  naming the file when it cannot be decoded.
  """
  if isinstance(source, np.ndarray):
    array = source
    if array.ndim == 3 and array.shape[-1] == 1:
      array = array[..., 0]
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[-1] not in (3, 4)):
      raise DataError(
        f'An image array must be [H, W], [H, W, 1], [H, W, 3] or [H, W, 4], got {array.shape}.'
      )
    if array.dtype != np.uint8:
      raise DataError(f'An image array must be uint8 (0..255), got {array.dtype}.')
    image = Image.fromarray(array)
  elif isinstance(source, Image.Image):
    image = source
  else:
    path = Path(source)
    try:
      with Image.open(path) as opened:
        opened.load()
        image = opened.copy()
    except FileNotFoundError as e:
      raise DataError(f'{str(path)!r}: no such file.') from e
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
      raise DataError(f'{str(path)!r} is not a readable image ({e}).') from e
  if image.mode in ('RGBA', 'LA', 'PA') or (image.mode == 'P' and 'transparency' in image.info):
    rgba = image.convert('RGBA')
    white = Image.new('RGBA', rgba.size, (255, 255, 255, 255))
    image = Image.alpha_composite(white, rgba)
  image = image.convert('RGB')
  if image.size != (width, height):
    image = image.resize((width, height), Image.Resampling.BILINEAR)
  return np.asarray(image, np.uint8)


def load_dataset(
  data_dir: str | Path,
  vocab: Vocab,
  *,
  height: int,
  width: int,
  max_label_length: int,
  skip_bad_files: bool = True,
) -> Dataset:
  """Decodes every image in `data_dir` into memory.

  Files that cannot be used (undecodable, a label outside the alphabet, empty or longer than
  `max_label_length`) are skipped with one warning listing them, or raise DataError when
  `skip_bad_files` is False.
  """
  images, texts, paths, problems = [], [], [], []
  for path in find_images(data_dir):
    text = label_from_path(path)
    unknown = vocab.unknown_chars(text)
    if not text:
      problems.append(f'{path}: empty label (the file name is the label)')
    elif unknown:
      problems.append(f'{path}: label {text!r} has characters outside the alphabet: {unknown!r}')
    elif len(text) > max_label_length:
      problems.append(f'{path}: label {text!r} is longer than max_label_length={max_label_length}')
    else:
      try:
        images.append(load_image(path, height, width))
      except DataError as e:
        problems.append(str(e))
        continue
      texts.append(text)
      paths.append(str(path))
  if problems:
    listing = '\n  '.join(problems)
    if not skip_bad_files:
      raise DataError(
        f'{len(problems)} unusable file(s) in {str(data_dir)!r}:\n  {listing}\n'
        'Fix or remove them, or set --config.skip_bad_files=True to skip them.'
      )
    logging.warning('Skipping %d unusable file(s):\n  %s', len(problems), listing)
  if not paths:
    raise DataError(f'No usable images in {str(data_dir)!r}: every file was skipped.')
  return dataset_from_arrays(images, texts, paths, vocab, max_label_length)


def dataset_from_arrays(
  images: Sequence[np.ndarray],
  texts: Sequence[str],
  paths: Sequence[str],
  vocab: Vocab,
  max_label_length: int,
) -> Dataset:
  """A Dataset of decoded uint8 images and their (already checked) texts."""
  labels = np.zeros((len(texts), max_label_length), np.int32)
  for i, text in enumerate(texts):
    labels[i, : len(text)] = vocab.encode(text)
  return Dataset(
    images=np.stack(images),
    labels=labels,
    lengths=np.array([len(t) for t in texts], np.int32),
    texts=tuple(texts),
    paths=tuple(paths),
  )


def split_indices(n: int, fractions: Sequence[float], seed: int) -> tuple[np.ndarray, ...]:
  """Disjoint train/val/test index arrays covering range(n), from a seeded permutation.

  Val and test get round(fraction·n) items each and train the rest (940 → 752/94/94).
  """
  if len(fractions) != 3 or any(f < 0 for f in fractions) or not math.isclose(sum(fractions), 1):
    raise DataError(f'config.split must be three fractions summing to 1, got {tuple(fractions)}.')
  n_val, n_test = (round(f * n) for f in fractions[1:])
  n_train = n - n_val - n_test
  sizes = (n_train, n_val, n_test)
  if any(size == 0 and f > 0 for size, f in zip(sizes, fractions, strict=True)):
    raise DataError(
      f'{n} image(s) are too few for a {"/".join(f"{f:g}" for f in fractions)} split '
      f'(train/val/test would get {n_train}/{n_val}/{n_test}); add images.'
    )
  order = np.random.default_rng(seed).permutation(n)
  return order[:n_train], order[n_train : n_train + n_val], order[n_train + n_val :]


def normalize(images: np.ndarray) -> np.ndarray:
  """uint8 [..., 3] RGB → float32 with ImageNet mean/std, the statistics of the backbone."""
  return (images.astype(np.float32) / 255.0 - IMAGENET_MEAN) / IMAGENET_STD


def augment_image(image: np.ndarray, rng: np.random.Generator, config) -> np.ndarray:
  """A small random affine warp (shift, rotation, scale, shear) of one uint8 image, on white."""
  h, w = image.shape[:2]
  angle = np.deg2rad(rng.uniform(-config.max_rotation, config.max_rotation))
  scale = rng.uniform(1 - config.max_scale, 1 + config.max_scale)
  shear = rng.uniform(-config.max_shear, config.max_shear)
  dx = rng.uniform(-config.max_shift_x, config.max_shift_x)
  dy = rng.uniform(-config.max_shift_y, config.max_shift_y)
  cos, sin = np.cos(angle), np.sin(angle)
  forward = np.array([[cos, -sin + shear], [sin, cos]]) * scale
  inverse = np.linalg.inv(forward)
  center = np.array([w / 2, h / 2])
  # PIL maps each output pixel back to its input pixel: in = A⁻¹ (out − c − d) + c.
  offset = center - inverse @ (center + np.array([dx, dy]))
  coeffs = (*inverse[0], offset[0], *inverse[1], offset[1])
  warped = Image.fromarray(image).transform(
    (w, h), Image.Transform.AFFINE, coeffs, Image.Resampling.BILINEAR, fillcolor=(255, 255, 255)
  )
  return np.asarray(warped)


def _batch(dataset: Dataset, indices: np.ndarray, mask: np.ndarray, images: np.ndarray) -> Batch:
  return {
    'image': normalize(images),
    'labels': dataset.labels[indices],
    'label_paddings': (np.arange(dataset.labels.shape[1]) >= dataset.lengths[indices, None]).astype(
      np.float32
    ),
    'mask': mask,
    'index': indices.astype(np.int32),
  }


def _local_rows(batch_size: int, shard: tuple[int, int]) -> slice:
  """This process's rows of a global batch: the batch is split evenly across processes."""
  process, count = shard
  if batch_size % count:
    raise DataError(f'batch size {batch_size} does not divide among {count} processes.')
  per_process = batch_size // count
  return slice(process * per_process, (process + 1) * per_process)


def train_batches(
  dataset: Dataset,
  batch_size: int,
  seed: Sequence[int],
  augment_config=None,
  *,
  shard: tuple[int, int] = (0, 1),
  first_batch: int = 0,
) -> Iterator[Batch]:
  """One epoch of shuffled full batches (the remainder is dropped; the next epoch reshuffles).

  The order comes from `seed` (e.g. (config.seed, epoch)) and each example's augmentation from
  (seed, its position in the epoch), so every process of a multi-process run sees the same global
  batches, whatever the process count, and a resumed epoch can start at `first_batch`. Yields this
  process's rows (shard = (process index, process count)) of each global batch of `batch_size`:
  image [b, h, w, 3] float32, labels [b, L] int32, label_paddings [b, L] float32 (1.0 = padding),
  mask [b] float32 (all ones here), index [b] int32 into `dataset`.
  """
  if len(dataset) < batch_size:
    raise DataError(
      f'The train split has {len(dataset)} image(s), fewer than batch_size={batch_size}: '
      'add images or lower --config.batch_size.'
    )
  rows = _local_rows(batch_size, shard)
  order = np.random.default_rng(list(seed)).permutation(len(dataset))
  for start in range(first_batch * batch_size, len(order) - batch_size + 1, batch_size):
    positions = np.arange(start, start + batch_size)[rows]
    indices = order[positions]
    images = dataset.images[indices]
    if augment_config is not None and augment_config.enabled:
      images = np.stack(
        [
          augment_image(im, np.random.default_rng([*seed, int(p)]), augment_config)
          for im, p in zip(images, positions, strict=True)
        ]
      )
    yield _batch(dataset, indices, np.ones(len(indices), np.float32), images)


def eval_batches(
  dataset: Dataset, batch_size: int, *, shard: tuple[int, int] = (0, 1)
) -> Iterator[Batch]:
  """Every item once, in order, in global batches of one shape; the last is padded and masked
  (mask 0). Yields this process's rows of each global batch (see `train_batches`)."""
  rows = _local_rows(batch_size, shard)
  for start in range(0, len(dataset), batch_size):
    real = np.arange(start, min(start + batch_size, len(dataset)))
    indices = np.concatenate([real, np.full(batch_size - len(real), real[0])])
    mask = (np.arange(batch_size) < len(real)).astype(np.float32)
    yield _batch(dataset, indices[rows], mask[rows], dataset.images[indices[rows]])
