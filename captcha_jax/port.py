"""torchvision ResNet-18 weights → the Flax backbone's `params` and `batch_stats`.

    python -m captcha_jax.port --torchvision_weights resnet18-f37072fd.pth --out ported/

writes the converted backbone as an orbax checkpoint; `config.pretrained` takes that folder or
the .pth file itself. Reading a .pth needs torch (README: a CPU build); nothing else does.
"""

import logging
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import numpy as np

from captcha_jax.errors import ConfigError, DataError

WEIGHTS_URL = 'https://download.pytorch.org/models/resnet18-f37072fd.pth'
HOW_TO_GET = (
  'Get the ImageNet weights with torchvision '
  '(torchvision.models.resnet18(weights="IMAGENET1K_V1") saves them as '
  '~/.cache/torch/hub/checkpoints/resnet18-f37072fd.pth) or download ' + WEIGHTS_URL + '.'
)
METADATA = '_METADATA'  # the file orbax writes in every checkpoint folder
_BN = {'weight': 'scale', 'bias': 'bias'}
_BN_STATS = {'running_mean': 'mean', 'running_var': 'var'}


def _to_numpy(value) -> np.ndarray:
  """A float32 copy: never a view that a later in-place torch update would change."""
  if hasattr(value, 'detach'):  # a torch tensor
    value = value.detach().cpu().numpy()
  return np.array(value, np.float32)


def _flax_path(key: str) -> tuple[str, tuple[str, ...], str] | None:
  """('params' | 'batch_stats', module path, leaf) of a torchvision key; None if not mapped."""
  match = re.fullmatch(
    r'(?:layer(\d)\.(\d)\.)?(conv1|conv2|bn1|bn2|downsample\.0|downsample\.1)\.(\w+)', key
  )
  if not match:
    return None
  stage, block, module, leaf = match.groups()
  module = {'downsample.0': 'downsample_conv', 'downsample.1': 'downsample_bn'}.get(module, module)
  path = (f'layer{stage}_{block}', module) if stage else (module,)
  if 'conv' in module:
    return ('params', path, 'kernel') if leaf == 'weight' else None
  if leaf in _BN:
    return 'params', path, _BN[leaf]
  if leaf in _BN_STATS:
    return 'batch_stats', path, _BN_STATS[leaf]
  return None


def convert_backbone(
  state_dict: Mapping[str, Any], num_layers: int = 4
) -> tuple[dict, dict, list[str]]:
  """(params, batch_stats, unused keys) of a torchvision resnet18 state_dict, for `num_layers`.

  Conv kernels go from torch's (out, in, kh, kw) to Flax's (kh, kw, in, out); BatchNorm
  weight/bias become scale/bias and running_mean/var the batch_stats mean/var. Keys of later
  stages and of fc are returned as unused; a missing key raises DataError listing all missing.
  """
  params: dict = {}
  stats: dict = {}
  unused, used = [], set()
  for key, value in state_dict.items():
    target = _flax_path(key)
    stage = re.match(r'layer(\d)', key)
    if target is None or (stage and int(stage.group(1)) > num_layers):
      if not key.endswith('num_batches_tracked'):
        unused.append(key)
      continue
    collection, path, leaf = target
    array = _to_numpy(value)
    if leaf == 'kernel':
      array = array.transpose(2, 3, 1, 0)
    node = params if collection == 'params' else stats
    for name in path:
      node = node.setdefault(name, {})
    node[leaf] = array
    used.add(key)
  missing = sorted(set(expected_keys(num_layers)) - used)
  if missing:
    raise DataError(
      f'The state_dict lacks {len(missing)} key(s) of a resnet18 through layer{num_layers}: '
      f'{", ".join(missing[:8])}{" …" if len(missing) > 8 else ""}. Is it a torchvision resnet18?'
    )
  return params, stats, unused


def expected_keys(num_layers: int) -> list[str]:
  """The torchvision keys a backbone through layer`num_layers` needs."""

  def bn(prefix):
    return [f'{prefix}.{leaf}' for leaf in (*_BN, *_BN_STATS)]

  keys = ['conv1.weight', *bn('bn1')]
  for stage in range(1, num_layers + 1):
    for block in (0, 1):
      p = f'layer{stage}.{block}'
      keys += [f'{p}.conv1.weight', *bn(f'{p}.bn1'), f'{p}.conv2.weight', *bn(f'{p}.bn2')]
      if stage > 1 and block == 0:
        keys += [f'{p}.downsample.0.weight', *bn(f'{p}.downsample.1')]
  return keys


def read_torch_weights(path: str | Path) -> dict[str, np.ndarray]:
  """A .pth state_dict (a plain or `{'state_dict': ...}` dict of tensors) as NumPy arrays."""
  path = Path(path)
  if not path.is_file():
    raise DataError(f'{str(path)!r}: no such weights file. {HOW_TO_GET}')
  try:
    import torch
  except ImportError as e:
    raise ConfigError(
      f'Reading {str(path)!r} needs torch: pip install torch --index-url '
      'https://download.pytorch.org/whl/cpu (a CPU build, no CUDA packages), or convert it on a '
      'machine with torch (python -m captcha_jax.port) and use the output folder.'
    ) from e
  try:
    loaded = torch.load(path, map_location='cpu', weights_only=True)
  except Exception as e:  # torch raises pickle's, zipfile's or its own errors for a bad file
    raise DataError(f'{str(path)!r} is not a PyTorch weights file ({type(e).__name__}).') from e
  state_dict = loaded.get('state_dict', loaded) if isinstance(loaded, dict) else None
  if not isinstance(state_dict, dict):
    raise DataError(f'{str(path)!r} holds a {type(loaded).__name__}, not a state_dict.')
  return {k: _to_numpy(v) for k, v in state_dict.items()}


def is_ported(path: Path) -> bool:
  """Whether `path` is a folder `save_backbone` wrote (an orbax checkpoint)."""
  return (path / METADATA).is_file()


def save_backbone(params: dict, batch_stats: dict, out_dir: str | Path) -> Path:
  """Writes {'params', 'batch_stats'} as an orbax checkpoint; returns its absolute path.

  Orbax replaces the whole folder, so only an empty one or an earlier port's is written over."""
  import orbax.checkpoint as ocp

  out = Path(out_dir).absolute()
  if out.exists() and not is_ported(out) and (not out.is_dir() or any(out.iterdir())):
    raise ConfigError(
      f'{str(out_dir)!r} exists and is not an earlier port: writing there would delete it. '
      'Give a new folder.'
    )
  with ocp.StandardCheckpointer() as checkpointer:
    checkpointer.save(out, {'params': params, 'batch_stats': batch_stats}, force=True)
  return out


def check_backbone_path(path: str | Path) -> None:
  """Raises ConfigError unless config.pretrained = path names a file or a port's folder."""
  where = Path(path).expanduser()
  if where.is_file() or is_ported(where):
    return
  if where.is_dir():
    inside = [p for p in sorted(where.iterdir()) if is_ported(p)]
    hint = f': did you mean {str(inside[0])!r}?' if inside else '.'
    problem = f'is a folder, but not one `python -m captcha_jax.port` wrote{hint}'
  else:
    problem = f'no such file or folder. {HOW_TO_GET}'
  raise ConfigError(f'config.pretrained = {str(path)!r} {problem}')


def load_backbone(path: str | Path, num_layers: int) -> tuple[dict, dict]:
  """(params, batch_stats) for a backbone through layer`num_layers`, from a .pth or port folder."""
  path = Path(path).expanduser()
  if path.is_dir():
    import orbax.checkpoint as ocp

    check_backbone_path(path)

    with ocp.StandardCheckpointer() as checkpointer:
      restored = checkpointer.restore(path.absolute())
    keep = lambda tree: {  # noqa: E731
      k: v for k, v in tree.items() if not k.startswith('layer') or int(k[5]) <= num_layers
    }
    return keep(restored['params']), keep(restored['batch_stats'])
  params, stats, unused = convert_backbone(read_torch_weights(path), num_layers)
  if unused:
    logging.info('Not used from %s: %s', path, ', '.join(sorted(unused)))
  return params, stats


def load_pretrained_backbone(state, path: str | Path):
  """`state` with its backbone replaced by pretrained weights; other layers keep their init."""
  backbone = state.params['backbone']
  num_layers = sum(1 for k in backbone if k.endswith('_0'))
  params, stats = load_backbone(path, num_layers)
  if tree_shapes(params) != tree_shapes(backbone) or tree_shapes(stats) != tree_shapes(
    state.batch_stats['backbone']
  ):
    raise ConfigError(
      f'The weights in {str(path)!r} do not fit this backbone: pretrained ResNet-18 weights '
      'need config.model.base_width=64.'
    )
  return state.replace(
    params={**state.params, 'backbone': params},
    ema_params={**state.ema_params, 'backbone': jax.tree.map(np.copy, params)},
    batch_stats={**state.batch_stats, 'backbone': stats},
  )


def tree_shapes(tree) -> dict:
  """Nested dict of array shapes, for comparing two variable trees."""
  return {
    k: tree_shapes(v) if isinstance(v, Mapping) else tuple(np.shape(v)) for k, v in tree.items()
  }


if __name__ == '__main__':
  from captcha_jax import cli

  cli.port()
