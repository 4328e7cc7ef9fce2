"""Settings are checked whole before any work, and every command turns a user's mistake into one
`error: …` line and exit status 2, never a traceback."""

import random
import string
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from captcha_jax import cli, settings
from captcha_jax.errors import ConfigError
from configs import default, tiny

ROOT = Path(__file__).resolve().parents[1]


def test_the_default_configs_are_valid():
  settings.validate(default.get_config())
  settings.validate(tiny.get_config())


def test_every_bad_field_is_named_in_one_message():
  config = tiny.get_config()
  config.learning_rate = float('nan')
  config.batch_size = 0
  config.eval_batch_size = -8
  config.keep_checkpoints = 0
  config.split = (0.9, 0.1, 0.0)
  config.nan_policy = 'ignore'
  config.model.dropout = 1.0
  config.alphabet = 'abca'
  config.fixed_label_length = 7
  config.max_label_length = 5
  config.image_width = 8
  config.data_source = 'tfds'
  config.pseudo_labels = 'readings.csv'
  with pytest.raises(ConfigError) as raised:
    settings.validate(config)
  message = str(raised.value)
  for field in (
    'learning_rate = nan',
    'batch_size = 0',
    'eval_batch_size = -8',
    'keep_checkpoints = 0',
    'split = (0.9, 0.1, 0.0)',
    "nan_policy = 'ignore': must be one of 'skip', 'stop'",
    'model.dropout = 1.0',
    "alphabet = 'abca': repeats 'a'",
    'fixed_label_length = 7 exceeds max_label_length = 5',
    'image_width = 8',
    "pseudo_labels: only with config.data_source = 'folder'",
  ):
    assert f'config.{field}' in message, field
  assert message.count('config.') == 12


@pytest.mark.parametrize(
  ('field', 'value'),
  [
    ('warmup_epochs', float('inf')),
    ('weight_decay', -1.0),
    ('model.backbone_layers', 5),
    ('model.backbone_strides', ((1, 1),)),
    ('case', 'title'),
    ('ema_decay', 1.0),
    ('pseudo_min_confidence', 1.5),
    ('augment.max_scale', 1.0),  # scales down to 0 and below would flip the image
    ('label_pattern', '(unclosed'),
    ('label_pattern', '(a)(b)'),  # which group is the text?
  ],
)
def test_each_kind_of_bad_value_is_refused(field, value):
  config = tiny.get_config()
  node = config
  *parents, leaf = field.split('.')
  for name in parents:
    node = node[name]
  node[leaf] = value
  with pytest.raises(ConfigError, match=f'config.{field}'):
    settings.validate(config)


def test_a_reader_and_imagenet_weights_together_are_refused():
  config = tiny.get_config()
  config.update(init_from='pretrained', pretrained='resnet18.pth')
  with pytest.raises(ConfigError, match='config.init_from and config.pretrained: give one'):
    settings.validate(config)


def run(module: str, *args: str) -> subprocess.CompletedProcess:
  return subprocess.run(
    [sys.executable, '-m', f'captcha_jax.{module}', *args],
    capture_output=True,
    text=True,
    cwd=ROOT,
  )


@pytest.mark.parametrize(
  ('module', 'args', 'message'),
  [
    (
      'train',
      [
        '--config=configs/tiny.py',
        '--workdir={tmp}/run',
        '--config.learning_rate=nan',
        '--config.batch_size=0',
      ],
      'error: Bad settings:\n  config.batch_size = 0',
    ),
    (
      'train',
      ['--config=configs/tiny.py', '--workdir={tmp}/run', '--config.batch_size=x'],
      'error: ',
    ),
    ('train', ['--config=configs/none.py', '--workdir={tmp}/run'], 'error: '),
    ('train', ['--config=configs/tiny.py'], 'error: --workdir is required'),
    ('train', ['--workdir={tmp}/run', '--config'], 'error: Missing value for flag --config'),
    ('evaluate', ['--workdir={tmp}'], "error: '{tmp}' has no config.json"),
    ('evaluate', ['--workdir={tmp}', '--label_pattern=x'], '--label_pattern goes with --data_dir'),
    (
      'evaluate',
      ['--workdir={tmp}', '--data_dir={tmp}', '--label_pattern=('],
      "--label_pattern '(' is not a regular expression",
    ),
    ('predict', ['--workdir={tmp}', 'x.png'], "error: '{tmp}' has no config.json"),
    ('predict', ['--onnx={tmp}/model.onnx', 'x.png'], 'error: '),
    ('export', ['--workdir={tmp}', '--out={tmp}/m.bin'], "error: '{tmp}' has no config.json"),
    ('serve', ['--workdir={tmp}', '--port=0'], "error: '{tmp}' has no config.json"),
    ('synthetic', ['--out={tmp}/s', '--count=5', '--length=0'], 'error: '),
    ('port', ['--torchvision_weights={tmp}/none.pth', '--out={tmp}/p'], 'no such weights file'),
    ('synthetic', ['--out={tmp}/a_file', '--count=1'], 'error: {tmp}/a_file: File exists'),
    ('serve', ['--pretrained', '--port=70000'], '--port must be 0 to 65535'),
    (
      'export',
      ['--workdir={tmp}', '--out={tmp}/no/m.onnx'],
      "the folder '{tmp}/no' does not exist",
    ),
    ('predict', ['--pretrained', '--output={tmp}/no/r.csv', '{tmp}/a.png'], "'{tmp}/no' does not"),
    ('predict', ['--pretrained', '--output={tmp}/f.csv', '{tmp}/a.png'], 'f.csv is a folder'),
    (
      'predict',
      ['--pretrained', '--output={tmp}/labels.csv', '{tmp}/a.png'],
      'labels.csv holds something else than readings (your labels?)',
    ),
    (
      'serve',
      ['--pretrained', '--host=nowhere.invalid', '--no_warmup'],
      'error: Could not serve on nowhere.invalid:8000',
    ),
    ('synthetic', ['--out={tmp}/s', '--width=0'], '--width and --height must be 16 or more'),
    ('synthetic', ['--out={tmp}/s', '--alphabet=ab c'], '--alphabet must hold no spaces'),
    ('predict', ['--pretrained', '--length=99', '{tmp}/a.png'], 'A text of 99 characters needs'),
  ],
)
def test_commands_report_user_errors_in_one_line(tmp_path, module, args, message):
  (tmp_path / 'a_file').write_text('not a folder')
  (tmp_path / 'f.csv').mkdir()
  (tmp_path / 'labels.csv').write_text('file,text\na.png,abcde\n')
  Image.new('RGB', (200, 50), 'white').save(tmp_path / 'a.png')
  out = run(module, *(a.format(tmp=tmp_path) for a in args))
  assert out.returncode == 2, (out.returncode, out.stderr[-2000:])
  assert message.format(tmp=tmp_path) in out.stderr, out.stderr[-2000:]
  assert 'Traceback' not in out.stderr


@pytest.mark.parametrize(
  ('code', 'message'),
  [
    ('def get_config(:\n', 'SyntaxError: invalid syntax'),
    ('import no_such_module\n', "ModuleNotFoundError: No module named 'no_such_module'"),
    ('CONFIG = 1\n', 'it defines no get_config()'),
  ],
)
def test_a_broken_config_file_is_named_in_one_line(tmp_path, code, message):
  (tmp_path / 'mine.py').write_text(code)
  out = run('train', f'--config={tmp_path}/mine.py', f'--workdir={tmp_path}/run')
  assert out.returncode == 2, out.stderr[-2000:]
  assert f'error: config file {tmp_path}/mine.py: {message}' in out.stderr, out.stderr[-2000:]
  assert 'Traceback' not in out.stderr


@pytest.mark.parametrize(
  ('override', 'message'),
  [
    ('model.rnn_hiden_size=8', "has no setting 'rnn_hiden_size' (did you mean rnn_hidden_size?)."),
    ('modle.dropout=0.1', "has no setting 'modle' (did you mean model?)."),
    ('nonexistent=1', "has no setting 'nonexistent'."),
  ],
)
def test_a_misspelt_setting_is_named_not_blamed_on_the_config_file(
  tmp_path, capsys, override, message
):
  with pytest.raises(SystemExit) as exit_status:
    cli.train(['--config=configs/tiny.py', f'--workdir={tmp_path}', f'--config.{override}'])
  name = override.split('=')[0]
  assert exit_status.value.code == 2
  assert capsys.readouterr().err == f'error: --config.{name}: configs/tiny.py {message}\n'
  with pytest.raises(SystemExit):
    cli.train(['--config=configs/tiny.py', f'--workdir={tmp_path}', '--config.seed.x=1'])
  assert 'config.seed is one setting, with no' in capsys.readouterr().err


def test_a_config_built_on_another_loads_from_any_folder(tmp_path):
  """configs/tiny.py imports configs/default.py; run from elsewhere, it still finds it (the run
  then stops at its missing data folder, past the config)."""
  out = subprocess.run(
    [
      sys.executable,
      '-m',
      'captcha_jax.train',
      f'--config={ROOT}/configs/tiny.py',
      f'--workdir={tmp_path}/run',
      f'--config.data_dir={tmp_path}/none',
    ],
    capture_output=True,
    text=True,
    cwd=tmp_path,
  )
  assert out.returncode == 2, out.stderr[-2000:]
  assert f"error: Data folder '{tmp_path}/none'" in out.stderr, out.stderr[-2000:]


def test_train_help_lists_its_flags():
  out = run('train', '--help')
  assert out.returncode == 0, out.stderr[-2000:]
  assert out.stdout.startswith('usage: python -m captcha_jax.train --config')
  assert '--workdir:' in out.stdout and '--[no]cpu_tuning:' in out.stdout


def test_case_warning_tells_labels_typed_in_either_case_from_a_mixed_case_site():
  rng = random.Random(0)
  alphabet = string.digits + string.ascii_letters
  mixed_site = [''.join(rng.choices(alphabet, k=5)) for _ in range(300)]
  # One case-blind site's texts, typed half in upper and half in lower case.
  either_case = [t.upper() if i % 2 else t.lower() for i, t in enumerate(mixed_site)]
  assert settings.case_warning(mixed_site) == ''
  assert settings.case_warning([t.upper() for t in mixed_site]) == ''
  assert settings.case_warning([t.lower() for t in mixed_site]) == ''
  warning = settings.case_warning(either_case)
  upper = sum(t == t.upper() != t.lower() for t in either_case)
  assert warning.startswith(f'{upper} labels are upper-case'), warning
  assert "config.case='upper' or 'lower'" in warning


BEFORE, AFTER = '^([^_]+)', '([^_]+)$'


@pytest.mark.parametrize(
  ('stems', 'pattern'),
  [
    (['226md', 'x3b4k'], ''),
    (['226md', '226md_1', 'x3b4k'], BEFORE),  # a copy's counter
    (['abcd_1591234567', 'efgh_1591234999'], BEFORE),  # timestamps
    (['abcd_2024_01_05', 'efgh_2024_01_06'], BEFORE),  # dates
    (['abcd_3f2a9c1e0b', 'efgh_9e8d7c6b5a'], BEFORE),  # hashes
    (['abcd_1700000000.123456', 'efgh_1700000001.5'], BEFORE),  # time.time()
    (['abcd_2024-01-05T12-30-00', 'efgh_2024-01-05 12.31.07'], BEFORE),  # ISO
    (['abcd_captcha', 'efgh_captcha'], BEFORE),
    (['1234_1', '5678_1', '1234_2', '9012_1', '3456_1'], BEFORE),  # counters
    (['0001_abcd', '0002_efgh'], AFTER),  # an index
    (['0003_1234', '0001_5678', '0002_9012'], AFTER),  # it counts up
    (['captcha_abcd', 'captcha_efgh'], AFTER),
    (['0001_abcd', '0002_efgh', '0003_ijkl', 'sample'], AFTER),  # and a stray file, read whole
    (['1234_1', '5678_2', '9012_3', '3456'], BEFORE),  # a text not yet copied has no counter
    (['ab_cd', 'efgh'], ''),  # one name's '_' is its own
    (['Thumbs_db', '226md', 'x3b4k'], ''),
    (['abcd-1700000000', 'efgh-1700000001'], '^([^-]+)'),  # '-' where '_' says nothing
    (
      ['abcd-3f2a9c1e-0b1c-4d5e-8f90-123456789abc', 'efgh-9e8d7c6b-5a4f-4e3d-9c2b-1a0f9e8d7c6b'],
      '^([^-]+)',
    ),  # a UUID
    (['ab_cd-1700000000', 'ef_gh-1700000001'], '^([^-]+)'),  # the text holds a '_'
    (['ab-cd', 'efgh'], ''),
    (['7-3', '12+5', '9-4', '8-2'], ''),  # sums: the '-' is the text's
    (['AB-12', 'CD-34'], ''),
    (['abcd-1700000000', 'efgh'], ''),  # one name has no tag: the whole names
  ],
)
def test_the_text_is_found_in_names_that_carry_more(stems, pattern):
  assert settings.text_pattern(stems)[0] == pattern


def test_numbers_count_up_with_a_tenth_of_them_gone_at_most():
  assert settings.counting([f'{i:06d}' for i in range(30) if i != 13])  # a file deleted
  assert not settings.counting([f'{i:06d}' for i in range(0, 60, 2)])  # every other one
  assert not settings.counting(['0001', '0002', '0002'])  # a number twice: not an index
  assert not settings.counting(['4821', '7356', '1209'])  # 4-digit captchas' texts


def test_names_either_part_of_which_could_be_the_text_are_refused():
  with pytest.raises(ConfigError, match="like '0001_1234'.*config.label_pattern"):
    settings.text_pattern(['0001_1234', '0003_5678'])
  assert settings.text_pattern(['0001-1234', '0003-5678'])[0] == ''  # no '-' index is read
