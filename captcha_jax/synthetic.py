"""Synthetic captchas in the dataset's style: 200×50 images of 5 symbols with noise and warps.

    python -m captcha_jax.synthetic --out data/synthetic --count 1000

Each image is saved as LABEL.png, the layout `data.py` reads.
"""

import random
from pathlib import Path

import numpy as np
from captcha.image import ImageCaptcha

DEFAULT_ALPHABET = '2345678bcdefgmnpwxy'


def random_labels(count: int, alphabet: str, length: int, rng: np.random.Generator) -> list[str]:
  """`count` distinct random texts (distinct, so no file overwrites another)."""
  if count > len(alphabet) ** length:
    raise ValueError(f'Only {len(alphabet) ** length} distinct labels of length {length} exist.')
  labels: set[str] = set()
  while len(labels) < count:
    labels.add(''.join(rng.choice(list(alphabet), size=length)))
  return sorted(labels)


def generate(
  out_dir: str | Path,
  count: int,
  *,
  alphabet: str = DEFAULT_ALPHABET,
  length: int = 5,
  width: int = 200,
  height: int = 50,
  seed: int = 0,
) -> list[Path]:
  """Writes `count` captchas to `out_dir` as LABEL.png; returns their paths."""
  out = Path(out_dir)
  out.mkdir(parents=True, exist_ok=True)
  rng = np.random.default_rng(seed)
  # The captcha package draws with the global `random` module: seed it for repeatable images.
  random.seed(seed)
  font_sizes = tuple(range(int(height * 0.7), int(height * 0.9) + 1))
  generator = ImageCaptcha(width=width, height=height, font_sizes=font_sizes)
  paths = []
  for label in random_labels(count, alphabet, length, rng):
    path = out / f'{label}.png'
    generator.generate_image(label).save(path)
    paths.append(path)
  return paths


def main(argv):
  del argv
  from absl import flags

  f = flags.FLAGS
  paths = generate(f.out, f.count, alphabet=f.alphabet, length=f.length, seed=f.seed)
  print(f'Wrote {len(paths)} captchas to {f.out}')


if __name__ == '__main__':
  from absl import app, flags

  flags.DEFINE_string('out', None, 'Folder to write LABEL.png images to.', required=True)
  flags.DEFINE_integer('count', 1000, 'How many captchas.')
  flags.DEFINE_string('alphabet', DEFAULT_ALPHABET, 'Symbols to draw from.')
  flags.DEFINE_integer('length', 5, 'Symbols per captcha.')
  flags.DEFINE_integer('seed', 0, 'Random seed.')
  app.run(main)
