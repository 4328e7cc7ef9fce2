"""A trained CRNN as an ONNX model: uint8 images in, CTC log-probabilities out.

    python -m captcha_jax.export --workdir runs/default --out reader.onnx

The graph is written op by op from the variables rather than traced from JAX: BatchNorm folds
into the convolutions, the max-pool is ONNX's own, and each BiGRU layer is one ONNX `GRU` op, so
onnxruntime runs its fused kernels instead of a traced loop. It takes uint8 [batch, height, width,
3] (RGB, as users hold images), normalises inside, and returns log-probabilities [batch, time,
classes] float32 with the batch axis dynamic. The alphabet, image size and fixed label length
travel in `metadata_props`, so `onnx_reader.OnnxReader` needs nothing but the file.
"""

import ml_collections
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from captcha_jax import models, settings
from captcha_jax.errors import ConfigError
from captcha_jax.onnx_reader import FORMAT_VERSION, META_FORMAT, META_SHA256, UNSIGNED, sign
from captcha_jax.vocab import Vocab

# ONNX GRU (opset 14+) and LogSoftmax (13+) as used here; 17 loads in onnxruntime 1.13 and later.
OPSET = 17
IR_VERSION = 8  # the IR of opset 17: newer IRs are refused by older onnxruntime releases
BN_EPSILON = 1e-5  # models._batch_norm's


def _check_resolved(config: ml_collections.ConfigDict) -> None:
  """ConfigError unless the settings read from the data have been filled in."""
  unresolved = []
  if config.alphabet == settings.AUTO:
    unresolved.append(f'alphabet={settings.AUTO!r}')
  if int(config.image_width) <= 0:
    unresolved.append(f'image_width={config.image_width}')
  if config.fixed_label_length < 0:
    unresolved.append(f'fixed_label_length={config.fixed_label_length}')
  if unresolved:
    raise ConfigError(
      f'Cannot export with {", ".join(unresolved)}: these are read from the data when training '
      "starts. Export with the trained run's config (its workdir's config.json)."
    )


class _Graph:
  """Nodes and initializers under construction, with unique names for intermediate values."""

  def __init__(self):
    self.nodes: list[onnx.NodeProto] = []
    self.initializers: list[onnx.TensorProto] = []
    self._count = 0

  def const(self, name: str, value: np.ndarray) -> str:
    self.initializers.append(numpy_helper.from_array(np.ascontiguousarray(value), name))
    return name

  def op(self, op_type: str, inputs: list[str], output: str | None = None, **attrs) -> str:
    self._count += 1
    output = output or f'{op_type.lower()}_{self._count}'
    self.nodes.append(
      helper.make_node(op_type, inputs, [output], f'{op_type}_{self._count}', **attrs)
    )
    return output


def _folded_conv(conv: dict, bn_params: dict, bn_stats: dict) -> tuple[np.ndarray, np.ndarray]:
  """A bias-free conv followed by inference-mode BatchNorm as one conv: (weight OIHW, bias).

  Folded in float64 so the only rounding is the final cast to float32.
  """
  kernel = np.asarray(conv['kernel'], np.float64)  # Flax HWIO
  scale = np.asarray(bn_params['scale'], np.float64) / np.sqrt(
    np.asarray(bn_stats['var'], np.float64) + BN_EPSILON
  )
  bias = (
    np.asarray(bn_params['bias'], np.float64) - np.asarray(bn_stats['mean'], np.float64) * scale
  )
  weight = (kernel * scale).transpose(3, 2, 0, 1)
  return weight, bias


def _conv(
  g: _Graph,
  x: str,
  name: str,
  weight: np.ndarray,
  bias: np.ndarray,
  strides: tuple[int, int],
  pad: int,
) -> str:
  w = g.const(f'{name}.weight', weight.astype(np.float32))
  b = g.const(f'{name}.bias', bias.astype(np.float32))
  kh, kw = weight.shape[2:]
  return g.op(
    'Conv', [x, w, b], kernel_shape=[kh, kw], strides=list(strides), pads=[pad, pad, pad, pad]
  )


def _basic_block(g: _Graph, x: str, name: str, params: dict, stats: dict, strides) -> str:
  """models.BasicBlock `name` on NCHW."""

  def conv_bn(x: str, conv: str, bn: str, strides, pad: int) -> str:
    weight, bias = _folded_conv(params[conv], params[bn], stats[bn])
    return _conv(g, x, f'{name}.{conv}', weight, bias, strides, pad)

  y = g.op('Relu', [conv_bn(x, 'conv1', 'bn1', strides, 1)])
  y = conv_bn(y, 'conv2', 'bn2', (1, 1), 1)
  if 'downsample_conv' in params:
    x = conv_bn(x, 'downsample_conv', 'downsample_bn', strides, 0)
  return g.op('Relu', [g.op('Add', [x, y])])


def _gru_weights(forward: dict, backward: dict) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """models.GRU parameters of both directions as ONNX GRU's (W, R, B).

  Flax keeps torch's gate order r, z, n in the columns of [in, 3h] kernels; ONNX wants rows of
  [3h, in] in the order z, r, h, with B = [Wb, Rb] per direction.
  """

  def zrh(a: np.ndarray) -> np.ndarray:
    r, z, n = np.split(np.asarray(a, np.float32), 3, axis=-1)
    return np.concatenate([z, r, n], axis=-1)

  directions = (forward, backward)
  w = np.stack([zrh(d['input_kernel']).T for d in directions])
  r = np.stack([zrh(d['hidden_kernel']).T for d in directions])
  b = np.stack([np.concatenate([zrh(d['input_bias']), zrh(d['hidden_bias'])]) for d in directions])
  return w, r, b


def to_onnx(config: ml_collections.ConfigDict, variables: dict) -> onnx.ModelProto:
  """The CRNN of `config.model` with `variables` ({'params', 'batch_stats'}) as an ONNX model.

  Input 'images': [batch, image_height, image_width, 3] uint8 RGB. Output 'log_probs': [batch,
  time, classes] float32, log-softmax of `CRNN`'s logits in inference mode (BatchNorm on its
  running statistics, no dropout). Always float32, whatever `config.model.dtype`.
  """
  _check_resolved(config)
  vocab = Vocab(config.alphabet)
  height, width = int(config.image_height), int(config.image_width)
  params = variables['params']
  stats = variables['batch_stats']
  trunk, trunk_stats, rnn = params['backbone'], stats['backbone'], params['rnn']
  strides = [tuple(int(v) for v in s) for s in config.model.backbone_strides]
  layers = int(config.model.backbone_layers)
  expected = {'conv1', 'bn1'} | {f'layer{i + 1}_{j}' for i in range(layers) for j in (0, 1)}
  rnn_layers = int(config.model.rnn_layers)
  rnn_names = {f'l{i}_{d}' for i in range(rnn_layers) for d in ('forward', 'backward')}
  if set(trunk) != expected or set(rnn) != rnn_names:
    raise ConfigError(
      f'The variables do not fit config.model: the trunk has {sorted(trunk)} and the GRU '
      f'{sorted(rnn)}, the config asks for {layers} backbone layers and {rnn_layers} '
      'GRU layers.'
    )
  head = params['head']
  if head['kernel'].shape[-1] != vocab.num_classes:
    raise ConfigError(
      f'The head has {head["kernel"].shape[-1]} classes, the alphabet {config.alphabet!r} '
      f'needs {vocab.num_classes}.'
    )

  g = _Graph()
  x = g.op('Cast', ['images'], to=TensorProto.FLOAT)
  x = g.op('Transpose', [x], perm=[0, 3, 1, 2])
  # models.preprocess, (x / 255 - mean) / std: the offset comes first because the stem conv's
  # zero padding stands for a normalised 0, a pixel of 255·mean; the scale folds into the weights.
  mean = np.asarray(models.IMAGENET_MEAN, np.float64)
  std = np.asarray(models.IMAGENET_STD, np.float64)
  x = g.op('Sub', [x, g.const('pixel_mean', (255 * mean).astype(np.float32).reshape(1, 3, 1, 1))])
  weight, bias = _folded_conv(trunk['conv1'], trunk['bn1'], trunk_stats['bn1'])
  weight = weight / (255 * std)[None, :, None, None]
  x = g.op('Relu', [_conv(g, x, 'conv1', weight, bias, (2, 2), 3)])
  x = g.op('MaxPool', [x], kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])
  for i in range(layers):
    for j, block_strides in enumerate((strides[i], (1, 1))):
      name = f'layer{i + 1}_{j}'
      x = _basic_block(g, x, name, trunk[name], trunk_stats[name], block_strides)

  # [b, c, h, w] → [w, b, h·c]: columns are time steps, features ordered (h, c) as in CRNN.
  x = g.op('Transpose', [x], perm=[3, 0, 2, 1])
  merge = g.const('merge_last_two', np.array([0, 0, -1], np.int64))
  x = g.op('Reshape', [x, merge])
  projection = params['projection']
  x = g.op(
    'MatMul', [x, g.const('projection.kernel', np.asarray(projection['kernel'], np.float32))]
  )
  x = g.op('Add', [x, g.const('projection.bias', np.asarray(projection['bias'], np.float32))])
  hidden = int(config.model.rnn_hidden_size)
  for i in range(rnn_layers):
    w, r, b = _gru_weights(rnn[f'l{i}_forward'], rnn[f'l{i}_backward'])
    name = f'rnn.l{i}'
    # linear_before_reset=1 is torch's n = tanh(W_in x + b_in + r ⊙ (W_hn h + b_hn)).
    y = g.op(
      'GRU',
      [x, g.const(f'{name}.W', w), g.const(f'{name}.R', r), g.const(f'{name}.B', b)],
      direction='bidirectional',
      hidden_size=hidden,
      linear_before_reset=1,
    )
    # Y: [time, 2, b, hidden] → [time, b, 2·hidden], forward then backward as BiGRU concatenates.
    x = g.op('Reshape', [g.op('Transpose', [y], perm=[0, 2, 1, 3]), merge])
  x = g.op('MatMul', [x, g.const('head.kernel', np.asarray(head['kernel'], np.float32))])
  x = g.op('Add', [x, g.const('head.bias', np.asarray(head['bias'], np.float32))])
  x = g.op('LogSoftmax', [x], axis=-1)
  g.op('Transpose', [x], 'log_probs', perm=[1, 0, 2])

  graph = helper.make_graph(
    g.nodes,
    'captcha_crnn',
    [helper.make_tensor_value_info('images', TensorProto.UINT8, ['batch', height, width, 3])],
    [
      helper.make_tensor_value_info(
        'log_probs', TensorProto.FLOAT, ['batch', None, vocab.num_classes]
      )
    ],
    g.initializers,
  )
  model = helper.make_model(
    graph,
    opset_imports=[helper.make_opsetid('', OPSET)],
    producer_name='captcha_jax',
    ir_version=IR_VERSION,
  )
  meta = {
    META_FORMAT: str(FORMAT_VERSION),
    META_SHA256: UNSIGNED,  # `serialize` writes the file's digest here
    'alphabet': config.alphabet,
    'image_height': str(height),
    'image_width': str(width),
    'fixed_label_length': str(config.fixed_label_length),
  }
  helper.set_model_props(model, meta)
  onnx.checker.check_model(model, full_check=True)
  return model


def serialize(model: onnx.ModelProto) -> bytes:
  """The .onnx file of a model `to_onnx` made, signed: `OnnxReader` refuses it once altered."""
  return sign(model.SerializeToString())
