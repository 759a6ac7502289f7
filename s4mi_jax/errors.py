"""Errors meant for the person running the code, not for a debugger.

`main` catches `S4MIError` and prints its message alone (no traceback wall), so every message must name the
file, field or config key at fault and say what to do about it.
"""


class S4MIError(Exception):
    """A problem with the user's input (data, config, workdir) that the user can fix."""


class DataError(S4MIError):
    """Bad or missing data: the message names the file or folder."""


class ConfigError(S4MIError):
    """A bad config value: the message names the config key."""
