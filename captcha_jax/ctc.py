"""CTC: the loss, greedy decoding, and length-constrained decoding as post-processing."""

import jax
import jax.numpy as jnp
import numpy as np
import optax

from captcha_jax.vocab import BLANK_ID, Vocab


def ctc_loss(logits: jax.Array, labels: jax.Array, label_paddings: jax.Array) -> jax.Array:
  """Per-example CTC negative log-likelihood, [batch] float32.

  logits: [batch, time, classes] raw scores (blank = class 0); every time step is real.
  labels: [batch, max_len] int32, right-padded; label_paddings: [batch, max_len], 1.0 = padding.
  An alignment that cannot exist (see `required_steps`) gives a finite loss near 1e5, not inf.
  """
  logit_paddings = jnp.zeros(logits.shape[:2], jnp.float32)
  return optax.ctc_loss(logits, logit_paddings, labels, label_paddings, blank_id=BLANK_ID)


def required_steps(ids) -> int:
  """Fewest CTC steps that can emit `ids`: one per symbol plus a blank between each repeat."""
  ids = list(ids)
  return len(ids) + sum(a == b for a, b in zip(ids, ids[1:], strict=False))


def greedy_decode(log_probs: np.ndarray) -> tuple[list[list[int]], np.ndarray]:
  """Best-path decoding: argmax per step, repeats collapsed, blanks dropped.

  log_probs: [batch, time, classes]. Returns the class ids of each example and its confidence,
  the probability of that best path (product of the per-step maxima), [batch] float.
  """
  best = log_probs.argmax(-1)
  sequences = []
  for path in best:
    keep = np.ones(len(path), bool)
    keep[1:] = path[1:] != path[:-1]
    sequences.append([int(c) for c in path[keep] if c != BLANK_ID])
  confidence = np.exp(log_probs.max(-1).sum(-1))
  return sequences, confidence


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


def decode_texts(log_probs: np.ndarray, vocab: Vocab, label_length: int):
  """Greedy texts, their confidences, and texts post-processed to `label_length` (if > 0)."""
  sequences, confidence = greedy_decode(log_probs)
  raw = [vocab.decode(s) for s in sequences]
  if label_length <= 0:
    return raw, confidence, raw
  fixed = []
  for text, lp in zip(raw, log_probs, strict=True):
    ids = decode_with_length(lp, label_length) if len(text) != label_length else None
    fixed.append(vocab.decode(ids) if ids is not None else text)
  return raw, confidence, fixed
