"""Sources and batches: record and synthetic sources, grain-read batches that equal a plain
written-out reading of the contract on every source, each process's rows, resumption, and the
host→device prefetch thread."""

import logging
import shutil
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import ml_collections
import numpy as np
import pytest

from captcha_jax import batches, data, images, labelled, sources, synthetic
from captcha_jax.errors import ConfigError, DataError
from captcha_jax.vocab import Vocab
from configs import tiny
from tests.conftest import cut_png

pytest.importorskip('grain', reason='pip install grain')

ALPHABET = '2345678bcdefgmnpwxy'
VOCAB = Vocab(ALPHABET)
AUGMENT = ml_collections.ConfigDict(
  dict(
    enabled=True, max_shift_x=4.0, max_shift_y=3.0, max_rotation=3.0, max_scale=0.05, max_shear=0.1
  )
)
# Named with the alphabet's characters, so only their bytes make them unusable.
BROKEN = ('bbbbb', 'ccccc', 'ddddd', 'eeeee', 'fffff', 'ggggg')


# The contract of batches.train_batches / eval_batches, written out as plainly as possible over
# an in-memory Dataset: the reference every source and every grain setting must reproduce.


def encoded(
  dataset: data.Dataset, indices: np.ndarray, spec: data.BatchSpec
) -> tuple[np.ndarray, np.ndarray]:
  """(labels, lengths) of these rows: class ids (the alphabet's position + 1) right-padded with
  the blank, 0."""
  texts = [dataset.texts[i] for i in indices]
  labels = np.zeros((len(texts), spec.max_label_length), np.int32)
  for row, text in enumerate(texts):
    labels[row, : len(text)] = [ALPHABET.index(c) + 1 for c in text]
  return labels, np.array([len(t) for t in texts], np.int32)


def reference_train_batches(
  dataset: data.Dataset,
  spec: data.BatchSpec,
  seed: Sequence[int],
  augment_config=None,
  *,
  shard: tuple[int, int] = (0, 1),
  first_batch: int = 0,
) -> Iterator[tuple[np.ndarray, data.Batch]]:
  """One epoch of shuffled full batches (the remainder is dropped; the next epoch reshuffles).

  The order comes from `seed` (e.g. (config.seed, epoch)) and each example's augmentation from
  (seed, its position in the epoch), so every process of a multi-process run sees the same global
  batches, whatever the process count, and a resumed epoch can start at `first_batch`. Yields
  (indices into `dataset`, batch) for this process's rows (shard = (process index, process
  count)) of each global batch of `spec.size`.
  """
  if len(dataset) < spec.size:
    raise DataError(
      f'The train split has {len(dataset)} image(s), fewer than batch_size={spec.size}: '
      'add images or lower --config.batch_size.'
    )
  rows = data.local_rows(spec.size, shard)
  order = np.random.default_rng(list(seed)).permutation(len(dataset))
  for start in range(first_batch * spec.size, len(order) - spec.size + 1, spec.size):
    positions = np.arange(start, start + spec.size)[rows]
    indices = order[positions]
    pixels = dataset.images[indices]
    if augment_config is not None and augment_config.enabled:
      pixels = np.stack(
        [
          data.augment_image(im, np.random.default_rng([*seed, int(p)]), augment_config)
          for im, p in zip(pixels, positions, strict=True)
        ]
      )
    mask = np.ones(len(indices), np.float32)
    yield indices, spec.make(pixels, *encoded(dataset, indices, spec), mask)


def reference_eval_batches(
  dataset: data.Dataset, spec: data.BatchSpec, *, shard: tuple[int, int] = (0, 1)
) -> Iterator[tuple[np.ndarray, data.Batch]]:
  """Every item once, in order, in global batches of one shape; the last is padded and masked
  (mask 0). Yields (indices, batch) for this process's rows of each global batch."""
  rows = data.local_rows(spec.size, shard)
  for start in range(0, len(dataset), spec.size):
    real = np.arange(start, min(start + spec.size, len(dataset)))
    indices = np.concatenate([real, np.full(spec.size - len(real), real[0])])[rows]
    mask = (np.arange(spec.size) < len(real))[rows]
    yield (
      indices,
      spec.make(dataset.images[indices], *encoded(dataset, indices, spec), mask),
    )


class Recording:
  """A source that notes every index read, to check what a process reads and when."""

  def __init__(self, source):
    self.source, self.paths, self.reads = source, source.paths, []

  def __len__(self) -> int:
    return len(self.source)

  def example(self, index: int):
    self.reads.append(index)  # list.append is atomic: safe from grain's threads
    return self.source.example(index)


@pytest.fixture(scope='module')
def splits(captcha_dir, tmp_path_factory):
  """(config, in-memory splits, record sources) of the tiny set plus a few undecodable files."""
  pytest.importorskip('tensorflow_datasets', reason="pip install 'captcha-jax[tfds]'")
  folder = tmp_path_factory.mktemp('streamed') / 'data'
  shutil.copytree(captcha_dir, folder)
  for name in BROKEN:  # each its own bytes: copies of one another would leave val and test
    (folder / f'{name}.png').write_bytes(cut_png() + name.encode())
  config = tiny.get_config()
  config.data_dir = str(folder)
  config.tfds_data_dir = str(tmp_path_factory.mktemp('tfds'))
  config, examples = data.resolve(config, lambda h, w: 1000)
  memory = data.load_in_memory(config, examples)
  records = sources.open_records(config, examples)
  return config, memory, records


def spec_of(config, size: int = 8) -> data.BatchSpec:
  return data.BatchSpec.of(config, size)


def assert_same_batches(expected, got, expected_paths, got_paths):
  """Batch for batch: the same files in the same rows, and equal arrays."""
  expected, got = list(expected), list(got)
  assert len(got) == len(expected) > 0
  for (want_indices, want), (indices, batch) in zip(expected, got, strict=True):
    assert [got_paths[i] for i in indices] == [expected_paths[i] for i in want_indices]
    assert batch.keys() == want.keys()
    for key in want:
      np.testing.assert_array_equal(batch[key], want[key], err_msg=key)


def test_record_source_is_the_in_memory_dataset_element_for_element(splits):
  config, memory, records = splits
  for name in data.SPLITS:
    source, dataset = records[name], memory[name]
    assert source.paths == dataset.paths
    for i in range(len(source)):
      image, text = source.example(i)
      assert image.dtype == np.uint8 and image.shape == (32, 96, 3)
      np.testing.assert_array_equal(image, dataset.images[i])
      assert text == dataset.texts[i]
  # Undecodable files are left out of both paths, and the record source names them.
  missing = [p for name in data.SPLITS for p in records[name].missing]
  assert sorted(missing) == sorted(f'{config.data_dir}/{name}.png' for name in BROKEN)
  assert any(records['train'].missing)  # so the train comparisons below cover a gap


def test_a_split_larger_than_tfds_write_buffer_is_written_in_parts(
  splits, tmp_path, monkeypatch, caplog
):
  from tensorflow_datasets.core import shuffle

  from captcha_jax import tfds_builder

  config, memory, _ = splits
  # Past this buffer tfds would spill the split through TensorFlow's file API (not installed).
  record_bound = config.image_height * config.image_width * 3 + 1024
  monkeypatch.setattr(shuffle, 'MAX_MEM_BUFFER_SIZE', int(7 * record_bound / 0.9) + 1)
  config = config.copy_and_resolve_references()
  config.tfds_data_dir = str(tmp_path)
  examples = {
    n: [labelled.Example(p, t) for p, t in zip(memory[n].paths, memory[n].texts, strict=True)]
    for n in data.SPLITS
  }
  with caplog.at_level(logging.INFO):
    records = sources.open_records(config, examples)
  written = list(tfds_builder.builder(config, examples).info.splits)
  assert 'train_part1' in written and 'train' not in written
  assert 'Using custom data configuration' in caplog.text
  assert max(map(len, caplog.messages)) < 1000  # not a line of every file: tfds logs the config
  for name in data.SPLITS:
    assert records[name].paths == memory[name].paths
    for i in range(len(records[name])):
      np.testing.assert_array_equal(records[name].example(i)[0], memory[name].images[i])


def test_streamed_train_batches_equal_the_in_memory_batches(splits):
  config, memory, records = splits
  spec, seed = spec_of(config), (config.seed, 3)
  expected = reference_train_batches(memory['train'], spec, seed, AUGMENT)
  got = batches.train_batches(records['train'], spec, VOCAB, seed, AUGMENT, workers=2)
  assert_same_batches(expected, got, memory['train'].paths, records['train'].paths)
  # Another seed is another order: the comparison above is not trivially true.
  other = next(batches.train_batches(records['train'], spec, VOCAB, (config.seed, 4), AUGMENT))
  first = next(reference_train_batches(memory['train'], spec, seed, AUGMENT))
  assert not np.array_equal(other[1]['image'], first[1]['image'])


def test_streamed_train_batches_in_worker_processes_equal_the_in_memory_batches(splits):
  config, memory, records = splits
  spec, seed = spec_of(config), (config.seed, 1)
  expected = reference_train_batches(memory['train'], spec, seed, AUGMENT)
  got = batches.train_batches(records['train'], spec, VOCAB, seed, AUGMENT, workers=1, processes=2)
  assert_same_batches(expected, got, memory['train'].paths, records['train'].paths)


@pytest.mark.parametrize('first_batch', [1, 4])
def test_a_resumed_epoch_is_the_tail_of_the_full_epoch(splits, first_batch):
  config, _, records = splits
  spec, seed = spec_of(config), (config.seed, 2)
  full = list(batches.train_batches(records['train'], spec, VOCAB, seed, AUGMENT))
  assert len(full) == len(records['train']) // spec.size > first_batch
  source = Recording(records['train'])
  resumed = batches.train_batches(source, spec, VOCAB, seed, AUGMENT, first_batch=first_batch)
  assert_same_batches(full[first_batch:], resumed, source.paths, source.paths)
  skipped = {int(i) for indices, _ in full[:first_batch] for i in indices}
  assert not skipped & set(source.reads)  # the batches already done are not read again


@pytest.mark.parametrize('count', [2, 4])
def test_each_process_reads_only_its_rows_of_the_global_batch(splits, count):
  config, _, records = splits
  spec, seed = spec_of(config), (config.seed, 5)
  whole = list(batches.train_batches(records['train'], spec, VOCAB, seed, AUGMENT))
  shares, reads = [], []
  for process in range(count):
    source = Recording(records['train'])
    shard = (process, count)
    shares.append(list(batches.train_batches(source, spec, VOCAB, seed, AUGMENT, shard=shard)))
    reads.append(source.reads)
  for b, (indices, batch) in enumerate(whole):
    parts = [share[b] for share in shares]
    assert all(len(part_indices) == spec.size // count for part_indices, _ in parts)
    np.testing.assert_array_equal(np.concatenate([i for i, _ in parts]), indices)
    for key in batch:
      np.testing.assert_array_equal(np.concatenate([p[key] for _, p in parts]), batch[key])
  for process, read in enumerate(reads):
    own = [int(i) for indices, _ in shares[process] for i in indices]
    assert sorted(read) == sorted(own)  # its rows, and nothing of the other processes'
  assert sum(len(r) for r in reads) == len(set().union(*map(set, reads)))  # disjoint


def test_streaming_reads_only_a_few_batches_ahead(splits):
  config, _, records = splits
  source, spec = Recording(records['train']), spec_of(config, 4)
  stream = batches.train_batches(source, spec, VOCAB, (0, 1), workers=2, prefetch=2)
  next(stream)
  deadline, seen = time.monotonic() + 3, -1
  while len(source.reads) != seen and time.monotonic() < deadline:  # until it stops reading ahead
    seen = len(source.reads)
    time.sleep(0.2)
  assert len(source.reads) <= 3 * spec.size < len(source)  # the batch taken and two ahead
  stream.close()


@pytest.mark.parametrize('shard', [(0, 1), (1, 2)])
def test_eval_batches_cover_each_example_once_with_the_padding_masked(splits, shard):
  config, memory, records = splits
  spec = spec_of(config, 4)  # 6 validation images: one full batch and one padded
  source = records['val']
  assert len(source) % spec.size  # the last batch is padded
  expected = reference_eval_batches(memory['val'], spec, shard=shard)
  got = list(batches.eval_batches(source, spec, VOCAB, shard=shard))
  assert_same_batches(expected, got, memory['val'].paths, source.paths)
  if shard == (0, 1):
    real = np.concatenate([indices[batch['mask'] > 0] for indices, batch in got])
    np.testing.assert_array_equal(real, np.arange(len(source)))
    assert sum(int((batch['mask'] == 0).sum()) for _, batch in got) == -len(source) % spec.size


def test_an_in_memory_dataset_streams_to_its_own_batches(splits):
  """Any source of the protocol gives the in-memory batches: a Dataset with `example` too."""
  config, memory, _ = splits
  spec, seed, dataset = spec_of(config), (0, 7), memory['train']
  expected = reference_train_batches(dataset, spec, seed, AUGMENT, shard=(1, 2), first_batch=2)
  got = batches.train_batches(
    dataset, spec, VOCAB, seed, AUGMENT, shard=(1, 2), first_batch=2, workers=0
  )
  assert_same_batches(expected, got, dataset.paths, dataset.paths)


def test_bad_sources_get_clear_errors(splits):
  config, memory, _ = splits
  with pytest.raises(DataError, match='fewer than batch_size=64'):
    batches.train_batches(memory['val'], spec_of(config, 64), VOCAB, (0, 1))
  narrow = Vocab('2345678')  # the labels hold letters it lacks
  with pytest.raises(DataError, match=r'\.png: .*outside the alphabet'):
    next(batches.train_batches(memory['train'], spec_of(config), narrow, (0, 1)))
  short = data.BatchSpec(8, 32, 96, 4)
  with pytest.raises(DataError, match='longer than max_label_length=4'):
    next(batches.eval_batches(memory['train'], short, VOCAB))
  wrong_size = data.BatchSpec(8, 50, 200, 5)
  with pytest.raises(DataError, match=r'not uint8 \(50, 200, 3\)'):
    next(batches.eval_batches(memory['train'], wrong_size, VOCAB))


def test_record_source_refuses_a_copy_made_from_other_examples(splits):
  _, memory, records = splits
  train = memory['train']
  others = [labelled.Example(p, t) for p, t in zip(train.paths[1:], train.texts[1:], strict=True)]
  with pytest.raises(DataError, match='prepared from other examples'):
    sources.RecordSource(records['train'].records, others, 32, 96)


def synthetic_source(seed: int = 3, size: int = 6) -> sources.SyntheticSource:
  return sources.SyntheticSource(
    seed, size, alphabet=ALPHABET, lengths=(4, 5), case='keep', style='varied', height=32, width=96
  )


def test_synthetic_source_is_the_synthetic_stream_and_fresh_every_epoch():
  source = synthetic_source()
  again = synthetic_source()
  seen = set()
  for epoch in range(3):
    this, same = source.for_epoch(epoch), again.for_epoch(epoch)
    for i in range(len(this)):
      image, text = this.example(i)
      reference, reference_text = synthetic.sample(
        epoch * 6 + i, 3, alphabet=ALPHABET, lengths=(4, 5), style='varied', width=96, height=32
      )
      np.testing.assert_array_equal(image, images.load_image(reference, 32, 96))
      assert text == reference_text
      np.testing.assert_array_equal(same.example(i)[0], image)  # deterministic
      seen.add(image.tobytes())
    assert list(this.paths) == [f'synthetic:3:{epoch * 6 + i}' for i in range(6)]
  assert len(seen) == 18  # three epochs, no image twice
  assert not np.array_equal(synthetic_source(seed=4).example(0)[0], source.example(0)[0])


def test_label_lengths_given_for_a_generated_stream_must_hold_its_texts():
  config = tiny.get_config()
  config.update(data_source='synthetic', max_label_length=0, fixed_label_length=-1)
  config.synthetic = ml_collections.ConfigDict({'lengths': (3, 8)})
  filled = sources.synthetic_settings(config)
  assert (filled.max_label_length, filled.fixed_label_length) == (8, 0)
  for given in ({'max_label_length': 5}, {'fixed_label_length': 5}):
    config.update({'max_label_length': 0, 'fixed_label_length': -1, **given})
    with pytest.raises(ConfigError, match=r'draws texts of 3 to 8 characters'):
      sources.synthetic_settings(config)
  config.synthetic.lengths = (5, 5)
  config.update(max_label_length=5, fixed_label_length=5)
  assert sources.synthetic_settings(config).fixed_label_length == 5


def test_synthetic_batches_in_worker_processes_equal_those_read_here():
  source, spec = synthetic_source(size=16).for_epoch(2), data.BatchSpec(4, 32, 96, 5)
  expected = batches.train_batches(source, spec, VOCAB, (0, 2), AUGMENT, workers=0)
  got = batches.train_batches(source, spec, VOCAB, (0, 2), AUGMENT, workers=1, processes=2)
  assert_same_batches(expected, got, source.paths, source.paths)


CTRL_C_IN_WORKERS = """
import os, signal, sys
from captcha_jax import batches, data, sources
from captcha_jax.vocab import Vocab

if __name__ == '__main__':
  asked = []
  signal.signal(signal.SIGINT, lambda *_: asked.append(1))  # the training loop's StopSignals
  source = sources.SyntheticSource(
    3, 64, alphabet='2345678', lengths=5, case='keep', style='varied', height=32, width=96
  )
  stream = batches.train_batches(source, data.BatchSpec(2, 32, 96, 5), Vocab('2345678'), (0, 1),
                                 workers=1, processes=1)
  for n, _ in enumerate(stream, 1):
    if asked:
      print(f'stopped cleanly after {n} batches')
      stream.close()
      sys.exit(0)
    if n == 2:
      os.killpg(os.getpgid(0), signal.SIGINT)  # what Ctrl-C in a terminal does
  sys.exit('never asked to stop')
"""


def test_ctrl_c_leaves_the_worker_processes_to_the_main_ones_stop(tmp_path):
  script = tmp_path / 'ctrl_c.py'
  script.write_text(CTRL_C_IN_WORKERS)
  done = subprocess.run(
    [sys.executable, str(script)],
    capture_output=True,
    text=True,
    start_new_session=True,  # its own process group, which the signal goes to
    timeout=300,
    cwd=Path(__file__).parent.parent,
  )
  assert done.returncode == 0 and 'stopped cleanly' in done.stdout, done.stderr[-2000:]


# --- prefetch_to_device. ---


def test_prefetch_to_device_keeps_the_order_and_applies_put():
  got = list(batches.prefetch_to_device(iter(range(20)), lambda x: x * 10, size=2))
  assert got == [x * 10 for x in range(20)]
  assert not any(t.name == 'prefetch_to_device' for t in threading.enumerate())


def test_prefetch_to_device_raises_the_source_and_put_errors_in_order():
  def failing():
    yield from range(3)
    raise DataError('broken batch')

  got = []
  with pytest.raises(DataError, match='broken batch'):
    for item in batches.prefetch_to_device(failing(), lambda x: x):
      got.append(item)
  assert got == [0, 1, 2]

  def put(x):
    if x == 2:
      raise RuntimeError('device full')
    return x

  got = []
  with pytest.raises(RuntimeError, match='device full'):
    for item in batches.prefetch_to_device(iter(range(5)), put):
      got.append(item)
  assert got == [0, 1]


def test_prefetch_to_device_stops_and_closes_its_source_when_the_consumer_stops():
  produced, closed = [], threading.Event()

  def endless():
    try:
      i = 0
      while True:
        produced.append(i)
        yield i
        i += 1
    finally:
      closed.set()

  source = endless()  # held here, as a training loop holds its batches: closing is not left to GC
  prefetched = batches.prefetch_to_device(source, lambda x: x, size=2)
  for item in prefetched:
    if item == 4:
      break
  prefetched.close()
  assert closed.is_set()  # the source was closed: grain's threads and processes stop with it
  assert not any(t.name == 'prefetch_to_device' for t in threading.enumerate())
  assert len(produced) <= 5 + 2 + 1  # taken, queued, and the one being put
