"""A run's folder: one run at a time (a lock), what a resume must match, and files written whole.

WORKDIR holds config.json (the resolved config: prediction rebuilds the model from it),
split.json (what each split holds), checkpoints/, metrics.jsonl, results.json and pictures.
Every file is written to a temporary name and renamed, so a full disk or a kill never leaves
half a file.
"""

import contextlib
import fcntl
import hashlib
import json
import math
import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import ml_collections

from captcha_jax.errors import ConfigError

# Entries that fix the shape or meaning of the parameters: checkpoints need them unchanged.
MODEL_KEYS = ('alphabet', 'max_label_length', 'image_height', 'image_width', 'model')
# Entries that decide which image is in which split: a resume that changed them would train on
# images it had evaluated on.
SPLIT_KEYS = (
  'data_dir',
  'labels_file',
  'pseudo_labels',
  'pseudo_min_confidence',
  'data_source',
  'case',
  'split',
  'split_seed',
)
# Entries a resume reads the step counter by: it finds the epoch and the batch from the step and
# the batch size, and the batch's images from the seed's order.
STEP_KEYS = ('batch_size', 'seed')


def write_atomic(path: Path, content: str | bytes) -> None:
  """Writes `content` to a temporary file beside `path`, then renames it over `path`."""
  path = Path(path)
  temporary = path.with_name(f'.{path.name}.{os.getpid()}.tmp')
  try:
    with open(temporary, 'wb') as f:
      f.write(content.encode() if isinstance(content, str) else content)
      f.flush()
      os.fsync(f.fileno())
    os.replace(temporary, path)
  finally:
    temporary.unlink(missing_ok=True)


def json_safe(value: Any) -> Any:
  """`value` with every non-finite float replaced by None: JSON has no NaN or infinity."""
  if isinstance(value, float) and not math.isfinite(value):
    return None
  if isinstance(value, dict):
    return {k: json_safe(v) for k, v in value.items()}
  if isinstance(value, list | tuple):
    return [json_safe(v) for v in value]
  return value


def write_json(path: Path, value: Any) -> None:
  write_atomic(path, json.dumps(json_safe(value), indent=2, ensure_ascii=False) + '\n')


@contextlib.contextmanager
def lock(workdir: Path, enabled: bool = True) -> Iterator[None]:
  """Holds WORKDIR/.lock for the block: a second run on the same folder is refused. The lock
  goes with the process that holds it, however it ends."""
  if not enabled:
    yield
    return
  workdir.mkdir(parents=True, exist_ok=True)
  with open(workdir / '.lock', 'a+') as f:
    try:
      fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      f.seek(0)
      holder = f.read().strip() or 'unknown'
      raise ConfigError(
        f'{str(workdir)!r} is in use by another run (process {holder}): wait for it to end, '
        'or use another --workdir.'
      ) from None
    f.seek(0)
    f.truncate()
    f.write(str(os.getpid()))
    f.flush()
    try:
      yield
    finally:
      fcntl.flock(f, fcntl.LOCK_UN)


def read_config(workdir: Path) -> ml_collections.ConfigDict:
  """WORKDIR/config.json as a ConfigDict; ConfigError when there is none or it is damaged."""
  path = Path(workdir) / 'config.json'
  if not path.exists():
    raise ConfigError(
      f'{str(workdir)!r} has no config.json: is it the --workdir of a training run?'
    )
  try:
    saved = json.loads(path.read_text())
  except (ValueError, UnicodeDecodeError) as e:
    raise ConfigError(f'{str(path)!r} is damaged ({e}).') from e
  if not isinstance(saved, dict) or not all(k in saved for k in MODEL_KEYS):
    raise ConfigError(f'{str(path)!r} is damaged: not the config of a run.')
  return ml_collections.ConfigDict(saved)


def split_changes(
  workdir: Path, fingerprint: dict[str, list[str]], names: Sequence[str] = ('train', 'val', 'test')
) -> list[str]:
  """How the splits `names` of `fingerprint` differ from WORKDIR's split.json ('train split (752
  → 753 images)', ...); none for a run older than split.json."""
  if not (workdir / 'split.json').exists():
    return []
  saved, now = read_split(workdir), split_digest(fingerprint)
  counts = {name: (saved[name]['images'], now[name]['images']) for name in now if name in names}
  return [
    f'{name} split ({was} → {count} images)' if was != count else f'{name} split (other files)'
    for name, (was, count) in counts.items()
    if saved.get(name) != now[name]
  ]


def read_split(workdir: Path) -> dict[str, dict]:
  """WORKDIR's split.json (`split_digest`); ConfigError when it is missing or damaged."""
  path = workdir / 'split.json'
  try:
    split = json.loads(path.read_text())
  except FileNotFoundError as e:
    raise ConfigError(f'{str(workdir)!r} has no split.json: has its run started?') from e
  except (ValueError, UnicodeDecodeError) as e:
    raise ConfigError(f'{str(path)!r} is damaged ({e}).') from e
  if not isinstance(split, dict) or not all(
    isinstance(split.get(name), dict) and isinstance(split[name].get('images'), int)
    for name in ('train', 'val', 'test')
  ):
    raise ConfigError(f'{str(path)!r} is damaged: not the split of a run.')
  return split


def split_digest(fingerprint: dict[str, list[str]]) -> dict[str, dict]:
  """Per split: how many images, and a hash of their names."""
  return {
    name: {'images': len(files), 'sha256': hashlib.sha256('\n'.join(files).encode()).hexdigest()}
    for name, files in fingerprint.items()
  }


def check_resumable(
  workdir: Path, config: ml_collections.ConfigDict, fingerprint: dict[str, list[str]]
) -> None:
  """Raises ConfigError when WORKDIR's checkpoints were trained with another model, split, batch
  size or seed.

  Only checkpoints bind a workdir: a folder whose run failed before saving one takes any config.
  """
  if not any(p.name.isdigit() for p in (workdir / 'checkpoints').glob('*')):
    return
  saved = json.loads(read_config(workdir).to_json())
  current = json.loads(config.to_json_best_effort())
  # A key a run's config.json lacks came after it (e.g. pseudo_labels): the split digest below
  # still tells whether the files changed.
  keys = [k for k in (*MODEL_KEYS, *SPLIT_KEYS, *STEP_KEYS) if k in saved]
  if 'data_dir' in saved:  # runs before data_dir (then labels_file) was saved absolute
    saved['data_dir'] = os.path.abspath(saved['data_dir'])
    if saved.get('labels_file') not in (None, '', 'auto'):
      named = os.path.join(saved['data_dir'], os.path.expanduser(saved['labels_file']))
      saved['labels_file'] = os.path.normpath(named)
  changed = [k for k in keys if saved[k] != current.get(k)]
  changed = changed or split_changes(workdir, fingerprint)
  if changed:
    raise ConfigError(
      f'{str(workdir)!r} holds a run with a different {", ".join(changed)}: its checkpoints '
      'cannot be resumed with this config and data. Use a new --workdir, or the saved '
      'config.json and data.'
    )


def save_run_settings(
  workdir: Path, config: ml_collections.ConfigDict, fingerprint: dict[str, list[str]]
) -> None:
  """Writes config.json and split.json, once the config is known to fit the checkpoints."""
  write_atomic(workdir / 'config.json', config.to_json_best_effort(indent=2) + '\n')
  write_json(workdir / 'split.json', split_digest(fingerprint))
