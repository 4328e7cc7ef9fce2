"""Train-step throughput: captcha_jax's compiled step against the same model in PyTorch.

    python bench/train_throughput.py [--batch_size 32] [--steps 30] [--rounds 3] [--cpu_tuning] \
        [--dtype bfloat16] [--json]

Each framework runs in its own subprocess (so peak memory is its own), alternating for --rounds
rounds, on the same architecture, batch, input size, loss and optimizer (AdamW, global-norm
clipping, CTC) and with the same environment. The JAX side is set up as the train command is
(with --cpu_tuning: one JAX device per core, compiler memory given back, and both frameworks
started with the huge-pages tunable the README documents). Prints images/s (median over timed
steps, then over rounds), compile or first-step time, peak RSS, the ratio, and for JAX the
FLOP/s the step achieves (XLA's count of the compiled step's operations over its time). --dtype
sets the compute dtype of both (bfloat16: JAX's mixed precision, PyTorch's autocast); --json
prints the figures as one JSON line as well.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

from common import ROOT, dataset_config, peak_rss_mb


def run_jax(config, batch_size, num_steps, warmup, cpu_tuning):
  from captcha_jax import data, host

  if cpu_tuning:
    host.tune_cpu(batch_size)  # as the train command does
  import jax

  from captcha_jax import models, steps

  config.batch_size = batch_size
  num_classes = len(config.alphabet) + 1
  model = models.create_model(config.model, num_classes, axis_name=steps.DATA_AXIS)
  mesh = steps.make_mesh()
  start = time.perf_counter()
  state, compiled, _ = steps.compile_and_create_state(
    config,
    model,
    steps.make_schedule(config, 100),
    mesh,
    host.release_free_memory if cpu_tuning else lambda: None,
  )
  compile_s = time.perf_counter() - start
  flops = compiled.cost_analysis()['flops'] * jax.device_count()  # per-device program × devices
  batch = steps.to_device(data.BatchSpec.of(config, batch_size).random(num_classes), mesh)
  votes = steps.stop_votes(False, mesh)
  times = []
  for i in range(warmup + num_steps):
    start = time.perf_counter()
    state, metrics = compiled(state, batch, votes)
    jax.block_until_ready(metrics['loss'])
    if i >= warmup:
      times.append(time.perf_counter() - start)
  return {
    'framework': f'jax {jax.__version__} ({jax.device_count()} {jax.devices()[0].platform})',
    'step_s': statistics.median(times),
    'first_s': compile_s,
    'loss': float(metrics['loss']),
    'flops_per_step': flops,
    'device_kind': jax.devices()[0].device_kind,
  }


def run_torch(config, batch_size, num_steps, warmup, cpu_tuning):
  del cpu_tuning  # PyTorch uses every core by itself
  import torch

  from captcha_jax import data, host
  from captcha_jax.torch_reference import TorchCRNN, normalized_nchw

  torch.set_num_threads(host.available_cores())  # the cores JAX's devices count
  device = 'cuda' if torch.cuda.is_available() else 'cpu'
  num_classes = len(config.alphabet) + 1
  model = TorchCRNN.from_config(config, num_classes).to(device)
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
  b = data.BatchSpec.of(config, batch_size).random(num_classes)
  images = normalized_nchw(b['image']).to(device)
  labels = torch.from_numpy(b['labels']).long().to(device)
  lengths = torch.full((batch_size,), labels.shape[1], dtype=torch.long, device=device)

  autocast = torch.autocast(device, dtype=torch.bfloat16, enabled=config.model.dtype == 'bfloat16')

  def step():
    with autocast:
      logits = model(images).float()
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


def median_result(results: list[dict]) -> dict:
  """One framework's rounds → the median of each figure (its name from the first)."""
  keys = ('step_s', 'first_s', 'images_per_s', 'peak_rss_mb')
  return {**results[0], **{k: statistics.median(r[k] for r in results) for k in keys}}


def child(args):
  config = dataset_config(args.config)
  config.model.dtype = args.dtype
  runner = run_jax if args.child == 'jax' else run_torch
  result = runner(config, args.batch_size, args.steps, args.warmup, args.cpu_tuning)
  result['images_per_s'] = args.batch_size / result['step_s']
  result['peak_rss_mb'] = peak_rss_mb()
  print(json.dumps(result))


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--config', default='configs/default.py')
  parser.add_argument('--batch_size', type=int, default=32)
  parser.add_argument('--steps', type=int, default=30)
  parser.add_argument('--warmup', type=int, default=3)
  parser.add_argument('--rounds', type=int, default=3, help='alternating runs of each')
  parser.add_argument('--cpu_tuning', action='store_true', help='as the train command takes it')
  parser.add_argument('--dtype', default='float32', choices=('float32', 'bfloat16'))
  parser.add_argument('--skip_torch', action='store_true')
  parser.add_argument('--json', action='store_true', help='also print the figures as JSON')
  parser.add_argument('--child', choices=['jax', 'torch'], help=argparse.SUPPRESS)
  args = parser.parse_args()
  if args.child:
    return child(args)
  from captcha_jax import host

  env = dict(os.environ)
  if args.cpu_tuning:
    env['GLIBC_TUNABLES'] = host.HUGE_PAGES
  # Rounds alternate the frameworks so that a machine whose speed drifts (shared cloud cores)
  # affects both alike; each framework's figures are the median over its rounds.
  runs = {name: [] for name in ['jax'] + ([] if args.skip_torch else ['torch'])}
  for _ in range(args.rounds):
    for name, results in runs.items():
      cmd = [sys.executable, __file__, '--child', name, '--config', args.config]
      cmd += ['--batch_size', str(args.batch_size), '--steps', str(args.steps)]
      cmd += ['--warmup', str(args.warmup), '--dtype', args.dtype]
      cmd += ['--cpu_tuning'] if args.cpu_tuning else []
      out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env)
      if out.returncode:
        sys.exit(f'{name} failed:\n{out.stderr[-3000:]}')
      results.append(json.loads(out.stdout.strip().splitlines()[-1]))
  results = {name: median_result(rs) for name, rs in runs.items()}
  tuning = 'CPU tuning on' if args.cpu_tuning else 'no CPU tuning'
  cores = host.available_cores()
  print(f'batch {args.batch_size}, {args.dtype}, {args.config}, {cores} CPU threads, {tuning}')
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
  jax_result = results['jax']
  jax_result['flops_per_s'] = jax_result['flops_per_step'] / jax_result['step_s']
  print(f'JAX step: {jax_result["flops_per_s"] / 1e12:.3f} TFLOP/s achieved')
  if args.json:
    print(json.dumps({'batch_size': args.batch_size, 'dtype': args.dtype, **results}))


if __name__ == '__main__':
  main()
