"""What the benches share: the repository's root and its config files, loaded by path (the
`configs/` folder is part of the repository, not of the installed package), commands run once
per folder, and virtual environments of their own for the programs they run beside captcha_jax
(ddddocr, captcha libraries)."""

import importlib.util
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import ml_collections

from captcha_jax import settings

ROOT = Path(__file__).resolve().parents[1]


def load_config(path: str) -> ml_collections.ConfigDict:
  """`get_config()` of a config file, its path relative to the repository's root."""
  spec = importlib.util.spec_from_file_location('bench_config', ROOT / path)
  module = importlib.util.module_from_spec(spec)
  with settings.config_file_imports(spec.origin):
    spec.loader.exec_module(module)
  return module.get_config()


def dataset_config(path: str = 'configs/default.py') -> ml_collections.ConfigDict:
  """A config with the settings a run on the default captcha set reads from its data filled in,
  as that run's config.json holds them: for benches that build the model without the data."""
  config = load_config(path)
  config.alphabet = '2345678bcdefgmnpwxy'
  config.max_label_length = config.fixed_label_length = 5
  config.image_width = config.image_width or 200
  return config


def own_venv(name: str, packages: list[str], module: str) -> Path:
  """The Python of ~/.cache/captcha_jax/NAME, a venv holding `packages` (pinned: they are never
  dependencies of captcha_jax, and pin their own numpy or Pillow), created on first use; `module`
  is what must import there."""
  folder = Path('~/.cache/captcha_jax').expanduser() / name
  python = folder / 'bin' / 'python'
  check = [str(python), '-c', f'import {module}']
  if python.exists() and subprocess.run(check, capture_output=True).returncode == 0:
    return python
  print(f'Installing {" ".join(packages)} into {folder} (once)…', file=sys.stderr)
  subprocess.run([sys.executable, '-m', 'venv', str(folder)], check=True)
  subprocess.run([str(python), '-m', 'pip', 'install', '--quiet', *packages], check=True)
  subprocess.run(check, check=True)
  return python


def peak_rss_mb() -> float:
  """This process's peak resident memory so far (Linux reports ru_maxrss in KiB)."""
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_logged(command: list[str], log: Path, what: str) -> float:
  """Runs `command` from the repository's root, its output into `log`; returns the wall time, or
  exits naming `what` failed. The command is kept beside the log, and its time once it finishes:
  run again, a finished command gives its time rather than timing a resume with nothing to do,
  a stopped one resumes, and another command is refused, since the run in that folder would
  then be reported under the new command's settings."""
  record = log.with_suffix('.wall_s.json')
  if record.exists():
    done = json.loads(record.read_text())
    if done['command'] != command:
      sys.exit(
        f'{what}: {log.parent} holds a run of another command (see {record}): give another '
        '--workdir.'
      )
    if done['seconds'] is not None:
      return done['seconds']
    print(f'{what}: resuming a run that stopped; its time counts from here', flush=True)
  record.write_text(json.dumps({'command': command, 'seconds': None}))
  start = time.time()
  with open(log, 'a') as f:
    if subprocess.run(command, stdout=f, stderr=subprocess.STDOUT, cwd=ROOT).returncode:
      sys.exit(f'{what} failed; see {log}')
  seconds = time.time() - start
  record.write_text(json.dumps({'command': command, 'seconds': seconds}))
  return seconds
