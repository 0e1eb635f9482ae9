"""cdlib: Channel Distillation (Zhou et al. 2020) — CD, GKD and EDT — and its baselines.

Modules: ``losses`` (pure loss functions), ``connectors``, ``schedules`` (EDT),
``models`` (by name), ``data`` (by name).
"""

__version__ = "0.1.0"

from . import connectors, data, losses, models, schedules  # noqa: E402,F401
from .errors import CDLibError, CheckpointError, ConfigError, DataError  # noqa: E402,F401
