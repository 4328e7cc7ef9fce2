"""The data on the host: a folder's examples checked and split, the settings read from the data,
decoding into memory, the batch layout and the augmentation.

    examples (labelled.py) → usable ones → split → Dataset per split
        → (sources.py, batches.py) → batches of `BatchSpec`

Confident readings of unlabelled images (config.pseudo_labels) join the train split alone.

The jitted steps get arrays of one shape (`BatchSpec`), so they compile once; images stay uint8
until the model's own preprocessing runs on the device.
"""

import concurrent.futures
import dataclasses
import logging
import math
import os
import statistics
from collections.abc import Callable, Sequence
from pathlib import Path

import ml_collections
import numpy as np
from PIL import Image

from captcha_jax import ctc, images, labelled, settings
from captcha_jax.errors import ConfigError, DataError
from captcha_jax.labelled import Example
from captcha_jax.vocab import Vocab

SPLITS = ('train', 'val', 'test')
# `resolve(one_set=True)`'s images whose labels the model cannot read: scored as misread.
BEYOND_THE_MODEL = 'beyond_the_model'

Batch = dict[str, np.ndarray]


@dataclasses.dataclass(frozen=True)
class Dataset:
  """Decoded images with their texts, all in memory; batches encode the texts
  (`batches.train_batches`).

  images: [n, height, width, 3] uint8 RGB.
  """

  images: np.ndarray
  texts: tuple[str, ...]
  paths: tuple[str, ...]

  def __len__(self) -> int:
    return len(self.paths)

  def example(self, index: int) -> tuple[np.ndarray, str]:
    """Element `index` as ([height, width, 3] uint8, text): a `sources.ExampleSource`."""
    return self.images[index], self.texts[index]


Splits = dict[str, Dataset]


# --- Examples: which files, which texts. ---
# --- The split. ---


def split_by_text(
  texts: Sequence[str], fractions: Sequence[float], seed: int
) -> tuple[np.ndarray, ...]:
  """`split_indices` over the distinct texts, in order of first appearance: every image of one
  text lands in one split, so a copy (`abc (1).png`) is never tested on beside its original.
  With every text distinct, the split is `split_indices(len(texts), ...)` itself."""
  groups: dict[str, list[int]] = {}
  for i, text in enumerate(texts):
    groups.setdefault(text, []).append(i)
  members = list(groups.values())
  what = 'image(s)'
  if len(members) < len(texts):
    what = f'distinct text(s) (of {len(texts)} images; the images of one text share a split)'
  return tuple(
    np.array([i for g in part for i in members[g]], np.int64)
    for part in split_indices(len(members), fractions, seed, what)
  )


def numbered_splits(examples: Sequence[Example], folders: dict[str, Path]) -> dict[str, Path]:
  """Those of `folders` ({split: its folder}) besides train whose images are named 1, 2, 3, ...
  where train's are not: numbers, not texts."""
  texts: dict[Path, list[str]] = {}
  for e in examples:
    texts.setdefault(Path(e.path).parent, []).append(e.text)
  if 'train' not in folders or settings.counting(texts.get(folders['train'], [])):
    return {}
  return {
    name: where
    for name, where in folders.items()
    if name != 'train' and settings.counting(texts.get(where, []))
  }


def split_lists(folder: Path) -> dict[str, Path]:
  """{split: its list of texts} of the split folders of `folder` that hold one
  (`train/metadata.jsonl`, ...): those config.labels_file 'auto' reads in each, as it would were
  each the data folder."""
  folders = labelled.split_folders(folder).items()
  return {
    name: found
    for name, where in folders
    if (found := labelled.find_labels_file(where, split=True))
  }


def split_text_files(folder: Path) -> list[str]:
  """The splits of `folder` (or 'train', where it comes in none) whose images have their texts in
  files beside them (`labelled.texts_beside`)."""
  folders = labelled.split_folders(folder) or {'train': folder}
  return [name for name, where in folders.items() if labelled.texts_beside(where)]


def named_by_number(folder: Path, folders: dict[str, Path]) -> DataError:
  """The error for a set whose training images are named 0, 1, 2, ... (with no labels file found,
  their numbers would be trained on as their texts), saying why nothing beside them gave their
  texts (`labelled.why_no_texts`; another split folder's own list is read, for that folder)."""
  unread = ''.join(
    f'; {line}'
    for where in dict.fromkeys((folder, folders.get('train', folder)))
    for line in labelled.why_no_texts(where, folder)
  )
  return DataError(
    f'The images in {str(folder)!r} are named by number, not by their text: give their texts in '
    'one labels file of that folder, a `file,text` line each, paths relative to it '
    f"(config.labels_file){unread}. If the numbers are the texts, set config.labels_file to ''."
  )


def split_by_folder(
  examples: Sequence[Example], folders: dict[str, Path], fractions: Sequence[float], seed: int
) -> tuple[np.ndarray, ...]:
  """Train/val/test indices of a set that comes split into `folders` ({split: its folder}); a
  split it lacks is drawn from its train images (`split_by_text`), in `fractions`' proportion."""
  members = {name: [] for name in SPLITS}
  for i, split in enumerate(_splits_of(examples, folders)):
    if split is None:
      raise DataError(
        f'{examples[i].path} is in none of the split folders '
        f"({', '.join(map(str, folders.values()))}), but one's list names it: move it into the "
        'folder of its split.'
      )
    members[split].append(i)
  drawn = [name == 'train' or name not in folders for name in SPLITS]
  shares = np.where(drawn, fractions, 0.0)
  train = np.array(members['train'], np.int64)
  parts = split_by_text([examples[i].text for i in train], shares / shares.sum(), seed)
  return tuple(
    train[part] if from_train else np.array(members[name], np.int64)
    for name, from_train, part in zip(SPLITS, drawn, parts, strict=True)
  )


def _splits_of(examples: Sequence[Example], folders: dict[str, Path]) -> list[str | None]:
  """The split of each example: that of the split folder it lies in, at any depth (a split
  folder's list may name images in folders inside it); None for one in none of them."""
  owner = {Path(os.path.abspath(path)): name for name, path in folders.items()}
  return [
    next((owner[p] for p in Path(os.path.abspath(e.path)).parents if p in owner), None)
    for e in examples
  ]


def listed_split_folders(examples: Sequence[Example], folders: dict[str, Path]) -> dict[str, Path]:
  """Those of the split folders `folders` that one list of the whole set names images in
  (`labels.csv` naming `train/0001.png` and `test/0002.png`): the set's own split, where it names
  train's images and none outside them; else {} (the split is drawn)."""
  named = set(_splits_of(examples, folders))
  if None in named or 'train' not in named:
    return {}
  return {name: where for name, where in folders.items() if name in named}


def split_indices(
  n: int, fractions: Sequence[float], seed: int, what: str = 'image(s)'
) -> tuple[np.ndarray, ...]:
  """Disjoint train/val/test index arrays covering range(n), from a seeded permutation; `what`
  the n are, for the error where they are too few.

  Val and test get round(fraction·n) items each and train the rest (940 → 752/94/94).
  """
  if len(fractions) != 3 or any(f < 0 for f in fractions) or not math.isclose(sum(fractions), 1):
    raise DataError(f'config.split must be three fractions summing to 1, got {tuple(fractions)}.')
  n_val, n_test = (round(f * n) for f in fractions[1:])
  n_train = n - n_val - n_test
  sizes = (n_train, n_val, n_test)
  if any(size == 0 and f > 0 for size, f in zip(sizes, fractions, strict=True)):
    raise DataError(
      f'{n} {what} are too few for a {"/".join(f"{f:g}" for f in fractions)} split '
      f'(train/val/test would get {n_train}/{n_val}/{n_test}); add images.'
    )
  order = np.random.default_rng(seed).permutation(n)
  return order[:n_train], order[n_train : n_train + n_val], order[n_train + n_val :]


# --- Decoding into memory. ---


def decode(
  examples: Sequence[Example], height: int, width: int
) -> tuple[list[np.ndarray | None], list[str]]:
  """Each example's image as [height, width, 3] uint8, None where it cannot be decoded; and the
  reasons. Decoding runs on a few threads: Pillow releases the GIL while it decodes."""

  def one(example: Example):
    try:
      return images.load_image(example.path, height, width), None
    except DataError as e:
      return None, str(e)

  workers = min(8, os.cpu_count() or 1)
  with concurrent.futures.ThreadPoolExecutor(workers) as pool:
    results = list(pool.map(one, examples))
  return [image for image, _ in results], [problem for _, problem in results if problem]


def dataset_from_arrays(pixels: Sequence[np.ndarray], examples: Sequence[Example]) -> Dataset:
  """A Dataset of decoded uint8 images and their (already checked) texts."""
  return Dataset(
    images=np.stack(pixels),
    texts=tuple(e.text for e in examples),
    paths=tuple(e.path for e in examples),
  )


def resolve(
  config: ml_collections.ConfigDict,
  output_steps: Callable[[int, int], int],
  min_width: int = 0,
  *,
  one_set: bool = False,
) -> tuple[ml_collections.ConfigDict, dict[str, list[Example]]]:
  """The examples of each split, and the config with every automatic setting (data folder,
  labels file, alphabet, label lengths, image width) filled in from the data; no image is decoded
  (the headers of a few files are read: `labelled.unreadable_odd_files`).

  `output_steps(height, width)`: the CTC steps the model emits for that image size;
  `min_width`: the narrowest width `settings.auto_width` may choose; `one_set`: every image in
  one split, 'all', for a trained run to be scored on (no split, no readings), and those whose
  labels the model cannot read (a character outside config.alphabet, or too long) in another,
  BEYOND_THE_MODEL, to be scored as misread rather than skipped. What was
  inferred is logged; unusable files are skipped with one warning (or fatal, see
  config.skip_bad_files). A resolved config (a run's config.json) gives back the same config and
  split. Files that later fail to decode leave their split without moving any other file.
  """
  config = config.copy_and_resolve_references()
  # Absolute (and pseudo_labels, labels_file), so a resumed or evaluated run finds its data from
  # any folder.
  folder = Path(os.path.abspath(labelled.data_folder(config)))
  config.data_dir = str(folder)
  if config.get('pseudo_labels'):
    config.pseudo_labels = os.path.abspath(Path(config.pseudo_labels).expanduser())
  from_names = _choose_labels_file(config, folder)
  usable, beyond, folders = _usable_examples(config, folder, from_names, one_set)
  _settings_from_labels(config, usable, output_steps, min_width)
  splits = {'all': usable} if one_set else _split(config, usable, folders)
  trained = splits['all' if one_set else 'train']
  trained_chars = ''.join(sorted({c for e in trained for c in e.text}))
  if config.alphabet == settings.AUTO:
    config.alphabet = trained_chars
  if config.fixed_label_length == settings.AUTO_LENGTH:
    config.fixed_label_length = settings.common_length([e.text for e in usable])
  elif config.fixed_label_length and not one_set:  # readings would be cut or padded to it
    other = [e.path for e in usable if len(e.text) != config.fixed_label_length]
    if other:
      raise ConfigError(
        f'config.fixed_label_length = {config.fixed_label_length}, but {len(other)} of the '
        f'{len(usable)} labels have another length (e.g. {other[0]!r}): set it to -1 (from the '
        'data) or 0 (any length), or correct those labels.'
      )
  vocab = Vocab(config.alphabet)
  splits, unknown = _readable(splits, vocab)
  if one_set:
    beyond += unknown['all']
  else:
    # Characters only val/test hold are the data's doing, not a bad file: never fatal where the
    # alphabet is the training split's (as inferred, and as a run's config.json then holds it).
    labelled.report_problems(
      [
        f'{e.path}: {vocab.unknown_chars(e.text)!r} is not in the alphabet '
        + (repr(config.alphabet) if name == 'train' else '(or training)')
        for name, left in unknown.items()
        for e in left
      ],
      f'{str(folder)!r}, of labels the model cannot read',
      config.skip_bad_files or config.alphabet == trained_chars,
    )
  steps = output_steps(config.image_height, config.image_width)
  if config.get('pseudo_labels') and not one_set:
    splits['train'] += labelled.pseudo_labelled(config, vocab, steps, usable)
  check_label_fit(splits, vocab, steps)
  if config.get('blank_prior') == settings.AUTO_PRIOR and splits.get('train'):
    mean_length = statistics.mean(len(e.text) for e in splits['train'])
    config.blank_prior = settings.blank_prior(mean_length, steps)
    logging.info(
      'Initial blank probability 1 - %.2f/%d = %s.', mean_length, steps, config.blank_prior
    )
  beyond_model = f' (and {len(beyond)} whose labels the model cannot read)' if beyond else ''
  logging.info(
    'Data %s: %s%s; alphabet %r (%d symbols), labels of %s character(s), images %d×%d.',
    folder,
    ', '.join(f'{k} {len(v)}' for k, v in splits.items()),
    beyond_model,
    config.alphabet,
    len(config.alphabet),
    config.fixed_label_length or f'up to {config.max_label_length}',
    config.image_width,
    config.image_height,
  )
  if one_set:
    splits[BEYOND_THE_MODEL] = beyond
  return config, splits


def _choose_labels_file(config: ml_collections.ConfigDict, folder: Path) -> bool:
  """Sets config.labels_file as a run saves it (config.labels_file 'auto': the list found, '' for
  the names, or 'auto' where the split folders list their own texts or the images' texts lie
  beside them; a list given: absolute); whether the training images' texts are their names
  because nothing else gives them."""
  if config.labels_file != settings.AUTO:
    if config.labels_file:  # as found, so a run resumes whichever way the file is named
      named = os.path.join(folder, os.path.expanduser(config.labels_file))
      config.labels_file = os.path.normpath(named)
    return False
  listing = labelled.find_labels_file(folder)
  if listing:
    config.labels_file = str(listing)
    logging.info('The texts are those %s gives (config.labels_file).', listing)
    return False
  given = set(split_lists(folder)) | set(split_text_files(folder))
  # 'auto' stays where they are given so: `labelled.find_examples` reads them.
  config.labels_file = settings.AUTO if given else ''
  return 'train' not in given


def _usable_examples(
  config: ml_collections.ConfigDict, folder: Path, from_names: bool, one_set: bool
) -> tuple[list[Example], list[Example], dict[str, Path]]:
  """The examples of `folder` that can be split, those too long for the model where `one_set`
  (else they are problems, reported with the others), and the split folders the set comes in;
  images of split folders named by number are left out, with a warning."""
  examples, problems = labelled.find_examples(config, folder)
  usable, beyond = [], []
  for e in examples:
    if not 0 < config.max_label_length < len(e.text):
      usable.append(e)
    elif one_set:
      beyond.append(e)
    else:
      problems.append(
        f'{e.path}: label {e.text!r} is longer than max_label_length={config.max_label_length}'
      )
  unreadable = labelled.unreadable_odd_files(usable + beyond)
  problems += unreadable.values()
  usable = [e for e in usable if e.path not in unreadable]
  beyond = [e for e in beyond if e.path not in unreadable]
  labelled.report_problems(problems, repr(str(folder)), config.skip_bad_files)
  folders = labelled.split_folders(folder)
  if config.labels_file not in ('', settings.AUTO):
    folders = listed_split_folders(usable + beyond, folders)
  for name, where in numbered_splits(usable, folders).items():
    logging.warning(
      "%s holds images named by number, not by their text (a competition's unlabelled test "
      'images?): left out%s.',
      where,
      '' if one_set else f', and the {name} split drawn from the train images',
    )
    usable = [e for e in usable if Path(e.path).parent != where]
    beyond = [e for e in beyond if Path(e.path).parent != where]
    del folders[name]
  trained = folders.get('train', folder)
  named = [e.text for e in usable + beyond if Path(e.path).parent == trained]  # too long too
  if from_names and settings.counting(named):
    raise named_by_number(folder, folders)
  if not usable and not (one_set and beyond):  # a set to score may hold only labels too long
    raise DataError(f'No usable images in {str(folder)!r}: every file was skipped.')
  return usable, beyond, folders


def _settings_from_labels(
  config: ml_collections.ConfigDict,
  usable: Sequence[Example],
  output_steps: Callable[[int, int], int],
  min_width: int,
) -> None:
  """Fills config.max_label_length and image_width where they are automatic (0); warns of labels
  in both cases and of odd ones."""
  if config.case == 'keep' and (warning := settings.case_warning([e.text for e in usable])):
    logging.warning('%s', warning)
  if warning := settings.odd_labels_warning([(e.path, e.text) for e in usable]):
    logging.warning('%s', warning)
  if config.max_label_length == 0:
    config.max_label_length = max(len(e.text) for e in usable)
  if config.image_width == 0:
    config.image_width = settings.auto_width(
      [size for e in _sample(usable, 2000) if (size := _header_size(e.path))],
      config.image_height,
      config.max_label_length,
      output_steps,
      min_width,
    )


def _split(
  config: ml_collections.ConfigDict, usable: Sequence[Example], folders: dict[str, Path]
) -> dict[str, list[Example]]:
  """Train, val and test: as the set comes split into `folders`, else drawn by text."""
  if folders:
    indices = split_by_folder(usable, folders, config.split, config.split_seed)
    logging.info(
      'Split as the data comes: %s%s.',
      ', '.join(f'{name} from {folders[name].name}/' for name in SPLITS if name in folders),
      ''.join(f'; {name} drawn from the train images' for name in SPLITS if name not in folders),
    )
  else:
    indices = split_by_text([e.text for e in usable], config.split, config.split_seed)
  splits = {name: [usable[i] for i in idx] for name, idx in zip(SPLITS, indices, strict=True)}
  # A set's own test/ (or val/) may hold copies of its train/ images, under other names: a run
  # would be chosen and scored on what it trained on. (A drawn split keeps a text's images
  # together; hashing every set at every start would cost more than it finds there.)
  held_out = [e.path for name in ('val', 'test') for e in splits[name]] if folders else []
  if copies := labelled.copies_of(held_out, [e.path for e in splits['train']]):
    copy, original = next(iter(copies.items()))
    logging.warning(
      'Left out of validation and test: %d image(s) that are copies of training images (%s holds '
      'the bytes of %s); they are not what the run has never seen.',
      len(copies),
      copy,
      original,
    )
    for name in ('val', 'test'):
      splits[name] = [e for e in splits[name] if e.path not in copies]
  return splits


def _readable(
  splits: dict[str, list[Example]], vocab: Vocab
) -> tuple[dict[str, list[Example]], dict[str, list[Example]]]:
  """Each split's examples whose labels `vocab` can write, and each split's others."""
  readable = {name: [] for name in splits}
  others = {name: [] for name in splits}
  for name, split in splits.items():
    for e in split:
      (others if vocab.unknown_chars(e.text) else readable)[name].append(e)
  return readable, others


def load_in_memory(config: ml_collections.ConfigDict, examples: dict[str, list[Example]]) -> Splits:
  """Each split decoded into memory at the config's image size; undecodable files are skipped
  with one warning (or fatal, see config.skip_bad_files)."""
  decoded, problems = {}, []
  for name, split in examples.items():
    pixels, undecodable = decode(split, config.image_height, config.image_width)
    problems += undecodable
    decoded[name] = [(p, e) for p, e in zip(pixels, split, strict=True) if p is not None]
  labelled.report_problems(problems, repr(config.data_dir), config.skip_bad_files)
  for name, kept in decoded.items():
    if not kept:
      raise empty_split(name, len(examples[name]))
  if problems:  # the counts logged when the files were listed included them
    logging.info('Decoded: %s.', ', '.join(f'{k} {len(v)}' for k, v in decoded.items()))
  return {name: dataset_from_arrays(*zip(*kept, strict=True)) for name, kept in decoded.items()}


def empty_split(name: str, listed: int) -> DataError:
  """The error for a split left with no image once its `listed` files were read, raised after
  the files were reported, so that the message above it names them."""
  if listed:
    return DataError(f'None of the {listed} image(s) of the {name} split decodes: see above.')
  return DataError(
    f'The {name} split holds no image: its labels were all refused (see above; an alphabet '
    'that lacks their characters?).'
  )


def _header_size(path: str) -> tuple[int, int] | None:
  try:
    return images.image_size(path)
  except DataError:
    return None  # reported when the image is decoded


def _sample(items: Sequence, count: int) -> list:
  """Up to `count` of `items`, the same ones every run."""
  if len(items) <= count:
    return list(items)
  chosen = np.random.default_rng(0).choice(len(items), count, replace=False)
  return [items[i] for i in sorted(chosen)]


def check_label_fit(splits: dict[str, list[Example]], vocab: Vocab, ctc_steps: int) -> None:
  """Raises when some label needs more CTC steps than the model emits (its loss would be ~1e5)."""
  needs = (
    (ctc.required_steps(vocab.encode(e.text)), e.path) for split in splits.values() for e in split
  )
  worst = max(needs, default=(0, ''))
  if worst[0] > ctc_steps:
    raise DataError(
      f'{worst[1]!r} needs {worst[0]} CTC steps but the model emits {ctc_steps} for '
      'this image width: lower max_label_length, widen the image, or keep more width in '
      'config.model.backbone_strides.'
    )


def split_fingerprint(splits: Splits) -> dict[str, list[str]]:
  """The files of each split, sorted: what a resumed run must find again."""
  return {name: sorted(ds.paths) for name, ds in splits.items()}


# --- Augmentation and batches. ---


def augment_for_epoch(config: ml_collections.ConfigDict, epoch: int) -> ml_collections.ConfigDict:
  """config.augment for 1-based `epoch`: its ranges grow linearly from none at epoch 1 to whole
  after `ramp_epochs` (0 = whole from the start). Warps at full strength from the first step slow
  CTC's first alignments; once the model reads, they keep it from learning the images by heart."""
  ramp = config.get('ramp_epochs', 0.0)
  strength = min(1.0, (epoch - 1) / ramp) if ramp > 0 else 1.0
  scaled = config.copy_and_resolve_references()
  scaled.enabled = config.enabled and strength > 0
  for name in scaled:
    if name.startswith('max_'):
      scaled[name] = config[name] * strength
  return scaled


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


@dataclasses.dataclass(frozen=True)
class BatchSpec:
  """The layout of a batch, written once: host batches, the compiled steps' input shapes and the
  benches' fake batches all come from here.

  image [b, h, w, 3] uint8; labels [b, L] int32 class ids right-padded with the blank;
  label_paddings [b, L] float32, 1.0 = padding; mask [b] float32, 0.0 = a padding row.
  """

  size: int
  height: int
  width: int
  max_label_length: int

  @classmethod
  def of(cls, config: ml_collections.ConfigDict, size: int) -> 'BatchSpec':
    return cls(size, config.image_height, config.image_width, config.max_label_length)

  def shapes(self, size: int | None = None) -> dict[str, tuple[tuple[int, ...], np.dtype]]:
    """(shape, dtype) of each entry; `size` rows instead of `self.size` (a process's share)."""
    b = self.size if size is None else size
    label = (b, self.max_label_length)
    return {
      'image': ((b, self.height, self.width, 3), np.dtype(np.uint8)),
      'labels': (label, np.dtype(np.int32)),
      'label_paddings': (label, np.dtype(np.float32)),
      'mask': ((b,), np.dtype(np.float32)),
    }

  def make(self, images: np.ndarray, labels: np.ndarray, lengths: np.ndarray, mask: np.ndarray):
    """A batch of these rows, checked against the layout."""
    batch = {
      'image': images,
      'labels': labels,
      'label_paddings': (np.arange(self.max_label_length) >= lengths[:, None]).astype(np.float32),
      'mask': mask.astype(np.float32),
    }
    for key, (shape, dtype) in self.shapes(len(mask)).items():
      assert batch[key].shape == shape and batch[key].dtype == dtype, (key, batch[key].shape)
    return batch

  def random(self, num_classes: int, seed: int = 0) -> Batch:
    """A batch of random images and full-length labels, for benchmarks and tests."""
    rng = np.random.default_rng(seed)
    b, length = self.size, self.max_label_length
    return self.make(
      rng.integers(0, 256, (b, self.height, self.width, 3), dtype=np.uint8),
      rng.integers(1, num_classes, (b, length)).astype(np.int32),
      np.full(b, length, np.int32),
      np.ones(b, np.float32),
    )


def label_texts(labels: np.ndarray, label_paddings: np.ndarray, vocab: Vocab) -> list[str]:
  """The texts of a batch's rows: labels [b, L] and label_paddings [b, L] as `BatchSpec` lays
  them out, back to characters."""
  return [vocab.decode(ids[p == 0]) for ids, p in zip(labels, label_paddings, strict=True)]


def local_rows(batch_size: int, shard: tuple[int, int]) -> slice:
  """This process's rows of a global batch: the batch is split evenly across processes."""
  process, count = shard
  if batch_size % count:
    raise DataError(f'batch size {batch_size} does not divide among {count} processes.')
  per_process = batch_size // count
  return slice(process * per_process, (process + 1) * per_process)
