"""The fonts synthetic captchas are drawn with.

- `FONTS`: the fonts every install has (the captcha package's own, matplotlib's DejaVu, STIX and
  Computer Modern), by name.
- `HELD_OUT_FONTS`: Computer Modern, which the pre-training stream never draws, so that the styles
  drawn with it are looks a pretrained reader has not seen.
- `font_pool(folders)`: the pre-training fonts and the usable fonts found under folders of the
  machine (a font that draws the ASCII letters and digits, and its two cases apart).
"""

from __future__ import annotations

import functools
import importlib.util
import re
import string
from pathlib import Path

import numpy as np
from captcha import image as captcha_image
from fontTools.ttLib import TTFont
from PIL import Image, ImageDraw, ImageFont

CAPTCHA_FONT = str(Path(captcha_image.DATA_DIR) / 'DroidSansMono.ttf')


def _matplotlib_fonts() -> dict[str, str]:
  """Matplotlib's bundled TTFs that draw plain ASCII letters and digits, by name."""
  spec = importlib.util.find_spec('matplotlib')  # finds the folder without importing matplotlib
  if spec is None or spec.origin is None:
    return {}
  folder = Path(spec.origin).parent / 'mpl-data' / 'fonts' / 'ttf'
  names = [
    f'{family}{face}'
    for family in ('DejaVuSans', 'DejaVuSansMono')
    for face in ('', '-Bold', '-Oblique', '-BoldOblique')
  ]
  names += [f'DejaVuSerif{face}' for face in ('', '-Bold', '-Italic', '-BoldItalic')]
  names += [f'STIXGeneral{face}' for face in ('', 'Bol', 'Ita', 'BolIta')]
  # Computer Modern roman, bold, italic, sans and typewriter; cmmi, cmsy and cmex are math symbols.
  names += ['cmr10', 'cmb10', 'cmti10', 'cmss10', 'cmtt10']
  paths = {name: folder / f'{name}.ttf' for name in names}
  return {name: str(path) for name, path in paths.items() if path.is_file()}


FONTS: dict[str, str] = {'DroidSansMono': CAPTCHA_FONT, **_matplotlib_fonts()}


def font_path(name: str) -> str:
  """A bundled font by name, falling back to the captcha package's own font."""
  return FONTS.get(name, CAPTCHA_FONT)


# Computer Modern never enters the pre-training stream ('varied'): the styles drawn with it
# ('ledger', 'ransom') are looks a pretrained reader has not seen, to measure fine-tuning on.
HELD_OUT_FONTS = ('cmr10', 'cmb10', 'cmti10', 'cmss10', 'cmtt10')
PRETRAINING_FONTS = tuple(path for name, path in FONTS.items() if name not in HELD_OUT_FONTS)
# Computer Modern under other names (CMU, Latin Modern), kept out of the stream like cm*.
_COMPUTER_MODERN = re.compile(r'^(cm|lm(roman|sans|mono))', re.IGNORECASE)
_DIGIT_NAMES = 'zero one two three four five six seven eight nine'.split()
_GLYPH_NAMES = {
  **{c: c for c in string.ascii_letters},
  **dict(zip(string.digits, _DIGIT_NAMES, strict=True)),
}


def draws_ascii(path: str | Path) -> bool:
  """Whether a font draws every ASCII letter and digit as itself: its character map sends each to
  the glyph of that letter's standard name. Symbol and dingbat fonts map the same code points to
  other glyphs ('alpha', 'a105'), math and display cuts leave them out."""
  try:
    cmap = TTFont(path, fontNumber=0, lazy=True)['cmap'].getBestCmap()
  except Exception:  # fontTools raises many kinds for a file that is not a font
    return False
  return all(cmap.get(ord(c)) == name for c, name in _GLYPH_NAMES.items())


# Letters whose two cases differ in shape in an ordinary font. A family drawing them alike once
# scaled to one box (titling, small-caps and unicase cuts) would teach wrong labels: the median
# overlap over a family's faces is 0.2-0.62 for the ordinary families of the Debian font packages
# in bench/README.md, 0.7-1.0 for those cuts (and one very heavy display face, 0.72).
_CASE_PAIRS = 'abdeghnqrt'
_SAME_CASE_OVERLAP = 0.68


def _shape(font: ImageFont.FreeTypeFont, char: str) -> np.ndarray | None:
  """The character's ink scaled to a 20×20 box, as booleans; None where it draws nothing."""
  left, top, right, bottom = font.getbbox(char)
  if right <= left or bottom <= top:
    return None
  mask = Image.new('L', (right - left, bottom - top))
  ImageDraw.Draw(mask).text((-left, -top), char, font=font, fill=255)
  return np.asarray(mask.resize((20, 20), Image.Resampling.BILINEAR)) > 127


def case_overlap(path: str | Path) -> float:
  """The median over _CASE_PAIRS of how much a lower-case letter's shape overlaps its capital's
  (intersection over union, each scaled to one box): ~1 for a font with one case."""
  try:
    font = ImageFont.truetype(str(path), 48)
  except OSError:  # FreeType refuses a few files fontTools reads: such a font is left out
    return 1.0
  overlaps = []
  for char in _CASE_PAIRS:
    lower, upper = _shape(font, char), _shape(font, char.upper())
    if lower is None or upper is None:
      return 1.0
    overlaps.append((lower & upper).sum() / max(1, (lower | upper).sum()))
  return float(np.median(overlaps))


def _family(path: Path) -> str:
  """The font's family name (typographic family, else family), or its file name."""
  names = TTFont(path, fontNumber=0, lazy=True)['name']
  return names.getDebugName(16) or names.getDebugName(1) or path.stem


@functools.cache
def font_pool(folders: tuple[str, ...] = (), per_family: int = 4) -> tuple[str, ...]:
  """PRETRAINING_FONTS and, after them, fonts found under `folders` (a missing folder adds none):
  every .ttf/.otf that draws the ASCII letters and digits, is not Computer Modern and is not one
  of the bundled fonts again, from the families whose faces draw the two cases apart, at most
  `per_family` faces of each (spread over its faces sorted by name), so that a family of many
  weights is not drawn more often than one of a single face."""
  known = {Path(path).stem.lower() for path in FONTS.values()}
  families: dict[str, dict[str, Path]] = {}
  for folder in folders:
    for path in sorted(Path(folder).expanduser().rglob('*')):
      name = path.stem
      if (
        path.suffix.lower() in ('.ttf', '.otf')
        and name.lower() not in known
        and not _COMPUTER_MODERN.match(name)
        and draws_ascii(path)
      ):
        families.setdefault(_family(path), {}).setdefault(name, path)
  extra = []
  for faces in families.values():
    if np.median([case_overlap(path) for path in faces.values()]) < _SAME_CASE_OVERLAP:
      names = sorted(faces)
      step = max(1, len(names) / per_family)
      extra += [str(faces[names[int(i * step)]]) for i in range(min(per_family, len(names)))]
  return PRETRAINING_FONTS + tuple(sorted(extra, key=lambda path: Path(path).stem))
