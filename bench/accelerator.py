"""Every bench on this machine's accelerator, float32 and bfloat16, in one table.

    python bench/accelerator.py --data_dir ../shared/data/captcha_v2 [--seeds 1] [--quick]

On a GPU (or TPU) machine it runs, against PyTorch on the same device where PyTorch can use it:
the train step (bench/train_throughput.py: images/s, the ratio, compile time, the FLOP/s the
step achieves against the card's peak), inference (bench/inference.py: one image and batches
of 64), and time to 98% validation (bench/time_to_accuracy.py, compilation included), each with
the model's compute in float32 and in bfloat16 (float32 weights and loss). It runs anywhere
(on a CPU too, where it shows the same columns), and prints one table, plus JSON with --json.
"""

import argparse
import json
import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parent
# Dense peak FLOP/s by device kind (vendor data sheets; bf16 tensor cores, and float32 through
# TF32 tensor cores, which XLA uses for float32 matmuls and convolutions by default on these).
PEAK_FLOPS = {
  'NVIDIA H100 80GB HBM3': {'bfloat16': 989e12, 'float32': 495e12},
  'NVIDIA H100 PCIe': {'bfloat16': 756e12, 'float32': 378e12},
  'NVIDIA H200': {'bfloat16': 989e12, 'float32': 495e12},
  'NVIDIA A100-SXM4-40GB': {'bfloat16': 312e12, 'float32': 156e12},
  'NVIDIA A100-SXM4-80GB': {'bfloat16': 312e12, 'float32': 156e12},
  'Tesla T4': {'bfloat16': 8.1e12, 'float32': 8.1e12},  # Turing: fp16 tensor cores, no bf16
  'NVIDIA L4': {'bfloat16': 121e12, 'float32': 60e12},
  'TPU v2': {'bfloat16': 46e12, 'float32': 46e12},
  'TPU v3': {'bfloat16': 123e12, 'float32': 123e12},
}


def run_json(script: str, *args: str) -> dict:
  """Runs a bench with --json and returns its last line, parsed."""
  command = [sys.executable, str(BENCH / script), *args, '--json']
  out = subprocess.run(command, capture_output=True, text=True)
  if out.returncode:
    sys.exit(f'{script} failed:\n{out.stdout[-2000:]}\n{out.stderr[-3000:]}')
  print(out.stdout, flush=True)
  return json.loads(out.stdout.strip().splitlines()[-1])


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--data_dir', required=True, help='The real captchas, for time to accuracy')
  parser.add_argument('--seeds', type=int, default=1)
  parser.add_argument('--batch_size', type=int, default=32)
  parser.add_argument('--quick', action='store_true', help='train step and inference only')
  parser.add_argument('--json', action='store_true')
  args = parser.parse_args()
  rows = []
  for dtype in ('float32', 'bfloat16'):
    step = run_json(
      'train_throughput.py', '--batch_size', str(args.batch_size), '--rounds', '2', '--dtype', dtype
    )
    inference = run_json('inference.py', '--dtype', dtype, '--skip_ddddocr')
    accuracy = None
    if not args.quick:
      accuracy = run_json(
        'time_to_accuracy.py',
        '--data_dir',
        args.data_dir,
        '--seeds',
        str(args.seeds),
        f'--config.model.dtype={dtype}',
      )['mean']
    jax_step, torch_step = step['jax'], step.get('torch')
    peak = PEAK_FLOPS.get(jax_step['device_kind'], {}).get(dtype)
    achieved = jax_step['flops_per_step'] / jax_step['step_s']
    rows.append(
      {
        'dtype': dtype,
        'device': jax_step['device_kind'],
        'train_images_per_s': jax_step['images_per_s'],
        'torch_train_images_per_s': torch_step and torch_step['images_per_s'],
        'train_ratio': torch_step and jax_step['images_per_s'] / torch_step['images_per_s'],
        'compile_s': jax_step['first_s'],
        'tflops': achieved / 1e12,
        'of_peak': peak and achieved / peak,
        'one_image_ms': inference['predictor']['median_ms'],
        'batch_images_per_s': inference['predictor']['batch_images_per_s'],
        'torch_batch_images_per_s': inference.get('torch', {}).get('batch_images_per_s'),
        's_to_98': accuracy and accuracy.get('s98'),
        'epoch_to_98': accuracy and accuracy.get('epoch98'),
        'test_exact': accuracy and accuracy.get('test_exact'),
      }
    )

  def fmt(value, spec):
    return '—' if value is None else format(value, spec)

  print(
    '| dtype | device | train img/s | PyTorch | ratio | compile s | TFLOP/s (of peak) '
    '| 1 image ms | batch-64 img/s | PyTorch | s → 98% val | epoch | test exact |'
  )
  print('|' + ' --- |' * 13)
  for r in rows:
    peak = f' ({100 * r["of_peak"]:.1f}%)' if r['of_peak'] else ''
    print(
      f'| {r["dtype"]} | {r["device"]} | {fmt(r["train_images_per_s"], ".1f")} '
      f'| {fmt(r["torch_train_images_per_s"], ".1f")} | {fmt(r["train_ratio"], ".2f")}× '
      f'| {fmt(r["compile_s"], ".1f")} | {r["tflops"]:.3f}{peak} | {fmt(r["one_image_ms"], ".2f")} '
      f'| {fmt(r["batch_images_per_s"], ".0f")} | {fmt(r["torch_batch_images_per_s"], ".0f")} '
      f'| {fmt(r["s_to_98"], ".0f")} | {fmt(r["epoch_to_98"], ".0f")} '
      f'| {fmt(r["test_exact"] and 100 * r["test_exact"], ".2f")} |'
    )
  if args.json:
    print(json.dumps(rows))


if __name__ == '__main__':
  main()
