"""cdlib: Channel Distillation (Zhou et al. 2020) — CD, GKD and EDT — and its baselines.

The layers, from the method up, are listed in the README ("Architecture"). Every
error caused by input is a :class:`CDLibError` with one sentence.
"""

__version__ = "0.1.0"

# The `cdlib` command: a Ctrl-C or SIGTERM while torch imports is one line, not a traceback (notebooks unaffected).
from .interrupt import stop_quietly_while_starting as _stop_quietly  # noqa: E402

_stop_quietly()

from . import connectors, data, losses, models, schedules, terms  # noqa: E402,F401
from .errors import CDLibError, CheckpointError, ConfigError, DataError, TrainingDiverged  # noqa: E402,F401
