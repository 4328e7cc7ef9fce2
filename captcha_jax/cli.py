"""The command lines: flags, process set-up, and errors → exit codes, in one place.

Each command is a function of its arguments (tests call it directly), installed as a console
script by pyproject.toml; `python -m captcha_jax.<module>` runs the same function:

| command | `python -m` | does |
| --- | --- | --- |
| `captcha-jax-train` | `captcha_jax.train` | trains and evaluates a run |
| `captcha-jax-self-train` | `captcha_jax.self_train` | rounds of training on a run's own readings |
| `captcha-jax-evaluate` | `captcha_jax.evaluate` | a run's report, per split or on another folder |
| `captcha-jax-predict` | `captcha_jax.predict` | reads image files and folders |
| `captcha-jax-export` | `captcha_jax.export` | writes a run's reader as jax.export or ONNX |
| `captcha-jax-serve` | `captcha_jax.serve` | an HTTP reading service |
| `captcha-jax-synthetic` | `captcha_jax.synthetic` | a folder of generated captchas |
| `captcha-jax-port` | `captcha_jax.port` | torchvision ResNet-18 weights → the Flax backbone |

A problem the user can fix (`errors.UserError`) ends a command with `error: …` on stderr and exit
status 2, never a traceback; a stopped training exits with status 3 once its checkpoint is saved.
"""

import argparse
import csv
import difflib
import importlib
import importlib.util
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from captcha_jax import settings
from captcha_jax.errors import DataError, Stopped, UserError
from captcha_jax.settings import MIN_SIDE

EXIT_USER_ERROR = 2
EXIT_STOPPED = 3
EXIT_SOME_FAILED = 1  # predict: some files could not be read, the others were


def _run(action: Callable[[], int | None]) -> None:
  """Runs a command's action and exits with its status; user errors become one line."""
  logging.basicConfig(level=logging.INFO, format='%(levelname)s %(message)s', force=True)
  logging.getLogger('jax').setLevel(logging.WARNING)  # its backend probing is not news
  try:
    status = action() or 0
  except UserError as e:
    print(f'error: {e}', file=sys.stderr)
    status = EXIT_USER_ERROR
  except OSError as e:
    if e.filename is None:  # not about a path the user gave
      raise
    print(f'error: {e.filename}: {e.strerror}', file=sys.stderr)
    status = EXIT_USER_ERROR
  except Stopped as e:
    print(e, file=sys.stderr)
    status = EXIT_STOPPED
  except KeyboardInterrupt:
    # Ctrl-C outside a training loop's own handling (e.g. while XLA compiles): the interpreter's
    # teardown raced XLA's threads and segfaulted, so leave at once; there is no work to save.
    print('Interrupted.', file=sys.stderr)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(130)
  sys.exit(status)


def _check_folder_of(parser: argparse.ArgumentParser, flag: str, path: str) -> None:
  """Refuses an output whose folder does not exist before any work is done for it."""
  folder = Path(path).expanduser().absolute().parent
  if not folder.is_dir():
    parser.error(f'{flag} {path}: the folder {str(folder)!r} does not exist')


def _quiet_orbax() -> None:
  from captcha_jax import checkpoints

  checkpoints.quiet_orbax()


def _reading_flags(parser) -> None:
  """--allowed and --length, restricting every reading (predict, serve)."""
  parser.add_argument('--allowed', default='', help='Read only these characters.')
  parser.add_argument(
    '--length',
    type=int,
    default=0,
    help="Read texts of this many characters (0: the model's fixed length, if it has one; the "
    'raw_text column keeps the uncorrected reading).',
  )


def _check_reading_flags(parser, args) -> None:
  if args.length < 0:
    parser.error("--length must be 0 (the model's own) or more")


def _cpu_tuning_flag(parser) -> None:
  parser.add_argument(
    '--cpu_tuning',
    action='store_true',
    help='One JAX device per CPU core, and compiler memory given back (README, "CPU tuning").',
  )


# --- train ---


def train(argv: Sequence[str] | None = None) -> None:
  """python -m captcha_jax.train --config configs/default.py --workdir DIR [--config.x=y]"""
  from absl import flags
  from ml_collections import config_flags

  from captcha_jax import settings

  fv = flags.FlagValues()
  config_flags.DEFINE_config_file(
    'config', None, 'Path to a config file.', flag_values=fv, lock_config=True
  )
  flags.DEFINE_string('workdir', None, 'Where checkpoints, metrics and results go.', flag_values=fv)
  flags.DEFINE_string(
    'coordinator_address',
    None,
    'host:port of process 0 for a multi-process run, or "auto" to let jax detect the cluster.',
    flag_values=fv,
  )
  flags.DEFINE_integer('num_processes', None, 'Processes in a multi-process run.', flag_values=fv)
  flags.DEFINE_integer('process_id', None, 'This process, 0..num_processes-1.', flag_values=fv)
  flags.DEFINE_bool(
    'cpu_tuning',
    False,
    'One JAX device per CPU core, and compiler memory given back (README, "CPU tuning").',
    flag_values=fv,
  )
  argv = list(sys.argv if argv is None else ['captcha-jax-train', *argv])
  if '--help' in argv or '-h' in argv:  # before parsing: absl knows no --help of its own here
    print(f'usage: {train.__doc__}\n\n{fv.get_help()}')
    sys.exit(0)
  given = flags.FlagValues()  # the config file's path alone, to load it beside its siblings
  flags.DEFINE_string('config', None, '', flag_values=given)
  try:
    given(argv, known_only=True)
    with settings.config_file_imports(given.config):
      fv(argv)
    for name in ('config', 'workdir'):
      if fv[name].value is None:
        raise flags.Error(f'--{name} is required')
    config = fv.config
    config.keys()  # a config file that failed to load raises only when first used
  except (flags.Error, ValueError, OSError) as e:
    print(_unknown_setting(argv, given['config'].value) or f'error: {e}', file=sys.stderr)
    sys.exit(EXIT_USER_ERROR)
  except Exception as e:  # the config file's own code: a syntax error, a failed import
    config_file = given['config'].value
    problem = f'{type(e).__name__}: {e}'
    if isinstance(e, AttributeError) and e.name == 'get_config':
      problem = 'it defines no get_config()'
    message = _unknown_setting(argv, config_file) or f'error: config file {config_file}: {problem}'
    print(message, file=sys.stderr)
    sys.exit(EXIT_USER_ERROR)

  def action():
    from captcha_jax import host, train

    _quiet_orbax()
    after_compile = lambda: None  # noqa: E731
    # A multi-process run's launcher decides its devices.
    if fv.cpu_tuning and not fv.coordinator_address:
      host.tune_cpu(config.batch_size, config.eval_batch_size)
      after_compile = host.release_free_memory
    initialize_distributed(fv.coordinator_address, fv.num_processes, fv.process_id)
    if fv.cpu_tuning and (hint := host.huge_pages_hint()):
      logging.info(hint)
    train.train_and_evaluate(config, fv.workdir, after_compile=after_compile)

  _run(action)


def _unknown_setting(argv: Sequence[str], config_file: str | None) -> str:
  """The error for a `--config.x.y=v` naming a setting the config file's get_config() lacks, with
  its likeliest spelling; else ''. For the errors ml_collections gives such a flag, which blame
  the flag or the config file without saying which setting is misspelt."""
  if not config_file:
    return ''
  try:
    with settings.config_file_imports(config_file):
      spec = importlib.util.spec_from_file_location('captcha_jax_config_file', config_file)
      module = importlib.util.module_from_spec(spec)
      spec.loader.exec_module(module)
      config = module.get_config()
  except Exception:  # the file itself is broken: the error at hand says so
    return ''
  for arg in argv:
    name = arg.split('=', 1)[0].removeprefix('--config.')
    node, parent = config, ''
    for key in name.split('.') if arg.startswith('--config.') else ():
      if not hasattr(node, 'keys'):
        return f'error: --config.{name}: config.{parent} is one setting, with no {key!r} in it.'
      parent = f'{parent}.{key}' if parent else key
      if key not in node:
        close = difflib.get_close_matches(key, list(node.keys()), 1)
        advice = f' (did you mean {close[0]}?)' if close else ''
        return f'error: --config.{name}: {config_file} has no setting {key!r}{advice}.'
      node = node[key]
  return ''


def initialize_distributed(
  coordinator_address: str | None, num_processes: int | None, process_id: int | None
) -> None:
  """Joins a multi-process run through jax.distributed; a no-op for a single process.

  With a coordinator address, the count and id must be given too (flags or the JAX_* variables
  jax reads); with `auto`, jax detects the cluster (Cloud TPU, SLURM, ...) itself.
  """
  if not coordinator_address:
    return
  import jax

  # CPU processes exchange gradients over gloo; GPU/TPU use their own collectives.
  jax.config.update('jax_cpu_collectives_implementation', 'gloo')
  if coordinator_address == 'auto':
    jax.distributed.initialize()
  else:
    jax.distributed.initialize(coordinator_address, num_processes, process_id)
  logging.info(
    'Process %d of %d; %d local and %d global devices.',
    jax.process_index(),
    jax.process_count(),
    jax.local_device_count(),
    jax.device_count(),
  )


# --- self-train ---


def self_train(argv: Sequence[str] | None = None) -> None:
  """python -m captcha_jax.self_train --workdir DIR --unlabelled IMAGES [--rounds 4] [--epochs E]
  [--restart]"""
  parser = argparse.ArgumentParser(prog='captcha-jax-self-train', description=self_train.__doc__)
  parser.add_argument('--workdir', required=True, help='A training run on your labelled images.')
  parser.add_argument(
    '--unlabelled', nargs='+', required=True, help='Unlabelled images of the site: files, folders.'
  )
  parser.add_argument(
    '--rounds', type=int, default=4, help='Rounds, each trained into DIR-roundR (default 4).'
  )
  parser.add_argument(
    '--epochs',
    type=int,
    default=0,
    help='Epochs of each round (default: as many steps as DIR trained, and with --restart at '
    'least 8).',
  )
  parser.add_argument(
    '--restart',
    action='store_true',
    help='Train each round from where DIR started (its config.init_from, e.g. the shipped '
    'reader) instead of from the run before: slower to a good reader, and a point or two better.',
  )
  _cpu_tuning_flag(parser)
  args = parser.parse_args(argv)
  if args.rounds < 1 or args.epochs < 0:
    parser.error('--rounds must be 1 or more, --epochs 0 (as many steps as DIR) or more')

  def action():
    from captcha_jax import host
    from captcha_jax import self_train as rounds
    from captcha_jax import workdir as run_folder

    _quiet_orbax()
    after_compile = lambda: None  # noqa: E731
    if args.cpu_tuning:
      config = run_folder.read_config(Path(args.workdir))
      host.tune_cpu(config.batch_size, config.eval_batch_size)
      after_compile = host.release_free_memory
    last = rounds.run_rounds(
      args.workdir,
      args.unlabelled,
      args.rounds,
      args.epochs,
      restart=args.restart,
      after_compile=after_compile,
    )
    print(f'Self-trained: read with --workdir {last}')

  _run(action)


# --- evaluate ---


def evaluate(argv: Sequence[str] | None = None) -> None:
  """python -m captcha_jax.evaluate --workdir DIR [--data_dir IMAGES [--labels_file CSV]]"""
  parser = argparse.ArgumentParser(prog='captcha-jax-evaluate', description=evaluate.__doc__)
  parser.add_argument('--workdir', required=True, help='The --workdir of a training run.')
  parser.add_argument(
    '--data_dir', help='Another folder of captchas named by their text, scored as one set.'
  )
  parser.add_argument(
    '--labels_file',
    help='With --data_dir: its texts in a file, as config.labels_file takes (path,text lines); '
    "by default the file there that lists its images, else the names; '' for the names.",
  )
  parser.add_argument(
    '--label_pattern',
    help="With --data_dir: the text's part of the names, as config.label_pattern takes ('auto': "
    "worked out from the names; a regular expression; '' for the whole name); by default the "
    "run's own.",
  )
  _cpu_tuning_flag(parser)
  args = parser.parse_args(argv)
  for flag in ('labels_file', 'label_pattern'):
    if getattr(args, flag) is not None and not args.data_dir:
      parser.error(f'--{flag} goes with --data_dir (a run scores its own data as it trained)')
  if args.label_pattern is not None and (
    problem := settings.field_problem('label_pattern', args.label_pattern)
  ):
    parser.error(f'--label_pattern {args.label_pattern!r} {problem}')

  def action():
    from captcha_jax import evaluate, host, predict

    if args.cpu_tuning:
      host.tune_cpu(predict.BATCH_SIZE)
    _quiet_orbax()
    labels_file = 'auto' if args.labels_file is None else args.labels_file
    report = evaluate.evaluate_workdir(
      args.workdir, args.data_dir, labels_file=labels_file, label_pattern=args.label_pattern
    )
    print(evaluate.format_report(report), end='')

  _run(action)


# --- predict ---


def _escape(text: str) -> str:
  """A file name or text as one TSV field: no tab or newline can forge a column or a line."""
  return text.replace('\\', '\\\\').replace('\t', '\\t').replace('\n', '\\n').replace('\r', '\\r')


def predict(argv: Sequence[str] | None = None) -> None:
  """python -m captcha_jax.predict --workdir DIR IMAGE_OR_FOLDER... [--output results.csv]"""
  parser = argparse.ArgumentParser(prog='captcha-jax-predict', description=predict.__doc__)
  parser.add_argument('inputs', nargs='+', help='Image files, or folders of images.')
  source = parser.add_mutually_exclusive_group(required=True)
  source.add_argument(
    '--workdir', help='The --workdir of a training run, or a folder export --format reader wrote.'
  )
  source.add_argument('--onnx', help='A model written by captcha-jax-export --format onnx.')
  source.add_argument(
    '--pretrained', action='store_true', help='The general reader shipped with the package.'
  )
  parser.add_argument('--output', help='Write the readings to this .csv or .jsonl file too.')
  _reading_flags(parser)
  _cpu_tuning_flag(parser)
  args = parser.parse_args(argv)
  if args.output and not args.output.endswith(('.csv', '.jsonl')):
    parser.error('--output must end in .csv or .jsonl')
  if args.output:
    _check_folder_of(parser, '--output', args.output)
    if Path(args.output).expanduser().is_dir():
      parser.error(f'--output {args.output} is a folder: give a file name (.csv or .jsonl)')
    if not _readings_or_nothing(Path(args.output).expanduser()):
      parser.error(
        f'--output {args.output} holds something else than readings (your labels?): give '
        'another file name, or move it away first'
      )
  _check_reading_flags(parser, args)

  def action() -> int:
    from tqdm import tqdm

    from captcha_jax import host
    from captcha_jax import predict as predicting

    if args.cpu_tuning:
      host.tune_cpu(predicting.BATCH_SIZE)
    _quiet_orbax()
    reader = load_reader(args.workdir, args.onnx, args.pretrained)
    reader.check_restriction(args.allowed, args.length)  # before --output is touched
    paths = list(predicting.expand_paths(args.inputs))
    failed = 0
    # Written beside --output and moved over it once every file is read: a run that fails or is
    # interrupted leaves the file it would replace as it was, and its readings so far beside it.
    partial = f'{args.output}.partial'
    out = open(partial, 'w', newline='', encoding='utf-8') if args.output else None  # noqa: SIM115
    rows = csv.writer(out) if out and args.output.endswith('.csv') else None
    if rows:
      rows.writerow(predicting.READINGS_COLUMNS)
    bar = tqdm(total=len(paths), unit='image', disable=len(paths) <= 32, file=sys.stderr)
    try:
      for path, reading in predicting.read_files(reader, paths, args.allowed, args.length):
        bar.update()
        if isinstance(reading, UserError):
          failed += 1
          bar.write(f'error: {reading}', file=sys.stderr)  # on a line of its own, not the bar's
          continue
        sys.stdout.write(f'{_escape(str(path))}\t{reading.text}\t{reading.confidence:.3f}\n')
        if rows:
          rows.writerow(predicting.readings_row(path, reading))
        elif out:
          # Absolute, as in a .csv: the file may be read from other folders.
          line = {'file': os.path.abspath(path), **vars(reading)}
          out.write(json.dumps(line, ensure_ascii=False) + '\n')
    except BaseException:
      if out:
        print(f'The readings so far are in {partial}; {args.output} is as it was.', file=sys.stderr)
      raise
    finally:
      bar.close()
      if out:
        out.close()
    if out:
      os.replace(partial, args.output)
    if failed:
      print(f'error: {failed} of {len(paths)} file(s) could not be read.', file=sys.stderr)
      return EXIT_SOME_FAILED
    return 0

  _run(action)


def _readings_or_nothing(path: Path) -> bool:
  """Whether `path` may be written over with readings: it holds nothing, or readings of an
  earlier `predict --output` (not a labels list, which they would replace)."""
  from captcha_jax import labelled

  if not path.is_file() or not path.stat().st_size:
    return True
  try:
    labelled.read_readings(path, 0.0)
  except DataError:
    return False
  return True


def _onnx_module(name: str):
  """captcha_jax.`name`, which needs the `onnx` extra; a UserError naming it when missing."""
  try:
    return importlib.import_module(f'captcha_jax.{name}')
  except ModuleNotFoundError as e:
    if e.name not in ('onnx', 'onnxruntime'):
      raise
    raise UserError(
      f'{e.name} is not installed: pip install "captcha-jax[onnx]" (or pip install onnx '
      'onnxruntime).'
    ) from None


def load_reader(
  workdir: str | None = None,
  onnx: str | None = None,
  pretrained: bool = False,
  onnx_threads: int | None = None,
  batch_size: int | None = None,
):
  """A reader (`predict.Predictor` or `onnx_reader.OnnxReader`, on `onnx_threads` threads) of a
  run, of an ONNX file, or the pretrained one, reading at most `batch_size` images a call
  (default: the readers' own); JAX is imported only for a run or the pretrained reader."""
  if (workdir is not None) + (onnx is not None) + pretrained != 1:
    raise UserError(
      'Give exactly one of --workdir (a training run), --onnx (an exported model) or '
      '--pretrained (the reader shipped with the package).'
    )
  sized = {'batch_size': batch_size} if batch_size else {}
  if onnx:
    return _onnx_module('onnx_reader').OnnxReader(onnx, threads=onnx_threads, **sized)
  from captcha_jax.predict import Predictor

  return Predictor.pretrained(**sized) if pretrained else Predictor.from_workdir(workdir, **sized)


def serving_reader(
  workdir: str | None, onnx: str | None, pretrained: bool, workers: int, max_batch: int
):
  """The reader `serve` serves (`load_reader`): `max_batch` images a call, and an ONNX one on
  cores / `workers` threads, since `workers` calls run side by side."""
  from captcha_jax import host

  threads = max(1, host.available_cores() // max(workers, 1))
  return load_reader(workdir, onnx, pretrained, onnx_threads=threads, batch_size=max_batch)


# --- export ---


def export(argv: Sequence[str] | None = None) -> None:
  """python -m captcha_jax.export --workdir DIR --out FILE [--format jax|onnx|reader]"""
  parser = argparse.ArgumentParser(prog='captcha-jax-export', description=export.__doc__)
  parser.add_argument(
    '--workdir',
    required=True,
    help='The --workdir of a training run, or a folder export --format reader wrote.',
  )
  parser.add_argument('--out', required=True, help='File to write (a folder with --format reader).')
  parser.add_argument(
    '--format',
    choices=('jax', 'onnx', 'reader'),
    help='jax.export (runs with jax and NumPy), ONNX (onnxruntime, any language), or a reader '
    'folder (reader.json + reader.msgpack, the layout of the pretrained reader shipped in '
    'captcha_jax/pretrained/); default: onnx for a .onnx file name, else jax.',
  )
  parser.add_argument(
    '--note', default='', help='For --format reader: how the run was made, kept in reader.json.'
  )
  args = parser.parse_args(argv)
  _check_folder_of(parser, '--out', args.out)
  out = Path(args.out)
  if args.format == 'reader' and ((out / 'config.json').exists() or (out / 'checkpoints').exists()):
    parser.error(
      f"--out {args.out} is a training run's folder: the reader would be read there instead of "
      'its checkpoints. Write it to a folder of its own.'
    )
  if args.format != 'reader' and out.is_dir():
    parser.error(f'--out {args.out} is a folder: give a file name (a folder is --format reader).')

  def action():
    from captcha_jax import workdir as run_folder
    from captcha_jax.predict import Predictor

    _quiet_orbax()
    predictor = Predictor.from_workdir(args.workdir)
    if args.format == 'reader':
      from captcha_jax import checkpoints, transfer

      step = predictor.step  # the checkpoint read: the chosen intact one
      try:
        metrics = checkpoints.saved_metrics(args.workdir, step)
        validation = {k: metrics[k] for k in ('val_accuracy', 'val_cer')}
      except (OSError, ValueError, KeyError):
        validation = None  # a mid-epoch save, never validated
      transfer.save_reader(
        predictor.config,
        predictor.variables,
        Path(args.out),
        command=args.note,
        step=step,
        validation=validation,
      )
      print(f'Wrote {args.out}/reader.json and reader.msgpack (step {step}, {validation}).')
      return
    if (args.format or ('onnx' if args.out.lower().endswith('.onnx') else 'jax')) == 'onnx':
      onnx_export = _onnx_module('onnx_export')
      blob = onnx_export.serialize(onnx_export.to_onnx(predictor.config, predictor.variables))
      how = 'read it with captcha_jax.onnx_reader.OnnxReader, or any ONNX runtime'
    else:
      from captcha_jax import export as exporting

      blob = exporting.export_predictor(predictor)
      how = 'load it with captcha_jax.export.load'
    run_folder.write_atomic(args.out, blob)
    print(f'Wrote {args.out} ({len(blob) / 1e6:.1f} MB): {how}.')

  _run(action)


# --- serve ---


def serve(argv: Sequence[str] | None = None) -> None:
  """python -m captcha_jax.serve (--workdir DIR | --onnx FILE) [--port 8000]"""
  from captcha_jax import serve as serving

  parser = argparse.ArgumentParser(prog='captcha-jax-serve', description=serve.__doc__)
  source = parser.add_mutually_exclusive_group(required=True)
  source.add_argument(
    '--workdir',
    help='A training run: serve its chosen checkpoint; or a folder export --format reader wrote.',
  )
  source.add_argument('--onnx', help='An exported ONNX model to serve.')
  source.add_argument(
    '--pretrained', action='store_true', help='The general reader shipped with the package.'
  )
  parser.add_argument(
    '--host',
    default='127.0.0.1',
    help='Address to listen on (default 127.0.0.1, this machine only; 0.0.0.0 for all).',
  )
  parser.add_argument('--port', type=int, default=8000, help='0 to 65535 (0: any free port).')
  limits = (  # create_app's keywords, each a flag
    ('max_batch', int, serving.DEFAULT_MAX_BATCH, 'Most images per model call.'),
    ('max_wait_ms', float, serving.DEFAULT_MAX_WAIT_MS, 'Longest a request waits for others.'),
    (
      'workers',
      int,
      serving.DEFAULT_WORKERS,
      'Model calls side by side (each ONNX call then gets cores/workers threads).',
    ),
    ('max_body_bytes', int, serving.DEFAULT_MAX_BODY_BYTES, 'Largest request body.'),
    ('max_images', int, serving.DEFAULT_MAX_IMAGES, 'Most files a request.'),
    (
      'max_queued',
      int,
      serving.DEFAULT_MAX_QUEUED,
      'Images waiting for the model beyond which a request is answered 503 (busy).',
    ),
    (
      'max_pixels',
      int,
      serving.DEFAULT_MAX_PIXELS,
      'An image declaring more pixels (width × height) is refused before decoding.',
    ),
  )
  for flag, kind, default, explained in limits:
    parser.add_argument(f'--{flag}', type=kind, default=default, help=explained)
  _reading_flags(parser)
  parser.add_argument(
    '--no_warmup',
    dest='warmup',
    action='store_false',
    help='Start without reading blank batches first (the first requests then wait on compiles).',
  )
  _cpu_tuning_flag(parser)
  args = parser.parse_args(argv)
  _check_reading_flags(parser, args)
  if not 0 <= args.port <= 65535:
    parser.error(f'--port must be 0 to 65535, got {args.port}')

  def action():
    from captcha_jax import host

    serving.require_serving()  # before loading a model for nothing
    if args.cpu_tuning and not args.onnx:
      host.tune_cpu(args.max_batch)
    _quiet_orbax()
    serving.serve_reader(
      serving_reader(args.workdir, args.onnx, args.pretrained, args.workers, args.max_batch),
      host=args.host,
      port=args.port,
      warmup=args.warmup,
      **{flag: getattr(args, flag) for flag, *_ in limits},
      allowed=args.allowed,
      length=args.length,
    )

  _run(action)


# --- synthetic ---


def synthetic(argv: Sequence[str] | None = None) -> None:
  """python -m captcha_jax.synthetic --out DIR [--count N] [--length 4-7] [--style NAME]"""
  from captcha_jax import synthetic as generating

  def length(value: str) -> tuple[int, int]:
    try:
      return generating.length_range(value)
    except ValueError as e:
      raise argparse.ArgumentTypeError(str(e)) from e

  parser = argparse.ArgumentParser(prog='captcha-jax-synthetic', description=synthetic.__doc__)
  parser.add_argument('--out', required=True, help='Folder to write the images to.')
  parser.add_argument('--count', type=int, default=1000, help='How many captchas.')
  parser.add_argument('--alphabet', default=generating.DEFAULT_ALPHABET, help='Symbols to draw.')
  parser.add_argument('--length', type=length, default=(5, 5), help="Symbols each: '5' or '4-7'.")
  parser.add_argument('--width', type=int, default=200, help='Image width in pixels.')
  parser.add_argument('--height', type=int, default=50, help='Image height in pixels.')
  parser.add_argument('--case', choices=generating.CASES, default='keep', help='Letter case.')
  parser.add_argument(
    '--style', choices=generating.STYLES, default='dataset', help="'varied': one per image."
  )
  parser.add_argument('--seed', type=int, default=0, help='Random seed.')
  parser.add_argument(
    '--labels_file',
    action='store_true',
    help='Name images by index and write their texts to labels.csv (file,text).',
  )
  args = parser.parse_args(argv)
  if min(args.width, args.height) < MIN_SIDE or args.count < 1:
    parser.error(f'--width and --height must be {MIN_SIDE} or more, --count 1 or more')
  if any(c.isspace() for c in args.alphabet):  # a text's edge is read without them
    parser.error('--alphabet must hold no spaces or other whitespace')

  def action():
    paths = generating.generate(
      args.out,
      args.count,
      alphabet=args.alphabet,
      length=args.length,
      width=args.width,
      height=args.height,
      case=args.case,
      style=args.style,
      seed=args.seed,
      labels_file=args.labels_file,
    )
    print(f'Wrote {len(paths)} captchas to {args.out}')

  _run(action)


# --- port ---


def port(argv: Sequence[str] | None = None) -> None:
  """python -m captcha_jax.port --torchvision_weights resnet18-f37072fd.pth --out DIR"""
  parser = argparse.ArgumentParser(prog='captcha-jax-port', description=port.__doc__)
  parser.add_argument('--torchvision_weights', required=True, help='A torchvision resnet18 .pth.')
  parser.add_argument('--out', required=True, help='Folder for the orbax checkpoint.')
  args = parser.parse_args(argv)

  def action():
    from captcha_jax import port as porting

    params, stats, unused = porting.convert_backbone(
      porting.read_torch_weights(args.torchvision_weights)
    )
    out = porting.save_backbone(params, stats, args.out)
    if unused:
      print(f'Not used: {", ".join(sorted(unused))}')
    print(f'Wrote the ResNet-18 backbone to {out}; train from it with --config.pretrained={out}')

  _run(action)
