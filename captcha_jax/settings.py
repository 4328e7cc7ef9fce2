"""A run's settings: the whole config checked before any work, and the rules that fill its
automatic values ('auto' alphabet, lengths, width) from the data."""

import collections
import contextlib
import math
import re
import statistics
import sys
from collections.abc import Callable, Iterator, Sequence
from numbers import Real
from pathlib import Path

import ml_collections

from captcha_jax.errors import ConfigError

AUTO = 'auto'  # config.alphabet: the characters of the training split's labels
AUTO_LENGTH = -1  # config.fixed_label_length: the common length when every label has one
AUTO_PRIOR = -1  # config.blank_prior: 1 - (mean label length) / (CTC steps)
# config.label_pattern 'auto' (`text_pattern`): names TEXT_TAG or INDEX_TEXT, else TEXT-TAG.
SEPARATOR = '_'
BEFORE_FIRST = '^([^_]+)'
AFTER_LAST = '([^_]+)$'
BEFORE_DASH = '^([^-]+)'
CHOICES = {
  'case': ('keep', 'lower', 'upper'),
  'data_source': ('folder', 'tfds', 'synthetic'),
  'nan_policy': ('skip', 'stop'),
  'model.dtype': ('float32', 'bfloat16', 'float16'),
}
WHOLE_POSITIVE = (
  'batch_size',
  'eval_batch_size',
  'num_epochs',
  'keep_checkpoints',
  'data_min_images',
  'model.base_width',
  'model.projection_size',
  'model.rnn_hidden_size',
  'model.rnn_layers',
  'prefetch_batches',
)
# Narrower images would leave the trunk no width to read; any captcha is far wider.
MIN_SIDE = 16


@contextlib.contextmanager
def config_file_imports(path: str | None) -> Iterator[None]:
  """While the config file at `path` loads, the folder above its own leads the import path.

  Config files build on their siblings as the package `configs` (`from configs import default`),
  so one loads from any working directory, not only from the repository's root.
  """
  if path is None:
    yield
    return
  root = str(Path(path).resolve().parent.parent)
  sys.path.insert(0, root)
  try:
    yield
  finally:
    sys.path.remove(root)


def _int(value) -> bool:
  return isinstance(value, int) and not isinstance(value, bool)


def _number(value) -> bool:
  return isinstance(value, Real) and not isinstance(value, bool) and math.isfinite(value)


def field_problem(name: str, value) -> str | None:
  """What is wrong with config.<name> = value, or None."""
  if name in WHOLE_POSITIVE:
    return None if _int(value) and value > 0 else 'must be a whole number > 0'
  if name in (
    'seed',
    'split_seed',
    'max_label_length',
    'image_width',
    'input_workers',
    'input_processes',
  ):
    return None if _int(value) and value >= 0 else 'must be a whole number ≥ 0'
  if name == 'image_height':
    return None if _int(value) and value >= MIN_SIDE else f'must be a whole number ≥ {MIN_SIDE}'
  if name == 'fixed_label_length':
    ok = _int(value) and value >= AUTO_LENGTH
    return None if ok else f'must be a whole number ≥ 0, or {AUTO_LENGTH} (read from the data)'
  if name in ('learning_rate', 'grad_clip_norm'):
    return None if _number(value) and value > 0 else 'must be a finite number > 0'
  if name == 'augment.max_scale':  # scales range over 1 ± it: 1 or more would flip the image
    return None if _number(value) and 0 <= value < 1 else 'must be a number in [0, 1)'
  if name in ('weight_decay', 'warmup_epochs', 'augment.ramp_epochs') or name.startswith(
    'augment.max_'
  ):
    return None if _number(value) and value >= 0 else 'must be a finite number ≥ 0'
  if name == 'blank_prior':
    ok = _number(value) and (value == AUTO_PRIOR or 0 <= value < 1)
    return None if ok else f'must be a number in [0, 1), or {AUTO_PRIOR} (from the data)'
  if name == 'pseudo_min_confidence':
    return None if _number(value) and 0 <= value <= 1 else 'must be a number in [0, 1]'
  if name in ('ema_decay', 'model.dropout'):
    return None if _number(value) and 0 <= value < 1 else 'must be a number in [0, 1)'
  if name in CHOICES:
    allowed = CHOICES[name]
    return None if value in allowed else f'must be one of {", ".join(map(repr, allowed))}'
  if name == 'label_pattern':
    return _pattern_problem(value)
  if name == 'alphabet':
    if not isinstance(value, str) or not value:
      return f'must be the characters to read, or {AUTO!r}'
    repeated = sorted({c for c in value if value.count(c) > 1})
    return f'repeats {"".join(repeated)!r}' if value != AUTO and repeated else None
  if name == 'split':
    ok = (
      isinstance(value, Sequence)
      and len(value) == 3
      and all(_number(f) and f > 0 for f in value)
      and math.isclose(sum(value), 1)
    )
    return None if ok else 'must be three fractions > 0 (train, val, test) summing to 1'
  if name == 'model.backbone_layers':
    return None if _int(value) and 1 <= value <= 4 else 'must be 1, 2, 3 or 4'
  if name == 'model.backbone_strides':
    ok = isinstance(value, Sequence) and all(
      isinstance(s, Sequence) and len(s) == 2 and all(_int(x) and x > 0 for x in s) for s in value
    )
    return None if ok else 'must be (height, width) stride pairs of whole numbers > 0'
  return None


def validate(config: ml_collections.ConfigDict) -> None:
  """Raises ConfigError naming every bad field of `config` at once; before any work."""
  problems = []
  flat = _flatten(config)
  for name, value in flat.items():
    problem = field_problem(name, value)
    if problem:
      problems.append(f'config.{name} = {value!r}: {problem}')
  layers, strides = flat.get('model.backbone_layers'), flat.get('model.backbone_strides')
  if _int(layers) and isinstance(strides, Sequence) and len(strides) < layers:
    problems.append(f'config.model.backbone_strides: needs one pair for each of {layers} layers')
  fixed, longest = flat.get('fixed_label_length'), flat.get('max_label_length')
  if _int(fixed) and _int(longest) and longest > 0 and fixed > longest:
    problems.append(f'config.fixed_label_length = {fixed} exceeds max_label_length = {longest}')
  width = flat.get('image_width')
  if _int(width) and 0 < width < MIN_SIDE:
    problems.append(f'config.image_width = {width}: must be 0 (from the data) or ≥ {MIN_SIDE}')
  if flat.get('init_from') and flat.get('pretrained'):
    problems.append(
      'config.init_from and config.pretrained: give one (init_from starts the whole model from a '
      'reader; pretrained, only its trunk from ImageNet weights, and would overwrite the first)'
    )
  if flat.get('pseudo_labels') and flat.get('data_source') != 'folder':
    problems.append("config.pseudo_labels: only with config.data_source = 'folder'")
  if problems:
    raise ConfigError('Bad settings:\n  ' + '\n  '.join(problems))


def _flatten(config: ml_collections.ConfigDict, prefix: str = '') -> dict:
  flat = {}
  for key, value in config.items():
    if isinstance(value, ml_collections.ConfigDict):
      flat.update(_flatten(value, f'{prefix}{key}.'))
    else:
      flat[f'{prefix}{key}'] = value
  return flat


def common_length(texts: Sequence[str]) -> int:
  """The length every text has, or 0 when lengths vary."""
  lengths = {len(t) for t in texts}
  return lengths.pop() if len(lengths) == 1 else 0


def case_warning(texts: Sequence[str]) -> str:
  """For config.case = 'keep': a warning when the labels look typed in either case for a site
  that ignores case (each label in one case, both cases among them, and fewer labels mixing the
  two than hold the rarer case), else ''. A mixed-case site's labels mostly mix the cases."""
  upper = [t for t in texts if t == t.upper() != t.lower()]
  lower = [t for t in texts if t == t.lower() != t.upper()]
  mixed = sum(t.lower() != t != t.upper() for t in texts)
  if not upper or not lower or mixed >= min(len(upper), len(lower)):
    return ''
  return (
    f'{len(upper)} labels are upper-case (like {upper[0]!r}) and {len(lower)} lower-case (like '
    f'{lower[0]!r}), and {mixed} mix the two: if the site ignores case, set '
    "config.case='upper' or 'lower' so each letter is one character to learn, not two."
  )


def _pattern_problem(value) -> str | None:
  if value == AUTO:
    return None
  if not isinstance(value, str):
    return f"must be a regular expression, '' (the whole name) or {AUTO!r}"
  try:
    groups = re.compile(value).groups
  except re.error as e:
    return f'is not a regular expression ({e})'
  return 'must have at most one group: the text' if groups > 1 else None


def text_pattern(stems: Sequence[str]) -> tuple[str, str]:
  """config.label_pattern 'auto' for a folder whose file names (without extension) are `stems`:
  (the pattern, why) — '' where the whole name is the text.

  Sites' captchas saved in bulk are often named TEXT_TAG (a counter, a timestamp, a hash: two
  images of one text need two names) or INDEX_TEXT. The text is the part before the first '_'
  where every part after it is such a tag or one fixed word, else the part after the last '_'
  where most names have one and every part before it is a tag or one fixed word (a name with no
  '_' is read whole either way). Where both read
  the names, tags that repeat are counters after the text, and numbers that count up are an
  index before it; else (1234_5678, 1236_9012) ConfigError: only the user knows which is the
  text. Where '_' says neither, TEXT-TAG too, every name with a '-' and a long tag after it (a
  timestamp, a hash, a UUID): a text may hold a '-' itself (`7-3`, `AB-12`).
  """
  if found := _joined_by_underscore(stems):
    return found
  dashed = [stem.split('-', 1) for stem in stems]
  if dashed and all(len(parts) == 2 and _is_long_tag(parts[1]) for parts in dashed):
    return BEFORE_DASH, f"names like {stems[0]!r}: the text is the part before the first '-'"
  return '', ''


def _joined_by_underscore(stems: Sequence[str]) -> tuple[str, str] | None:
  """`text_pattern` for names joined by '_'; None where it reads the whole name."""
  split = [stem.split(SEPARATOR, 1) for stem in stems if SEPARATOR in stem]
  if not split:
    return None
  tails = [tail for _, tail in split]
  heads = [stem.rsplit(SEPARATOR, 1)[0] for stem in stems if SEPARATOR in stem]
  before = all(map(_is_tag, tails)) or _one_word(tails)
  # Most names: a stray file among them (`sample.png`) is read whole, as by BEFORE_FIRST.
  after = len(split) > len(stems) / 2 and (all(map(_is_tag, heads)) or _one_word(heads))
  if before and after and len(set(tails)) < len(tails) / 2:  # tags repeat: copies' counters
    after = False
  if before and after and len(split) < len(stems):  # `3456` beside `1234_1`: a first copy
    after = False
  if before and after and counting(heads):  # 1, 2, 3, ...: an index
    before = False
  example = repr(SEPARATOR.join(split[0]))
  where = f'names like {example}: the text is the part'
  if before and after:
    raise ConfigError(
      f'The file names are two parts joined by {SEPARATOR!r}, like {example}, and either could '
      f"be the text: set config.label_pattern (evaluate: --label_pattern) to '{BEFORE_FIRST}' "
      f"(the part before the first {SEPARATOR!r}) or '{AFTER_LAST}' (after the last), or '' (the "
      'whole name).'
    )
  if before:
    return BEFORE_FIRST, f'{where} before the first {SEPARATOR!r}'
  if after:
    return AFTER_LAST, f'{where} after the last {SEPARATOR!r}'
  return None


def _is_tag(part: str) -> bool:
  """A counter, a date or time (1700000000.123456, 2024-01-05T12-30-00), or a hash (hex, a UUID):
  what names carry beside a text."""
  return re.fullmatch(r'[0-9_]+|[0-9a-fA-F_-]{8,}|\d[\d._:T -]{7,}', part) is not None


def _is_long_tag(part: str) -> bool:
  """A timestamp, a date, a hash or a UUID: no text's second half after a '-'."""
  return re.fullmatch(r'[0-9a-fA-F-]{8,}|\d[\d._:T -]{7,}', part) is not None


def number_shape(name: str) -> str:
  """`name` with each run of digits as one 0: names alike but for their numbers (`img0`,
  `img1`) share a shape."""
  return re.sub(r'\d+', '0', name)


def names_are_ids(stems: Sequence[str]) -> bool:
  """Whether file names are ids rather than texts: each a counter, a date or a hash (`_is_tag`), or
  all one word with a number in it (`img_0001`, `line12`)."""
  shapes = set(map(number_shape, stems))
  return bool(stems) and (all(map(_is_tag, stems)) or (len(shapes) == 1 and '0' in shapes.pop()))


def counting(parts: Sequence[str]) -> bool:
  """Whether `parts` are numbers that count up one by one (0001, 0002, ...), in any order, a
  tenth of them missing at most (files deleted since they were numbered)."""
  if len(parts) < 2 or not all(part.isdigit() for part in parts):
    return False
  numbers = sorted(map(int, parts))
  distinct = len(set(numbers)) == len(numbers)
  return distinct and numbers[-1] - numbers[0] + 1 <= len(numbers) + len(numbers) // 10


def _one_word(parts: Sequence[str]) -> bool:
  return len(parts) > 1 and len(set(parts)) == 1


# The fewest labels in which one can be told odd: under 1% of them needs a hundred.
ODD_LABELS_MIN = 100


def odd_labels(examples: Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
  """The labels (path, text) unlike the rest: a length that under 1% of the labels have, or a
  character that under 1% of them hold, in a set of a hundred or more. Such a label is more often
  a stray file's name ('Thumbs_db', 'logo', '0814 old') than a captcha, and it alone sets the
  longest label, makes the length vary, and adds a character."""
  if len(examples) < ODD_LABELS_MIN:
    return []
  rare = len(examples) / 100
  lengths = collections.Counter(len(text) for _, text in examples)
  chars = collections.Counter(c for _, text in examples for c in set(text))
  return [
    (path, text)
    for path, text in examples
    if lengths[len(text)] < rare or any(chars[c] < rare for c in text)
  ]


def odd_labels_warning(examples: Sequence[tuple[str, str]]) -> str:
  """A warning naming the `odd_labels` of `examples`, else ''."""
  odd = odd_labels(examples)
  if not odd:
    return ''
  shown = ', '.join(f'{path!r} ({text!r})' for path, text in odd[:5])
  return (
    f'{len(odd)} of {len(examples)} labels are unlike the rest, of a length or with a character '
    f'under 1% of them have: {shown}. If these are not captchas, or their names carry more than '
    'the text, remove or rename them: they count in the longest label, whether the length '
    'varies, and the alphabet.'
  )


def auto_width(
  sizes: Sequence[tuple[int, int]],
  height: int,
  max_label_length: int,
  output_steps: Callable[[int, int], int],
  min_width: int = 0,
) -> int:
  """The image width for config.image_width = 0.

  The set's median aspect ratio at `height`, in multiples of 8 px, no narrower than `min_width`,
  widened until the model emits at least 2·L + 1 CTC steps for the longest label L (room for a
  blank between every pair of repeated characters).
  """
  aspect = statistics.median(w / h for h, w in sizes) if sizes else 4.0
  width = max(8, min_width, round(height * aspect / 8) * 8)
  while output_steps(height, width) < 2 * max_label_length + 1:
    width += 8
  return width


def blank_prior(mean_label_length: float, steps: int) -> float:
  """config.blank_prior = AUTO_PRIOR: the share of the `steps` CTC steps a label of the mean
  length leaves blank, the head's starting blank probability."""
  return round(1 - mean_label_length / steps, 4)
