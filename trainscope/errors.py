"""The one exception type users see: bad input named plainly, never a raw traceback."""


class TrainscopeError(Exception):
    """A problem with the user's input (run directory, log file, rule id, config)."""
