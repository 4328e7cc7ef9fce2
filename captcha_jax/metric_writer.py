"""One writer for a run's numbers: each row goes to the console, metrics.jsonl and TensorBoard
alike, so no metric reaches one of them and not the others."""

import json
import logging
import numbers
from pathlib import Path

from captcha_jax import workdir as run_folder


def _format(key: str, value) -> str:
  if isinstance(value, bool) or not isinstance(value, numbers.Real):
    return f'{key} {value}'
  if isinstance(value, numbers.Integral):
    return f'{key} {value}'
  return f'{key} {value:.4g}'


class MetricWriter:
  """Rows of metrics, one per epoch, keyed by 'step'.

  On resume it keeps the rows of WORKDIR/metrics.jsonl up to `resumed_step` (rows written after
  the restored checkpoint are dropped: those epochs run again). A line cut off by a crash is
  skipped with a warning. Only the process that writes files (`enabled`) prints and writes.
  """

  def __init__(self, workdir: Path, *, resumed_step: int, enabled: bool = True):
    self.path = Path(workdir) / 'metrics.jsonl'
    self.enabled = enabled
    self.rows = [r for r in self._read() if r.get('step', 0) <= resumed_step]
    self._tensorboard = None
    if enabled:
      from tensorboardX import SummaryWriter

      # The steps past the resumed one run again: TensorBoard drops their earlier points too.
      self._tensorboard = SummaryWriter(
        str(Path(workdir) / 'tensorboard'), purge_step=resumed_step + 1
      )

  def _read(self) -> list[dict]:
    if not self.path.exists():
      return []
    rows = []
    for number, line in enumerate(self.path.read_text().splitlines(), 1):
      try:
        rows.append(json.loads(line))
      except ValueError:
        logging.warning('%s, line %d is damaged; dropped.', self.path, number)
    return rows

  def write(self, row: dict) -> None:
    """Prints `row`, appends it to metrics.jsonl, and logs each number to TensorBoard."""
    self.rows.append(row)
    if not self.enabled:
      return
    print('  '.join(_format(k, v) for k, v in row.items()), flush=True)
    lines = ''.join(json.dumps(run_folder.json_safe(r)) + '\n' for r in self.rows)
    run_folder.write_atomic(self.path, lines)
    for key, value in row.items():
      if key != 'step' and isinstance(value, numbers.Real) and not isinstance(value, bool):
        self._tensorboard.add_scalar(key, value, row['step'])
    self._tensorboard.flush()

  def close(self) -> None:
    if self._tensorboard is not None:
      self._tensorboard.close()
