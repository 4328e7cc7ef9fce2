"""Evaluate a trained run on its train/val/test splits: a report as text and JSON, and pictures.

    python -m captcha_jax.evaluate --workdir runs/default [--data_dir DIR]

Writes WORKDIR/evaluation.json, evaluation.txt and predictions.png (test images, wrong readings in
red). Raw readings are greedy CTC; post-processed ones are constrained to config.label_length.
"""

import collections
import difflib
import json
from collections.abc import Sequence
from pathlib import Path

from captcha_jax import checkpoints, host, metrics, plots, train
from captcha_jax.predict import BATCH_SIZE, Predictor
from captcha_jax.vocab import Vocab

MISSING = '∅'


def confusions(predictions: Sequence[str], targets: Sequence[str]) -> collections.Counter:
  """(true, read) character pairs of every error; ∅ marks a dropped or extra character."""
  counts: collections.Counter = collections.Counter()
  for pred, true in zip(predictions, targets, strict=True):
    matcher = difflib.SequenceMatcher(a=true, b=pred, autojunk=False)
    for op, i1, i2, j1, j2 in matcher.get_opcodes():
      if op == 'equal':
        continue
      wrong, read = true[i1:i2], pred[j1:j2]
      for k in range(max(len(wrong), len(read))):
        counts[
          (wrong[k] if k < len(wrong) else MISSING, read[k] if k < len(read) else MISSING)
        ] += 1
  return counts


def evaluate_workdir(workdir: str | Path, data_dir: str | None = None, top: int = 10) -> dict:
  """Per-split metrics of WORKDIR's best checkpoint on the split its config defines."""
  workdir = Path(workdir)
  predictor = Predictor.from_workdir(workdir)
  config = predictor.config
  if data_dir:
    config.data_dir = data_dir
  splits = train.load_splits(config, Vocab(config.alphabet))
  report = {}
  for name, dataset in splits.items():
    predictions = predictor.predict(list(dataset.images))
    raw = [p.raw_text for p in predictions]
    fixed = [p.text for p in predictions]
    report[name] = {
      'images': len(dataset),
      **metrics.reading_metrics(raw, fixed, dataset.texts),
      'confusions': [
        {'true': t, 'read': r, 'count': n}
        for (t, r), n in confusions(raw, dataset.texts).most_common(top)
      ],
      'errors': [
        {'file': path, 'true': true, 'read': read}
        for path, true, read in zip(dataset.paths, dataset.texts, raw, strict=True)
        if true != read
      ],
    }
    if name == 'test':
      plots.plot_predictions(dataset.images, raw, dataset.texts, workdir / 'predictions.png')
  (workdir / 'evaluation.json').write_text(json.dumps(report, indent=2, ensure_ascii=False) + '\n')
  (workdir / 'evaluation.txt').write_text(format_report(report))
  return report


def format_report(report: dict) -> str:
  lines = [
    f'{"split":6s} {"images":>6s} {"exact %":>8s} {"CER %":>7s} {"post exact %":>12s} '
    f'{"post CER %":>10s}  most frequent errors (true→read ×count)'
  ]
  for name, r in report.items():
    errors = ', '.join(f'{c["true"]}→{c["read"]}×{c["count"]}' for c in r['confusions'][:6])
    lines.append(
      f'{name:6s} {r["images"]:6d} {100 * r["accuracy"]:8.2f} {100 * r["cer"]:7.2f} '
      f'{100 * r["accuracy_post"]:12.2f} {100 * r["cer_post"]:10.2f}  {errors or "none"}'
    )
  return '\n'.join(lines) + '\n'


def main(argv):
  del argv
  from absl import flags

  host.use_cpu_cores(BATCH_SIZE)  # before JAX starts its CPU backend
  checkpoints.quiet_orbax()
  try:
    report = evaluate_workdir(flags.FLAGS.workdir, flags.FLAGS.data_dir)
  except (FileNotFoundError, ValueError) as e:
    raise SystemExit(f'error: {e}') from None
  print(format_report(report), end='')


if __name__ == '__main__':
  host.restart_with_huge_pages()  # before any work: it re-executes the process
  from absl import app, flags

  flags.DEFINE_string('workdir', None, 'The --workdir of a training run.', required=True)
  flags.DEFINE_string('data_dir', None, 'Image folder, if not the one the run was trained on.')
  app.run(main)
