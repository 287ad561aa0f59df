"""The one exception type for user mistakes: caught by the CLI, exit code 2, no traceback."""


class UserError(Exception):
    """Bad input from the user (flag, preset, model, data); the message says where and what."""


class ResumeMismatch(UserError):
    """An intact checkpoint the run's settings cannot continue (another optimizer, another
    model): every other checkpoint of the run would say the same, so none is tried."""
