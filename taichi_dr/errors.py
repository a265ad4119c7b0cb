"""The one exception type users see: a problem with their input, told in one line."""


class UserError(ValueError):
    """Bad input or an unavailable resource. The message names the problem and the fix;
    the CLI prints it as ``error: <message>`` and exits with status 2."""
