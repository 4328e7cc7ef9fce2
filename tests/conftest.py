"""Shared fixtures: a folder of synthetic captchas and the tiny config pointed at it; the tiny
config on any folder, resolved as a run resolves it."""

import atexit
import functools
import io
import os
import shutil
import sys
import tempfile
from pathlib import Path

import ml_collections
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # `configs` is a folder of the repo, not an installed package

# XLA's persistent cache, shared by this session's tests and the processes they start: the tiny
# model's steps are compiled once, not once per run (half the time of a test that trains). Set
# before JAX is imported here, and inherited by every process a test starts.
_XLA_CACHE = tempfile.mkdtemp(prefix='captcha_jax_tests_xla_')
atexit.register(shutil.rmtree, _XLA_CACHE, ignore_errors=True)
os.environ.setdefault('JAX_COMPILATION_CACHE_DIR', _XLA_CACHE)
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0')
# Tests compile far more than they compute: without LLVM's optimisations XLA compiles the tiny
# models about 3× faster on CPU, which is most of the suite's time (bench/README.md).
FAST_COMPILE = '--xla_backend_optimization_level=0'
os.environ['XLA_FLAGS'] = f'{os.environ.get("XLA_FLAGS", "")} {FAST_COMPILE}'.strip()

from captcha_jax import data, models, synthetic, train  # noqa: E402
from configs import tiny  # noqa: E402


def config_for(folder, **overrides) -> ml_collections.ConfigDict:
  """The tiny config reading `folder`, with `overrides` set."""
  config = tiny.get_config()
  config.data_dir = str(folder)
  for key, value in overrides.items():
    config[key] = value
  return config


def resolve(config):
  """`data.resolve` with the config's own model: (the resolved config, {split: examples})."""
  return data.resolve(config, functools.partial(models.output_steps, config.model))


def cut_png() -> bytes:
  """A PNG cut off after its header: its size reads, its pixels do not decode (a download cut
  short). Files that are no image at all are found out before decoding, in small sets."""
  out = io.BytesIO()
  Image.new('RGB', (100, 40), 'white').save(out, 'PNG')
  return out.getvalue()[:60]


def cpu_devices_env(devices: int) -> dict[str, str]:
  """This process's environment, for a process that splits the CPU into `devices` devices."""
  flags = f'{os.environ["XLA_FLAGS"]} --xla_force_host_platform_device_count={devices}'
  return dict(os.environ, XLA_FLAGS=flags)


def train_command(workdir, captcha_dir, epochs: int = 3) -> list[str]:
  """`python -m captcha_jax.train` on the tiny config, for tests that run it as a process."""
  return [
    sys.executable,
    '-m',
    'captcha_jax.train',
    '--config=configs/tiny.py',
    f'--workdir={workdir}',
    f'--config.data_dir={captcha_dir}',
    f'--config.num_epochs={epochs}',
  ]


@pytest.fixture(scope='session')
def captcha_dir(tmp_path_factory) -> Path:
  """60 synthetic 200×50 captchas of the default alphabet, named LABEL.png."""
  folder = tmp_path_factory.mktemp('captchas')
  synthetic.generate(folder, 60, seed=1)
  return folder


@pytest.fixture
def tiny_config(captcha_dir):
  config = tiny.get_config()
  config.data_dir = str(captcha_dir)
  return config


@pytest.fixture
def copy_of(tmp_path):
  """Copies a folder under tmp_path, so a test can add bad files to it."""

  def copy(folder: Path) -> Path:
    target = tmp_path / 'data'
    shutil.copytree(folder, target)
    return target

  return copy


@pytest.fixture(scope='session')
def trained(tmp_path_factory, captcha_dir):
  """A 3-epoch tiny run on the synthetic captchas; returns (config, workdir, results)."""
  config = tiny.get_config()
  config.data_dir = str(captcha_dir)
  config.num_epochs = 3
  workdir = tmp_path_factory.mktemp('run')
  results = train.train_and_evaluate(config, workdir)
  return config, workdir, results
