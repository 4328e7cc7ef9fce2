"""Batches of any example source, read in parallel and ahead of use; and the host→device copy
overlapped with the step.

    sources.ExampleSource (data.Dataset | RecordSource | SyntheticSource) → grain
        → (indices, batch) → prefetch_to_device → steps

The contract, written once: an epoch's order is a permutation seeded by `seed`; only full global
batches of `spec.size`; each example is augmented with the generator seeded by (seed, its
position in the epoch); each process reads only its rows of each global batch; an epoch resumes
at any batch. So a run gives the same batches whether its images sit in memory or stream from
records, whatever its process count; only what sits in memory changes.
"""

import dataclasses
import queue
import signal
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, TypeVar

import grain
import numpy as np

from captcha_jax import data
from captcha_jax.errors import DataError
from captcha_jax.sources import ExampleSource
from captcha_jax.vocab import Vocab

T = TypeVar('T')
U = TypeVar('U')


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
        rng = np.random.default_rng([*self.seed, position])
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
      grain.MultiprocessingOptions(num_workers=processes, per_worker_buffer_size=max(prefetch, 1)),
      worker_init_fn=_leave_signals_to_the_main_process,
    )
  return _closing(iter(stream))


def _leave_signals_to_the_main_process(worker: int, workers: int) -> None:
  """Ctrl-C reaches the whole process group: a worker that died of it would end the run in
  grain's error before the main process saves its stop checkpoint. Grain ends its workers with
  SIGKILL, which no handler stops."""
  for signum in (signal.SIGINT, signal.SIGTERM):
    signal.signal(signum, signal.SIG_IGN)


def _closing(iterator) -> Iterator:
  try:
    yield from iterator
  finally:
    iterator.close()  # stops the threads and worker processes when the consumer stops early


def epoch_steps(images: int, batch_size: int) -> int:
  """The steps of one epoch over `images` training images: whole batches only (the remainder is
  dropped); DataError when there is not one."""
  if images < batch_size:
    raise DataError(
      f'The train split has {images} image(s), fewer than batch_size={batch_size}: '
      'add images or lower --config.batch_size.'
    )
  return images // batch_size


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
  """One epoch of (indices into `source`, batch) for this process (shard = (process index,
  process count)), from batch `first_batch` on; see the module's docstring for the contract.

  `workers` threads read, `prefetch` batches ahead of the consumer; `processes` > 0 runs the
  reading in that many worker processes (each with `workers` threads).
  """
  steps = epoch_steps(len(source), spec.size)
  rows = data.local_rows(spec.size, shard)
  order = np.random.default_rng(list(seed)).permutation(len(source))
  read = _TrainBatch(source, spec, vocab, tuple(seed), augment_config, order, rows)
  batches = range(first_batch, steps)
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
  """Every element once, in order, in global batches of one shape, the last padded with its
  first element and masked (mask 0); (indices, batch) for this process's rows."""
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
