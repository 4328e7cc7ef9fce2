"""Where a split's examples come from, one at a time: `example(i)` → (uint8 image, text).

- `data.Dataset`: decoded into memory (small sets).
- `RecordSource`: the tensorflow-datasets copy's array_record files, read record by record.
- `SyntheticSource`: generated on demand (`synthetic.sample`), endless, for pre-training.

Each is deterministic in any process, so a split shards and resumes the same whatever its source
(`batches.py` turns them into batches).
"""

import dataclasses
import importlib.util
import logging
from collections.abc import Callable, Sequence
from typing import Protocol

import ml_collections
import numpy as np

from captcha_jax import data, fonts, images, labelled, settings, synthetic
from captcha_jax.errors import ConfigError, DataError
from captcha_jax.vocab import Vocab


class ExampleSource(Protocol):
  """Random access to a split: `example(i)` is ([height, width, 3] uint8 RGB, text).

  `paths[i]` names element i in messages (a bad batch's files).
  """

  paths: Sequence[str]

  def __len__(self) -> int: ...

  def example(self, index: int) -> tuple[np.ndarray, str]: ...


# Records whose names are read per call while the file_name → record index map is built.
_INDEX_CHUNK = 4096


class RecordSource:
  """A prepared tfds split read record by record, in the order of its examples list.

  tfds stores records in the order of a hash of their keys; `RecordSource` maps them back once,
  so element i is the i-th example still in the prepared copy: the same sequence as the
  in-memory `Dataset` of those examples. Examples the builder skipped (undecodable files) are
  left out and listed in `missing`, as `data.load_in_memory` leaves them out. In memory: a record
  index per example, and the paths and texts of the examples list.
  """

  def __init__(
    self, records: Sequence[bytes], examples: Sequence[labelled.Example], height: int, width: int
  ):
    """`records`: the split's serialized records, `as_data_source(split,
    deserialize_method=RAW_BYTES)`. Parsed here with the compiled proto parser: reading a record
    takes ~50 µs where tfds' Python parser takes ~250 µs, which matters for the index."""
    where = {name: i for i, name in enumerate(_file_names(records))}
    kept = [e for e in examples if e.path in where]
    if len(kept) != len(where):
      extra = sorted(set(where) - {e.path for e in examples})[:5]
      raise DataError(
        f'The prepared tfds copy holds {len(where)} record(s) where its examples list keeps '
        f'{len(kept)}, e.g. {extra}: it was prepared from other examples; prepare it anew.'
      )
    self.records = records
    self.height, self.width = height, width
    self.record_index = np.array([where[e.path] for e in kept], np.int64)
    self.paths = tuple(e.path for e in kept)
    self.missing = tuple(e.path for e in examples if e.path not in where)

  def __len__(self) -> int:
    return len(self.paths)

  def example(self, index: int) -> tuple[np.ndarray, str]:
    record = _fields(self.records[int(self.record_index[index])])
    pixels = images.load_image(record['image'], self.height, self.width, name=self.paths[index])
    return pixels, record['label'].decode()


def _fields(record: bytes) -> dict[str, bytes]:
  """The features of one record as stored by tfds: a tf.train.Example of single byte strings
  (the PNG, the label, the file name)."""
  from tensorflow_datasets.proto import tf_example_pb2

  features = tf_example_pb2.Example.FromString(record).features.feature
  return {key: value.bytes_list.value[0] for key, value in features.items()}


def _file_names(records: Sequence[bytes]) -> list[str]:
  """Every record's file name, in record order, read a chunk of records at a time."""
  names = []
  for start in range(0, len(records), _INDEX_CHUNK):
    keys = list(range(start, min(start + _INDEX_CHUNK, len(records))))
    names += [_fields(r)['file_name'].decode() for r in records.__getitems__(keys)]
  return names


def open_records(
  config: ml_collections.ConfigDict, examples: dict[str, list[labelled.Example]]
) -> dict[str, RecordSource]:
  """Each split as a RecordSource of the tfds copy prepared (once) from `resolve`'s examples;
  examples missing from the copy are skipped with one warning (or fatal, see
  config.skip_bad_files), as `data.load_in_memory` skips undecodable files."""
  import tensorflow_datasets as tfds  # optional: pip install 'captcha-jax[tfds]'

  from captcha_jax import tfds_builder

  prepared = tfds_builder.builder(config, examples)
  size = tfds_builder.part_size(config.image_height, config.image_width)
  sources, problems = {}, []
  for name, split in examples.items():
    records = prepared.as_data_source(
      '+'.join(tfds_builder.part_names(name, len(split), size)),
      deserialize_method=tfds.decode.DeserializeMethod.RAW_BYTES,
    )
    source = RecordSource(records, split, config.image_height, config.image_width)
    problems += [
      f'{path}: not in the tfds copy (undecodable when it was made)' for path in source.missing
    ]
    sources[name] = source
  labelled.report_problems(problems, repr(config.data_dir), config.skip_bad_files)
  for name, source in sources.items():
    if not len(source):
      raise data.empty_split(name, len(examples[name]))
  return sources


class _SyntheticNames(Sequence):
  """'synthetic:SEED:INDEX' for each element of a SyntheticSource, made when asked for."""

  def __init__(self, seed: int, offset: int, size: int):
    self.seed, self.offset, self.size = seed, offset, size

  def __len__(self) -> int:
    return self.size

  def __getitem__(self, index: int) -> str:
    if not -self.size <= index < self.size:
      raise IndexError(index)
    return f'synthetic:{self.seed}:{self.offset + index % self.size}'


@dataclasses.dataclass(frozen=True)
class SyntheticSource:
  """`size` elements of the endless synthetic dataset `seed`, from index `offset` on.

  Element i is `synthetic.sample(offset + i, seed, ...)` at height×width: the same in any
  process, so it shards and resumes like a file source. `for_epoch(e)` indexes a fresh stretch
  [e·size, (e+1)·size), the images of training's epoch e + 1, so pre-training never shows an
  image twice.
  """

  seed: int
  size: int
  _: dataclasses.KW_ONLY
  alphabet: str
  lengths: int | tuple[int, int] | str
  case: str
  style: str | synthetic.Style
  height: int
  width: int
  offset: int = 0
  fonts: tuple[str, ...] = fonts.PRETRAINING_FONTS  # the pool 'varied' draws from

  def __post_init__(self) -> None:
    if self.seed < 0 or self.offset < 0 or self.size < 1:
      raise ConfigError(
        f'A synthetic source needs seed >= 0, offset >= 0 and size >= 1, got seed={self.seed}, '
        f'offset={self.offset}, size={self.size}.'
      )
    synthetic.apply_case(self.alphabet, self.case)  # a bad setting fails here, not in a worker
    synthetic.length_range(self.lengths)

  def for_epoch(self, epoch: int) -> 'SyntheticSource':
    return dataclasses.replace(self, offset=epoch * self.size)

  @property
  def paths(self) -> Sequence[str]:
    return _SyntheticNames(self.seed, self.offset, self.size)

  def __len__(self) -> int:
    return self.size

  def example(self, index: int) -> tuple[np.ndarray, str]:
    if not 0 <= index < self.size:
      raise IndexError(f'index {index} outside a synthetic source of {self.size}')
    image, text = synthetic.sample(
      self.offset + index,
      self.seed,
      alphabet=self.alphabet,
      lengths=self.lengths,
      case=self.case,
      style=self.style,
      width=self.width,
      height=self.height,
      fonts=self.fonts,
    )
    return images.load_image(image, self.height, self.width), text


Splits = dict[str, ExampleSource]


def synthetic_settings(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The config of a generated set with its automatic settings filled in from config.synthetic
  (there is no data to read them from); the alphabet and width must be given."""
  config = config.copy_and_resolve_references()
  shortest, longest = synthetic.length_range(config.synthetic.lengths)
  if config.alphabet == settings.AUTO or not config.image_width:
    raise ConfigError(
      'A generated set needs config.alphabet and config.image_width given, not read from data.'
    )
  if config.max_label_length == 0:
    config.max_label_length = longest
  if config.fixed_label_length == settings.AUTO_LENGTH:
    config.fixed_label_length = longest if shortest == longest else 0
  # Given by hand, they must admit every text the stream draws (a folder's are checked likewise).
  fixed = config.fixed_label_length
  if config.max_label_length < longest or (fixed and not shortest == longest == fixed):
    raise ConfigError(
      f'config.synthetic.lengths = {config.synthetic.lengths} draws texts of {shortest} to '
      f'{longest} characters: config.max_label_length = {config.max_label_length} and '
      f'fixed_label_length = {fixed} cannot hold them (leave them to be read: 0 and -1).'
    )
  return config


def _resolve_blank_prior(config: ml_collections.ConfigDict, steps: int) -> None:
  """config.blank_prior = -1 → 1 - L/T for the generator's mean length L, as `data.resolve`
  does for a folder's training labels."""
  if config.blank_prior == settings.AUTO_PRIOR:
    shortest, longest = synthetic.length_range(config.synthetic.lengths)
    config.blank_prior = settings.blank_prior((shortest + longest) / 2, steps)


def synthetic_splits(config: ml_collections.ConfigDict) -> Splits:
  """Train from the generator's stream config.synthetic.seed, `train_images` an epoch (each
  epoch new ones); val and test `eval_images` each, from the two seeds after it."""
  s = config.synthetic
  pool = fonts.font_pool(tuple(s.font_dirs))
  logging.info(
    'Drawing from %d fonts: %d bundled, %d found under %s.',
    len(pool),
    len(fonts.PRETRAINING_FONTS),
    len(pool) - len(fonts.PRETRAINING_FONTS),
    list(s.font_dirs),
  )

  def source(seed: int, size: int) -> SyntheticSource:
    return SyntheticSource(
      seed,
      size,
      alphabet=config.alphabet,
      lengths=s.lengths,
      case=s.case,
      style=s.style,
      height=config.image_height,
      width=config.image_width,
      fonts=pool,
    )

  return {
    'train': source(s.seed, s.train_images),
    'val': source(s.seed + 1, s.eval_images),
    'test': source(s.seed + 2, s.eval_images),
  }


def reader_width(config: ml_collections.ConfigDict) -> int:
  """The narrowest width config.image_width = 0 gives a fine-tuning run: that of the reader it
  starts from, so a narrower set's characters are not squeezed below the scale the reader learned
  them at (bench/README.md); 0 when not fine-tuning."""
  if not config.get('init_from') or config.image_width:
    return 0
  from captcha_jax import transfer  # reads the reader's config only, not its weights

  width = transfer.source_config(config.init_from).image_width
  logging.info('Images at least %d px wide, as the reader %s read them.', width, config.init_from)
  return width


def prepare(
  config: ml_collections.ConfigDict, output_steps: Callable[[int, int], int]
) -> tuple[ml_collections.ConfigDict, Splits]:
  """The run's config with its automatic settings filled in, and its train/val/test sources:
  decoded into memory (config.data_source 'folder'), read from the tensorflow-datasets copy
  ('tfds', for sets too large for memory), or generated ('synthetic', for pre-training).

  `output_steps(height, width)`: the CTC steps the model emits for that image size.
  """
  if config.data_source == 'synthetic':
    config = synthetic_settings(config)
    steps = output_steps(config.image_height, config.image_width)
    longest = [labelled.Example('the longest label', 'x' * config.max_label_length)]
    data.check_label_fit({'train': longest}, Vocab('x'), steps)
    _resolve_blank_prior(config, steps)
    return config, synthetic_splits(config)
  if config.data_source == 'tfds' and not importlib.util.find_spec('tensorflow_datasets'):
    raise ConfigError(
      "config.data_source='tfds' needs tensorflow-datasets, which is not installed: "
      "pip install 'captcha-jax[tfds]' (in a clone, pip install -e '.[tfds]')."
    )
  config, examples = data.resolve(config, output_steps, reader_width(config))
  if config.data_source == 'tfds':
    return config, open_records(config, examples)
  return config, data.load_in_memory(config, examples)
