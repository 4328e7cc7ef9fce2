"""Fetch a zip (or tar archive) of captcha images once into a cache folder: download, verify,
unpack, reuse.

The default is the public 1040-image `captcha_images_v2` zip that the Keras OCR example uses.
Only the standard library and tqdm. A half-done download or unpack never looks finished: the
cached folder appears by one rename, after every check has passed.
"""

import hashlib
import http.client
import logging
import os
import re
import shutil
import tarfile
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from tqdm import tqdm

from captcha_jax.errors import ConfigError, DataError
from captcha_jax.images import IMAGE_EXTENSIONS

# Temporaries older than this were left by a killed process; younger ones may belong to a
# download running beside this one, so they are left alone.
STALE_SECONDS = 3600
_CHUNK = 1 << 20
# macOS resource forks and hidden files, which zips made on a Mac carry beside the real files.
_JUNK = re.compile(r'^(__MACOSX|\..*)$')


def fetch(
  url: str,
  cache_dir: str | Path,
  *,
  sha256: str = '',
  git_blob_sha1: str = '',
  min_images: int = 1,
  check: Callable[[Path], None] | None = None,
  progress: bool = True,
  timeout: float = 30.0,
) -> Path:
  """Downloads and unpacks the zip (or tar archive) at `url` under `cache_dir` once; returns its
  image folder.

  The image folder is the folder inside the zip holding the most images (zips often have a top
  folder; `__MACOSX/` and hidden entries are skipped). It lies under
  `cache_dir/<zip name>-<hash of url and checksums>/`; when that exists it is reused with no
  network access. Every checksum given is verified: `sha256`, and `git_blob_sha1` (the id
  `git hash-object FILE` prints). The image folder must hold at least `min_images` images, and
  `check(folder)`, if given, may raise DataError to refuse it; both run before the folder is
  moved into place, and again on reuse. `timeout` is in seconds, for the connection and each
  read.

  Raises DataError (no connection, HTTP error, cut-off download, wrong checksum, not a zip,
  unsafe member paths, too few images), leaving nothing of this download in `cache_dir`.
  """
  sha256 = _checked_hex(sha256, 64, 'sha256')
  git_blob_sha1 = _checked_hex(git_blob_sha1, 40, 'git_blob_sha1')
  cache_dir = Path(cache_dir).expanduser()
  name = cache_name(url, sha256, git_blob_sha1)
  final = cache_dir / name
  if final.is_dir():
    found = _reuse(final, min_images, check)
    when = time.strftime('%Y-%m-%d %H:%M', time.localtime(final.stat().st_mtime))
    logging.info(
      'Reading the copy of %s unpacked into %s on %s (delete it to download the file again).',
      url,
      final,
      when,
    )
    return found

  cache_dir.mkdir(parents=True, exist_ok=True)
  _remove_stale(cache_dir, name)
  part = unpacked = None
  try:
    fd, part = tempfile.mkstemp(dir=cache_dir, prefix=f'.{name}.', suffix='.part')
    with os.fdopen(fd, 'wb') as out:
      _download(url, out, timeout, progress)
    _verify(Path(part), url, sha256, git_blob_sha1)
    unpacked = Path(tempfile.mkdtemp(dir=cache_dir, prefix=f'.{name}.', suffix='.tmp'))
    _unpack(Path(part), unpacked, url)
    what = f'The archive from {url}'
    images = _image_folder(unpacked, what)
    _check_content(images, min_images, check, what)
    inside = images.relative_to(unpacked)
    os.chmod(unpacked, 0o755)  # mkdtemp's 0o700 would hide a shared cache from other users
    try:
      os.rename(unpacked, final)
    except OSError:
      if not final.is_dir():
        raise
      # A download running beside this one finished first; its copy is as good as this one.
      return _reuse(final, min_images, check)
    unpacked = None
    logging.info('Unpacked %s into %s', url, final)
    return final / inside
  finally:
    if part is not None:
      Path(part).unlink(missing_ok=True)
    if unpacked is not None:
      shutil.rmtree(unpacked, ignore_errors=True)


def git_blob_sha1_of(path: str | Path) -> str:
  """The id `git hash-object` gives a file: sha1 of b'blob <size>\\0' + its bytes, hex."""
  path = Path(path)
  digest = hashlib.sha1(f'blob {path.stat().st_size}\0'.encode())
  _hash_file(path, digest)
  return digest.hexdigest()


def _checked_hex(value: str, length: int, what: str) -> str:
  value = value.strip().lower()
  if value and not re.fullmatch(f'[0-9a-f]{{{length}}}', value):
    raise ConfigError(f'{what} {value!r} is not {length} hex digits.')
  return value


def cache_name(url: str, sha256: str, git_blob_sha1: str) -> str:
  """`<zip name>-<12 hex>`: another URL or another pinned checksum gets its own folder."""
  stem = Path(urllib.parse.urlsplit(url).path).stem
  stem = re.sub(r'[^A-Za-z0-9_.-]+', '_', stem).strip('._') or 'download'
  key = hashlib.sha256(f'{url}\n{sha256}\n{git_blob_sha1}'.encode()).hexdigest()[:12]
  return f'{stem}-{key}'


def _by_hand(url: str) -> str:
  return (
    f'To do without the download, fetch {url} some other way, unpack it (for example '
    '`unzip FILE.zip -d data`), and pass the folder that holds the images with '
    '--config.data_dir=PATH.'
  )


def _download(url: str, out: BinaryIO, timeout: float, progress: bool) -> None:
  """Streams the body of `url` into `out`; DataError unless every promised byte arrived."""
  request = urllib.request.Request(url, headers={'User-Agent': 'captcha_jax'})
  logging.info('Downloading %s', url)
  try:
    response = urllib.request.urlopen(request, timeout=timeout)
  except urllib.error.HTTPError as e:
    raise DataError(f'Could not download {url}: HTTP {e.code} {e.reason}. {_by_hand(url)}') from e
  except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
    reason = getattr(e, 'reason', e)
    raise DataError(f'Could not download {url}: {reason}. {_by_hand(url)}') from e
  received = 0
  with response:
    length = response.headers.get('Content-Length')
    expected = int(length) if length and length.isdigit() else None
    bar = tqdm(
      total=expected,
      unit='B',
      unit_scale=True,
      unit_divisor=1024,
      desc=Path(urllib.parse.urlsplit(url).path).name or url,
      disable=not progress,
    )
    with bar:
      try:
        while chunk := response.read(_CHUNK):
          out.write(chunk)
          received += len(chunk)
          bar.update(len(chunk))
      except (OSError, http.client.HTTPException) as e:
        raise DataError(
          f'The download of {url} broke off after {received} bytes ({e!r}). Run again to retry. '
          + _by_hand(url)
        ) from e
  if expected is not None and received != expected:
    raise DataError(
      f'The download of {url} was cut off: {received} of {expected} bytes arrived. Run again to '
      'retry. ' + _by_hand(url)
    )


def _hash_file(path: Path, digest) -> None:
  with open(path, 'rb') as f:
    while chunk := f.read(_CHUNK):
      digest.update(chunk)


def _verify(path: Path, url: str, sha256: str, git_blob_sha1: str) -> None:
  """DataError naming the expected and the actual checksum when a pinned one differs."""
  got = {}
  if sha256:
    digest = hashlib.sha256()
    _hash_file(path, digest)
    got['sha256'] = (sha256, digest.hexdigest())
  if git_blob_sha1:
    got['git blob sha1'] = (git_blob_sha1, git_blob_sha1_of(path))
  for what, (expected, actual) in got.items():
    if actual != expected:
      raise DataError(
        f'The file downloaded from {url} has the wrong {what}: expected {expected}, got '
        f'{actual}. The file at that address changed or the download was altered; nothing was '
        f'unpacked. If it is meant to be another file than the one pinned, pin its checksum '
        f'instead, or none (a run: config.data_git_blob, config.data_sha256). {_by_hand(url)}'
      )


def _unsafe(member: str) -> bool:
  """True for names that would land outside the folder they are unpacked into (zip-slip)."""
  posix = member.replace('\\', '/')
  parts = PurePosixPath(posix).parts
  drive = re.match(r'^[A-Za-z]:', posix)
  return posix.startswith('/') or bool(drive) or '..' in parts


def _unpack(archive: Path, into: Path, url: str) -> None:
  """Extracts every member but macOS junk into `into`; DataError for a bad or unsafe zip or tar
  archive (a tarball, as GitHub's releases and many datasets ship: gzip, bzip2 or xz)."""
  if not zipfile.is_zipfile(archive) and tarfile.is_tarfile(archive):
    _untar(archive, into, url)
    return
  try:
    with zipfile.ZipFile(archive) as zf:
      names = zf.namelist()
      unsafe = [n for n in names if _unsafe(n)]
      if unsafe:
        raise DataError(
          f'The zip from {url} has members that would be written outside its folder: '
          f'{unsafe[:5]}. It was not unpacked.'
        )
      # Names not marked UTF-8 are read as the zip standard's cp437, rightly or not: say so.
      legacy = [
        i.filename for i in zf.infolist() if not i.flag_bits & 0x800 and not i.filename.isascii()
      ]
      if legacy:
        logging.warning(
          '%d names in the zip from %s are not marked as UTF-8 (e.g. %r): read as cp437, the zip '
          "standard's; if they were written in another encoding, the texts read from them are "
          'wrong: unpack it with that one (`unzip -O CP866 FILE.zip`) and use --config.data_dir.',
          len(legacy),
          url,
          legacy[0],
        )
      keep = []
      for info in zf.infolist():
        # Windows tools (PowerShell's Compress-Archive) write 'set\\226md.png': a file named so.
        info.filename = info.filename.replace('\\', '/')
        if not any(_JUNK.match(p) for p in PurePosixPath(info.filename).parts):
          keep.append(info)
      zf.extractall(into, members=keep)
  # Also encrypted members (RuntimeError) and a method zipfile lacks (Deflate64: NotImplemented).
  except (zipfile.BadZipFile, zlib.error, EOFError, RuntimeError, NotImplementedError) as e:
    with open(archive, 'rb') as f:
      start = f.read(16)
    if start.startswith(b'PAR1'):  # a Hub dataset's file: read from a folder, not fetched
      raise DataError(
        f'What {url} sent is a Parquet file, which is read from a folder, not fetched: download '
        'it into a folder of its own and pass that folder with --config.data_dir=PATH.'
      ) from e
    raise DataError(
      f'What {url} sent is not a usable zip file ({e}; it starts with {start!r}). ' + _by_hand(url)
    ) from e


def _untar(archive: Path, into: Path, url: str) -> None:
  """`_unpack` for a tar archive: its regular files and folders, and hard links as copies of their
  files (symbolic links and devices are left out, named in a warning; a member outside `into`
  refuses the archive), whatever Python's own extraction filters allow."""
  try:
    with tarfile.open(archive) as tf:
      members = tf.getmembers()
      if unsafe := [m.name for m in members if _unsafe(m.name)]:
        raise DataError(
          f'The tar archive from {url} has members that would be written outside its folder: '
          f'{unsafe[:5]}. It was not unpacked.'
        )
      # A hard link is a second name of a file the archive holds: written as a copy of it.
      kept = [
        m for m in members if m.isfile() or m.isdir() or (m.islnk() and not _unsafe(m.linkname))
      ]
      if others := [m.name for m in members if m not in kept]:
        logging.warning(
          'Leaving out %d links or devices of the tar archive from %s: %s.',
          len(others),
          url,
          ', '.join(others[:5]),
        )
      members = kept
      # tarfile stops quietly where a cut-off plain .tar ends; its zero block says it is whole.
      tf.fileobj.seek(tf.offset)
      if tf.fileobj.read(tarfile.BLOCKSIZE) != bytes(tarfile.BLOCKSIZE):
        raise DataError(f'The tar archive from {url} is cut short (no end-of-archive marker).')
      for member in members:
        if any(_JUNK.match(p) for p in PurePosixPath(member.name).parts):
          continue
        target = into / member.name
        if member.isdir():
          target.mkdir(parents=True, exist_ok=True)
          continue
        target.parent.mkdir(parents=True, exist_ok=True)
        with tf.extractfile(member) as source, open(target, 'wb') as out:
          shutil.copyfileobj(source, out, _CHUNK)
  except (tarfile.TarError, EOFError, OSError, zlib.error) as e:
    raise DataError(f'What {url} sent is not a usable tar archive ({e}). ' + _by_hand(url)) from e


def _count_images(folder: Path) -> int:
  return sum(
    1
    for p in folder.iterdir()
    if p.is_file() and not _JUNK.match(p.name) and p.suffix.lower() in IMAGE_EXTENSIONS
  )


def _image_folder(root: Path, what: str) -> Path:
  """The folder under `root` holding the most images, the shallowest on a tie."""
  best, best_count = root, -1
  for folder, subfolders, _ in os.walk(root):
    subfolders[:] = sorted(s for s in subfolders if not _JUNK.match(s))
    count = _count_images(Path(folder))
    if count > best_count:
      best, best_count = Path(folder), count
  if best_count <= 0:
    raise DataError(f'{what} holds no {"/".join(IMAGE_EXTENSIONS)} images.')
  return best


def _check_content(
  images: Path, min_images: int, check: Callable[[Path], None] | None, what: str
) -> None:
  count = _count_images(images)
  if count < min_images:
    raise DataError(
      f'{what} holds {count} images, fewer than the {min_images} expected (a run: '
      'config.data_min_images).'
    )
  if check is not None:
    check(images)


def _reuse(final: Path, min_images: int, check: Callable[[Path], None] | None) -> Path:
  """The image folder of an earlier download, checked again so a damaged cache is noticed."""
  try:
    what = f'The cached folder {str(final)!r}'
    images = _image_folder(final, what)
    _check_content(images, min_images, check, what)
  except DataError as e:
    raise DataError(f'{e} Delete {str(final)!r} to download it again.') from e
  return images


def _remove_stale(cache_dir: Path, name: str) -> None:
  """Deletes temporaries of this download that a killed process left behind."""
  now = time.time()
  for leftover in cache_dir.glob(f'.{name}.*'):
    try:
      if now - leftover.stat().st_mtime < STALE_SECONDS:
        continue
      if leftover.is_dir():
        shutil.rmtree(leftover, ignore_errors=True)
      else:
        leftover.unlink(missing_ok=True)
    except OSError:
      pass  # another process removed it first; either way it is gone
