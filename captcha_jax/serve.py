"""An HTTP service that reads captchas: FastAPI routes over one micro-batching model caller.

    python -m captcha_jax.serve --workdir RUN [--port 8000]
    python -m captcha_jax.serve --onnx model.onnx

Needs the `serve` extra (`pip install "captcha-jax[serve]"`: fastapi, uvicorn, python-multipart).

Routes:
  POST /read    the image as the raw body (any content type but multipart) →
                  {"text": "5x2bn", "raw_text": "5x2bn", "confidence": 0.97}
                or multipart/form-data with 1..max_images files, any field names (up to 64
                other fields, ignored) → {"results": [{"file": "a.png", "text": …, "raw_text": …,
                "confidence": …}, …]} in the order the files were sent.
                `confidence` is the probability of `text` (CTC: every path that reads it), 0..1,
                null if not finite.
  GET /health   {"status": "ok", "height": 50, "width": 200, "alphabet": …, "length": …, limits,
                counters}
  GET /         a page to drop or choose images and see their readings.

Every refusal is JSON {"error": message}: 400 for an empty body, a file that is not an image of
images.FORMATS or declares more than max_pixels (named), a malformed or cut-off form, too many
files or fields; 413 for a body over max_body_bytes (checked from Content-Length and again while
reading); 404/405 for other paths and methods; 500 when the reader fails (logged; the server
goes on); 503 while shutting down, and with Retry-After while more than max_queued images wait
to be read. A client that hangs up before its answer has its images taken off the queue unread.

Batching: each image becomes an entry on one queue. One task per app takes the first waiting
entry, then gathers more until it has max_batch or max_wait_ms has passed since the first, and
hands them to `reader.predict` in a single call; up to `workers` calls (default 2) run at once,
each on its own thread. While they run, new arrivals queue up and make the next batch, so a busy
server batches without waiting.
"""

import asyncio
import concurrent.futures
import contextlib
import dataclasses
import functools
import importlib.util
import logging
import math
import re
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

from captcha_jax import decoding, images
from captcha_jax.decoding import Reading
from captcha_jax.errors import ConfigError, DataError, UserError

if TYPE_CHECKING:
  from fastapi import FastAPI

logger = logging.getLogger(__name__)

DEFAULT_MAX_BATCH = 32
DEFAULT_MAX_WAIT_MS = 5.0
DEFAULT_MAX_BODY_BYTES = 2_000_000
DEFAULT_MAX_IMAGES = 16
MAX_FORM_FIELDS = 64  # a form's other fields, which are ignored
# An image declaring more pixels is refused before decoding: far beyond any captcha, and a few
# hundred bytes of PNG can declare 16 Mpx (64 MB decoded), per request thread.
DEFAULT_MAX_PIXELS = 1 << 21
DEFAULT_WORKERS = 2
# Images waiting for the model, beyond which a request is answered 503 at once: an overloaded
# service answers "busy" rather than letting every client's wait grow without bound.
DEFAULT_MAX_QUEUED = 512


class Reader(Protocol):
  """What the service needs of a model: its input size and a batched read."""

  height: int
  width: int

  def predict(self, images: Sequence[np.ndarray]) -> list[Reading]:
    """One Reading per uint8 [height, width, 3] image, in order."""
    ...


class RequestError(Exception):
  """A request the service refuses: the HTTP status and a message for the client."""

  def __init__(self, status: int, message: str):
    super().__init__(message)
    self.status = status
    self.message = message


class ShuttingDown(RuntimeError):
  """The batcher stopped before it read these images."""


class Busy(RuntimeError):
  """More images wait for the model than the batcher queues."""


@dataclasses.dataclass(eq=False)  # compared by identity: its image is an array
class _Pending:
  image: np.ndarray
  future: asyncio.Future


class Batcher:
  """Gathers the images of concurrent requests into batches, up to `workers` model calls at a
  time.

  `start` and `stop` run on the app's event loop (its lifespan); `read` awaits the readings of
  some images. The model runs on worker threads, never on the event loop. Two calls side by side
  (on two CPU devices, or two single-threaded ONNX sessions) read more images a second than one
  call on both cores, and while every worker is busy, arrivals wait on the queue, where they
  batch.
  """

  def __init__(
    self,
    predict: Callable[[list[np.ndarray]], Sequence[Reading]],
    max_batch: int,
    max_wait_ms: float,
    workers: int = 1,
    max_queued: int = DEFAULT_MAX_QUEUED,
  ):
    if max_batch < 1:
      raise ConfigError(f'max_batch must be at least 1, got {max_batch}.')
    if not 0 <= max_wait_ms < math.inf:  # nan and inf too: a lone image would wait for ever
      raise ConfigError(f'max_wait_ms must be a finite number ≥ 0, got {max_wait_ms}.')
    if workers < 1:
      raise ConfigError(f'workers must be at least 1, got {workers}.')
    if max_queued < 1:
      raise ConfigError(f'max_queued must be at least 1, got {max_queued}.')
    self.max_queued = max_queued
    self._predict = predict
    self.workers = workers
    self.max_batch = max_batch
    self.max_wait_s = max_wait_ms / 1e3
    self.batches = 0  # model calls that succeeded
    self.images = 0  # images they read
    self._queue: asyncio.Queue[_Pending] | None = None
    self._task: asyncio.Task | None = None
    self._executor: concurrent.futures.ThreadPoolExecutor | None = None
    self._slots: asyncio.Semaphore | None = None
    self._in_flight: list[list[_Pending]] = []  # batches being gathered or read
    self._reading: set[asyncio.Task] = set()
    self._stopping = False

  @property
  def running(self) -> bool:
    return self._task is not None and not self._task.done() and not self._stopping

  def start(self) -> None:
    self._queue = asyncio.Queue()
    self._slots = asyncio.Semaphore(self.workers)
    self._executor = concurrent.futures.ThreadPoolExecutor(
      self.workers, thread_name_prefix='reader'
    )
    self._task = asyncio.get_running_loop().create_task(self._run(), name='batcher')

  async def stop(self) -> None:
    self._stopping = True  # a read arriving while the tasks are cancelled is refused, not queued
    # What is unanswered now is failed below, whatever cancelling the tasks does to the lists.
    pending = [p for batch in self._in_flight for p in batch]
    while self._queue is not None and not self._queue.empty():
      pending.append(self._queue.get_nowait())
    for task in [self._task, *self._reading]:
      if task is not None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
          await task
    for p in pending:
      if not p.future.done():
        p.future.set_exception(ShuttingDown('The server is shutting down.'))
    if self._executor is not None:
      self._executor.shutdown(wait=False, cancel_futures=True)

  async def read(self, pixels: Sequence[np.ndarray]) -> list[Reading]:
    """The readings of uint8 [height, width, 3] images; raises what the reader raised, or Busy
    when they would make more than max_queued images wait."""
    if not self.running or self._queue is None:
      raise ShuttingDown('The server is not reading (starting or shutting down).')
    if self._queue.qsize() + len(pixels) > self.max_queued:
      raise Busy(
        f'The server is busy ({self._queue.qsize()} images waiting to be read): try again soon.'
      )
    loop = asyncio.get_running_loop()
    pending = [_Pending(image, loop.create_future()) for image in pixels]
    for p in pending:
      self._queue.put_nowait(p)
    # Cancelling this cancels the futures, and the batcher skips them.
    return list(await asyncio.gather(*(p.future for p in pending)))

  async def _run(self) -> None:
    assert self._slots is not None
    while True:
      await self._slots.acquire()  # a worker is free: gather the next batch for it
      # Kept on self until read, so that `stop` fails whatever a cancellation left unanswered.
      batch: list[_Pending] = []
      self._in_flight.append(batch)
      await self._next_batch(batch)
      task = asyncio.get_running_loop().create_task(self._read_and_free(batch))
      self._reading.add(task)
      task.add_done_callback(self._reading.discard)

  async def _read_and_free(self, batch: list[_Pending]) -> None:
    assert self._slots is not None
    try:
      await self._read_batch(batch)
    except Exception as e:  # a bug here must not stop the service: fail this batch only
      logger.exception('The batcher failed on a batch of %d', len(batch))
      _fail(batch, e)
    finally:
      self._in_flight.remove(batch)
      self._slots.release()

  async def _next_batch(self, batch: list[_Pending]) -> None:
    """Fills `batch` with the next waiting entry and those that come within max_wait of it."""
    assert self._queue is not None
    loop = asyncio.get_running_loop()
    batch.append(await self._queue.get())
    deadline = loop.time() + self.max_wait_s
    while len(batch) < self.max_batch:
      if not self._queue.empty():  # already waiting: take it even past the deadline
        batch.append(self._queue.get_nowait())
        continue
      remaining = deadline - loop.time()
      if remaining <= 0:
        break
      try:
        batch.append(await asyncio.wait_for(self._queue.get(), remaining))
      except TimeoutError:
        break

  async def _read_batch(self, batch: list[_Pending]) -> None:
    batch = [p for p in batch if not p.future.done()]  # skip clients that left
    if not batch:
      return
    assert self._executor is not None
    loop = asyncio.get_running_loop()
    try:
      readings = await loop.run_in_executor(self._executor, self._call, [p.image for p in batch])
    except Exception as e:
      if len(batch) > 1:
        # Batching must not let one request's image fail the requests it was batched with.
        logger.warning(
          'The reader failed on a batch of %d (%r); reading them one by one', len(batch), e
        )
        for p in batch:
          await self._read_batch([p])
        return
      logger.exception('The reader failed on an image')
      _fail(batch, e)
      return
    self.batches += 1
    self.images += len(batch)
    for p, reading in zip(batch, readings, strict=True):
      if not p.future.done():
        p.future.set_result(reading)

  def _call(self, pixels: list[np.ndarray]) -> list[Reading]:
    readings = list(self._predict(pixels))
    if len(readings) != len(pixels):
      raise RuntimeError(f'The reader gave {len(readings)} readings for {len(pixels)} images.')
    return readings


def _fail(batch: list[_Pending], error: BaseException) -> None:
  for p in batch:
    if not p.future.done():
      p.future.set_exception(error)


def reading_json(reading: Reading) -> dict[str, Any]:
  """A reading as the service answers it; a non-finite confidence becomes null (JSON has no NaN)."""
  confidence = float(reading.confidence)
  return {
    'text': reading.text,
    'raw_text': reading.raw_text,
    'confidence': confidence if math.isfinite(confidence) else None,
  }


def _decode(
  items: list[tuple[str | None, bytes]], height: int, width: int, max_pixels: int
) -> list[np.ndarray]:
  """uint8 [height, width, 3] pixels of each (name, encoded bytes); RequestError 400 naming the
  first that is not an image or has more than `max_pixels`."""
  pixels = []
  for name, data in items:
    label = repr(name) if name is not None else 'The body'
    try:
      pixels.append(images.load_image(data, height, width, label, max_pixels))
    except DataError as e:
      raise RequestError(400, str(e)) from None
    except Exception as e:  # Pillow has more ways to fail than DataError covers: still the file's
      logger.warning('Decoding %s failed unexpectedly: %r', label, e)
      raise RequestError(400, f'{label} could not be decoded as an image.') from None
  return pixels


def _form_complete(content_type: str, body: bytes) -> bool:
  """Whether a multipart body holds its closing delimiter, --BOUNDARY--: a body cut off in its
  last part does not."""
  match = re.search(r'boundary=(?:"([^"]+)"|([^;\s]+))', content_type, re.IGNORECASE)
  if not match:
    return True  # the parser refused it already
  return b'--' + (match.group(1) or match.group(2)).encode('latin-1') + b'--' in body


async def _disconnected(receive: Callable) -> None:
  """Returns once the client hangs up; the body has been read, so no other message comes."""
  while (await receive())['type'] != 'http.disconnect':
    pass


def _vocab_alphabet(reader: Any) -> str | None:
  vocab = getattr(reader, 'vocab', None)
  if vocab is None:
    return None
  alphabet = getattr(vocab, 'alphabet', vocab)
  return alphabet if isinstance(alphabet, str) else None


def require_serving() -> None:
  missing = [
    package
    for package, modules in [
      ('fastapi', ['fastapi']),
      ('uvicorn', ['uvicorn']),
      ('python-multipart', ['python_multipart', 'multipart']),
    ]
    if not any(importlib.util.find_spec(m) for m in modules)
  ]
  if missing:
    raise UserError(
      f'Serving needs {", ".join(missing)}, which is not installed: '
      'pip install "captcha-jax[serve]" (or pip install fastapi uvicorn python-multipart).'
    )


def create_app(
  reader: Reader,
  *,
  max_batch: int = DEFAULT_MAX_BATCH,
  max_wait_ms: float = DEFAULT_MAX_WAIT_MS,
  max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
  max_images: int = DEFAULT_MAX_IMAGES,
  max_pixels: int = DEFAULT_MAX_PIXELS,
  max_queued: int = DEFAULT_MAX_QUEUED,
  workers: int = DEFAULT_WORKERS,
  allowed: str = '',
  length: int = 0,
) -> 'FastAPI':
  """The FastAPI app that serves `reader` (routes and limits in the module docstring), with up
  to `workers` model calls side by side; `allowed` and `length`, when given, restrict every
  reading to those characters and that length (the readers' `predict`).

  Its lifespan starts and stops the one Batcher, kept as `app.state.batcher`.
  """
  require_serving()
  from fastapi import FastAPI, Request
  from fastapi.responses import HTMLResponse, JSONResponse
  from starlette.datastructures import UploadFile
  from starlette.exceptions import HTTPException
  from starlette.formparsers import MultiPartException, MultiPartParser
  from starlette.requests import ClientDisconnect

  if max_body_bytes < 1 or max_images < 1 or max_pixels < 1:
    raise ConfigError('max_body_bytes, max_images and max_pixels must be at least 1.')
  if max_images > max_queued:  # such a request would be answered "busy" for ever
    raise ConfigError(f'max_images ({max_images}) must not exceed max_queued ({max_queued}).')
  if allowed and (alphabet := _vocab_alphabet(reader)) is not None:
    decoding.check_allowed(allowed, alphabet)  # not a refusal of every request
  height, width = int(reader.height), int(reader.width)
  # Only a restricted service asks the reader for restriction (the Reader protocol's predict
  # takes images alone).
  read = (
    functools.partial(reader.predict, allowed=allowed, length=length)
    if allowed or length
    else reader.predict
  )
  if length:  # a length the model cannot read (too few CTC steps) is refused now, not per request
    read([np.full((height, width, 3), 255, np.uint8)])
  batcher = Batcher(read, max_batch, max_wait_ms, workers, max_queued)

  @contextlib.asynccontextmanager
  async def lifespan(app: FastAPI):
    batcher.start()
    try:
      yield
    finally:
      await batcher.stop()

  # No /docs: the service is these three routes, and the docs page loads scripts from a CDN.
  app = FastAPI(
    title='captcha_jax', lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None
  )
  app.state.batcher = batcher

  def error(status: int, message: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({'error': message}, status_code=status, headers=headers)

  @app.exception_handler(RequestError)
  async def on_request_error(request: Request, e: RequestError) -> JSONResponse:
    return error(e.status, e.message)

  @app.exception_handler(HTTPException)
  async def on_http_error(request: Request, e: HTTPException) -> JSONResponse:
    return error(e.status_code, str(e.detail), getattr(e, 'headers', None))

  @app.exception_handler(Exception)
  async def on_bug(request: Request, e: Exception) -> JSONResponse:
    logger.exception('Unexpected error on %s %s', request.method, request.url.path)
    return error(500, 'Internal error; the details are in the server log.')

  async def read_body(request: Request) -> bytes:
    declared = request.headers.get('content-length')
    too_large = RequestError(413, f'The body is larger than {max_body_bytes:,} bytes.')
    if declared is not None and declared.isdigit() and int(declared) > max_body_bytes:
      raise too_large  # before reading a byte of it
    # Counted again as it arrives: a chunked body declares no length, and a client may lie.
    chunks, size = [], 0
    try:
      async for chunk in request.stream():
        size += len(chunk)
        if size > max_body_bytes:
          raise too_large
        chunks.append(chunk)
    except ClientDisconnect:
      raise RequestError(400, 'The client disconnected before sending the whole body.') from None
    return b''.join(chunks)

  async def form_files(request: Request, body: bytes) -> list[tuple[str, bytes]]:
    async def replay():
      yield body

    parser = MultiPartParser(
      request.headers, replay(), max_files=max_images, max_fields=MAX_FORM_FIELDS
    )
    try:
      form = await parser.parse()
    except MultiPartException as e:
      raise RequestError(400, f'The multipart form could not be read: {e.message}') from None
    except Exception as e:  # untrusted bytes: any failure of the parser is a bad request
      logger.warning('Multipart parsing failed: %r', e)
      raise RequestError(400, 'The multipart form could not be read (malformed).') from None
    try:
      files = [
        (value.filename or key, await value.read())
        for key, value in form.multi_items()
        if isinstance(value, UploadFile)
      ]
    finally:
      await form.close()
    if not _form_complete(request.headers.get('content-type', ''), body):
      # The parser takes a form cut off in its last part as whole: that part would be dropped.
      raise RequestError(400, 'The multipart form is incomplete (no closing boundary).')
    if not files:
      raise RequestError(400, 'The multipart form has no files: attach one or more images.')
    return files

  @app.post('/read')
  async def read(request: Request) -> JSONResponse:
    body = await read_body(request)
    if not body:
      raise RequestError(400, 'The body is empty: send an image, or a multipart form of images.')
    content_type = request.headers.get('content-type', '').split(';')[0].strip().lower()
    multipart = content_type == 'multipart/form-data'
    items = await form_files(request, body) if multipart else [(None, body)]
    pixels = await asyncio.to_thread(_decode, items, height, width, max_pixels)
    reading = asyncio.ensure_future(batcher.read(pixels))
    gone = asyncio.ensure_future(_disconnected(request.receive))
    await asyncio.wait((reading, gone), return_when=asyncio.FIRST_COMPLETED)
    gone.cancel()
    if not reading.done():  # the client hung up: its images leave the queue unread
      reading.cancel()
      return error(499, 'The client closed the connection.')
    try:
      readings = reading.result()
    except ShuttingDown as e:
      raise RequestError(503, str(e)) from None
    except Busy as e:
      return error(503, str(e), {'Retry-After': '1'})
    except Exception as e:  # logged by the batcher, with its traceback
      return error(500, f'The reader failed ({type(e).__name__}); see the server log.')
    if multipart:
      return JSONResponse(
        {
          'results': [
            {'file': name, **reading_json(r)} for (name, _), r in zip(items, readings, strict=True)
          ]
        }
      )
    return JSONResponse(reading_json(readings[0]))

  @app.get('/health')
  async def health() -> JSONResponse:
    return JSONResponse(
      {
        'status': 'ok' if batcher.running else 'stopped',
        'height': height,
        'width': width,
        'alphabet': allowed or _vocab_alphabet(reader),
        # What readings are held to: the one asked for, or the model's own fixed length.
        'length': length or getattr(reader, 'fixed_label_length', 0) or None,
        'max_batch': max_batch,
        'max_wait_ms': max_wait_ms,
        'max_body_bytes': max_body_bytes,
        'max_images': max_images,
        'max_pixels': max_pixels,
        'max_queued': max_queued,
        'batches': batcher.batches,
        'images': batcher.images,
      },
      status_code=200 if batcher.running else 503,
    )

  @app.get('/')
  async def page() -> HTMLResponse:
    return HTMLResponse(PAGE)

  return app


def warm_up(reader: Reader, max_batch: int) -> None:
  """Reads blank images in every batch size a JAX reader compiles for (powers of two up to
  max_batch, and max_batch), once per device of its mesh (a small batch runs on the next device
  in turn, and each device compiles its own), so that no client waits on a compile."""
  sizes = sorted({min(1 << i, max_batch) for i in range(max_batch.bit_length() + 1)})
  turns = reader.mesh.size if hasattr(reader, 'mesh') else 1
  blank = np.full((reader.height, reader.width, 3), 255, np.uint8)
  for size in sizes:
    for _ in range(turns):
      reader.predict([blank] * size)


# uvicorn's exit status when it cannot listen (a taken port, an unknown host), its reason logged.
UVICORN_STARTUP_FAILURE = 3


def serve_reader(
  reader: Reader,
  *,
  host: str = '127.0.0.1',
  port: int = 8000,
  warmup: bool = True,
  log_level: str = 'info',
  **limits: Any,
) -> None:
  """Serves `reader` until interrupted; `limits` are create_app's keywords."""
  require_serving()
  import uvicorn

  app = create_app(reader, **limits)
  if warmup:
    logger.info('Warming up the reader')
    warm_up(reader, limits.get('max_batch', DEFAULT_MAX_BATCH))
  try:
    uvicorn.run(app, host=host, port=port, log_level=log_level, timeout_graceful_shutdown=10)
  except SystemExit as e:
    if e.code != UVICORN_STARTUP_FAILURE:
      raise
    raise ConfigError(
      f'Could not serve on {host}:{port} (uvicorn logged why above): another --host or --port?'
    ) from None


PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>captcha_jax</title>
<style>
  body { font-family: system-ui, sans-serif; max-width: 46rem; margin: 2rem auto; padding: 0 1rem;
         color: #222; }
  #drop { border: 2px dashed #999; border-radius: 8px; padding: 2rem; text-align: center;
          cursor: pointer; }
  #drop.over { border-color: #06c; background: #eef5ff; }
  table { border-collapse: collapse; margin-top: 1.5rem; width: 100%; }
  td, th { padding: .4rem .6rem; border-bottom: 1px solid #ddd; text-align: left; }
  td.text { font: 1.4rem monospace; letter-spacing: .1em; }
  img { max-height: 50px; image-rendering: pixelated; }
  .error { color: #b00; }
  #info { color: #666; font-size: .9rem; }
</style>
</head>
<body>
<h1>Read a captcha</h1>
<p id="info"></p>
<label id="drop">Drop images here, or click to choose
  <input id="files" type="file" accept="image/*" multiple hidden>
</label>
<p id="status"></p>
<table><thead><tr><th>image</th><th>reading</th><th>confidence</th><th>file</th></tr></thead>
<tbody id="results"></tbody></table>
<script>
const drop = document.getElementById('drop');
const input = document.getElementById('files');
const statusLine = document.getElementById('status');
const rows = document.getElementById('results');

fetch('health').then(r => r.json()).then(h => {
  document.getElementById('info').textContent =
    `Images are read at ${h.width}\u00d7${h.height}, up to ${h.max_images} per request.`;
}).catch(() => {});

function cell(row, content, cls) {
  const td = row.insertCell();
  if (content instanceof Node) td.append(content); else td.textContent = content;
  if (cls) td.className = cls;
}

async function read(files) {
  if (!files.length) return;
  const form = new FormData();
  for (const f of files) form.append('image', f, f.name);
  statusLine.textContent = 'Reading\u2026';
  statusLine.className = '';
  try {
    const response = await fetch('read', {method: 'POST', body: form});
    const answer = await response.json();
    if (!response.ok) throw new Error(answer.error || response.statusText);
    statusLine.textContent = '';
    answer.results.forEach((r, i) => {
      const row = rows.insertRow(0);
      const img = document.createElement('img');
      img.src = URL.createObjectURL(files[i]);
      cell(row, img);
      cell(row, r.text, 'text');
      cell(row, r.confidence === null ? '\u2014' : r.confidence.toFixed(3));
      cell(row, r.file);
    });
  } catch (e) {
    statusLine.textContent = 'Error: ' + e.message;
    statusLine.className = 'error';
  }
}

input.addEventListener('change', () => { read([...input.files]); input.value = ''; });
drop.addEventListener('dragover', e => { e.preventDefault(); drop.classList.add('over'); });
drop.addEventListener('dragleave', () => drop.classList.remove('over'));
drop.addEventListener('drop', e => {
  e.preventDefault();
  drop.classList.remove('over');
  read([...e.dataTransfer.files]);
});
</script>
</body>
</html>
"""


if __name__ == '__main__':
  from captcha_jax import cli

  cli.serve()
