"""The streaming input path: batches read example by example, in parallel and ahead of use, from
sources too large to decode into memory.

    ExampleSource (RecordSource | SyntheticSource | data.Dataset) → grain → (indices, batch)
                                                                 → prefetch_to_device → steps

`train_batches` and `eval_batches` keep the exact contract of `data.train_batches` and
`data.eval_batches` (order, per-example augmentation, each process's rows, resumption), so a run
streams or decodes into memory with the same batches; only what sits in memory changes: an index
array instead of every image. `grain` reads the batches on worker threads (or processes), and
`prefetch_to_device` overlaps the host→device copy with the step.
"""

import dataclasses
import queue
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, Protocol, TypeVar

import ml_collections
import numpy as np

from captcha_jax import data, images, synthetic
from captcha_jax.errors import ConfigError, DataError
from captcha_jax.vocab import Vocab

T = TypeVar('T')
U = TypeVar('U')


class ExampleSource(Protocol):
  """Random access to a split: `example(i)` is ([height, width, 3] uint8 RGB, text).

  `paths[i]` names element i in messages (a bad batch's files); a `data.Dataset` satisfies the
  protocol once it has `example`.
  """

  paths: Sequence[str]

  def __len__(self) -> int: ...

  def example(self, index: int) -> tuple[np.ndarray, str]: ...


# --- Sources. ---

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
    self, records: Sequence[bytes], examples: Sequence[data.Example], height: int, width: int
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
    self.texts = tuple(e.text for e in kept)
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
  config: ml_collections.ConfigDict, examples: dict[str, list[data.Example]]
) -> dict[str, RecordSource]:
  """Each split as a RecordSource of the tfds copy prepared (once) from `resolve`'s examples;
  examples missing from the copy are skipped with one warning (or fatal, see
  config.skip_bad_files), as `data.load_in_memory` skips undecodable files."""
  import tensorflow_datasets as tfds  # optional: pip install 'captcha-jax[tfds]'

  from captcha_jax import tfds_builder

  prepared = tfds_builder.builder(config, examples)
  sources, problems = {}, []
  for name, split in examples.items():
    records = prepared.as_data_source(
      tfds_builder.TFDS_SPLITS[name], deserialize_method=tfds.decode.DeserializeMethod.RAW_BYTES
    )
    source = RecordSource(records, split, config.image_height, config.image_width)
    problems += [
      f'{path}: not in the tfds copy (undecodable when it was made)' for path in source.missing
    ]
    if not len(source):
      raise DataError(f'No image of the {name} split can be decoded: see the files above.')
    sources[name] = source
  data.report_problems(problems, repr(config.data_dir), config.skip_bad_files)
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
  [e·size, (e+1)·size), so pre-training never shows an image twice.
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
    )
    return images.load_image(image, self.height, self.width), text


# --- Batches. ---


def _read_rows(
  source: ExampleSource, indices: np.ndarray, vocab: Vocab, spec: data.BatchSpec
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(images, labels, lengths) of these elements in the layout of `spec`."""
  pixels = np.empty((len(indices), spec.height, spec.width, 3), np.uint8)
  labels = np.zeros((len(indices), spec.max_label_length), np.int32)
  lengths = np.empty(len(indices), np.int32)
  for row, index in enumerate(indices.tolist()):
    image, text = source.example(index)
    if image.shape != pixels.shape[1:] or image.dtype != np.uint8:
      raise DataError(
        f'{source.paths[index]}: the source gave a {image.dtype} image of {image.shape}, '
        f'not uint8 {pixels.shape[1:]}.'
      )
    if len(text) > spec.max_label_length:
      raise DataError(
        f'{source.paths[index]}: label {text!r} is longer than '
        f'max_label_length={spec.max_label_length}.'
      )
    try:
      ids = vocab.encode(text)
    except ValueError as e:
      raise DataError(f'{source.paths[index]}: {e}') from e
    pixels[row], labels[row, : len(ids)], lengths[row] = image, ids, len(ids)
  return pixels, labels, lengths


class _TrainBatch:
  """Global batch b of an epoch: this process's rows, read and augmented (a grain map, so it is
  pickled into worker processes: it holds the order, never the examples)."""

  def __init__(self, source, spec, vocab, seed, augment_config, order, rows):
    self.source, self.spec, self.vocab = source, spec, vocab
    self.seed, self.augment_config, self.order, self.rows = seed, augment_config, order, rows

  def __call__(self, batch: int) -> tuple[np.ndarray, data.Batch]:
    size = self.spec.size
    positions = np.arange(batch * size, (batch + 1) * size)[self.rows]
    indices = self.order[positions]
    pixels, labels, lengths = _read_rows(self.source, indices, self.vocab, self.spec)
    if self.augment_config is not None and self.augment_config.enabled:
      for row, position in enumerate(positions.tolist()):
        rng = np.random.default_rng([*self.seed, row])
        pixels[row] = data.augment_image(pixels[row], rng, self.augment_config)
    mask = np.ones(len(indices), np.float32)
    return indices, self.spec.make(pixels, labels, lengths, mask)


class _EvalBatch:
  """Global eval batch b: this process's rows, the last batch padded with its first element."""

  def __init__(self, source, spec, vocab, rows):
    self.source, self.spec, self.vocab, self.rows = source, spec, vocab, rows

  def __call__(self, batch: int) -> tuple[np.ndarray, data.Batch]:
    size, total = self.spec.size, len(self.source)
    real = np.arange(batch * size, min((batch + 1) * size, total))
    indices = np.concatenate([real, np.full(size - len(real), real[0])])[self.rows]
    mask = (np.arange(size) < len(real))[self.rows]
    pixels, labels, lengths = _read_rows(self.source, indices, self.vocab, self.spec)
    return indices, self.spec.make(pixels, labels, lengths, mask)


def _read_ahead(
  read_batch: Callable[[int], T], batches: range, workers: int, prefetch: int, processes: int
) -> Iterator[T]:
  """read_batch(b) for b in `batches`, in order, computed ahead by grain.

  Whole batches are the unit of work: grain hands each worker process a slice of the batch
  numbers and interleaves their results back in order, so a batch never mixes workers' rows.
  """
  try:
    import grain
  except ImportError as e:
    raise ConfigError('Streaming batches needs grain: pip install grain.') from e
  dataset = grain.MapDataset.range(batches.start, batches.stop).map(read_batch)
  # Threads suit the record source: decoding and warping run in Pillow's C code.
  options = grain.ReadOptions(num_threads=workers, prefetch_buffer_size=max(prefetch, workers))
  stream = dataset.to_iter_dataset(options)
  if processes:
    from absl import flags

    # grain's workers read its absl flags; outside an absl app (tests, notebooks) nothing has
    # parsed them, so their defaults are taken.
    if not flags.FLAGS.is_parsed():
      flags.FLAGS.mark_as_parsed()
    # Processes suit Python-heavy work that holds the GIL (synthetic rendering), once their
    # start-up (seconds: each imports the package) is paid.
    stream = stream.mp_prefetch(
      grain.MultiprocessingOptions(num_workers=processes, per_worker_buffer_size=max(prefetch, 1))
    )
  return _closing(iter(stream))


def _closing(iterator) -> Iterator:
  try:
    yield from iterator
  finally:
    iterator.close()  # stops the threads and worker processes when the consumer stops early


def train_batches(
  source: ExampleSource,
  spec: data.BatchSpec,
  vocab: Vocab,
  seed: Sequence[int],
  augment_config: Any = None,
  *,
  shard: tuple[int, int] = (0, 1),
  first_batch: int = 0,
  workers: int = 2,
  prefetch: int = 2,
  processes: int = 0,
) -> Iterator[tuple[np.ndarray, data.Batch]]:
  """`data.train_batches` over any source, read ahead by grain: the same (indices, batch) pairs.

  The order is the permutation seeded by `seed`, full global batches of `spec.size` only; each
  example is augmented with the generator seeded by (seed, its position in the epoch); a process
  (shard = (process index, process count)) reads only its rows of each global batch; the epoch
  resumes at `first_batch`. `workers` threads read, `prefetch` batches ahead of the consumer;
  `processes` > 0 runs the reading in that many worker processes (each with `workers` threads).
  """
  if len(source) < spec.size:
    raise DataError(
      f'The train split has {len(source)} image(s), fewer than batch_size={spec.size}: '
      'add images or lower --config.batch_size.'
    )
  rows = data.local_rows(spec.size, shard)
  order = np.random.default_rng(list(seed)).permutation(len(source))
  read = _TrainBatch(source, spec, vocab, tuple(seed), augment_config, order, rows)
  batches = range(first_batch, len(source) // spec.size)
  return _read_ahead(read, batches, workers, prefetch, processes)


def eval_batches(
  source: ExampleSource,
  spec: data.BatchSpec,
  vocab: Vocab,
  *,
  shard: tuple[int, int] = (0, 1),
  workers: int = 2,
  prefetch: int = 2,
  processes: int = 0,
) -> Iterator[tuple[np.ndarray, data.Batch]]:
  """`data.eval_batches` over any source, read ahead by grain: every element once, in order, in
  global batches of one shape, the last padded and masked (mask 0); this process's rows."""
  rows = data.local_rows(spec.size, shard)
  count = -(-len(source) // spec.size)
  read = _EvalBatch(source, spec, vocab, rows)
  return _read_ahead(read, range(count), workers, prefetch, processes)


# --- Host → device. ---


@dataclasses.dataclass
class _End:
  error: BaseException | None = None


def prefetch_to_device(iterator: Iterable[T], put: Callable[[T], U], size: int = 2) -> Iterator[U]:
  """put(item) for each item, computed on a background thread up to `size` items ahead, so the
  host→device copy of the next batch overlaps the current step.

  E.g. `prefetch_to_device(batches, lambda b: (b[0], steps.to_device(b[1], mesh)))`. An
  exception in the source or in `put` is raised here, in order; stopping early (break, close)
  stops the thread after at most the item it is on and closes the source.
  """
  if size < 1:
    raise ValueError(f'size must be at least 1, got {size}.')
  ready: queue.Queue = queue.Queue(maxsize=size)
  stop = threading.Event()

  def offer(value) -> bool:
    while not stop.is_set():
      try:
        ready.put(value, timeout=0.05)
        return True
      except queue.Full:
        continue
    return False

  def produce() -> None:
    source = iter(iterator)
    error = None
    try:
      for item in source:
        if not offer(put(item)):
          return
    except BaseException as e:  # handed to the consumer, which raises it
      error = e
    finally:
      close = getattr(source, 'close', None)
      if close is not None:
        close()
    offer(_End(error))

  thread = threading.Thread(target=produce, name='prefetch_to_device', daemon=True)
  thread.start()
  try:
    while True:
      value = ready.get()
      if isinstance(value, _End):
        if value.error is not None:
          raise value.error
        return
      yield value
  finally:
    stop.set()
    thread.join()
