"""The one exception type for bad user input (files, configs, keys).

The CLI turns it into a one-line message on stderr and exit status 2, without a traceback.
Raise it with a message that names the file and the row, column or key at fault.
"""


class CMMInputError(ValueError):
    """Bad input from the user: a malformed data file, an unknown config key, a bad value."""

    exit_code = 2
