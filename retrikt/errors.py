"""Errors that RetriKT reports to users as one clear sentence, not as a traceback."""


class RetriktError(Exception):
    """Base class: something about the user's input or environment is wrong, and says what."""


class DataError(RetriktError):
    """A data file is missing, malformed, or holds a label the task does not know."""


class ModelNotInstalledError(RetriktError):
    """A model preset's carrier package is not installed; the message names the install command."""


class ModelFileError(RetriktError):
    """A model file is present but corrupt (wrong size or checksum)."""


class StoreError(RetriktError):
    """A knowledge store is missing, truncated, altered, or incompatible with the caller."""


class ConfigError(RetriktError, ValueError):
    """A setting is out of range, misspelt, or not one of its choices; the message names it."""
