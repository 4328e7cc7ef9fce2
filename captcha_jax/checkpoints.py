"""Orbax checkpoints of the TrainState: the latest few and the best by validation, resumable, with
damaged ones passed over rather than fatal."""

import logging
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


def checkpoint_manager(workdir: str | Path, keep: int = 2, *, read_only: bool = False):
  """A manager of WORKDIR/checkpoints keeping the `keep` latest steps and the best one."""
  policy = pp.AnyPreservationPolicy(
    [pp.LatestN(n=keep), pp.BestN(get_metric_fn=selection_score, n=1)]
  )
  # best_fn also makes orbax write each step's metrics to disk, so `best_step` survives restarts.
  options = ocp.CheckpointManagerOptions(
    preservation_policy=policy,
    best_fn=selection_score,
    best_mode='max',
    read_only=read_only,
    create=not read_only,
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


def restore_raw(manager, step: int) -> dict:
  """Restores `step`'s state as nested dicts of arrays on one local device, without the
  optimizer's code, whatever the device topology it was saved from (e.g. an 8-core TPU)."""
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  metadata = manager.item_metadata(step)['state']
  target = jax.tree.map(
    lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device),
    metadata,
    is_leaf=lambda m: hasattr(m, 'shape') and hasattr(m, 'dtype'),
  )
  restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target)))
  return restored['state']


def first_intact(
  manager, steps: list[int], restore_fn: Callable[[int], Any], *, move_damaged: bool
) -> tuple[int, Any]:
  """(step, restore_fn(step)) for the first of `steps` that restores; each damaged one is named
  in a warning and, with `move_damaged`, moved to checkpoints/damaged/ so that a later save can
  use its number.

  Raises DataError naming every failure when none restores.
  """
  failures = []
  for step in steps:
    try:
      return step, restore_fn(step)
    except Exception as e:  # noqa: BLE001 - orbax and tensorstore raise many kinds for bad files
      failures.append(f'step {step}: {type(e).__name__}: {str(e)[:300]}')
      logging.warning(
        'Checkpoint %d in %s is damaged, trying another: %s', step, manager.directory, failures[-1]
      )
      if move_damaged:
        _move_aside(Path(manager.directory), step)
        manager.reload()
  raise DataError(
    f'No checkpoint in {manager.directory} can be restored:\n  ' + '\n  '.join(failures)
  )


def _move_aside(directory: Path, step: int) -> None:
  damaged = directory / 'damaged'
  damaged.mkdir(exist_ok=True)
  shutil.move(str(directory / str(step)), str(damaged / f'{step}-{int(time.time())}'))


def newest_first(manager) -> list[int]:
  return sorted(manager.all_steps(), reverse=True)


def best_first(manager) -> list[int]:
  """Kept steps, the best by validation first, then the rest newest first."""
  best = manager.best_step()
  rest = newest_first(manager)
  return [best, *(s for s in rest if s != best)] if best is not None else rest


def quiet_orbax() -> None:
  """Hides orbax's INFO lines (dozens per save); its warnings and errors still show."""

  def keep(record: logging.LogRecord) -> bool:
    return record.levelno >= logging.WARNING or '/orbax/' not in record.pathname

  for handler in logging.getLogger().handlers:
    handler.addFilter(keep)
