"""ddddocr (a pretrained general captcha reader on PyPI) in its own virtual environment.

It pins its own numpy, Pillow, OpenCV and onnxruntime, so the benches install it once under
~/.cache/captcha_jax/ddddocr-venv and run it in a child process; it is never a dependency of
captcha_jax.
"""

import json
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

DDDDOCR_VERSION = '1.6.1'

_READ = """
import json, sys
import ddddocr
paths, alphabet = json.load(sys.stdin)
answer, sys.stdout = sys.stdout, sys.stderr  # its banner must not mix with the answer
plain = ddddocr.DdddOcr(show_ad=False)
restricted = ddddocr.DdddOcr(show_ad=False)
restricted.set_ranges(alphabet)
texts = {'plain': [], 'restricted': []}
for path in paths:
  blob = open(path, 'rb').read()
  texts['plain'].append(plain.classification(blob))
  texts['restricted'].append(restricted.classification(blob))
answer.write(json.dumps(texts))
"""


def ddddocr_python() -> Path:
  """The ddddocr venv's Python, creating the venv and installing ddddocr on first use."""
  from common import own_venv  # not at the top: this file also runs in that venv, without it

  return own_venv('ddddocr-venv', [f'ddddocr=={DDDDOCR_VERSION}'], 'ddddocr')


def read(paths: Sequence[str], alphabet: str) -> dict[str, list[str]]:
  """ddddocr's texts of the image files: {'plain': as it comes, 'restricted': with its
  `set_ranges(alphabet)` (which deletes other characters rather than picking allowed ones)}."""
  out = subprocess.run(
    [str(ddddocr_python()), '-c', _READ],
    input=json.dumps([list(map(str, paths)), alphabet]),
    capture_output=True,
    text=True,
    check=True,
  )
  return json.loads(out.stdout)


def worker(folder: str, names: Sequence[str], alphabet: str) -> None:
  """Serves timing and reading requests (JSON lines on stdin, answers on stdout) for ddddocr.

  Runs in the ddddocr venv: imports only the standard library, NumPy, Pillow and ddddocr.
  """
  import io
  import time

  import ddddocr
  import numpy as np
  import onnxruntime as ort
  from PIL import Image

  answer, sys.stdout = sys.stdout, sys.stderr  # stray prints must not break the protocol
  default = ddddocr.DdddOcr(show_ad=False)
  restricted = ddddocr.DdddOcr(show_ad=False)
  restricted.set_ranges(alphabet)
  one_thread = ddddocr.DdddOcr(show_ad=False)
  options = ort.SessionOptions()
  options.intra_op_num_threads = 1
  options.inter_op_num_threads = 1
  one_thread.ocr_engine.session = ort.InferenceSession(
    default.ocr_engine.session._model_path, options, providers=['CPUExecutionProvider']
  )
  readers = {'default': default, 'one_thread': one_thread}
  blobs = [(Path(folder) / name).read_bytes() for name in names]

  def decoded(blob: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(blob))
    image.load()
    return image

  pictures = [decoded(b) for b in blobs]

  def median_ms(seconds: list[float]) -> float:
    return float(np.median(seconds) * 1e3)

  decode_s = []
  for blob in blobs[:200]:
    start = time.perf_counter()
    decoded(blob)
    decode_s.append(time.perf_counter() - start)
  answer.write(json.dumps({'ready': True, 'decode_ms': median_ms(decode_s)}) + '\n')
  answer.flush()
  for line in sys.stdin:
    request = json.loads(line)
    if request['op'] == 'read_all':
      reply = {
        'texts': [default.classification(p) for p in pictures],
        'restricted': [restricted.classification(p) for p in pictures],
      }
    else:  # 'time': `single` one-image calls, then `batches` batches of `batch` images
      reader, first = readers[request['reader']], request['first']
      single = []
      for i in range(request['single']):
        picture = pictures[(first + i) % len(pictures)]
        start = time.perf_counter()
        reader.classification(picture)
        single.append(time.perf_counter() - start)
      batches, size = [], request['batch']
      for b in range(request['batches']):
        chunk = [pictures[(first + b * size + i) % len(pictures)] for i in range(size)]
        start = time.perf_counter()
        for picture in chunk:
          reader.classification(picture)
        batches.append(time.perf_counter() - start)
      reply = {'single': single, 'batches': batches}
    answer.write(json.dumps(reply) + '\n')
    answer.flush()


class Ddddocr:
  """A ddddocr child process holding the images of `folder` named `names`, for timing and reading
  them (bench/inference.py)."""

  def __init__(self, folder: Path, names: Sequence[str], alphabet: str):
    command = [str(ddddocr_python()), str(Path(__file__).resolve()), str(folder), alphabet]
    self.process = subprocess.Popen(
      command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert self.process.stdin is not None
    self.process.stdin.write(json.dumps(list(names)) + '\n')
    self.process.stdin.flush()
    self.decode_ms = self._reply()['decode_ms']

  def _reply(self) -> dict:
    assert self.process.stdout is not None
    line = self.process.stdout.readline()
    if not line:
      raise SystemExit(f'The ddddocr worker exited (status {self.process.wait()}).')
    return json.loads(line)

  def ask(self, **request) -> dict:
    assert self.process.stdin is not None
    self.process.stdin.write(json.dumps(request) + '\n')
    self.process.stdin.flush()
    return self._reply()

  def close(self) -> None:
    if self.process.stdin:
      self.process.stdin.close()
    self.process.wait(30)


if __name__ == '__main__':  # the child's side, under the ddddocr venv's Python
  worker(sys.argv[1], json.loads(sys.stdin.readline()), sys.argv[2])
