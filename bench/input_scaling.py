"""Input scaling: training's peak memory and step rate as the set grows, decoded into memory
against streamed from the tensorflow-datasets copy.

    python bench/input_scaling.py --data_dir ../shared/data/captcha_v2 \
        [--sizes 10000 200000] [--sources folder tfds] [--steps 40] [--cpu_tuning]

A set of N images is made from DATA_DIR's images repeated under new names (hard links listed in
a labels file, under --cache): for memory and input rate what matters is how many images there
are, not whether they differ. For each N and each input path -- 'folder' (every image decoded
into memory) and 'tfds' (the set's array_record copy read record by record through grain) -- a
fresh process resolves and prepares the set (for 'tfds' the first time: building the copy),
compiles the default model's train step, and trains --steps steps after --warmup ones with the
input in the loop. Prints per row: the preparation time, images/s over the timed steps, and the
process's peak RSS; then streamed over in-memory ratios at each N.
"""

import argparse
import functools
import hashlib
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from common import ROOT, load_config, peak_rss_mb


def make_set(data_dir: Path, size: int, cache: Path) -> Path:
  """CACHE/N-HASH: `size` hard links to DATA_DIR's images (cycled) and labels.csv naming their
  texts; HASH names DATA_DIR, so another data folder never reuses this one's set."""
  tag = hashlib.sha256(str(data_dir.resolve()).encode()).hexdigest()[:8]
  folder = cache / f'{size}-{tag}'
  labels = folder / 'labels.csv'
  if labels.exists():
    return folder
  from captcha_jax import labelled

  found, _ = labelled.find_images(data_dir)
  (folder / 'images').mkdir(parents=True, exist_ok=True)
  rows = []
  for i in range(size):
    source = found[i % len(found)]
    name = f'images/{i:07d}{source.suffix}'
    target = folder / name
    if not target.exists():
      try:
        os.link(source, target)
      except OSError:  # another file system: a copy
        target.write_bytes(source.read_bytes())
    rows.append(f'{name},{labelled.label_from_path(source)}')
  labels.with_suffix('.tmp').write_text('\n'.join(rows) + '\n')
  labels.with_suffix('.tmp').rename(labels)
  return folder


def measure(folder: Path, source: str, num_steps: int, warmup: int, cpu_tuning: bool) -> dict:
  """One row, in this process: prepare the set, compile, train and time."""
  from captcha_jax import host

  config = load_config('configs/default.py')
  if cpu_tuning:
    host.tune_cpu(config.batch_size, config.eval_batch_size)
  import jax

  from captcha_jax import batches, data, models, sources, steps
  from captcha_jax.train import device_batches
  from captcha_jax.vocab import Vocab

  config.data_dir = str(folder)
  config.labels_file = 'labels.csv'
  config.data_source = source
  config.tfds_data_dir = str(folder / 'tfds')
  start = time.perf_counter()
  config, splits = sources.prepare(config, functools.partial(models.output_steps, config.model))
  prepare_s = time.perf_counter() - start
  prepared_mb = peak_rss_mb()
  vocab = Vocab(config.alphabet)
  model = models.create_model(
    config.model, vocab.num_classes, axis_name=steps.DATA_AXIS, blank_prior=config.blank_prior
  )
  mesh = steps.make_mesh()
  steps_per_epoch = len(splits['train']) // config.batch_size
  release = host.release_free_memory if cpu_tuning else lambda: None
  state, train_step, _ = steps.compile_and_create_state(
    config, model, steps.make_schedule(config, steps_per_epoch), mesh, release
  )
  stream = batches.train_batches(
    splits['train'],
    data.BatchSpec.of(config, config.batch_size),
    vocab,
    (config.seed, 0),
    config.augment,
    workers=config.input_workers,
  )
  votes = steps.stop_votes(False, mesh)
  times = []
  on_device = device_batches(stream, mesh, config)
  last = time.perf_counter()
  for i, (_, batch) in enumerate(on_device):
    state, metrics = train_step(state, batch, votes)
    jax.block_until_ready(metrics['loss'])
    now = time.perf_counter()
    if i >= warmup:
      times.append(now - last)
    last = now
    if len(times) == num_steps:
      break
  on_device.close()
  return {
    'images': len(splits['train']) + len(splits['val']) + len(splits['test']),
    'source': source,
    'prepare_s': prepare_s,
    'images_per_s': config.batch_size / statistics.median(times),
    'prepared_rss_mb': prepared_mb,
    'peak_rss_mb': peak_rss_mb(),
  }


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--data_dir', '--data-dir', required=True)
  parser.add_argument('--sizes', type=int, nargs='+', default=[10_000, 200_000])
  parser.add_argument('--sources', nargs='+', default=['folder', 'tfds'])
  parser.add_argument('--steps', type=int, default=40)
  parser.add_argument('--warmup', type=int, default=5)
  parser.add_argument('--cpu_tuning', action='store_true')
  parser.add_argument('--cache', default='~/.cache/captcha_jax/bench_scaling')
  parser.add_argument('--child', nargs=2, metavar=('FOLDER', 'SOURCE'), help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.child:
    folder, source = args.child
    row = measure(Path(folder), source, args.steps, args.warmup, args.cpu_tuning)
    print('ROW ' + json.dumps(row))
    return

  cache = Path(args.cache).expanduser()
  rows = []
  for size in args.sizes:
    folder = make_set(Path(args.data_dir), size, cache)
    for source in args.sources:
      cmd = [sys.executable, __file__, f'--steps={args.steps}', f'--warmup={args.warmup}']
      cmd += ['--data_dir', args.data_dir, '--child', str(folder), source]
      cmd += ['--cpu_tuning'] if args.cpu_tuning else []
      env = dict(os.environ, GLIBC_TUNABLES='glibc.malloc.hugetlb=1') if args.cpu_tuning else None
      result = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env)
      lines = [x for x in result.stdout.splitlines() if x.startswith('ROW ')]
      if result.returncode or not lines:
        sys.exit(f'{size} images from {source} failed:\n{result.stderr[-3000:]}')
      rows.append(json.loads(lines[-1][4:]))
      print(
        '{images:>8} images  {source:<6}  prepare {prepare_s:7.1f} s  {images_per_s:6.1f} img/s  '
        'peak {peak_rss_mb:7.0f} MB (after preparing {prepared_rss_mb:.0f})'.format(**rows[-1]),
        flush=True,
      )
  by = {(r['images'], r['source']): r for r in rows}
  for images in sorted({r['images'] for r in rows}):
    if (images, 'folder') in by and (images, 'tfds') in by:
      streamed, in_memory = by[images, 'tfds'], by[images, 'folder']
      print(
        f'{images} images, streamed / in memory: step rate '
        f'{streamed["images_per_s"] / in_memory["images_per_s"]:.2f}×, peak memory '
        f'{streamed["peak_rss_mb"] / in_memory["peak_rss_mb"]:.2f}×'
      )


if __name__ == '__main__':
  main()
