"""Evaluate a trained run on its train/val/test splits, or on another folder of labelled
captchas as one set: a report as text and JSON, and pictures.

    python -m captcha_jax.evaluate --workdir runs/default [--data_dir OTHER]

Writes WORKDIR/evaluation.json, evaluation.txt and predictions.png (test images, wrong readings in
red); for another folder, evaluation-OTHER.json, .txt and predictions-OTHER.png beside them, so
the run's own report stays. Raw readings are greedy CTC; post-processed ones are constrained to
config.fixed_label_length.
"""

import collections
import difflib
import functools
import itertools
import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path

import ml_collections
import numpy as np

from captcha_jax import (
  batches,
  data,
  decoding,
  labelled,
  metrics,
  models,
  plots,
  predict,
  settings,
  sources,
)
from captcha_jax import workdir as run_folder
from captcha_jax.errors import ConfigError, DataError, UserError
from captcha_jax.predict import Predictor

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


def evaluate_workdir(
  workdir: str | Path,
  data_dir: str | None = None,
  top: int = 10,
  labels_file: str = 'auto',
  label_pattern: str | None = None,
) -> dict:
  """Metrics of WORKDIR's chosen checkpoint on each split of its data, or on every image of
  `data_dir`, another folder of captchas named by their text (its part `label_pattern` of the
  name, as config.label_pattern; None: the run's) or listed with their texts in `labels_file` (as
  config.labels_file), as one set ('all', where a label the model cannot read counts as
  misread); writes the report files."""
  workdir = Path(workdir)
  predictor = Predictor.from_workdir(workdir)
  config = predictor.config.copy_and_resolve_references()
  output_steps = functools.partial(models.output_steps, config.model)
  suffix, shown = '', 'test'
  if data_dir and not own_data(config, data_dir, labels_file, label_pattern):
    shown = 'all'
    # One set, labelled by name (or by `labels_file`), however it splits for training; a label
    # the model cannot read is scored below, as misread, not refused.
    with config.unlocked():  # a run older than some of these settings lacks them
      config.update(
        data_dir=data_dir, data_source='folder', labels_file=labels_file, skip_bad_files=True
      )
      if label_pattern is not None:
        config.label_pattern = label_pattern
    config, examples = data.resolve(config, output_steps, one_set=True)
    beyond = examples.pop(data.BEYOND_THE_MODEL)
    _warn_trained_on(predictor.config, [e.path for e in examples['all'] + beyond], output_steps)
    scored = {'folder': config.data_dir, 'labels_file': config.labels_file}
    suffix = report_suffix(workdir, Path(data_dir), labels_file, scored)
    if examples['all']:
      splits = data.load_in_memory(config, examples)
    else:  # no label the model can read: each image is scored below, as misread
      nothing = np.zeros((0, config.image_height, config.image_width, 3), np.uint8)
      splits = {'all': data.Dataset(nothing, (), ())}
  else:
    # The labels alone: readings a run trained on (config.pseudo_labels) are not scored as labels.
    with config.unlocked():
      config.pseudo_labels = ''
    _, splits = sources.prepare(config, output_steps)
    check_same_split(workdir, splits)
    beyond, scored = [], {}
  report = {}
  for name, source in splits.items():
    readings, targets, paths = [], [], []
    spec = data.BatchSpec.of(config, predictor.batch_size)
    for indices, batch in batches.eval_batches(source, spec, predictor.vocab):
      real = batch['mask'] > 0
      readings += predictor.read_pixels(batch['image'][real])
      targets += data.label_texts(
        batch['labels'][real], batch['label_paddings'][real], predictor.vocab
      )
      paths += [source.paths[i] for i in indices[real]]
    shown_readings = decoding.texts(readings)[0]
    if name == 'all' and beyond:
      # Read too, and necessarily wrong: leaving them out would score only what the model can read.
      texts = {e.path: e.text for e in beyond}
      # A file that cannot be decoded was warned of by `load_in_memory` already.
      readable = [
        (str(path), reading)
        for path, reading in predict.read_files(predictor, list(texts))
        if not isinstance(reading, DataError)
      ]
      readings += [reading for _, reading in readable]
      targets += [texts[path] for path, _ in readable]
      paths += [path for path, _ in readable]
      logging.warning(
        'Scoring %d image(s) whose labels the model cannot read (a character not in %r, or '
        'longer than %d) as misread.',
        len(readable),
        config.alphabet,
        config.max_label_length,
      )
    raw, fixed = decoding.texts(readings)
    report[name] = {
      **scored,
      'images': len(targets),
      **metrics.reading_metrics(raw, fixed, targets),
      'confusions': [
        {'true': t, 'read': r, 'count': n}
        for (t, r), n in confusions(raw, targets).most_common(top)
      ],
      'errors': [
        {'file': path, 'true': true, 'read': read}
        for path, true, read in zip(paths, targets, raw, strict=True)
        if true != read
      ],
    }
    if name == shown:
      figure = plots.predictions_figure(source, shown_readings, targets[: len(source)])
      plots.save(figure, workdir / f'predictions{suffix}.png')
  run_folder.write_json(workdir / f'evaluation{suffix}.json', report)
  run_folder.write_atomic(workdir / f'evaluation{suffix}.txt', format_report(report))
  return report


def _warn_trained_on(
  run_config: ml_collections.ConfigDict, paths: list[str], output_steps: Callable[[int, int], int]
) -> None:
  """Warns where images scored as another set are ones the run trained on (its labelled training
  images, or the readings it self-trained on), or byte-for-byte copies of them: read as learned,
  they score it higher than images it never saw would."""
  if run_config.get('data_source') == 'synthetic':
    return
  logging.disable(logging.WARNING)  # the run's own data, read again: its news was told in training
  try:
    _, splits = data.resolve(run_config, output_steps)
  except UserError:  # its data moved or changed: nothing to compare with
    return
  finally:
    logging.disable(logging.NOTSET)
  if trained := labelled.copies_of(paths, [e.path for e in splits['train']]):
    logging.warning(
      '%d of the %d images scored are images the run trained on, or copies of them (e.g. %s): '
      'they score it higher than images it never saw would.',
      len(trained),
      len(paths),
      next(iter(trained)),
    )


def report_suffix(workdir: Path, data_dir: Path, labels_file: str, scored: dict) -> str:
  """'-NAME' of the report files for another folder (and '-STEM' of `labels_file`'s name):
  '-PARENT-NAME', then '-PARENT-NAME-2', ..., where a report of that name scored other images
  (`scored`: the folder and labels file, as the report records them), so none is overwritten."""
  stem = f'-{Path(labels_file).stem}' if labels_file not in ('', settings.AUTO) else ''
  folder = data_dir.resolve()
  named = f'-{folder.name}{stem}'
  wider = f'-{folder.parent.name}{named}'
  candidates = itertools.chain((named, wider), (f'{wider}-{i}' for i in itertools.count(2)))
  return next(
    suffix
    for suffix in candidates
    if not _reports_other(workdir / f'evaluation{suffix}.json', scored)
  )


def _reports_other(path: Path, scored: dict) -> bool:
  """Whether the report at `path` scored other images than `scored` says; False where there is
  none, or it does not say (a report from before it was recorded), or cannot be read."""
  try:
    before = json.loads(path.read_text())['all']
  except (OSError, ValueError, TypeError, KeyError):
    return False
  return (
    isinstance(before, dict)
    and 'folder' in before
    and any(before.get(k) != v for k, v in scored.items())
  )


def own_data(
  config: ml_collections.ConfigDict,
  data_dir: str,
  labels_file: str,
  label_pattern: str | None = None,
) -> bool:
  """Whether `data_dir` (read as training reads it: `labelled.readable_folder`) with
  `labels_file` and `label_pattern` (None: the run's) is the data the run trained on, to be
  scored by its own splits; a generated set's run has none."""
  given = Path(data_dir).expanduser()
  if config.get('data_source') == 'synthetic' or not config.data_dir or not given.is_dir():
    return False
  if label_pattern is not None and label_pattern != config.get('label_pattern', ''):
    return False
  folder = Path(config.data_dir).resolve()
  if labelled.readable_folder(given, config.download_dir).resolve() != folder:
    return False
  trained = config.labels_file and (folder / Path(config.labels_file).expanduser()).resolve()
  if labels_file == settings.AUTO:
    return True  # the run's own choice, saved resolved
  return (labels_file and (folder / Path(labels_file).expanduser()).resolve()) == trained


def check_same_split(workdir: Path, splits: dict) -> None:
  """Raises ConfigError when the run's data now splits otherwise than when it trained: its
  test images would include some it trained on. Val and test are compared: the train split holds
  the readings a self-trained run trained on, which it is not scored on."""
  fingerprint = data.split_fingerprint(splits)
  if changed := run_folder.split_changes(workdir, fingerprint, names=('val', 'test')):
    raise ConfigError(
      f'The data of {str(workdir)!r} splits otherwise than when it trained (its '
      f'{", ".join(changed)}): its folder has changed since, or this version of captcha_jax '
      'reads it otherwise, so the splits are not those it trained and was chosen on. Score '
      'other images as one set with --data_dir: a folder of images it did not train on (its '
      'own, grown, holds some it did; move the new ones into a folder of their own).'
    )


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


if __name__ == '__main__':
  from captcha_jax import cli

  cli.evaluate()
