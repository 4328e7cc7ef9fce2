"""The errors a user can act on: each message names the file or setting and what to change.

The commands print them as `error: …` and exit with status 2 (`cli.py`); anything else is a bug
and keeps its traceback. Here too, so that every command catches it without importing the
training code (and JAX with it): `Stopped`, which ends a run that resumes (status 3).
"""


class UserError(Exception):
  """A problem in what the user gave (data, settings, a workdir, a file), not in the code."""


class DataError(UserError, ValueError):
  """Input data that cannot be used; the message names the file(s) and what to do."""


class ConfigError(UserError, ValueError):
  """Settings or a workdir that cannot be used as given; the message says what to change."""


class Stopped(Exception):  # noqa: N818 - what happened, not an error
  """A stop signal ended the run after a checkpoint was saved; rerunning resumes it."""
