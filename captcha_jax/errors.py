"""The errors a user can act on: each message names the file or setting and what to change.

The commands print them as `error: …` and exit with status 2 (`cli.py`); anything else is a bug
and keeps its traceback.
"""


class UserError(Exception):
  """A problem in what the user gave (data, settings, a workdir, a file), not in the code."""


class DataError(UserError, ValueError):
  """Input data that cannot be used; the message names the file(s) and what to do."""


class ConfigError(UserError, ValueError):
  """Settings or a workdir that cannot be used as given; the message says what to change."""
