"""Training: the epoch loop, evaluation, resumption from the step, and stop requests.

`train_and_evaluate(config, workdir)` is the whole job; `cli.train` is its command line:

    python -m captcha_jax.train --config configs/default.py --workdir runs/default
"""

import functools
import logging
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.sharding import Mesh
from tqdm import tqdm

from captcha_jax import (
  batches,
  checkpoints,
  data,
  decoding,
  metrics,
  models,
  plots,
  settings,
  sources,
  steps,
  transfer,
)
from captcha_jax import workdir as run_folder
from captcha_jax.errors import ConfigError, Stopped, UserError
from captcha_jax.metric_writer import MetricWriter
from captcha_jax.vocab import Vocab


class Diverged(UserError):
  """Training cannot go on: no step of an epoch had a finite loss and gradient."""


def evaluate_split(
  eval_step: Callable,
  state: steps.TrainState,
  source: sources.ExampleSource,
  config: ml_collections.ConfigDict,
  vocab: Vocab,
  mesh: Mesh,
) -> tuple[dict[str, float], list[decoding.Reading], list[str]]:
  """The image count, loss, exact match and CER (raw and post-processed) over `source`; its
  readings and true texts, in order."""
  losses, log_probs, targets = [], [], []
  spec = data.BatchSpec.of(config, config.eval_batch_size)
  stream = batches.eval_batches(
    source, spec, vocab, shard=steps.process_shard(), workers=config.input_workers
  )
  for start, (_, batch) in zip(
    range(0, len(source), spec.size), device_batches(stream, mesh, config), strict=True
  ):
    out = jax.device_get(eval_step(state, batch))
    real = np.arange(start, start + spec.size) < len(source)  # the global batch's real rows
    losses.append(out['loss'][real])
    log_probs.append(out['log_probs'][real])
    targets += data.label_texts(out['labels'][real], out['label_paddings'][real], vocab)
  readings = decoding.read(np.concatenate(log_probs), vocab, config.fixed_label_length)
  raw, fixed = decoding.texts(readings)
  result = {
    'images': len(source),  # what the exact match's noise depends on (`checkpoints.chosen_step`)
    'loss': float(np.mean(np.concatenate(losses))),
    **metrics.reading_metrics(raw, fixed, targets),
  }
  return result, readings, targets


def device_batches(stream, mesh: Mesh, config: ml_collections.ConfigDict):
  """(indices, batch) of `stream` with each batch on the devices, copied while the previous step
  runs."""
  return batches.prefetch_to_device(
    stream, lambda item: (item[0], steps.to_device(item[1], mesh)), config.prefetch_batches
  )


def collapse_warning(texts: list[str]) -> str | None:
  """Names the CTC failure mode where every image reads the same (often empty) text."""
  if texts and all(t == '' for t in texts):
    return 'all-blank output: the model has collapsed to predicting only the CTC blank'
  if len(texts) > 1 and len(set(texts)) == 1:
    return f'constant output: every image reads {texts[0]!r}'
  return None


def results_warning(results: dict, config: ml_collections.ConfigDict, workdir: str) -> str | None:
  """What a run that reads its labelled images badly shows, and what to try; None for a run
  that reads well, or one trained on generated captchas (no labels to add)."""
  if config.data_source == 'synthetic' or not results.get('val', {}).get('images'):
    return None
  # As the readers read: held to the fixed length, where there is one.
  train_read, val_read = results['train']['accuracy_post'], results['val']['accuracy_post']
  start = '; start from the shipped reader (--config configs/finetune.py)'
  start = '' if config.init_from else start
  if train_read < 0.5:
    return (
      f'The run reads {train_read:.0%} of its own training images (validation: {val_read:.0%}): '
      'it has not learned them. Check that the labels are the texts the images show; a look '
      'far from what the reader has seen needs more labelled images or epochs '
      f'(--config.num_epochs){start}.'
    )
  if val_read < 0.9 and round(train_read - val_read, 6) >= 0.1:
    more = (
      'so may more rounds of self-training'
      if config.get('pseudo_labels')  # a round of it already
      else 'so does self-training on unlabelled ones (python -m captcha_jax.self_train '
      f'--workdir {workdir} --unlabelled FOLDER)'
    )
    return (
      f'The run reads {train_read:.0%} of its training images but {val_read:.0%} of its '
      f'validation images: it has learned its {results["train"]["images"]} training images more '
      f'than their look. More labelled images help most; {more}{start}.'
    )
  return None


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


def train_and_evaluate(
  config: ml_collections.ConfigDict,
  workdir: str | Path,
  *,
  after_compile: Callable[[], object] = lambda: None,
) -> dict:
  """Trains (resuming from WORKDIR's latest intact checkpoint), then evaluates the chosen one.

  Writes WORKDIR/config.json (the config with its automatic settings filled in from the data),
  split.json, checkpoints/, metrics.jsonl, tensorboard/, results.json, loss.png and
  predictions.png. Returns the results: per-split metrics of the checkpoint chosen by
  validation (`checkpoints.chosen_step`).
  `after_compile` runs once the steps are compiled, before the state exists.
  """
  start_time = time.time()
  settings.validate(config)
  config = transfer.absolute_sources(config)
  workdir = Path(workdir).absolute()
  if transfer.is_reader(workdir):
    raise ConfigError(
      f'{str(workdir)!r} holds a reader (reader.msgpack, of export --format reader), which '
      'predict, evaluate and export would read rather than a run trained there: train in another '
      f'--workdir (to start from that reader: --config.init_from={workdir}).'
    )
  main_process = jax.process_index() == 0  # the one that prints and writes files
  with run_folder.lock(workdir, enabled=main_process):
    # Not from a damaged step: one that is set aside leaves a run starting over, from init_from.
    resuming = bool(checkpoints.resumable_steps(workdir))
    if resuming and config.get('init_from') and not config.image_width:
      # The width the run trained at, rather than its init_from's again: that reader may be gone.
      config = config.copy_and_resolve_references()
      config.image_width = run_folder.read_config(workdir).image_width
    config, splits = sources.prepare(config, functools.partial(models.output_steps, config.model))
    fingerprint = data.split_fingerprint(splits)
    run_folder.check_resumable(workdir, config, fingerprint)
    devices = jax.device_count()
    if config.batch_size % devices or config.eval_batch_size % devices:
      raise ConfigError(
        f'batch_size={config.batch_size} and eval_batch_size={config.eval_batch_size} must '
        f'divide by the {devices} devices.'
      )
    steps_per_epoch = batches.epoch_steps(len(splits['train']), config.batch_size)
    vocab = Vocab(config.alphabet)
    model = models.create_model(
      config.model, vocab.num_classes, axis_name=steps.DATA_AXIS, blank_prior=config.blank_prior
    )
    if main_process:
      print(
        nn.tabulate(model, jax.random.key(0), depth=2, console_kwargs={'width': 140})(
          jnp.zeros((1, config.image_height, config.image_width, 3), jnp.uint8), train=False
        )
      )
    schedule = steps.make_schedule(config, steps_per_epoch)
    mesh = steps.make_mesh()
    state, train_step, eval_step = steps.compile_and_create_state(
      config, model, schedule, mesh, after_compile, resuming
    )
    if main_process:
      checkpoints.set_aside_unopenable(workdir)
    manager = checkpoints.checkpoint_manager(workdir, config.keep_checkpoints)

    def set_aside(step: int) -> None:
      if main_process:
        checkpoints.set_aside(workdir, step)
      manager.reload()

    step, progress = 0, {}
    if manager.all_steps():
      step, (state, progress) = checkpoints.first_intact(
        sorted(manager.all_steps(), reverse=True),
        functools.partial(checkpoints.restore, manager, state=state),
        str(workdir),
        set_aside,
      )
      logging.info(
        'Resumed from step %d (epoch %d, batch %d).',
        step,
        step // steps_per_epoch + 1,
        step % steps_per_epoch,
      )  # numbered as the stop's message numbers them
    if main_process:
      run_folder.save_run_settings(workdir, config, fingerprint)
    writer = MetricWriter(workdir, resumed_step=step, enabled=main_process)
    elapsed_before = writer.rows[-1]['elapsed_s'] if writer.rows else 0.0
    loop = _Loop(
      config, mesh, train_step, eval_step, splits, vocab, schedule, manager, writer, steps_per_epoch
    )
    try:
      with StopSignals() as stop:
        state = loop.run(state, step, progress, stop, start_time - elapsed_before)
      best_step, state = checkpoints.first_intact(
        checkpoints.reading_order(workdir),
        lambda s: checkpoints.restore(manager, s, state)[0],
        str(workdir),
        set_aside,
      )
    finally:
      writer.close()
      manager.close()
    results: dict = {'best_epoch': -(-best_step // steps_per_epoch), 'best_step': best_step}
    for name, source in splits.items():
      results[name], readings, targets = evaluate_split(
        eval_step, state, source, config, vocab, mesh
      )
    if main_process:
      run_folder.write_json(workdir / 'results.json', results)
      plots.save(plots.history_figure(writer.rows), workdir / 'loss.png')
      texts = [r.raw_text for r in readings]  # the test split's, the last evaluated
      figure = plots.predictions_figure(splits['test'], texts, targets)
      plots.save(figure, workdir / 'predictions.png')
    logging.info('Results of epoch %d: %s', results['best_epoch'], results)
    if warning := results_warning(results, config, str(workdir)):
      logging.warning('%s', warning)
    return results


class _Loop:
  """The epochs from a resumed step to config.num_epochs: train, validate, checkpoint, log."""

  def __init__(
    self,
    config,
    mesh,
    train_step,
    eval_step,
    splits,
    vocab,
    schedule,
    manager,
    writer,
    steps_per_epoch: int,
  ):
    self.config, self.mesh, self.splits, self.vocab = config, mesh, splits, vocab
    self.train_step, self.eval_step, self.schedule = train_step, eval_step, schedule
    self.manager, self.writer, self.steps_per_epoch = manager, writer, steps_per_epoch
    # With several processes a stop is agreed through a step's metrics, read a step late.
    self.votes_lag = jax.process_count() > 1

  def run(self, state, step: int, progress: dict, stop: StopSignals, started: float):
    done_epochs, first_batch = divmod(step, self.steps_per_epoch)
    for epoch in range(done_epochs + 1, self.config.num_epochs + 1):
      epoch_start = time.time()
      state, epoch_progress = self.train_epoch(state, epoch, first_batch, progress, stop)
      train_s = time.time() - epoch_start
      stopped = epoch_progress['stopped']
      if stopped and first_batch + epoch_progress['batches'] < self.steps_per_epoch:
        self.save_and_stop(state, epoch, epoch_progress, stop)  # resumes at the next batch
      losses = epoch_progress['loss_sum'], epoch_progress['loss_count']
      if losses[1] == 0:
        raise Diverged(
          f'Every step of epoch {epoch} had a non-finite loss or gradient, so nothing was '
          'learned: lower config.learning_rate, or look for broken images among the files '
          'logged above.'
        )
      val, readings, _ = evaluate_split(
        self.eval_step, state, self.splits['val'], self.config, self.vocab, self.mesh
      )
      row = {
        'epoch': epoch,
        'step': int(state.step),
        'train_loss': losses[0] / losses[1],
        **{f'val_{k}': v for k, v in val.items()},
        'learning_rate': steps.applied_learning_rate(self.schedule, state.opt_state),
        'train_images_per_s': epoch_progress['batches'] * self.config.batch_size / train_s,
        'epoch_s': time.time() - epoch_start,
        'elapsed_s': time.time() - started,
        'skipped_steps': epoch_progress['skipped_steps'],
      }
      warning = collapse_warning([r.raw_text for r in readings])
      if warning:
        row['collapse'] = warning
        logging.warning('Epoch %d: %s.', epoch, warning)
      self.writer.write(row)
      checkpoints.save(
        self.manager, int(state.step), state, {}, {f'val_{k}': v for k, v in val.items()}
      )
      if stopped:  # after the epoch's last batch: validated and saved as every epoch is
        self.save_and_stop(state, epoch, epoch_progress, stop)
      first_batch, progress = 0, {}
    self.manager.wait_until_finished()
    return state

  def save_and_stop(self, state, epoch: int, epoch_progress: dict, stop: StopSignals):
    step = int(state.step)
    self.manager.wait_until_finished()
    if self.manager.latest_step() != step:
      kept = {k: epoch_progress[k] for k in ('loss_sum', 'loss_count')}
      checkpoints.save(self.manager, step, state, kept)
      self.manager.wait_until_finished()
    batch = step - (epoch - 1) * self.steps_per_epoch
    raise Stopped(
      f'Stopped by {stop.name or "another process"} at epoch {epoch}, batch {batch}; saved step '
      f'{step}. Rerun the same command to resume.'
    )

  def train_epoch(self, state, epoch: int, first_batch: int, progress: dict, stop: StopSignals):
    """Epoch `epoch` from batch `first_batch` until its end or a stop request agreed by every
    process. The batches come from a generator seeded by (seed, epoch), so a resumed epoch
    replays the same order and augmentation and skips the batches already done."""
    config, dataset = self.config, self.splits['train']
    spec = data.BatchSpec.of(config, config.batch_size)
    # Epochs count from 1: the first trains on the stretch the train split's metrics then read.
    synthetic = isinstance(dataset, sources.SyntheticSource)
    source = dataset.for_epoch(epoch - 1) if synthetic else dataset
    stream = batches.train_batches(
      source,
      spec,
      self.vocab,
      (config.seed, epoch),
      data.augment_for_epoch(config.augment, epoch),
      shard=steps.process_shard(),
      first_batch=first_batch,
      workers=config.input_workers,
      processes=config.input_processes,
    )
    tally = {
      'loss_sum': progress.get('loss_sum', 0.0),
      'loss_count': progress.get('loss_count', 0),
      'skipped': [],  # the examples of skipped steps that were not finite
      'skipped_steps': 0,
      'batches': 0,
      'stopped': False,
    }
    quiet = None if jax.process_index() == 0 else True
    bar = tqdm(
      total=self.steps_per_epoch,
      initial=first_batch,
      desc=f'epoch {epoch}',
      leave=False,
      disable=quiet,
    )
    pending = None
    on_device = device_batches(stream, self.mesh, config)
    for indices, batch in on_device:
      requested = bool(stop)
      if requested and not self.votes_lag:
        tally['stopped'] = True
        break
      votes = steps.stop_votes(requested, self.mesh)
      state, step_metrics = self.train_step(state, batch, votes)
      tally['batches'] += 1
      bar.update()
      # Read the previous step's metrics, so the host never waits on the step just queued.
      agreed = pending is not None and self._record(pending, tally, source, bar)
      pending = (indices, step_metrics)
      if agreed:  # every process reads the same vote, so all stop after this same step
        tally['stopped'] = True
        break
    on_device.close()  # stops the reading threads of an epoch left early
    if pending is not None:
      self._record(pending, tally, source, bar)
    bar.close()
    if tally['skipped']:
      logging.warning(
        'Epoch %d: skipped %d example(s) in steps with a non-finite loss or gradient: %s',
        epoch,
        len(tally['skipped']),
        ', '.join(sorted(set(tally['skipped']))[:20]),
      )
    return state, tally

  def _record(self, pending, tally: dict, dataset: sources.ExampleSource, bar) -> bool:
    """Adds one step's metrics to the tally; returns whether some process voted to stop."""
    indices, step_metrics = pending
    m = jax.device_get(step_metrics)
    if m['finite']:
      tally['loss_sum'] += float(m['loss'])
      tally['loss_count'] += 1
      bar.set_postfix(loss=f'{m["loss"]:.4f}', refresh=False)
    else:
      local = m['example_finite'].reshape(jax.process_count(), -1)[jax.process_index()]
      bad = indices[~local] if not local.all() else indices
      files = [dataset.paths[i] for i in bad]
      if self.config.nan_policy == 'stop':
        raise Diverged(
          f'Non-finite loss or gradient at step {int(m["step"])}; the batch held: '
          f'{", ".join(files)}. Set --config.nan_policy=skip to skip such steps instead.'
        )
      tally['skipped'].extend(files)
      tally['skipped_steps'] += 1
    return bool(m['stop'])


if __name__ == '__main__':
  from captcha_jax import cli

  cli.train()
