"""Reading a trained run anywhere: the predict command on messy folders, the ONNX export read
without JAX, and the HTTP service, each against the Predictor."""

import csv
import json
import os
import shutil
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from captcha_jax import cli, labelled
from captcha_jax.predict import Predictor

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def run(*args: str) -> subprocess.CompletedProcess:
  return subprocess.run(
    [sys.executable, '-m', *args], capture_output=True, text=True, cwd=ROOT, timeout=300
  )


@pytest.fixture(scope='module')
def messy_folder(tmp_path_factory, captcha_dir):
  """Good captchas, one unreadable file, and a name holding a tab."""
  folder = tmp_path_factory.mktemp('messy')
  good = sorted(captcha_dir.glob('*.png'))[:6]
  for path in good:
    shutil.copy(path, folder / path.name)
  (folder / 'broken.png').write_bytes(b'not an image')
  shutil.copy(good[0], folder / 'tab\there.png')
  (folder / 'more').mkdir()  # passed over, and said so
  shutil.copy(good[0], folder / 'more' / good[0].name)
  return folder


def test_predict_reads_the_rest_and_names_each_failure(trained, messy_folder, tmp_path):
  _, workdir, _ = trained
  out_csv, out_jsonl = tmp_path / 'r.csv', tmp_path / 'r.jsonl'
  relative = os.path.relpath(messy_folder, ROOT)  # printed as given, written absolute
  done = run('captcha_jax.predict', f'--workdir={workdir}', relative, f'--output={out_csv}')
  assert done.returncode == 1, done.stderr[-2000:]
  assert "broken.png' is not a readable image" in done.stderr
  assert '1 of 8 file(s) could not be read' in done.stderr and 'Traceback' not in done.stderr
  assert f'Passing over 1 entries of {relative}:\n  {relative}/more: a folder' in done.stderr
  lines = done.stdout.splitlines()
  assert len(lines) == 7 and all(line.count('\t') == 2 for line in lines)
  assert any(line.startswith(f'{relative}/tab\\there.png\t') for line in lines)
  readable = [p for p in sorted(messy_folder.glob('*.png')) if p.name != 'broken.png']
  readings = Predictor.from_workdir(workdir).predict(readable)
  expected = {str(p): r.text for p, r in zip(readable, readings, strict=True)}
  with open(out_csv, newline='') as f:
    rows = list(csv.DictReader(f))
  assert {r['file']: r['text'] for r in rows} == expected
  before = out_csv.read_bytes()  # a run refused, or failing, leaves the file as it was
  refused = run(
    'captcha_jax.predict', f'--workdir={workdir}', relative, f'--output={out_csv}', '--allowed=#'
  )
  assert refused.returncode != 0 and "'#' cannot be read" in refused.stderr
  assert out_csv.read_bytes() == before and 'Traceback' not in refused.stderr
  refused = run(  # a length it cannot read: refused before the file is opened
    'captcha_jax.predict', f'--workdir={workdir}', relative, f'--output={out_csv}', '--length=99'
  )
  assert refused.returncode != 0 and 'needs 99 CTC steps' in refused.stderr
  assert out_csv.read_bytes() == before and not Path(f'{out_csv}.partial').exists()
  assert 'Traceback' not in refused.stderr
  run('captcha_jax.predict', f'--workdir={workdir}', str(messy_folder), f'--output={out_jsonl}')
  readings = [json.loads(line) for line in out_jsonl.read_text().splitlines()]
  assert {r['file']: r['text'] for r in readings} == expected
  assert set(readings[0]) == {'file', 'text', 'raw_text', 'confidence'}


def test_predict_failing_half_way_leaves_its_output_as_it_was(
  trained, captcha_dir, tmp_path, monkeypatch
):
  from captcha_jax import predict

  out_csv = tmp_path / 'r.csv'
  before = 'file,text,raw_text,confidence\nkept.png,kept,kept,0.9\n'  # an earlier run's readings
  out_csv.write_text(before)
  real = predict.read_files

  def read_one_then_fail(*args):
    for i, item in enumerate(real(*args)):
      if i == 1:
        raise RuntimeError('a failure half-way')
      yield item

  monkeypatch.setattr(predict, 'read_files', read_one_then_fail)
  with pytest.raises(RuntimeError, match='half-way'):
    cli.predict([f'--workdir={trained[1]}', str(captcha_dir), f'--output={out_csv}'])
  assert out_csv.read_text() == before
  assert len(Path(f'{out_csv}.partial').read_text().splitlines()) == 2  # the header, one reading


def test_predict_streams_a_folder_in_batches(trained, captcha_dir, monkeypatch):
  """read_files decodes batch_size images at a time, whatever the number of files."""
  _, workdir, _ = trained
  from captcha_jax import predict

  predictor = Predictor.from_workdir(workdir, batch_size=4)
  sizes = []
  real = predictor.read_pixels
  monkeypatch.setattr(predictor, 'read_pixels', lambda p, *a: sizes.append(len(p)) or real(p, *a))
  paths = labelled.find_images(captcha_dir)[0][:10]
  readings = [r for _, r in predict.read_files(predictor, iter(paths))]
  assert sizes == [4, 4, 2]
  assert readings == predictor.predict(paths)


ONNX_READER = """
import json, sys
from captcha_jax.onnx_reader import OnnxReader
reader = OnnxReader(sys.argv[1])
readings = reader.predict(sys.argv[2:])
log_probs = reader.log_probs(__import__('numpy').stack([reader.decode(p) for p in sys.argv[2:]]))
assert not any(m.split('.')[0] in ('jax', 'jaxlib', 'flax', 'optax') for m in sys.modules)
print(json.dumps({'texts': [r.text for r in readings], 'log_probs': log_probs.tolist()}))
"""


def test_onnx_export_of_a_run_reads_like_the_predictor_without_jax(trained, captcha_dir, tmp_path):
  pytest.importorskip('onnxruntime')
  _, workdir, _ = trained
  model = tmp_path / 'reader.ONNX'  # the format from the extension, in either case
  done = run('captcha_jax.export', f'--workdir={workdir}', f'--out={model}')
  assert done.returncode == 0 and 'Wrote' in done.stdout, done.stderr[-2000:]
  paths = [str(p) for p in labelled.find_images(captcha_dir)[0][:20]]
  out = subprocess.run(
    [sys.executable, '-c', ONNX_READER, str(model), *paths], capture_output=True, text=True
  )
  assert out.returncode == 0, out.stderr[-2000:]
  got = json.loads(out.stdout)
  predictor = Predictor.from_workdir(workdir)
  assert got['texts'] == [r.text for r in predictor.predict(paths)]
  pixels = np.stack([predictor.decode(p) for p in paths])
  want = np.asarray(predictor._log_probs(pixels, split=False))
  np.testing.assert_allclose(np.array(got['log_probs']), want, atol=1e-4)


def test_the_service_reads_a_run_over_http(trained, captcha_dir):
  pytest.importorskip('fastapi')
  uvicorn = pytest.importorskip('uvicorn')
  from captcha_jax import serve

  _, workdir, _ = trained
  reader = cli.load_reader(workdir=str(workdir))
  app = serve.create_app(reader, max_wait_ms=1)
  server = uvicorn.Server(uvicorn.Config(app, host='127.0.0.1', port=0, log_level='warning'))
  thread = threading.Thread(target=server.run, daemon=True)
  thread.start()
  while not server.started:
    time.sleep(0.05)
  port = server.servers[0].sockets[0].getsockname()[1]
  try:
    paths = labelled.find_images(captcha_dir)[0][:3]
    for path in paths:
      request = urllib.request.Request(
        f'http://127.0.0.1:{port}/read', data=path.read_bytes(), method='POST'
      )
      with urllib.request.urlopen(request, timeout=60) as response:
        answer = json.loads(response.read())
      [expected] = reader.predict([path])
      assert answer['text'] == expected.text
      assert answer['confidence'] == pytest.approx(expected.confidence, rel=1e-5)
    bad = urllib.request.Request(
      f'http://127.0.0.1:{port}/read', data=b'not an image', method='POST'
    )
    with pytest.raises(urllib.error.HTTPError) as refused:
      urllib.request.urlopen(bad, timeout=60)
    assert refused.value.code == 400 and 'not a readable image' in refused.value.read().decode()
  finally:
    server.should_exit = True
    thread.join(timeout=30)
