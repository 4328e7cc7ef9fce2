"""The labelled examples of a data folder: which of its files are captchas, and the text each one
shows (its name, a labels file beside the images, a text file beside each one, or a confident
reading for self-training).

    data folder (or config.data_url, unpacked) → image files → (path, text) `Example`s → data.py

Nothing here decodes pixels: a few headers are read at most (`unreadable_odd_files`).
"""

import csv
import dataclasses
import hashlib
import json
import logging
import os
import re
import unicodedata
from collections.abc import Sequence
from pathlib import Path

import ml_collections

from captcha_jax import ctc, images, settings
from captcha_jax.errors import ConfigError, DataError
from captcha_jax.vocab import Vocab

# How browsers and file managers name another copy of `abcde.png`: `abcde (1).png` (browsers,
# Windows, Linux), `abcde(1).png`, `abcde copy.png` and `abcde copy 2.png` (macOS), `abcde -
# Copy.png` and `abcde - Copy (2).png` (Windows); a copy of a copy, `abcde - Copy - Copy.png`.
_COPY_SUFFIX = re.compile(r'(?: ?\(\d+\)| (?:- )?copy(?: \d+| \(\d+\))?)+$', re.IGNORECASE)
# The files config.labels_file 'auto' looks at: tables, and JSON (Hugging Face's image folders
# list theirs in a `metadata.jsonl` of {"file_name": ..., "text": ...} lines).
JSON_LISTS = ('.json', '.jsonl')
LABEL_LISTS = ('.csv', '.tsv', '.txt', *JSON_LISTS)
# A text kept in a file of its own beside each image, as OCR ground truth is (tesstrain's and
# kraken's `0001.gt.txt` beside `0001.png`), or `0001.txt`: the suffixes looked for, in order.
TEXT_FILES = ('.gt.txt', '.txt')
_SHOWN = 5  # the files an error or warning names of a longer list of them
# What JSON records call the image's path, the likelier first (`image_width` is no path).
_PATH_KEYS = tuple(
  re.compile(pattern, re.IGNORECASE)
  for pattern in (
    r'^(file_?name|file|file_?path|path|image|image_?path|img)$',
    r'file|path',
    r'^(image|img)',
    'name',
  )
)
# What their headers call the texts' column: a name holding one of these (`captcha_text`,
# `groundtruth`, `Label`) and no word that names another thing of a text (`captcha_id`,
# `text_len`, `target_url`).
_TEXT_COLUMN = re.compile(
  r'text|label|captcha|answer|solution|result|code|word|string|target|truth|transcri|content|chars'
  r'|ocr|^\s*(gt|y|value)\s*$',
  re.IGNORECASE,
)
_NOT_TEXT_WORDS = frozenset(
  'id ids url uri path file filename type hash md5 sha len length size width height time date '
  'count index idx num number'.split()
)
# The names sets that come split give their splits' sub-folders (in any case).
SPLIT_FOLDERS = {
  'train': ('train', 'training'),
  'val': ('val', 'valid', 'validation', 'dev'),
  'test': ('test', 'testing'),
}


@dataclasses.dataclass(frozen=True)
class Example:
  path: str
  text: str


def label_from_path(path: str | Path, pattern: str = '') -> str | None:
  """The text an image shows: its file name without its extension (twice, as in `abcde.png.png`),
  a copy's suffix (` (1)`, ` copy`, ...) or spaces around it; of that, the first group (or the
  match) of the regular expression `pattern` where one is given (config.label_pattern), None
  where it does not match."""
  stem = unicodedata.normalize('NFC', Path(path).stem)  # macOS writes names decomposed (NFD)
  if Path(stem).suffix.lower() in images.IMAGE_EXTENSIONS:
    stem = Path(stem).stem
  name = _COPY_SUFFIX.sub('', stem.strip()).strip()
  if not pattern:
    return name
  found = re.search(pattern, name)
  return None if found is None else found.group(1 if found.re.groups else 0).strip()


def find_images(folder: str | Path) -> tuple[list[Path], list[str]]:
  """Image files directly in `folder`, sorted by name so every OS sees one order; and what was
  passed over there (sub-folders, broken links, other files but the images' text files), one
  line each. DataError when it holds none."""
  folder = Path(folder).expanduser()
  if not folder.is_dir():
    raise DataError(f'Data folder {str(folder)!r} does not exist or is not a folder.')
  found, passed_over = [], []
  entries = sorted(_entries(folder))
  beside = set(text_files(entries).values())
  for path in entries:
    if path in beside:  # an image's text, not an image
      continue
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
    subfolders = sorted(p.name for p in _entries(folder) if p.is_dir())
    inside = f' directly, only the sub-folders {", ".join(subfolders)}' if subfolders else ''
    raise DataError(f'Folder {str(folder)!r} holds no images ({extensions}){inside}.')
  return found, passed_over


def text_files(entries: Sequence[Path]) -> dict[Path, Path]:
  """{image: its text file} of the images among a folder's `entries` that have one beside them:
  `0001.gt.txt` beside `0001.png`, or `0001.txt` where the images' names are ids, not texts
  (`settings.names_are_ids`: a `226md.txt` beside `226md.png` may hold anything a scraper kept)."""
  names = {path.name: path for path in entries if path.name.endswith(TEXT_FILES)}
  if not names:  # most folders: nothing to match, nor names to tell ids by
    return {}
  pictures = [path for path in entries if path.suffix.lower() in images.IMAGE_EXTENSIONS]
  suffixes = TEXT_FILES
  if not settings.names_are_ids([label_from_path(path) for path in pictures]):
    suffixes = TEXT_FILES[:1]
  found = {}
  for path in pictures:
    beside = (names.get(path.stem + suffix) for suffix in suffixes)
    if text_file := next(filter(None, beside), None):
      found[path] = text_file
  return found


def texts_beside(folder: Path) -> dict[Path, Path] | None:
  """{image: its text file} where half of the images in `folder` or more have one beside them
  (`text_files`), for the texts to be read from those files; else None (the names are the
  texts)."""
  entries = _entries(folder)
  if not (found := text_files(entries)):
    return None
  return found if len(found) >= sum(map(is_image_file, entries)) / 2 else None


def read_text_file(path: Path) -> str:
  """The one text an image's text file holds, stripped; DataError naming the file where it holds
  none or several lines."""
  lines = [line.strip() for line in _read_text(path, 'Text file').splitlines() if line.strip()]
  if len(lines) != 1:
    what = 'no text' if not lines else f'{len(lines)} lines, where one text was expected'
    raise DataError(f'{path}: {what}')
  return lines[0]


def _entries(folder: Path) -> list[Path]:
  """What `folder` holds; DataError where it cannot be listed (its permissions, say)."""
  try:
    return list(folder.iterdir())
  except OSError as e:
    raise DataError(f'Folder {str(folder)!r} cannot be read ({e.strerror or e}).') from e


def split_folders(folder: Path) -> dict[str, Path]:
  """{split: its sub-folder} of a set that comes split (train/ and val/ or test/, or the other
  names of SPLIT_FOLDERS) into sub-folders of `folder`, which holds no image itself; else {}."""
  if not folder.is_dir():
    return {}
  entries = _entries(folder)
  if any(map(is_image_file, entries)):
    return {}
  found = {}
  for split, names in SPLIT_FOLDERS.items():
    if folders := sorted(p for p in entries if p.is_dir() and p.name.lower() in names):
      found[split] = folders
  if 'train' not in found or len(found) == 1:
    return {}
  if twice := next((folders for folders in found.values() if len(folders) > 1), None):
    raise DataError(
      f'{str(folder)!r} holds {" and ".join(p.name + "/" for p in twice)}, which both name one '
      'split: merge them, or move one away.'
    )
  return {split: folders[0] for split, folders in found.items()}


def _utf8(name: str) -> bool:
  """False for a name the OS gave as bytes that are not UTF-8 (held as lone surrogates)."""
  try:
    name.encode('utf-8')
  except UnicodeEncodeError:
    return False
  return True


def read_labels_file(path: Path, folder: Path) -> tuple[list[Example], list[str], list[str]]:
  """(path, text) rows of a CSV (',' or ';'), TSV or space-separated file, or of a JSON one
  (`_json_table`), paths relative to `folder`; its bad lines; and its header ([] where it has
  none).

  A first row whose path is neither a file nor an image's name (nor a number: an id, nor shaped
  as the next row's: `img0` before `img1`) is taken as a header; a path without an extension
  names the image of that name with one (a competition's `id,solution`); the paths may be
  relative to the one sub-folder of `folder` they name files in instead (`set/labels.csv`
  listing the `0001.png` of `set/images/`), and written with Windows' '\\'. Missing files, empty
  texts and repeated paths are reported with their line numbers; the first row of a repeated
  path is kept.
  """
  content = _read_text(path, 'Labels file')
  examples, problems, seen, header = [], [], {}, []
  columns = 2  # the fields a row may fill: more only under a header naming them
  text_at = 1  # the texts' column: the second, or the one a header names so
  if path.suffix.lower() in JSON_LISTS:
    header, rows, problems = _json_table(content, path)
    columns, text_at = (len(header), _text_column(header)) if header else (columns, text_at)
    quoting = ''
  else:
    first = content.split('\n', 1)[0]
    # TSV, CSV, CSV of a ';' locale, or `path text` lines (OCR sets' label lists).
    delimiter = next((d for d in '\t,; ' if d in first), ',')
    reader = csv.reader(content.splitlines(), delimiter=delimiter, skipinitialspace=True)
    rows = _rows(reader, path)
    quoting = f' (a text holding {delimiter!r} must be quoted)'
  unit = 'item' if path.suffix.lower() == '.json' else 'line'  # a JSON list's, however laid out
  rows = list(rows)
  files = [row[0].strip() for _, row in rows if row and row[0].strip()]
  base = _base(folder, files[:20])
  like_next = len(files) > 1 and _same_shape(files[0], files[1])  # `img0` before `img1`: no header
  for number, row in rows:
    if not row or not any(field.strip() for field in row):
      continue
    where = f'{path}, {unit} {number}'
    if len(row) < 2:
      problems.append(f'{where}: expected a path and a text, got {row!r}')
      continue
    file = row[0].strip()
    image = _listed_image(base, file)
    named_image = Path(file).suffix.lower() in images.IMAGE_EXTENSIONS or file.isdigit()
    if number == 1 and not header and not image.is_file() and not named_image and not like_next:
      header, columns, text_at = row, len(row), _text_column(row)
      continue
    # No captcha's text starts or ends with a space.
    text = row[text_at].strip() if len(row) > text_at else ''
    if any(field.strip() for field in row[columns:]):  # a text cut at a delimiter it holds
      problems.append(
        f'{where}: {len(row)} fields where a path and a text were expected, got {row!r}' + quoting
      )
    elif not image.is_file():
      problems.append(f'{where}: {str(image)!r} is not a file')
    elif not text:
      problems.append(f'{where}: empty text for {file!r}')
    elif (same := os.path.abspath(image)) in seen:  # also as ./a.png or sub/../a.png
      problems.append(f'{where}: {file!r} is listed again (first on {unit} {seen[same]})')
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


def _json_table(
  content: str, path: Path
) -> tuple[list[str], list[tuple[int, list[str]]], list[str]]:
  """A JSON labels file as a table: its header (its records' keys, the path's first), its rows
  (line or item number, fields) and its bad lines. JSON Lines of records (`{"file_name":
  "0001.png", "text": "abcd"}`) or of `[path, text]` rows; one JSON list of either; or one
  object mapping each path to its text."""
  problems, records = [], []
  if path.suffix.lower() == '.jsonl':
    for number, line in enumerate(content.splitlines(), 1):
      if line.strip():
        try:
          records.append((number, json.loads(line)))
        except ValueError as e:
          problems.append(f'{path}, line {number}: not JSON ({e})')
  else:
    try:
      value = json.loads(content)
    except ValueError as e:
      raise DataError(f'Labels file {str(path)!r} is not JSON ({e}).') from e
    if isinstance(value, dict):
      value = [[file, text] for file, text in value.items()]
    records = list(enumerate(value if isinstance(value, list) else [value], 1))
  keys = next((list(r) for _, r in records if isinstance(r, dict) and r), [])
  file_key = next((k for pattern in _PATH_KEYS for k in keys if pattern.search(k)), None)
  header = [file_key, *(k for k in keys if k != file_key)] if file_key else keys
  rows = []
  for number, record in records:
    if isinstance(record, dict):
      rows.append((number, [_field(record.get(key)) for key in header]))
    elif isinstance(record, list):
      rows.append((number, [_field(field) for field in record]))
    else:
      unit = 'line' if path.suffix.lower() == '.jsonl' else 'item'
      problems.append(f'{path}, {unit} {number}: expected a path and a text, got {record!r}')
  return header, rows, problems


def _field(value) -> str:
  """A JSON value as a table's field: a number's digits, nothing for null."""
  return '' if value is None else str(value)


def _read_text(path: Path, what: str) -> str:
  """The text of a list file: UTF-8 (with or without its BOM), or UTF-16 with its BOM (what
  Excel's "Unicode Text" writes)."""
  try:
    raw = path.read_bytes()
    return raw.decode('utf-16' if raw[:2] in (b'\xff\xfe', b'\xfe\xff') else 'utf-8-sig')
  except (OSError, UnicodeDecodeError) as e:
    raise DataError(f'{what} {str(path)!r} cannot be read ({e}).') from e


def _rows(rows, path: Path):
  """(line number, row) of a csv reader; DataError naming the line where the file is no CSV (an
  unclosed quote running on for 128 KB)."""
  try:
    for row in rows:
      yield rows.line_num, row
  except csv.Error as e:
    raise DataError(f'{path}, line {rows.line_num}: not a list of images ({e}).') from e


def _base(folder: Path, files: Sequence[str]) -> Path:
  """The folder a list's `files` are relative to: `folder`, or where they name no file there, the
  one sub-folder of it they do name files in."""

  def names_files(where: Path) -> bool:
    return any(_listed_image(where, file).is_file() for file in files)

  if len(files) < 2 or names_files(folder):  # one line: no list, whatever it names
    return folder
  with os.scandir(folder) as entries:
    inside = sorted(Path(e.path) for e in entries if e.is_dir() and names_files(Path(e.path)))
  return inside[0] if len(inside) == 1 else folder


def _same_shape(a: str, b: str) -> bool:
  """Whether two names are alike but for their numbers (`img0`, `img1`): rows of one list."""
  return any(c.isdigit() for c in a) and settings.number_shape(a) == settings.number_shape(b)


def _listed_image(folder: Path, file: str) -> Path:
  """The image a labels file's row names: `folder/file` (its '\\' read as '/' where the name is
  no file), or where `file` has no extension and that is no file, the one image named `file`
  with one."""
  if '\\' in file and not (folder / file).is_file():  # a list written on Windows
    file = file.replace('\\', '/')
  image = folder / file
  if Path(file).suffix or image.is_file():
    return image
  named = (
    folder / f'{file}{extension}'
    for lower in images.IMAGE_EXTENSIONS
    for extension in (lower, lower.upper())
  )
  return next((candidate for candidate in named if candidate.is_file()), image)


def _text_column(header: Sequence[str]) -> int:
  """The column of the texts under `header`: the first after the paths that it names as the texts
  (`file,id,label`: 2), else the second."""
  return next((i for i, name in enumerate(header) if i and names_texts(name)), 1)


def find_labels_file(folder: Path, split: bool = False) -> Path | None:
  """config.labels_file 'auto': the one CSV, TSV, text or JSON file directly in `folder` that
  gives the texts of half its images or more (under a header, if it has one, that names them
  so); None where none does (the names are the texts).
  ConfigError where several do: which one holds the texts is the user's to say (`split`: where
  `folder` is one split's folder of the set, by keeping one there)."""
  if not folder.is_dir():
    return None
  entries = _entries(folder)
  count = sum(map(is_image_file, entries))
  listing, unread = [], []
  for file in _lists(entries):
    examples, problem = read_as_list(file, folder, count)
    if not problem:
      listing.append(file)
    elif examples:  # a list of the images, of something else than their texts or of too few
      unread.append(f'{file}: {problem}.')
  if not listing:
    for warning in unread:
      logging.warning('%s', warning)
  if len(listing) > 1 and split:
    raise ConfigError(
      f'{", ".join(p.name for p in listing)} in {str(folder)!r} each give the texts of its '
      'images: keep the one to read in that folder and move the others out (each split folder '
      'is read by its own list).'
    )
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


def _lists(entries: Sequence[Path]) -> list[Path]:
  """The files among a folder's `entries` that may list its images' texts: named as a list
  (LABEL_LISTS), and not one image's text file (`text_files`)."""
  beside = set(text_files(entries).values())
  return sorted(
    p for p in entries if p.suffix.lower() in LABEL_LISTS and p not in beside and p.is_file()
  )


def read_as_list(file: Path, folder: Path, count: int) -> tuple[list[Example], str]:
  """The examples `file` lists as the images of `folder` (`count` of them directly in it) and
  their texts (`read_labels_file`), and why it is not read as their list ('' where it is): its
  first bad line where it lists none."""
  try:
    examples, _, header = read_labels_file(file, folder)
  except DataError as e:
    lines = str(e).splitlines()
    return [], lines[1].strip() if len(lines) > 1 else lines[0]
  if 'confidence' in header:  # predict --output's columns
    return examples, (
      'it holds readings of captcha-jax-predict --output, not labels: self-training reads it '
      'through config.pseudo_labels'
    )
  if header and not any(map(names_texts, header[1:])):  # 'file,width,height': other things
    return examples, (
      f'its header, {",".join(header)}, names no column as the texts: config.labels_file set '
      'to it reads its second column as them'
    )
  if len(examples) < max(count / 2, 1):
    return examples, (
      f'it gives the texts of {len(examples)} of the {count} images, under half: '
      'config.labels_file set to it reads it (the images it does not list are then left out)'
    )
  return examples, ''


def why_no_texts(folder: Path, top: Path) -> list[str]:
  """Why `folder` gives no texts but its images' names, for the errors of a set whose names are
  no texts: 'NAME was not read as one (why)' of its lists (NAME relative to `top`; the first
  few), and how many of its images have a text file beside them, too few to be read."""
  entries = _entries(folder)
  count = sum(map(is_image_file, entries))
  files = _lists(entries)
  lines = [
    f'{path.relative_to(top)} was not read as one' + (f' ({problem})' if problem else '')
    for path in files[:_SHOWN]
    for problem in [read_as_list(path, folder, count)[1]]
  ]
  if len(files) > _SHOWN:
    lines.append(f'{len(files) - _SHOWN} more files named as lists were not read as one')
  if beside := len(text_files(entries)):
    lines.append(
      f'{beside} of its {count} images have their text in a file beside them (0001.txt beside '
      '0001.png), under half: not read'
    )
  return lines


def find_examples(
  config: ml_collections.ConfigDict, folder: Path
) -> tuple[list[Example], list[str]]:
  """Every labelled image of the set, with `config.case` applied; and the problems met. With
  config.labels_file 'auto' and no list in `folder`, each split folder (`split_folders`) is read
  as a data folder: by the list it holds (`find_labels_file`: a Hugging Face image folder's
  `train/metadata.jsonl`), else by the text file beside each image (`texts_beside`), else by the
  names."""
  labels_file = config.labels_file
  auto = labels_file == settings.AUTO
  if auto:
    labels_file = find_labels_file(folder)
  if labels_file:
    labels = Path(labels_file).expanduser()
    labels = labels if labels.is_absolute() else folder / labels
    if not labels.is_file():
      raise DataError(f'Labels file {str(labels)!r} does not exist (config.labels_file).')
    examples, problems, _ = read_labels_file(labels, folder)
    _warn_unlisted(labels, examples)
  else:
    paths, problems, examples = [], [], []
    for where in split_folders(folder).values() or [folder]:
      if auto and where != folder and (listing := find_labels_file(where, split=True)):
        logging.info('The texts of %s are those %s gives.', where, listing)
        listed, bad, _ = read_labels_file(listing, where)
        _warn_unlisted(listing, listed)
        examples += listed
        problems += bad
        continue
      try:
        found, passed_over = find_images(where)
      except DataError as e:
        unread = ''.join(f'; {line}' for line in why_no_texts(where, folder))
        raise DataError(
          f'{e} It should hold images named by their text, like 226md.png (or sub-folders train/ '
          f'and val/ or test/ of them), or set config.labels_file{unread}.'
        ) from None
      problems += passed_over
      if auto and (beside := texts_beside(where)):
        logging.info('The texts of %s are those of the text file beside each image.', where)
        for image in found:
          if image not in beside:
            problems.append(f'{image}: no text file beside it, where the others have one')
            continue
          try:
            examples.append(Example(str(image), read_text_file(beside[image])))
          except DataError as e:
            problems.append(str(e))
        continue
      paths += found
    pattern = config.get('label_pattern', '')
    if pattern == settings.AUTO:
      pattern, why = settings.text_pattern([label_from_path(path) for path in paths])
      if pattern:
        logging.info('Labels read from the file names of %s with %r: %s.', folder, pattern, why)
    for path in paths:
      text = label_from_path(path, pattern)
      if text:
        examples.append(Example(str(path), text))
      elif text is None:
        problems.append(f'{path}: its name does not match label_pattern {pattern!r}')
      else:
        problems.append(f'{path}: empty label (the file name is the label)')
  return [Example(e.path, _fold(config, e.text)) for e in examples], problems


def _warn_unlisted(listing: Path, examples: Sequence[Example]) -> None:
  """Names the images beside those `listing` gives the texts of that neither it nor another list
  beside it (`test.csv` beside `train.csv`) lists: they are left out, and a list cut short or
  written for another folder should not pass unnoticed."""
  try:
    listed = {os.path.abspath(e.path) for e in examples}
    for other in _lists(_entries(listing.parent)):
      if other != listing and not (given := read_as_list(other, listing.parent, 0))[1]:
        listed |= {os.path.abspath(e.path) for e in given[0]}
    unlisted = sorted(
      str(path)
      for where in {Path(e.path).parent for e in examples}
      for path in _entries(where)
      if is_image_file(path) and os.path.abspath(path) not in listed
    )
  except DataError:  # a folder that cannot be listed: its images are not read either way
    return
  if unlisted:
    logging.warning(
      'Left out %d image(s) beside those %s lists, which it gives no text of: %s%s.',
      len(unlisted),
      listing,
      ', '.join(unlisted[:_SHOWN]),
      ', ...' if len(unlisted) > _SHOWN else '',
    )


def _fold(config: ml_collections.ConfigDict, text: str) -> str:
  return {'keep': str, 'lower': str.lower, 'upper': str.upper}[config.case](text)


def read_readings(path: Path, min_confidence: float) -> tuple[list[Example], int, list[str]]:
  """The readings of a `captcha-jax-predict --output FILE.csv` (or `.jsonl`) at confidence ≥
  min_confidence, as examples (predict writes absolute paths; relative ones are taken from the
  file's folder); how many readings the file holds; and its bad lines."""
  content = _read_text(path, 'Pseudo-labels file')
  problems = []
  if path.suffix.lower() in JSON_LISTS:
    header, table, problems = _json_table(content, path)
    rows = ((number, dict(zip(header, row, strict=False))) for number, row in table)
  else:
    reader = csv.DictReader(content.splitlines())
    try:
      header = reader.fieldnames or []
    except csv.Error as e:
      raise DataError(f'{path}, line 1: not a readings file ({e}).') from e
    rows = _rows(reader, path)
  if not {'file', 'text', 'confidence'} <= set(header):
    raise DataError(
      f'Pseudo-labels file {str(path)!r} has no file, text and confidence columns: write it '
      'with captcha-jax-predict --output FILE.csv (or .jsonl).'
    )
  unit = 'item' if path.suffix.lower() == '.json' else 'line'
  examples, total, seen = [], 0, {}
  for number, row in rows:
    total += 1
    where = f'{path}, {unit} {number}'
    if missing := [key for key in ('file', 'text', 'confidence') if row.get(key) is None]:
      problems.append(f'{where}: no {", ".join(missing)}')
      continue
    try:
      confidence = float(row['confidence'])
    except ValueError:
      problems.append(f'{where}: confidence {row["confidence"]!r} is not a number')
      continue
    # `not >=`: a nan confidence (a reading the model could not score) is not a confident one
    if not confidence >= min_confidence or not row['text']:
      continue
    image = path.parent / Path(row['file']).expanduser()
    if not image.is_file():
      problems.append(f'{where}: {str(image)!r} is not a file')
    elif (same := os.path.abspath(image)) in seen:  # one image, trained on once
      problems.append(f'{where}: {same!r} is read again (first on {unit} {seen[same]})')
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
  readable = []
  for e in readings:
    text = _fold(config, e.text)
    if unknown := vocab.unknown_chars(text):
      problems.append(f'{e.path}: reading {text!r}: {unknown!r} is not in the alphabet')
    elif 0 < config.max_label_length < len(text):
      problems.append(f'{e.path}: reading {text!r} is longer than max_label_length')
    elif ctc.required_steps(vocab.encode(text)) > ctc_steps:
      problems.append(f'{e.path}: reading {text!r} needs more than the {ctc_steps} CTC steps')
    else:
      readable.append(Example(e.path, text))
  report_problems(problems, repr(str(path)), config.skip_bad_files)
  fresh, copies = not_labelled([e.path for e in readable], [e.path for e in labelled])
  kept = [e for e in readable if e.path in set(fresh)]
  if same := len(readable) - len(kept) - len(copies):
    logging.warning(
      '%d readings in %s are of labelled images themselves: left out, as they keep their labels '
      '(were the unlabelled images those of the data folder?).',
      same,
      path,
    )
  if copies:
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


def not_labelled(paths: Sequence[str], labelled: Sequence[str]) -> tuple[list[str], dict[str, str]]:
  """Those of `paths` that are neither one of the `labelled` images (where they resolve to) nor a
  byte-for-byte copy of one, in order; and {copy: its original} of those left out as copies."""
  known = {Path(path).resolve() for path in labelled}
  fresh = [path for path in paths if Path(path).resolve() not in known]
  copies = copies_of(fresh, labelled)
  return [path for path in fresh if path not in copies], copies


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
    if folder.is_file():
      unpack = {
        '.zip': f' (unpack it: unzip {folder} -d data)',
        '.parquet': f' (the folder that holds it: {folder.parent})',
      }.get(folder.suffix.lower(), '')
      raise DataError(
        f'Data folder {str(folder)!r} (config.data_dir) is a file, not a folder{unpack}: point it '
        'at the folder of images.'
      )
    cache = Path(config.download_dir).expanduser()
    if not folder.is_dir() and folder.is_relative_to(cache):  # a run's copy, deleted since
      from captcha_jax import download

      name = download.cache_name(config.data_url, config.data_sha256, config.data_git_blob)
      if config.data_url and folder.is_relative_to(cache / name):  # fetched again, as it was
        fetched = config.copy_and_resolve_references()
        fetched.data_dir = ''
        return data_folder(fetched)
      raise DataError(
        f'Data folder {str(folder)!r} (config.data_dir) was unpacked into config.download_dir '
        'and has been deleted since: run the training command again, on the folder it was '
        'unpacked from, to unpack it anew.'
      )
    if not folder.is_dir():
      raise DataError(
        f'Data folder {str(folder)!r} (config.data_dir) does not exist. Point it at a folder of '
        'images named by their text, or leave it empty to download config.data_url.'
      )
    return readable_folder(folder, config.download_dir)
  if not config.data_url:
    raise DataError('No data: set --config.data_dir to a folder of images named by their text.')
  from captcha_jax import download

  fetched = download.fetch(
    config.data_url,
    config.download_dir,
    sha256=config.data_sha256,
    git_blob_sha1=config.data_git_blob,
    min_images=config.data_min_images,
  )
  # Read from the top of what was unpacked, as config.data_dir would be, where that reads as a set
  # (split folders, a list, images): a set that comes split keeps its split, a list above the
  # images is found, an `unlabeled/` of more images is no split. Else (a repository's archive,
  # a README beside `images/`) the folder of the most images.
  cache = Path(config.download_dir).expanduser()
  top = readable_folder(cache / fetched.relative_to(cache).parts[0], cache)
  if split_folders(top) or find_labels_file(top) or any(map(is_image_file, _entries(top))):
    return top
  logging.info('Reading %s, the folder of the most images %s holds.', fetched, config.data_url)
  return fetched


def unreadable_odd_files(examples: Sequence[Example]) -> dict[str, str]:
  """{path: the problem} of the examples whose names are unlike the others' (`odd_labels`:
  'broken', 'Thumbs') and whose files are no images; of every example in a set too small to tell
  odd names (under `ODD_LABELS_MIN`). Any file that is no image counts in the settings read from
  the names until decoding finds it out, and such a name would set them; only these headers are
  read, which costs a few reads."""
  if len(examples) < settings.ODD_LABELS_MIN:
    suspects = [e.path for e in examples]
  else:
    suspects = [path for path, _ in settings.odd_labels([(e.path, e.text) for e in examples])]
  unreadable = {}
  for path in suspects:
    try:
      images.image_size(path)
    except DataError as error:
      unreadable[path] = str(error)
  return unreadable


def readable_folder(folder: Path, cache_dir: str | Path) -> Path:
  """The folder of images `folder` is read as: the one inside lone folders
  (`inside_lone_folders`); for a folder of Parquet files, the folder they unpack to under
  `cache_dir` (`parquet_sets`)."""
  from captcha_jax import parquet_sets

  folder = inside_lone_folders(folder)
  if parquet_sets.parquet_files(folder):
    return parquet_sets.unpacked(folder, cache_dir)
  return folder


def is_image_file(path: Path) -> bool:
  """Whether `path` is named as an image and is a file (not macOS's `._` metadata)."""
  suffix = path.suffix.lower()
  return suffix in images.IMAGE_EXTENSIONS and not path.name.startswith('._') and path.is_file()


def names_texts(name: str) -> bool:
  """Whether a column's name says it holds the texts (`text`, `label`, `solution`, ...), and no
  word of it another thing (`captcha_id` and `content_type` are no texts' column)."""
  words = re.findall(r'[a-z]+|\d+', re.sub(r'([a-z])([A-Z])', r'\1 \2', name).lower())
  return _TEXT_COLUMN.search(name) is not None and not _NOT_TEXT_WORDS.intersection(words)


def inside_lone_folders(folder: Path) -> Path:
  """`folder`, or the folder it holds and nothing else, and so on down: a zip often unpacks to
  `samples/samples/`. Hidden entries and macOS's __MACOSX/ do not count."""
  seen = set()
  while folder.resolve() not in seen:  # a link back up ends the walk
    seen.add(folder.resolve())
    entries = [p for p in _entries(folder) if not p.name.startswith('.') and p.name != '__MACOSX']
    if len(entries) != 1 or not entries[0].is_dir():
      break
    logging.info('%s holds only the folder %s: reading that.', folder, entries[0].name)
    folder = entries[0]
  return folder
