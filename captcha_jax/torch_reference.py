"""The same CRNN in PyTorch (torchvision ResNet-18 trunk, 2-layer BiGRU, linear head), and a
converter of its whole state_dict into captcha_jax's variables: the independent reference of the
parity tests and the benchmarks. Needs torch (and torchvision); nothing else imports it."""

import jax
import jax.numpy as jnp
import numpy as np
import torch
from torch import nn

from captcha_jax import models, port


def import_torchvision():
  """torchvision, importable on a CPU-only torch even from a CUDA build of torchvision.

  A CUDA build's compiled ops fail to load without CUDA, and its import then fails on the
  missing `torchvision::nms`; declaring the two ops it looks up lets the pure-Python models load.
  """
  global _LIBRARY
  try:
    import torchvision
  except RuntimeError:
    _LIBRARY = torch.library.Library('torchvision', 'DEF')
    for op in ('nms', 'qnms'):
      _LIBRARY.define(f'{op}(Tensor dets, Tensor scores, float iou_threshold) -> Tensor')
    import torchvision
  return torchvision


_LIBRARY = None  # the stand-in op declarations must outlive the import


def randomize_batchnorm(module: nn.Module, seed: int = 0) -> None:
  """Non-trivial BatchNorm weights and running statistics, so a port that drops them fails."""
  generator = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for m in module.modules():
      if isinstance(m, nn.BatchNorm2d):
        n = m.num_features
        m.weight.copy_(1 + 0.2 * torch.randn(n, generator=generator))
        m.bias.copy_(0.2 * torch.randn(n, generator=generator))
        m.running_mean.copy_(0.2 * torch.randn(n, generator=generator))
        m.running_var.copy_(1 + 0.5 * torch.rand(n, generator=generator))


class TorchCRNN(nn.Module):
  """torchvision resnet18 through `backbone_layers`, columns → Linear → BiGRU → Linear."""

  def __init__(
    self,
    num_classes,
    backbone_layers,
    strides,
    feature_height,
    projection=256,
    hidden=128,
    dropout=0.0,
  ):
    super().__init__()
    resnet = import_torchvision().models.resnet18(weights=None)
    for i, stride in enumerate(strides[:backbone_layers], 1):
      block = getattr(resnet, f'layer{i}')[0]
      block.conv1.stride = tuple(stride)
      if block.downsample is not None:
        block.downsample[0].stride = tuple(stride)
    del resnet.fc, resnet.avgpool
    for i in range(backbone_layers + 1, 5):
      delattr(resnet, f'layer{i}')
    self.backbone = resnet
    self.backbone_layers = backbone_layers
    channels = 64 * 2 ** (backbone_layers - 1)
    self.projection = nn.Linear(channels * feature_height, projection)
    self.dropout = nn.Dropout(dropout)
    self.rnn = nn.GRU(
      projection, hidden, num_layers=2, bidirectional=True, batch_first=True, dropout=dropout
    )
    self.head = nn.Linear(2 * hidden, num_classes)

  @classmethod
  def from_config(cls, config, num_classes: int) -> 'TorchCRNN':
    """The model `models.create_model(config.model, num_classes)` describes, for images of the
    config's size."""
    m = config.model
    shape = jax.eval_shape(
      lambda: models.ResNet18(m.backbone_layers, m.backbone_strides, m.base_width).init_with_output(
        jax.random.key(0), jnp.zeros((1, config.image_height, config.image_width, 3)), train=False
      )[0]
    ).shape
    return cls(
      num_classes,
      m.backbone_layers,
      m.backbone_strides,
      shape[1],
      m.projection_size,
      m.rnn_hidden_size,
      m.dropout,
    )

  def forward(self, images):
    """images: [batch, 3, H, W] ImageNet-normalised → logits [batch, time, classes]."""
    r = self.backbone
    x = r.maxpool(r.relu(r.bn1(r.conv1(images))))
    for i in range(1, self.backbone_layers + 1):
      x = getattr(r, f'layer{i}')(x)
    b, c, h, w = x.shape
    x = x.permute(0, 3, 2, 1).reshape(b, w, h * c)  # height folded into features, (h, c) order
    x = self.dropout(self.projection(x))
    x, _ = self.rnn(x)
    return self.head(self.dropout(x))


def linear_to_flax(state_dict, prefix):
  return {
    'kernel': state_dict[f'{prefix}.weight'].T.copy(),
    'bias': state_dict[f'{prefix}.bias'].copy(),
  }


def gru_to_flax(state_dict, prefix, num_layers=2):
  """torch.nn.GRU weights (gates r, z, n; two biases) → BiGRU params."""
  params = {}
  for layer in range(num_layers):
    for direction, suffix in (('forward', ''), ('backward', '_reverse')):
      s = f'l{layer}{suffix}'
      params[f'l{layer}_{direction}'] = {
        'input_kernel': state_dict[f'{prefix}.weight_ih_{s}'].T.copy(),
        'input_bias': state_dict[f'{prefix}.bias_ih_{s}'].copy(),
        'hidden_kernel': state_dict[f'{prefix}.weight_hh_{s}'].T.copy(),
        'hidden_bias': state_dict[f'{prefix}.bias_hh_{s}'].copy(),
      }
  return params


def crnn_to_flax(model: TorchCRNN) -> dict:
  """The whole TorchCRNN as captcha_jax CRNN variables {'params', 'batch_stats'}."""
  sd = {k: v.detach().numpy() for k, v in model.state_dict().items()}
  backbone = {k[len('backbone.') :]: v for k, v in sd.items() if k.startswith('backbone.')}
  params, stats, unused = port.convert_backbone(backbone, model.backbone_layers)
  assert not unused, unused
  return {
    'params': {
      'backbone': params,
      'projection': linear_to_flax(sd, 'projection'),
      'rnn': gru_to_flax(sd, 'rnn'),
      'head': linear_to_flax(sd, 'head'),
    },
    'batch_stats': {'backbone': stats},
  }


def flax_to_torch(variables: dict, model: TorchCRNN) -> TorchCRNN:
  """Loads captcha_jax CRNN variables {'params', 'batch_stats'} into `model` (the inverse of
  `crnn_to_flax`) and returns it. The backbone keys map through `port`'s one torchvision naming;
  every tensor of the model's state_dict is replaced (load_state_dict is strict), except the
  BatchNorm counters `num_batches_tracked`, which captcha_jax does not keep."""
  params, stats = variables['params'], variables['batch_stats']

  def array(x) -> torch.Tensor:
    return torch.from_numpy(np.array(x, np.float32))  # a writable copy: jax arrays are read-only

  state = model.state_dict()
  loaded = {}
  for key, value in state.items():
    if not key.startswith('backbone.'):
      continue
    target = port._flax_path(key[len('backbone.') :])
    if target is None:
      loaded[key] = value  # num_batches_tracked
      continue
    collection, path, leaf = target
    node = (params if collection == 'params' else stats)['backbone']
    for name in path:
      node = node[name]
    x = np.asarray(node[leaf], np.float32)
    loaded[key] = array(x.transpose(3, 2, 0, 1) if leaf == 'kernel' else x)
  for name in ('projection', 'head'):
    loaded[f'{name}.weight'] = array(np.asarray(params[name]['kernel']).T)
    loaded[f'{name}.bias'] = array(params[name]['bias'])
  for layer_direction, gru in params['rnn'].items():
    layer, direction = layer_direction.split('_')  # 'l0', 'forward' | 'backward'
    suffix = f'{layer}_reverse' if direction == 'backward' else layer
    loaded[f'rnn.weight_ih_{suffix}'] = array(np.asarray(gru['input_kernel']).T)
    loaded[f'rnn.bias_ih_{suffix}'] = array(gru['input_bias'])
    loaded[f'rnn.weight_hh_{suffix}'] = array(np.asarray(gru['hidden_kernel']).T)
    loaded[f'rnn.bias_hh_{suffix}'] = array(gru['hidden_bias'])
  model.load_state_dict(loaded, strict=True)
  return model


def normalized_nchw(images: np.ndarray) -> torch.Tensor:
  """uint8 NHWC images as the torch model's input: the CRNN's own preprocessing, in NCHW."""
  return nchw(np.asarray(models.preprocess(images)))


def nchw(images_nhwc: np.ndarray) -> torch.Tensor:
  return torch.from_numpy(np.ascontiguousarray(images_nhwc.transpose(0, 3, 1, 2)))
