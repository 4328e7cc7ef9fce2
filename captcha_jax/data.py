"""The data on the host: labelled examples, the split, the settings read from the data, decoding
into memory, the batch layout and the augmentation.

    examples (folder names or a labels file) → usable ones → split → Dataset per split
        → (sources.py, batches.py) → batches of `BatchSpec`

Confident readings of unlabelled images (config.pseudo_labels) join the train split alone.

The jitted steps get arrays of one shape (`BatchSpec`), so they compile once; images stay uint8
until the model's own preprocessing runs on the device.
"""

import concurrent.futures
import csv
import dataclasses
import hashlib
import logging
import math
import os
import re
import statistics
from collections.abc import Callable, Sequence
from pathlib import Path

import ml_collections
import numpy as np
from PIL import Image

from captcha_jax import ctc, images, settings
from captcha_jax.errors import ConfigError, DataError
from captcha_jax.vocab import Vocab

# How browsers and file managers name another copy of `abcde.png`: `abcde (1).png` (browsers,
# Windows, Linux), `abcde(1).png`, `abcde copy.png` and `abcde copy 2.png` (macOS), `abcde -
# Copy.png` and `abcde - Copy (2).png` (Windows).
_COPY_SUFFIX = re.compile(r'(?: ?\(\d+\)| (?:- )?copy(?: \d+| \(\d+\))?)$', re.IGNORECASE)
SPLITS = ('train', 'val', 'test')
LABEL_LISTS = ('.csv', '.tsv', '.txt')  # the files config.labels_file 'auto' looks at
# What their headers call the texts' column.
_TEXT_COLUMN = re.compile(
  r'text|label|captcha|answer|solution|code|word|string|target|truth|transcri|content|chars'
  r'|^\s*(gt|y|value)\s*$',
  re.IGNORECASE,
)
# The names sets that come split give their splits' sub-folders (in any case).
SPLIT_FOLDERS = {
  'train': ('train', 'training'),
  'val': ('val', 'valid', 'validation', 'dev'),
  'test': ('test', 'testing'),
}

Batch = dict[str, np.ndarray]


@dataclasses.dataclass(frozen=True)
class Example:
  path: str
  text: str


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


def label_from_path(path: str | Path, pattern: str = '') -> str | None:
  """The text an image shows: its file name without its extension (twice, as in `abcde.png.png`),
  a copy's suffix (` (1)`, ` copy`, ...) or spaces around it; of that, the first group (or the
  match) of the regular expression `pattern` where one is given (config.label_pattern), None
  where it does not match."""
  stem = Path(path).stem
  if Path(stem).suffix.lower() in images.IMAGE_EXTENSIONS:
    stem = Path(stem).stem
  name = _COPY_SUFFIX.sub('', stem.strip()).strip()
  if not pattern:
    return name
  found = re.search(pattern, name)
  return None if found is None else found.group(1 if found.re.groups else 0).strip()


def find_images(folder: str | Path) -> tuple[list[Path], list[str]]:
  """Image files directly in `folder`, sorted by name so every OS sees one order; and what was
  passed over there (sub-folders, broken links, other files), one line each. DataError when it
  holds none."""
  folder = Path(folder).expanduser()
  if not folder.is_dir():
    raise DataError(f'Data folder {str(folder)!r} does not exist or is not a folder.')
  found, passed_over = [], []
  for path in sorted(folder.iterdir()):
    if path.is_dir():
      passed_over.append(f'{path}: a folder (only images directly in {str(folder)!r} are read)')
    elif not path.exists():
      passed_over.append(f'{path}: a link to nothing')
    elif path.suffix.lower() not in images.IMAGE_EXTENSIONS:
      passed_over.append(f'{path}: not an image file name ({"/".join(images.IMAGE_EXTENSIONS)})')
    elif path.name.startswith('._'):  # macOS copies each file's metadata as ._NAME beside it
      passed_over.append(f'{path}: macOS metadata beside {path.name[2:]!r}, not an image')
    elif not _utf8(path.name):  # from a zip made where names are not UTF-8 (cp437, GBK)
      passed_over.append(f'{path}: its name is not UTF-8, so its text cannot be read; rename it')
    elif not path.stat().st_size:  # before its name counts towards the inferred settings
      passed_over.append(f'{path}: an empty file')
    else:
      found.append(path)
  if not found:
    extensions = '/'.join(images.IMAGE_EXTENSIONS)
    subfolders = sorted(p.name for p in folder.iterdir() if p.is_dir())
    inside = f' directly, only the sub-folders {", ".join(subfolders)}' if subfolders else ''
    raise DataError(f'Folder {str(folder)!r} holds no images ({extensions}){inside}.')
  return found, passed_over


def split_folders(folder: Path) -> dict[str, Path]:
  """{split: its sub-folder} of a set that comes split (train/ and val/ or test/, or the other
  names of SPLIT_FOLDERS) into sub-folders of `folder`, which holds no image itself; else {}."""
  if not folder.is_dir():
    return {}
  entries = list(folder.iterdir())
  if any(p.suffix.lower() in images.IMAGE_EXTENSIONS and p.is_file() for p in entries):
    return {}
  named = {p.name.lower(): p for p in entries if p.is_dir()}
  found = {
    split: named[name] for split, names in SPLIT_FOLDERS.items() for name in names if name in named
  }
  return found if 'train' in found and len(found) > 1 else {}


def _utf8(name: str) -> bool:
  """False for a name the OS gave as bytes that are not UTF-8 (held as lone surrogates)."""
  try:
    name.encode('utf-8')
  except UnicodeEncodeError:
    return False
  return True


def read_labels_file(path: Path, folder: Path) -> tuple[list[Example], list[str], list[str]]:
  """(path, text) rows of a CSV (',' or ';'), TSV or space-separated file, paths relative to
  `folder`; its bad lines; and its header ([] where it has none).

  A first row whose path is not a file is taken as a header. Missing files, empty texts and
  repeated paths are reported with their line numbers; the first row of a repeated path is kept.
  """
  try:
    content = path.read_text(encoding='utf-8-sig')
  except (OSError, UnicodeDecodeError) as e:
    raise DataError(f'Labels file {str(path)!r} cannot be read ({e}).') from e
  first = content.split('\n', 1)[0]
  # TSV, CSV, CSV of a ';' locale, or `path text` lines (OCR sets' label lists).
  delimiter = next((d for d in '\t,; ' if d in first), ',')
  examples, problems, seen, header = [], [], {}, []
  columns = 2  # the fields a row may fill: more only under a header naming them
  rows = csv.reader(content.splitlines(), delimiter=delimiter, skipinitialspace=True)
  for number, row in enumerate(rows, 1):
    if not row or not any(field.strip() for field in row):
      continue
    where = f'{path}, line {number}'
    if len(row) < 2:
      problems.append(f'{where}: expected a path and a text, got {row!r}')
      continue
    file, text = row[0].strip(), row[1].strip()  # no captcha's text starts or ends with a space
    image = folder / file
    if not image.is_file() and number == 1:
      header, columns = row, len(row)
      continue
    if any(field.strip() for field in row[columns:]):  # a text cut at a delimiter it holds
      problems.append(
        f'{where}: {len(row)} fields where a path and a text were expected, got {row!r} '
        f'(a text holding {delimiter!r} must be quoted)'
      )
    elif not image.is_file():
      problems.append(f'{where}: {str(image)!r} is not a file')
    elif not text:
      problems.append(f'{where}: empty text for {file!r}')
    elif (same := os.path.abspath(image)) in seen:  # also as ./a.png or sub/../a.png
      problems.append(f'{where}: {file!r} is listed again (first on line {seen[same]})')
    else:
      seen[same] = number
      examples.append(Example(str(image), text))
  if not examples:
    shown = ''.join(f'\n  {problem}' for problem in problems[:5])
    raise DataError(
      f'Labels file {str(path)!r} lists no usable image: each line should hold an image path '
      f'(relative to {str(folder)!r}) and its text.{shown}'
    )
  return examples, problems, header


def find_labels_file(folder: Path) -> Path | None:
  """config.labels_file 'auto': the one CSV, TSV or text file directly in `folder` that gives the
  texts of half its images or more (under a header, if it has one, that names them so); None
  where none does (the names are the texts).
  ConfigError where several do: which one holds the texts is the user's to say."""
  if not folder.is_dir():
    return None
  entries = list(folder.iterdir())
  files = sorted(p for p in entries if p.suffix.lower() in LABEL_LISTS and p.is_file())
  count = sum(p.suffix.lower() in images.IMAGE_EXTENSIONS for p in entries)
  listing = []
  for file in files:
    try:
      examples, _, header = read_labels_file(file, folder)
    except DataError:  # not a list of this folder's images
      continue
    # A header must name its second column as the texts: 'file,width,height' lists other things.
    if len(examples) >= max(count / 2, 1) and (not header or _TEXT_COLUMN.search(header[1])):
      listing.append(file)
  if len(listing) > 1:
    splits = {name for names in SPLIT_FOLDERS.values() for name in names}
    other = next((p.name for p in listing if p.stem.lower() in splits - {'train'}), 'test.csv')
    raise ConfigError(
      f'{", ".join(p.name for p in listing)} in {str(folder)!r} each give the texts of its '
      "images: set config.labels_file to the one to read, or to '' for the file names. Where "
      'they are the splits of the set, train on the training one and score the run on another '
      f'with `python -m captcha_jax.evaluate --workdir RUN --data_dir {folder} --labels_file '
      f'{other}`.'
    )
  return listing[0] if listing else None


def find_examples(
  config: ml_collections.ConfigDict, folder: Path
) -> tuple[list[Example], list[str]]:
  """Every labelled image of the set, with `config.case` applied; and the problems met."""
  labels_file = config.labels_file
  if labels_file == settings.AUTO:
    labels_file = find_labels_file(folder)
  if labels_file:
    labels = Path(labels_file).expanduser()
    labels = labels if labels.is_absolute() else folder / labels
    if not labels.is_file():
      raise DataError(f'Labels file {str(labels)!r} does not exist (config.labels_file).')
    examples, problems, _ = read_labels_file(labels, folder)
  else:
    paths, problems = [], []
    for where in split_folders(folder).values() or [folder]:
      try:
        found, passed_over = find_images(where)
      except DataError as e:
        raise DataError(
          f'{e} It should hold images named by their text, like 226md.png (or sub-folders train/ '
          'and val/ or test/ of them), or set config.labels_file.'
        ) from None
      paths += found
      problems += passed_over
    pattern = config.get('label_pattern', '')
    if pattern == settings.AUTO:
      pattern, why = settings.text_pattern([label_from_path(path) for path in paths])
      if pattern:
        logging.info('Labels read from the file names of %s with %r: %s.', folder, pattern, why)
    examples = []
    for path in paths:
      text = label_from_path(path, pattern)
      if text:
        examples.append(Example(str(path), text))
      elif text is None:
        problems.append(f'{path}: its name does not match label_pattern {pattern!r}')
      else:
        problems.append(f'{path}: empty label (the file name is the label)')
  return [Example(e.path, _fold(config, e.text)) for e in examples], problems


def _fold(config: ml_collections.ConfigDict, text: str) -> str:
  return {'keep': str, 'lower': str.lower, 'upper': str.upper}[config.case](text)


def read_readings(path: Path, min_confidence: float) -> tuple[list[Example], int, list[str]]:
  """The readings of a `captcha-jax-predict --output FILE.csv` at confidence ≥ min_confidence,
  as examples (predict writes absolute paths; relative ones are taken from the file's folder);
  how many readings the file holds; and its bad lines."""
  try:
    content = path.read_text(encoding='utf-8-sig')
  except (OSError, UnicodeDecodeError) as e:
    raise DataError(f'Pseudo-labels file {str(path)!r} cannot be read ({e}).') from e
  rows = csv.DictReader(content.splitlines())
  if not {'file', 'text', 'confidence'} <= set(rows.fieldnames or ()):
    raise DataError(
      f'Pseudo-labels file {str(path)!r} has no file, text and confidence columns: write it '
      'with captcha-jax-predict --output FILE.csv.'
    )
  examples, problems, total, seen = [], [], 0, {}
  for number, row in enumerate(rows, 2):
    total += 1
    try:
      confidence = float(row['confidence'])
    except (TypeError, ValueError):
      problems.append(f'{path}, line {number}: confidence {row["confidence"]!r} is not a number')
      continue
    # `not >=`: a nan confidence (a reading the model could not score) is not a confident one
    if not confidence >= min_confidence or not row['text']:
      continue
    image = path.parent / Path(row['file']).expanduser()
    if not image.is_file():
      problems.append(f'{path}, line {number}: {str(image)!r} is not a file')
    elif (same := os.path.abspath(image)) in seen:  # one image, trained on once
      problems.append(f'{path}, line {number}: {same!r} is read again (first on line {seen[same]})')
    else:
      seen[same] = number
      examples.append(Example(str(image), row['text']))
  return examples, total, problems


def pseudo_labelled(
  config: ml_collections.ConfigDict, vocab: Vocab, ctc_steps: int, labelled: Sequence[Example]
) -> list[Example]:
  """The readings in config.pseudo_labels confident enough to train on (at least
  config.pseudo_min_confidence), that the model can read and whose images are not labelled
  already: they join the train split alone, so validation and test stay the labels' own."""
  path = Path(config.pseudo_labels)
  readings, total, problems = read_readings(path, config.pseudo_min_confidence)
  known = {Path(e.path).resolve() for e in labelled}
  kept = []
  for e in readings:
    text = _fold(config, e.text)
    if unknown := vocab.unknown_chars(text):
      problems.append(f'{e.path}: reading {text!r}: {unknown!r} is not in the alphabet')
    elif 0 < config.max_label_length < len(text):
      problems.append(f'{e.path}: reading {text!r} is longer than max_label_length')
    elif ctc.required_steps(vocab.encode(text)) > ctc_steps:
      problems.append(f'{e.path}: reading {text!r} needs more than the {ctc_steps} CTC steps')
    elif Path(e.path).resolve() not in known:
      kept.append(Example(e.path, text))
  report_problems(problems, repr(str(path)), config.skip_bad_files)
  if copies := copies_of([e.path for e in kept], [e.path for e in labelled]):
    kept = [e for e in kept if e.path not in copies]
    copy, original = next(iter(copies.items()))
    logging.warning(
      '%d readings in %s are of copies of labelled images (%s holds the bytes of %s): left out, '
      'so no labelled image, of validation and test least of all, is trained on by another name.',
      len(copies),
      path,
      copy,
      original,
    )
  logging.info(
    '%d of the %d readings in %s (confidence ≥ %g) join the train split.',
    len(kept),
    total,
    path,
    config.pseudo_min_confidence,
  )
  return kept


def copies_of(paths: Sequence[str], originals: Sequence[str]) -> dict[str, str]:
  """{path: the original it is a byte-for-byte copy of} for those of `paths` that are one.

  Sizes are compared first; only files of an original's size are hashed. A file that cannot be
  read is no copy (it is reported where it is decoded)."""
  by_size: dict[int, list[str]] = {}
  for original in originals:
    if (size := _size(original)) is not None:
      by_size.setdefault(size, []).append(original)
  digests_of_size: dict[int, dict[bytes, str]] = {}
  copies = {}
  for path in paths:
    size = _size(path)
    if size not in by_size:
      continue
    if size not in digests_of_size:
      digests_of_size[size] = {}
      for original in by_size[size]:
        if (digest := _digest(original)) is not None:
          digests_of_size[size].setdefault(digest, original)
    digest = _digest(path)
    if digest is not None and digest in digests_of_size[size]:
      copies[path] = digests_of_size[size][digest]
  return copies


def _size(path: str) -> int | None:
  try:
    return os.path.getsize(path)
  except OSError:
    return None


def _digest(path: str) -> bytes | None:
  try:
    return hashlib.sha256(Path(path).read_bytes()).digest()
  except OSError:
    return None


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
  return tuple(
    np.array([i for g in part for i in members[g]], np.int64)
    for part in split_indices(len(members), fractions, seed)
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


def split_by_folder(
  examples: Sequence[Example], folders: dict[str, Path], fractions: Sequence[float], seed: int
) -> tuple[np.ndarray, ...]:
  """Train/val/test indices of a set that comes split into `folders` ({split: its folder}); a
  split it lacks is drawn from its train images (`split_by_text`), in `fractions`' proportion."""
  owner = {Path(os.path.abspath(path)): name for name, path in folders.items()}
  members = {name: [] for name in SPLITS}
  for i, e in enumerate(examples):
    members[owner[Path(os.path.abspath(e.path)).parent]].append(i)
  drawn = [name == 'train' or name not in folders for name in SPLITS]
  shares = np.where(drawn, fractions, 0.0)
  train = np.array(members['train'], np.int64)
  parts = split_by_text([examples[i].text for i in train], shares / shares.sum(), seed)
  return tuple(
    train[part] if from_train else np.array(members[name], np.int64)
    for name, from_train, part in zip(SPLITS, drawn, parts, strict=True)
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


def report_problems(problems: Sequence[str], where: str, skip: bool) -> None:
  """Logs every unusable file in one warning, or raises DataError when `skip` is False."""
  if not problems:
    return
  listing = '\n  '.join(problems)
  if not skip:
    raise DataError(
      f'{len(problems)} unusable file(s) in {where}:\n  {listing}\n'
      'Fix or remove them, or set --config.skip_bad_files=True to skip them.'
    )
  logging.warning('Skipping %d unusable file(s) in %s:\n  %s', len(problems), where, listing)


def data_folder(config: ml_collections.ConfigDict) -> Path:
  """config.data_dir, or the folder config.data_url unpacks to (downloaded once, then cached)."""
  if config.data_dir:
    folder = Path(config.data_dir).expanduser()
    if not folder.is_dir():
      raise DataError(
        f'Data folder {str(folder)!r} (config.data_dir) does not exist. Point it at a folder of '
        'images named by their text, or leave it empty to download config.data_url.'
      )
    return _inside_lone_folders(folder)
  if not config.data_url:
    raise DataError('No data: set --config.data_dir to a folder of images named by their text.')
  from captcha_jax import download

  return download.fetch(
    config.data_url,
    config.download_dir,
    sha256=config.data_sha256,
    git_blob_sha1=config.data_git_blob,
    min_images=config.data_min_images,
  )


def unreadable_odd_files(examples: Sequence[Example]) -> dict[str, str]:
  """{path: the problem} of the examples whose names are unlike the others' (`odd_labels`:
  'broken', 'Thumbs') and whose files are no images. Any file that is no image counts in the
  settings read from the names until decoding finds it out, and such a name would set them; only
  these headers are read, which costs a few reads."""
  unreadable = {}
  for path, _ in settings.odd_labels([(e.path, e.text) for e in examples]):
    try:
      images.image_size(path)
    except DataError as error:
      unreadable[path] = str(error)
  return unreadable


def _inside_lone_folders(folder: Path) -> Path:
  """`folder`, or the folder it holds and nothing else, and so on down: a zip often unpacks to
  `samples/samples/`. Hidden entries and macOS's __MACOSX/ do not count."""
  seen = set()
  while folder.resolve() not in seen:  # a link back up ends the walk
    seen.add(folder.resolve())
    entries = [p for p in folder.iterdir() if not p.name.startswith('.') and p.name != '__MACOSX']
    if len(entries) != 1 or not entries[0].is_dir():
      break
    logging.info('%s holds only the folder %s: reading that.', folder, entries[0].name)
    folder = entries[0]
  return folder


def resolve(
  config: ml_collections.ConfigDict,
  output_steps: Callable[[int, int], int],
  min_width: int = 0,
  *,
  one_set: bool = False,
) -> tuple[ml_collections.ConfigDict, dict[str, list[Example]]]:
  """The examples of each split, and the config with every automatic setting (data folder,
  labels file, alphabet, label lengths, image width) filled in from the data; no image is decoded
  (the headers of a few files are read: `unreadable_odd_files`).

  `output_steps(height, width)`: the CTC steps the model emits for that image size;
  `min_width`: the narrowest width `settings.auto_width` may choose; `one_set`: every image in
  one split, 'all', for a trained run to be scored on (no split, no readings). What was
  inferred is logged; unusable files are skipped with one warning (or fatal, see
  config.skip_bad_files). A resolved config (a run's config.json) gives back the same config and
  split. Files that later fail to decode leave their split without moving any other file.
  """
  config = config.copy_and_resolve_references()
  # Absolute (and pseudo_labels), so a resumed or evaluated run finds its data from any folder.
  folder = Path(os.path.abspath(data_folder(config)))
  config.data_dir = str(folder)
  if config.get('pseudo_labels'):
    config.pseudo_labels = os.path.abspath(Path(config.pseudo_labels).expanduser())
  if config.labels_file == settings.AUTO:
    listing = find_labels_file(folder)
    config.labels_file = str(listing) if listing else ''
    if listing:
      logging.info('The texts are those %s gives (config.labels_file).', listing)
  examples, problems = find_examples(config, folder)
  usable = []
  for e in examples:
    if 0 < config.max_label_length < len(e.text):
      problems.append(
        f'{e.path}: label {e.text!r} is longer than max_label_length={config.max_label_length}'
      )
    else:
      usable.append(e)
  unreadable = unreadable_odd_files(usable)
  problems += unreadable.values()
  usable = [e for e in usable if e.path not in unreadable]
  report_problems(problems, repr(str(folder)), config.skip_bad_files)
  folders = {} if config.labels_file else split_folders(folder)
  for name, where in numbered_splits(usable, folders).items():
    logging.warning(
      "%s holds images named by number, not by their text (a competition's unlabelled test "
      'images?): left out%s.',
      where,
      '' if one_set else f', and the {name} split drawn from the train images',
    )
    usable = [e for e in usable if Path(e.path).parent != where]
    del folders[name]
  if not usable:
    raise DataError(f'No usable images in {str(folder)!r}: every file was skipped.')

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
  if one_set:
    names, indices = ('all',), (np.arange(len(usable)),)
  elif folders:
    names, indices = SPLITS, split_by_folder(usable, folders, config.split, config.split_seed)
    logging.info(
      'Split as the data comes: %s%s.',
      ', '.join(f'{name} from {folders[name].name}/' for name in SPLITS if name in folders),
      ''.join(f'; {name} drawn from the train images' for name in SPLITS if name not in folders),
    )
  else:
    texts = [e.text for e in usable]
    names, indices = SPLITS, split_by_text(texts, config.split, config.split_seed)
  trained_chars = ''.join(sorted({c for i in indices[0] for c in usable[i].text}))
  if config.alphabet == settings.AUTO:
    config.alphabet = trained_chars
  vocab = Vocab(config.alphabet)
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

  splits, unreadable = {}, []
  for name, idx in zip(names, indices, strict=True):
    splits[name] = []
    for i in idx:
      unknown = vocab.unknown_chars(usable[i].text)
      if not unknown:
        splits[name].append(usable[i])
      elif name == 'train':
        unreadable.append(
          f'{usable[i].path}: {unknown!r} is not in the alphabet {config.alphabet!r}'
        )
      else:
        unreadable.append(f'{usable[i].path}: {unknown!r} is not in the alphabet (or training)')
  # Characters only val/test hold are the data's doing, not a bad file: never fatal where the
  # alphabet is the training split's (as inferred, and as a run's config.json then holds it).
  report_problems(
    unreadable,
    f'{str(folder)!r}, of labels the model cannot read',
    config.skip_bad_files or config.alphabet == trained_chars,
  )
  steps = output_steps(config.image_height, config.image_width)
  if config.get('pseudo_labels') and not one_set:
    splits['train'] += pseudo_labelled(config, vocab, steps, usable)
  check_label_fit(splits, vocab, steps)
  if config.get('blank_prior') == settings.AUTO_PRIOR and splits.get('train'):
    mean_length = statistics.mean(len(e.text) for e in splits['train'])
    config.blank_prior = settings.blank_prior(mean_length, steps)
    logging.info(
      'Initial blank probability 1 - %.2f/%d = %s.', mean_length, steps, config.blank_prior
    )
  logging.info(
    'Data %s: %s; alphabet %r (%d symbols), labels of %s character(s), images %d×%d.',
    folder,
    ', '.join(f'{k} {len(v)}' for k, v in splits.items()),
    config.alphabet,
    len(config.alphabet),
    config.fixed_label_length or f'up to {config.max_label_length}',
    config.image_width,
    config.image_height,
  )
  return config, splits


def load_in_memory(config: ml_collections.ConfigDict, examples: dict[str, list[Example]]) -> Splits:
  """Each split decoded into memory at the config's image size; undecodable files are skipped
  with one warning (or fatal, see config.skip_bad_files)."""
  decoded, problems = {}, []
  for name, split in examples.items():
    pixels, undecodable = decode(split, config.image_height, config.image_width)
    problems += undecodable
    decoded[name] = [(p, e) for p, e in zip(pixels, split, strict=True) if p is not None]
  report_problems(problems, repr(config.data_dir), config.skip_bad_files)
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
