"""Errors that name their cause. The command line prints them without a traceback and exits 2."""


class HygieiaError(Exception):
    """A failure with a message meant for a person: it names the file, field or step at fault."""


class DataError(HygieiaError, ValueError):
    """Bad input data: a missing or corrupt file, a missing column, a wrong shape, NaN."""
