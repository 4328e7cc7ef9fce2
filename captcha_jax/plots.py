"""Pictures of a run: loss/accuracy curves and a grid of predictions (wrong ones in red)."""

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use('Agg')  # files only; no display on training machines
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def plot_history(history: Sequence[dict], path: str | Path) -> None:
  """Train and val loss (log scale) and val exact-match accuracy per epoch."""
  epochs = [r['epoch'] for r in history]
  fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(11, 4))
  ax_loss.plot(epochs, [r['train_loss'] for r in history], label='train')
  ax_loss.plot(epochs, [r['val_loss'] for r in history], label='val')
  ax_loss.set(xlabel='epoch', ylabel='CTC loss', yscale='log', title='Loss')
  ax_loss.legend()
  ax_acc.plot(epochs, [100 * r['val_accuracy'] for r in history], label='exact match')
  ax_acc.plot(epochs, [100 * (1 - r['val_cer']) for r in history], label='1 − CER')
  ax_acc.set(xlabel='epoch', ylabel='%', ylim=(0, 101), title='Validation')
  ax_acc.legend(loc='lower right')
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def plot_predictions(
  images: np.ndarray,
  predictions: Sequence[str],
  targets: Sequence[str],
  path: str | Path,
  max_images: int = 24,
) -> None:
  """A grid of images titled 'predicted (true)'; wrong readings in red, listed first."""
  order = sorted(range(len(targets)), key=lambda i: predictions[i] == targets[i])[:max_images]
  cols = 4
  rows = (len(order) + cols - 1) // cols
  fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 1.2 * rows), squeeze=False)
  for ax in axes.flat:
    ax.axis('off')
  for ax, i in zip(axes.flat, order, strict=False):
    right = predictions[i] == targets[i]
    ax.imshow(images[i])
    title = predictions[i] if right else f'{predictions[i] or "∅"} ({targets[i]})'
    ax.set_title(title, color='green' if right else 'red', fontsize=10)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)
