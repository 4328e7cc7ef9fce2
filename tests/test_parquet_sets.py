"""A set shipped as Parquet, as the Hugging Face Hub stores datasets: unpacked once, read as a
folder, its split kept; and the errors a foreign or damaged file gets."""

import hashlib
import logging
import sys
from pathlib import Path

import pytest

from captcha_jax import data, synthetic
from captcha_jax.errors import DataError
from tests.conftest import config_for, resolve

pa = pytest.importorskip('pyarrow')
pq = pytest.importorskip('pyarrow.parquet')

HUB_IMAGE = pa.struct([('bytes', pa.binary()), ('path', pa.string())])


def hub_file(path: Path, images: list[Path], **extra_columns) -> None:
  """A Parquet file as `datasets.Dataset.push_to_hub` writes one: an Image column of {bytes,
  path} and the texts."""
  path.parent.mkdir(parents=True, exist_ok=True)
  columns = {
    'image': pa.array([{'bytes': p.read_bytes(), 'path': p.name} for p in images], HUB_IMAGE),
    'text': [p.stem for p in images],
    **extra_columns,
  }
  pq.write_table(pa.table(columns), path, row_group_size=5)


def test_a_hub_dataset_is_unpacked_once_and_keeps_its_split(tmp_path, caplog):
  train = synthetic.generate(tmp_path / 'src' / 'train', 24, seed=1)
  test = synthetic.generate(tmp_path / 'src' / 'test', 6, seed=2)
  unlabeled = synthetic.generate(tmp_path / 'src' / 'unlabeled', 3, seed=5)
  hub = tmp_path / 'captchas'
  hub_file(hub / 'data' / 'train-00000-of-00002.parquet', train[:12])
  hub_file(hub / 'data' / 'train-00001-of-00002-1c06a67d80bbbd1d.parquet', train[12:])  # older Hub
  hub_file(hub / 'data' / 'test-00000-of-00001.parquet', test)
  hub_file(hub / 'data' / 'unlabeled-00000-of-00001.parquet', unlabeled)
  (hub / 'README.md').write_text('---\nlicense: mit\n---\n')
  caplog.set_level(logging.INFO)
  config = config_for(hub, download_dir=str(tmp_path / 'cache'), alphabet='auto')
  resolved, splits = resolve(config)
  assert caplog.text.count('Unpacked') == 1
  assert 'Leaving out unlabeled-00000-of-00001.parquet: not a split of the set' in caplog.text
  assert Path(resolved.data_dir).parent == tmp_path / 'cache'
  digests = {hashlib.sha256(p.read_bytes()).digest(): (p.stem, p.parent.name) for p in train + test}
  read = {
    hashlib.sha256(Path(e.path).read_bytes()).digest(): (e.text, name)
    for name in data.SPLITS
    for e in splits[name]
  }
  assert {d: text for d, (text, _) in read.items()} == {d: t for d, (t, _) in digests.items()}
  assert {d for d, (_, name) in read.items() if name == 'test'} == {
    d for d, (_, split) in digests.items() if split == 'test'
  }
  again, same = resolve(config)
  assert caplog.text.count('Unpacked') == 1 and (again, same) == (resolved, splits)
  assert resolve(resolved) == (resolved, splits)  # as a run's config.json resumes


def test_the_texts_column_is_the_one_named_so_and_images_may_be_plain_bytes(tmp_path):
  images = synthetic.generate(tmp_path / 'src', 12, seed=3)
  table = pa.table(
    {
      'captcha_id': [f'{i:08x}' for i in range(12)],  # no text, though it holds 'captcha'
      'png': pa.array([p.read_bytes() for p in images], pa.binary()),
      'solution': [p.stem for p in images],
    }
  )
  (tmp_path / 'set').mkdir()  # two files whose names are no splits: one set
  pq.write_table(table.slice(0, 5), tmp_path / 'set' / 'site_a.parquet')
  pq.write_table(table.slice(5), tmp_path / 'set' / 'site_b.parquet')
  _, splits = resolve(config_for(tmp_path / 'set', download_dir=str(tmp_path / 'cache')))
  assert sorted(e.text for name in data.SPLITS for e in splits[name]) == sorted(
    p.stem for p in images
  )


def test_a_train_file_beside_an_eval_one_keeps_them_apart_and_rows_without_text_are_named(
  tmp_path, caplog
):
  train = synthetic.generate(tmp_path / 'src' / 'train', 20, seed=1)
  held_out = synthetic.generate(tmp_path / 'src' / 'eval', 6, seed=2)
  hub = tmp_path / 'hub'
  hub_file(hub / 'train-00000-of-00001.parquet', train)
  texts = [p.stem for p in held_out[:-1]] + [None]  # a row with no text
  hub_file(hub / 'eval-00000-of-00001.parquet', held_out, text=texts)
  hub_file(hub / 'extra-00000-of-00001.parquet', held_out)  # a file of no split
  caplog.set_level(logging.INFO)
  _, splits = resolve(config_for(hub, download_dir=str(tmp_path / 'cache'), alphabet='auto'))
  assert sorted(e.text for e in splits['val']) == sorted(p.stem for p in held_out[:-1])
  assert 'Leaving out extra-00000-of-00001.parquet' in caplog.text
  assert 'Left out 1 row(s) of no image or text: eval-00000-of-00001.parquet, row 5: no text' in (
    caplog.text
  )
  # Train and a file of no split: train alone, split as a folder of it would be.
  (hub / 'eval-00000-of-00001.parquet').unlink()
  _, splits = resolve(config_for(hub, download_dir=str(tmp_path / 'cache'), alphabet='auto'))
  assert sorted(e.text for n in data.SPLITS for e in splits[n]) == sorted(p.stem for p in train)


def test_a_parquet_file_it_cannot_read_is_named(tmp_path, monkeypatch):
  images = synthetic.generate(tmp_path / 'src', 4, seed=3)
  ambiguous = tmp_path / 'ambiguous'  # two columns of strings, neither named as the texts
  hub_file(ambiguous / 'set.parquet', images, note=list('wxyz'))
  pq.write_table(
    pq.read_table(ambiguous / 'set.parquet').rename_columns(['image', 'a', 'b']),
    ambiguous / 'set.parquet',
  )
  cache = str(tmp_path / 'cache')
  with pytest.raises(DataError, match=r'set.parquet: expected one column of images and one of'):
    resolve(config_for(ambiguous, download_dir=cache))
  damaged = tmp_path / 'damaged'
  damaged.mkdir()
  (damaged / 'train.parquet').write_bytes(b'PAR1 not really')
  with pytest.raises(DataError, match=r'train.parquet is not a readable Parquet file'):
    resolve(config_for(damaged, download_dir=cache))
  assert not any(Path(cache).iterdir())  # nothing half-written left to be taken for a set
  monkeypatch.setitem(sys.modules, 'pyarrow.parquet', None)
  with pytest.raises(DataError, match=r'is Parquet: reading it needs pyarrow \(pip install'):
    resolve(config_for(ambiguous, download_dir=cache))
