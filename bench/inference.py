"""Inference: single-image latency and batched throughput of `Predictor` against PyTorch (eval).

    python bench/inference.py [--workdir RUN] [--images ../shared/data/captcha_v2]

With --workdir, reads a trained run; without, a freshly initialised default model (same cost).
Both sides take decoded uint8 images and include preprocessing (normalisation) and, for
captcha_jax, CTC decoding; PyTorch runs the same architecture under torch.inference_mode().
"""

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / 'bench'))


def timed(fn, repeats):
  fn()  # warm-up (compiles)
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return times


def summary(name, single, batched, batch):
  single_ms = [1e3 * t for t in single]
  p95 = float(np.percentile(single_ms, 95))
  rate = batch / statistics.median(batched)
  print(f'{name:28s} {statistics.median(single_ms):10.2f} {p95:9.2f} {rate:12.1f}')
  return rate


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--workdir', default=None)
  parser.add_argument('--images', default=None, help='A folder of images (default: random).')
  parser.add_argument('--batch-size', type=int, default=64)
  parser.add_argument('--repeats', type=int, default=50)
  parser.add_argument('--skip-torch', action='store_true')
  args = parser.parse_args()

  import jax
  from train_throughput import _trunk_height, load_config

  from captcha_jax import data, host, models, steps
  from captcha_jax.predict import Predictor

  host.use_cpu_cores(args.batch_size)  # as the predict and evaluate commands do
  if args.workdir:
    predictor = Predictor.from_workdir(args.workdir, batch_size=args.batch_size)
  else:
    config = load_config('configs/default.py')
    model = models.create_model(config.model, len(config.alphabet) + 1)
    state = steps.create_train_state(
      config, model, steps.make_optimizer(config, lambda s: 0.0), jax.random.PRNGKey(0)
    )
    variables = {'params': state.params, 'batch_stats': state.batch_stats}
    predictor = Predictor(config, variables, batch_size=args.batch_size)
  config = predictor.config
  h, w = config.image_height, config.image_width
  if args.images:
    paths = data.find_images(args.images)[: args.batch_size]
    images = np.stack([data.load_image(p, h, w) for p in paths])
  else:
    images = np.random.default_rng(0).integers(0, 256, (args.batch_size, h, w, 3), np.uint8)
  images = np.concatenate([images] * (-(-args.batch_size // len(images))))[: args.batch_size]

  platform = jax.devices()[0].platform
  print(
    f'batch {args.batch_size}, {os.cpu_count()} CPU threads, {jax.device_count()} {platform} devices'
  )
  print(f'{"":28s} {"1 image ms":>10s} {"p95 ms":>9s} {"batch img/s":>12s}')
  jax_rate = summary(
    f'captcha_jax {jax.__version__}',
    timed(lambda: predictor.predict([images[0]]), args.repeats),
    timed(lambda: predictor.predict(list(images)), max(args.repeats // 5, 5)),
    args.batch_size,
  )
  if args.skip_torch:
    return
  import torch

  from captcha_jax.torch_reference import TorchCRNN

  torch.set_num_threads(os.cpu_count())
  m = config.model
  reference = TorchCRNN(
    len(config.alphabet) + 1,
    m.backbone_layers,
    m.backbone_strides,
    _trunk_height(h, m.backbone_strides[: m.backbone_layers]),
    m.projection_size,
    m.rnn_hidden_size,
  ).eval()

  def torch_predict(batch):
    with torch.inference_mode():
      x = torch.from_numpy(data.normalize(batch).transpose(0, 3, 1, 2).copy())
      return reference(x).argmax(-1).numpy()

  torch_rate = summary(
    f'torch {torch.__version__}',
    timed(lambda: torch_predict(images[:1]), args.repeats),
    timed(lambda: torch_predict(images), max(args.repeats // 5, 5)),
    args.batch_size,
  )
  print(f'JAX/PyTorch batched throughput: {jax_rate / torch_rate:.2f}x')


if __name__ == '__main__':
  from captcha_jax import host

  host.restart_with_huge_pages()  # as train/evaluate do; both frameworks run in this process
  main()
