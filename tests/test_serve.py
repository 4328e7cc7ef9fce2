"""The reading service over real HTTP on 127.0.0.1, with fake readers: the answers' shapes,
micro-batching, the limits, and that no request (or reader failure) stops it."""

import asyncio
import concurrent.futures
import contextlib
import http.client
import io
import json
import logging
import math
import re
import socket
import threading
import time
import types
from collections.abc import Iterator, Sequence

import numpy as np
import pytest
from PIL import Image

pytest.importorskip('fastapi')
uvicorn = pytest.importorskip('uvicorn')

from captcha_jax import cli, decoding, serve  # noqa: E402
from captcha_jax import images as images_module  # noqa: E402
from captcha_jax.decoding import Reading  # noqa: E402
from captcha_jax.errors import ConfigError, UserError  # noqa: E402
from captcha_jax.vocab import Vocab  # noqa: E402

HEIGHT, WIDTH = 50, 200
BOUNDARY = 'test-boundary-7d3c'


class FakeReader:
  """Reads an image as its mean pixel value, rounded; records every predict call."""

  height, width = HEIGHT, WIDTH
  vocab = Vocab('0123456789')

  def __init__(self, delay: float = 0.0):
    self.delay = delay
    self.calls: list[list[np.ndarray]] = []
    self._lock = threading.Lock()

  @property
  def batch_sizes(self) -> list[int]:
    return [len(c) for c in self.calls]

  def predict(self, images: Sequence[np.ndarray]) -> list[Reading]:
    with self._lock:
      self.calls.append(list(images))
    time.sleep(self.delay)
    return [self.reading(image) for image in images]

  def reading(self, image: np.ndarray) -> Reading:
    text = str(round(float(image.mean())))
    return Reading(text, text, 0.5)


def png(level: int, size: tuple[int, int] = (WIDTH, HEIGHT)) -> bytes:
  """A PNG of one gray level, which FakeReader reads as str(level)."""
  buffer = io.BytesIO()
  Image.new('RGB', size, (level, level, level)).save(buffer, 'PNG')
  return buffer.getvalue()


def multipart(files: Sequence[tuple[str, str, bytes]], fields: Sequence[tuple[str, str]] = ()):
  """(body, headers) of a multipart/form-data request of (field, filename, data) files."""
  parts = []
  for field, filename, data in files:
    head = (
      f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{field}"; filename="{filename}"\r\n'
      'Content-Type: image/png\r\n\r\n'
    )
    parts.append(head.encode() + data + b'\r\n')
  for name, value in fields:
    parts.append(
      f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()
    )
  parts.append(f'--{BOUNDARY}--\r\n'.encode())
  return b''.join(parts), FORM_HEADERS


FORM_HEADERS = {'Content-Type': f'multipart/form-data; boundary={BOUNDARY}'}


class Service:
  """A running server's address, app and reader, and a client of it."""

  def __init__(self, port: int, app, reader):
    self.port, self.app, self.reader = port, app, reader

  def connection(self, timeout: float = 10) -> http.client.HTTPConnection:
    return http.client.HTTPConnection('127.0.0.1', self.port, timeout=timeout)

  def request(self, method: str, path: str, body=None, headers=None, timeout: float = 10):
    """(status, headers, parsed JSON or text) of one request on a fresh connection."""
    connection = self.connection(timeout)
    try:
      connection.request(method, path, body=body, headers=headers or {})
      return answer(connection.getresponse())
    finally:
      connection.close()

  def read(self, data: bytes) -> dict:
    status, _, body = self.request('POST', '/read', data, {'Content-Type': 'image/png'})
    assert status == 200, body
    return body

  def assert_healthy(self) -> None:
    """The server still reads images and says it is ok."""
    assert self.read(png(7))['text'] == '7'
    status, _, health = self.request('GET', '/health')
    assert status == 200 and health['status'] == 'ok'


def answer(response: http.client.HTTPResponse):
  data = response.read()
  headers = {k.lower(): v for k, v in response.getheaders()}
  if headers.get('content-type', '').startswith('application/json'):
    return response.status, headers, json.loads(data)
  return response.status, headers, data.decode()


@contextlib.contextmanager
def running(app) -> Iterator[int]:
  """Serves `app` with uvicorn on a free port of 127.0.0.1 in a thread; yields the port."""
  sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
  sock.bind(('127.0.0.1', 0))
  server = uvicorn.Server(uvicorn.Config(app, log_level='warning', lifespan='on'))
  thread = threading.Thread(target=server.run, kwargs={'sockets': [sock]}, daemon=True)
  thread.start()
  try:
    deadline = time.monotonic() + 10
    while not server.started:
      assert thread.is_alive() and time.monotonic() < deadline, 'the server did not start'
      time.sleep(0.01)
    yield sock.getsockname()[1]
  finally:
    server.should_exit = True
    thread.join(10)
    sock.close()
  assert not thread.is_alive(), 'the server did not shut down'


@pytest.fixture
def start():
  """start(reader=None, **create_app keywords) → a Service, shut down after the test."""
  with contextlib.ExitStack() as stack:

    def start_service(reader=None, **limits) -> Service:
      reader = reader or FakeReader()
      limits = {'max_wait_ms': 20, 'max_body_bytes': 20_000, 'max_images': 4} | limits
      app = serve.create_app(reader, **limits)
      return Service(stack.enter_context(running(app)), app, reader)

    yield start_service


# --- Answers -------------------------------------------------------------------------------


@pytest.mark.parametrize(
  'content_type',
  ['image/png', 'application/octet-stream', 'application/x-www-form-urlencoded', None],
)
def test_a_raw_body_is_read_whatever_its_content_type(start, content_type):
  service = start()
  headers = {'Content-Type': content_type} if content_type else {}
  status, _, body = service.request('POST', '/read', png(100, size=(37, 11)), headers)
  assert status == 200
  assert body == {'text': '100', 'raw_text': '100', 'confidence': 0.5}
  # Decoded and resized off the wire to what the reader takes.
  [[image]] = service.reader.calls
  assert image.shape == (HEIGHT, WIDTH, 3) and image.dtype == np.uint8


def test_multipart_files_are_read_in_order_in_one_model_call(start):
  service = start()
  files = [('a', 'one.png', png(10)), ('b', 'two.png', png(20)), ('a', 'three.png', png(30))]
  body, headers = multipart(files, fields=[('note', 'text fields are ignored')])
  status, _, answer = service.request('POST', '/read', body, headers)
  assert status == 200
  assert answer == {
    'results': [
      {'file': 'one.png', 'text': '10', 'raw_text': '10', 'confidence': 0.5},
      {'file': 'two.png', 'text': '20', 'raw_text': '20', 'confidence': 0.5},
      {'file': 'three.png', 'text': '30', 'raw_text': '30', 'confidence': 0.5},
    ]
  }
  assert service.reader.batch_sizes == [3]


def test_a_non_finite_confidence_is_null_not_invalid_json(start):
  class NanReader(FakeReader):
    def reading(self, image):
      return Reading('x', 'x', math.nan)

  status, _, body = start(NanReader()).request('POST', '/read', png(1))
  assert status == 200 and body == {'text': 'x', 'raw_text': 'x', 'confidence': None}


def test_health_gives_the_image_size_and_alphabet(start):
  status, _, health = start().request('GET', '/health')
  assert status == 200
  assert health['status'] == 'ok'
  assert (health['height'], health['width']) == (HEIGHT, WIDTH)
  assert health['alphabet'] == '0123456789'
  assert health['max_images'] == 4 and health['length'] is None

  class FixedLength(FakeReader):
    fixed_label_length = 5  # what every reading is then held to

  assert start(FixedLength()).request('GET', '/health')[2]['length'] == 5


def test_allowed_and_length_reach_every_model_call_and_health():
  class Restricted(FakeReader):
    def predict(self, images, allowed='', length=0):
      return [Reading(f'{allowed}:{length}', '', 0.5) for _ in super().predict(images)]

  with running(serve.create_app(Restricted(), allowed='0123', length=4)) as port:
    service = Service(port, None, None)
    assert service.read(png(7))['text'] == '0123:4'
    _, _, health = service.request('GET', '/health')
    assert (health['alphabet'], health['length']) == ('0123', 4)
  with pytest.raises(ConfigError, match="'x' cannot be read"):
    serve.create_app(Restricted(), allowed='01x')


def test_a_length_longer_than_the_model_reads_is_refused_at_start():
  class EightSteps(FakeReader):  # decodes 8 CTC steps as the real readers do
    def predict(self, images, allowed='', length=0):
      log_probs = np.log(np.full((len(images), 8, self.vocab.num_classes), 0.5))
      return decoding.read(log_probs, self.vocab, 0, allowed, length)

  serve.create_app(EightSteps(), length=8)
  with pytest.raises(ConfigError, match='A text of 9 characters needs 9 CTC steps'):
    serve.create_app(EightSteps(), length=9)


def test_the_page_is_html_without_outside_assets(start):
  status, headers, page = start().request('GET', '/')
  assert status == 200 and headers['content-type'].startswith('text/html')
  assert '<input' in page and "fetch('read'" in page
  assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", page)
  assert '@import' not in page


# --- Batching ------------------------------------------------------------------------------


def concurrently(service: Service, levels: Sequence[int]) -> list[dict]:
  """Readings of one raw PNG per level, all sent at once from as many threads."""
  barrier = threading.Barrier(len(levels))

  def send(level):
    barrier.wait()
    return service.read(png(level))

  with concurrent.futures.ThreadPoolExecutor(len(levels)) as pool:
    return list(pool.map(send, levels))


def test_concurrent_requests_share_model_calls(start):
  service = start(FakeReader(delay=0.05))
  levels = [10 * i for i in range(16)]
  readings = concurrently(service, levels)
  # Each client gets the reading of its own image, however the batches were cut.
  assert [r['text'] for r in readings] == [str(level) for level in levels]
  sizes = service.reader.batch_sizes
  assert sum(sizes) == 16
  assert len(sizes) < 16 and max(sizes) > 1, sizes
  _, _, health = service.request('GET', '/health')
  assert (health['batches'], health['images']) == (len(sizes), 16)


def test_an_overloaded_service_answers_busy_at_once(start):
  service = start(FakeReader(delay=0.3), max_batch=1, workers=1, max_queued=2, max_images=2)
  barrier = threading.Barrier(8)

  def send(level):
    barrier.wait()
    return service.request('POST', '/read', png(level), {'Content-Type': 'image/png'})

  with concurrent.futures.ThreadPoolExecutor(8) as pool:
    answers = list(pool.map(send, range(8)))
  busy = [(headers, body) for status, headers, body in answers if status == 503]
  read = [body for status, _, body in answers if status == 200]
  assert len(busy) + len(read) == 8 and busy and len(read) >= 2  # at least the two queued
  assert all(h['retry-after'] == '1' and 'busy' in b['error'] for h, b in busy)
  assert sum(service.reader.batch_sizes) == len(read)
  service.assert_healthy()


def test_batches_are_at_most_max_batch(start):
  service = start(FakeReader(delay=0.05), max_batch=3)
  concurrently(service, list(range(16)))
  assert sum(service.reader.batch_sizes) == 16
  assert max(service.reader.batch_sizes) == 3


def test_a_lone_request_waits_max_wait_for_company_and_no_longer(start):
  service = start(max_wait_ms=300)
  begin = time.monotonic()
  service.read(png(1))
  assert 0.3 <= time.monotonic() - begin < 2.5


class Gate:
  """Holds whatever calls `wait` until `open`; `entered` is set once something waits."""

  def __init__(self):
    self.entered, self._open = threading.Event(), threading.Event()

  def wait(self):
    self.entered.set()
    assert self._open.wait(10)

  def open(self):
    self._open.set()


@pytest.mark.parametrize('stage', ['model', 'decoding'])
def test_a_slow_stage_does_not_block_the_event_loop(start, monkeypatch, stage):
  gate = Gate()
  reader = FakeReader()
  if stage == 'model':
    monkeypatch.setattr(
      reader, 'predict', lambda images: gate.wait() or FakeReader.predict(reader, images)
    )
  else:
    decode = images_module.load_image
    monkeypatch.setattr(
      images_module, 'load_image', lambda *args, **kwargs: gate.wait() or decode(*args, **kwargs)
    )
  service = start(reader)
  with concurrent.futures.ThreadPoolExecutor(1) as pool:
    slow = pool.submit(service.read, png(5))
    assert gate.entered.wait(10)
    begin = time.monotonic()
    status, _, _ = service.request('GET', '/health', timeout=3)
    assert status == 200 and time.monotonic() - begin < 1
    gate.open()
    assert slow.result(10)['text'] == '5'


# --- Refusals: each a 4xx JSON error, and the server goes on ------------------------------


def declared_too_large(service: Service):
  """Headers that promise 10⁹ bytes and no body: refused before any byte is read."""
  connection = service.connection(timeout=5)
  try:
    connection.putrequest('POST', '/read')
    connection.putheader('Content-Type', 'image/png')
    connection.putheader('Content-Length', str(10**9))
    connection.endheaders()
    return answer(connection.getresponse())
  finally:
    connection.close()


def chunked_too_large(service: Service):
  """A chunked body (no Content-Length) that grows past the limit while it is read."""
  return service.request('POST', '/read', iter([b'\x89PNG' + bytes(996)] * 30))


def post(body, headers=None):
  return lambda service: service.request('POST', '/read', body, headers or {})


def form(files, fields=()):
  return post(*multipart(files, fields))


BAD_REQUESTS = {
  'raw body not an image': (
    post(b'GIF89a but not really'),
    400,
    f'The body is not a readable image (not {", ".join(images_module.FORMATS)}).',
  ),
  'file not an image': (
    form([('f', 'good.png', png(1)), ('f', 'bad.png', b'not an image')]),
    400,
    f"'bad.png' is not a readable image (not {', '.join(images_module.FORMATS)}).",
  ),
  'image of too many pixels': (
    form([('f', 'big.png', png(1, (2000, 1100)))]),
    400,
    "'big.png': 2000×1100 pixels is too large for a captcha (more than 2,097,152)",
  ),
  'form cut off in its last file': (
    post(multipart([('f', 'a.png', png(1)), ('f', 'b.png', png(2))])[0][:-60], FORM_HEADERS),
    400,
    'form is incomplete',
  ),
  'an EPS image, which Pillow would run through Ghostscript': (
    post(b'%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n'),
    400,
    f'not a readable image (not {", ".join(images_module.FORMATS)})',  # never opened as EPS
  ),
  'empty body': (post(b''), 400, 'empty'),
  'empty file': (form([('f', 'blank.png', b'')]), 400, "'blank.png': empty"),
  'form without files': (form([], fields=[('text', 'hello')]), 400, 'no files'),
  'too many files': (form([('f', f'{i}.png', png(i)) for i in range(5)]), 400, 'files is 4'),
  'malformed form': (
    post(  # a part without a Content-Disposition name
      b'--x\r\nContent-Type: image/png\r\n\r\ndata\r\n--x--\r\n',
      {'Content-Type': 'multipart/form-data; boundary=x'},
    ),
    400,
    'multipart form could not be read',
  ),
  'form without boundary': (
    post(b'abc', {'Content-Type': 'multipart/form-data'}),
    400,
    'multipart form could not be read',
  ),
  'declared length over the limit': (declared_too_large, 413, 'larger than 20,000 bytes'),
  'chunked body over the limit': (chunked_too_large, 413, 'larger than 20,000 bytes'),
  'wrong method': (lambda service: service.request('GET', '/read'), 405, 'Method Not Allowed'),
  'wrong path': (lambda service: service.request('POST', '/reed', png(1)), 404, 'Not Found'),
}


@pytest.mark.parametrize('send, status, message', BAD_REQUESTS.values(), ids=BAD_REQUESTS.keys())
def test_a_bad_request_gets_a_json_error_and_the_server_goes_on(start, send, status, message):
  service = start()
  got_status, headers, body = send(service)
  assert got_status == status
  assert headers['content-type'] == 'application/json'
  assert set(body) == {'error'} and message in body['error'], body
  assert service.reader.calls == []  # refused before the model
  service.assert_healthy()


def test_a_forms_other_fields_are_ignored_however_many(start):
  body, headers = multipart([('f', 'a.png', png(3))], [(f'note{i}', 'x') for i in range(20)])
  status, _, answer_ = start().request('POST', '/read', body, headers)
  assert status == 200 and [r['text'] for r in answer_['results']] == ['3']


@pytest.mark.parametrize(
  'limits, message',
  [
    ({'max_wait_ms': math.inf}, 'max_wait_ms must be a finite number'),
    ({'max_wait_ms': math.nan}, 'max_wait_ms must be a finite number'),
    ({'max_images': 8, 'max_queued': 4}, r'max_images \(8\) must not exceed max_queued \(4\)'),
  ],
)
def test_limits_that_would_hang_or_refuse_every_request_are_refused(limits, message):
  with pytest.raises(ConfigError, match=message):
    serve.create_app(FakeReader(), **limits)


def test_a_client_that_hangs_up_is_not_read_for(start):
  service = start(FakeReader(delay=0.2), max_batch=1, workers=1, max_wait_ms=0, max_queued=8)
  data = png(3)
  for _ in range(6):  # a whole request, then gone without waiting for the answer
    with socket.create_connection(('127.0.0.1', service.port)) as client:
      client.sendall(
        b'POST /read HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n'
        b'Content-Length: %d\r\n\r\n' % len(data) + data
      )
  time.sleep(0.3)
  service.assert_healthy()
  # The first one may be read before its hang-up is seen; the others never.
  assert len(service.reader.calls) <= 3


def test_a_body_just_under_the_limit_is_read(start):
  service = start(max_body_bytes=len(png(9)))
  assert service.read(png(9))['text'] == '9'


# --- Reader failures -----------------------------------------------------------------------


class FailingReader(FakeReader):
  """Raises on any batch holding an image of gray level 13; reads the others."""

  def predict(self, images):
    result = super().predict(images)
    if any(r.text == '13' for r in result):
      raise RuntimeError('secret internal detail')
    return result


def test_a_failing_reader_gives_500_json_is_logged_and_the_server_goes_on(start, caplog):
  service = start(FailingReader())
  with caplog.at_level(logging.WARNING, logger='captcha_jax.serve'):
    status, headers, body = service.request('POST', '/read', png(13))
  assert status == 500 and headers['content-type'] == 'application/json'
  assert set(body) == {'error'} and 'RuntimeError' in body['error']
  assert 'secret internal detail' not in body['error'] and 'Traceback' not in body['error']
  assert any(r.exc_info and 'secret internal detail' in str(r.exc_info[1]) for r in caplog.records)
  service.assert_healthy()


def test_a_failing_image_does_not_fail_those_batched_with_it(start):
  service = start(FailingReader(delay=0.05))
  with concurrent.futures.ThreadPoolExecutor(8) as pool:
    barrier = threading.Barrier(8)

    def send(level):
      barrier.wait()
      return service.request('POST', '/read', png(level))[::2]

    answers = list(pool.map(send, [13, 1, 2, 3, 4, 5, 6, 7]))
  assert answers[0][0] == 500
  assert answers[1:] == [
    (200, {'text': str(v), 'raw_text': str(v), 'confidence': 0.5}) for v in range(1, 8)
  ]
  # The failing image did share a model call, so the retry one by one is what saved the others.
  assert any(len(c) > 1 and any(round(im.mean()) == 13 for im in c) for c in service.reader.calls)


def test_a_reader_giving_too_few_readings_gives_500(start):
  class ShortReader(FakeReader):
    def predict(self, images):
      return super().predict(images)[:-1]

  status, _, body = start(ShortReader()).request('POST', '/read', png(1))
  assert status == 500 and 'RuntimeError' in body['error']


# --- Lifespan, command line, warm-up -------------------------------------------------------


def test_the_batcher_runs_for_the_life_of_the_app():
  app = serve.create_app(FakeReader())
  batcher = app.state.batcher
  assert not batcher.running
  with running(app):
    assert batcher.running
  assert not batcher.running


def test_stopping_fails_the_images_being_read_and_those_waiting():
  gate = Gate()
  image = np.zeros((HEIGHT, WIDTH, 3), np.uint8)

  async def scenario():
    batcher = serve.Batcher(lambda images: gate.wait() or [], max_batch=1, max_wait_ms=0)
    batcher.start()
    being_read = asyncio.ensure_future(batcher.read([image]))
    waiting = asyncio.ensure_future(batcher.read([image]))
    assert await asyncio.to_thread(gate.entered.wait, 10)
    await batcher.stop()
    gate.open()
    for task in (being_read, waiting):
      with pytest.raises(serve.ShuttingDown):
        await asyncio.wait_for(task, 5)
    with pytest.raises(serve.ShuttingDown):
      await batcher.read([image])

  asyncio.run(scenario())


def test_a_read_arriving_while_the_batcher_stops_is_refused_not_left_waiting():
  image = np.zeros((HEIGHT, WIDTH, 3), np.uint8)

  async def scenario():
    batcher = serve.Batcher(lambda images: [Reading('0', '0', 0.5)] * len(images), 4, 0)
    batcher.start()

    async def late():
      await asyncio.sleep(0)  # resumes while `stop` awaits its cancelled tasks
      return await batcher.read([image])

    arriving = asyncio.ensure_future(late())
    await asyncio.sleep(0)
    await batcher.stop()
    with pytest.raises(serve.ShuttingDown):
      await asyncio.wait_for(arriving, 5)

  asyncio.run(scenario())


def test_warm_up_reads_each_batch_size_a_jax_reader_compiles():
  reader = FakeReader()
  serve.warm_up(reader, 32)
  assert reader.batch_sizes == [1, 2, 4, 8, 16, 32]
  reader = FakeReader()
  serve.warm_up(reader, 24)
  assert reader.batch_sizes == [1, 2, 4, 8, 16, 24]
  reader = FakeReader()
  reader.mesh = types.SimpleNamespace(size=2)  # two devices, each compiling its own
  serve.warm_up(reader, 4)
  assert reader.batch_sizes == [1, 1, 2, 2, 4, 4]


def test_the_command_takes_exactly_one_model(capsys):
  for argv in ([], ['--workdir', 'run', '--onnx', 'model.onnx']):
    with pytest.raises(SystemExit) as done:
      cli.serve(argv)
    assert done.value.code == 2
  assert 'one of the arguments --workdir --onnx --pretrained' in capsys.readouterr().err
  with pytest.raises(UserError, match='exactly one'):
    cli.load_reader()


def test_missing_serving_packages_are_named_with_the_extra(monkeypatch):
  real = serve.importlib.util.find_spec
  monkeypatch.setattr(
    serve.importlib.util, 'find_spec', lambda name: None if name == 'uvicorn' else real(name)
  )
  with pytest.raises(UserError, match=r'uvicorn.*captcha-jax\[serve\]'):
    serve.create_app(FakeReader())


@pytest.mark.parametrize('workers', [1, 2])
def test_workers_bound_the_model_calls_side_by_side(workers):
  """With two workers a second batch is read while the first still is; never more."""
  image = np.zeros((HEIGHT, WIDTH, 3), np.uint8)
  running, most = [0], [0]
  lock = threading.Lock()

  def predict(images):
    with lock:
      running[0] += 1
      most[0] = max(most[0], running[0])
    time.sleep(0.2)
    with lock:
      running[0] -= 1
    return [Reading('x', 'x', 1.0)] * len(images)

  async def scenario():
    batcher = serve.Batcher(predict, max_batch=1, max_wait_ms=0, workers=workers)
    batcher.start()
    started = time.perf_counter()
    await asyncio.gather(*(batcher.read([image]) for _ in range(4)))
    elapsed = time.perf_counter() - started
    await batcher.stop()
    return elapsed

  elapsed = asyncio.run(scenario())
  assert most[0] == workers
  assert elapsed < 4 * 0.2 / workers + 0.15  # four one-image calls, `workers` at a time


def test_a_batch_that_ends_before_an_earlier_one_frees_its_worker():
  """Two different images read side by side, the second answered first; the workers stay free."""
  images = [np.full((HEIGHT, WIDTH, 3), value, np.uint8) for value in range(4)]

  def predict(batch):
    time.sleep(0.3 if batch[0][0, 0, 0] % 2 == 0 else 0.05)  # even images are slow
    return [Reading(str(b[0, 0, 0]), '', 1.0) for b in batch]

  async def scenario():
    batcher = serve.Batcher(predict, max_batch=1, max_wait_ms=0, workers=2)
    batcher.start()
    for _ in range(2):  # a second round only finishes if the first freed both workers
      readings = await asyncio.wait_for(
        asyncio.gather(*(batcher.read([image]) for image in images)), 10
      )
      assert [r[0].text for r in readings] == ['0', '1', '2', '3']
    await batcher.stop()

  asyncio.run(scenario())
