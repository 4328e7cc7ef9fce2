"""Peak memory of the predict command over a folder of 1,000 and of 20,000 images: flat or not.

    python bench/predict_memory.py --workdir RUN [--counts 1000 20000] [--cpu_tuning] [--json]

Generates each folder once (`python -m captcha_jax.synthetic --style dataset`, kept under
--cache), then runs `python -m captcha_jax.predict --workdir RUN FOLDER` in a fresh child per
folder and reads that child's own peak resident memory from `os.wait4` (the kernel's ru_maxrss
for exactly that process, as /usr/bin/time -v reports it). Prints each peak, the ratio of the
largest folder's to the smallest's (target ≤ 1.5×: reading files in batches keeps memory flat),
images/s over the whole command (start-up and compiling included), and the marginal images/s
between the two folders (start-up cancels out). The readings go to a file and are counted, and
scored against the file names (the synthetic captchas are named by their text).
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CACHE = Path('~/.cache/captcha_jax/predict_memory').expanduser()
TARGET_RATIO = 1.5


def image_folder(count: int, cache: Path) -> Path:
  """A folder of `count` synthetic captchas in the dataset's style, generated once."""
  folder = cache / f'dataset_{count}'
  if folder.is_dir() and sum(1 for _ in folder.glob('*.png')) == count:
    return folder
  print(f'Generating {count} captchas into {folder} (once)…', flush=True)
  cache.mkdir(parents=True, exist_ok=True)
  partial = Path(tempfile.mkdtemp(prefix=f'dataset_{count}.', dir=cache))
  command = [sys.executable, '-m', 'captcha_jax.synthetic', '--out', str(partial)]
  command += ['--count', str(count), '--style', 'dataset']
  subprocess.run(command, check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
  shutil.rmtree(folder, ignore_errors=True)
  partial.rename(folder)
  return folder


def measure(workdir: str, folder: Path, cpu_tuning: bool) -> dict:
  """Runs the predict command over `folder` in a fresh child: its peak RSS, time and readings."""
  command = [sys.executable, '-m', 'captcha_jax.predict', '--workdir', workdir, str(folder)]
  if cpu_tuning:
    command.append('--cpu_tuning')
  with tempfile.TemporaryFile('w+') as out, tempfile.TemporaryFile('w+') as err:
    start = time.perf_counter()
    child = subprocess.Popen(command, cwd=ROOT, stdout=out, stderr=err)
    _, status, usage = os.wait4(child.pid, 0)  # this child's own rusage
    seconds = time.perf_counter() - start
    child.returncode = os.waitstatus_to_exitcode(status)
    out.seek(0)
    rows = [line.rstrip('\n').split('\t') for line in out]
    if child.returncode:
      err.seek(0)
      raise SystemExit(f'{" ".join(command)} failed ({child.returncode}):\n{err.read()[-3000:]}')
  correct = sum(Path(row[0]).stem == row[1] for row in rows if len(row) >= 2)
  return {
    'images': len(rows),
    'peak_rss_mb': round(usage.ru_maxrss / 1024, 1),  # Linux reports KiB
    'seconds': round(seconds, 2),
    'images_per_s': round(len(rows) / seconds, 1),
    'exact': round(correct / max(len(rows), 1), 4),
  }


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--workdir', required=True, help='A trained run.')
  parser.add_argument('--counts', type=int, nargs='+', default=[1000, 20000])
  parser.add_argument('--cache', type=Path, default=CACHE, help='Where the folders are kept.')
  parser.add_argument('--cpu_tuning', action='store_true', help="Pass the command's flag on.")
  parser.add_argument('--json', action='store_true', help='End with the results as one JSON line.')
  args = parser.parse_args(argv)
  workdir = str(Path(args.workdir).resolve())
  counts = sorted(args.counts)
  folders = {n: image_folder(n, args.cache) for n in counts}
  runs = {}
  for n in counts:
    runs[n] = measure(workdir, folders[n], args.cpu_tuning)
    if runs[n]['images'] != n:
      raise SystemExit(f'The command read {runs[n]["images"]} of {n} images.')

  print(
    f'python -m captcha_jax.predict --workdir {workdir} FOLDER' + ' --cpu_tuning' * args.cpu_tuning
  )
  print('| images | peak RSS MB | seconds | images/s | exact |')
  print('| --- | --- | --- | --- | --- |')
  for n, r in runs.items():
    row = f'| {n} | {r["peak_rss_mb"]:.0f} | {r["seconds"]:.1f} | {r["images_per_s"]:.1f} '
    print(row + f'| {100 * r["exact"]:.2f}% |')
  small, large = runs[counts[0]], runs[counts[-1]]
  ratio = large['peak_rss_mb'] / small['peak_rss_mb']
  extra = large['seconds'] - small['seconds']
  marginal = (counts[-1] - counts[0]) / extra if extra > 0 else None
  verdict = 'met' if ratio <= TARGET_RATIO else 'NOT met'
  print(
    f'Peak RSS {counts[-1]} / {counts[0]} images: {ratio:.2f}× (target ≤ {TARGET_RATIO}×: '
    f'{verdict}). Marginal rate between them: '
    + (f'{marginal:.1f} images/s.' if marginal else '—.')
  )
  if args.json:
    summary = {
      'runs': {str(n): r for n, r in runs.items()},
      'ratio': round(ratio, 3),
      'marginal_images_per_s': marginal and round(marginal, 1),
      'cpu_tuning': args.cpu_tuning,
    }
    print(json.dumps(summary))


if __name__ == '__main__':
  main()
