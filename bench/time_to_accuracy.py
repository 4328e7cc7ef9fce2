"""Time to accuracy, and accuracy, of the default recipe over several seeds on one fixed split.

    python bench/time_to_accuracy.py --data_dir ../shared/data/captcha_v2 --seeds 3 \
        [--cpu_tuning] [--config.x=y ...]

Trains each seed with `python -m captcha_jax.train` (a fresh process: compile time counts; other
arguments go to it), then prints per seed: test exact match and CER (raw, and post-processed to
the known length) of the chosen checkpoint, the first epoch whose validation exact match is
above 0% (the end of the all-blank plateau), the epoch and wall time (from start, compile
included) at which validation first reached 95% and 98%, the lowest validation accuracy after
first reaching 98%, and the epochs flagged as collapsed; then the mean. Model selection uses
validation only.
"""

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

from common import run_logged


def first_reaching(rows, threshold):
  for r in rows:
    if r['val_accuracy'] >= threshold:
      return r
  return None


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--data_dir', '--data-dir', required=True)
  parser.add_argument('--seeds', type=int, default=3)
  parser.add_argument('--config', default='configs/default.py')
  parser.add_argument('--workdir', default=None, help='Keeps the runs here (default: a temp dir).')
  parser.add_argument('--json', action='store_true', help='also print the rows as JSON')
  args, overrides = parser.parse_known_args()
  base = Path(args.workdir or tempfile.mkdtemp(prefix='captcha_accuracy_')).absolute()
  rows = []
  for seed in range(args.seeds):
    workdir = base / f'seed{seed}'
    cmd = [
      sys.executable,
      '-m',
      'captcha_jax.train',
      f'--config={args.config}',
      f'--workdir={workdir}',
      f'--config.data_dir={Path(args.data_dir).absolute()}',
      f'--config.seed={seed}',
      *overrides,
    ]
    workdir.parent.mkdir(parents=True, exist_ok=True)
    run_logged(cmd, workdir.with_suffix('.log'), f'seed {seed}')
    history = [json.loads(x) for x in (workdir / 'metrics.jsonl').read_text().splitlines()]
    results = json.loads((workdir / 'results.json').read_text())
    above0 = next((r for r in history if r['val_accuracy'] > 0), None)
    at95, at98 = first_reaching(history, 0.95), first_reaching(history, 0.98)
    after98 = [r['val_accuracy'] for r in history if at98 and r['epoch'] >= at98['epoch']]
    rows.append(
      {
        'seed': seed,
        'test_exact': results['test']['accuracy'],
        'test_cer': results['test']['cer'],
        'test_exact_post': results['test']['accuracy_post'],
        'test_cer_post': results['test']['cer_post'],
        'best_epoch': results['best_epoch'],
        'epoch_above0': above0 and above0['epoch'],
        'epoch95': at95 and at95['epoch'],
        's95': at95 and at95['elapsed_s'],
        'epoch98': at98 and at98['epoch'],
        's98': at98 and at98['elapsed_s'],
        'min_val_after98': min(after98) if after98 else None,
        'collapsed_epochs': sum('collapse' in r for r in history),
        'total_s': history[-1]['elapsed_s'],
      }
    )
    print(f'seed {seed} done: {json.dumps(rows[-1])}', flush=True)

  def fmt(v, pct=False):
    if v is None:
      return '—'
    return f'{100 * v:.2f}' if pct else (f'{v:.0f}' if isinstance(v, float) else str(v))

  print(f'\n{args.config} {" ".join(overrides)}; runs in {base}')
  head = (
    'seed',
    'test exact %',
    'test CER %',
    'post exact %',
    'post CER %',
    'best ep',
    'ep>0',
    'ep→95',
    's→95',
    'ep→98',
    's→98',
    'min val after 98 %',
    'collapsed ep',
    'total s',
  )
  print(' | '.join(head))
  keys = (
    'seed',
    'test_exact',
    'test_cer',
    'test_exact_post',
    'test_cer_post',
    'best_epoch',
    'epoch_above0',
    'epoch95',
    's95',
    'epoch98',
    's98',
    'min_val_after98',
    'collapsed_epochs',
    'total_s',
  )
  pct = {'test_exact', 'test_cer', 'test_exact_post', 'test_cer_post', 'min_val_after98'}
  for r in rows:
    print(' | '.join(fmt(r[k], k in pct) for k in keys))
  mean = {}
  for k in keys[1:]:
    values = [r[k] for r in rows if r[k] is not None]
    mean[k] = statistics.mean(values) if len(values) == len(rows) else None
  print(' | '.join(['mean'] + [fmt(mean[k], k in pct) for k in keys[1:]]))
  if args.json:
    print(json.dumps({'seeds': rows, 'mean': mean}))


if __name__ == '__main__':
  main()
