"""Labelled examples: which files of a folder are captchas and the text of each, from its name, a
labels file beside the images, or a confident reading; and the errors bad input gets."""

import functools
import json
import logging
import shutil
import unicodedata
from pathlib import Path

import pytest
from PIL import Image

from captcha_jax import data, labelled, models, synthetic
from captcha_jax.errors import ConfigError, DataError
from tests.conftest import config_for, resolve


def test_label_from_path_strips_extension_and_copy_suffix():
  assert labelled.label_from_path('/x/226md.png') == '226md'
  assert labelled.label_from_path('abcde (1).jpg') == 'abcde'
  copies = ('abcde(2)', 'abcde copy', 'abcde copy 2', 'abcde - Copy', 'abcde - Copy (3)')
  for copy in (*copies, 'abcde - Copy - Copy', 'abcde (1) (1)', 'abcde copy copy 2'):
    assert labelled.label_from_path(f'/x/{copy}.png') == 'abcde', copy
  assert labelled.label_from_path(' 4795 .png') == '4795'  # no captcha's text has spaces around it
  assert (
    labelled.label_from_path('5371.png.png') == '5371'
    and labelled.label_from_path('a.b.png') == 'a.b'
  )
  assert (
    labelled.label_from_path('copy.png') == 'copy'
    and labelled.label_from_path('ab_2.png') == 'ab_2'
  )
  decomposed = unicodedata.normalize('NFD', 'çé12')  # as macOS writes names
  assert labelled.label_from_path(f'{decomposed}.png') == unicodedata.normalize('NFC', 'çé12')


def test_label_pattern_picks_the_text_out_of_longer_names(tmp_path, caplog):
  folder = tmp_path / 'scraped'
  folder.mkdir()
  texts = ['226md', 'x3b4k', 'bcdef', '226md']
  for i, text in enumerate(texts):
    Image.new('RGB', (100, 40), 'white').save(folder / f'{text}_{1700000000 + i}.png')
  caplog.set_level(logging.INFO)
  examples, problems = labelled.find_examples(config_for(folder), folder)
  assert sorted(e.text for e in examples) == sorted(texts) and not problems
  assert "with '^([^_]+)': names like '226md_1700000000'" in caplog.text
  examples, _ = labelled.find_examples(config_for(folder, label_pattern=''), folder)
  assert sorted(e.text for e in examples)[0] == '226md_1700000000'
  Image.new('RGB', (100, 40), 'white').save(folder / 'bcdef.png')
  examples, problems = labelled.find_examples(config_for(folder, label_pattern='(.+)_'), folder)
  assert sorted(e.text for e in examples) == sorted(texts)
  assert problems == [f"{folder / 'bcdef.png'}: its name does not match label_pattern '(.+)_'"]


def test_a_folder_that_holds_one_folder_alone_is_read_inside(tmp_path, caplog):
  inner = tmp_path / 'samples' / 'samples'
  paths = synthetic.generate(inner, 8, seed=1)
  (tmp_path / 'samples' / '__MACOSX').mkdir()  # a zip's macOS metadata does not count
  caplog.set_level(logging.INFO)
  resolved, splits = resolve(config_for(tmp_path))
  assert resolved.data_dir == str(inner)
  assert sorted(e.path for name in data.SPLITS for e in splits[name]) == sorted(map(str, paths))
  assert f'{tmp_path} holds only the folder samples: reading that' in caplog.text
  looped = tmp_path / 'looped'
  looped.mkdir()
  (looped / 'back').symlink_to(looped)
  with pytest.raises(DataError, match='holds no images'):  # not a walk without end
    resolve(config_for(looped))


def test_the_images_to_read_are_found_inside_a_folder_holding_one_folder_alone(tmp_path):
  """predict and self-training read a folder given as training does: `captchas/` beside a zip's
  `__MACOSX/` is read inside."""
  from captcha_jax import predict

  inner = tmp_path / 'unzipped' / 'captchas'
  paths = synthetic.generate(inner, 3, seed=1)
  (tmp_path / 'unzipped' / '__MACOSX').mkdir()
  one = tmp_path / 'one.png'
  shutil.copy(paths[0], one)
  found = list(predict.expand_paths([str(tmp_path / 'unzipped'), str(one)]))
  assert found == [*sorted(paths), one]


def test_a_folder_of_sub_folders_only_says_so(tmp_path):
  synthetic.generate(tmp_path / 'site_a', 2, seed=1)
  (tmp_path / 'site_b').mkdir()
  with pytest.raises(DataError, match=r'holds no images .* only the sub-folders site_a, site_b\.'):
    resolve(config_for(tmp_path))
  (tmp_path / 'labels.csv').write_text('file,text\nsite_c/0001.png,abcde\n')  # and why not read
  with pytest.raises(DataError, match=r'labels.csv was not read as one \(.*line 2: .*site_c/0001'):
    resolve(config_for(tmp_path))


def test_labels_file_with_a_header_and_its_problems_named_by_line(captcha_dir, copy_of, caplog):
  folder = copy_of(captcha_dir)
  names = sorted(p.name for p in folder.glob('*.png'))
  renamed = []
  for i, name in enumerate(names):
    (folder / name).rename(folder / f'img{i:03d}.png')
    renamed.append((f'img{i:03d}.png', Path(name).stem))
  lines = ['file,text'] + [f'{f},{t}' for f, t in renamed]
  lines += ['missing.png,abcde', f'{renamed[0][0]},22222', f'{renamed[1][0]},']
  lines += [f'{renamed[2][0]},ab,cd']  # a text holding the delimiter, unquoted
  lines += [f'./{renamed[3][0]},33333']  # the same file again, by another path
  (folder / 'labels.csv').write_text('\n'.join(lines) + '\n')
  caplog.set_level(logging.WARNING)
  examples, problems = labelled.find_examples(config_for(folder, labels_file='labels.csv'), folder)
  assert [(Path(e.path).name, e.text) for e in examples] == renamed
  assert len(problems) == 5
  assert 'labels.csv, line 62: ' in problems[0] and 'missing.png' in problems[0]
  assert 'line 63' in problems[1] and 'listed again (first on line 2)' in problems[1]
  assert 'line 64' in problems[2] and 'empty text' in problems[2]
  assert 'line 65: 3 fields' in problems[3] and "holding ',' must be quoted" in problems[3]
  assert 'line 66' in problems[4] and 'listed again (first on line 5)' in problems[4]
  named = folder / 'named.csv'  # columns a header names are the file's own
  named.write_text('file,text,source\n' + ''.join(f'{f},{t},site\n' for f, t in renamed))
  examples, problems = labelled.find_examples(config_for(folder, labels_file=str(named)), folder)
  assert len(examples) == 60 and not problems
  tsv = folder / 'labels.tsv'
  tsv.write_text(''.join(f'{f}\t{t}\n' for f, t in renamed))
  examples, problems = labelled.find_examples(config_for(folder, labels_file=str(tsv)), folder)
  assert len(examples) == 60 and not problems
  # A ';' locale's CSV, with spaces after the separators: the texts are the labels themselves.
  spaced = folder / 'spaced.csv'
  spaced.write_text('file; text\n' + ''.join(f'{f}; "{t} "\n' for f, t in renamed))
  examples, problems = labelled.find_examples(config_for(folder, labels_file=str(spaced)), folder)
  assert [(Path(e.path).name, e.text) for e in examples] == renamed and not problems
  listed = folder / 'labels.txt'  # an OCR set's label list: `path text`, spaces repeated
  listed.write_text(''.join(f'{f}  {t}\n' for f, t in renamed))
  examples, problems = labelled.find_examples(config_for(folder, labels_file=str(listed)), folder)
  assert [(Path(e.path).name, e.text) for e in examples] == renamed and not problems
  wrong = folder / 'wrong.csv'  # paths relative to another folder: every line names its file
  wrong.write_text('file,text\n' + ''.join(f'images/{f},{t}\n' for f, t in renamed))
  with pytest.raises(DataError, match=r'lists no usable image(.|\n)*line 2: .*images/img000.png'):
    labelled.find_examples(config_for(folder, labels_file=str(wrong)), folder)


def test_the_file_that_lists_a_folders_images_gives_their_texts(tmp_path, caplog):
  synthetic.generate(tmp_path, 12, seed=4, labels_file=True)  # 000000.png ... and labels.csv
  rows = (tmp_path / 'labels.csv').read_text().splitlines()[1:]
  texts = {str(tmp_path / name): text for name, text in (row.split(',') for row in rows)}
  (tmp_path / 'README.txt').write_text('Captchas of example.com, saved in May.\n')
  sizes = ''.join(f'{name},200,50\n' for name in texts)  # lists the images, but not their texts
  (tmp_path / 'sizes.csv').write_text('file,width,height\n' + sizes)
  caplog.set_level(logging.INFO)
  resolved, splits = resolve(config_for(tmp_path))
  assert resolved.labels_file == str(tmp_path / 'labels.csv')
  assert {e.path: e.text for name in data.SPLITS for e in splits[name]} == texts
  assert f'The texts are those {tmp_path / "labels.csv"} gives' in caplog.text
  assert 'Left out' not in caplog.text
  # Images it does not list are named: they are left out.
  shutil.copy(tmp_path / '000000.png', tmp_path / 'extra.png')
  caplog.clear()
  _, splits = resolve(config_for(tmp_path))
  assert {e.path: e.text for name in data.SPLITS for e in splits[name]} == texts
  assert (
    f'Left out 1 image(s) beside those {tmp_path / "labels.csv"} lists, which it gives no text of: '
    f'{tmp_path / "extra.png"}.'
  ) in caplog.text
  (tmp_path / 'extra.png').unlink()
  # Nor those another list beside it gives the texts of: test.csv's, training on train.csv.
  lines = (tmp_path / 'labels.csv').read_text().splitlines()
  (tmp_path / 'labels.csv').rename(tmp_path / 'labels.bak')
  (tmp_path / 'train.csv').write_text('\n'.join(lines[:9]) + '\n')
  (tmp_path / 'test.csv').write_text('\n'.join(lines[:1] + lines[9:]) + '\n')
  caplog.clear()
  _, splits = resolve(config_for(tmp_path, labels_file='train.csv'))
  assert sum(map(len, splits.values())) == 8 and 'Left out' not in caplog.text
  (tmp_path / 'test.csv').unlink()
  resolve(config_for(tmp_path, labels_file='train.csv'))
  assert 'Left out 4 image(s) beside those' in caplog.text
  (tmp_path / 'train.csv').unlink()
  (tmp_path / 'labels.bak').rename(tmp_path / 'labels.csv')
  # Named relative to the folder, it resolves as found, so a run resumes either way.
  for named in ('labels.csv', './labels.csv', str(tmp_path / 'x' / '..' / 'labels.csv')):
    assert resolve(config_for(tmp_path, labels_file=named))[0] == resolved
  names, _ = resolve(config_for(tmp_path, alphabet='auto', labels_file=''))
  assert names.labels_file == '' and names.max_label_length == 6  # the names: 000000 ...
  (tmp_path / 'test.tsv').write_text((tmp_path / 'labels.csv').read_text().replace(',', '\t'))
  with pytest.raises(ConfigError, match='labels.csv, test.tsv in .* each give the texts') as e:
    resolve(config_for(tmp_path))
  assert f'--data_dir {tmp_path} --labels_file test.tsv`' in str(e.value)


def test_pseudo_labels_join_the_train_split_alone(captcha_dir, tmp_path, caplog):
  """Confident readings of unlabelled images join training only; val and test stay the labels'
  own; a labelled image keeps its label; bad lines are named, not taken."""
  unlabelled = tmp_path / 'unlabelled'
  synthetic.generate(unlabelled, 8, seed=5)
  images = sorted(unlabelled.glob('*.png'))
  labelled_image = sorted(captcha_dir.glob('*.png'))[0]
  rows = [f'{p},{p.stem},{p.stem},0.95' for p in images[:4]]
  rows += [f'{p},{p.stem},{p.stem},0.5' for p in images[4:6]]  # below the threshold
  rows += [f'{images[5]},{images[5].stem},,nan']  # a reading the model could not score
  rows += [f'unlabelled/{images[6].name},{images[6].stem},,0.9']  # from the file's folder
  rows += [f'{labelled_image},{labelled_image.stem[::-1]},,0.99']  # labelled already
  rows += [f'{tmp_path / "gone.png"},bcdef,,0.99', f'{images[7]},bcd!f,,0.99']
  rows += [f'{images[7]},bcdef,,high']
  rows += [f'{images[0].parent}/../unlabelled/{images[0].name},{images[0].stem},,0.97']  # again
  readings = tmp_path / 'readings.csv'
  readings.write_text('file,text,raw_text,confidence\n' + '\n'.join(rows) + '\n')
  _, base = resolve(config_for(captcha_dir))
  caplog.set_level(logging.INFO)
  resolved, splits = resolve(config_for(captcha_dir, pseudo_labels=str(readings)))
  assert splits['val'] == base['val'] and splits['test'] == base['test']
  assert splits['train'][: len(base['train'])] == base['train']
  added = splits['train'][len(base['train']) :]
  assert [(Path(e.path).name, e.text) for e in added] == [
    (p.name, p.stem) for p in images[:4] + images[6:7]
  ]
  assert '5 of the 13 readings' in caplog.text
  assert '1 readings in ' in caplog.text and 'are of labelled images themselves' in caplog.text
  assert 'readings.csv, line 11: ' in caplog.text and 'gone.png' in caplog.text
  assert "reading 'bcd!f': '!' is not in the alphabet" in caplog.text
  assert "line 13: confidence 'high' is not a number" in caplog.text
  assert 'line 14: ' in caplog.text and 'is read again (first on line 2)' in caplog.text
  assert resolved.pseudo_labels == str(readings)  # absolute, so a resumed run finds it
  readings.write_text('file,text\n')
  with pytest.raises(DataError, match='readings.csv.*no file, text and confidence columns'):
    resolve(config_for(captcha_dir, pseudo_labels=str(readings)))


def test_readings_of_copies_of_labelled_images_are_left_out(captcha_dir, tmp_path, caplog):
  """A folder scraped from a site and labelled by copying some of its images keeps those copies:
  their readings would train on validation and test images by another name."""
  other = synthetic.generate(tmp_path / 'unlabelled', 1, seed=7)[0]
  original = sorted(captcha_dir.glob('*.png'))[3]
  copy = tmp_path / 'unlabelled' / 'scraped-0001.png'
  shutil.copyfile(original, copy)
  readings = tmp_path / 'readings.csv'
  rows = [f'{copy},{original.stem},,0.99', f'{other},{other.stem},,0.99']
  readings.write_text('file,text,raw_text,confidence\n' + '\n'.join(rows) + '\n')
  caplog.set_level(logging.INFO)
  _, splits = resolve(config_for(captcha_dir, pseudo_labels=str(readings)))
  added = [e for e in splits['train'] if 'unlabelled' in e.path]
  assert [Path(e.path).name for e in added] == [other.name]
  assert f'1 readings in {readings} are of copies' in caplog.text
  assert f'({copy} holds the bytes of {original})' in caplog.text


def test_copies_are_the_same_bytes_not_the_same_size(tmp_path):
  def file(name: str, content: bytes) -> str:
    (tmp_path / name).write_bytes(content)
    return str(tmp_path / name)

  original, twin = file('a.png', b'abcd'), file('b.png', b'abcd')
  same_size, other_size = file('c.png', b'abce'), file('d.png', b'abcde')
  gone = str(tmp_path / 'gone.png')
  paths = [twin, same_size, other_size, gone, original]
  assert labelled.copies_of(paths, [gone, original, twin]) == {twin: original, original: original}
  assert labelled.copies_of(paths, []) == {}


def test_readings_are_folded_and_those_the_model_cannot_learn_are_named(
  captcha_dir, tmp_path, caplog
):
  images = synthetic.generate(tmp_path / 'unlabelled', 3, seed=6)
  readings = tmp_path / 'readings.csv'
  rows = [f'{images[0]},BCDEF,,0.95', f'{images[1]},bcdefg,,0.95', f'{images[2]},bbbbb,,0.95']
  readings.write_text('file,text,raw_text,confidence\n' + '\n'.join(rows) + '\n')
  config = config_for(captcha_dir, pseudo_labels=str(readings), case='lower', max_label_length=5)
  caplog.set_level(logging.INFO)
  _, splits = data.resolve(config, lambda height, width: 8)  # 'bbbbb' needs 9 steps
  added = [e for e in splits['train'] if 'unlabelled' in e.path]
  assert [(Path(e.path).name, e.text) for e in added] == [(images[0].name, 'bcdef')]
  assert "reading 'bcdefg' is longer than max_label_length" in caplog.text
  assert "reading 'bbbbb' needs more than the 8 CTC steps" in caplog.text
  assert '1 of the 3 readings' in caplog.text
  # The same readings as `predict --output FILE.jsonl` writes them.
  lines = [r.split(',') for r in rows]
  as_json = tmp_path / 'readings.jsonl'
  as_json.write_text(
    ''.join(
      json.dumps({'file': f, 'text': t, 'raw_text': t, 'confidence': float(c)}) + '\n'
      for f, t, _, c in lines
    )
  )
  assert labelled.read_readings(as_json, 0.9) == labelled.read_readings(readings, 0.9)
  assert len(labelled.read_readings(as_json, 0.9)[0]) == 3
  with open(as_json, 'a') as f:
    f.write(json.dumps([str(images[0]), 'abcde']) + '\n')  # a row of two of the four fields
  *_, problems = labelled.read_readings(as_json, 0.9)
  assert problems == [f'{as_json}, line 4: no confidence']


def test_case_folds_labels(tmp_path):
  for text in ('AbCd', 'xYz1'):
    Image.new('RGB', (100, 40), 'white').save(tmp_path / f'{text}.png')
  for case, expected in (
    ('keep', ['AbCd', 'xYz1']),
    ('lower', ['abcd', 'xyz1']),
    ('upper', ['ABCD', 'XYZ1']),
  ):
    examples, _ = labelled.find_examples(config_for(tmp_path, case=case), tmp_path)
    assert [e.text for e in examples] == expected


def test_lists_of_texts_as_spreadsheets_and_competitions_write_them(tmp_path, caplog):
  """UTF-16 (Excel's "Unicode Text"), ids without their extension (`id,solution`), a list beside
  macOS's `._` files, a readings file beside the list: each list read as the texts."""
  synthetic.generate(tmp_path, 12, seed=4, labels_file=True)  # 000000.png ... and labels.csv
  rows = (tmp_path / 'labels.csv').read_text().splitlines()[1:]
  texts = {str(tmp_path / name): text for name, text in (row.split(',') for row in rows)}
  (tmp_path / 'labels.csv').unlink()
  listing = tmp_path / 'labels.txt'

  def read() -> dict[str, str]:
    resolved, splits = resolve(config_for(tmp_path))
    assert resolved.labels_file == str(listing)
    return {e.path: e.text for name in data.SPLITS for e in splits[name]}

  listing.write_text(''.join(f'{Path(p).name}\t{t}\n' for p, t in texts.items()), 'utf-16')
  assert read() == texts
  listing.write_text('id,solution\n' + ''.join(f'{Path(p).stem},{t}\n' for p, t in texts.items()))
  assert read() == texts
  named = ''.join(f'{Path(p).name},{i},{t}\n' for i, (p, t) in enumerate(texts.items()))
  listing.write_text('file,id,label\n' + named)  # the column the header names, not the second
  assert read() == texts
  readings = ''.join(f'{p},x{t[1:]},x{t[1:]},0.31\n' for p, t in texts.items())
  (tmp_path / 'readings.csv').write_text('file,text,raw_text,confidence\n' + readings)
  assert read() == texts
  listing.rename(tmp_path / 'labels.ods.bak')
  with pytest.raises(DataError, match='named by number') as e:
    resolve(config_for(tmp_path))
  assert 'readings.csv was not read as one (it holds readings of captcha' in str(e.value)
  (tmp_path / 'labels.ods.bak').rename(listing)
  for path in texts:  # macOS's metadata beside each image, not counted as images
    Path(path).with_name(f'._{Path(path).name}').write_bytes(b'\x00\x05\x16\x07')
  some = dict(list(texts.items())[:7])
  listing.write_text(''.join(f'{Path(p).name},{t}\n' for p, t in some.items()))
  assert read() == some


def test_lists_read_as_they_are_written_beside_their_images(tmp_path, caplog):
  """Ids whose first image is gone (no header), a header calling the texts `result`, paths
  relative to the images' folder beside the list or written on Windows; and a list whose header
  names no texts, named in a warning when the names are read instead."""
  made = synthetic.generate(tmp_path / 'src', 12, seed=4)

  def folder(name: str, image_name, header: str, row) -> tuple[Path, dict[str, str]]:
    """The 12 captchas, each at `image_name(i)`, listed in `name` as `row(i, text)`."""
    where, texts, rows = tmp_path / name, {}, [header] if header else []
    for i, path in enumerate(made):
      image = where / image_name(i)
      image.parent.mkdir(parents=True, exist_ok=True)
      shutil.copy(path, image)
      texts[str(image)] = path.stem
      rows.append(row(i, path.stem))
    (where / 'labels.csv').write_text('\n'.join(rows) + '\n')
    return where, texts

  def read(where: Path) -> dict[str, str]:
    examples, _ = labelled.find_examples(config_for(where), where)
    return {e.path: e.text for e in examples}

  ids, texts = folder('ids', lambda i: f'img{i}.png', '', lambda i, t: f'img{i} {t}')
  (ids / 'img0.png').unlink()
  del texts[str(ids / 'img0.png')]
  assert read(ids) == texts  # img0: a missing image, not a header
  hashed, texts = folder(
    'hashed', lambda i: f'{i:x}a9f3c.png', 'image,result', lambda i, t: f'{i:x}a9f3c.png,{t}'
  )
  assert read(hashed) == texts
  beside, texts = folder(
    'beside', lambda i: f'images/{i:04d}.png', 'file,text', lambda i, t: f'{i:04d}.png,{t}'
  )
  assert read(beside) == texts
  windows, texts = folder(
    'windows', lambda i: f'imgs/{i:04d}.png', 'file,text', lambda i, t: f'imgs\\{i:04d}.png,{t}'
  )
  assert read(windows) == texts
  columns, texts = folder(
    'columns',
    lambda i: f'{i:04d}.png',
    'file,captcha_id,solution',
    lambda i, t: f'{i:04d}.png,{i:08x},{t}',
  )
  assert read(columns) == texts  # by the words of the names: `captcha_id` is no text
  (hashed / 'labels.csv').write_text(
    (hashed / 'labels.csv').read_text().replace('result', 'colour')
  )
  caplog.set_level(logging.WARNING)
  assert set(read(hashed).values()) == {f'{i:x}a9f3c' for i in range(12)}  # the names, as asked
  assert 'labels.csv: its header, image,colour, names no column as the texts' in caplog.text


def test_lists_of_texts_in_json_as_dataset_hubs_and_scripts_write_them(tmp_path, caplog):
  """Hugging Face's image folder (`metadata.jsonl` of {"file_name", "text"} records, any key
  order, numbers as texts), a JSON object of path → text, a JSON list of [path, text] rows; and
  their bad lines named; JSON that lists no images (a dataset card's) is passed over."""
  synthetic.generate(tmp_path, 12, seed=4, labels_file=True)  # 000000.png ... and labels.csv
  rows = (tmp_path / 'labels.csv').read_text().splitlines()[1:]
  names = dict(row.split(',') for row in rows)
  texts = {str(tmp_path / name): text for name, text in names.items()}
  (tmp_path / 'labels.csv').unlink()
  (tmp_path / 'dataset_info.json').write_text(json.dumps({'description': 'captchas', 'size': 12}))

  def read(listing: Path) -> dict[str, str]:
    resolved, splits = resolve(config_for(tmp_path))
    assert resolved.labels_file == str(listing)
    listing.unlink()
    return {e.path: e.text for name in data.SPLITS for e in splits[name]}

  hub = tmp_path / 'metadata.jsonl'
  records = [{'text': t, 'id': i, 'file_name': n} for i, (n, t) in enumerate(names.items())]
  hub.write_text(''.join(json.dumps(r) + '\n' for r in records))
  assert read(hub) == texts
  mapping = tmp_path / 'labels.json'
  mapping.write_text(json.dumps(names, indent=2))
  assert read(mapping) == texts
  pairs = tmp_path / 'labels.json'
  pairs.write_text(json.dumps([[n, t] for n, t in names.items()]))
  assert read(pairs) == texts
  first = next(iter(names))
  hub.write_text(json.dumps({'file_name': first, 'text': 4821}) + '\n')  # a number as its text
  examples, problems, header = labelled.read_labels_file(hub, tmp_path)
  assert examples == [labelled.Example(str(tmp_path / first), '4821')]
  assert header == ['file_name', 'text'] and not problems
  hub.write_text(
    f'{json.dumps({"file_name": first, "text": names[first]})}\n{{"file_name": \n'
    f'{json.dumps({"file_name": "gone.png", "text": "abcd"})}\n'
  )
  examples, problems, _ = labelled.read_labels_file(hub, tmp_path)
  assert [e.text for e in examples] == [names[first]]
  assert problems[0].startswith(f'{hub}, line 2: not JSON')
  assert problems[1] == f'{hub}, line 3: {str(tmp_path / "gone.png")!r} is not a file'
  sized = {'text': names[first], 'image_width': 200, 'file_name': first}  # a size is no path
  hub.write_text(json.dumps(sized) + '\n')
  examples, _, header = labelled.read_labels_file(hub, tmp_path)
  assert header[0] == 'file_name' and [e.text for e in examples] == [names[first]]
  broken = tmp_path / 'broken.json'
  broken.write_text('{"000000.png": "abcd",')
  with pytest.raises(DataError, match=r"Labels file '.*broken.json' is not JSON"):
    resolve(config_for(tmp_path, labels_file='broken.json'))


def test_a_list_of_a_few_images_is_named_and_a_zip_is_no_folder(tmp_path, caplog):
  paths = synthetic.generate(tmp_path / 'set', 12, seed=4)
  rows = ''.join(f'{p.name},{p.stem}\n' for p in paths[:3])
  (tmp_path / 'set' / 'some.csv').write_text('file,text\n' + rows)
  caplog.set_level(logging.WARNING)
  resolved, _ = resolve(config_for(tmp_path / 'set'))
  assert resolved.labels_file == ''  # the names
  assert 'some.csv: it gives the texts of 3 of the 12 images, under half: config' in caplog.text
  (tmp_path / 'set.zip').write_bytes(b'PK\x05\x06' + bytes(18))
  with pytest.raises(
    DataError, match=r'set.zip\' \(config.data_dir\) is a file, not a folder \(unpack'
  ):
    resolve(config_for(tmp_path / 'set.zip'))
  (tmp_path / 'set' / 'train.parquet').write_bytes(b'PAR1')
  with pytest.raises(DataError, match=r'a folder \(the folder that holds it: .*set\)'):
    resolve(config_for(tmp_path / 'set' / 'train.parquet'))


def test_a_lists_bad_lines_are_named_not_taken_for_its_header(tmp_path):
  synthetic.generate(tmp_path, 4, seed=4, labels_file=True)
  names = sorted(tmp_path.glob('*.png'))
  listing = tmp_path / 'labels.csv'
  listing.write_text(''.join(f'{p.name},{p.stem}\n' for p in names))  # no header
  names[0].unlink()
  examples, problems, header = labelled.read_labels_file(listing, tmp_path)
  assert header == [] and [Path(e.path) for e in examples] == names[1:]
  assert problems == [f'{listing}, line 1: {str(names[0])!r} is not a file']
  ids = tmp_path / 'ids.csv'  # a list of ids whose first image is gone
  ids.write_text(''.join(f'{p.stem},{p.stem}\n' for p in names))
  examples, problems, header = labelled.read_labels_file(ids, tmp_path)
  assert (
    header == []
    and len(examples) == 3
    and f'line 1: {str(tmp_path / names[0].stem)!r}' in problems[0]
  )
  listing.write_text('file,text\n"' + 'x' * 140_000)  # a quote left open for 140 KB
  with pytest.raises(DataError, match=r'labels.csv, line 2: not a list of images \(field larger'):
    labelled.read_labels_file(listing, tmp_path)


def test_split_folders_that_list_their_own_texts_keep_their_split(tmp_path, caplog):
  """A Hugging Face image folder: `train/metadata.jsonl` and `test/metadata.jsonl`, images in
  folders below them; or a list in one split folder, names in another."""
  texts = {}
  for split, count, seed in (('train', 30, 1), ('test', 8, 2)):
    paths = synthetic.generate(tmp_path / 'src' / split, count, seed=seed)
    (tmp_path / split / 'images').mkdir(parents=True)
    with open(tmp_path / split / 'metadata.jsonl', 'w') as f:
      for i, path in enumerate(paths):
        name = f'images/{i:04d}.png'
        shutil.copy(path, tmp_path / split / name)
        f.write(json.dumps({'file_name': name, 'text': path.stem}) + '\n')
        texts[str(tmp_path / split / name)] = (split, path.stem)
  shutil.rmtree(tmp_path / 'src')
  caplog.set_level(logging.INFO)
  config = config_for(tmp_path, alphabet='auto', max_label_length=0)
  resolved, splits = resolve(config)
  assert resolved.labels_file == 'auto'  # each split folder's list, found again on resume
  assert f'The texts of {tmp_path / "test"} are those {tmp_path / "test" / "metadata.jsonl"}' in (
    caplog.text
  )
  read = {e.path: (name, e.text) for name in data.SPLITS for e in splits[name]}
  assert {path: text for path, (_, text) in read.items()} == {p: t for p, (_, t) in texts.items()}
  assert {p for p, (name, _) in read.items() if name == 'test'} == {
    p for p, (split, _) in texts.items() if split == 'test'
  }
  assert len(splits['val']) and all(texts[e.path][0] == 'train' for e in splits['val'])
  again = resolve(resolved)
  assert again[0] == resolved and again[1] == splits
  assert 'Left out' not in caplog.text
  extra = tmp_path / 'test' / 'images' / 'extra.png'  # an image its folder's list leaves out
  shutil.copy(next((tmp_path / 'test' / 'images').glob('*.png')), extra)
  resolve(config)
  assert f'which it gives no text of: {extra}.' in caplog.text
  extra.unlink()
  # One split folder listed, the other named by text: each read as it comes.
  (tmp_path / 'test' / 'metadata.jsonl').unlink()
  for path in (tmp_path / 'test' / 'images').glob('*.png'):
    path.rename(tmp_path / 'test' / f'{texts[str(path)][1]}.png')
  (tmp_path / 'test' / 'images').rmdir()
  _, splits = resolve(config)
  assert sorted(Path(e.path).stem for e in splits['test']) == sorted(
    text for split, text in texts.values() if split == 'test'
  )
  # A list that names an image outside every split folder: which split it is in is unknown.
  (tmp_path / 'other').mkdir()
  shutil.copy(next((tmp_path / 'train' / 'images').glob('*.png')), tmp_path / 'other' / 'x.png')
  with open(tmp_path / 'train' / 'metadata.jsonl', 'a') as f:
    f.write(json.dumps({'file_name': '../other/x.png', 'text': 'abcd'}) + '\n')
  with pytest.raises(DataError, match=r'other/x.png is in none of the split folders'):
    resolve(config)
  shutil.copy(tmp_path / 'train' / 'metadata.jsonl', tmp_path / 'train' / 'labels.jsonl')
  with pytest.raises(ConfigError, match=r'labels.jsonl, metadata.jsonl in .*train.* keep the one'):
    resolve(config)


def test_one_list_of_a_set_that_comes_split_keeps_its_split(tmp_path):
  """`labels.csv` beside train/ and test/, naming `train/0001.png` and `test/0002.png`."""
  rows, split_of = ['file,text'], {}
  for split, count, seed in (('train', 30, 1), ('test', 8, 2)):
    for i, path in enumerate(synthetic.generate(tmp_path / 'src' / split, count, seed=seed)):
      name = f'{split}/{i:04d}.png'
      (tmp_path / split).mkdir(exist_ok=True)
      shutil.copy(path, tmp_path / name)
      rows.append(f'{name},{path.stem}')
      split_of[str(tmp_path / name)] = split
  shutil.rmtree(tmp_path / 'src')
  (tmp_path / 'labels.csv').write_text('\n'.join(rows) + '\n')
  for labels_file in ('auto', 'labels.csv'):
    _, splits = resolve(config_for(tmp_path, alphabet='auto', labels_file=labels_file))
    assert {e.path for e in splits['test']} == {p for p, s in split_of.items() if s == 'test'}
    assert all(split_of[e.path] == 'train' for e in splits['train'] + splits['val'])
  # A list of train's images alone: val and test drawn from them.
  (tmp_path / 'labels.csv').write_text('\n'.join(r for r in rows if not r.startswith('test/')))
  _, splits = resolve(config_for(tmp_path, alphabet='auto'))
  assert len(splits['test']) and all(split_of[e.path] == 'train' for e in splits['test'])
  # One naming an image outside the split folders: not the set's own split, so drawn.
  (tmp_path / 'other').mkdir()
  shutil.copy(tmp_path / 'test' / '0000.png', tmp_path / 'other' / 'x.png')
  (tmp_path / 'labels.csv').write_text('\n'.join([*rows, 'other/x.png,abcd']) + '\n')
  _, splits = resolve(config_for(tmp_path, alphabet='auto'))
  drawn = {split_of.get(e.path, 'other') for e in splits['test']}
  assert len(splits['test']) == 4 and drawn != {'test'}


def test_a_text_file_beside_each_image_gives_its_text(tmp_path, caplog):
  """OCR ground truth as tesstrain and kraken keep it: `0001.gt.txt` (or `0001.txt`) beside
  `0001.png`, in the set's folder or in each of its split folders."""
  texts = {}
  for split, count, seed, suffix in (('train', 30, 1, '.gt.txt'), ('test', 8, 2, '.txt')):
    for i, path in enumerate(synthetic.generate(tmp_path / 'src' / split, count, seed=seed)):
      image = tmp_path / split / f'{i:04d}.png'
      image.parent.mkdir(exist_ok=True)
      shutil.copy(path, image)
      image.with_name(f'{i:04d}{suffix}').write_text(f'{path.stem}\r\n')  # written on Windows
      texts[str(image)] = (split, path.stem)
  shutil.rmtree(tmp_path / 'src')
  train = tmp_path / 'train'
  (train / '0001.gt.txt').write_text(texts[str(train / '0001.png')][1], encoding='utf-8-sig')
  caplog.set_level(logging.INFO)
  config = config_for(tmp_path, alphabet='auto', max_label_length=0)
  resolved, splits = resolve(config)
  assert resolved.labels_file == 'auto'  # found again on resume
  assert f'The texts of {train} are those of the text file beside each image' in caplog.text
  assert 'not an image file name' not in caplog.text
  read = {e.path: (name, e.text) for name in data.SPLITS for e in splits[name]}
  assert {path: text for path, (_, text) in read.items()} == {p: t for p, (_, t) in texts.items()}
  assert {p for p, (name, _) in read.items() if name == 'test'} == {
    p for p, (split, _) in texts.items() if split == 'test'
  }
  assert resolve(resolved) == (resolved, splits)
  # Its problems are named by file, and those images left out; the rest still read so.
  (train / '0002.gt.txt').unlink()
  (train / '0003.gt.txt').write_text('\n')
  (train / '0004.gt.txt').write_text('abcd\nefgh\n')
  caplog.clear()
  _, splits = resolve(config)
  for problem in (
    f'{train / "0002.png"}: no text file beside it, where the others have one',
    f'{train / "0003.gt.txt"}: no text',
    f'{train / "0004.gt.txt"}: 2 lines, where one text was expected',
  ):
    assert problem in caplog.text
  kept = {e.path for name in data.SPLITS for e in splits[name]}
  assert kept == set(texts) - {str(train / f'000{i}.png') for i in (2, 3, 4)}
  # `''` reads the names, as asked; where under half of the images have one, so does 'auto'.
  resolved, _ = resolve(config_for(tmp_path, alphabet='auto', max_label_length=0, labels_file=''))
  assert set(resolved.alphabet) <= set('0123456789')
  for text_file in sorted(train.glob('*.gt.txt'))[:20]:
    text_file.unlink()
  with pytest.raises(DataError, match=r'named by number') as e:
    resolve(config)
  assert str(e.value).endswith(
    '(config.labels_file); 9 of its 30 images have their text in a file beside them (0001.txt '
    'beside 0001.png), under half: not read. If the numbers are the texts, set config.labels_file '
    "to ''."
  )
  # Beside images named by their text, a `.txt` may hold anything a scraper kept: the names stay
  # the texts. A `.gt.txt` is ground truth wherever it lies, and comes before a `.txt`.
  named = tmp_path / 'named'
  named.mkdir()
  for path in synthetic.generate(tmp_path / 'src', 12, seed=3):
    shutil.copy(path, named / path.name)
    (named / f'{path.stem}.txt').write_text('https://example.com/captcha?id=1\n')
  assert {e.text for e in labelled.find_examples(config_for(named), named)[0]} == {
    p.stem for p in named.glob('*.png')
  }
  for path in named.glob('*.png'):
    (named / f'{path.stem}.gt.txt').write_text(path.stem.upper())
  assert {e.text for e in labelled.find_examples(config_for(named), named)[0]} == {
    p.stem.upper() for p in named.glob('*.png')
  }


def test_a_set_named_by_number_with_no_list_of_its_texts_is_refused(tmp_path):
  """A set named by number whose texts no list gives does not train on the numbers."""
  synthetic.generate(tmp_path / 'train', 30, seed=1, labels_file=True)  # 000000.png, labels.csv
  synthetic.generate(tmp_path / 'test', 8, seed=2, labels_file=True)
  (tmp_path / 'train' / 'labels.csv').rename(tmp_path / 'train' / 'texts.ods.bak')
  (tmp_path / 'train' / 'sizes.csv').write_text('file,width\n000000.png,200\n')
  with pytest.raises(DataError, match=r'named by number') as e:  # test's list is not train's
    resolve(config_for(tmp_path, alphabet='auto', max_label_length=0))
  assert str(e.value).endswith(
    'train/sizes.csv was not read as one (its header, file,width, names no column as the texts: '
    'config.labels_file set to it reads its second column as them). If the numbers are the '
    "texts, set config.labels_file to ''."
  )
  (tmp_path / 'train' / 'sizes.csv').unlink()
  for listing in tmp_path.glob('*/labels.csv'):
    listing.rename(listing.with_name('texts.ods.bak'))
  with pytest.raises(DataError, match=r'named by number, not by their text: give'):
    resolve(config_for(tmp_path, alphabet='auto', max_label_length=0))
  sorted((tmp_path / 'train').glob('*.png'))[13].unlink()  # one number gone: still numbers
  with pytest.raises(DataError, match=r'named by number'):
    resolve(config_for(tmp_path, alphabet='auto', max_label_length=0))
  resolved, _ = resolve(config_for(tmp_path, alphabet='auto', max_label_length=0, labels_file=''))
  assert resolved.alphabet == '0123456789'[: len(resolved.alphabet)]  # asked for: the numbers
  # Scored by a run whose labels are shorter than the numbers: not scored against them either.
  scored = config_for(tmp_path / 'train', max_label_length=5)
  with pytest.raises(DataError, match=r'named by number'):
    data.resolve(scored, functools.partial(models.output_steps, scored.model), one_set=True)


def test_two_folders_of_one_split_are_refused(tmp_path):
  for seed, name in enumerate(('train', 'val', 'dev')):
    synthetic.generate(tmp_path / name, 4, seed=seed)
  with pytest.raises(DataError, match=r'holds dev/ and val/, which both name one split'):
    resolve(config_for(tmp_path))


def test_a_folder_that_cannot_be_listed_is_named(tmp_path, monkeypatch):
  synthetic.generate(tmp_path, 4, seed=1)

  def refused(self):
    raise PermissionError(13, 'Permission denied', str(self))

  monkeypatch.setattr(Path, 'iterdir', refused)
  with pytest.raises(DataError, match=r'cannot be read \(Permission denied\)'):
    resolve(config_for(tmp_path))
