"""Reading metrics: exact match and character error rate over predicted vs true texts."""

from collections.abc import Sequence


def edit_distance(a: str, b: str) -> int:
  """Levenshtein distance: fewest insertions, deletions and substitutions turning a into b."""
  previous = list(range(len(b) + 1))
  for i, ca in enumerate(a, 1):
    current = [i]
    for j, cb in enumerate(b, 1):
      current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ca != cb)))
    previous = current
  return previous[-1]


def exact_match(predictions: Sequence[str], targets: Sequence[str]) -> float:
  """Fraction of texts read exactly."""
  return sum(p == t for p, t in zip(predictions, targets, strict=True)) / max(len(targets), 1)


def character_error_rate(predictions: Sequence[str], targets: Sequence[str]) -> float:
  """Total edit distance over total target characters."""
  errors = sum(edit_distance(p, t) for p, t in zip(predictions, targets, strict=True))
  return errors / max(sum(len(t) for t in targets), 1)


def reading_metrics(
  raw: Sequence[str], post_processed: Sequence[str], targets: Sequence[str]
) -> dict[str, float]:
  """Exact match and CER of the raw (greedy) and the post-processed readings."""
  return {
    'accuracy': exact_match(raw, targets),
    'cer': character_error_rate(raw, targets),
    'accuracy_post': exact_match(post_processed, targets),
    'cer_post': character_error_rate(post_processed, targets),
  }
