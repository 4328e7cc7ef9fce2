"""CTC loss against a brute-force sum over alignments; decoding on hand-worked cases."""

import itertools

import jax
import numpy as np
import pytest

from captcha_jax import ctc, decoding
from captcha_jax.errors import ConfigError
from captcha_jax.vocab import Vocab


def collapse(path):
  out = [c for i, c in enumerate(path) if c != 0 and (i == 0 or path[i - 1] != c)]
  return tuple(out)


def brute_force_nll(logits, label):
  """−log Σ over every path of length T that collapses to `label` of Π softmax probabilities."""
  probs = np.exp(logits - logits.max(-1, keepdims=True))
  probs /= probs.sum(-1, keepdims=True)
  steps, classes = logits.shape
  total = sum(
    np.prod([probs[t, c] for t, c in enumerate(path)])
    for path in itertools.product(range(classes), repeat=steps)
    if collapse(path) == tuple(label)
  )
  return -np.log(total)


@pytest.mark.parametrize('label', [(1,), (1, 2), (2, 2), (1, 2, 1), ()])
def test_ctc_loss_matches_brute_force(label):
  rng = np.random.default_rng(len(label))
  logits = rng.normal(size=(2, 5, 3)).astype(np.float32)
  labels = np.zeros((2, 4), np.int32)
  labels[:, : len(label)] = label
  paddings = (np.arange(4) >= len(label)).astype(np.float32)[None].repeat(2, 0)
  got = np.asarray(ctc.ctc_loss(logits, labels, paddings))
  expected = [brute_force_nll(lg, label) for lg in logits]
  np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_ctc_loss_of_padded_batch_is_per_example():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(2, 6, 4)).astype(np.float32)
  labels = np.array([[1, 2, 3], [3, 0, 0]], np.int32)
  paddings = np.array([[0, 0, 0], [0, 1, 1]], np.float32)
  got = np.asarray(ctc.ctc_loss(logits, labels, paddings))
  np.testing.assert_allclose(got[0], brute_force_nll(logits[0], (1, 2, 3)), rtol=1e-5)
  np.testing.assert_allclose(got[1], brute_force_nll(logits[1], (3,)), rtol=1e-5)


def test_impossible_alignment_is_huge_not_inf():
  logits = np.zeros((1, 3, 3), np.float32)
  labels = np.array([[1, 1, 2]], np.int32)  # needs 4 steps: 1 blank 1 2
  loss = np.asarray(ctc.ctc_loss(logits, labels, np.zeros((1, 3), np.float32)))
  assert ctc.required_steps([1, 1, 2]) == 4
  assert np.isfinite(loss).all() and loss[0] > 1e4


def test_required_steps():
  assert ctc.required_steps([]) == 0
  assert ctc.required_steps([1, 2, 3]) == 3
  assert ctc.required_steps([1, 1, 1]) == 5
  assert ctc.required_steps([1, 2, 2, 3, 3]) == 7


def one_hot_log_probs(path, classes=4, p=0.9):
  lp = np.full((len(path), classes), np.log((1 - p) / (classes - 1)))
  lp[np.arange(len(path)), path] = np.log(p)
  return lp


def test_greedy_decode_hand_worked():
  paths = [[0, 1, 1, 0, 1, 2, 2], [3, 3, 3, 0, 0, 0, 0], [0] * 7, [1, 0, 1, 0, 1, 1, 2]]
  log_probs = np.stack([one_hot_log_probs(p) for p in paths])
  assert decoding.greedy_decode(log_probs) == [[1, 1, 2], [3], [], [1, 1, 1, 2]]


def test_decode_with_length_agrees_with_greedy_when_length_fits():
  lp = np.log(jax.nn.softmax(np.random.default_rng(0).normal(size=(12, 5)) * 3))
  [greedy] = decoding.greedy_decode(lp[None])
  assert decoding.decode_with_length(lp, len(greedy)) == greedy


def test_decode_with_length_restores_a_merged_repeat():
  # Greedy reads "1 1 1 1" as one symbol; the second-best step at t=2 is a blank.
  lp = one_hot_log_probs([1, 1, 1, 1])
  lp[2] = np.log([0.4, 0.58, 0.01, 0.01])
  assert decoding.greedy_decode(lp[None]) == [[1]]
  assert decoding.decode_with_length(lp, 2) == [1, 1]


def test_decode_with_length_drops_the_weakest_symbol():
  lp = one_hot_log_probs([1, 0, 2, 0, 3])
  lp[2] = np.log([0.45, 0.05, 0.45 + 0.04, 0.01])
  assert decoding.decode_with_length(lp, 2) == [1, 3]


def test_decode_with_length_brute_force():
  rng = np.random.default_rng(1)
  for _ in range(5):
    lp = np.log(jax.nn.softmax(rng.normal(size=(5, 3)) * 2))
    for length in range(4):
      candidates = [
        (sum(lp[t, c] for t, c in enumerate(path)), collapse(path))
        for path in itertools.product(range(3), repeat=5)
        if len(collapse(path)) == length
      ]
      best = max(candidates)[1] if candidates else None
      got = decoding.decode_with_length(lp, length)
      assert (tuple(got) if got is not None else None) == best


def test_text_probability_sums_every_path_that_reads_the_text():
  rng = np.random.default_rng(2)
  for _ in range(3):
    lp = np.log(jax.nn.softmax(rng.normal(size=(5, 3)) * 2))
    labels = [(), (1,), (2, 2), (1, 2), (2, 1, 2), (1, 1, 1)]
    expected = [np.exp(-brute_force_nll(lp, label)) for label in labels]
    # One batch of texts of every length: a shorter text's padded states change nothing.
    got = decoding.text_probability(np.stack([lp] * len(labels)), labels)
    np.testing.assert_allclose(got, expected, rtol=1e-6)
  # Each character's second step split between it and the blank: either way it reads 'abc', so
  # the text is near sure while no single path is (the best: 0.97⁶ · 0.5³ = 0.10).
  rows = []
  for c in (1, 2, 3):
    split = np.full(4, 0.01)
    split[[0, c]] = 0.5, 0.48
    rows += [one_hot_log_probs([c], p=0.97)[0], np.log(split), one_hot_log_probs([0], p=0.97)[0]]
  lp = np.stack(rows)
  [sure] = decoding.text_probability(lp[None], [[1, 2, 3]])
  np.testing.assert_allclose(sure, np.exp(-brute_force_nll(lp, [1, 2, 3])), rtol=1e-6)
  assert sure > 0.8


def test_a_corrected_reading_has_the_probability_of_its_own_text():
  vocab = Vocab('abc')
  lp = one_hot_log_probs([1, 1, 1, 1])
  lp[2] = np.log([0.4, 0.58, 0.01, 0.01])
  [fixed] = decoding.read(lp[None], vocab, fixed_label_length=2)
  assert (fixed.raw_text, fixed.text) == ('a', 'aa')
  np.testing.assert_allclose(fixed.confidence, np.exp(-brute_force_nll(lp, [1, 1])))


def test_decode_with_length_too_long_for_steps():
  assert decoding.decode_with_length(one_hot_log_probs([1, 1]), 3) is None


def test_restricted_reading_masks_classes_before_the_argmax():
  vocab = Vocab('abc')
  # Step 1 prefers 'c' (class 3) over 'b' (class 2): allowed='ab' must pick 'b', not drop it.
  lp = np.log(np.array([[[0.05, 0.8, 0.05, 0.1], [0.1, 0.05, 0.25, 0.6], [0.9, 0.04, 0.03, 0.03]]]))
  [free] = decoding.read(lp, vocab)
  [only_ab] = decoding.read(lp, vocab, allowed='ab')
  assert (free.text, only_ab.text) == ('ac', 'ab')
  # Its confidence is the probability of 'ab' with 'c' taken away and each step renormalised
  # (brute_force_nll's softmax renormalises).
  without_c = np.log(np.where([True, True, True, False], np.exp(lp[0]), 1e-30))
  np.testing.assert_allclose(only_ab.confidence, np.exp(-brute_force_nll(without_c, [1, 2])))
  with pytest.raises(ConfigError, match="'z' cannot be read"):
    decoding.read(lp, vocab, allowed='az')


def test_a_length_that_cannot_fit_is_refused_not_read_otherwise():
  vocab = Vocab('abc')
  lp = one_hot_log_probs([1, 0, 1])  # 'aa'
  with pytest.raises(ConfigError, match="A text of 3 characters of only 'a' needs 5 CTC steps"):
    decoding.read(lp[None], vocab, allowed='a', length=3)
  [reading] = decoding.read(lp[None], vocab, allowed='aaa', length=2)
  assert reading.text == 'aa'
  [reading] = decoding.read(lp[None], vocab, allowed='ab', length=3)
  assert reading.text == 'aba'
  with pytest.raises(ConfigError, match='A text of 4 characters needs 4 CTC steps'):
    decoding.read(lp[None], vocab, length=4)  # no text of 4 in 3 steps


def test_a_length_asked_for_wins_over_the_models():
  vocab = Vocab('abc')
  lp = one_hot_log_probs([1, 0, 2, 0, 3, 0])  # 'abc'
  [model] = decoding.read(lp[None], vocab, fixed_label_length=2)
  [asked] = decoding.read(lp[None], vocab, fixed_label_length=2, length=3)
  assert (len(model.text), asked.text) == (2, 'abc')


def test_fixed_length_correction_applies_only_to_other_lengths():
  vocab = Vocab('abc')
  lp = one_hot_log_probs([1, 1, 1, 1])
  lp[2] = np.log([0.4, 0.58, 0.01, 0.01])
  [fixed] = decoding.read(lp[None], vocab, fixed_label_length=2)
  [free] = decoding.read(lp[None], vocab, fixed_label_length=0)
  assert (fixed.raw_text, fixed.text, free.text) == ('a', 'aa', 'a')
