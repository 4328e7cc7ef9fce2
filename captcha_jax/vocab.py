"""The alphabet as CTC class ids: id 0 is the blank, characters are 1..N."""

from collections.abc import Iterable

BLANK_ID = 0


class Vocab:
  """Maps characters to class ids and back, with the CTC blank at id 0."""

  def __init__(self, alphabet: str):
    if not alphabet:
      raise ValueError('The alphabet is empty: set config.alphabet to the characters to read.')
    repeated = sorted({c for c in alphabet if alphabet.count(c) > 1})
    if repeated:
      raise ValueError(f'The alphabet repeats {"".join(repeated)!r}: list each character once.')
    self.alphabet = alphabet
    self._ids = {c: i + 1 for i, c in enumerate(alphabet)}

  @property
  def num_classes(self) -> int:
    """Characters plus the blank: the width of the model's output."""
    return len(self.alphabet) + 1

  def unknown_chars(self, text: str) -> str:
    """The characters of `text` that are not in the alphabet, in order, once each."""
    return ''.join(dict.fromkeys(c for c in text if c not in self._ids))

  def encode(self, text: str) -> list[int]:
    """Class ids of `text`; raises ValueError naming any character outside the alphabet."""
    unknown = self.unknown_chars(text)
    if unknown:
      raise ValueError(
        f'{text!r} has characters outside the alphabet {self.alphabet!r}: {unknown!r}'
      )
    return [self._ids[c] for c in text]

  def decode(self, ids: Iterable[int]) -> str:
    """Text of class ids; blanks are skipped."""
    return ''.join(self.alphabet[i - 1] for i in ids if i != BLANK_ID)
