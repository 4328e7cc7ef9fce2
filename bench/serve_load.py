"""Load test of the reading service: concurrent clients reading captchas back to back over HTTP.

    python bench/serve_load.py --fake              # the service around a fake reader
    python bench/serve_load.py --workdir RUN       # a trained run's best checkpoint
    python bench/serve_load.py --onnx model.onnx   # an exported model

Starts `captcha_jax.serve` in a child process on a free port of 127.0.0.1 (and only there), waits
for /health, then runs --clients threads for --duration seconds (or until --requests in all),
each POSTing one image of --images per request, back to back on a kept-alive connection. Prints
requests/s, p50/p99 latency, the exact-match rate against the file names (a file's label is its
stem) and the mean number of images per model call; `--json` adds the same as one JSON line.

The fake reader reads an image as its mean pixel value (so it matches no label) after sleeping
--fake-ms per call: it measures the service itself, HTTP, decoding and batching, not a model.
The clients are Python threads on the same machine, so they share its cores with the server.

`--breakdown` says where the time goes: after the load test it times, in a fresh child with
the same reader, one `reader.predict` call per batch size (powers of two up to --max-batch) on
decoded images and the decoding of one file's bytes, then runs the same load against the fake
reader (0 ms) for the service's own ceiling (HTTP, decoding, batching, the clients).
`--cpu_tuning` gives the served run one JAX device per core, as the serve command's flag does.
"""

import argparse
import http.client
import json
import multiprocessing
import queue
import socket
import statistics
import threading
import time
from pathlib import Path

import numpy as np
from common import ROOT

from captcha_jax import cli, images, serve
from captcha_jax.decoding import Reading
from captcha_jax.images import IMAGE_EXTENSIONS

DEFAULT_IMAGES = ROOT.parent / 'shared' / 'data' / 'captcha_v2'
HOST = '127.0.0.1'  # the service and all its traffic stay on this machine
# What the service should sustain: 16 clients sending one image each.
TARGET_RPS = 150
TARGET_P99_MS = 100


class FakeReader:
  """Reads an image as its mean pixel value, after sleeping `delay_ms` per call."""

  def __init__(self, height: int = 50, width: int = 200, delay_ms: float = 0.0):
    self.height, self.width, self.delay = height, width, delay_ms / 1e3

  def predict(self, images):
    time.sleep(self.delay)
    return [Reading(t, t, 1.0) for t in (str(round(float(im.mean()))) for im in images)]


def _reader(args: argparse.Namespace):
  """The reader to serve, in a child process (JAX starts there, never in the clients' process)."""
  if args.fake:
    return FakeReader(delay_ms=args.fake_ms)
  if args.cpu_tuning and args.workdir:
    from captcha_jax import host

    host.tune_cpu(args.max_batch)  # as `captcha_jax.serve --cpu_tuning` does
  return cli.serving_reader(args.workdir, args.onnx, False, args.workers, args.max_batch)


def _serve(args: argparse.Namespace, port: int) -> None:
  """The child process: the service, until terminated."""
  reader = _reader(args)
  serve.serve_reader(
    reader,
    host=HOST,
    port=port,
    log_level='warning',
    max_batch=args.max_batch,
    max_wait_ms=args.max_wait_ms,
    workers=args.workers,
  )


def _time_reader(args: argparse.Namespace, out: multiprocessing.Queue) -> None:
  """The child process of --breakdown: ms per `predict` call by batch size, and ms to decode."""
  reader = _reader(args)
  files = load_files(args.images, args.limit_images)
  decode_s = []
  for _, data in files[:200]:
    start = time.perf_counter()
    images.load_image(data, reader.height, reader.width)
    decode_s.append(time.perf_counter() - start)
  pixels = [images.load_image(data, reader.height, reader.width) for _, data in files[:256]]
  sizes = sorted({min(1 << i, args.max_batch) for i in range(args.max_batch.bit_length() + 1)})
  call_ms = {}
  for size in sizes:
    batch = [pixels[i % len(pixels)] for i in range(size)]
    reader.predict(batch)  # compiles this shape (a JAX reader)
    times = []
    deadline = time.monotonic() + 3.0  # at least 3 calls, then until 3 s have passed
    while len(times) < 3 or (time.monotonic() < deadline and len(times) < 20):
      start = time.perf_counter()
      reader.predict(batch)
      times.append(time.perf_counter() - start)
    call_ms[size] = 1e3 * statistics.median(times)
  out.put({'decode_ms': 1e3 * statistics.median(decode_s), 'call_ms': call_ms})


def breakdown(args: argparse.Namespace) -> dict:
  """Model call ms by batch size and decode ms (a fresh child, nothing else running in it)."""
  context = multiprocessing.get_context('spawn')
  out = context.Queue()
  process = context.Process(target=_time_reader, args=(args, out))
  process.start()
  try:
    return out.get(timeout=args.start_timeout)
  except queue.Empty:
    raise SystemExit('The timing child gave no answer.') from None
  finally:
    process.join(30)
    if process.is_alive():
      process.kill()
      process.join()


def free_port() -> int:
  with socket.socket() as s:
    s.bind((HOST, 0))
    return s.getsockname()[1]


def get_json(port: int, path: str, timeout: float = 5) -> tuple[int, dict]:
  connection = http.client.HTTPConnection(HOST, port, timeout=timeout)
  try:
    connection.request('GET', path)
    response = connection.getresponse()
    return response.status, json.loads(response.read())
  finally:
    connection.close()


def wait_until_ready(port: int, process: multiprocessing.Process, timeout: float) -> dict:
  """/health once it answers ok; SystemExit if the server dies or takes longer than timeout."""
  deadline = time.monotonic() + timeout
  while time.monotonic() < deadline:
    if not process.is_alive():
      raise SystemExit(f'The server exited (status {process.exitcode}) before it was ready.')
    try:
      status, health = get_json(port, '/health', timeout=1)
      if status == 200:
        return health
    except (OSError, http.client.HTTPException, ValueError):
      pass  # not listening yet
    time.sleep(0.2)
  raise SystemExit(f'The server was not ready after {timeout:.0f} s.')


class Budget:
  """At most `total` requests over all clients (unbounded when None), and a deadline."""

  def __init__(self, total: int | None, deadline: float):
    self.left, self.deadline = total, deadline
    self._lock = threading.Lock()

  def take(self) -> bool:
    if time.monotonic() >= self.deadline:
      return False
    if self.left is None:
      return True
    with self._lock:
      self.left -= 1
      return self.left >= 0


def client(port, files, first, budget, results) -> None:
  """Sends files[first], files[first + 1], … until the budget is spent; appends
  (latency s, HTTP status or 0 for a broken connection, exact match) per request."""
  connection = http.client.HTTPConnection(HOST, port, timeout=60)
  i = first
  while budget.take():
    label, data = files[i % len(files)]
    i += 1
    start = time.perf_counter()
    try:
      connection.request('POST', '/read', data, {'Content-Type': 'image/png'})
      response = connection.getresponse()
      body = response.read()
      latency = time.perf_counter() - start
      text = json.loads(body).get('text') if response.status == 200 else None
      results.append((latency, response.status, text == label))
    except (OSError, http.client.HTTPException, ValueError):
      results.append((time.perf_counter() - start, 0, False))
      connection.close()  # reconnects on the next request
      connection = http.client.HTTPConnection(HOST, port, timeout=60)
  connection.close()


def load_files(folder: Path, limit: int | None) -> list[tuple[str, bytes]]:
  paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
  if not paths:
    raise SystemExit(f'{str(folder)!r} has no images.')
  return [(p.stem, p.read_bytes()) for p in paths[:limit]]


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  source = parser.add_mutually_exclusive_group(required=True)
  source.add_argument('--workdir', help='A training run to serve.')
  source.add_argument('--onnx', help='An exported ONNX model to serve.')
  source.add_argument('--fake', action='store_true', help='Serve the fake reader.')
  parser.add_argument('--fake-ms', type=float, default=0.0, help='Fake reader: ms per call.')
  parser.add_argument('--images', type=Path, default=DEFAULT_IMAGES)
  parser.add_argument('--limit-images', type=int, default=None, help='Send only the first N.')
  parser.add_argument('--clients', type=int, default=16)
  parser.add_argument('--duration', type=float, default=20.0, help='Seconds of load (at most).')
  parser.add_argument('--requests', type=int, default=None, help='Requests in all (at most).')
  parser.add_argument('--max-batch', type=int, default=serve.DEFAULT_MAX_BATCH)
  parser.add_argument('--max-wait-ms', type=float, default=serve.DEFAULT_MAX_WAIT_MS)
  parser.add_argument('--workers', type=int, default=serve.DEFAULT_WORKERS, help='As serve takes.')
  parser.add_argument('--start-timeout', type=float, default=600.0, help='Seconds to start.')
  parser.add_argument(
    '--cpu_tuning', action='store_true', help='A served run: one JAX device per CPU core.'
  )
  parser.add_argument(
    '--breakdown', action='store_true', help='Also time the model, decoding and the service.'
  )
  parser.add_argument('--json', action='store_true', help='Also print the results as JSON.')
  args = parser.parse_args(argv)

  files = load_files(args.images, args.limit_images)
  summary = load_test(args, files)
  report(summary)
  if args.breakdown and not args.fake:
    timing = breakdown(args)
    fake = load_test(argparse.Namespace(**{**vars(args), 'fake': True, 'fake_ms': 0.0}), files)
    report(fake)
    summary['breakdown'] = {**timing, 'fake_service': fake}
    print_breakdown(summary)
  if args.json:
    print(json.dumps(summary))


def load_test(args: argparse.Namespace, files: list[tuple[str, bytes]]) -> dict:
  """Serves args' reader in a child and loads it with args.clients clients; the summary."""
  port = free_port()
  # spawn, not fork: the server starts from a clean interpreter (JAX does not survive a fork).
  process = multiprocessing.get_context('spawn').Process(target=_serve, args=(args, port))
  process.start()
  try:
    wait_until_ready(port, process, args.start_timeout)
    _, before = get_json(port, '/health')
    results: list[tuple[float, int, bool]] = []
    start = time.monotonic()
    budget = Budget(args.requests, start + args.duration)
    spread = max(1, len(files) // args.clients)  # clients start at different images
    threads = [
      threading.Thread(target=client, args=(port, files, k * spread, budget, results))
      for k in range(args.clients)
    ]
    for t in threads:
      t.start()
    for t in threads:
      t.join()
    elapsed = time.monotonic() - start
    _, after = get_json(port, '/health')
  finally:
    process.terminate()  # SIGTERM: uvicorn shuts down gracefully
    process.join(15)
    if process.is_alive():
      process.kill()
      process.join()

  ok = [(latency, match) for latency, status, match in results if status == 200]
  latencies_ms = np.array([1e3 * latency for latency, _ in ok]) if ok else np.zeros(1)
  batches = after['batches'] - before['batches']
  summary = {
    'model': 'fake' if args.fake else (args.workdir or args.onnx),
    'clients': args.clients,
    'seconds': round(elapsed, 2),
    'requests': len(results),
    'errors': len(results) - len(ok),
    'requests_per_s': round(len(ok) / elapsed, 1),
    'p50_ms': round(float(np.percentile(latencies_ms, 50)), 2),
    'p99_ms': round(float(np.percentile(latencies_ms, 99)), 2),
    'exact_match': round(sum(match for _, match in ok) / max(len(ok), 1), 4),
    'mean_batch': round((after['images'] - before['images']) / max(batches, 1), 2),
    'max_batch': args.max_batch,
    'max_wait_ms': args.max_wait_ms,
  }
  return summary


def report(summary: dict) -> None:
  verdict = ''
  if summary['model'] != 'fake':
    met = summary['requests_per_s'] >= TARGET_RPS and summary['p99_ms'] <= TARGET_P99_MS
    verdict = f'; target ≥ {TARGET_RPS}/s with p99 ≤ {TARGET_P99_MS} ms ' + (
      'met' if met else 'NOT met'
    )
  print(
    f'{summary["model"]}: {summary["clients"]} clients, {summary["seconds"]:.1f} s, '
    f'{summary["requests"]} requests ({summary["errors"]} errors): '
    f'{summary["requests_per_s"]} req/s, p50 {summary["p50_ms"]} ms, p99 {summary["p99_ms"]} ms, '
    f'exact match {100 * summary["exact_match"]:.1f}%, mean batch {summary["mean_batch"]}{verdict}'
  )


def print_breakdown(summary: dict) -> None:
  """Where a request's time goes: the model call by batch size, decoding, the service alone."""
  parts = summary['breakdown']
  print('| images per call | model call ms | ms per image | images/s, model alone |')
  print('| --- | --- | --- | --- |')
  for size, ms in parts['call_ms'].items():
    print(f'| {size} | {ms:.1f} | {ms / int(size):.2f} | {1e3 * int(size) / ms:.0f} |')
  fake = parts['fake_service']
  # The model's rate at the batch size the service reached, call time interpolated in between.
  sizes = sorted(int(k) for k in parts['call_ms'])
  ms = [parts['call_ms'][k] if k in parts['call_ms'] else parts['call_ms'][str(k)] for k in sizes]
  capacity = 1e3 * summary['mean_batch'] / float(np.interp(summary['mean_batch'], sizes, ms))
  print(
    f'Decoding one file: {parts["decode_ms"]:.2f} ms. The service around a 0 ms fake reader: '
    f'{fake["requests_per_s"]} req/s, p50 {fake["p50_ms"]} ms, p99 {fake["p99_ms"]} ms '
    f'(mean batch {fake["mean_batch"]}): HTTP, decoding, batching and the clients cost '
    f'{1e3 / max(fake["requests_per_s"], 1e-9):.1f} ms of these cores per request. '
    f'At the served mean batch {summary["mean_batch"]} the model alone reads about '
    f'{capacity:.0f} images/s.'
  )


if __name__ == '__main__':
  main()
