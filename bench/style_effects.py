"""What makes a generated style hard to read: exact match with each of its effects taken away.

    python bench/style_effects.py --style ransom [--workdir RUN] [--count 500]

Draws `count` captchas of a named style (`synthetic.STYLES`) in the few-labels bench's alphabet,
length and size as they are, then again with one effect of the style turned off at a time (the same
texts and seeds), and with each of its fonts alone; reads each set with the shipped reader
(restricted to the alphabet) or with RUN's chosen checkpoint. The effect whose removal gains most is
what the reader copes with worst.
"""

import argparse
import dataclasses

import numpy as np
from few_labels import Shape

from captcha_jax import synthetic
from captcha_jax.predict import Predictor

SHAPE = Shape()  # the few-labels bench's styles
# Each effect, and the value that turns it off.
EFFECTS = {
  'dots': dict(dots=0.0),
  'lines': dict(lines=0),
  'elastic': dict(elastic=0.0),
  'warp': dict(warp=0.0),
  'wave': dict(wave=0.0),
  'rotation and jitter': dict(rotation=0.0, jitter=0.0),
  'jpeg': dict(jpeg=0),
  'noise': dict(noise=0.0),
  'blur': dict(blur=0.0),
  'background': dict(background='plain'),
}


def variants(style: synthetic.Style) -> dict[str, synthetic.Style]:
  """The style as it is, without each effect it has, with one ink, one size, and each font."""
  out = {'as it is': style}
  plain = synthetic.Style()
  for name, off in EFFECTS.items():
    if any(getattr(style, field) != getattr(plain, field) for field in off):
      out[f'no {name}'] = dataclasses.replace(style, **off)
  if len(style.ink) > 1:
    out['one ink'] = dataclasses.replace(style, ink=style.ink[:1])
  low, high = style.font_size
  if low < high:
    out['one size'] = dataclasses.replace(style, font_size=((low + high) / 2,) * 2)
  if len(style.fonts) > 1:
    for font in style.fonts:
      out[f'only {font.rsplit("/", 1)[-1]}'] = dataclasses.replace(style, fonts=(font,))
  return out


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  named = [s for s in synthetic.STYLES if s != 'varied']  # 'varied' draws a style per image
  parser.add_argument('--style', default='ransom', choices=named)
  parser.add_argument('--workdir', default=None, help='a run (default: the shipped reader)')
  parser.add_argument('--count', type=int, default=500)
  parser.add_argument('--seed', type=int, default=21)
  args = parser.parse_args()
  reader = Predictor.from_workdir(args.workdir) if args.workdir else Predictor.pretrained()
  texts = synthetic.random_texts(
    args.count, SHAPE.alphabet, (SHAPE.length, SHAPE.length), np.random.default_rng(args.seed)
  )
  print(f'{args.style}, {args.count} images, read by {args.workdir or "the shipped reader"}')
  print('| variant | exact match |')
  print('| --- | --- |')
  for name, style in variants(synthetic.named_style(args.style, SHAPE.width, SHAPE.height)).items():
    images = [
      synthetic.render(text, style, np.random.default_rng([args.seed, i]))
      for i, text in enumerate(texts)
    ]
    readings = reader.predict(images, allowed=SHAPE.alphabet)
    exact = np.mean([r.text == t for r, t in zip(readings, texts, strict=True)])
    print(f'| {name} | {100 * exact:.1f}% |', flush=True)


if __name__ == '__main__':
  main()
