"""Synthetic captchas of many styles: a renderer, a wide random style and an endless indexed stream.

- `generate(out_dir, count)` writes a folder of LABEL.png files in the dataset's own style (the
  `captcha` package's ImageCaptcha, 200×50, 5 symbols), the layout `labelled.py` reads; `style=`
  picks another look, and `labels_file=True` names files by index and writes labels.csv.
- `sample(index, seed)` is element `index` of an endless synthetic dataset: the same (seed, index)
  gives the same image and text in any process, so a loader can resume at any index and shard.
- `render(text, style, rng)` draws one captcha in a `Style`; `random_style(rng)` draws a style from
  the wide pre-training distribution (sizes, fonts, colours, backgrounds, noise, lines, warps, blur,
  JPEG), from clean printed text to hard, noisy and warped text.

    python -m captcha_jax.synthetic --out data/synthetic --count 1000
    python -m captcha_jax.synthetic --out data/varied --count 500 --style varied --length 4-7 \
        --alphabet 0123456789abcdefghijklmnopqrstuvwxyz --case mixed --labels_file
"""

from __future__ import annotations

import bisect
import colorsys
import csv
import dataclasses
import functools
import io
import math
import random
import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from captcha import image as captcha_image
from PIL import Image, ImageChops, ImageDraw, ImageFilter, ImageFont

# A ValueError the commands print as one line (exit status 2) instead of a traceback.
from captcha_jax.errors import ConfigError
from captcha_jax.fonts import CAPTCHA_FONT, PRETRAINING_FONTS, font_path

DEFAULT_ALPHABET = '2345678bcdefgmnpwxy'
DIGITS = '0123456789'
LOWERCASE = 'abcdefghijklmnopqrstuvwxyz'
UPPERCASE = LOWERCASE.upper()

CASES = ('keep', 'lower', 'upper', 'mixed')
# 'varied' draws a new `random_style` for every image; the others are one look each.
STYLES = ('dataset', 'clean', 'lines', 'wavy', 'noisy', 'ledger', 'ransom', 'varied')
ENGINES = ('pillow', 'imagecaptcha')
BACKGROUNDS = ('plain', 'gradient', 'texture', 'grid')

Color = tuple[int, int, int]


@dataclasses.dataclass(frozen=True)
class Style:
  """How one family of captchas looks; `render` adds the per-image randomness on top.

  Distances are fractions of the image height unless a comment says otherwise, so a style keeps its
  look at any size. Each character picks its font, size (within `font_size`) and colour (of `ink`).
  The 'imagecaptcha' engine uses only the size, `fonts`, `font_size` and the effects after drawing
  (`lowres`, `blur`, `noise`, `jpeg`); it picks its own colours, dots and curve.
  """

  width: int = 200
  height: int = 50
  engine: str = 'pillow'
  fonts: tuple[str, ...] = (CAPTCHA_FONT,)  # font files
  font_size: tuple[float, float] = (0.6, 0.75)  # em size range
  ink: tuple[Color, ...] = ((20, 20, 20),)  # text colours
  paper: Color = (255, 255, 255)  # background colour
  paper2: Color = (220, 220, 220)  # second background colour: gradient end, texture, grid lines
  background: str = 'plain'
  stroke: float = 0.0  # outline width, fraction of the font size: bolder text
  hollow: bool = False  # draw only the outline (needs stroke > 0)
  spacing: float = 0.05  # gap between characters, fraction of the font size; negative overlaps
  fill: float = 0.0  # spread the characters over at least this fraction of the width
  rotation: float = 0.0  # each character turns by up to this many degrees
  jitter: float = 0.0  # each character moves up or down by up to this much
  wave: float = 0.0  # the baseline follows a sine of this amplitude
  aspect: float = 1.0  # the text's width is scaled by this much: condensed (< 1) or wide (> 1)
  lines: int = 0  # lines, arcs, waves or zigzags drawn through the text, warped with it
  line_width: float = 0.04
  zigzags: float = 0.0  # the chance each line is instead a few straight segments at sharp angles
  dots: float = 0.0  # noise dots per 100 square pixels
  warp: float = 0.0  # sinusoidal displacement of the whole text, amplitude
  elastic: float = 0.0  # smooth random displacement of the whole text, amplitude
  lowres: float = 1.0  # draw at this fraction of the size, then scale up: blocky pixels
  blur: float = 0.0  # blur radius
  noise: float = 0.0  # pixel noise amplitude, in grey levels (uniform ±noise per channel)
  jpeg: int = 0  # JPEG quality the image passes through, 1-95; 0: none

  def __post_init__(self) -> None:
    if self.width < 8 or self.height < 8:
      raise ConfigError(f'A captcha needs at least 8×8 pixels, got {self.width}×{self.height}.')
    if self.engine not in ENGINES:
      raise ConfigError(f'engine must be one of {ENGINES}, got {self.engine!r}.')
    if self.background not in BACKGROUNDS:
      raise ConfigError(f'background must be one of {BACKGROUNDS}, got {self.background!r}.')
    if not self.fonts or not self.ink:
      raise ConfigError('A style needs at least one font and one ink colour.')
    if not 0 < self.font_size[0] <= self.font_size[1]:
      raise ConfigError(f'font_size must be an increasing positive range, got {self.font_size}.')
    if not 0 <= self.jpeg <= 95:
      raise ConfigError(f'jpeg quality must be 0 (none) to 95, got {self.jpeg}.')
    if self.aspect <= 0:
      raise ConfigError(f'aspect must be > 0, got {self.aspect}.')
    if not 0 < self.lowres <= 1:
      raise ConfigError(f'lowres must be in (0, 1], got {self.lowres}.')
    if self.hollow and self.stroke <= 0:
      raise ConfigError('A hollow style needs stroke > 0 to draw the outline.')


def named_style(name: str, width: int = 200, height: int = 50) -> Style:
  """One of the fixed looks in `STYLES` (all but 'varied', which `random_style` draws)."""
  sans, serif = font_path('DejaVuSans'), font_path('DejaVuSerif')
  looks = {
    # What this module always made: ImageCaptcha, its own font, sizes 70-90% of the height.
    'dataset': dict(engine='imagecaptcha', fonts=(CAPTCHA_FONT,), font_size=(0.7, 0.9)),
    'clean': dict(fonts=(sans,), font_size=(0.7, 0.7), rotation=4, spacing=0.1, fill=0.6),
    # Grey, blurred text with a stroke through it, like the small Kaggle captcha sets.
    'lines': dict(
      fonts=(serif, font_path('DejaVuSerif-Bold')),
      font_size=(0.6, 0.7),
      ink=((80, 80, 80),),
      paper=(236, 236, 236),
      spacing=0.0,
      fill=0.7,
      rotation=8,
      lines=1,
      line_width=0.05,
      blur=0.012,
      noise=6,
    ),
    'wavy': dict(
      fonts=(font_path('DejaVuSerif-Italic'), font_path('STIXGeneralBolIta')),
      font_size=(0.65, 0.8),
      ink=((150, 20, 20), (20, 20, 150), (20, 110, 20)),
      paper=(250, 244, 225),
      paper2=(210, 225, 245),
      background='gradient',
      spacing=0.0,
      fill=0.8,
      rotation=12,
      wave=0.08,
      warp=0.06,
    ),
    'noisy': dict(
      fonts=(font_path('DejaVuSans-Bold'), font_path('DejaVuSansMono-Bold'), font_path('cmb10')),
      font_size=(0.55, 0.8),
      ink=((30, 30, 120), (120, 30, 30), (30, 90, 30), (60, 60, 60)),
      paper=(235, 235, 220),
      paper2=(190, 200, 215),
      background='texture',
      spacing=-0.05,
      fill=0.8,
      rotation=28,
      jitter=0.08,
      lines=3,
      line_width=0.03,
      dots=1.0,
      elastic=0.04,
      jpeg=40,
    ),
    # The two held-out looks: fonts the pre-training stream never draws (HELD_OUT_FONTS).
    'ledger': dict(
      fonts=(font_path('cmtt10'),),
      font_size=(0.6, 0.7),
      ink=((40, 40, 90),),
      paper=(248, 246, 236),
      paper2=(200, 210, 230),
      background='grid',
      spacing=0.02,
      fill=0.75,
      rotation=6,
      jitter=0.05,
      lines=2,
      line_width=0.025,
      blur=0.01,
      noise=8,
    ),
    'ransom': dict(
      fonts=(font_path('cmr10'), font_path('cmti10'), font_path('cmss10'), font_path('cmb10')),
      font_size=(0.5, 0.85),
      ink=((170, 30, 30), (30, 30, 160), (20, 120, 40), (120, 60, 0), (90, 0, 120)),
      paper=(255, 255, 255),
      paper2=(235, 225, 200),
      background='texture',
      spacing=0.05,
      fill=0.85,
      rotation=20,
      jitter=0.1,
      dots=0.6,
      elastic=0.03,
      jpeg=55,
    ),
  }
  if name not in looks:
    raise ConfigError(f'Unknown style {name!r}: use one of {STYLES}.')
  return Style(width=width, height=height, **looks[name])


# Fonts and glyphs, cached: FreeType takes ~0.1 ms to open a font and ~0.05 ms to draw a glyph.
# Glyphs are drawn at a few canonical sizes (1.5× apart) and scaled down to the size wanted in the
# same transform that rotates them, so a stream of random sizes reuses a few thousand cached masks.
_CANONICAL_SIZES = (16, 24, 36, 54, 81, 122)


def _canonical(size: float) -> int:
  """The smallest canonical size at least `size` (or the largest): glyphs are only scaled down."""
  return _CANONICAL_SIZES[
    min(bisect.bisect_left(_CANONICAL_SIZES, size), len(_CANONICAL_SIZES) - 1)
  ]


@functools.lru_cache(maxsize=1024)  # ~130 KB each; beyond it (~600 fonts × 6 sizes) 0.1 ms a load
def _font(path: str, size: int) -> ImageFont.FreeTypeFont:
  return ImageFont.truetype(path, size)


@functools.lru_cache(maxsize=16384)
def _glyph(char: str, path: str, size: int, stroke: int, hollow: bool) -> tuple[Image.Image, int]:
  """A tight 'L' mask of one character and its top edge relative to the baseline (negative: above).

  The cached mask is shared: callers must not draw on it.
  """
  font = _font(path, size)
  left, top, right, bottom = font.getbbox(char, anchor='ls', stroke_width=stroke)
  if right <= left or bottom <= top:  # a space: no ink, the width of a narrow letter
    return Image.new('L', (max(1, size // 3), 1)), 0
  mask = Image.new('L', (right - left, bottom - top))
  ImageDraw.Draw(mask).text(
    (-left, -top),
    char,
    font=font,
    anchor='ls',
    fill=0 if hollow else 255,
    stroke_width=stroke,
    stroke_fill=255,
  )
  return mask, top


def _scale_rotate(mask: Image.Image, scale: float, angle: float) -> Image.Image:
  """`mask` scaled by `scale` and turned by `angle` degrees about its centre, in one resampling."""
  w, h = mask.size
  if abs(angle) <= 1:  # a turn this small is invisible but would cost a resampling
    if scale > 0.97:
      return mask
    return mask.resize(
      (max(1, round(w * scale)), max(1, round(h * scale))), Image.Resampling.BILINEAR
    )
  cos, sin = math.cos(math.radians(angle)), math.sin(math.radians(angle))
  out_w = max(1, math.ceil(scale * (w * abs(cos) + h * abs(sin))))
  out_h = max(1, math.ceil(scale * (w * abs(sin) + h * abs(cos))))
  # Output pixel p reads input pixel R (p - output centre) / scale + input centre.
  a, b, d, e = cos / scale, sin / scale, -sin / scale, cos / scale
  c = w / 2 - a * out_w / 2 - b * out_h / 2
  f = h / 2 - d * out_w / 2 - e * out_h / 2
  return mask.transform(
    (out_w, out_h), Image.Transform.AFFINE, (a, b, c, d, e, f), Image.Resampling.BILINEAR
  )


class _Draws:
  """Single random numbers from a NumPy generator, fetched in blocks.

  One NumPy call costs about as much as drawing a hundred numbers, and a captcha needs dozens of
  single numbers; fetching blocks keeps the whole image a function of the generator's state.
  """

  def __init__(self, rng: np.random.Generator, block: int = 64):
    self.rng = rng
    self._block = block
    self._values: list[float] = []

  def random(self) -> float:
    if not self._values:
      self._values = self.rng.random(self._block).tolist()
    return self._values.pop()

  def uniform(self, low: float, high: float) -> float:
    return low + (high - low) * self.random()

  def chance(self, p: float) -> bool:
    return self.random() < p

  def index(self, n: int, weights: Sequence[float] | None = None) -> int:
    """An index below n: uniform, or in proportion to `weights`."""
    if weights is None:
      return min(int(self.random() * n), n - 1)
    target, total = self.random() * sum(weights), 0.0
    for i, weight in enumerate(weights):
      total += weight
      if target < total:
        return i
    return n - 1

  def sometimes(self, p: float, low: float, high: float) -> float:
    """A uniform number in [low, high) with probability p, else 0."""
    return self.uniform(low, high) if self.chance(p) else 0.0


# The Pillow engine: background, text layer (glyphs, lines, warp), dots; then the shared effects.


def _background(style: Style, draws: _Draws) -> Image.Image:
  w, h = style.width, style.height
  paper = Image.new('RGB', (w, h), style.paper)
  if style.background == 'plain':
    return paper
  if style.background == 'grid':
    draw = ImageDraw.Draw(paper)
    step = max(3, int(h * draws.uniform(0.1, 0.3)))
    slope = draws.uniform(-1, 1) * h
    for x in range(int(-abs(slope)) - step, w + step, step):
      draw.line([(x, 0), (x + slope, h)], fill=style.paper2)
    if draws.chance(0.5):
      for y in range(draws.index(step), h, step):
        draw.line([(0, y), (w, y)], fill=style.paper2)
    return paper
  if style.background == 'gradient':
    # A linear ramp in a random direction on a coarse grid, smoothly scaled up.
    angle = draws.uniform(0, 2 * math.pi)
    ys, xs = np.mgrid[0:1:5j, 0:1:9j]
    ramp = xs * math.cos(angle) * w / h + ys * math.sin(angle)
    small = (255 * (ramp - ramp.min()) / max(np.ptp(ramp), 1e-6)).astype(np.uint8)
  else:  # 'texture': soft blotches of a random grain
    grain = draws.uniform(0.1, 0.5) * h
    shape = (max(2, int(h / grain)) + 1, max(2, int(w / grain)) + 1)
    small = draws.rng.integers(0, 256, size=shape, dtype=np.uint8)
  mask = Image.fromarray(small, 'L').resize((w, h), Image.Resampling.BILINEAR)
  return Image.composite(Image.new('RGB', (w, h), style.paper2), paper, mask)


def _text_layer(
  text: str, style: Style, draws: _Draws
) -> tuple[Image.Image, tuple[int, int, int, int]]:
  """The characters on a transparent RGBA image of the captcha's size, and the box they fill."""
  w, h = style.width, style.height
  glyphs = []
  for char in text:
    size = draws.uniform(*style.font_size) * h
    canonical = _canonical(size)
    stroke = max(1, round(style.stroke * canonical)) if style.stroke > 0 else 0
    path = style.fonts[draws.index(len(style.fonts))]
    mask, top = _glyph(char, path, canonical, stroke, style.hollow)
    scale = size / canonical
    turned = _scale_rotate(mask, scale, draws.uniform(-style.rotation, style.rotation))
    colour = style.ink[draws.index(len(style.ink))]
    glyphs.append((turned, mask.width * scale, (top + mask.height / 2) * scale, size, colour))

  mean_size = sum(g[3] for g in glyphs) / len(glyphs)
  margin = draws.uniform(0.02, 0.08) * w
  room = w - 2 * margin
  natural = sum(g[1] for g in glyphs)
  gap = style.spacing * mean_size
  if len(glyphs) > 1 and natural + gap * (len(glyphs) - 1) < style.fill * room:
    gap = min((style.fill * room - natural) / (len(glyphs) - 1), 1.5 * mean_size)

  # Centres along a baseline at y = 0 (plus jitter and wave), then one layer around them all.
  phase, period = draws.uniform(0, 2 * math.pi), draws.uniform(0.5, 1.5) * w
  corners, x = [], 0.0
  for turned, advance, middle, _, _ in glyphs:
    cx = x + advance / 2
    cy = middle + draws.uniform(-style.jitter, style.jitter) * h
    cy += style.wave * h * math.sin(2 * math.pi * cx / period + phase)
    corners.append((round(cx - turned.width / 2), round(cy - turned.height / 2)))
    x += advance + gap
  left = min(c[0] for c in corners)
  top = min(c[1] for c in corners)
  right = max(c[0] + g[0].width for c, g in zip(corners, glyphs, strict=True))
  bottom = max(c[1] + g[0].height for c, g in zip(corners, glyphs, strict=True))
  layer = Image.new('RGBA', (right - left, bottom - top), (*style.ink[0], 0))
  for (turned, _, _, _, colour), (cx, cy) in zip(glyphs, corners, strict=True):
    layer.paste((*colour, 255), (cx - left, cy - top), turned)
  layer = layer.crop(layer.getchannel('A').getbbox() or (0, 0, 1, 1))
  if style.aspect != 1:
    size = (max(1, round(layer.width * style.aspect)), layer.height)
    layer = layer.resize(size, Image.Resampling.BILINEAR)

  scale = min(1.0, room / layer.width, 0.92 * h / layer.height)
  if scale < 1:
    size = (max(1, round(layer.width * scale)), max(1, round(layer.height * scale)))
    layer = layer.resize(size, Image.Resampling.BILINEAR)
  canvas = Image.new('RGBA', (w, h), (*style.ink[0], 0))
  x0 = int(draws.uniform(margin, max(margin, w - margin - layer.width)))
  y0 = int((h - layer.height) * draws.uniform(0.25, 0.75))  # near the middle, as most are
  canvas.paste(layer, (x0, y0))
  return canvas, (x0, y0, x0 + layer.width, y0 + layer.height)


def _draw_lines(
  layer: Image.Image, box: tuple[int, int, int, int], style: Style, draws: _Draws
) -> None:
  """Straight lines, arcs, waves and zigzags across the text's box, in the ink colours."""
  x0, y0, x1, y1 = box
  draw = ImageDraw.Draw(layer)
  width = max(1, round(style.line_width * style.height))
  for _ in range(style.lines):
    colour = (*style.ink[draws.index(len(style.ink))], 255)
    start = x0 - draws.uniform(0, 0.2) * (x1 - x0)
    end = x1 + draws.uniform(0, 0.2) * (x1 - x0)
    if style.zigzags and draws.chance(style.zigzags):
      # Corners at random places along the text: a short segment turning sharply by a glyph
      # looks like a stroke of it, or a glyph of its own, unless the reader has seen such lines.
      margin = 0.2 * (y1 - y0)
      corners = sorted(draws.uniform(start, end) for _ in range(1 + draws.index(4)))
      xs = [start, *corners, end]
      draw.line(
        [(x, draws.uniform(y0 - margin, y1 + margin)) for x in xs], fill=colour, width=width
      )
      continue
    kind = draws.index(3)
    if kind == 0:
      ends = [(start, draws.uniform(y0, y1)), (end, draws.uniform(y0, y1))]
      draw.line(ends, fill=colour, width=width)
    elif kind == 1:  # a stretch of a big ellipse, bulging up or down
      ry = draws.uniform(0.5, 3) * (y1 - y0)
      below = draws.chance(0.5)
      cy = draws.uniform(y0, y1) + (ry if below else -ry)
      begin = draws.uniform(200, 250) if below else draws.uniform(20, 70)
      draw.arc([start, cy - ry, end, cy + ry], begin, begin + 90, fill=colour, width=width)
    else:
      amplitude = draws.uniform(0.1, 0.4) * (y1 - y0)
      period = draws.uniform(0.2, 0.8) * style.width
      phase, middle = draws.uniform(0, 2 * math.pi), draws.uniform(y0, y1)
      xs = np.arange(start, end + 3, 3)
      ys = middle + amplitude * np.sin(2 * math.pi * xs / period + phase)
      points = list(zip(xs.tolist(), ys.tolist(), strict=True))
      draw.line(points, fill=colour, width=width, joint='curve')


def _warp(layer: Image.Image, style: Style, draws: _Draws) -> Image.Image:
  """Sinusoidal and elastic displacement of the text layer, as a mesh of quads."""
  w, h = layer.size
  # Few quads: Pillow transforms each in a Python loop (~10 µs each).
  nx, ny = int(np.clip(w // 25, 4, 10)), 2
  xs = np.linspace(0, w, nx + 1).round()
  ys = np.linspace(0, h, ny + 1).round()
  gx, gy = np.meshgrid(xs, ys)
  dx, dy = np.zeros_like(gx), np.zeros_like(gy)
  if style.warp:
    amplitude = style.warp * h
    period = draws.uniform(0.4, 1.2) * w
    dy += amplitude * np.sin(2 * np.pi * gx / period + draws.uniform(0, 2 * np.pi))
    dx += 0.5 * amplitude * np.sin(2 * np.pi * gy / h + draws.uniform(0, 2 * np.pi))
  if style.elastic:
    # Random offsets at 3×5 control points, interpolated linearly onto the mesh.
    coarse = draws.rng.normal(0, style.elastic * h, size=(2, 3, 5))
    cy, cx = np.linspace(0, h, 3), np.linspace(0, w, 5)
    for k, out in enumerate((dx, dy)):
      rows = np.stack([np.interp(xs, cx, coarse[k, r]) for r in range(3)])
      out += np.stack([np.interp(ys, cy, rows[:, c]) for c in range(nx + 1)], axis=1)
  sx, sy = (gx + dx).tolist(), (gy + dy).tolist()
  xi, yi = xs.astype(int).tolist(), ys.astype(int).tolist()
  mesh = [
    (
      (xi[i], yi[j], xi[i + 1], yi[j + 1]),
      (sx[j][i], sy[j][i], sx[j + 1][i], sy[j + 1][i])
      + (sx[j + 1][i + 1], sy[j + 1][i + 1], sx[j][i + 1], sy[j][i + 1]),
    )
    for i in range(nx)
    for j in range(ny)
  ]
  # Nearest sampling: Pillow's bilinear transforms cost ~10× more here, the glyphs are already
  # anti-aliased, and the slight stair-steps are what per-pixel captcha warps look like.
  return layer.transform((w, h), Image.Transform.MESH, mesh, Image.Resampling.NEAREST)


def _draw_dots(image: Image.Image, style: Style, draws: _Draws) -> None:
  w, h = image.size
  count = int(style.dots * w * h / 100)
  if not count:
    return
  rng = draws.rng
  xs, ys = rng.uniform(0, w, size=count).tolist(), rng.uniform(0, h, size=count).tolist()
  radii = rng.uniform(0.3, max(0.6, 0.035 * h), size=count).tolist()
  if draws.chance(0.5):  # dots in the text's colours are harder to tell from strokes
    colours = [style.ink[i] for i in rng.integers(len(style.ink), size=count).tolist()]
  else:
    colours = [tuple(c) for c in rng.integers(0, 256, size=(count, 3)).tolist()]
  draw = ImageDraw.Draw(image)
  for x, y, r, colour in zip(xs, ys, radii, colours, strict=True):
    draw.ellipse([x - r, y - r, x + r, y + r], fill=colour)


def _render_pillow(text: str, style: Style, draws: _Draws) -> Image.Image:
  image = _background(style, draws)
  layer, box = _text_layer(text, style, draws)
  if style.lines:
    _draw_lines(layer, box, style, draws)
  if style.warp or style.elastic:
    layer = _warp(layer, style, draws)
  image.paste(layer, (0, 0), layer)
  _draw_dots(image, style, draws)
  return image


# The captcha package's engine, made deterministic.


class _SeededSecrets:
  """Stands in for the `secrets` module inside `captcha.image`, drawing from a seeded generator."""

  def __init__(self, generator: random.Random):
    self._random = generator

  def randbelow(self, n: int) -> int:
    return self._random.randrange(n)

  def randbits(self, k: int) -> int:
    return self._random.getrandbits(k)

  def choice(self, seq: Sequence):
    return self._random.choice(seq)


class _LazyFonts(Sequence):
  """ImageCaptcha's font list, loading only the (font, size) pairs it picks, from the cache."""

  def __init__(self, paths: tuple[str, ...], sizes: tuple[int, ...]):
    self._pairs = [(path, size) for path in paths for size in sizes]

  def __len__(self) -> int:
    return len(self._pairs)

  def __getitem__(self, i):
    return _font(*self._pairs[i])


# captcha >= 0.6 draws with the `secrets` module (older versions with `random`), which no seed
# reaches; the module attribute is swapped for a seeded stand-in while one image is drawn, under a
# lock so that threads drawing at the same time each keep their own sequence.
_CAPTCHA_LOCK = threading.Lock()


def _render_imagecaptcha(text: str, style: Style, draws: _Draws) -> Image.Image:
  lo, hi = style.font_size
  sizes = tuple(range(max(1, int(style.height * lo)), max(1, int(style.height * hi)) + 1))
  generator = captcha_image.ImageCaptcha(style.width, style.height, list(style.fonts), sizes)
  generator._truefonts = _LazyFonts(style.fonts, sizes)  # noqa: SLF001 (skip loading every pair)
  private = random.Random(int(draws.random() * 2**53))
  stand_ins = {'secrets': _SeededSecrets(private), 'random': private}
  with _CAPTCHA_LOCK:
    saved = {
      name: getattr(captcha_image, name) for name in stand_ins if hasattr(captcha_image, name)
    }
    try:
      for name in saved:
        setattr(captcha_image, name, stand_ins[name])
      return generator.generate_image(text)
    finally:
      for name, module in saved.items():
        setattr(captcha_image, name, module)


def _degrade(image: Image.Image, style: Style, draws: _Draws) -> Image.Image:
  """The effects of a cheap camera or a web server: low resolution, blur, noise, JPEG."""
  w, h = image.size
  if style.lowres < 1:
    small = (max(1, round(w * style.lowres)), max(1, round(h * style.lowres)))
    image = image.resize(small, Image.Resampling.BILINEAR)
    upscale = Image.Resampling.NEAREST if draws.chance(0.5) else Image.Resampling.BILINEAR
    image = image.resize((w, h), upscale)
  if style.blur > 0:
    # One box pass: a third of the cost of Pillow's Gaussian (three passes), and as blurry.
    image = image.filter(ImageFilter.BoxBlur(style.blur * h))
  if style.noise > 0:
    # Uniform ±noise per channel: ImageChops adds in C, much cheaper than float noise in NumPy.
    spread = int(round(style.noise))
    noise = draws.rng.integers(0, 2 * spread + 1, size=(h, w, 3), dtype=np.uint8)
    image = ImageChops.add(image, Image.fromarray(noise, 'RGB'), offset=-spread)
  if style.jpeg:
    buffer = io.BytesIO()
    image.save(buffer, 'JPEG', quality=style.jpeg)
    image = Image.open(buffer).convert('RGB')
  return image


def render(text: str, style: Style, rng: np.random.Generator) -> Image.Image:
  """`text` drawn in `style`: an RGB image of style.width × style.height.

  Deterministic: the same text, style and generator state give the same pixels.
  """
  if not text:
    raise ConfigError('Cannot draw an empty text.')
  draws = _Draws(rng)
  if style.engine == 'imagecaptcha':
    image = _render_imagecaptcha(text, style, draws)
  else:
    image = _render_pillow(text, style, draws)
  return _degrade(image.convert('RGB'), style, draws)


# The pre-training distribution of styles.

COMMON_SIZES = (
  (200, 50),
  (160, 60),
  (150, 50),
  (120, 40),
  (100, 30),
  (180, 60),
  (250, 80),
  (300, 100),
  (130, 50),
  (200, 70),
  (140, 40),
  (280, 90),
  (96, 32),
  (220, 60),
)
# (saturation, value) ranges of the paper and of the ink for each colour scheme, and its odds.
_SCHEMES = (
  (((0.0, 0.25), (0.82, 1.0)), ((0.0, 1.0), (0.0, 0.5)), 0.65),  # dark text on light paper
  (((0.0, 0.6), (0.05, 0.35)), ((0.0, 0.4), (0.8, 1.0)), 0.12),  # light text on dark paper
  (((0.2, 0.6), (0.7, 1.0)), ((0.6, 1.0), (0.1, 0.5)), 0.23),  # colourful paper, saturated ink
)


def random_size(draws: _Draws) -> tuple[int, int]:
  """(width, height): a common captcha size or a random one, 64-400 wide and 24-100 high."""
  if draws.chance(0.5):
    return COMMON_SIZES[draws.index(len(COMMON_SIZES))]
  height = int(draws.uniform(24, 101))
  return int(np.clip(round(height * draws.uniform(2, 4.5)), 64, 400)), height


def _luminance(colour: Color) -> float:
  return (0.299 * colour[0] + 0.587 * colour[1] + 0.114 * colour[2]) / 255


def _colour(draws: _Draws, saturation: tuple[float, float], value: tuple[float, float]) -> Color:
  rgb = colorsys.hsv_to_rgb(draws.random(), draws.uniform(*saturation), draws.uniform(*value))
  return tuple(round(255 * c) for c in rgb)


def _palette(draws: _Draws, inks: int) -> tuple[Color, Color, tuple[Color, ...]]:
  """(paper, paper2, ink colours), every ink differing in brightness from both papers."""
  paper_range, ink_range, _ = _SCHEMES[draws.index(len(_SCHEMES), [s[2] for s in _SCHEMES])]
  paper, paper2 = _colour(draws, *paper_range), _colour(draws, *paper_range)
  dim, bright = sorted((_luminance(paper), _luminance(paper2)))
  ink = []
  for _ in range(20 * inks):
    colour = _colour(draws, *ink_range)
    if min(abs(_luminance(colour) - dim), abs(_luminance(colour) - bright)) > 0.3:
      ink.append(colour)
      if len(ink) == inks:
        break
  if not ink:  # rare: fall back to whichever of black and white stands out
    ink = [(0, 0, 0) if dim > 0.5 else (255, 255, 255)]
  return paper, paper2, tuple(ink)


def random_style(
  rng: np.random.Generator,
  *,
  width: int | None = None,
  height: int | None = None,
  length: int | None = None,
  fonts: Sequence[str] = PRETRAINING_FONTS,
) -> Style:
  """A style from the wide pre-training distribution.

  Sizes (common ones and random ones), 1-3 of `fonts` (by default the bundled ones: sans, serif,
  mono, bold, italic, the captcha package's own; never the HELD_OUT_FONTS), colour schemes,
  plain/gradient/textured/grid backgrounds, outlines, condensed or wide lettering, spacing from
  overlapping to spread out, rotation, jitter, wavy baselines, lines, arcs and zigzags, dots,
  warps, low resolution, blur, noise and JPEG; about 10% are the captcha package's ImageCaptcha.
  One difficulty draw scales the distortions together, so some styles are clean and some hard.
  `width` and `height` fix the size instead of drawing it; a drawn width is at least 0.45 height
  per character of a text of `length`, as real sites size their images to their texts.
  """
  draws = _Draws(rng)
  if width is None or height is None:
    drawn_width, drawn_height = random_size(draws)
    height = height or drawn_height
    if width is None:
      width = max(drawn_width, round(0.45 * (length or 0) * height))
  hard = draws.random()
  count = min(1 + draws.index(3, (0.6, 0.25, 0.15)), len(fonts))
  pool = list(fonts)
  fonts = tuple(pool.pop(draws.index(len(pool))) for _ in range(count))
  effects = dict(
    # Never below ~20 pixels high: lower than that, no one could read it.
    lowres=draws.uniform(min(0.85, max(0.45, 20 / height)), 0.85) if draws.chance(0.12) else 1.0,
    blur=draws.sometimes(0.3, 0.005, 0.025),
    noise=draws.sometimes(0.25, 3, 10 + 25 * hard),
    jpeg=int(draws.uniform(15, 90)) if draws.chance(0.3) else 0,
  )
  if draws.chance(0.1):
    # One font and a narrow size range: ImageCaptcha picks among every (font, size) pair, each
    # a 0.1 ms font load when it is not cached.
    low = draws.uniform(0.6, 0.8)
    return Style(
      width=width,
      height=height,
      engine='imagecaptcha',
      fonts=fonts[:1],
      font_size=(low, low + draws.uniform(0.03, 0.12)),
      **effects,
    )

  inks = 1 if draws.chance(0.7) else 2 + draws.index(4)
  paper, paper2, ink = _palette(draws, inks)
  background = BACKGROUNDS[draws.index(len(BACKGROUNDS), (0.4, 0.2, 0.25, 0.15))]
  if background == 'grid':  # grid lines between paper and ink, so the text still stands out
    mix = draws.uniform(0.2, 0.45)
    paper2 = tuple(round(p + mix * (i - p)) for p, i in zip(paper, ink[0], strict=True))
  hollow = draws.chance(0.05)
  stroke = draws.uniform(0.03, 0.06) if hollow else draws.sometimes(0.15, 0.02, 0.06)
  low = draws.uniform(0.55, 0.85)
  return Style(
    width=width,
    height=height,
    fonts=fonts,
    font_size=(low, low + draws.sometimes(0.6, 0.0, 0.2)),
    ink=ink,
    paper=paper,
    paper2=paper2,
    background=background,
    stroke=stroke,
    hollow=hollow,
    spacing=draws.uniform(0, 0.25) - hard * draws.uniform(0, 0.15),
    fill=draws.sometimes(0.6, 0.4, 0.95),
    rotation=hard * draws.uniform(0, 35),
    jitter=hard * draws.uniform(0, 0.12),
    wave=draws.sometimes(0.2, 0.02, 0.04 + 0.08 * hard),
    aspect=1 + draws.sometimes(0.4, -0.4, 0.3),  # condensed lettering, common on real sites
    lines=0 if draws.chance(0.45) else 1 + draws.index(1 + round(3 * hard)),
    line_width=draws.uniform(0.015, 0.06),
    zigzags=draws.sometimes(0.5, 0.2, 1.0),
    # Up to the confetti of speckled sites: a reader that saw few dense dots misreads them.
    dots=draws.sometimes(0.5, 0.05, 0.3 + 1.2 * hard),
    warp=draws.sometimes(0.3, 0.02, 0.04 + 0.08 * hard),
    elastic=draws.sometimes(0.2, 0.01, 0.02 + 0.04 * hard),
    **effects,
  )


def style_for(
  style: str | Style,
  rng: np.random.Generator,
  width: int | None = None,
  height: int | None = None,
  length: int | None = None,
  fonts: Sequence[str] = PRETRAINING_FONTS,
) -> Style:
  """The Style to draw one image with: as given, a named look, or a fresh random one ('varied',
  from `fonts`).

  A named look without a size is 200×50; 'varied' without a size draws one.
  """
  if isinstance(style, Style):
    return style
  if style == 'varied':
    return random_style(rng, width=width, height=height, length=length, fonts=fonts)
  return named_style(style, width or 200, height or 50)


# Texts.


def apply_case(alphabet: str, case: str = 'keep') -> str:
  """The alphabet as given ('keep'), lower- or upper-cased, or with both cases of every letter
  ('mixed'); repeats dropped, order kept."""
  if case not in CASES:
    raise ConfigError(f'case must be one of {CASES}, got {case!r}.')
  if case == 'lower':
    alphabet = alphabet.lower()
  elif case == 'upper':
    alphabet = alphabet.upper()
  elif case == 'mixed':
    alphabet = alphabet.lower() + alphabet.upper()
  alphabet = ''.join(dict.fromkeys(alphabet))
  if not alphabet:
    raise ConfigError('The alphabet is empty.')
  return alphabet


def length_range(length: int | tuple[int, int] | str) -> tuple[int, int]:
  """(shortest, longest) from 5, (4, 7) or the command-line forms '5' and '4-7'."""
  if isinstance(length, str):
    parts = length.split('-')
    if len(parts) > 2 or not all(p.strip().isdigit() for p in parts):
      raise ConfigError(f"A length is a number like '5' or a range like '4-7', got {length!r}.")
    length = (int(parts[0]), int(parts[-1]))
  elif isinstance(length, int):
    length = (length, length)
  shortest, longest = (int(n) for n in length)
  if not 1 <= shortest <= longest:
    raise ConfigError(f'Lengths must satisfy 1 <= shortest <= longest, got {length}.')
  return shortest, longest


def random_text(rng: np.random.Generator, alphabet: str, lengths: tuple[int, int]) -> str:
  """A text of a uniformly drawn length in `lengths`, each symbol uniform over `alphabet`."""
  shortest, longest = lengths
  # A fixed length draws nothing for it, so fixed-length folders keep the texts they always had.
  size = shortest if shortest == longest else int(rng.integers(shortest, longest + 1))
  # The same draws as rng.choice(list(alphabet), size), which earlier versions used, 5× faster.
  return ''.join(alphabet[i] for i in rng.integers(0, len(alphabet), size=size).tolist())


def random_texts(
  count: int,
  alphabet: str,
  lengths: tuple[int, int],
  rng: np.random.Generator,
  *,
  distinct: bool = True,
) -> list[str]:
  """`count` random texts; if `distinct`, sorted and different even ignoring case, because a
  file named by one would overwrite the other (on case-insensitive file systems, for case)."""
  if not distinct:
    return [random_text(rng, alphabet, lengths) for _ in range(count)]
  shortest, longest = lengths
  symbols = len(set(alphabet.casefold()))
  capacity = sum(symbols**n for n in range(shortest, longest + 1))
  if count > capacity:
    span = str(shortest) if shortest == longest else f'{shortest}-{longest}'
    raise ConfigError(
      f'Only {capacity} distinct labels of length {span} exist over '
      f'{alphabet!r} (ignoring case); ask for fewer or name files by index (labels_file=True).'
    )
  texts: dict[str, str] = {}
  while len(texts) < count:
    text = random_text(rng, alphabet, lengths)
    texts.setdefault(text.casefold(), text)
  return sorted(texts.values())


# The endless stream and the folder writer.


def sample(
  index: int,
  seed: int = 0,
  *,
  alphabet: str = DEFAULT_ALPHABET,
  lengths: int | tuple[int, int] = (5, 5),
  case: str = 'keep',
  style: str | Style = 'varied',
  width: int | None = None,
  height: int | None = None,
  fonts: Sequence[str] = PRETRAINING_FONTS,
) -> tuple[Image.Image, str]:
  """Element `index` of the endless synthetic dataset `seed`: (RGB image, its text).

  The same arguments give the same image and text in any process (the randomness comes from
  np.random.default_rng([seed, index]) alone), so a loader can read element i, resume at any
  index and shard indices over processes. `np.asarray(image)` is uint8 [height, width, 3]. With
  style='varied' every index has its own random style, and its own size unless width and height
  are given (a training batch wants one size: give them, or resize); its fonts are drawn from
  `fonts` (`font_pool`), so the same pool gives the same stream.
  """
  if index < 0 or seed < 0:
    raise ConfigError(f'index and seed must be non-negative, got index={index}, seed={seed}.')
  rng = np.random.default_rng([seed, index])
  text = random_text(rng, apply_case(alphabet, case), length_range(lengths))
  return render(text, style_for(style, rng, width, height, len(text), fonts), rng), text


def generate(
  out_dir: str | Path,
  count: int,
  *,
  alphabet: str = DEFAULT_ALPHABET,
  length: int | tuple[int, int] = 5,
  width: int = 200,
  height: int = 50,
  case: str = 'keep',
  style: str | Style = 'dataset',
  seed: int = 0,
  labels_file: bool = False,
) -> list[Path]:
  """Writes `count` captchas to `out_dir` and returns their paths.

  By default each is LABEL.png, with texts distinct (also ignoring case); with labels_file=True
  they are 000000.png, 000001.png, ... and labels.csv (header `file,text`) holds their texts,
  which may then repeat. `style` is a name in STYLES ('varied': a random style per image, at the
  given size) or a Style, drawn at its own size. The same arguments write the same images.
  """
  if count < 0:
    raise ConfigError(f'count must be non-negative, got {count}.')
  alphabet = apply_case(alphabet, case)
  unsafe = sorted(set(alphabet) & set('/\\\0'))
  if unsafe and not labels_file:
    raise ConfigError(f'{unsafe} cannot appear in file names: use labels_file=True.')
  lengths = length_range(length)
  out = Path(out_dir)
  rng = np.random.default_rng(seed)
  texts = random_texts(count, alphabet, lengths, rng, distinct=not labels_file)
  digits = max(6, len(str(count - 1)))
  paths = [
    out / (f'{i:0{digits}d}.png' if labels_file else f'{t}.png') for i, t in enumerate(texts)
  ]
  taken = [p for p in paths + [out / 'labels.csv'] * labels_file if p.exists()]
  if taken:  # a folder of real captchas named by their text would lose some of them
    raise ConfigError(
      f'{len(taken)} of the files to write are in {str(out)!r} already (e.g. {taken[0].name!r}); '
      'nothing was written. Give a new or empty folder.'
    )
  out.mkdir(parents=True, exist_ok=True)
  for i, (text, path) in enumerate(zip(texts, paths, strict=True)):
    image_rng = np.random.default_rng([seed, i])
    image = render(text, style_for(style, image_rng, width, height), image_rng)
    partial = path.with_name(f'.{path.name}.partial')  # never a half-written image under a label
    image.save(partial, format='PNG')
    partial.replace(path)
  if labels_file:
    with open(out / 'labels.csv', 'w', newline='', encoding='utf-8') as f:
      writer = csv.writer(f)
      writer.writerow(['file', 'text'])
      writer.writerows((path.name, text) for path, text in zip(paths, texts, strict=True))
  return paths


if __name__ == '__main__':
  from captcha_jax import cli

  cli.synthetic()
