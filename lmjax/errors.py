"""The one exception type for user mistakes.

A `UserError` carries a message written for the person at the keyboard: what was wrong, the
value seen, and what to do. The CLI prints it without a traceback and exits non-zero; library
callers can catch it like any exception.
"""


class UserError(ValueError):
  """A mistake in a config, a path, data or an argument, explained for the user."""


class NonFiniteLoss(UserError):
  """A training step's loss or gradient norm was NaN or infinite (`train.nan_policy=stop`).

  The CLI exits with `exit_code` (3), so job scripts can tell divergence from a bad config (2).
  """

  exit_code = 3


class WriteFailed(UserError):
  """The disk refused a write (full, read-only, no permission): not the user's input, but
  theirs to fix. The CLI exits with `exit_code` (4); nothing written before is touched."""

  exit_code = 4
