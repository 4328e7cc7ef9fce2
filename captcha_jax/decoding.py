"""CTC log-probabilities → text: greedy decoding, length-constrained decoding, alphabet masks.

NumPy only: the Predictor, the exported readers and the ONNX reader all decode here.
"""

import dataclasses
from collections.abc import Sequence

import numpy as np

from captcha_jax.errors import ConfigError
from captcha_jax.vocab import BLANK_ID, Vocab


@dataclasses.dataclass(frozen=True)
class Reading:
  """What a reader makes of one image."""

  text: str  # `raw_text`, corrected to the fixed label length when the config has one
  raw_text: str  # greedy CTC decoding
  confidence: float  # probability of `text`, summed over every CTC path that reads it, 0..1


def check_allowed(allowed: str, alphabet: str) -> None:
  """Raises ConfigError naming the characters of `allowed` that a model of `alphabet` never
  reads: restricted to them it could not read any text right."""
  unknown = ''.join(c for c in dict.fromkeys(allowed) if c not in alphabet)
  if unknown:
    raise ConfigError(
      f'Allowed characters {allowed!r}: {unknown!r} cannot be read, the model knows only '
      f'{alphabet!r}.'
    )


def restrict(log_probs: np.ndarray, vocab: Vocab, allowed: str) -> np.ndarray:
  """log_probs [..., classes] with every character outside `allowed` (and never the blank)
  masked out before any argmax, renormalised over what is left."""
  check_allowed(allowed, vocab.alphabet)
  keep = np.zeros(log_probs.shape[-1], bool)
  keep[BLANK_ID] = True
  keep[vocab.encode(''.join(dict.fromkeys(allowed)))] = True
  masked = np.where(keep, log_probs, -np.inf)
  top = masked.max(-1, keepdims=True)
  return masked - top - np.log(np.exp(masked - top).sum(-1, keepdims=True))


def greedy_decode(log_probs: np.ndarray) -> list[list[int]]:
  """Best-path decoding of log_probs [batch, time, classes]: argmax per step, repeats
  collapsed, blanks dropped; the class ids of each example."""
  best = log_probs.argmax(-1)
  keep = np.ones(best.shape, bool)
  keep[:, 1:] = best[:, 1:] != best[:, :-1]
  keep &= best != BLANK_ID
  return [[int(c) for c in path[k]] for path, k in zip(best, keep, strict=True)]


def text_probability(log_probs: np.ndarray, texts: Sequence[Sequence[int]]) -> np.ndarray:
  """P(text | image) of each example, [batch]: the CTC forward sum over every path of log_probs
  [batch, time, classes] that collapses to its text (class ids). The best path alone undercounts
  it: every step's small doubt multiplies in, however sure the text (0.99 a step over 25 steps:
  0.78). One pass over the steps for the whole batch."""
  batch, steps, _ = log_probs.shape
  ends = np.array([2 * len(ids) for ids in texts])  # each text's last blank state
  states = np.full((batch, ends.max(initial=0) + 1), BLANK_ID)  # blank, id, blank, ..., blank
  for row, ids in zip(states, texts, strict=True):
    row[1 : 2 * len(ids) : 2] = ids  # past a shorter text's end: blanks the result never reads
  # A path may skip the blank between two different characters, never between a repeat.
  skips = np.zeros(states.shape, bool)
  skips[:, 2:] = (states[:, 2:] != BLANK_ID) & (states[:, 2:] != states[:, :-2])
  emit = np.take_along_axis(
    log_probs, np.broadcast_to(states[:, None], (batch, steps, states.shape[1])), 2
  )
  alpha = np.full(states.shape, -np.inf)
  alpha[:, :2] = emit[:, 0, :2]
  start = np.full((batch, 2), -np.inf)
  for t in range(1, steps):
    before = np.concatenate([start, alpha], 1)  # before[:, i + 2] is alpha[:, i]
    from_skip = np.where(skips, before[:, :-2], -np.inf)
    alpha = np.logaddexp(np.logaddexp(alpha, before[:, 1:-1]), from_skip) + emit[:, t]
  rows = np.arange(batch)
  last_char = np.where(ends > 0, alpha[rows, np.maximum(ends - 1, 0)], -np.inf)
  return np.exp(np.logaddexp(alpha[rows, ends], last_char))


def decode_with_length(log_probs: np.ndarray, length: int) -> list[int] | None:
  """The most probable single path whose collapsed text has exactly `length` symbols.

  A Viterbi search over (symbols emitted so far, symbol at this step) for one example's
  log_probs [time, classes]. When greedy decoding already gives `length` symbols this returns
  the same; otherwise it is the best correction (a dropped repeat restored, a spurious symbol
  removed). None when `time` is too short for any such path.
  """
  steps, classes = log_probs.shape
  neg = -np.inf
  chars = np.arange(classes) != BLANK_ID
  score = np.full((length + 1, classes), neg)
  score[0, BLANK_ID] = log_probs[0, BLANK_ID]
  if length > 0:
    score[1, chars] = log_probs[0, chars]
  # (back_k[t, k, s], back_s[t, k, s]): the best predecessor of state (k, s) at step t.
  back_k = np.zeros((steps, length + 1, classes), np.int64)
  back_s = np.zeros((steps, length + 1, classes), np.int64)
  counts = np.arange(length + 1)[:, None]
  for t in range(1, steps):
    new = np.full_like(score, neg)
    # A blank follows any symbol and keeps the count.
    stay = score.argmax(1)
    new[:, BLANK_ID] = score[counts[:, 0], stay] + log_probs[t, BLANK_ID]
    back_k[t, :, BLANK_ID] = counts[:, 0]
    back_s[t, :, BLANK_ID] = stay
    if length > 0:
      # A symbol continues itself (same count) or is new after any other symbol (count + 1).
      prev = score[:-1]
      order = np.argsort(prev, axis=1)
      first, second = order[:, -1:], order[:, -2:-1]
      new_from = np.where(first == np.arange(classes), second, first)
      new_score = np.take_along_axis(prev, new_from, 1)
      take_new = new_score > score[1:]
      best = np.where(take_new, new_score, score[1:]) + log_probs[t]
      new[1:, chars] = best[:, chars]
      back_k[t, 1:, chars] = np.where(take_new, counts[1:] - 1, counts[1:])[:, chars].T
      back_s[t, 1:, chars] = np.where(take_new, new_from, np.arange(classes))[:, chars].T
    score = new
  s = int(score[length].argmax())
  if not np.isfinite(score[length, s]):
    return None
  path, k = [s], length
  for t in range(steps - 1, 0, -1):
    k, s = back_k[t, k, s], back_s[t, k, s]
    path.append(int(s))
  path.reverse()
  return [c for i, c in enumerate(path) if c != BLANK_ID and (i == 0 or path[i - 1] != c)]


def read(
  log_probs: np.ndarray,
  vocab: Vocab,
  fixed_label_length: int = 0,
  allowed: str = '',
  length: int = 0,
) -> list[Reading]:
  """Readings of log_probs [batch, time, classes].

  `length` > 0 (asked for when reading), else the model's `fixed_label_length` > 0, corrects
  readings of another length to it (`decode_with_length`); `allowed`, when given, restricts the
  readings to those characters (`restrict`).
  """
  target = length or fixed_label_length
  if target < 0:
    raise ValueError(f'A text length must be 0 (any) or more, got {target}.')
  # The fewest steps a text of `target` takes: one a character, and a blank between repeats,
  # which are all there is with one character allowed.
  chars = set(allowed or vocab.alphabet)
  needed = 2 * target - 1 if len(chars) == 1 else target
  if needed > log_probs.shape[-2]:  # not a length any reading could be corrected to
    only = f' of only {min(chars)!r}' if needed > target else ''
    raise ConfigError(
      f'A text of {target} characters{only} needs {needed} CTC steps or more; this model reads '
      f'{log_probs.shape[-2]} from an image.'
    )
  if allowed:
    log_probs = restrict(log_probs, vocab, allowed)
  raw = greedy_decode(log_probs)
  final = [
    decode_with_length(lp, target) if 0 < target != len(ids) else ids
    for ids, lp in zip(raw, log_probs, strict=True)
  ]
  confidence = text_probability(log_probs, final)
  return [
    Reading(vocab.decode(ids), vocab.decode(r), float(c))
    for ids, r, c in zip(final, raw, confidence, strict=True)
  ]


def texts(readings: Sequence[Reading]) -> tuple[list[str], list[str]]:
  """(raw texts, corrected texts) of `readings`, as the metrics take them."""
  return [r.raw_text for r in readings], [r.text for r in readings]
