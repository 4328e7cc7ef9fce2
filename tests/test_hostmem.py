"""Huge pages for XLA:CPU's per-step scratch memory (captcha_jax.hostmem)."""

import os
import subprocess
import sys

import pytest

from captcha_jax import hostmem
from tests.conftest import ROOT

# A jitted function with a 64 MB intermediate (the sort's output), run 10 times after warm-up;
# prints GLIBC_TUNABLES and the minor page faults per call.
SCRIPT = """
import os, resource, sys
from captcha_jax import hostmem
if sys.argv[1] == 'restart':
  hostmem.restart_with_huge_pages()
import jax, jax.numpy as jnp
x = jnp.ones((64, 512, 512))
f = jax.jit(lambda x: jnp.sort(jnp.sin(x), axis=1).sum(axis=(1, 2)))
for _ in range(2):
  f(x).block_until_ready()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
  f(x).block_until_ready()
print('tunables=' + os.environ.get('GLIBC_TUNABLES', ''))
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 10)
"""


def run_script(mode: str, env: dict[str, str]) -> tuple[str, float]:
  out = subprocess.run(
    [sys.executable, '-c', SCRIPT, mode], capture_output=True, text=True, cwd=ROOT, env=env
  )
  assert out.returncode == 0, out.stderr[-2000:]
  tunables, faults = out.stdout.strip().splitlines()[-2:]
  return tunables.removeprefix('tunables='), float(faults)


def test_with_huge_pages_keeps_other_tunables():
  env = hostmem.with_huge_pages({'GLIBC_TUNABLES': 'glibc.malloc.arena_max=2', 'A': 'b'})
  assert env == {'GLIBC_TUNABLES': f'glibc.malloc.arena_max=2:{hostmem.HUGE_PAGES}', 'A': 'b'}
  assert hostmem.with_huge_pages({})['GLIBC_TUNABLES'] == hostmem.HUGE_PAGES
  set_by_user = {'GLIBC_TUNABLES': 'glibc.malloc.hugetlb=0'}
  assert hostmem.with_huge_pages(set_by_user) == set_by_user


@pytest.mark.skipif(not hostmem.huge_pages_would_help(), reason='needs glibc and THP on madvise')
def test_restart_stops_per_call_page_faults(monkeypatch):
  monkeypatch.delenv('GLIBC_TUNABLES', raising=False)
  env = dict(os.environ)
  tunables, fresh = run_script('plain', env)
  assert tunables == ''
  # Without huge pages each call faults in the whole 64 MB again (16,384 pages of 4 KiB).
  assert fresh > 12_000
  tunables, huge = run_script('restart', env)
  assert tunables == hostmem.HUGE_PAGES  # the process re-executed itself with the tunable
  assert huge < 0.1 * fresh
