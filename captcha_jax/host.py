"""Opt-in CPU tuning for the commands (`--cpu_tuning`); nothing here runs unless asked.

The figures are in the README's "CPU tuning" section and bench/README.md.
- One JAX device per core: the data-parallel mesh runs the halves of each batch side by side,
  and `Predictor` splits large batches likewise. It changes only the CPU backend, so it is
  harmless where a GPU or TPU does the work.
- Freed memory back after compiling (`malloc_trim`, glibc only): XLA's compiler frees a few
  hundred MB that glibc would otherwise keep under the training state.
- Huge pages for XLA:CPU's per-step scratch buffer, which is otherwise faulted in 4 KiB at a time
  every step, come from glibc's `hugetlb` tunable. It is read when a process starts, so it is an
  environment variable the user sets, never set here: `GLIBC_TUNABLES=glibc.malloc.hugetlb=1`.
"""

import ctypes
import logging
import os
import platform
import sys

HUGE_PAGES = 'glibc.malloc.hugetlb=1'


def available_cores() -> int:
  """The cores this process may run on (its CPU affinity, which a container's cpuset narrows),
  not the machine's: `os.cpu_count()` counts a 64-core host's in a 2-core container."""
  if hasattr(os, 'sched_getaffinity'):
    return len(os.sched_getaffinity(0))
  return os.cpu_count() or 1


def use_cpu_cores(*batch_sizes: int) -> int | None:
  """Makes JAX's CPU backend one device per core this process may run on; returns that count.

  Call before JAX starts its backends. The count is capped to divide every batch size (the mesh
  splits batches evenly), and left as it is (None) when set already (XLA_FLAGS' device count, or
  `jax_num_cpu_devices`).
  """
  import jax  # here, not above: `available_cores` serves readers that never import JAX

  if (
    'xla_force_host_platform_device_count' in os.environ.get('XLA_FLAGS', '')
    or jax.config.jax_num_cpu_devices != -1
  ):
    return None
  count = max(n for n in range(1, available_cores() + 1) if all(b % n == 0 for b in batch_sizes))
  jax.config.update('jax_num_cpu_devices', count)
  return count


def release_free_memory() -> None:
  """Gives memory that glibc's malloc holds as free back to the system (`malloc_trim`).

  A no-op where the C library is not glibc (musl, macOS, Windows).
  """
  if platform.libc_ver()[0] != 'glibc':
    return
  ctypes.CDLL(None).malloc_trim(0)


def huge_pages_hint() -> str | None:
  """A line suggesting the huge-pages tunable, when JAX computes on this CPU under glibc ≥ 2.35
  without it; None otherwise."""
  import jax

  name, version = platform.libc_ver()
  if (
    not sys.platform.startswith('linux')
    or name != 'glibc'
    or tuple(int(v) for v in version.split('.')[:2]) < (2, 35)
    or 'glibc.malloc.hugetlb' in os.environ.get('GLIBC_TUNABLES', '')
    or jax.default_backend() != 'cpu'
  ):
    return None
  return f'On a CPU, GLIBC_TUNABLES={HUGE_PAGES} before the command makes each step faster.'


def tune_cpu(*batch_sizes: int) -> None:
  """The tuning the commands apply with --cpu_tuning, before JAX starts its backends."""
  count = use_cpu_cores(*batch_sizes)
  if count:
    logging.info('CPU tuning: %d JAX CPU devices.', count)
