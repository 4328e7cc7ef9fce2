"""Starting from another reader: the pretrained one shipped with the package, or a trained run.

Everything but the head carries over when its shape fits; the head's rows follow the characters,
so each character both alphabets share keeps what it learned, the blank keeps its row, and
characters new to the target start from the target's fresh initialisation.
"""

import hashlib
import json
import os
from pathlib import Path

import flax.serialization
import jax
import ml_collections
import numpy as np

from captcha_jax import checkpoints
from captcha_jax import workdir as run_folder
from captcha_jax.errors import ConfigError, DataError
from captcha_jax.vocab import BLANK_ID, Vocab

PRETRAINED_DIR = Path(__file__).parent / 'pretrained'
PRETRAINED = 'pretrained'  # config.init_from's name for the reader shipped with the package
PATH_KEYS = (
  'data_dir',
  'labels_file',
  'pseudo_labels',
  'download_dir',
  'tfds_data_dir',
  'init_from',
)


def load_pretrained(folder: Path = PRETRAINED_DIR) -> tuple[ml_collections.ConfigDict, dict]:
  """(config, variables) of the reader shipped in captcha_jax/pretrained/, or of another folder
  `save_reader` wrote."""
  weights_path = folder / 'reader.msgpack'
  if not weights_path.exists():
    raise ConfigError(f'No reader in {folder}: it lacks reader.msgpack.')
  weights = weights_path.read_bytes()
  description = _description(folder)
  expected = description.get('sha256')
  if expected is None:
    raise DataError(
      f'{str(folder / "reader.json")!r} holds no sha256 of reader.msgpack (a reader exported '
      'before they were checked): export it again.'
    )
  if expected != hashlib.sha256(weights).hexdigest():
    raise DataError(
      f'{str(weights_path)!r} is damaged or altered: its sha256 is not the one reader.json '
      'holds. Export the reader again.'
    )
  config = ml_collections.ConfigDict(description['config'])
  return config, flax.serialization.msgpack_restore(weights)


def _description(folder: Path) -> dict:
  """reader.json: the reader's config, its weights' sha256, and how it was made."""
  path = folder / 'reader.json'
  try:
    return json.loads(path.read_text())
  except (OSError, ValueError) as e:
    raise DataError(f"{str(path)!r} cannot be read as a reader's description ({e}).") from e


def _reader_config(folder: Path) -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(_description(folder)['config'])


def save_reader(config: ml_collections.ConfigDict, variables: dict, out_dir: Path, **notes) -> None:
  """Writes a reader as reader.json (its config, and `notes` such as how it was made) and
  reader.msgpack (its weights), the layout `load_pretrained` reads.

  A reader is made to be passed on, so the config's paths are written as they read from the
  current folder (or the home folder), not as this machine's absolute paths."""
  out_dir.mkdir(parents=True, exist_ok=True)
  weights = flax.serialization.msgpack_serialize(jax.tree.map(np.asarray, variables))
  run_folder.write_atomic(out_dir / 'reader.msgpack', weights)
  config = config.copy_and_resolve_references()
  for key in PATH_KEYS:
    config[key] = portable_path(config[key])
  description = {
    'config': json.loads(config.to_json_best_effort()),
    'sha256': hashlib.sha256(weights).hexdigest(),  # a damaged copy is refused, never read
    **notes,
  }
  run_folder.write_json(out_dir / 'reader.json', description)


def portable_path(path: str) -> str:
  """An absolute `path` under the current folder as relative to it, else under home as ~/...;
  any other path as it is."""
  for base, prefix in ((Path.cwd(), ''), (Path.home(), '~/')):
    if Path(path).is_relative_to(base):  # False for a relative path
      return prefix + str(Path(path).relative_to(base))
  return path


def absolute_sources(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """`config` with init_from (but for the shipped reader's name) and pretrained as absolute paths,
  as a run saves data_dir: a resumed run, or a self-training round restarted from where it
  began, finds them from any folder."""
  config = config.copy_and_resolve_references()
  if config.get('init_from') and config.init_from != PRETRAINED:
    config.init_from = os.path.abspath(os.path.expanduser(config.init_from))
  if config.get('pretrained'):
    config.pretrained = os.path.abspath(os.path.expanduser(config.pretrained))
  return config


def is_reader(folder: str | Path) -> bool:
  """Whether `folder` holds a reader `save_reader` wrote (`export --format reader`), not a run."""
  return (Path(folder).expanduser() / 'reader.msgpack').is_file()


def source_config(init_from: str) -> ml_collections.ConfigDict:
  """The config of the reader `config.init_from` names, without reading its weights."""
  if init_from == PRETRAINED:
    return _reader_config(PRETRAINED_DIR)
  if is_reader(init_from):
    return _reader_config(Path(init_from).expanduser())
  return run_folder.read_config(Path(init_from).expanduser())


def load_source(init_from: str) -> tuple[ml_collections.ConfigDict, dict]:
  """(config, variables) of `config.init_from`: 'pretrained', a reader's folder, or a training
  run's workdir."""
  if init_from == PRETRAINED:
    return load_pretrained()
  if is_reader(init_from):
    return load_pretrained(Path(init_from).expanduser())
  workdir = Path(init_from).expanduser()
  config = run_folder.read_config(workdir)
  steps = checkpoints.reading_order(workdir)
  if not steps:
    raise ConfigError(f'{init_from!r} (config.init_from) holds no checkpoint to start from.')
  _, state = checkpoints.first_intact(
    steps, lambda s: checkpoints.restore_raw(workdir, s), repr(init_from)
  )
  return config, {'params': state['ema_params'], 'batch_stats': state['batch_stats']}


def head_rows(source_alphabet: str, target_alphabet: str) -> dict[int, int]:
  """{target class: source class} for the blank and every character both alphabets hold."""
  source = Vocab(source_alphabet)
  rows = {BLANK_ID: BLANK_ID}
  for char in target_alphabet:
    if char in source_alphabet:
      rows[Vocab(target_alphabet).encode(char)[0]] = source.encode(char)[0]
  return rows


def _shapes(tree) -> dict:
  return jax.tree.map(np.shape, tree)


# The model settings that decide what the weights compute; config.model's others (dropout, dtype)
# may differ from the reader's. Most change a shape, which `transfer` refuses; strides do not.
ARCHITECTURE_KEYS = (
  'backbone_layers',
  'backbone_strides',
  'base_width',
  'projection_size',
  'rnn_hidden_size',
  'rnn_layers',
)


def check_architecture(config: ml_collections.ConfigDict) -> None:
  """Raises ConfigError when config.model computes otherwise than the model of the reader
  config.init_from names (its config alone is read): its weights would load, and mean little."""
  source = source_config(config.init_from).model
  # As JSON, a tuple and the list a saved config holds compare equal.
  differ = [
    k for k in ARCHITECTURE_KEYS if json.dumps(source.get(k)) != json.dumps(config.model.get(k))
  ]
  if differ:
    raise ConfigError(
      f'config.model.{differ[0]} = {config.model.get(differ[0])!r}, where the reader to start '
      f'from ({config.init_from}) has {source.get(differ[0])!r}: fine-tune with its config.model.'
    )


def transfer(
  source_variables: dict, source_alphabet: str, target: dict, target_alphabet: str
) -> tuple[dict, list[str]]:
  """`target` variables ({'params', 'batch_stats'}) with the source's weights carried over.

  Returns the variables and the names of what kept its fresh initialisation. Raises
  ConfigError when the two models differ elsewhere than in the head's width.
  """
  params = dict(target['params'])
  source_params = source_variables['params']
  for name in params:
    if name == 'head':
      continue
    if name not in source_params or _shapes(source_params[name]) != _shapes(params[name]):
      raise ConfigError(
        f'The reader to start from has another {name!r} layer (a different image height or '
        'config.model): fine-tune with its config.model and image_height.'
      )
    params[name] = source_params[name]
  if _shapes(source_variables['batch_stats']) != _shapes(target['batch_stats']):
    raise ConfigError('The reader to start from has another backbone: use its config.model.')
  rows = head_rows(source_alphabet, target_alphabet)
  kernel = np.array(params['head']['kernel'])
  bias = np.array(params['head']['bias'])
  source_head = source_params['head']
  for target_row, source_row in rows.items():
    kernel[:, target_row] = source_head['kernel'][:, source_row]
    bias[target_row] = source_head['bias'][source_row]
  params['head'] = {'kernel': kernel, 'bias': bias}
  fresh = [c for c in target_alphabet if c not in source_alphabet]
  return {'params': params, 'batch_stats': source_variables['batch_stats']}, fresh
