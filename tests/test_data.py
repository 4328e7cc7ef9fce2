"""Data: labels from names, the split, decoding, batches, and the errors bad input gets."""

import ml_collections
import numpy as np
import pytest
from PIL import Image

from captcha_jax import data
from captcha_jax.vocab import Vocab

VOCAB = Vocab('2345678bcdefgmnpwxy')
AUGMENT = ml_collections.ConfigDict(
  dict(
    enabled=True, max_shift_x=4.0, max_shift_y=3.0, max_rotation=3.0, max_scale=0.05, max_shear=0.1
  )
)


def load(folder, **kwargs):
  return data.load_dataset(folder, VOCAB, height=32, width=96, max_label_length=5, **kwargs)


def test_vocab_round_trip_and_blank():
  ids = VOCAB.encode('226md')
  assert ids == [1, 1, 5, 14, 10]
  assert VOCAB.decode([0, *ids, 0]) == '226md'
  assert VOCAB.num_classes == 20
  with pytest.raises(ValueError, match="outside the alphabet.*'a1'"):
    VOCAB.encode('2a1')
  with pytest.raises(ValueError, match='repeats'):
    Vocab('abca')


def test_label_from_path_strips_extension_and_copy_suffix():
  assert data.label_from_path('/x/226md.png') == '226md'
  assert data.label_from_path('abcde (1).jpg') == 'abcde'


def test_load_dataset_shapes_and_labels(captcha_dir):
  ds = load(captcha_dir)
  assert len(ds) == 60
  assert ds.images.shape == (60, 32, 96, 3) and ds.images.dtype == np.uint8
  assert ds.labels.shape == (60, 5) and ds.labels.dtype == np.int32
  for text, ids, n in zip(ds.texts, ds.labels, ds.lengths, strict=True):
    assert VOCAB.decode(ids[:n]) == text and not ids[n:].any()


def test_split_is_deterministic_disjoint_and_complete():
  a = data.split_indices(940, (0.8, 0.1, 0.1), seed=0)
  b = data.split_indices(940, (0.8, 0.1, 0.1), seed=0)
  c = data.split_indices(940, (0.8, 0.1, 0.1), seed=1)
  assert [len(x) for x in a] == [752, 94, 94]
  for x, y in zip(a, b, strict=True):
    np.testing.assert_array_equal(x, y)
  assert not np.array_equal(a[2], c[2])
  assert sorted(np.concatenate(a).tolist()) == list(range(940))


def test_split_too_small_names_the_problem():
  with pytest.raises(data.DataError, match='1 image.*too few'):
    data.split_indices(1, (0.8, 0.1, 0.1), seed=0)
  with pytest.raises(data.DataError, match='summing to 1'):
    data.split_indices(10, (0.8, 0.1), seed=0)


def test_normalize_uses_imagenet_statistics():
  white = np.full((1, 2, 2, 3), 255, np.uint8)
  expected = (1 - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225])
  np.testing.assert_allclose(data.normalize(white)[0, 0, 0], expected, rtol=1e-6)


def test_train_batches_fixed_shape_shuffled_reproducibly(captcha_dir):
  ds = load(captcha_dir)
  first = list(data.train_batches(ds, 16, (3,)))
  again = list(data.train_batches(ds, 16, (3,)))
  assert len(first) == 3  # 60 // 16; the remainder waits for the next epoch's shuffle
  for batch, same in zip(first, again, strict=True):
    assert batch['image'].shape == (16, 32, 96, 3) and batch['image'].dtype == np.float32
    np.testing.assert_array_equal(batch['index'], same['index'])
  seen = np.concatenate([b['index'] for b in first])
  assert len(set(seen.tolist())) == 48
  padding = first[0]['label_paddings']
  assert padding.shape == (16, 5) and (padding == 0).all()  # every label has 5 symbols


def test_augmentation_changes_pixels_but_not_shape(captcha_dir):
  ds = load(captcha_dir)
  config = AUGMENT
  plain = next(data.train_batches(ds, 8, (0,)))
  warped = next(data.train_batches(ds, 8, (0,), config))
  np.testing.assert_array_equal(plain['index'], warped['index'])
  assert warped['image'].shape == plain['image'].shape
  assert np.abs(warped['image'] - plain['image']).mean() > 0.05


def test_identity_augmentation_is_exact():
  config = ml_collections.ConfigDict(
    dict(max_shift_x=0.0, max_shift_y=0.0, max_rotation=0.0, max_scale=0.0, max_shear=0.0)
  )
  image = np.random.default_rng(0).integers(0, 256, (32, 96, 3), dtype=np.uint8)
  np.testing.assert_array_equal(data.augment_image(image, np.random.default_rng(0), config), image)


def test_eval_batches_pad_and_mask_the_last_batch(captcha_dir):
  ds = load(captcha_dir)
  batches = list(data.eval_batches(ds, 25))
  assert [b['image'].shape[0] for b in batches] == [25, 25, 25]
  assert [int(b['mask'].sum()) for b in batches] == [25, 25, 10]
  real = np.concatenate([b['index'][b['mask'] > 0] for b in batches])
  np.testing.assert_array_equal(real, np.arange(60))


def test_missing_and_empty_folders(tmp_path):
  with pytest.raises(data.DataError, match="'.*nowhere' does not exist.*captcha-version-2-images"):
    load(tmp_path / 'nowhere')
  (tmp_path / 'notes.txt').write_text('x')
  with pytest.raises(data.DataError, match='holds no .png/.jpg/.jpeg images'):
    load(tmp_path)


def _add_bad_files(folder):
  (folder / 'nn2x4.png').write_bytes(b'')  # zero bytes
  (folder / 'bbbbb.png').write_bytes(b'this is not a png')
  good = next(folder.glob('*.png')).read_bytes()
  (folder / 'ccccc.png').write_bytes(good[: len(good) // 2])  # truncated
  Image.new('RGB', (200, 50), 'white').save(folder / 'ab1cd.png')  # characters outside alphabet
  Image.new('RGB', (200, 50), 'white').save(folder / '2345678.png')  # longer than 5


def test_bad_files_are_skipped_with_one_warning_naming_each(captcha_dir, copy_of, caplog):
  folder = copy_of(captcha_dir)
  _add_bad_files(folder)
  ds = load(folder)
  assert len(ds) == 60
  [record] = [r for r in caplog.records if 'unusable' in r.getMessage()]
  message = record.getMessage()
  assert 'Skipping 5 unusable file(s)' in message
  for name in ('nn2x4.png', 'bbbbb.png', 'ccccc.png'):
    assert f'{name}' in message and 'not a readable image' in message
  assert "ab1cd.png: label 'ab1cd' has characters outside the alphabet: 'a1'" in message
  assert '2345678.png' in message and 'longer than max_label_length=5' in message


def test_bad_files_are_fatal_when_asked(captcha_dir, copy_of):
  folder = copy_of(captcha_dir)
  _add_bad_files(folder)
  with pytest.raises(data.DataError, match=r'5 unusable file\(s\)(.|\n)*skip_bad_files=True'):
    load(folder, skip_bad_files=False)


def test_other_sizes_and_modes_are_converted(tmp_path):
  Image.new('L', (120, 40), 128).save(tmp_path / '22222.png')
  Image.new('RGBA', (200, 50), (0, 0, 0, 0)).save(tmp_path / '33333.png')  # transparent → white
  Image.new('P', (300, 60)).save(tmp_path / '44444.png')
  Image.new('RGB', (200, 50), (10, 20, 30)).save(tmp_path / '55555.jpg')
  ds = load(tmp_path)
  assert ds.images.shape == (4, 32, 96, 3)
  assert (ds.images[0] == 128).all() and (ds.images[1] == 255).all()


def test_load_image_rejects_bad_arrays():
  with pytest.raises(data.DataError, match='uint8'):
    data.load_image(np.zeros((50, 200, 3), np.float32), 32, 96)
  with pytest.raises(data.DataError, match=r'\[H, W\]'):
    data.load_image(np.zeros((50, 200, 5), np.uint8), 32, 96)


def test_process_shards_are_disjoint_and_rebuild_the_global_batch(captcha_dir):
  ds = load(captcha_dir)
  config = AUGMENT
  whole = list(data.train_batches(ds, 16, (5, 2), config))
  parts = [list(data.train_batches(ds, 16, (5, 2), config, shard=(p, 4))) for p in range(4)]
  for i, batch in enumerate(whole):
    for key in ('index', 'image', 'labels'):
      joined = np.concatenate([part[i][key] for part in parts])
      np.testing.assert_array_equal(joined, batch[key])
  resumed = list(data.train_batches(ds, 16, (5, 2), config, first_batch=2))
  np.testing.assert_array_equal(resumed[0]['image'], whole[2]['image'])
  evals = [list(data.eval_batches(ds, 16, shard=(p, 2))) for p in range(2)]
  real = np.concatenate(
    [b['index'][b['mask'] > 0] for pair in zip(*evals, strict=True) for b in pair]
  )
  np.testing.assert_array_equal(np.sort(real), np.arange(60))
