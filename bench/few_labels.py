"""Few labels: from scratch against fine-tuning the pretrained reader, N labelled captchas each.

    python bench/few_labels.py --data_dir ../shared/data/captcha_v2 \
        [--sizes 50,100,200,500,1000] [--styles ledger,ransom] [--libraries wheezy,multicolor] \
        [--skip_ddddocr] \
        [--modes scratch,finetune,selftrain] [--rounds 1] [--unlabelled 4000] \
        [--round_epochs 0] [--restart] \
        [--flag=--config.augment.max_rotation=8 ...]

For each captcha set and N, trains with only the data folder given (`configs/default.py` from
scratch, `configs/finetune.py` from the shipped reader; each splits its N images 80/10/10 and reads
its chosen checkpoint) and scores the result on a fixed set of other images of the same set: exact
match, and the wall time of the run (compilation included). Sets: the real captchas of --data_dir
(the N come from its default training split, scored on its validation and test images), generated
styles built from fonts the pre-training never drew (`fonts.py`'s HELD_OUT_FONTS; 1,000 scored
images each) and, with --libraries, captchas of libraries real sites use (captcha_libraries.py,
drawn in their own venv; likewise). A zero-shot row reads each scored set with the pretrained reader
restricted to the set's alphabet (and, where all its texts have one length, to that length too),
beside ddddocr's (its own environment, see ddddocr_reader.py) as it comes and restricted to the
alphabet (its API takes no length; it reads in lower case, so a set written in capitals is compared
in capitals).

Mode `selftrain` (generated styles and libraries, which have unlabelled images to spare): --rounds
rounds of `captcha-jax-self-train` from the `finetune` run, on --unlabelled other captchas of the
style: each round's run reads them, and the next trains on the N labels and the readings of
confidence ≥ 0.9 (workdirs `…-finetune-roundR`), from the run before or with --restart from the
shipped reader, for --round_epochs epochs (0: as many steps as the fine-tuning run). The row is the
last round's, with every round's exact match beside it; its wall time counts the fine-tuning run and
every round. The rounds train with the fine-tuning run's config, --flag included.
"""

import argparse
import dataclasses
import functools
import json
import shutil
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import captcha_libraries
import numpy as np
from common import load_config, run_logged

from captcha_jax import data, labelled, models, synthetic
from captcha_jax.predict import Predictor
from captcha_jax.self_train import round_dir

SCORED = 1000
POOL = 1000  # the most labelled images a generated style offers
Examples = list[labelled.Example]


@dataclasses.dataclass(frozen=True)
class Shape:
  """The generated styles' texts and size (--alphabet, --length, --size)."""

  alphabet: str = synthetic.DIGITS + synthetic.LOWERCASE
  length: int = 5
  width: int = 180
  height: int = 60

  def folder(self, name: str) -> str:
    """`name`, tagged with the shape unless it is the default one (its folders keep their names)."""
    if self == Shape():
      return name
    return f'{name}-{len(self.alphabet)}chars-{self.length}-{self.width}x{self.height}'


def real_set(data_dir: str) -> tuple[Examples, Examples]:
  """(labelled pool, scored images) of a real set: its default train split, and val + test."""
  config = load_config('configs/default.py')
  config.data_dir = str(Path(data_dir).absolute())
  _, splits = data.resolve(config, functools.partial(models.output_steps, config.model))
  return splits['train'], splits['val'] + splits['test']


def generated_set(style: str, shape: Shape, cache: Path) -> tuple[Examples, Examples]:
  """(labelled pool, scored images) of a generated style in `shape`.

  One folder of POOL + SCORED images whatever sizes are asked for, so runs of different N (and
  separate invocations) are scored on the same images.
  """
  folder = cache / shape.folder(f'{style}-{POOL + SCORED}')
  return _pool_and_scored(_generated(folder, _synthetic(style, shape, POOL + SCORED, 3)))


def library_set(library: str, cache: Path) -> tuple[Examples, Examples]:
  """(labelled pool, scored images) of a captcha library's (captcha_libraries.py), as above."""
  draw = functools.partial(
    captcha_libraries.generate, library, count=POOL + SCORED, seed=3, avoid=[]
  )
  return _pool_and_scored(_generated(cache / f'{library}-{POOL + SCORED}', draw))


def _pool_and_scored(folder: Path) -> tuple[Examples, Examples]:
  paths = sorted(folder.glob('*.png'))
  order = np.random.default_rng(0).permutation(len(paths))
  examples = [labelled.Example(str(paths[i]), labelled.label_from_path(paths[i])) for i in order]
  return examples[SCORED:], examples[:SCORED]


def unlabelled_set(style: str, shape: Shape, count: int, cache: Path) -> Path:
  """A folder of `count` more captchas of a generated style or a captcha library, none of them
  scored or labelled."""
  if style in captcha_libraries.LIBRARIES:
    taken = [e.text for examples in library_set(style, cache) for e in examples]
    draw = functools.partial(captcha_libraries.generate, style, count=count, seed=11, avoid=taken)
    return _generated(cache / f'{style}-unlabelled-{count}', draw)
  folder = cache / shape.folder(f'{style}-unlabelled-{count}')
  return _generated(folder, _synthetic(style, shape, count, 11))


def _synthetic(style: str, shape: Shape, count: int, seed: int) -> Callable[[Path], object]:
  return functools.partial(
    synthetic.generate,
    count=count,
    alphabet=shape.alphabet,
    length=shape.length,
    width=shape.width,
    height=shape.height,
    style=style,
    seed=seed,
  )


def _generated(folder: Path, draw: Callable[[Path], object]) -> Path:
  """`folder`, once `draw(folder)` has filled it; drawn once."""
  if not folder.is_dir():
    partial = folder.with_suffix('.partial')  # an interrupted generation is not taken as done
    shutil.rmtree(partial, ignore_errors=True)  # and starts over
    draw(partial)
    partial.rename(folder)
  return folder


def self_train_rounds(
  teacher: Path, unlabelled: Path, rounds: int, epochs: int, restart: bool
) -> float:
  """`captcha-jax-self-train` from the run `teacher`; returns its wall time."""
  command = [sys.executable, '-m', 'captcha_jax.self_train', f'--workdir={teacher}', '--cpu_tuning']
  command += [f'--unlabelled={unlabelled}', f'--rounds={rounds}', f'--epochs={epochs}']
  command += ['--restart'] if restart else []
  return run_logged(command, teacher.with_suffix('.rounds.log'), f'self-training from {teacher}')


def train(config: str, examples: Examples, workdir: Path, flags: list[str]) -> float:
  """Trains on `examples` (a folder of links named by their texts); returns the wall time."""
  folder = workdir.with_suffix('.data')
  folder.mkdir(parents=True, exist_ok=True)
  for e in examples:
    link = folder / Path(e.path).name
    if not link.exists():
      link.symlink_to(e.path)
  command = [
    sys.executable,
    '-m',
    'captcha_jax.train',
    f'--config={config}',
    f'--workdir={workdir}',
    f'--config.data_dir={folder}',
    '--cpu_tuning',
    *flags,
  ]
  return run_logged(command, workdir.with_suffix('.log'), f'{config} on {folder}')


def exact_match(
  predictor: Predictor, scored: list[labelled.Example], allowed: str = '', length: int = 0
) -> float:
  readings = predictor.predict([e.path for e in scored], allowed=allowed, length=length)
  return sum(r.text == e.text for r, e in zip(readings, scored, strict=True)) / len(scored)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--data_dir', required=True, help='a real captcha set, named by text')
  parser.add_argument('--sizes', default='50,100,200,500,1000')
  parser.add_argument('--styles', default='ledger,ransom', help='generated held-out styles')
  parser.add_argument(
    '--libraries', default='', help='captcha libraries: wheezy,multicolor (captcha_libraries.py)'
  )
  parser.add_argument('--alphabet', default=Shape.alphabet, help="the generated styles' symbols")
  parser.add_argument('--length', type=int, default=Shape.length, help='symbols a captcha')
  parser.add_argument('--size', default=f'{Shape.width}x{Shape.height}', help='WIDTHxHEIGHT')
  parser.add_argument('--modes', default='scratch,finetune', help='and selftrain')
  parser.add_argument('--rounds', type=int, default=1, help='of self-training, each from the last')
  parser.add_argument(
    '--unlabelled', type=int, default=4000, help="a generated style's images to self-train on"
  )
  parser.add_argument(
    '--round_epochs', type=int, default=0, help='of a self-training round (0: as the first run)'
  )
  parser.add_argument(
    '--restart', action='store_true', help='self-training rounds from the shipped reader'
  )
  parser.add_argument('--workdir', default=None, help='keeps the runs (default: a temp dir)')
  parser.add_argument('--skip_ddddocr', action='store_true')
  parser.add_argument(
    '--flag', action='append', default=[], help='--config.x=y for every run (repeatable)'
  )
  parser.add_argument('--json', action='store_true')
  args = parser.parse_args()
  base = Path(args.workdir or tempfile.mkdtemp(prefix='few_labels_')).absolute()
  sizes = [int(n) for n in args.sizes.split(',')]
  width, height = (int(x) for x in args.size.split('x'))
  shape = Shape(args.alphabet, args.length, width, height)
  sets = {'captcha_v2': real_set(args.data_dir)}
  styles = {shape.folder(style): style for style in filter(None, args.styles.split(','))}
  for name, style in styles.items():
    sets[name] = generated_set(style, shape, base / 'sets')
  for library in filter(None, args.libraries.split(',')):
    styles[library] = library
    sets[library] = library_set(library, base / 'sets')
  configs = {'scratch': 'configs/default.py', 'finetune': 'configs/finetune.py'}

  rows = []
  pretrained = Predictor.pretrained()
  for name, (pool, scored) in sets.items():
    alphabet = ''.join(sorted({c for e in pool + scored for c in e.text}))
    row = {'set': name, 'n': 0, 'mode': 'zero-shot', 'exact': exact_match(pretrained, scored)}
    row['exact_restricted'] = exact_match(pretrained, scored, allowed=alphabet)
    lengths = {len(e.text) for e in pool + scored}
    if len(lengths) == 1:  # a site whose texts all have one length: that too
      row['exact_restricted_length'] = exact_match(pretrained, scored, alphabet, lengths.pop())
    if not args.skip_ddddocr:
      import ddddocr_reader  # bench/ddddocr_reader.py, beside this file

      # It reads in lower case: restricted to capitals alone it would delete nearly every
      # character, so a set written in capitals is compared in capitals.
      capitals = alphabet == alphabet.upper() != alphabet.lower()
      texts = ddddocr_reader.read([e.path for e in scored], alphabet + alphabet.lower() * capitals)
      targets = [e.text for e in scored]
      for key, column in (('plain', 'ddddocr'), ('restricted', 'ddddocr_restricted')):
        read = [t.upper() if capitals else t for t in texts[key]]
        row[column] = np.mean([t == e for t, e in zip(read, targets, strict=True)])
    rows.append(row)
    print(json.dumps(row), flush=True)
    for n in sizes:
      if n > len(pool):
        print(f'{name}: {n} labelled images asked for, {len(pool)} to draw from; skipped')
        continue
      for mode in args.modes.split(','):
        workdir = base / f'{name}-{n}-{mode}'
        if mode != 'selftrain':
          seconds = train(configs[mode], pool[:n], workdir, args.flag)
        elif name == 'captcha_v2':
          continue  # no unlabelled images of it beyond those scored
        else:
          teacher = base / f'{name}-{n}-finetune'
          done = [r for r in rows if (r['set'], r['n'], r['mode']) == (name, n, 'finetune')]
          if done:
            seconds = done[0]['wall_s']
          else:
            seconds = train(configs['finetune'], pool[:n], teacher, args.flag)
          unlabelled = unlabelled_set(styles[name], shape, args.unlabelled, base / 'sets')
          seconds += self_train_rounds(
            teacher, unlabelled, args.rounds, args.round_epochs, args.restart
          )
          students = [round_dir(teacher, r) for r in range(1, args.rounds + 1)]
          rounds = [exact_match(Predictor.from_workdir(s), scored) for s in students[:-1]]
          workdir = students[-1]
        predictor = Predictor.from_workdir(workdir)
        row = {'set': name, 'n': n, 'mode': mode, 'exact': exact_match(predictor, scored)}
        row['wall_s'] = seconds
        if mode == 'selftrain':
          row['rounds'] = [*rounds, row['exact']]
          row.update(round_epochs=args.round_epochs, restart=args.restart)
        rows.append(row)
        print(json.dumps(row), flush=True)

  print(f'\nruns in {base}; scored on {SCORED} generated images, or the real val + test')
  print('| set | labelled | scratch | fine-tuned (s) | self-trained (s) | zero-shot | ddddocr |')
  print('| --- | --- | --- | --- | --- | --- | --- |')
  for name in sets:
    zero = next(r for r in rows if r['set'] == name and r['mode'] == 'zero-shot')
    dddd = zero.get('ddddocr')
    with_length = zero.get('exact_restricted_length')
    print(
      f'| {name} | 0 | — | — | — | {100 * zero["exact"]:.1f}% '
      f'({100 * zero["exact_restricted"]:.1f}% restricted'
      + (f', {100 * with_length:.1f}% with the length too' if with_length is not None else '')
      + ') | '
      + (
        f'{100 * dddd:.1f}% ({100 * zero["ddddocr_restricted"]:.1f}%)' if dddd is not None else '—'
      )
      + ' |'
    )
    for n in sizes:
      got = {r['mode']: r for r in rows if r['set'] == name and r['n'] == n}
      if not got:
        continue

      def pct(mode, got=got, timed=False):
        if mode not in got:
          return '—'
        return f'{100 * got[mode]["exact"]:.1f}%' + (f' ({got[mode]["wall_s"]:.0f})' * timed)

      print(
        f'| {name} | {n} | {pct("scratch")} | {pct("finetune", timed=True)} | '
        f'{pct("selftrain", timed=True)} | | |'
      )
  if args.json:
    print(json.dumps(rows))


if __name__ == '__main__':
  main()
