"""Inference: one image and batches of 64, on the same images, for every way to read a captcha.

    python bench/inference.py --workdir RUN [--images ../shared/data/captcha_v2] [--json]

Contenders, each reading the same decoded images of --images:
- `predictor`: captcha_jax's `Predictor` (JAX; one CPU device per core as `--cpu_tuning` sets,
  or the GPU), the model's compute in --dtype;
- `onnx`: the same weights exported to a temporary .onnx, read by `OnnxReader` on onnxruntime
  (CPU, --threads intra-op threads, and 1 thread; left out where onnxruntime is not installed);
- `torch`: the same weights in `torch_reference.TorchCRNN` (`flax_to_torch`), under
  torch.inference_mode() with --threads threads (and 1), or on CUDA when torch sees a GPU;
- `ddddocr`: ddddocr 1.6.1's default model with no training, in its own virtual environment
  (created on first use under ~/.cache/captcha_jax/) in a child process; read as it comes and
  restricted to the run's alphabet with `set_ranges`, timed with onnxruntime's default threads
  and with 1 thread.

Latency is from a decoded uint8 array [h, w, 3] to text, CTC decoding included (ddddocr: from a
decoded PIL image); decoding the PNG file is timed apart and printed on its own line. A batch is
64 images in one call (ddddocr reads one image at a time: 64 calls). The contenders take turns
in --rounds rounds (in a rotating order) so that load from other processes falls on all of them
alike; the figures are medians over the rounds. Exact match is over every image of --images
(labels from the file names); `agreement` compares the ONNX model with the Predictor on all of
them (same corrected texts; the largest |log-probability| difference).

Without --workdir the default model is freshly initialised (timings only; exact match is then
meaningless); without the images folder (e.g. on a machine without the data), random pixels
are timed and exact match is left out. `--json` ends with one JSON line of the results.
"""

import argparse
import json
import os
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
from common import ROOT, dataset_config
from ddddocr_reader import DDDDOCR_VERSION, Ddddocr

from captcha_jax import host  # JAX-free: JAX starts later, in the runs

DEFAULT_IMAGES = ROOT.parent / 'shared' / 'data' / 'captcha_v2'
BATCH = 64


def percentiles_ms(seconds: Sequence[float]) -> tuple[float, float]:
  """(median, p95) of durations in seconds, in milliseconds."""
  ms = np.asarray(seconds) * 1e3
  return float(np.median(ms)), float(np.percentile(ms, 95))


# --- the in-process contenders ---


class Timings:
  """Single-image and batch durations of one contender, gathered over the rounds."""

  def __init__(self):
    self.single: list[float] = []
    self.batches: list[float] = []

  def summary(self) -> dict:
    median, p95 = percentiles_ms(self.single)
    return {
      'median_ms': round(median, 3),
      'p95_ms': round(p95, 3),
      'batch_images_per_s': round(BATCH / statistics.median(self.batches), 1),
    }


def time_calls(
  read: Callable[[np.ndarray], object], pixels: np.ndarray, first: int, single: int, batches: int
) -> tuple[list[float], list[float]]:
  """Durations of `single` one-image reads and `batches` reads of BATCH images, from `first`."""
  n = len(pixels)
  one, many = [], []
  for i in range(single):
    x = pixels[(first + i) % n][None]
    start = time.perf_counter()
    read(x)
    one.append(time.perf_counter() - start)
  for b in range(batches):
    x = pixels[np.arange(first + b * BATCH, first + (b + 1) * BATCH) % n]
    start = time.perf_counter()
    read(x)
    many.append(time.perf_counter() - start)
  return one, many


def exact(texts: Sequence[str], labels: Sequence[str] | None) -> float | None:
  if labels is None:
    return None
  return round(sum(t == y for t, y in zip(texts, labels, strict=True)) / len(labels), 4)


def load_model(workdir: str | None, dtype: str):
  """(Predictor with the model computing in `dtype`, float32 config, variables on the host)."""
  import jax
  import ml_collections

  from captcha_jax import models
  from captcha_jax.predict import Predictor

  if workdir:
    trained = Predictor.from_workdir(workdir, batch_size=BATCH)
    config, variables = trained.config, jax.device_get(trained.variables)
  else:
    config = dataset_config()
    model = models.create_model(config.model, len(config.alphabet) + 1)
    shape = (1, config.image_height, config.image_width, 3)
    variables = jax.device_get(
      model.init(jax.random.key(0), np.zeros(shape, np.uint8), train=False)
    )
  config = ml_collections.ConfigDict(config.to_dict())
  config.model.dtype = 'float32'
  computing = ml_collections.ConfigDict(config.to_dict())
  computing.model.dtype = dtype
  return Predictor(computing, variables, batch_size=BATCH), config, variables


def torch_reader(config, variables, threads: int):
  """(read(uint8 pixels) → log-probs, device type, a name) of the same weights in PyTorch."""
  import torch

  from captcha_jax import models
  from captcha_jax.torch_reference import TorchCRNN, flax_to_torch, normalized_nchw
  from captcha_jax.vocab import Vocab

  torch.set_num_threads(threads)
  device = torch.device('cuda' if torch.cuda.is_available() else 'cpu')
  model = TorchCRNN.from_config(config, Vocab(config.alphabet).num_classes).eval()
  model = flax_to_torch(variables, model).to(device)
  mean = torch.tensor(models.IMAGENET_MEAN, device=device).view(1, 3, 1, 1) * 255
  std = torch.tensor(models.IMAGENET_STD, device=device).view(1, 3, 1, 1) * 255

  def preprocess(pixels: np.ndarray) -> 'torch.Tensor':
    x = torch.from_numpy(pixels).to(device).permute(0, 3, 1, 2).float()
    return (x - mean) / std

  sample = np.random.default_rng(0).integers(0, 256, (2, *config_shape(config)), np.uint8)
  difference = (preprocess(sample).cpu() - normalized_nchw(sample)).abs().max().item()
  assert difference < 1e-4, f'torch preprocessing differs from the model`s by {difference}'

  def log_probs(pixels: np.ndarray) -> np.ndarray:
    with torch.inference_mode():
      return torch.log_softmax(model(preprocess(pixels)), -1).cpu().numpy()

  return log_probs, device.type, f'torch {torch.__version__} ({device.type}, {threads} threads)'


def onnx_readers(config, variables, threads: int):
  """(OnnxReader on `threads` threads, one on 1 thread, a name) of the same weights, exported to
  a temporary file. ImportError without onnx and onnxruntime."""
  import onnxruntime

  from captcha_jax import onnx_export
  from captcha_jax.onnx_reader import OnnxReader

  with tempfile.TemporaryDirectory() as tmp:
    path = Path(tmp) / 'reader.onnx'
    path.write_bytes(onnx_export.serialize(onnx_export.to_onnx(config, variables)))
    readers = OnnxReader(path, threads, BATCH), OnnxReader(path, 1, BATCH)
  return *readers, f'onnxruntime {onnxruntime.__version__} (cpu, {threads} threads)'


def one_thread_torch(read: Callable[[np.ndarray], np.ndarray], threads: int) -> Callable:
  """`read` with torch on 1 intra-op thread, `threads` again after."""
  import torch

  def read_on_one(pixels: np.ndarray) -> np.ndarray:
    torch.set_num_threads(1)
    try:
      return read(pixels)
    finally:
      torch.set_num_threads(threads)

  return read_on_one


def config_shape(config) -> tuple[int, int, int]:
  return int(config.image_height), int(config.image_width), 3


def jax_log_probs(predictor) -> Callable[[np.ndarray], np.ndarray]:
  """log-probs of the Predictor's model and variables (its compute dtype), for the agreement."""
  import jax

  apply = jax.jit(
    lambda v, x: jax.nn.log_softmax(predictor.model.apply(v, x, train=False).astype('float32'))
  )
  variables = jax.device_put(jax.device_get(predictor.variables), jax.devices()[0])
  return lambda pixels: np.asarray(apply(variables, pixels))


def main(argv: Sequence[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--workdir', help='A trained run (default: a fresh default model).')
  parser.add_argument('--images', type=Path, default=DEFAULT_IMAGES)
  parser.add_argument('--rounds', type=int, default=5, help='Turns each contender takes.')
  parser.add_argument('--single', type=int, default=20, help='One-image reads per round.')
  parser.add_argument('--batches', type=int, default=2, help='Batches of 64 per round.')
  parser.add_argument(
    '--threads',
    type=int,
    default=host.available_cores(),
    help='onnxruntime and torch threads (default: the cores this process may use, as JAX takes).',
  )
  parser.add_argument('--dtype', choices=('float32', 'bfloat16'), default='float32')
  parser.add_argument('--skip_ddddocr', action='store_true')
  parser.add_argument('--skip_torch', action='store_true')
  parser.add_argument('--skip_onnx', action='store_true')
  parser.add_argument('--json', action='store_true', help='End with the results as one JSON line.')
  args = parser.parse_args(argv)

  # Set before JAX starts: one CPU device per core (as --cpu_tuning does), and on a GPU no
  # preallocation of most of its memory, which torch shares here.
  os.environ.setdefault('XLA_PYTHON_CLIENT_PREALLOCATE', 'false')
  host.tune_cpu(BATCH)
  import jax

  from captcha_jax import decoding, images, labelled

  predictor, config, variables = load_model(args.workdir, args.dtype)
  h, w, _ = config_shape(config)
  vocab, fixed = predictor.vocab, int(config.fixed_label_length)
  if args.images.is_dir():
    paths = labelled.find_images(args.images)[0]
    labels: list[str] | None = [labelled.label_from_path(p) for p in paths]
    pixels, decode_s = [], []
    for path in paths:
      start = time.perf_counter()
      pixels.append(images.load_image(path, h, w))
      decode_s.append(time.perf_counter() - start)
    pixels = np.stack(pixels)
    decode_ms = percentiles_ms(decode_s)[0]
  else:
    print(f'No folder {str(args.images)!r}: timing random pixels, no exact match.')
    paths, labels, decode_ms = [], None, None
    pixels = np.random.default_rng(0).integers(0, 256, (256, h, w, 3), np.uint8)

  def texts(readings: Sequence[decoding.Reading]) -> list[str]:
    return [r.text for r in readings]

  names = {
    'predictor': f'captcha_jax Predictor ({jax.device_count()} {jax.default_backend()} '
    f'devices, {args.dtype})'
  }
  # Readers of the same weights outside JAX: uint8 pixels → log-probs, and 1-thread variants.
  log_probs: dict[str, Callable[[np.ndarray], np.ndarray]] = {}
  one_thread: dict[str, Callable[[np.ndarray], np.ndarray]] = {}
  if not args.skip_onnx:
    try:
      onnx, onnx_one, names['onnx'] = onnx_readers(config, variables, args.threads)
      log_probs['onnx'], one_thread['onnx'] = onnx.log_probs, onnx_one.log_probs
    except ImportError as e:  # e.g. a GPU image without onnxruntime
      print(f'ONNX is left out: {e}.')
  if not args.skip_torch:
    try:
      log_probs['torch'], torch_device, names['torch'] = torch_reader(
        config, variables, args.threads
      )
      if torch_device == 'cpu':
        one_thread['torch'] = one_thread_torch(log_probs['torch'], args.threads)
    except ImportError as e:
      print(f'PyTorch is left out: {e}.')

  def reader(log_probs_of: Callable[[np.ndarray], np.ndarray]) -> Callable[[np.ndarray], list]:
    return lambda pixels: decoding.read(log_probs_of(pixels), vocab, fixed)

  readers: dict[str, Callable[[np.ndarray], list]] = {'predictor': predictor.read_pixels}
  readers.update({name: reader(f) for name, f in log_probs.items()})

  # Every image once: the exact match, and each reader's log-probs against the Predictor's model
  # on the same batches (their texts are decoded from those log-probs, as read_pixels does).
  jax_lp = jax_log_probs(predictor)
  found: dict[str, list[str]] = {name: [] for name in readers}
  worst = dict.fromkeys(log_probs, 0.0)
  for start in range(0, len(pixels), BATCH):
    chunk = pixels[start : start + BATCH]
    found['predictor'] += texts(predictor.read_pixels(chunk))
    reference = jax_lp(chunk)
    for name, of in log_probs.items():
      lp = of(chunk)
      found[name] += texts(decoding.read(lp, vocab, fixed))
      worst[name] = max(worst[name], float(np.abs(reference - lp).max()))
  results = {name: {'texts': t} for name, t in found.items()}

  def same_texts(name: str) -> int:
    pairs = zip(found['predictor'], found[name], strict=True)
    return sum(a == b for a, b in pairs)

  agreement = {
    'same_texts': same_texts('onnx') if 'onnx' in found else None,
    'compared': len(pixels),
    'max_abs_log_prob': worst.get('onnx'),
  }
  if 'torch' in found:
    agreement['torch_same_texts'] = same_texts('torch')
    agreement['torch_max_abs_log_prob'] = worst['torch']

  ddddocr = None
  if not args.skip_ddddocr and labels is None:
    print('ddddocr is left out: it reads the image files.')
  elif not args.skip_ddddocr:
    try:
      ddddocr = Ddddocr(args.images, [p.name for p in paths], config.alphabet)
    except (OSError, subprocess.CalledProcessError) as e:  # no registry, no venv module, ...
      print(f'ddddocr is left out: its environment could not be made ({e}).')
  if ddddocr:
    read = ddddocr.ask(op='read_all')
    results['ddddocr'] = {
      'texts': read['texts'],
      'exact_restricted': exact(read['restricted'], labels),
    }

  # What is timed: every reader, and the CPU ones also on 1 thread (on a loaded machine, threads
  # that wait on each other at every op can cost more than they bring).
  timed = {}
  for name in readers:
    timed[name] = readers[name]
    if name in one_thread and args.threads != 1:
      timed[f'{name}_1_thread'] = reader(one_thread[name])
      names[f'{name}_1_thread'] = f'{names[name].split(" (")[0]}, 1 thread'
  if ddddocr:
    timed['ddddocr'] = timed['ddddocr_1_thread'] = None
    names['ddddocr'] = f'ddddocr {DDDDOCR_VERSION} (onnxruntime default threads)'
    names['ddddocr_1_thread'] = 'ddddocr, 1 onnxruntime thread'
  timings = {name: Timings() for name in timed}
  order = list(timed)

  def run(name: str, first: int, single: int, batches: int) -> tuple[list, list]:
    if name.startswith('ddddocr'):
      reader = 'one_thread' if name.endswith('thread') else 'default'
      got = ddddocr.ask(
        op='time', reader=reader, first=first, single=single, batches=batches, batch=BATCH
      )
      return got['single'], got['batches']
    return time_calls(timed[name], pixels, first, single, batches)

  # Warm-up: the one-image shape is not compiled yet, and the Predictor sends each one-image call
  # to the next device in turn, each of which compiles its own.
  for name in order:
    run(name, 0, max(3, jax.device_count()), 1)
  for round_ in range(args.rounds):
    first = round_ * (args.single + args.batches * BATCH)
    shift = round_ % len(order)
    for name in order[shift:] + order[:shift]:
      one, many = run(name, first, args.single, args.batches)
      timings[name].single += one
      timings[name].batches += many
  if ddddocr:
    ddddocr.close()

  summary: dict = {}
  for name in order:
    base = name.removesuffix('_1_thread')
    if base != name:
      summary[base]['one_thread'] = timings[name].summary()
    else:
      summary[name] = {**timings[name].summary(), 'exact': exact(results[name]['texts'], labels)}
  if ddddocr:
    summary['ddddocr']['exact_restricted'] = results['ddddocr']['exact_restricted']
  summary['agreement'] = agreement
  summary['decode_ms'] = decode_ms
  summary['setup'] = {
    'images': len(pixels),
    'rounds': args.rounds,
    'single_per_round': args.single,
    'batches_per_round': args.batches,
    'dtype': args.dtype,
    'device': str(jax.devices()[0].device_kind),
    'cpu_count': os.cpu_count(),
    'workdir': args.workdir,
  }

  source = f'{len(pixels)} images of {args.images}' if labels else 'random pixels'
  print(
    f'{source}; {args.rounds} rounds of {args.single} one-image reads and {args.batches} '
    f'batches of {BATCH} each; {os.cpu_count()} CPU threads, {jax.devices()[0].device_kind}'
  )
  print(f'| {"contender":52s} | 1 image ms | p95 ms | batch-64 img/s | exact |')
  print(f'| {"---":52s} | --- | --- | --- | --- |')
  rows = [
    (name, summary[name.removesuffix('_1_thread')].get('one_thread', {}))
    if name.endswith('_1_thread')
    else (name, summary[name])
    for name in order
  ]
  for name, row in rows:
    if name == 'ddddocr':
      score = f'{100 * row["exact"]:.2f}% ({100 * row["exact_restricted"]:.2f}% set_ranges)'
    elif row.get('exact') is not None:
      score = f'{100 * row["exact"]:.2f}%'
    else:
      score = '—'
    print(
      f'| {names[name]:52s} | {row["median_ms"]:.2f} | {row["p95_ms"]:.2f} '
      f'| {row["batch_images_per_s"]:.1f} | {score} |'
    )
  print(
    'Times run from a decoded uint8 array (ddddocr: a decoded PIL image) to text, CTC decoding '
    'included; decoding the PNG file is extra:'
    + (f' {decode_ms:.2f} ms (images.load_image, median)' if decode_ms is not None else ' —')
    + (f', ddddocr opening it {ddddocr.decode_ms:.2f} ms.' if ddddocr else '.')
  )
  for name, label in (('onnx', 'ONNX'), ('torch', 'PyTorch')):
    if name in log_probs:
      print(
        f'{label} vs Predictor ({args.dtype}): same text on {same_texts(name)} of {len(pixels)} '
        f'images; max |log-prob difference| {worst[name]:.2e}'
      )
  if args.json:
    print(json.dumps(summary))


if __name__ == '__main__':
  main()
