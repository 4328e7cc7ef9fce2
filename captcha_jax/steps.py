"""The pure, jitted parts of training: state, optimizer, train/eval steps, and the data mesh.

`train_step(state, batch, stop_votes) -> (state, metrics)` and `eval_step(state, batch) ->
outputs` compile once per shape; batches are split along the mesh's 'data' axis and the state is
replicated. The train step runs per device under `shard_map`, so gradients cross devices once per
step.
"""

import functools
import logging
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax.training import train_state
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from captcha_jax import ctc, data

# The mesh axis batches are split along; the training model's BatchNorm averages over it.
DATA_AXIS = 'data'
# XLA:CPU's memory-minimising scheduler keeps fewer activations alive at once, at the same speed
# (bench/README.md). Other backends keep their defaults.
CPU_COMPILER_OPTIONS = {'xla_cpu_scheduler_type': 'CPU_SCHEDULER_TYPE_MEMORY_OPTIMIZED'}


class TrainState(train_state.TrainState):
  """Parameters, their moving average, BatchNorm statistics, optimizer state, step, dropout key.

  Evaluation and prediction read `ema_params`, which equal `params` when config.ema_decay is 0.
  """

  batch_stats: Any
  ema_params: Any
  rng: jax.Array


def make_schedule(config: ml_collections.ConfigDict, steps_per_epoch: int) -> optax.Schedule:
  """Linear warm-up to the peak learning rate, then cosine decay to 1% of it at the end."""
  total = max(config.num_epochs * steps_per_epoch, 1)
  warmup = min(int(config.warmup_epochs * steps_per_epoch), total - 1)
  return optax.warmup_cosine_decay_schedule(
    0.0, config.learning_rate, warmup, total, end_value=config.learning_rate * 0.01
  )


def make_optimizer(config: ml_collections.ConfigDict, schedule: optax.Schedule):
  """Clipped AdamW; weight decay on kernels only, never on biases or BatchNorm scales."""
  decay_mask = functools.partial(jax.tree_util.tree_map_with_path, lambda path, x: x.ndim > 1)
  return optax.chain(
    optax.clip_by_global_norm(config.grad_clip_norm),
    optax.adamw(schedule, weight_decay=config.weight_decay, mask=decay_mask),
  )


def applied_learning_rate(schedule: optax.Schedule, opt_state) -> float:
  """The learning rate of the optimizer's next update: the schedule at the optimizer's own
  count, which a skipped (non-finite) step does not advance, unlike TrainState.step."""
  return float(schedule(optax.tree_utils.tree_get(opt_state, 'ScaleByScheduleState').count))


def create_train_state(
  config: ml_collections.ConfigDict, model: nn.Module, tx, rng: jax.Array
) -> TrainState:
  """Freshly initialised state; dummy input of the configured image size."""
  init_rng, state_rng = jax.random.split(rng)
  shape = (1, config.image_height, config.image_width, 3)
  variables = jax.jit(functools.partial(model.init, train=False))(
    init_rng, jnp.zeros(shape, jnp.uint8)
  )
  return TrainState.create(
    apply_fn=model.apply,
    params=variables['params'],
    batch_stats=variables['batch_stats'],
    ema_params=jax.tree.map(jnp.copy, variables['params']),  # own buffers: the step donates both
    tx=tx,
    rng=state_rng,
  )


def train_step(
  state: TrainState,
  batch: data.Batch,
  stop_votes: jax.Array,
  ema_decay: float = 0.0,
  axis_name: str | None = None,
) -> tuple[TrainState, dict[str, jax.Array]]:
  """One optimizer step on a batch; a step whose loss or gradient is not finite is skipped.

  stop_votes: [devices] float32, 1.0 where that device's process was asked to stop. Their
  maximum comes back as metrics['stop'], the same in every process, so all processes of a run
  stop after the same step without a collective of their own.

  The moving average's decay ramps up as (1 + step) / (10 + step), so early averages are not
  dominated by the random initialisation.

  With `axis_name`, the step runs on each device under `shard_map` (see `compile_steps`): `batch`
  is the device's rows, the model (built with the same axis_name) averages BatchNorm statistics
  over the axis, and loss and gradients are summed over it once, after the backward pass. Under
  a plain `jit`, XLA's partitioner instead all-reduced the GRU's weight gradients at every step
  of its scans. Each device draws its own dropout masks.
  """

  def total(x):
    return x if axis_name is None else jax.lax.psum(x, axis_name)

  dropout_rng = jax.random.fold_in(state.rng, state.step)
  if axis_name is not None:
    dropout_rng = jax.random.fold_in(dropout_rng, jax.lax.axis_index(axis_name))
  mask = batch['mask']
  count = jnp.maximum(total(jnp.sum(mask)), 1.0)

  def loss_fn(params):
    logits, updates = state.apply_fn(
      {'params': params, 'batch_stats': state.batch_stats},
      batch['image'],
      train=True,
      rngs={'dropout': dropout_rng},
      mutable=['batch_stats'],
    )
    per_example = ctc.ctc_loss(logits, batch['labels'], batch['label_paddings'])
    return jnp.sum(per_example * mask) / count, (updates, per_example)

  (loss, (updates, per_example)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  loss, grads = total((loss, grads))
  grad_norm = optax.global_norm(grads)
  finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)

  def update(state: TrainState) -> TrainState:
    new_state = state.apply_gradients(grads=grads, batch_stats=updates['batch_stats'])
    decay = jnp.minimum(ema_decay, (1.0 + state.step) / (10.0 + state.step))
    return new_state.replace(
      ema_params=optax.incremental_update(new_state.params, state.ema_params, 1.0 - decay)
    )

  def skip(state: TrainState) -> TrainState:
    # A skipped step still counts, so checkpoint numbers (global steps) stay unique.
    return state.replace(step=state.step + 1)

  # A branch, not a select over the whole state: the select kept the old and new states alive
  # together and passed over both once more a step.
  # `skip` is branch 0, whose pass-through XLA forwards without copies on every jaxlib.
  state = jax.lax.cond(finite, update, skip, state)
  stop = jnp.max(stop_votes)
  return state, {
    'step': state.step,
    'loss': loss,
    'grad_norm': grad_norm,
    'finite': finite,
    'example_finite': jnp.isfinite(per_example),
    'stop': stop if axis_name is None else jax.lax.pmax(stop, axis_name),
  }


def eval_step(state: TrainState, batch: data.Batch) -> dict[str, jax.Array]:
  """Per-example CTC loss [batch], per-step log-probabilities [batch, time, classes], and the
  batch's labels (replicated like the rest, so every process reads every row's text)."""
  logits = state.apply_fn(
    {'params': state.ema_params, 'batch_stats': state.batch_stats}, batch['image'], train=False
  )
  return {
    'loss': ctc.ctc_loss(logits, batch['labels'], batch['label_paddings']),
    'log_probs': jax.nn.log_softmax(logits),
    'labels': batch['labels'],
    'label_paddings': batch['label_paddings'],
  }


def make_mesh() -> Mesh:
  """A 1-axis data mesh over every device: batches are split, the state is replicated."""
  return jax.make_mesh(
    (jax.device_count(),), (DATA_AXIS,), axis_types=(jax.sharding.AxisType.Auto,)
  )


def to_device(batch: data.Batch, mesh: Mesh) -> dict[str, jax.Array]:
  """Global step inputs split along the batch axis over the mesh, from this process's rows."""
  sharding = NamedSharding(mesh, P(DATA_AXIS))
  return {k: jax.make_array_from_process_local_data(sharding, v) for k, v in batch.items()}


def stop_votes(stop: bool, mesh: Mesh) -> jax.Array:
  """This process's vote to stop, on each of its devices (see `train_step`)."""
  sharding = NamedSharding(mesh, P(DATA_AXIS))
  local = np.full(jax.local_device_count(), float(stop), np.float32)
  return jax.make_array_from_process_local_data(sharding, local)


def process_shard() -> tuple[int, int]:
  """(this process's index, the process count): which share of each global batch it loads."""
  return jax.process_index(), jax.process_count()


def input_shapes(spec: data.BatchSpec, mesh: Mesh) -> dict[str, jax.ShapeDtypeStruct]:
  """The global step inputs `to_device` makes from batches of `spec`, as shapes."""
  sharding = NamedSharding(mesh, P(DATA_AXIS))
  return {
    k: jax.ShapeDtypeStruct(shape, dtype, sharding=sharding)
    for k, (shape, dtype) in spec.shapes().items()
  }


def compile_steps(
  config: ml_collections.ConfigDict, mesh: Mesh, state_shapes: TrainState
) -> tuple[Callable, Callable]:
  """Train and eval steps compiled ahead of time for states shaped like `state_shapes`.

  Their outputs are replicated so every process can read them. The train step expects a state
  whose model was built with `axis_name=DATA_AXIS`. Compiling from shapes lets a caller do it
  before any array exists (see `compile_and_create_state`).
  """
  replicated = NamedSharding(mesh, P())
  options = CPU_COMPILER_OPTIONS if mesh.devices.flat[0].platform == 'cpu' else {}
  state_shapes = jax.tree.map(
    lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated), state_shapes
  )
  per_device_step = jax.shard_map(
    functools.partial(train_step, ema_decay=config.ema_decay, axis_name=DATA_AXIS),
    mesh=mesh,
    in_specs=(P(), P(DATA_AXIS), P(DATA_AXIS)),
    out_specs=(
      P(),
      {
        'step': P(),
        'loss': P(),
        'grad_norm': P(),
        'finite': P(),
        'example_finite': P(DATA_AXIS),
        'stop': P(),
      },
    ),
    check_vma=False,  # optax.ctc_loss's scan starts from carries not marked per-device
  )
  train = jax.jit(per_device_step, donate_argnums=0, out_shardings=(replicated, replicated))
  evaluate = jax.jit(eval_step, out_shardings=replicated)
  votes = jax.ShapeDtypeStruct(
    (mesh.size,), jnp.float32, sharding=NamedSharding(mesh, P(DATA_AXIS))
  )
  train_inputs = input_shapes(data.BatchSpec.of(config, config.batch_size), mesh)
  eval_inputs = input_shapes(data.BatchSpec.of(config, config.eval_batch_size), mesh)
  return (
    train.lower(state_shapes, train_inputs, votes).compile(options),
    evaluate.lower(state_shapes, eval_inputs).compile(options),
  )


def start_from_reader(state: TrainState, config: ml_collections.ConfigDict) -> TrainState:
  """`state` with the weights of the reader `config.init_from` names, the head's rows mapped
  from its alphabet to config.alphabet."""
  from captcha_jax import transfer

  source_config, source = transfer.load_source(config.init_from)
  target = {'params': state.params, 'batch_stats': state.batch_stats}
  variables, fresh = transfer.transfer(source, source_config.alphabet, target, config.alphabet)
  logging.info(
    'Starting from %s; characters it never read, learned from scratch: %r.',
    config.init_from,
    ''.join(fresh),
  )
  params = jax.tree.map(jnp.asarray, variables['params'])
  return state.replace(
    params=params,
    ema_params=jax.tree.map(jnp.copy, params),  # own buffers: the step donates both
    batch_stats=jax.tree.map(jnp.asarray, variables['batch_stats']),
  )


def compile_and_create_state(
  config: ml_collections.ConfigDict,
  model: nn.Module,
  schedule: Callable,
  mesh: Mesh,
  after_compile: Callable[[], object] = lambda: None,
  resuming: bool = False,
) -> tuple[TrainState, Callable, Callable]:
  """The initial state, replicated over the mesh, and the compiled train and eval steps.

  The state starts from another reader when `config.init_from` names one (`transfer.py`), and
  has the ImageNet backbone when `config.pretrained` names one, unless `resuming`: a checkpoint
  will replace the state, and those weights need not exist any more. The steps are compiled
  from shapes before the state exists, then `after_compile` runs (the train command passes
  `host.release_free_memory` when asked to tune the CPU: the compiler's freed memory goes back to
  the system before the state and the step's buffers take theirs).
  """
  if config.init_from and not resuming:  # another architecture named before compiling
    from captcha_jax import transfer

    transfer.check_architecture(config)
  if config.pretrained and not resuming:  # a wrong path named before minutes of compiling
    from captcha_jax import port  # torch-free; only needed when starting from ImageNet weights

    port.check_backbone_path(config.pretrained)
  create_state = functools.partial(
    create_train_state,
    config,
    model,
    make_optimizer(config, schedule),
    jax.random.PRNGKey(config.seed),
  )
  train, evaluate = compile_steps(config, mesh, jax.eval_shape(create_state))
  after_compile()
  state = create_state()
  if config.init_from and not resuming:
    state = start_from_reader(state, config)
  if config.pretrained and not resuming:
    state = port.load_pretrained_backbone(state, config.pretrained)
  return jax.device_put(state, NamedSharding(mesh, P())), train, evaluate
