"""Orbax checkpoints of the TrainState: the latest few and the best by validation kept, resumable,
with damaged ones passed over rather than fatal; and the one a run is read from (`chosen_step`)."""

import json
import logging
import math
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp
from orbax.checkpoint.checkpoint_managers import preservation_policy as pp

from captcha_jax.errors import DataError


def selection_score(metrics: dict[str, float]) -> float:
  """Higher is better: val exact match, ties broken by lower CER, then lower loss."""
  return metrics['val_accuracy'] - 1e-3 * metrics['val_cer'] - 1e-6 * metrics['val_loss']


def checkpoint_manager(workdir: str | Path, keep: int = 2):
  """A manager of WORKDIR/checkpoints keeping the `keep` latest steps and the best one."""
  policy = pp.AnyPreservationPolicy(
    # A step saved on a stop signal has no metrics: LatestN keeps it while it is among the latest.
    [
      pp.LatestN(n=keep),
      pp.BestN(get_metric_fn=selection_score, n=1, keep_checkpoints_without_metrics=False),
    ]
  )
  # best_fn also makes orbax write each step's metrics to disk, so `best_step` survives restarts.
  options = ocp.CheckpointManagerOptions(
    preservation_policy=policy,
    best_fn=selection_score,
    best_mode='max',
  )
  # Named handlers let a fresh manager read item metadata before any save or restore.
  handlers = {'state': ocp.StandardCheckpointHandler(), 'progress': ocp.JsonCheckpointHandler()}
  return ocp.CheckpointManager(
    Path(workdir, 'checkpoints').absolute(), options=options, item_handlers=handlers
  )


def save(manager, step: int, state: Any, progress: dict, metrics: dict | None = None) -> None:
  """Saves asynchronously; an interrupted save leaves no step behind (orbax writes atomically).

  progress: what the step number cannot give (the epoch's losses so far, for a mid-epoch save).
  metrics: validation metrics at the end of an epoch; None for a mid-epoch save (a stop
  signal), never picked as the best.
  """
  args = ocp.args.Composite(
    state=ocp.args.StandardSave(state), progress=ocp.args.JsonSave(progress)
  )
  manager.save(step, args=args, metrics=metrics)


def restore(manager, step: int, state: Any) -> tuple[Any, dict]:
  """Restores `step` into the structure, shapes and shardings of `state`; and its progress."""
  abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, state)
  restored = manager.restore(
    step,
    args=ocp.args.Composite(
      state=ocp.args.StandardRestore(abstract), progress=ocp.args.JsonRestore()
    ),
  )
  return restored['state'], restored['progress']


def step_numbers(workdir: str | Path) -> list[int]:
  """The steps saved in WORKDIR/checkpoints, newest first."""
  folder = Path(workdir, 'checkpoints')
  return sorted((int(p.name) for p in folder.glob('*') if p.name.isdigit()), reverse=True)


def saved_metrics(workdir: str | Path, step: int) -> dict:
  """The validation metrics saved with `step` (raises OSError for a mid-epoch save)."""
  return json.loads(Path(workdir, 'checkpoints', str(step), 'metrics', 'metrics').read_text())


def wilson_lower(accuracy: float, images: int, z: float = 2.0) -> float:
  """The lower end of the Wilson score interval (z = 2: about 95%) of an exact match measured on
  `images` images; unlike p − z·√(p(1−p)/n) it stays below a perfect score."""
  if not images:
    return accuracy
  z2n = z * z / images
  spread = z * math.sqrt(accuracy * (1 - accuracy) / images + z2n / (4 * images))
  return (accuracy + z2n / 2 - spread) / (1 + z2n)


def chosen_step(metrics: dict[int, dict]) -> int | None:
  """Of steps with validation metrics, the one to read: the newest whose val exact match is
  within the best's 95% interval (`wilson_lower`).

  Exact match on n validation images moves in steps of 1/n, and the best of many epochs is the
  luckiest: on the 20 images of a 200-label fine-tuning run an early epoch leads by an image or
  two by chance, while the weights trained to the end of the schedule read better
  (bench/README.md). Steps saved without `val_images` allow no margin.
  """
  if not metrics:
    return None
  best = metrics[max(metrics, key=lambda s: (selection_score(metrics[s]), s))]
  lowest = wilson_lower(best['val_accuracy'], best.get('val_images', 0))
  return max(s for s, m in metrics.items() if m['val_accuracy'] >= lowest)


def reading_order(workdir: str | Path) -> list[int]:
  """Saved steps, the chosen one first (`chosen_step`), then the rest newest first; read from the
  files themselves, so one damaged step cannot hide the others."""
  metrics = {}
  for step in step_numbers(workdir):
    try:
      saved = saved_metrics(workdir, step)
      selection_score(saved)  # raises on metrics of another shape
      metrics[step] = saved
    except (OSError, ValueError, KeyError, TypeError):
      pass  # a mid-epoch save has no metrics; a damaged step fails when restored
  chosen = chosen_step(metrics)
  rest = [s for s in step_numbers(workdir) if s != chosen]
  return [chosen, *rest] if chosen is not None else rest


def restore_raw(workdir: str | Path, step: int) -> dict:
  """`step`'s state as nested dicts of arrays on one local device, without a manager or the
  optimizer's code, whatever the device topology it was saved from (e.g. an 8-core TPU)."""
  path = Path(workdir, 'checkpoints', str(step), 'state').absolute()
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  # The item's handler, not a Checkpointer: a Checkpointer also looks for the step-level metadata
  # file inside `state/` and warns on every read that it is not there.
  handler = ocp.StandardCheckpointHandler()
  try:
    target = jax.tree.map(
      lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
      handler.metadata(path).tree,
      is_leaf=lambda m: hasattr(m, 'shape') and hasattr(m, 'dtype'),
    )
    return handler.restore(path, args=ocp.args.StandardRestore(target))
  finally:
    handler.close()


def first_intact(
  steps: list[int],
  restore_fn: Callable[[int], Any],
  where: str,
  on_damaged: Callable[[int], object] = lambda step: None,
) -> tuple[int, Any]:
  """(step, restore_fn(step)) for the first of `steps` that restores; each that failed before it
  is named in a warning and handed to `on_damaged`. Raises DataError naming every failure when
  none restores, and hands none over: when no step restores, the fault is more likely this
  program's (another state layout, a failing disk) than every file's, so none is set aside."""
  failures, failed = [], []
  for step in steps:
    try:
      restored = restore_fn(step)
    except Exception as e:  # noqa: BLE001 - orbax and tensorstore raise many kinds for bad files
      failures.append(f'step {step}: {type(e).__name__}: {str(e)[:300]}')
      failed.append(step)
      logging.warning(
        'Checkpoint %d in %s is damaged, trying another: %s', step, where, failures[-1]
      )
      continue
    for damaged in failed:
      on_damaged(damaged)
    return step, restored
  raise DataError(
    f'No checkpoint in {where} can be restored (none was moved):\n  ' + '\n  '.join(failures)
  )


def set_aside(workdir: str | Path, step: int) -> None:
  """Moves a damaged step to WORKDIR/checkpoints/damaged/, so a later save can use its number."""
  folder = Path(workdir, 'checkpoints')
  damaged = folder / 'damaged'
  damaged.mkdir(exist_ok=True)
  shutil.move(str(folder / str(step)), str(damaged / f'{step}-{int(time.time())}'))


def _openable(workdir: str | Path, step: int) -> bool:
  """Whether orbax's manager can open the step's folder: its metadata, if any, is JSON."""
  path = Path(workdir, 'checkpoints', str(step), '_CHECKPOINT_METADATA')
  try:
    if path.exists():
      json.loads(path.read_text())
  except (OSError, ValueError):
    return False
  return True


def resumable_steps(workdir: str | Path) -> list[int]:
  """The steps a run resumes from, newest first: those `set_aside_unopenable` leaves. Read alike
  by every process, before the main one moves any."""
  return [step for step in step_numbers(workdir) if _openable(workdir, step)]


def set_aside_unopenable(workdir: str | Path) -> None:
  """Sets aside steps whose orbax metadata is not even JSON: orbax's manager cannot open a
  folder that holds one."""
  for step in step_numbers(workdir):
    if not _openable(workdir, step):
      logging.warning('Checkpoint %d in %s is damaged (unreadable metadata).', step, workdir)
      set_aside(workdir, step)


def quiet_orbax() -> None:
  """Hides orbax's INFO lines (dozens per save); its warnings and errors still show."""

  def keep(record: logging.LogRecord) -> bool:
    return record.levelno >= logging.WARNING or '/orbax/' not in record.pathname

  for handler in logging.getLogger().handlers:
    handler.addFilter(keep)
