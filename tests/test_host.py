"""The opt-in CPU tuning (captcha_jax.host): devices per core, and the huge-pages tunable the
README documents for XLA:CPU's per-step scratch memory."""

import os
import subprocess
import sys

import pytest

from captcha_jax import cli, host
from tests.conftest import FAST_COMPILE, ROOT

# A jitted function with a 64 MB intermediate (the sort's output), run 4 times after warm-up;
# prints GLIBC_TUNABLES and the minor page faults per call.
SCRIPT = """
import os, resource, sys
import jax, jax.numpy as jnp
x = jnp.ones((64, 512, 512))
f = jax.jit(lambda x: jnp.sort(jnp.sin(x), axis=1).sum(axis=(1, 2)))
for _ in range(2):
  f(x).block_until_ready()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(4):
  f(x).block_until_ready()
print('tunables=' + os.environ.get('GLIBC_TUNABLES', ''))
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 4)
"""


def run_script(env: dict[str, str]) -> tuple[str, float]:
  out = subprocess.run(
    [sys.executable, '-c', SCRIPT], capture_output=True, text=True, cwd=ROOT, env=env
  )
  assert out.returncode == 0, out.stderr[-2000:]
  tunables, faults = out.stdout.strip().splitlines()[-2:]
  return tunables.removeprefix('tunables='), float(faults)


def huge_pages_on_request() -> bool:
  try:
    return '[madvise]' in open('/sys/kernel/mm/transparent_hugepage/enabled').read()
  except OSError:
    return False


@pytest.mark.skipif(not huge_pages_on_request(), reason='needs transparent huge pages on madvise')
def test_the_documented_tunable_stops_per_call_page_faults(monkeypatch):
  monkeypatch.delenv('GLIBC_TUNABLES', raising=False)
  # The sort compiled as a user's would be: unoptimised, it computes for seconds a call.
  env = dict(os.environ, XLA_FLAGS=os.environ['XLA_FLAGS'].replace(FAST_COMPILE, '').strip())
  tunables, fresh = run_script(env)
  assert tunables == ''
  # Without huge pages each call faults in the whole 64 MB again (16,384 pages of 4 KiB).
  assert fresh > 12_000
  tunables, huge = run_script(dict(env, GLIBC_TUNABLES=host.HUGE_PAGES))
  assert tunables == host.HUGE_PAGES
  assert huge < 0.1 * fresh


def test_the_hint_names_the_tunable_only_where_it_is_missing(monkeypatch):
  monkeypatch.delenv('GLIBC_TUNABLES', raising=False)
  hint = host.huge_pages_hint()
  if hint is not None:  # glibc ≥ 2.35 on Linux, computing on the CPU
    assert f'GLIBC_TUNABLES={host.HUGE_PAGES}' in hint
  monkeypatch.setenv('GLIBC_TUNABLES', host.HUGE_PAGES)
  assert host.huge_pages_hint() is None


def device_count_after(batch_sizes: str, env: dict[str, str]) -> str:
  script = (
    'import jax\nfrom captcha_jax import host\n'
    f'print(host.use_cpu_cores({batch_sizes}), jax.device_count())'
  )
  out = subprocess.run(
    [sys.executable, '-c', script], capture_output=True, text=True, cwd=ROOT, env=env
  )
  assert out.returncode == 0, out.stderr[-2000:]
  return out.stdout.split()


def test_an_onnx_service_divides_the_cores_it_may_run_on_among_its_workers(monkeypatch):
  """In a container pinned to 4 of a host's 64 cores, 2 workers get 2 threads each, not 32."""
  monkeypatch.setattr(os, 'sched_getaffinity', lambda pid: {0, 1, 2, 3}, raising=False)
  monkeypatch.setattr(os, 'cpu_count', lambda: 64)
  given = {}
  monkeypatch.setattr(cli, 'load_reader', lambda *args, **kwargs: given.update(kwargs))
  cli.serving_reader(None, 'model.onnx', False, workers=2, max_batch=8)
  assert given == {'onnx_threads': 2, 'batch_size': 8}
  assert host.available_cores() == 4
  script = (
    'import sys\nfrom captcha_jax import cli\ncli.load_reader = lambda *args, **kwargs: None\n'
    "cli.serving_reader(None, 'model.onnx', False, 2, 8)\n"
    "print(sorted(m for m in sys.modules if m.split('.')[0] in ('jax', 'jaxlib')))"
  )
  out = subprocess.run([sys.executable, '-c', script], capture_output=True, text=True, cwd=ROOT)
  assert out.stdout.strip() == '[]', out.stderr[-2000:]  # an ONNX service never imports JAX


def test_use_cpu_cores_splits_the_cpu_into_devices_that_divide_the_batches(monkeypatch):
  monkeypatch.delenv('XLA_FLAGS', raising=False)
  env = dict(os.environ, JAX_PLATFORMS='cpu')
  cores = len(os.sched_getaffinity(0))
  expected = max(n for n in range(1, cores + 1) if 16 % n == 0 and 64 % n == 0)
  assert device_count_after('16, 64', env) == [str(expected)] * 2
  assert device_count_after('7', env) == (['1', '1'] if cores < 7 else ['7', '7'])
  # A count the user chose is kept.
  forced = dict(env, XLA_FLAGS='--xla_force_host_platform_device_count=3')
  assert device_count_after('16', forced) == ['None', '3']
