"""Errors a user can act on.

Every failure the user can fix (bad config, missing file, bad columns, a diverged run) is a
`FairlError`: the CLI prints its message and hint and exits non-zero without a traceback.
Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


class FairlError(Exception):
    """A problem with the user's input or environment, with a hint on what to do."""

    exit_code = 1

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message}\n  hint: {self.hint}"


class ConfigError(FairlError):
    """The experiment config is invalid (unknown key, wrong type, bad value)."""

    exit_code = 2


class DataError(FairlError):
    """An input file is missing, empty, or does not follow its documented schema."""

    exit_code = 3


class MissingArtifactError(FairlError):
    """A stage needs the output of an earlier stage that has not finished."""

    exit_code = 4


class TrainingDiverged(FairlError):
    """A loss became NaN or infinite; nothing from the run is published."""

    exit_code = 5


def plain(value: Any) -> Any:
    """Plain Python for messages: numpy scalars and arrays print as numbers and lists, not as
    `np.int64(1)` (the programmatic API may be handed numpy values)."""
    if type(value).__module__.split(".")[0] == "numpy" and hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (list, tuple)):
        return type(value)(plain(v) for v in value)
    if isinstance(value, dict):
        return {plain(k): plain(v) for k, v in value.items()}
    return value
