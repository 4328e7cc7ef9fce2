"""download.fetch against a local HTTP server: caching, checksums, cut-offs and bad zips."""

import hashlib
import http.server
import io
import json
import logging
import os
import re
import shutil
import socket
import subprocess
import tarfile
import threading
import time
import zipfile
from pathlib import Path

import ml_collections
import pytest
from PIL import Image, ImageDraw

from captcha_jax import download
from captcha_jax.errors import ConfigError, DataError

LABELS = [f'{a}{b}3cd' for a in '2bcde' for b in 'mnwx']  # 20 names like 2m3cd


def _png(text: str) -> bytes:
  image = Image.new('RGB', (40, 12), 'white')
  ImageDraw.Draw(image).text((1, 0), text, fill='black')
  buffer = io.BytesIO()
  image.save(buffer, 'PNG')
  return buffer.getvalue()


def _zip(members: dict[str, bytes]) -> bytes:
  buffer = io.BytesIO()
  with zipfile.ZipFile(buffer, 'w') as zf:
    for name, data in members.items():
      zf.writestr(name, data)
  return buffer.getvalue()


@pytest.fixture(scope='module')
def good_zip() -> bytes:
  """The layout of captcha_images_v2.zip: a top folder of images, plus macOS junk."""
  members = {f'captcha_images_v2/{label}.png': _png(label) for label in LABELS}
  members['__MACOSX/captcha_images_v2/._2m3cd.png'] = b'\0\5\26\7 resource fork'
  return _zip(members)


def _git_blob_sha1(path: Path) -> str:
  """The id git itself gives the file: the reference the module's hashing must match."""
  if shutil.which('git') is None:
    data = path.read_bytes()
    return hashlib.sha1(b'blob %d\0' % len(data) + data).hexdigest()
  command = ['git', 'hash-object', str(path)]
  return subprocess.run(command, capture_output=True, text=True, check=True).stdout.strip()


class _Handler(http.server.BaseHTTPRequestHandler):
  def do_GET(self):
    self.server.requests.append(self.path)
    route = self.server.routes.get(self.path)
    if route is None:
      self.send_error(404)
    else:
      route(self)

  def log_message(self, *args):
    pass  # keeps the test output to the failures


class Server:
  """A ThreadingHTTPServer on 127.0.0.1 whose paths map to handler functions."""

  def __init__(self):
    self.httpd = http.server.ThreadingHTTPServer(('127.0.0.1', 0), _Handler)
    self.httpd.routes, self.httpd.requests = {}, []
    self.release = threading.Event()  # lets hanging handlers end at teardown
    self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
    self.thread.start()
    self.running = True

  def url(self, path: str) -> str:
    return f'http://127.0.0.1:{self.httpd.server_address[1]}{path}'

  def serve(self, path: str, handler) -> str:
    self.httpd.routes[path] = handler
    return self.url(path)

  @property
  def requests(self) -> list[str]:
    return self.httpd.requests

  def stop(self):
    if self.running:
      self.release.set()
      self.httpd.shutdown()
      self.httpd.server_close()
      self.running = False


@pytest.fixture
def server():
  s = Server()
  yield s
  s.stop()


def body(data: bytes, length: int | None = None):
  """A handler sending `data` with Content-Length `length` (default: the true size)."""

  def handle(h):
    h.send_response(200)
    h.send_header('Content-Type', 'application/zip')
    h.send_header('Content-Length', str(len(data) if length is None else length))
    h.end_headers()
    h.wfile.write(data)

  return handle


def _everything(folder: Path) -> list[str]:
  return sorted(str(p.relative_to(folder)) for p in folder.rglob('*'))


def test_fetch_unpacks_the_image_folder_and_reuses_it_offline(server, good_zip, tmp_path, caplog):
  url = server.serve('/captcha_images_v2.zip', body(good_zip))
  cache = tmp_path / 'cache'
  sha256 = hashlib.sha256(good_zip).hexdigest()
  folder = download.fetch(url, cache, sha256=sha256, min_images=20, progress=False)
  assert folder.parent.parent == cache and folder.name == 'captcha_images_v2'
  assert sorted(p.name for p in folder.iterdir()) == sorted(f'{t}.png' for t in LABELS)
  assert (folder / '2m3cd.png').read_bytes() == _png('2m3cd')
  # Only the final folder: no temporaries, no zip, no macOS junk.
  assert [p.name for p in cache.iterdir()] == [folder.parent.name]
  assert not list(cache.rglob('__MACOSX'))
  assert server.requests == ['/captcha_images_v2.zip']

  server.stop()  # the second call must not touch the network at all
  with caplog.at_level(logging.INFO):
    assert download.fetch(url, cache, sha256=sha256, min_images=20, progress=False) == folder
  assert f'Reading the copy of {url} unpacked into {folder.parent} on ' in caplog.text


def test_git_blob_id_pins_the_download_as_git_computes_it(server, good_zip, tmp_path):
  url = server.serve('/captcha_images_v2.zip', body(good_zip))
  (tmp_path / 'blob').write_bytes(good_zip)
  blob = _git_blob_sha1(tmp_path / 'blob')
  assert download.git_blob_sha1_of(tmp_path / 'blob') == blob
  folder = download.fetch(url, tmp_path / 'cache', git_blob_sha1=blob, progress=False)
  assert len(list(folder.glob('*.png'))) == len(LABELS)


@pytest.mark.parametrize('pin', ['sha256', 'git_blob_sha1'])
def test_wrong_checksum_names_both_and_unpacks_nothing(server, good_zip, tmp_path, pin):
  url = server.serve('/captcha_images_v2.zip', body(good_zip))
  wrong = '0' * (64 if pin == 'sha256' else 40)
  cache = tmp_path / 'cache'
  with pytest.raises(DataError, match='expected 0+, got [0-9a-f]+') as info:
    download.fetch(url, cache, progress=False, **{pin: wrong})
  (tmp_path / 'blob').write_bytes(good_zip)
  right = {
    'sha256': hashlib.sha256(good_zip).hexdigest(),
    'git_blob_sha1': _git_blob_sha1(tmp_path / 'blob'),
  }
  assert right[pin] in str(info.value)
  assert _everything(cache) == []


def test_cut_off_download_leaves_nothing_and_a_rerun_succeeds(server, good_zip, tmp_path):
  def cut_off(h):
    body(good_zip[: len(good_zip) // 2], length=len(good_zip))(h)
    h.close_connection = True

  url = server.serve('/captcha_images_v2.zip', cut_off)
  cache = tmp_path / 'cache'
  # No checksum: the Content-Length alone must catch the short body.
  with pytest.raises(DataError, match=f'{re.escape(url)}.* (cut off|broke off)'):
    download.fetch(url, cache, progress=False)
  assert _everything(cache) == []

  server.serve('/captcha_images_v2.zip', body(good_zip))
  folder = download.fetch(url, cache, progress=False)
  assert len(list(folder.glob('*.png'))) == len(LABELS)


def test_leftovers_of_a_killed_run_do_not_break_the_next(server, good_zip, tmp_path):
  url = server.serve('/captcha_images_v2.zip', body(good_zip))
  cache = tmp_path / 'cache'
  final = download.fetch(url, cache, progress=False).parent
  shutil.rmtree(final)
  # What a process killed mid-download or mid-unpack leaves: one old, one still fresh.
  old_part = cache / f'.{final.name}.old.part'
  old_dir = cache / f'.{final.name}.old.tmp'
  fresh_part = cache / f'.{final.name}.fresh.part'
  old_part.write_bytes(good_zip[:100])
  (old_dir / 'captcha_images_v2').mkdir(parents=True)
  long_ago = time.time() - download.STALE_SECONDS - 60
  for p in (old_part, old_dir):
    os.utime(p, (long_ago, long_ago))
  fresh_part.write_bytes(b'')

  folder = download.fetch(url, cache, progress=False)
  assert folder.parent == final and len(list(folder.glob('*.png'))) == len(LABELS)
  # Old ones are cleaned up; a fresh one may be a download running beside this one.
  assert sorted(p.name for p in cache.iterdir()) == sorted([final.name, fresh_part.name])


def test_connection_refused_names_the_url_and_the_manual_way(tmp_path):
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    port = s.getsockname()[1]  # closed again below, so nothing listens there
  url = f'http://127.0.0.1:{port}/captcha_images_v2.zip'
  with pytest.raises(DataError, match='--config.data_dir') as info:
    download.fetch(url, tmp_path / 'cache', progress=False)
  assert url in str(info.value) and 'unzip' in str(info.value)
  assert _everything(tmp_path / 'cache') == []


def test_http_error_names_the_url_and_status(server, tmp_path):
  url = server.url('/missing.zip')
  with pytest.raises(DataError, match='HTTP 404') as info:
    download.fetch(url, tmp_path / 'cache', progress=False)
  assert url in str(info.value) and '--config.data_dir' in str(info.value)
  assert _everything(tmp_path / 'cache') == []


def test_a_server_that_never_answers_times_out(server, tmp_path):
  url = server.serve('/slow.zip', lambda h: server.release.wait(10))
  start = time.monotonic()
  with pytest.raises(DataError, match=re.escape(url)):
    download.fetch(url, tmp_path / 'cache', progress=False, timeout=0.5)
  assert time.monotonic() - start < 5
  assert _everything(tmp_path / 'cache') == []


def test_a_body_that_is_not_a_zip_is_refused(server, tmp_path):
  url = server.serve('/page.zip', body(b'<html>Rate limit exceeded</html>'))
  with pytest.raises(DataError, match='not a usable zip.*<html>'):
    download.fetch(url, tmp_path / 'cache', progress=False)
  assert _everything(tmp_path / 'cache') == []


@pytest.mark.parametrize('evil', ['../evil.png', 'captcha_images_v2/../../evil.png', '/evil.png'])
def test_members_outside_the_folder_are_refused(server, tmp_path, evil):
  members = {f'captcha_images_v2/{label}.png': _png(label) for label in LABELS[:3]}
  members[evil] = _png('evil')
  url = server.serve('/slip.zip', body(_zip(members)))
  cache = tmp_path / 'deep' / 'cache'
  with pytest.raises(DataError, match='outside'):
    download.fetch(url, cache, progress=False)
  assert _everything(cache) == []
  assert not list(tmp_path.rglob('evil.png'))


def test_too_few_images_or_a_refusing_check_keeps_nothing(server, good_zip, tmp_path):
  url = server.serve('/captcha_images_v2.zip', body(good_zip))
  cache = tmp_path / 'cache'
  with pytest.raises(DataError, match='20 images, fewer than the 1040'):
    download.fetch(url, cache, min_images=1040, progress=False)
  assert _everything(cache) == []

  def refuse(folder: Path):
    raise DataError(f'{len(list(folder.iterdir()))} images, none of them wanted')

  with pytest.raises(DataError, match='20 images, none of them wanted'):
    download.fetch(url, cache, check=refuse, progress=False)
  assert _everything(cache) == []


def test_a_zip_written_on_windows_unpacks_into_its_folder(server, tmp_path):
  members = {f'captcha_images_v2\\{label}.png': _png(label) for label in LABELS}
  url = server.serve('/windows.zip', body(_zip(members)))
  folder = download.fetch(url, tmp_path / 'cache', progress=False)
  assert folder.name == 'captcha_images_v2'
  assert sorted(p.stem for p in folder.iterdir()) == sorted(LABELS)


def _patched(data: bytes, local_offset: int, central_offset: int, value: int) -> bytes:
  """`data` (a zip) with a 2-byte field of every local and central header set to `value`."""
  out = bytearray(data)
  for signature, offset in ((b'PK\x03\x04', local_offset), (b'PK\x01\x02', central_offset)):
    for match in re.finditer(re.escape(signature), data):
      out[match.start() + offset : match.start() + offset + 2] = value.to_bytes(2, 'little')
  return bytes(out)


@pytest.mark.parametrize(
  'fields,what',
  [((6, 8, 1), 'encrypted'), ((8, 10, 9), 'not supported')],  # the flag, or Deflate64's method
)
def test_an_encrypted_or_deflate64_zip_is_refused_by_name(server, tmp_path, fields, what):
  members = {f'captcha_images_v2/{label}.png': _png(label) for label in LABELS[:3]}
  url = server.serve('/odd.zip', body(_patched(_zip(members), *fields)))
  with pytest.raises(DataError, match=f'not a usable zip file .*{what}'):
    download.fetch(url, tmp_path / 'cache', progress=False)
  assert _everything(tmp_path / 'cache') == []


def test_a_zip_without_images_is_refused(server, tmp_path):
  url = server.serve('/text.zip', body(_zip({'readme/notes.txt': b'no images here'})))
  with pytest.raises(DataError, match='holds no'):
    download.fetch(url, tmp_path / 'cache', progress=False)
  assert _everything(tmp_path / 'cache') == []


def test_a_malformed_checksum_is_a_config_error_before_any_download(server, tmp_path):
  url = server.serve('/captcha_images_v2.zip', body(b''))
  with pytest.raises(ConfigError, match='64 hex digits'):
    download.fetch(url, tmp_path / 'cache', sha256='e8fb4fa4', progress=False)
  assert server.requests == [] and not (tmp_path / 'cache').exists()


SHARED = Path(__file__).resolve().parents[2] / 'shared' / 'data' / 'captcha_v2'


def test_a_downloaded_set_is_read_from_the_folder_that_holds_it_whole(server, tmp_path):
  from captcha_jax import labelled

  members = {f'set/train/{label}.png': _png(label) for label in LABELS[:14]}
  members |= {f'set/test/{label}.png': _png(label) for label in LABELS[14:]}
  # More images, unlabelled, beside them: not the folder the set is read from.
  members |= {f'set/unlabeled/{i:08x}.png': _png(LABELS[0]) for i in range(20)}
  config = ml_collections.ConfigDict(
    dict(
      data_dir='',
      data_url=server.serve('/set.zip', body(_zip(members))),
      download_dir=str(tmp_path / 'cache'),
      data_sha256='',
      data_git_blob='',
      data_min_images=14,
    )
  )
  folder = labelled.data_folder(config)
  assert folder.name == 'set' and sorted(labelled.split_folders(folder)) == ['test', 'train']
  # A run's config names the copy; once it is deleted, the set is fetched into it again.
  shutil.rmtree(tmp_path / 'cache')
  saved = ml_collections.ConfigDict({**config, 'data_dir': str(folder)})
  assert labelled.data_folder(saved) == folder and folder.is_dir()
  # Another copy there (a Parquet set's), deleted: not data_url's, so not fetched in its place.
  saved.data_dir = str(tmp_path / 'cache' / 'mine-parquet-0123456789ab')
  with pytest.raises(DataError, match='has been deleted since'):
    labelled.data_folder(saved)
  # A repository's archive: a README beside the folder of images, which is read.
  members = {f'repo-main/samples/{label}.png': _png(label) for label in LABELS}
  members['repo-main/README.md'] = b'# captchas'
  config.data_url = server.serve('/repo.zip', body(_zip(members)))
  assert labelled.data_folder(config).name == 'samples'
  # A set whose list lies beside the folder of its images, named by number.
  members = {f'listed/images/{i:03d}.png': _png(label) for i, label in enumerate(LABELS)}
  rows = ''.join(f'images/{i:03d}.png,{label}\n' for i, label in enumerate(LABELS))
  members['listed/labels.csv'] = f'file,text\n{rows}'.encode()
  config.data_url = server.serve('/listed.zip', body(_zip(members)))
  folder = labelled.data_folder(config)
  assert folder.name == 'listed'
  listing = labelled.find_labels_file(folder)
  assert listing == folder / 'labels.csv'
  examples, problems, _ = labelled.read_labels_file(listing, folder)
  assert sorted(e.text for e in examples) == sorted(LABELS) and not problems


def test_a_parquet_file_from_data_url_says_how_it_is_read(server, tmp_path):
  url = server.serve('/train-00000-of-00001.parquet', body(b'PAR1' + bytes(64) + b'PAR1'))
  with pytest.raises(DataError, match='is a Parquet file, which is read from a folder'):
    download.fetch(url, tmp_path / 'cache', progress=False)


def test_names_a_zip_does_not_mark_as_utf8_are_named_in_a_warning(server, tmp_path, caplog):
  """A zip made where names are written in a local code page (Windows' cp866, here) without the
  UTF-8 flag: its names read as cp437, texts wrong; said, since which page it was is unknown."""
  blob = _zip({f'set/{label}.png': _png(label) for label in [*LABELS[:19], 'XXXX']})
  blob = blob.replace(b'XXXX', 'абвг'.encode('cp866'))  # in both headers; no UTF-8 flag
  url = server.serve('/cyr.zip', body(blob))
  with caplog.at_level(logging.WARNING):
    download.fetch(url, tmp_path / 'cache', progress=False)
  assert '1 names in the zip from' in caplog.text and 'not marked as UTF-8' in caplog.text
  assert 'абвг'.encode('cp866').decode('cp437') in caplog.text


def _tar(members: dict[str, bytes], link: str = '', mode: str = 'w:gz') -> bytes:
  """A .tar.gz (or tarball of `mode`) of `members`, and a symbolic link named `link` to
  /etc/passwd where given."""
  buffer = io.BytesIO()
  with tarfile.open(fileobj=buffer, mode=mode) as tf:
    for name, data in members.items():
      info = tarfile.TarInfo(name)
      info.size = len(data)
      tf.addfile(info, io.BytesIO(data))
    if link:
      info = tarfile.TarInfo(link)
      info.type, info.linkname = tarfile.SYMTYPE, '/etc/passwd'
      tf.addfile(info)
  return buffer.getvalue()


def test_a_tarball_unpacks_as_a_zip_does_but_for_its_links(server, tmp_path, caplog):
  members = {f'set-1.0/{label}.png': _png(label) for label in LABELS}
  members['set-1.0/._2m3cd.png'] = b'\0\5\26\7 resource fork'
  url = server.serve('/set-1.0.tar.gz', body(_tar(members)))
  folder = download.fetch(url, tmp_path / 'cache', min_images=20, progress=False)
  assert sorted(p.name for p in folder.iterdir()) == sorted(f'{t}.png' for t in LABELS)
  assert (folder / '2m3cd.png').read_bytes() == _png('2m3cd')
  linked = server.serve('/linked.tar.gz', body(_tar(members, link='set-1.0/zz.png')))
  with caplog.at_level(logging.WARNING):
    unlinked = download.fetch(linked, tmp_path / 'linked', progress=False)
  assert 'Leaving out 1 links or devices of the tar archive' in caplog.text
  assert 'set-1.0/zz.png' in caplog.text and not (unlinked / 'zz.png').exists()
  assert len(list(unlinked.iterdir())) == 20
  buffer = io.BytesIO(_tar(members, mode='w'))  # and a hard link: a second name of a file
  with tarfile.open(fileobj=buffer, mode='a') as tf:
    info = tarfile.TarInfo('set-1.0/2m3cd (1).png')
    info.type, info.linkname = tarfile.LNKTYPE, 'set-1.0/2m3cd.png'
    tf.addfile(info)
  url = server.serve('/hard.tar', body(buffer.getvalue()))
  hard = download.fetch(url, tmp_path / 'hard', progress=False)
  assert (hard / '2m3cd (1).png').read_bytes() == _png('2m3cd')
  escaping = server.serve('/up.tar.gz', body(_tar({'../up.png': _png('2m3cd')})))
  with pytest.raises(DataError, match=r"outside its folder: \['../up.png'\]"):
    download.fetch(escaping, tmp_path / 'cache', progress=False)
  assert not (tmp_path / 'up.png').exists()
  assert [p.name for p in (tmp_path / 'cache').iterdir()] == [folder.parent.name]
  # A plain .tar cut off between two members, with no length to tell: not a smaller set.
  plain = _tar(members, mode='w')
  whole = server.serve('/whole.tar', body(plain))
  assert len(list(download.fetch(whole, tmp_path / 'plain', progress=False).iterdir())) == 20
  with tarfile.open(fileobj=io.BytesIO(plain)) as tf:
    between = tf.getmembers()[10].offset  # where the 11th member's header starts
  cut = server.serve('/cut.tar', body(plain[:between]))
  with pytest.raises(DataError, match='cut short'):
    download.fetch(cut, tmp_path / 'plain', progress=False)


@pytest.fixture(scope='module')
def dataset_zip(tmp_path_factory) -> Path:
  """A zip laid out like captcha_images_v2.zip, of 100 real captchas when ../shared has them
  (synthetic ones of the same style otherwise)."""
  from captcha_jax import synthetic

  if SHARED.is_dir():
    sources = sorted(SHARED.glob('*.png'))[:100]
  else:
    sources = synthetic.generate(tmp_path_factory.mktemp('synthetic'), 100, seed=4)
  path = tmp_path_factory.mktemp('zip') / 'captcha_images_v2.zip'
  with zipfile.ZipFile(path, 'w') as zf:
    for source in sources:
      zf.write(source, f'captcha_images_v2/{source.name}')
  return path


@pytest.mark.slow
def test_training_fetches_the_default_data_once(server, dataset_zip, tmp_path, tiny_config):
  """No data folder: the first run downloads, verifies and unpacks, then trains; the next run's
  data reads the cache with the server gone; a wrong checksum unpacks nothing."""
  from captcha_jax import data, train

  blob = dataset_zip.read_bytes()
  tiny_config.update(
    data_dir='',
    data_url=server.serve('/captcha_images_v2.zip', body(blob)),
    data_git_blob='0' * 40,
    data_min_images=100,
    download_dir=str(tmp_path / 'cache'),
    num_epochs=1,
  )
  with pytest.raises(DataError, match='expected 0+, got'):
    train.train_and_evaluate(tiny_config, tmp_path / 'refused')
  assert not list((tmp_path / 'cache').glob('*captcha*'))
  tiny_config.data_git_blob = _git_blob_sha1(dataset_zip)
  train.train_and_evaluate(tiny_config, tmp_path / 'first')
  saved = json.loads((tmp_path / 'first' / 'config.json').read_text())
  unpacked = Path(saved['data_dir'])
  assert unpacked.parent.parent == tmp_path / 'cache' and len(list(unpacked.glob('*.png'))) == 100
  server.stop()
  again, splits = data.resolve(tiny_config, lambda height, width: 1000)  # what a run reads first
  assert again.data_dir == str(unpacked)
  split = json.loads((tmp_path / 'first' / 'split.json').read_text())
  assert {name: len(examples) for name, examples in splits.items()} == {
    name: split[name]['images'] for name in splits
  }
