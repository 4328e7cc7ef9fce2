"""Captchas of libraries real sites use, drawn in their own venv: looks none of captcha_jax's
generator draws, for bench/few_labels.py's --libraries.

    wheezy         wheezy.captcha, its README's recipe (warp, rotate, offset; a curve, noise,
                   smoothing) at 200 × 75, in four display faces the pre-training never drew
                   (Aldrich, Graduate, Londrina Solid, Fibel Nord, from multicolorcaptcha's fonts)
    multicolor     multicolorcaptcha's CaptchaGenerator(0), difficulty 1, multicolour: each
                   character turned up to 55° in its own coloured square, 256 × 144 with its margins

Both draw 4 of A-Z and 0-9. `generate(library, folder, count, seed)` writes TEXT.png files, texts
distinct within a folder and from those in `avoid`; the same arguments give the same images.
"""

import json
import subprocess
from pathlib import Path

from common import own_venv

LIBRARIES = ('wheezy', 'multicolor')
PACKAGES = ['wheezy.captcha==3.2.2', 'multicolorcaptcha==1.2.0']

_DRAW = """
import json, random, string, sys
from pathlib import Path
library, folder, count, seed, avoid = json.load(sys.stdin)
random.seed(seed)  # both libraries draw from the random module
folder = Path(folder)
if library == 'wheezy':
  import multicolorcaptcha
  from wheezy.captcha import image as w
  fonts = Path(multicolorcaptcha.__file__).parent / 'fonts'
  faces = ['Aldrich-Regular.ttf', 'Graduate-Regular.ttf', 'LondrinaSolid-Regular.ttf',
           'Fibel Nord.ttf']
  faces = [str(next(fonts.rglob(face))) for face in faces]
  text = w.text(fonts=faces, drawings=[w.warp(), w.rotate(), w.offset()])
  render = w.captcha(drawings=[w.background(), text, w.curve(), w.noise(), w.smooth()])
  def draw():
    chars = ''.join(random.sample(string.ascii_uppercase + string.digits, 4))
    return render(chars), chars
else:
  from multicolorcaptcha import CaptchaGenerator
  generator = CaptchaGenerator(0)
  def draw():
    c = generator.gen_captcha_image(difficult_level=1, chars_mode='ascii', multicolor=True)
    return c.image, c.characters
seen = set(avoid)
folder.mkdir(parents=True)
while count:
  image, chars = draw()
  if chars not in seen:
    seen.add(chars)
    image.save(folder / f'{chars}.png')
    count -= 1
"""


def generate(library: str, folder: Path, count: int, seed: int, avoid: list[str]) -> None:
  """Writes `count` captchas of `library` into the new folder `folder`, no text of `avoid`."""
  if library not in LIBRARIES:
    raise SystemExit(f'Unknown captcha library {library!r}: use one of {LIBRARIES}.')
  python = own_venv('libraries-venv', PACKAGES, 'wheezy.captcha, multicolorcaptcha')
  request = json.dumps([library, str(folder), count, seed, avoid])
  subprocess.run([str(python), '-c', _DRAW], input=request, text=True, check=True)
