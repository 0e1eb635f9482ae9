"""User-facing errors: each carries one sentence saying what is wrong and how to fix it.

The CLI prints these without a traceback; anything else is a bug and keeps its
traceback.
"""


class CDLibError(Exception):
    """Base class for errors caused by input (config, data, checkpoints), not by bugs."""


class ConfigError(CDLibError, ValueError):
    """A wrong recipe, method, model name or hyper-parameter."""


class DataError(CDLibError, FileNotFoundError):
    """A missing or malformed data folder."""


class CheckpointError(CDLibError, ValueError):
    """A corrupt checkpoint, or one that does not fit the model."""


class TrainingDiverged(CDLibError):
    """A loss became NaN or infinite: the learning rate or a loss weight is too high for this run."""
