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
DDDDOCR_VENV = Path('~/.cache/captcha_jax/ddddocr-venv').expanduser()

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
  python = DDDDOCR_VENV / 'bin' / 'python'
  check = [str(python), '-c', 'import ddddocr']
  if python.exists() and subprocess.run(check, capture_output=True).returncode == 0:
    return python
  print(f'Installing ddddocr=={DDDDOCR_VERSION} into {DDDDOCR_VENV} (once)…', file=sys.stderr)
  subprocess.run([sys.executable, '-m', 'venv', str(DDDDOCR_VENV)], check=True)
  pip = [str(python), '-m', 'pip', 'install', '--quiet', f'ddddocr=={DDDDOCR_VERSION}']
  subprocess.run(pip, check=True)
  subprocess.run(check, check=True)
  return python


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
