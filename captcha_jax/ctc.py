"""The CTC loss and what it needs of a label; decoding lives in `decoding.py` (NumPy only)."""

import jax
import jax.numpy as jnp
import optax

from captcha_jax.vocab import BLANK_ID


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
