"""The benches' shared runner: a folder's command is run once, resumed, or refused if changed."""

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / 'bench'))
from common import run_logged  # noqa: E402


def test_a_finished_command_gives_its_time_and_another_is_refused(tmp_path):
  marks = tmp_path / 'marks'
  command = [sys.executable, '-c', f'open({str(marks)!r}, "a").write("x")']
  seconds = run_logged(command, tmp_path / 'run.log', 'the run')
  assert run_logged(command, tmp_path / 'run.log', 'the run') == seconds
  assert marks.read_text() == 'x'  # run once
  other = [*command[:-1], command[-1] + '  # with another flag']
  with pytest.raises(SystemExit, match='holds a run of another command'):
    run_logged(other, tmp_path / 'run.log', 'the run')
  record = tmp_path / 'run.wall_s.json'
  record.write_text(json.dumps({'command': command, 'seconds': None}))  # stopped half-way
  run_logged(command, tmp_path / 'run.log', 'the run')
  assert marks.read_text() == 'xx'  # resumed: run again


def test_a_failing_command_is_named(tmp_path):
  with pytest.raises(SystemExit, match='the run failed; see .*run.log'):
    run_logged([sys.executable, '-c', 'raise SystemExit(3)'], tmp_path / 'run.log', 'the run')
