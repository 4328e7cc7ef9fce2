"""Flax modules: a torchvision-compatible ResNet-18 trunk, a bidirectional GRU, and the CRNN.

Layer names and padding follow torchvision's `resnet18` exactly (explicit (1, 1) padding where
torch pads, never 'SAME'), so `port.py` can load its ImageNet weights one to one.
"""

import functools
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from captcha_jax.vocab import BLANK_ID

Strides = tuple[int, int]
# The statistics torchvision's ImageNet weights were trained with.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# torchvision's resnet18 stage strides; a CRNN keeps width with (2, 1) in late stages instead.
TORCHVISION_STRIDES = ((1, 1), (2, 2), (2, 2), (2, 2))


def _batch_norm(train: bool, dtype: Any, axis_name: str | None) -> functools.partial:
  """nn.BatchNorm with torch's BatchNorm2d settings (Flax momentum 0.9 = torch's 0.1)."""
  return functools.partial(
    nn.BatchNorm,
    use_running_average=not train,
    momentum=0.9,
    epsilon=1e-5,
    dtype=dtype,
    axis_name=axis_name,
  )


class BasicBlock(nn.Module):
  """ResNet basic block: two 3×3 convs and a residual, with a 1×1 projection when shapes change."""

  features: int
  strides: Strides = (1, 1)
  dtype: Any = jnp.float32
  axis_name: str | None = None

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    conv = functools.partial(nn.Conv, use_bias=False, dtype=self.dtype)
    norm = _batch_norm(train, self.dtype, self.axis_name)
    y = conv(self.features, (3, 3), self.strides, padding=((1, 1), (1, 1)), name='conv1')(x)
    y = nn.relu(norm(name='bn1')(y))
    y = conv(self.features, (3, 3), padding=((1, 1), (1, 1)), name='conv2')(y)
    y = norm(name='bn2')(y)
    if x.shape[-1] != self.features or self.strides != (1, 1):
      x = conv(self.features, (1, 1), self.strides, padding='VALID', name='downsample_conv')(x)
      x = norm(name='downsample_bn')(x)
    return nn.relu(x + y)


def _pool_windows(padded: jax.Array, out_h: int, out_w: int) -> list[jax.Array]:
  """The 9 taps of a 3×3, stride-2 window over `padded`, in torch's (row-major) order."""
  b, _, _, c = padded.shape
  return [
    jax.lax.slice(padded, (0, i, j, 0), (b, i + 2 * out_h - 1, j + 2 * out_w - 1, c), (1, 2, 2, 1))
    for i in range(3)
    for j in range(3)
  ]


def _pool_forward(x: jax.Array) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
  h, w = x.shape[1:3]
  padded = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), constant_values=-jnp.inf)
  out = functools.reduce(jnp.maximum, _pool_windows(padded, (h - 1) // 2 + 1, (w - 1) // 2 + 1))
  return out, (x, out)


def _scatter_taps(taps: Sequence[jax.Array], axis: int) -> jax.Array:
  """Stride-2 transpose along `axis`: tap k at output o lands on padded position 2·o + k.

  Even positions 2q collect tap 0 at q and tap 2 at q - 1, odd positions 2q + 1 tap 1 at q; the
  two are interleaved, so the whole scatter is pads, adds and one reshape (no scatter op).
  """

  def pad(a, before, after):
    widths = [(0, 0)] * a.ndim
    widths[axis] = (before, after)
    return jnp.pad(a, widths)

  even = pad(taps[0], 0, 1) + pad(taps[2], 1, 0)
  odd = pad(taps[1], 0, 1)
  both = jnp.stack([even, odd], axis + 1)
  return both.reshape(*even.shape[:axis], 2 * even.shape[axis], *even.shape[axis + 1 :])


def _pool_backward(residuals: tuple[jax.Array, jax.Array], g: jax.Array) -> tuple[jax.Array]:
  x, out = residuals
  h, w = x.shape[1:3]
  padded = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), constant_values=-jnp.inf)
  taken = jnp.zeros(out.shape, bool)
  taps = []
  for window in _pool_windows(padded, *out.shape[1:3]):
    hit = (window == out) & ~taken  # the first maximum of each window takes the gradient
    taken = taken | hit
    taps.append(jnp.where(hit, g, 0.0))
  rows = [_scatter_taps(taps[3 * i : 3 * i + 3], axis=2) for i in range(3)]
  return (_scatter_taps(rows, axis=1)[:, 1 : 1 + h, 1 : 1 + w],)


@jax.custom_vjp
def max_pool_3x3_s2(x: jax.Array) -> jax.Array:
  """torch's MaxPool2d(3, stride=2, padding=1) on NHWC: a max over 9 strided slices.

  Same values as `nn.max_pool`; the gradient goes to the first maximum of each window, as
  torch's does. Written by hand because XLA:CPU is slow at both automatic gradients (its
  select-and-scatter, and the 9-slice max's fused selects); this one is element-wise selects,
  pads and adds (bench/README.md has the timings).
  """
  return _pool_forward(x)[0]


max_pool_3x3_s2.defvjp(_pool_forward, _pool_backward)


class ResNet18(nn.Module):
  """ResNet-18 trunk without avgpool/fc, cut after `num_layers` of layer1..layer4.

  x: [batch, height, width, 3] float, ImageNet-normalised. Returns [batch, h', w', channels].
  Each stage's output is sown into the 'intermediates' collection as stem, layer1, ...
  In training, BatchNorm averages its batch statistics over the mesh axis `axis_name` (for a
  step run per device under `shard_map`), or over this call's batch when it is None.
  """

  num_layers: int = 4
  strides: Sequence[Strides] = TORCHVISION_STRIDES
  base_width: int = 64
  dtype: Any = jnp.float32
  axis_name: str | None = None

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    if not 1 <= self.num_layers <= 4 or len(self.strides) < self.num_layers:
      raise ValueError(
        f'ResNet18 keeps 1..4 layers with one stride each; got num_layers={self.num_layers}, '
        f'strides={self.strides}.'
      )
    x = x.astype(self.dtype)
    x = nn.Conv(
      self.base_width,
      (7, 7),
      (2, 2),
      padding=((3, 3), (3, 3)),
      use_bias=False,
      dtype=self.dtype,
      name='conv1',
    )(x)
    x = _batch_norm(train, self.dtype, self.axis_name)(name='bn1')(x)
    x = max_pool_3x3_s2(nn.relu(x))
    self.sow('intermediates', 'stem', x)
    for i in range(self.num_layers):
      features = self.base_width * 2**i
      strides = tuple(self.strides[i])
      block = functools.partial(BasicBlock, features, dtype=self.dtype, axis_name=self.axis_name)
      x = block(strides, name=f'layer{i + 1}_0')(x, train)
      x = block((1, 1), name=f'layer{i + 1}_1')(x, train)
      self.sow('intermediates', f'layer{i + 1}', x)
    return x


def preprocess(images: jax.Array) -> jax.Array:
  """uint8 RGB [..., 3] → float32 normalised with ImageNet's statistics.

  The one preprocessing: the CRNN runs it first, so training, evaluation, prediction and every
  export share it, on the device, and images travel as uint8.
  """
  x = images.astype(jnp.float32) / 255.0
  return (x - jnp.asarray(IMAGENET_MEAN)) / jnp.asarray(IMAGENET_STD)


def _torch_uniform(scale: float):
  """U(-scale, scale), torch's default initialiser for recurrent weights (scale = 1/√hidden)."""

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -scale, scale)

  return init


class GRU(nn.Module):
  """One direction of a GRU with torch.nn.GRU's parameters and gate order (r, z, n).

  The input projection for every time step is one matmul hoisted out of the scan; only the
  hidden-state matmul runs inside it. x: [batch, time, features] → [batch, time, hidden_size].
  """

  hidden_size: int
  reverse: bool = False
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    h = self.hidden_size
    init = _torch_uniform(h**-0.5)
    w_ih = self.param('input_kernel', init, (x.shape[-1], 3 * h))
    b_ih = self.param('input_bias', init, (3 * h,))
    w_hh = self.param('hidden_kernel', init, (h, 3 * h))
    b_hh = self.param('hidden_bias', init, (3 * h,))
    x, w_ih, w_hh = x.astype(self.dtype), w_ih.astype(self.dtype), w_hh.astype(self.dtype)
    gates_x = (x @ w_ih).astype(jnp.float32) + b_ih
    if self.reverse:
      gates_x = gates_x[:, ::-1]

    def step(state, gx):
      gh = (state.astype(self.dtype) @ w_hh).astype(jnp.float32) + b_hh
      r = jax.nn.sigmoid(gx[:, :h] + gh[:, :h])
      z = jax.nn.sigmoid(gx[:, h : 2 * h] + gh[:, h : 2 * h])
      n = jnp.tanh(gx[:, 2 * h :] + r * gh[:, 2 * h :])
      state = (1 - z) * n + z * state
      return state, state

    state = jnp.zeros((x.shape[0], h), jnp.float32)
    _, outputs = jax.lax.scan(step, state, gates_x.swapaxes(0, 1))
    outputs = outputs.swapaxes(0, 1)
    return outputs[:, ::-1] if self.reverse else outputs


class BiGRU(nn.Module):
  """Stacked bidirectional GRU like torch.nn.GRU(bidirectional=True), dropout between layers."""

  hidden_size: int
  num_layers: int = 2
  dropout: float = 0.0
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    for layer in range(self.num_layers):
      if layer > 0:
        x = nn.Dropout(self.dropout, deterministic=not train)(x)
      forward = GRU(self.hidden_size, dtype=self.dtype, name=f'l{layer}_forward')(x)
      backward = GRU(self.hidden_size, reverse=True, dtype=self.dtype, name=f'l{layer}_backward')(x)
      x = jnp.concatenate([forward, backward], axis=-1)
    return x


def blank_prior_bias(prior: float):
  """Head bias initialiser: softmax(bias) gives the blank (BLANK_ID) probability `prior` and the
  other classes equal shares of the rest; 0 keeps the zero bias (every class equally likely)."""

  def init(key, shape, dtype=jnp.float32):
    bias = jnp.zeros(shape, dtype)
    if prior <= 0:
      return bias
    return bias.at[BLANK_ID].set(jnp.log(prior * (shape[0] - 1) / (1 - prior)).astype(dtype))

  return init


class CRNN(nn.Module):
  """ResNet-18 trunk → columns as a sequence → BiGRU → per-step class logits for CTC.

  images: [batch, height, width, 3] uint8 RGB (`preprocess` runs inside).
  Returns logits [batch, time, num_classes] float32, time = the trunk's output width; class 0 is
  the CTC blank.
  `axis_name`: as in `ResNet18`.
  """

  num_classes: int
  backbone_layers: int = 3
  backbone_strides: Sequence[Strides] = ((1, 1), (2, 2), (2, 1), (2, 1))
  base_width: int = 64
  projection_size: int = 256
  rnn_hidden_size: int = 128
  rnn_layers: int = 2
  dropout: float = 0.1
  blank_prior: float = 0.0
  dtype: Any = jnp.float32
  axis_name: str | None = None

  @nn.compact
  def __call__(self, images: jax.Array, train: bool) -> jax.Array:
    x = ResNet18(
      self.backbone_layers,
      self.backbone_strides,
      self.base_width,
      self.dtype,
      self.axis_name,
      name='backbone',
    )(preprocess(images), train)
    b, h, w, c = x.shape
    # Fold height into features: each column of the feature map is one time step.
    x = x.transpose(0, 2, 1, 3).reshape(b, w, h * c)
    x = nn.Dense(self.projection_size, dtype=self.dtype, name='projection')(x)
    x = nn.Dropout(self.dropout, deterministic=not train)(x)
    x = BiGRU(self.rnn_hidden_size, self.rnn_layers, self.dropout, self.dtype, name='rnn')(x, train)
    x = nn.Dropout(self.dropout, deterministic=not train)(x)
    logits = nn.Dense(
      self.num_classes,
      dtype=self.dtype,
      bias_init=blank_prior_bias(self.blank_prior),
      name='head',
    )(x)
    return logits.astype(jnp.float32)


def create_model(
  model_config, num_classes: int, axis_name: str | None = None, blank_prior: float = 0.0
) -> CRNN:
  """The CRNN described by `config.model`; `axis_name` for training under `shard_map`;
  `blank_prior` only sets the head's initial bias (see `blank_prior_bias`)."""
  return CRNN(
    num_classes=num_classes,
    backbone_layers=model_config.backbone_layers,
    backbone_strides=tuple(tuple(s) for s in model_config.backbone_strides),
    base_width=model_config.base_width,
    projection_size=model_config.projection_size,
    rnn_hidden_size=model_config.rnn_hidden_size,
    rnn_layers=model_config.rnn_layers,
    dropout=model_config.dropout,
    blank_prior=blank_prior,
    dtype=jnp.dtype(model_config.dtype),
    axis_name=axis_name,
  )


def output_steps(model_config, height: int, width: int) -> int:
  """Number of CTC time steps the model of `config.model` emits for a height×width image (no
  compute)."""
  model = create_model(model_config, num_classes=2)
  shape = jax.ShapeDtypeStruct((1, height, width, 3), jnp.uint8)
  init = functools.partial(model.init, train=False)
  variables = jax.eval_shape(init, jax.random.key(0), shape)
  logits = jax.eval_shape(functools.partial(model.apply, train=False), variables, shape)
  return logits.shape[1]
