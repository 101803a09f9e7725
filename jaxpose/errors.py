"""Errors that blame the user's input (a file, a key, a value) rather than jaxpose.

`jaxpose.launch` prints these as one line and exits non-zero, without a traceback.
"""


class UserError(Exception):
  """Bad input from the user: the message names the file, key or value at fault."""


class DatasetError(UserError):
  """A dataset file is missing, unreadable or does not follow its format."""


class TrainingDiverged(Exception):
  """The loss or gradients became non-finite; the message names the step and last checkpoint."""


class Preempted(Exception):
  """SIGTERM arrived; training stopped after a checkpoint. The message names it. Not an
  error: the CLI prints it and exits 0, and re-running the command resumes there."""
