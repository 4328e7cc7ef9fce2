"""Synthetic captchas: deterministic indexed samples, folder writing, case options, the command."""

import csv
import hashlib
import secrets
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from captcha import image as captcha_image
from PIL import Image

from captcha_jax import cli, synthetic
from captcha_jax.errors import ConfigError

ROOT = Path(__file__).resolve().parents[1]
ALNUM = synthetic.DIGITS + synthetic.LOWERCASE + synthetic.UPPERCASE


def digest(image: Image.Image, text: str) -> str:
  """One string for the pixels, size and text of a sample, to compare across processes."""
  pixels = np.asarray(image)
  return hashlib.sha256(pixels.tobytes() + repr((pixels.shape, text)).encode()).hexdigest()


def test_sample_is_deterministic():
  for index in range(12):
    first, second = synthetic.sample(index, 3), synthetic.sample(index, 3)
    assert first[1] == second[1]
    np.testing.assert_array_equal(np.asarray(first[0]), np.asarray(second[0]))


# Named styles and 'varied' (which includes ImageCaptcha, the engine that needs seeding).
PROCESS_CASES = [('varied', i) for i in range(12)] + [('dataset', 0), ('noisy', 1)]


def process_digests() -> list[str]:
  """Digests of a few samples, computed alike here and in a fresh interpreter."""
  return [
    digest(*synthetic.sample(i, 5, style=style, alphabet=synthetic.DIGITS, lengths=(3, 7)))
    for style, i in PROCESS_CASES
  ]


def test_sample_is_the_same_in_another_process():
  script = 'from tests.test_synthetic import process_digests; print(*process_digests())'
  result = subprocess.run(
    [sys.executable, '-c', script], cwd=ROOT, capture_output=True, text=True, check=True
  )
  assert result.stdout.split() == process_digests()


def test_varied_samples_cover_both_engines():
  engines = {synthetic.random_style(np.random.default_rng([5, i])).engine for i in range(60)}
  assert engines == set(synthetic.ENGINES)


def test_different_indices_and_seeds_differ():
  digests = {digest(*synthetic.sample(i, 0, width=120, height=40)) for i in range(10)}
  digests |= {digest(*synthetic.sample(i, 1, width=120, height=40)) for i in range(10)}
  assert len(digests) == 20
  # A fixed look still differs from index to index: placement, noise and text are per image.
  looks = {digest(*synthetic.sample(i, 0, style='clean', lengths=4)) for i in range(5)}
  assert len(looks) == 5


def test_texts_use_the_alphabet_and_lengths_in_range():
  lengths = []
  for i in range(60):
    image, text = synthetic.sample(i, 2, alphabet='0123456789', lengths=(4, 7), style='clean')
    assert set(text) <= set('0123456789')
    lengths.append(len(text))
    assert image.mode == 'RGB' and image.size == (200, 50)
  assert set(lengths) == {4, 5, 6, 7}


def test_sample_sizes():
  image, _ = synthetic.sample(0, 0, width=160, height=60)
  assert image.size == (160, 60)
  sizes = {synthetic.sample(i, 0)[0].size for i in range(10)}
  assert len(sizes) > 3  # 'varied' without a size draws one per index
  for width, height in sizes:
    assert 24 <= height <= 100 and 64 <= width <= 400


def test_random_style_samples_widely():
  styles = [synthetic.random_style(np.random.default_rng(i)) for i in range(300)]
  pillow = [s for s in styles if s.engine == 'pillow']
  assert {s.background for s in pillow} == set(synthetic.BACKGROUNDS)
  assert len({s.fonts for s in styles}) > 50
  assert any(s.hollow for s in pillow) and any(s.warp for s in pillow)
  assert any(s.aspect < 0.8 for s in pillow) and any(s.aspect > 1.1 for s in pillow)
  lined = [s for s in pillow if s.lines]
  assert any(s.zigzags for s in lined) and any(not s.zigzags for s in lined)
  assert any(s.jpeg for s in styles) and any(s.blur for s in styles)
  assert any(s.rotation < 5 and not s.lines and not s.dots for s in pillow)  # some are easy
  # and some as speckled as the densest named looks ('noisy', 'ransom': 0.6-1 per 100 px²)
  assert sum(s.dots >= 0.6 for s in pillow) >= 0.05 * len(pillow)
  fixed = synthetic.random_style(np.random.default_rng(0), width=90, height=30)
  assert (fixed.width, fixed.height) == (90, 30)


def test_aspect_scales_the_width_of_the_lettering_only():
  def ink_box(aspect):
    image = synthetic.render('mnw47', synthetic.Style(aspect=aspect), np.random.default_rng(0))
    rows, cols = np.nonzero(np.asarray(image.convert('L')) < 128)
    return cols.max() - cols.min(), rows.max() - rows.min()

  (wide, high), (narrow, narrow_high) = ink_box(1.0), ink_box(0.6)
  assert narrow / wide == pytest.approx(0.6, abs=0.05)
  assert abs(narrow_high - high) <= 1
  with pytest.raises(ConfigError, match='aspect'):
    synthetic.Style(aspect=0)


def test_imagecaptcha_is_seeded_and_restores_the_module():
  style = synthetic.named_style('dataset')
  first = synthetic.render('abcde', style, np.random.default_rng(7))
  second = synthetic.render('abcde', style, np.random.default_rng(7))
  np.testing.assert_array_equal(np.asarray(first), np.asarray(second))
  assert captcha_image.secrets is secrets


def test_threads_draw_the_same_images():
  # ImageCaptcha's seeding swaps a module attribute: threads must not see each other's generator.
  def draw(i):
    return digest(*synthetic.sample(i, 4, style='dataset'))

  alone = [draw(i) for i in range(8)]
  with ThreadPoolExecutor(4) as pool:
    assert list(pool.map(draw, range(8))) == alone


def test_generate_default_is_the_dataset_style(tmp_path):
  paths = synthetic.generate(tmp_path, 20, seed=1)
  assert len(paths) == len({p.name for p in paths}) == 20
  # The texts earlier versions wrote for this seed: distinct draws of rng.choice, sorted.
  rng, expected = np.random.default_rng(1), set()
  while len(expected) < 20:
    expected.add(''.join(rng.choice(list(synthetic.DEFAULT_ALPHABET), size=5)))
  assert [p.stem for p in paths] == sorted(expected)
  for path in paths:
    with Image.open(path) as image:
      assert image.mode == 'RGB' and image.size == (200, 50)
  again = synthetic.generate(tmp_path / 'again', 20, seed=1)
  assert [p.read_bytes() for p in again] == [p.read_bytes() for p in paths]
  real = paths[3].read_bytes()  # as if a real captcha of that text were there
  with pytest.raises(ConfigError, match='20 of the files .* already .*nothing was written'):
    synthetic.generate(tmp_path, 21, seed=1)
  assert paths[3].read_bytes() == real and len(list(tmp_path.glob('*.png'))) == 20
  assert synthetic.generate(tmp_path, 5, seed=2, labels_file=True)[0].name == '000000.png'
  with pytest.raises(ConfigError, match='6 of the files'):  # labels.csv too
    synthetic.generate(tmp_path, 5, seed=2, labels_file=True)


def test_generate_other_styles_and_sizes(tmp_path):
  paths = synthetic.generate(
    tmp_path, 12, alphabet=synthetic.DIGITS, length=4, width=160, height=60, style='varied'
  )
  assert len({p.name for p in paths}) == 12
  for path in paths:
    assert len(path.stem) == 4 and path.stem.isdigit()
    with Image.open(path) as image:
      assert image.size == (160, 60)


def test_case_options():
  assert synthetic.apply_case('ab2', 'keep') == 'ab2'
  assert synthetic.apply_case('aB2', 'lower') == 'ab2'
  assert synthetic.apply_case('aB2', 'upper') == 'AB2'
  assert synthetic.apply_case('aB2', 'mixed') == 'ab2AB'
  image, text = synthetic.sample(0, 0, alphabet='abc', case='upper', lengths=6, style='clean')
  assert set(text) <= set('ABC')


def test_mixed_case_names_are_distinct_ignoring_case(tmp_path):
  paths = synthetic.generate(
    tmp_path, 40, alphabet='abc', length=(3, 4), case='mixed', style='clean', width=100, height=32
  )
  names = [p.stem for p in paths]
  assert len({n.casefold() for n in names}) == 40  # no clash on a case-insensitive disk
  assert all(3 <= len(n) <= 4 and set(n) <= set('abcABC') for n in names)
  assert any(n != n.lower() for n in names) and any(n != n.upper() for n in names)


def test_labels_file(tmp_path):
  paths = synthetic.generate(
    tmp_path, 15, alphabet=ALNUM, length=(3, 5), style='varied', seed=2, labels_file=True
  )
  assert [p.name for p in paths] == [f'{i:06d}.png' for i in range(15)]
  with open(tmp_path / 'labels.csv', newline='') as f:
    rows = list(csv.reader(f))
  assert rows[0] == ['file', 'text']
  assert [row[0] for row in rows[1:]] == [p.name for p in paths]
  for name, text in rows[1:]:
    assert 3 <= len(text) <= 5 and set(text) <= set(ALNUM)
    with Image.open(tmp_path / name) as image:
      assert image.size == (200, 50)
  assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
    [*(p.name for p in paths), 'labels.csv']
  )


def test_too_few_distinct_labels_is_a_clear_error(tmp_path):
  with pytest.raises(ConfigError, match='labels_file=True'):
    synthetic.generate(tmp_path, 10, alphabet='ab', length=3)
  # Named by index, texts may repeat.
  assert len(synthetic.generate(tmp_path, 10, alphabet='ab', length=3, labels_file=True)) == 10


@pytest.mark.parametrize(
  'call',
  [
    lambda: synthetic.length_range('4-'),
    lambda: synthetic.length_range((7, 4)),
    lambda: synthetic.length_range(0),
    lambda: synthetic.apply_case('abc', 'title'),
    lambda: synthetic.apply_case('', 'keep'),
    lambda: synthetic.sample(-1, 0),
    lambda: synthetic.named_style('fancy'),
    lambda: synthetic.Style(width=4),
    lambda: synthetic.Style(background='stripes'),
    lambda: synthetic.Style(hollow=True),
    lambda: synthetic.render('', synthetic.Style(), np.random.default_rng(0)),
  ],
)
def test_bad_inputs_raise_config_errors(call):
  # ConfigError is a ValueError that the commands print as one line, without a traceback.
  with pytest.raises(ConfigError):
    call()


def test_command_line(tmp_path, capsys):
  out = tmp_path / 'out'
  with pytest.raises(SystemExit) as done:
    cli.synthetic(
      [
        *('--out', str(out), '--count', '6', '--length', '4-6', '--width', '120', '--height', '40'),
        *('--style', 'varied', '--case', 'upper', '--seed', '3', '--labels_file'),
      ]
    )
  assert done.value.code == 0 and 'Wrote 6 captchas' in capsys.readouterr().out
  with open(out / 'labels.csv', newline='') as f:
    texts = [row['text'] for row in csv.DictReader(f)]
  assert len(texts) == 6 and all(t == t.upper() and 4 <= len(t) <= 6 for t in texts)
  with pytest.raises(SystemExit) as done:
    cli.synthetic(['--out', str(out), '--length', 'five'])
  assert done.value.code == 2
