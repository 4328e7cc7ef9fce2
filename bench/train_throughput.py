"""Train-step throughput: captcha_jax's jitted step against the same model in PyTorch.

    python bench/train_throughput.py [--batch-size 32] [--steps 30] [--rounds 3]

Each framework runs in its own subprocess (so peak memory is its own), alternating for --rounds
rounds, on the same architecture, batch, input size, loss and optimizer (AdamW, global-norm
clipping, CTC) and with the same environment. Prints images/s (median over timed steps, then over
rounds), compile or first-step time, peak RSS, and the ratio.
"""

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from captcha_jax import host  # noqa: E402


def load_config(path):
  import importlib.util

  spec = importlib.util.spec_from_file_location('bench_config', ROOT / path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def fake_batch(config, batch_size, seed=0):
  import numpy as np

  rng = np.random.default_rng(seed)
  shape = (batch_size, config.image_height, config.image_width, 3)
  return {
    'image': rng.normal(size=shape).astype(np.float32),
    'labels': rng.integers(1, len(config.alphabet) + 1, (batch_size, 5)).astype(np.int32),
    'label_paddings': np.zeros((batch_size, 5), np.float32),
    'mask': np.ones(batch_size, np.float32),
  }


def peak_rss_mb() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_jax(config, batch_size, num_steps, warmup):
  import jax

  from captcha_jax import models, steps

  host.use_cpu_cores(batch_size)  # as the train CLI does
  config.batch_size = batch_size
  model = models.create_model(config.model, len(config.alphabet) + 1, axis_name=steps.DATA_AXIS)
  mesh = steps.make_mesh()
  start = time.perf_counter()
  # As the train CLI does: both steps compiled from shapes, then the state.
  state, compiled, _ = steps.compile_and_create_state(
    config, model, steps.make_schedule(config, 100), mesh
  )
  compile_s = time.perf_counter() - start
  batch = steps.to_device(fake_batch(config, batch_size), mesh)
  times = []
  for i in range(warmup + num_steps):
    start = time.perf_counter()
    state, metrics = compiled(state, batch)
    jax.block_until_ready(metrics['loss'])
    if i >= warmup:
      times.append(time.perf_counter() - start)
  return {
    'framework': f'jax {jax.__version__} ({jax.device_count()} {jax.devices()[0].platform})',
    'step_s': statistics.median(times),
    'first_s': compile_s,
    'loss': float(metrics['loss']),
  }


def run_torch(config, batch_size, num_steps, warmup):
  import torch

  from tests.torch_reference import TorchCRNN

  torch.set_num_threads(os.cpu_count())
  device = 'cuda' if torch.cuda.is_available() else 'cpu'
  m = config.model
  feature_height = _trunk_height(config.image_height, m.backbone_strides[: m.backbone_layers])
  model = TorchCRNN(
    len(config.alphabet) + 1,
    m.backbone_layers,
    m.backbone_strides,
    feature_height,
    m.projection_size,
    m.rnn_hidden_size,
    m.dropout,
  ).to(device)
  model.train()
  decay = [p for p in model.parameters() if p.ndim > 1]
  no_decay = [p for p in model.parameters() if p.ndim <= 1]
  optimizer = torch.optim.AdamW(
    [
      {'params': decay, 'weight_decay': config.weight_decay},
      {'params': no_decay, 'weight_decay': 0},
    ],
    lr=config.learning_rate,
  )
  b = fake_batch(config, batch_size)
  images = torch.from_numpy(b['image'].transpose(0, 3, 1, 2).copy()).to(device)
  labels = torch.from_numpy(b['labels']).long().to(device)
  lengths = torch.full((batch_size,), 5, dtype=torch.long, device=device)

  def step():
    logits = model(images)
    log_probs = logits.log_softmax(-1).transpose(0, 1)
    steps_t = torch.full((batch_size,), log_probs.shape[0], dtype=torch.long, device=device)
    loss = torch.nn.functional.ctc_loss(log_probs, labels, steps_t, lengths, reduction='sum')
    loss = loss / batch_size
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip_norm)
    optimizer.step()
    return loss

  times = []
  first_s = None
  for i in range(warmup + num_steps):
    start = time.perf_counter()
    loss = step()
    loss.item()
    elapsed = time.perf_counter() - start
    first_s = elapsed if first_s is None else first_s
    if i >= warmup:
      times.append(elapsed)
  return {
    'framework': f'torch {torch.__version__} ({device})',
    'step_s': statistics.median(times),
    'first_s': first_s,
    'loss': float(loss),
  }


def _trunk_height(height, strides):
  height = (height + 2 * 3 - 7) // 2 + 1
  height = (height + 2 - 3) // 2 + 1
  for sh, _ in strides:
    height = (height + 2 - 3) // sh + 1
  return height


def median_result(results: list[dict]) -> dict:
  """One framework's rounds → the median of each figure (its name from the first)."""
  keys = ('step_s', 'first_s', 'images_per_s', 'peak_rss_mb')
  return {**results[0], **{k: statistics.median(r[k] for r in results) for k in keys}}


def child(args):
  config = load_config(args.config)
  runner = run_jax if args.child == 'jax' else run_torch
  result = runner(config, args.batch_size, args.steps, args.warmup)
  result['images_per_s'] = args.batch_size / result['step_s']
  result['peak_rss_mb'] = peak_rss_mb()
  print(json.dumps(result))


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--config', default='configs/default.py')
  parser.add_argument('--batch-size', type=int, default=32)
  parser.add_argument('--steps', type=int, default=30)
  parser.add_argument('--warmup', type=int, default=3)
  parser.add_argument('--rounds', type=int, default=3, help='alternating runs of each')
  parser.add_argument('--skip-torch', action='store_true')
  parser.add_argument('--child', choices=['jax', 'torch'], help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.child:
    return child(args)
  # Rounds alternate the frameworks so that a machine whose speed drifts (shared cloud cores)
  # affects both alike; each framework's figures are the median over its rounds.
  env = host.with_huge_pages(os.environ)  # as the CLIs run (captcha_jax/host.py)
  runs = {name: [] for name in ['jax'] + ([] if args.skip_torch else ['torch'])}
  for _ in range(args.rounds):
    for name, results in runs.items():
      cmd = [sys.executable, __file__, '--child', name, '--config', args.config]
      cmd += ['--batch-size', str(args.batch_size), '--steps', str(args.steps)]
      cmd += ['--warmup', str(args.warmup)]
      out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env)
      if out.returncode:
        sys.exit(f'{name} failed:\n{out.stderr[-3000:]}')
      results.append(json.loads(out.stdout.strip().splitlines()[-1]))
  results = {name: median_result(rs) for name, rs in runs.items()}
  print(f'batch {args.batch_size}, {args.config}, {os.cpu_count()} CPU threads')
  print(
    f'{"framework":32s} {"images/s":>9s} {"step ms":>8s} {"compile/first s":>16s} {"peak MB":>8s}'
  )
  for r in results.values():
    print(
      f'{r["framework"]:32s} {r["images_per_s"]:9.1f} {1e3 * r["step_s"]:8.1f} '
      f'{r["first_s"]:16.2f} {r["peak_rss_mb"]:8.0f}'
    )
  if 'torch' in results:
    ratio = results['jax']['images_per_s'] / results['torch']['images_per_s']
    memory = results['jax']['peak_rss_mb'] / results['torch']['peak_rss_mb']
    print(f'JAX/PyTorch throughput: {ratio:.2f}x   peak memory: {memory:.2f}x')


if __name__ == '__main__':
  main()
