"""The one error type for bad input data."""

from __future__ import annotations

from pathlib import Path


class DataError(ValueError):
    """Bad input data. The message names the file and, where there is one, the line.

    Raised before any tensor is built, so the user sees what is wrong with their files
    rather than a traceback from deep inside torch.
    """

    def __init__(self, path: str | Path, problem: str, line: int | None = None):
        self.path = Path(path)
        self.line = line
        self.problem = problem
        where = f"{self.path}" + (f", line {line}" if line is not None else "")
        super().__init__(f"{where}: {problem}")


class MissingSplitError(DataError):
    """The data set has no such split at all (its folder or label file is absent).

    A separate type because it is the one problem a caller may recover from: a data set
    without its own validation split gets one carved from training data. Every other
    :class:`DataError` (a corrupt label file, a missing image) must reach the user.
    """
