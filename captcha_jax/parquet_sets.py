"""A set shipped as Parquet, as the Hugging Face Hub stores datasets (`train-00000-of-00001.parquet`
of rows {image: {bytes, path}, text}): unpacked once into a cached folder of images and their
labels lists, which the rest of the package reads as any folder.

    data folder of .parquet files → CACHE/NAME-<hash>/[train/, test/, ...]labels.csv + images

Needs pyarrow (`pip install pyarrow`), imported only when such a folder is met. As with a
download, the cached folder appears by one rename once every row is written.
"""

import csv
import hashlib
import logging
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from captcha_jax import labelled
from captcha_jax.errors import DataError

# Magic numbers of the image formats `images.FORMATS` reads, for the files' extensions.
_MAGIC = (
  (b'\x89PNG', '.png'),
  (b'\xff\xd8', '.jpg'),
  (b'GIF8', '.gif'),
  (b'BM', '.bmp'),
  (b'II*\x00', '.tif'),
  (b'MM\x00*', '.tif'),
)
# `train-00000-of-00003.parquet`, `train-00000-of-00001-1c06a67d80bbbd1d.parquet`,
# `test.parquet`: the split a Hub file holds is the word its name starts with.
_SPLIT_OF_FILE = re.compile(r'^([A-Za-z]+)(?:[-_.]|$)')
_BATCH_ROWS = 512  # rows read at a time: memory stays flat however large the file
# The Hub's split names that are not a split folder's: written as the folder they stand for.
_ALIASES = {'eval': 'validation'}


def parquet_files(folder: Path) -> list[Path]:
  """The .parquet files of a folder that holds no image: directly in it, or in its `data/` (as a
  Hub dataset's repository lays them out)."""
  found = []
  for where in (folder, folder / 'data'):
    if where.is_dir():
      entries = list(where.iterdir())
      if any(labelled.is_image_file(p) for p in entries):
        return []
      found += sorted(p for p in entries if p.suffix.lower() == '.parquet' and p.is_file())
  return found


def unpacked(folder: Path, cache_dir: str | Path) -> Path:
  """The folder the .parquet files of `folder` unpack to under `cache_dir`, unpacked now unless
  it already is: one sub-folder per split the files' names give (train/, test/, ...), each with
  its images and a `labels.csv`; or one folder, where they give none or one."""
  files = parquet_files(folder)
  digest = hashlib.sha256()
  for path in files:  # by name, size and time: a set of some GB is not read to be found again
    stat = path.stat()
    digest.update(f'{path.name}\0{stat.st_size}\0{stat.st_mtime_ns}\0'.encode())
  name = folder.parent.name if folder.name == 'data' else folder.name  # a Hub repository's data/
  final = Path(cache_dir).expanduser() / f'{name}-parquet-{digest.hexdigest()[:12]}'
  if final.is_dir():
    return final
  final.parent.mkdir(parents=True, exist_ok=True)
  splits = {path: _split_of(path) for path in files}
  known = {split for names in labelled.SPLIT_FOLDERS.values() for split in names}
  named = set(splits.values()) & known
  # A train file beside others: files of no known split (`unlabeled-`, `extra-`) are no part of
  # the set; the known ones keep their split, where more than train's are left.
  train = bool(named & set(labelled.SPLIT_FOLDERS['train']))
  if train and (others := sorted(p.name for p, split in splits.items() if split not in known)):
    logging.warning(
      'Leaving out %s: not a split of the set (%s).', ', '.join(others), ', '.join(sorted(named))
    )
    files = [path for path in files if splits[path] in known]
  apart = train and len(named) > 1
  temporary = Path(tempfile.mkdtemp(dir=final.parent, prefix=f'.{final.name}.', suffix='.tmp'))
  try:
    rows: dict[Path, list[tuple[str, str]]] = {}
    empty = []  # rows of no image or no text, by file and row: no file of the cache names them
    for path in files:
      where = temporary / splits[path] if apart else temporary
      where.mkdir(exist_ok=True)
      listed = rows.setdefault(where, [])
      for row, (image, text) in enumerate(_rows(path)):
        if not image or not text.strip():
          empty.append(f'{path.name}, row {row}: no {"image" if not image else "text"}')
          continue
        name = f'{len(listed):06d}{_extension(image)}'
        (where / name).write_bytes(image)
        listed.append((name, text))
    for where, listed in rows.items():
      _write_labels(where / 'labels.csv', listed)
    try:
      temporary.rename(final)
    except OSError:
      if not final.is_dir():  # else another process unpacked the same files first
        raise
  finally:
    shutil.rmtree(temporary, ignore_errors=True)
  counts = (f'{where.name if apart else "all"} {len(listed)}' for where, listed in rows.items())
  logging.info('Unpacked %s into %s: %s images.', folder, final, ', '.join(counts))
  if empty:
    logging.warning(
      'Left out %d row(s) of no image or text: %s%s.',
      len(empty),
      '; '.join(empty[:5]),
      '; ...' if len(empty) > 5 else '',
    )
  return final


def _split_of(path: Path) -> str:
  """The split a file's name gives (`train-00000-of-00002` → train, `eval-…` → validation),
  lower-case; '' where it gives none."""
  found = _SPLIT_OF_FILE.match(path.stem)
  split = found.group(1).lower() if found else ''
  return _ALIASES.get(split, split)


def _rows(path: Path) -> Iterator[tuple[bytes, str]]:
  """(encoded image, text) of each row of a Parquet file, `_BATCH_ROWS` at a time."""
  try:
    import pyarrow.parquet as pq
  except ImportError as e:
    raise DataError(f'{path} is Parquet: reading it needs pyarrow (pip install pyarrow).') from e
  try:
    table = pq.ParquetFile(path)
    image_column, text_column = _columns(table.schema_arrow, path)
    for batch in table.iter_batches(_BATCH_ROWS, columns=[image_column, text_column]):
      for image, text in zip(*(batch.column(i).to_pylist() for i in (0, 1)), strict=True):
        if isinstance(image, dict):  # the Hub's Image feature: {bytes, path}
          image = image.get('bytes')
        yield image or b'', '' if text is None else str(text)
  except DataError:
    raise
  except Exception as e:  # pyarrow's errors for a damaged or foreign file are of many types
    raise DataError(f'{path} is not a readable Parquet file ({type(e).__name__}: {e}).') from e


def _columns(schema, path: Path) -> tuple[str, str]:
  """The names of the images' column (binary, or a struct holding `bytes`) and of the texts'
  (a string column its name calls the texts, or the only string column)."""
  import pyarrow as pa

  def is_image(t) -> bool:
    return (
      pa.types.is_binary(t)
      or pa.types.is_large_binary(t)
      or (pa.types.is_struct(t) and any(t.field(i).name == 'bytes' for i in range(t.num_fields)))
    )

  images = [f.name for f in schema if is_image(f.type)]
  strings = [
    f.name for f in schema if pa.types.is_string(f.type) or pa.types.is_large_string(f.type)
  ]
  named = [name for name in strings if labelled.names_texts(name)]
  texts = named or strings
  if len(images) != 1 or not texts or (not named and len(strings) > 1):
    raise DataError(
      f'{path}: expected one column of images and one of their texts, found columns '
      f'{", ".join(f"{f.name} ({f.type})" for f in schema)}.'
    )
  return images[0], texts[0]


def _extension(image: bytes) -> str:
  if image[:4] == b'RIFF' and image[8:12] == b'WEBP':
    return '.webp'
  return next((extension for magic, extension in _MAGIC if image.startswith(magic)), '.bin')


def _write_labels(path: Path, listed: list[tuple[str, str]]) -> None:
  with open(path, 'w', newline='', encoding='utf-8') as f:
    rows = csv.writer(f)
    rows.writerow(('file', 'text'))
    rows.writerows(listed)
