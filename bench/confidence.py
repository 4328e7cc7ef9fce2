"""How well a reading's confidence tells right readings from wrong ones.

    python bench/confidence.py --workdir RUN --data_dir IMAGES [--limit 4000]

Reads the images (named by their text) with the run's chosen checkpoint and compares two
confidences of each reading: the probability of its text (`decoding.text_probability`, what
readers report) and the probability of the best CTC path alone (what they reported before).
Prints, for each, the mean over right and over wrong readings, the expected calibration error
(10 equal-width bins) and, at a few thresholds (`config.pseudo_min_confidence` for
self-training), how many readings pass and how many of those are right.
"""

import argparse

import numpy as np

from captcha_jax import decoding, labelled
from captcha_jax.predict import Predictor

THRESHOLDS = (0.5, 0.7, 0.9, 0.97)


def calibration_error(confidence: np.ndarray, right: np.ndarray, bins: int = 10) -> float:
  """Σ over bins of |accuracy − mean confidence| weighted by the bin's share of readings."""
  which = np.minimum((confidence * bins).astype(int), bins - 1)
  return float(
    sum(
      abs(right[which == b].mean() - confidence[which == b].mean()) * (which == b).mean()
      for b in range(bins)
      if (which == b).any()
    )
  )


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--workdir', required=True)
  parser.add_argument('--data_dir', required=True, help='images named by their text')
  parser.add_argument('--limit', type=int, default=4000, help='read at most this many images')
  args = parser.parse_args()
  predictor = Predictor.from_workdir(args.workdir)
  paths = labelled.find_images(args.data_dir)[0][: args.limit]
  texts, by_text, by_path = [], [], []
  for start in range(0, len(paths), predictor.batch_size):
    chunk = paths[start : start + predictor.batch_size]
    log_probs = predictor.log_probs(np.stack([predictor.decode(p) for p in chunk]))
    readings = decoding.read(log_probs, predictor.vocab, predictor.config.fixed_label_length)
    texts += [r.text for r in readings]
    by_text += [r.confidence for r in readings]
    by_path += np.exp(log_probs.max(-1).sum(-1)).tolist()
  right = np.array([t == labelled.label_from_path(p) for t, p in zip(texts, paths, strict=True)])
  print(f'{len(paths)} images, {100 * right.mean():.1f}% read right')
  print(
    '| confidence | mean, right / wrong | calibration error | '
    + ' | '.join(f'≥ {t}: kept (right)' for t in THRESHOLDS)
    + ' |'
  )
  print('| --- ' * (3 + len(THRESHOLDS)) + '|')
  for name, confidence in (('of the text', by_text), ('of the best path', by_path)):
    c = np.array(confidence)
    kept = [c >= t for t in THRESHOLDS]
    print(
      f'| {name} | {c[right].mean():.3f} / {c[~right].mean():.3f} | '
      f'{calibration_error(c, right):.3f} | '
      + ' | '.join(f'{k.sum()} ({100 * right[k].mean():.1f}%)' for k in kept)
      + ' |'
    )


if __name__ == '__main__':
  main()
