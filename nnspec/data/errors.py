"""The data layer's one exception: a problem the user must fix, worded to be printed as-is."""

class DataError(Exception):
    """A user-facing problem with data: missing, corrupt or misconfigured.

    The message is a complete sentence meant to be printed as-is by the CLI:
    it says what is wrong, which file or setting, and what to do about it.
    """

    exit_code = 2  # bad input, like an invalid spec (see nnspec.cli)
