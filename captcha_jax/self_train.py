"""Self-training, round after round: a run reads unlabelled captchas of its site, and a new run
trains from it on its labels and the readings it is sure of.

    python -m captcha_jax.self_train --workdir runs/mine --unlabelled path/to/unlabelled \
        [--rounds 4] [--epochs E] [--restart]

Round r reads the unlabelled images with the run before it (WORKDIR, then WORKDIR-round1, ...)
into WORKDIR-round{r}/readings.csv, then trains WORKDIR-round{r} from that run (with --restart,
from where WORKDIR started: its config.init_from, e.g. the shipped reader) with WORKDIR's config
and the readings as config.pseudo_labels: those of confidence ≥ config.pseudo_min_confidence
join the training split alone, so every round is still chosen and scored on the labels. A round
trains `epochs` epochs, or by default as many steps as WORKDIR did (with --restart, and at least
8 epochs): a few hundred readings make short epochs, and two of them leave the student worse than
its teacher (bench/README.md). Rerunning the same command skips the rounds that finished and
resumes the one that did not; a round trained or begun otherwise (another start or length), or
readings of a teacher that has trained since (WORKDIR-round{r}/teacher.json), are refused, never
reused.
"""

import csv
import hashlib
import io
import json
import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import ml_collections
from tqdm import tqdm

from captcha_jax import labelled, predict, train, transfer
from captcha_jax import workdir as run_folder
from captcha_jax.errors import ConfigError, DataError

READINGS = 'readings.csv'
TEACHER = 'teacher.json'  # beside the readings: which run, at which checkpoint, read them
# Each round starts from a trained reader, which needs only a short warm-up of the learning rate.
WARMUP_EPOCHS = 0.2
# A restarted round learns the site again from where the first run started: on a few thousand
# readings the first run's steps (3 epochs) read 81.5%, 8 epochs 84.5% (bench/README.md).
RESTART_MIN_EPOCHS = 8
# What makes a round the one asked for: a finished round with others is not taken as done.
ROUND_KEYS = ('init_from', 'pseudo_labels', 'num_epochs')


def round_dir(workdir: str | Path, round_: int) -> Path:
  """Where round `round_` (1, 2, ...) of self-training from WORKDIR trains."""
  workdir = Path(workdir)
  return workdir.with_name(f'{workdir.name}-round{round_}')


def round_config(
  config: ml_collections.ConfigDict,
  teacher: Path,
  readings: Path,
  epochs: int,
  restart: bool = False,
) -> ml_collections.ConfigDict:
  """The first run's config, trained on the labels and `readings` from `teacher` (`restart`:
  from where the first run started, with its warm-up)."""
  config = config.copy_and_resolve_references()
  config.update(pseudo_labels=str(readings), num_epochs=epochs)
  if not restart:  # the teacher holds the whole model, trunk included
    config.update(init_from=str(teacher), pretrained='', warmup_epochs=WARMUP_EPOCHS)
  return config


def kept_readings(config: ml_collections.ConfigDict, readings: Path) -> int:
  """How many of the readings in `readings` join a round's training: those confident enough,
  but for readings of the run's labelled images or of copies of them, which
  `labelled.pseudo_labelled` leaves out (a folder the labels were copied from)."""
  confident = [e.path for e in labelled.read_readings(readings, config.pseudo_min_confidence)[0]]
  if not config.get('data_dir') or not Path(config.data_dir).is_dir():  # generated, or moved
    return len(confident)
  own = [e.path for e in labelled.find_examples(config, Path(config.data_dir))[0]]
  return len(labelled.not_labelled(confident, own)[0])


def round_epochs(
  config: ml_collections.ConfigDict, workdir: Path, readings: Path, restart: bool = False
) -> int:
  """Epochs that give a round on the labels and `readings` as many steps as the run `workdir`
  (whose config is `config`) trained: its labelled images and these readings, in its batches;
  a `restart`ed round at least RESTART_MIN_EPOCHS."""
  trained = run_folder.read_split(workdir)['train']['images']
  labelled_count = trained
  if config.get('pseudo_labels') and Path(config.pseudo_labels).is_file():
    labelled_count -= kept_readings(config, Path(config.pseudo_labels))  # its own readings
  steps = config.num_epochs * (trained // config.batch_size)
  per_epoch = max(1, (labelled_count + kept_readings(config, readings)) // config.batch_size)
  return max(round(steps / per_epoch), RESTART_MIN_EPOCHS if restart else 1)


def write_readings(teacher: Path, unlabelled: Sequence[str], out: Path) -> int:
  """Reads every image of `unlabelled` (files and folders) with the run `teacher` into the
  readings file `out`, written whole once all are read; returns how many it read. A file that
  cannot be read is named in a warning and left out; one given twice (a folder and a file in it)
  is read once."""
  reader = predict.Predictor.from_workdir(teacher)
  paths = list({os.path.abspath(path): path for path in predict.expand_paths(unlabelled)}.values())
  text = io.StringIO()
  rows = csv.writer(text)
  rows.writerow(predict.READINGS_COLUMNS)
  read = 0
  for path, reading in tqdm(
    predict.read_files(reader, paths), total=len(paths), unit='image', desc=f'{teacher.name} reads'
  ):
    if isinstance(reading, DataError):
      logging.warning('Not self-trained on: %s', reading)
      continue
    rows.writerow(predict.readings_row(path, reading))
    read += 1
  if not read:
    raise DataError(f'None of the {len(paths)} unlabelled image(s) could be read.')
  out.parent.mkdir(parents=True, exist_ok=True)
  run_folder.write_atomic(out, text.getvalue())
  return read


def teacher_of(teacher: Path) -> dict:
  """What identifies the reader a round's readings come from: the run, and its results (which
  name the checkpoint it was read at) as they were when it read them."""
  results = teacher / 'results.json'
  if not results.exists():
    raise ConfigError(
      f'{str(teacher)!r} has not finished training (no results.json): rerun its command to '
      'finish it before self-training from it.'
    )
  return {'run': str(teacher), 'results_sha256': hashlib.sha256(results.read_bytes()).hexdigest()}


def check_teacher(student: Path, teacher: Path) -> None:
  """Raises ConfigError when the readings in `student` were made by another run than `teacher`
  as it is now (retrained since, or another run under that name): its round would train on
  them."""
  try:
    recorded = json.loads((student / TEACHER).read_text())
  except (OSError, ValueError):
    recorded = None
  if recorded != teacher_of(teacher):
    raise ConfigError(
      f'The readings in {str(student)!r} were not read by {str(teacher)!r} as it is now (it has '
      f'trained since, or {TEACHER} is missing): move {str(student)!r} away to read again.'
    )


def check_readings_of(readings: Path, unlabelled: Sequence[str]) -> None:
  """Raises ConfigError when a round's readings, written by an earlier invocation, read images
  that `unlabelled` no longer gives (another folder): the round would train on those."""
  read = {os.path.abspath(e.path) for e in labelled.read_readings(readings, 0.0)[0]}
  given = {os.path.abspath(path) for path in predict.expand_paths(unlabelled)}
  if other := sorted(read - given):
    raise ConfigError(
      f'{str(readings)!r} holds readings of {len(other)} image(s) that --unlabelled does not give '
      f'(e.g. {other[0]!r}): it was read from other images. Move {str(readings.parent)!r} away to '
      'self-train on these.'
    )
  if unread := len(given - read):
    logging.warning(
      '%d of the unlabelled images are not in %s (unreadable, or added since it was written).',
      unread,
      readings,
    )


def run_rounds(
  workdir: str | Path,
  unlabelled: Sequence[str],
  rounds: int,
  epochs: int = 0,
  *,
  restart: bool = False,
  after_compile: Callable[[], object] = lambda: None,
) -> Path:
  """Runs `rounds` rounds of self-training from the run WORKDIR (see the module's docstring), each
  of `epochs` epochs (0: as many steps as WORKDIR trained) from the run before, or with `restart`
  from where WORKDIR started; returns the last round's workdir."""
  workdir = Path(os.path.abspath(workdir))  # as a run saves its paths: no '..' left
  config = run_folder.read_config(workdir)
  start = config.get('init_from', '')
  if restart and start and start != transfer.PRETRAINED and not os.path.isabs(start):
    raise ConfigError(
      f'{str(workdir)!r} started from {start!r}, relative to the folder it was trained in, which '
      f'a run did not save then: write its absolute path as init_from in {workdir}/config.json '
      'to restart rounds from it.'
    )
  teacher = workdir
  for r in range(1, rounds + 1):
    student = round_dir(workdir, r)
    readings = student / READINGS
    if not readings.exists():
      read_by = teacher_of(teacher)
      count = write_readings(teacher, unlabelled, readings)
      run_folder.write_json(student / TEACHER, read_by)
      logging.info('Round %d of %d: %s read %d image(s).', r, rounds, teacher, count)
    else:
      check_teacher(student, teacher)
      check_readings_of(readings, unlabelled)
    length = epochs or round_epochs(config, workdir, readings, restart)
    wanted = round_config(config, teacher, readings, length, restart)
    finished = (student / 'results.json').exists()
    if (student / 'config.json').exists():  # begun or finished: with these settings alone
      saved = run_folder.read_config(student)
      if changed := [k for k in ROUND_KEYS if saved.get(k) != wanted[k]]:
        raise ConfigError(
          f'{str(student)!r} holds a round {"trained" if finished else "begun"} with another '
          f'{", ".join(changed)}: move it away, or self-train a copy of the first run under '
          'another name.'
        )
    if finished:
      logging.info('Round %d of %d: %s has finished; next.', r, rounds, student)
    else:
      start = wanted.init_from or 'scratch'  # a --restart of a run trained from scratch
      logging.info('Round %d of %d: %d epoch(s) from %s.', r, rounds, length, start)
      results = train.train_and_evaluate(wanted, student, after_compile=after_compile)
      logging.info(
        'Round %d of %d: %s reads %.1f%% of its validation images.',
        r,
        rounds,
        student,
        100 * results['val']['accuracy'],
      )
    teacher = student
  return teacher


if __name__ == '__main__':
  from captcha_jax import cli

  cli.self_train()
