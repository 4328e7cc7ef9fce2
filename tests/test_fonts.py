import copy
import shutil
import string
from pathlib import Path

import numpy as np
from fontTools.ttLib import TTFont

from captcha_jax import fonts, synthetic


def test_the_pretraining_stream_never_draws_the_held_out_fonts():
  held_out = {fonts.FONTS[name] for name in fonts.HELD_OUT_FONTS if name in fonts.FONTS}
  assert held_out  # matplotlib ships Computer Modern
  for i in range(300):
    style = synthetic.random_style(np.random.default_rng([7, i]))
    assert not held_out & set(style.fonts), style.fonts
  for name in ('ledger', 'ransom'):
    assert set(synthetic.named_style(name).fonts) <= held_out


def _unicase_copy(source: str, target: Path) -> None:
  """`source` with its lower-case letters drawn as its capitals, as a small-caps or titling cut."""
  font = TTFont(source)
  for char in string.ascii_lowercase:
    font['glyf'][char] = copy.deepcopy(font['glyf'][char.upper()])
    font['hmtx'][char] = font['hmtx'][char.upper()]
  font.save(target)


def test_font_pool_adds_the_fonts_that_draw_letters_and_digits(tmp_path):
  bundled = Path(fonts.FONTS['DejaVuSerif']).parent
  (tmp_path / 'nested').mkdir()
  shutil.copy(bundled / 'DejaVuSerif.ttf', tmp_path / 'nested' / 'MySerif.ttf')  # joins
  shutil.copy(bundled / 'DejaVuSans.ttf', tmp_path / 'DejaVuSans.ttf')  # bundled already
  shutil.copy(bundled / 'cmsy10.ttf', tmp_path / 'Symbols.ttf')  # maps letters to symbols
  shutil.copy(bundled / 'cmr10.ttf', tmp_path / 'lmroman10-regular.ttf')  # Computer Modern
  for i in range(1, 7):  # six faces of one family: four of them join
    shutil.copy(bundled / 'DejaVuSansMono.ttf', tmp_path / f'Mono-{i}.ttf')
  _unicase_copy(fonts.FONTS['DejaVuSans'], tmp_path / 'Capitals.ttf')  # one case only
  (tmp_path / 'broken.ttf').write_bytes(b'not a font')
  (tmp_path / 'notes.txt').write_text('MySans.ttf')
  pool = fonts.font_pool((str(tmp_path), str(tmp_path / 'missing')))
  added = [tmp_path / f'Mono-{i}.ttf' for i in (1, 2, 4, 5)] + [tmp_path / 'nested' / 'MySerif.ttf']
  assert pool == (*fonts.PRETRAINING_FONTS, *map(str, added))
  assert fonts.case_overlap(tmp_path / 'Capitals.ttf') > 0.95
  assert fonts.case_overlap(fonts.FONTS['DejaVuSans']) < 0.5
  assert fonts.font_pool() == fonts.PRETRAINING_FONTS
  styles = [synthetic.random_style(np.random.default_rng([8, i]), fonts=pool) for i in range(300)]
  drawn = {font for style in styles for font in style.fonts}
  assert str(tmp_path / 'nested' / 'MySerif.ttf') in drawn
  image, _ = synthetic.sample(0, 5, fonts=pool[-1:], style='varied', width=96, height=32)
  assert image.size == (96, 32)
