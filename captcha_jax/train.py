"""Training: TrainState, the jitted train/eval steps, the epoch loop, checkpoints, and `main`.

    python -m captcha_jax.train --config configs/default.py --workdir runs/default \
        --config.data_dir=/path/to/captcha_images_v2
"""

import json
import logging
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import Mesh
from tensorboardX import SummaryWriter
from tqdm import tqdm

from captcha_jax import checkpoints, ctc, data, host, metrics, models, plots, steps
from captcha_jax.vocab import Vocab

# Config entries that fix the shape or meaning of the parameters: a workdir keeps them.
MODEL_KEYS = ('alphabet', 'max_label_length', 'image_height', 'image_width', 'model')


class UsageError(ValueError):
  """A config or workdir that cannot be used as given; the message says what to change."""


def evaluate(
  eval_fn: Callable,
  state: steps.TrainState,
  dataset: data.Dataset,
  config,
  vocab: Vocab,
  mesh: Mesh,
) -> tuple[dict[str, float], list[str]]:
  """Loss, exact match and CER (raw and post-processed) over `dataset`; and the raw texts."""
  losses, log_probs = [], []
  size = config.eval_batch_size
  for start, batch in zip(
    range(0, len(dataset), size), data.eval_batches(dataset, size, shard=steps.shard()), strict=True
  ):
    out = jax.device_get(eval_fn(state, steps.to_device(batch, mesh)))
    real = np.arange(start, start + size) < len(dataset)  # the global batch's real rows
    losses.append(out['loss'][real])
    log_probs.append(out['log_probs'][real])
  raw, _, fixed = ctc.decode_texts(np.concatenate(log_probs), vocab, config.label_length)
  result = {
    'loss': float(np.mean(np.concatenate(losses))),
    **metrics.reading_metrics(raw, fixed, dataset.texts),
  }
  return result, raw


def collapse_warning(texts: list[str]) -> str | None:
  """Names the CTC failure mode where every image reads the same (often empty) text."""
  if texts and all(t == '' for t in texts):
    return 'all-blank output: the model has collapsed to predicting only the CTC blank'
  if len(texts) > 1 and len(set(texts)) == 1:
    return f'constant output: every image reads {texts[0]!r}'
  return None


def check_workdir_config(config: ml_collections.ConfigDict, workdir: Path) -> None:
  """Refuses to resume a workdir whose saved model/alphabet/image size differ from `config`."""
  path = workdir / 'config.json'
  if not path.exists():
    return
  saved = json.loads(path.read_text())
  current = json.loads(config.to_json_best_effort())
  changed = [k for k in MODEL_KEYS if k in saved and saved[k] != current[k]]
  if changed:
    raise UsageError(
      f'{str(workdir)!r} holds a run with a different {", ".join(changed)}: its checkpoints '
      'cannot be resumed with this config. Use a new --workdir, or the saved config.'
    )


def write_scalars(writer, row: dict, batch_size: int) -> None:
  """One epoch's metrics as TensorBoard scalars at the epoch's last global step."""
  step = row['step']
  for key in (
    'train_loss',
    'val_loss',
    'val_accuracy',
    'val_cer',
    'val_accuracy_post',
    'learning_rate',
    'train_images_per_s',
  ):
    writer.add_scalar(key, row[key], step)
  writer.add_scalar('train_steps_per_s', row['train_images_per_s'] / batch_size, step)
  writer.flush()


def _read_history(path: Path, last_epoch: int) -> list[dict]:
  """metrics.jsonl rows up to `last_epoch`: rows past the restored checkpoint are dropped."""
  if not path.exists():
    return []
  rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
  return [r for r in rows if r['epoch'] <= last_epoch]


def _write_history(path: Path, rows: list[dict]) -> None:
  path.write_text(''.join(json.dumps(r) + '\n' for r in rows))


def load_splits(config: ml_collections.ConfigDict, vocab: Vocab) -> dict[str, data.Dataset]:
  """The configured data decoded and split into train/val/test (the same files either source)."""
  if config.data_source == 'tfds':
    from captcha_jax import tfds_builder  # optional dependency: pip install 'captcha-jax[tfds]'

    return tfds_builder.load_splits(config, vocab)
  if config.data_source != 'folder':
    raise UsageError(f"config.data_source must be 'folder' or 'tfds', got {config.data_source!r}.")
  dataset = data.load_dataset(
    config.data_dir,
    vocab,
    height=config.image_height,
    width=config.image_width,
    max_label_length=config.max_label_length,
    skip_bad_files=config.skip_bad_files,
  )
  indices = data.split_indices(len(dataset), config.split, config.split_seed)
  return {
    name: dataset.subset(idx) for name, idx in zip(('train', 'val', 'test'), indices, strict=True)
  }


def check_label_fit(splits: dict[str, data.Dataset], ctc_steps: int) -> None:
  """Raises when some label needs more CTC steps than the model emits (its loss would be ~1e5)."""
  worst = max(
    (
      (ctc.required_steps(ds.labels[i, : ds.lengths[i]]), ds.paths[i])
      for ds in splits.values()
      for i in range(len(ds))
    ),
  )
  if worst[0] > ctc_steps:
    raise data.DataError(
      f'{worst[1]!r} needs {worst[0]} CTC steps but the model emits {ctc_steps} for '
      'this image width: lower max_label_length, widen the image, or keep more width in '
      'config.model.backbone_strides.'
    )


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str | Path) -> dict:
  """Trains (resuming from WORKDIR's latest checkpoint), then evaluates the best checkpoint.

  Writes WORKDIR/config.json, checkpoints/, metrics.jsonl, results.json, loss.png and
  predictions.png. Returns the results: per-split metrics of the best-by-validation checkpoint.
  """
  start_time = time.time()
  workdir = Path(workdir).absolute()
  vocab = Vocab(config.alphabet)
  model = models.create_model(config.model, vocab.num_classes, axis_name=steps.DATA_AXIS)
  ctc_steps = models.output_steps(model, config.image_height, config.image_width)
  splits = load_splits(config, vocab)
  check_label_fit(splits, ctc_steps)
  logging.info(
    'Images: %s; %d CTC steps per image.',
    ', '.join(f'{k} {len(v)}' for k, v in splits.items()),
    ctc_steps,
  )
  if config.batch_size % jax.device_count() or config.eval_batch_size % jax.device_count():
    raise UsageError(
      f'batch_size={config.batch_size} and eval_batch_size={config.eval_batch_size} must '
      f'divide by the {jax.device_count()} devices.'
    )

  steps_per_epoch = len(splits['train']) // config.batch_size
  mesh = steps.make_mesh()
  main_process = jax.process_index() == 0  # the one that prints and writes files
  if main_process:
    print(
      nn.tabulate(model, jax.random.key(0), depth=2, console_kwargs={'width': 140})(
        jnp.zeros((1, config.image_height, config.image_width, 3)), train=False
      )
    )

  workdir.mkdir(parents=True, exist_ok=True)
  check_workdir_config(config, workdir)
  if main_process:
    (workdir / 'config.json').write_text(config.to_json_best_effort(indent=2))
  schedule = steps.make_schedule(config, steps_per_epoch)
  state, p_train_step, p_eval_step = steps.compile_and_create_state(config, model, schedule, mesh)
  manager = checkpoints.checkpoint_manager(workdir, config.keep_checkpoints)
  progress = {'epoch': 0, 'batch': steps_per_epoch}  # "epoch 0 complete": a fresh start
  if manager.latest_step() is not None:
    state, progress = checkpoints.restore(manager, manager.latest_step(), state)
    logging.info(
      'Resumed from step %d: epoch %d, %d batch(es) done.',
      manager.latest_step(),
      progress['epoch'],
      progress['batch'],
    )
  finished_epochs = progress['epoch'] - (progress['batch'] < steps_per_epoch)
  history_path = workdir / 'metrics.jsonl'
  history = _read_history(history_path, finished_epochs)
  elapsed_before = history[-1]['elapsed_s'] if history else 0.0

  tensorboard = SummaryWriter(str(workdir / 'tensorboard')) if main_process else None
  with StopSignals() as stop:
    for epoch in range(finished_epochs + 1, config.num_epochs + 1):
      epoch_start = time.time()
      resumed = epoch == progress['epoch']
      first_batch = progress['batch'] if resumed else 0
      state, done, train_losses, skipped = train_epoch(
        p_train_step, state, splits['train'], config, epoch, first_batch, mesh, stop
      )
      train_s = time.time() - epoch_start
      train_losses = (progress.get('losses', []) if resumed else []) + train_losses
      if done < steps_per_epoch:  # a stop signal: save where we are, then leave
        if manager.latest_step() != int(state.step):
          here = {'epoch': epoch, 'batch': done, 'losses': train_losses}
          checkpoints.save(manager, int(state.step), state, here)
        manager.wait_until_finished()
        raise SystemExit(
          f'Stopped by {stop.name} at epoch {epoch}, batch {done}; saved step '
          f'{int(state.step)}. Rerun the same command to resume.'
        )
      val, val_texts = evaluate(p_eval_step, state, splits['val'], config, vocab, mesh)
      row = {
        'epoch': epoch,
        'step': int(state.step),
        'train_loss': float(np.mean(train_losses)) if train_losses else float('nan'),
        **{f'val_{k}': v for k, v in val.items()},
        'learning_rate': float(schedule(int(state.step))),
        'train_images_per_s': (done - first_batch) * config.batch_size / train_s,
        'epoch_s': time.time() - epoch_start,
        'elapsed_s': elapsed_before + time.time() - start_time,
        'skipped_steps': len(skipped),
      }
      warning = collapse_warning(val_texts)
      if warning:
        row['collapse'] = warning
        logging.warning('Epoch %d: %s.', epoch, warning)
      history.append(row)
      if main_process:
        _write_history(history_path, history)
        write_scalars(tensorboard, row, config.batch_size)
        print(
          f'epoch {epoch:3d}  train_loss {row["train_loss"]:.4f}  val_loss {val["loss"]:.4f}  '
          f'val_acc {val["accuracy"]:.4f}  val_cer {val["cer"]:.4f}  '
          f'lr {row["learning_rate"]:.2e}  {row["epoch_s"]:.1f}s',
          flush=True,
        )
      checkpoints.save(
        manager,
        int(state.step),
        state,
        {'epoch': epoch, 'batch': steps_per_epoch},
        {f'val_{k}': v for k, v in val.items()},
      )
  manager.wait_until_finished()
  if tensorboard is not None:
    tensorboard.close()

  best = checkpoints.best_step(manager)
  if best is None:
    raise RuntimeError(f'No checkpoint in {manager.directory}: config.num_epochs is 0?')
  state, best_progress = checkpoints.restore(manager, best, state)
  manager.close()
  results: dict[str, Any] = {'best_epoch': best_progress['epoch'], 'best_step': best}
  test_texts = []
  for name, dataset in splits.items():
    split_metrics, texts = evaluate(p_eval_step, state, dataset, config, vocab, mesh)
    results[name] = split_metrics
    test_texts = texts if name == 'test' else test_texts
  if main_process:
    (workdir / 'results.json').write_text(json.dumps(results, indent=2) + '\n')
    plots.plot_history(history, workdir / 'loss.png')
    test = splits['test']
    if len(test):
      plots.plot_predictions(test.images, test_texts, test.texts, workdir / 'predictions.png')
  logging.info('Results of epoch %d: %s', best_progress['epoch'], json.dumps(results))
  return results


class StopSignals:
  """Turns SIGINT/SIGTERM into a request the loop honours between steps (then saves and exits).

  Preemptible machines send SIGTERM before they go; a second signal exits at once.
  """

  def __init__(self):
    self.name: str | None = None
    self._previous: dict = {}

  def __bool__(self) -> bool:
    return self.name is not None

  def _handle(self, signum, frame):
    if self.name is not None:
      signal.signal(signum, self._previous.get(signum, signal.SIG_DFL))
      signal.raise_signal(signum)
    self.name = signal.Signals(signum).name
    logging.warning('%s received: saving a checkpoint after this step.', self.name)

  def __enter__(self) -> 'StopSignals':
    if threading.current_thread() is threading.main_thread():  # signals only reach main
      for signum in (signal.SIGINT, signal.SIGTERM):
        self._previous[signum] = signal.signal(signum, self._handle)
    return self

  def __exit__(self, *exc) -> None:
    for signum, handler in self._previous.items():
      signal.signal(signum, handler)


def train_epoch(
  step_fn: Callable,
  state: steps.TrainState,
  dataset: data.Dataset,
  config: ml_collections.ConfigDict,
  epoch: int,
  first_batch: int,
  mesh: Mesh,
  stop: StopSignals,
) -> tuple[steps.TrainState, int, list[float], list[str]]:
  """Runs epoch `epoch` from batch `first_batch` until its end or a stop request.

  The batches come from a generator seeded by (seed, epoch), so a resumed epoch replays the same
  order and augmentation and skips the batches already done. Returns the state, the number of
  batches of the epoch done, the losses of finite steps, and the files of skipped steps.
  """
  batches = data.train_batches(
    dataset,
    config.batch_size,
    (config.seed, epoch),
    config.augment,
    shard=steps.shard(),
    first_batch=first_batch,
  )
  total = len(dataset) // config.batch_size
  losses: list[float] = []
  skipped: list[str] = []
  pending = None
  done = first_batch
  quiet = None if jax.process_index() == 0 else True
  bar = tqdm(total=total, initial=first_batch, desc=f'epoch {epoch}', leave=False, disable=quiet)
  for batch in batches:
    if stop:
      break
    state, step_metrics = step_fn(state, steps.to_device(batch, mesh))
    done += 1
    bar.update()
    # Read the previous step's metrics, so the host never waits on the step just queued.
    if pending is not None:
      _record(pending, losses, skipped, dataset, bar, config.nan_policy)
    pending = (batch['index'], step_metrics)
  if pending is not None:
    _record(pending, losses, skipped, dataset, bar, config.nan_policy)
  bar.close()
  if skipped:
    logging.warning(
      'Epoch %d: skipped %d example(s) in steps with a non-finite loss or gradient: %s',
      epoch,
      len(skipped),
      ', '.join(sorted(set(skipped))[:20]),
    )
  return state, done, losses, skipped


def _record(pending, losses: list, skipped: list, dataset: data.Dataset, bar, policy: str):
  indices, step_metrics = pending
  m = jax.device_get(step_metrics)
  if m['finite']:
    losses.append(float(m['loss']))
    bar.set_postfix(loss=f'{m["loss"]:.4f}', refresh=False)
    return
  local = m['example_finite'].reshape(jax.process_count(), -1)[jax.process_index()]
  bad = indices[~local] if not local.all() else indices
  files = [dataset.paths[i] for i in bad]
  if policy == 'stop':
    raise FloatingPointError(
      f'Non-finite loss or gradient at step {int(m["step"])}; the batch held: '
      f'{", ".join(files)}. Set --config.nan_policy=skip to skip such steps instead.'
    )
  skipped.extend(files)


def initialize_distributed(
  coordinator_address: str | None, num_processes: int | None, process_id: int | None
) -> None:
  """Joins a multi-process run through jax.distributed; a no-op for a single process.

  With a coordinator address, the count and id must be given too (flags or the JAX_* variables
  jax reads); with `auto`, jax detects the cluster (Cloud TPU, SLURM, ...) itself.
  """
  if not coordinator_address:
    return
  # CPU processes exchange gradients over gloo; GPU/TPU use their own collectives.
  jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  if coordinator_address == 'auto':
    jax.distributed.initialize()
  else:
    jax.distributed.initialize(coordinator_address, num_processes, process_id)
  logging.info(
    'Process %d of %d; %d local and %d global devices.',
    jax.process_index(),
    jax.process_count(),
    jax.local_device_count(),
    jax.device_count(),
  )


def main(argv):
  del argv
  from absl import flags

  checkpoints.quiet_orbax()
  config = flags.FLAGS.config
  if not flags.FLAGS.coordinator_address:  # a multi-process run's launcher picks its devices
    host.use_cpu_cores(config.batch_size, config.eval_batch_size)
  initialize_distributed(
    flags.FLAGS.coordinator_address, flags.FLAGS.num_processes, flags.FLAGS.process_id
  )
  try:
    train_and_evaluate(config, flags.FLAGS.workdir)
  except (data.DataError, UsageError, FileNotFoundError) as e:
    raise SystemExit(f'error: {e}') from None


if __name__ == '__main__':
  host.restart_with_huge_pages()  # before any work: it re-executes the process
  from absl import app, flags
  from ml_collections import config_flags

  config_flags.DEFINE_config_file('config', None, 'Path to a config file.', lock_config=True)
  flags.DEFINE_string('workdir', None, 'Where checkpoints, metrics and results go.')
  flags.DEFINE_string(
    'coordinator_address',
    None,
    'host:port of process 0 for a multi-process run, or "auto" to let jax detect the cluster.',
  )
  flags.DEFINE_integer('num_processes', None, 'Processes in a multi-process run.')
  flags.DEFINE_integer('process_id', None, 'This process, 0..num_processes-1.')
  flags.mark_flags_as_required(['config', 'workdir'])
  app.run(main)
