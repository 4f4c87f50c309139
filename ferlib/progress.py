"""One progress-bar factory for every long loop in the kit.

Why not call ``tqdm`` directly: in a terminal or a notebook a bar should redraw often, but in a
log file (``nohup ... > log``, CI, a batch job on the GPU machine) every redraw is another line of
text, and a 40-minute run writes megabytes of bars. When stderr is not a terminal the bars here
redraw at most every ``LOG_INTERVAL`` seconds. ``TQDM_MININTERVAL`` (tqdm's own variable) still
wins when set, and ``progress=False`` at the call site turns bars off.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from tqdm.auto import tqdm

LOG_INTERVAL = 30.0  # seconds between redraws when writing to a file


def _writes_to_terminal() -> bool:
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):  # replaced or closed stderr
        return False


def _in_notebook() -> bool:
    return "ipykernel" in sys.modules


def progress_bar(iterable: Any = None, **kwargs: Any) -> tqdm:
    """``tqdm(iterable, **kwargs)`` with a log-friendly redraw interval outside terminals."""
    if (
        "mininterval" not in kwargs
        and "TQDM_MININTERVAL" not in os.environ
        and not _writes_to_terminal()
        and not _in_notebook()
    ):
        kwargs["mininterval"] = LOG_INTERVAL
    return tqdm(iterable, **kwargs)
