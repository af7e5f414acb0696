"""Errors a user can cause. Each carries one line that names the problem and the fix.

The CLI prints ``advrep: error: <message>`` and exits with status 2 for these; anything
else is a bug and keeps its traceback.
"""


class AdvrepError(Exception):
    """A problem with the user's input (config, data, checkpoint), not a bug in advrep."""


class ConfigError(AdvrepError):
    """Unknown config key, bad value, or a combination that cannot run."""


class DataError(AdvrepError):
    """Missing, corrupt or malformed dataset files."""


class CheckpointError(AdvrepError):
    """A checkpoint that is missing, unreadable, or does not fit the requested model."""


class TrainingError(AdvrepError):
    """Training cannot continue (for example a NaN loss); the last good checkpoint is kept."""


class StorageError(AdvrepError):
    """A file cannot be written (disk full, no permission) or a run directory is in use;
    whatever was complete before is kept."""
