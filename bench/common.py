"""What the benches share: the repository's root and its config files, loaded by path (the
`configs/` folder is part of the repository, not of the installed package)."""

import importlib.util
import resource
from pathlib import Path

import ml_collections

from captcha_jax import settings

ROOT = Path(__file__).resolve().parents[1]


def load_config(path: str) -> ml_collections.ConfigDict:
  """`get_config()` of a config file, its path relative to the repository's root."""
  spec = importlib.util.spec_from_file_location('bench_config', ROOT / path)
  module = importlib.util.module_from_spec(spec)
  with settings.config_file_imports(spec.origin):
    spec.loader.exec_module(module)
  return module.get_config()


def dataset_config(path: str = 'configs/default.py') -> ml_collections.ConfigDict:
  """A config with the settings a run on the default captcha set reads from its data filled in,
  as that run's config.json holds them: for benches that build the model without the data."""
  config = load_config(path)
  config.alphabet = '2345678bcdefgmnpwxy'
  config.max_label_length = config.fixed_label_length = 5
  config.image_width = config.image_width or 200
  return config


def peak_rss_mb() -> float:
  """This process's peak resident memory so far (Linux reports ru_maxrss in KiB)."""
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
