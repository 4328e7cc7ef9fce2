"""Pictures of a run: loss/accuracy curves and a grid of predictions (wrong ones in red).

Drawn on `matplotlib.figure.Figure` objects, never through pyplot's global state, so importing
this module changes nothing in a notebook's own plotting.
"""

from collections.abc import Sequence
from pathlib import Path

from matplotlib.figure import Figure


def history_figure(history: Sequence[dict]) -> Figure:
  """Train and val loss (log scale) and val exact-match accuracy per epoch."""
  epochs = [r['epoch'] for r in history]
  fig = Figure(figsize=(11, 4))
  ax_loss, ax_acc = fig.subplots(1, 2)
  ax_loss.plot(epochs, [r['train_loss'] for r in history], label='train')
  ax_loss.plot(epochs, [r['val_loss'] for r in history], label='val')
  ax_loss.set(xlabel='epoch', ylabel='CTC loss', yscale='log', title='Loss')
  ax_loss.legend()
  ax_acc.plot(epochs, [100 * r['val_accuracy'] for r in history], label='exact match')
  ax_acc.plot(epochs, [100 * (1 - r['val_cer']) for r in history], label='1 − CER')
  ax_acc.set(xlabel='epoch', ylabel='%', ylim=(0, 101), title='Validation')
  ax_acc.legend(loc='lower right')
  fig.tight_layout()
  return fig


def predictions_figure(
  source, predictions: Sequence[str], targets: Sequence[str], max_images: int = 24
) -> Figure:
  """A grid of `source`'s images (anything with `example(i)` → (image, text)) titled
  'predicted (true)'; wrong readings in red, listed first."""
  order = sorted(range(len(targets)), key=lambda i: predictions[i] == targets[i])[:max_images]
  cols = 4
  rows = max(1, (len(order) + cols - 1) // cols)
  fig = Figure(figsize=(3.2 * cols, 1.2 * rows))
  axes = fig.subplots(rows, cols, squeeze=False)
  for ax in axes.flat:
    ax.axis('off')
  for ax, i in zip(axes.flat, order, strict=False):
    right = predictions[i] == targets[i]
    ax.imshow(source.example(i)[0])
    title = predictions[i] if right else f'{predictions[i] or "∅"} ({targets[i]})'
    ax.set_title(title, color='green' if right else 'red', fontsize=10)
  fig.tight_layout()
  return fig


def save(fig: Figure, path: str | Path) -> None:
  """Writes `fig` as a PNG (to a temporary name first, so a crash leaves no half picture)."""
  path = Path(path)
  temporary = path.with_name(f'.{path.name}.tmp')
  fig.savefig(temporary, dpi=100, format='png')
  temporary.replace(path)
