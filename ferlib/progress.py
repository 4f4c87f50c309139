"""One progress-bar factory for every long loop in the kit.

Why not call ``tqdm`` directly: a bar is made for a screen that redraws it. In a log (``nohup ...
> log``, CI, a batch job on the GPU machine) every redraw is another stretch of text, and in a
notebook kernel that papermill runs the bar is an ipywidget that nobody renders: the log shows
``0%|`` once and then nothing for forty minutes. So :func:`progress_bar` picks one of three modes:

- ``bars``: tqdm's own bar (``tqdm.auto``): in a terminal, and in a notebook open in JupyterLab,
  Jupyter Notebook or VS Code (an ipywidgets bar), exactly as before;
- ``lines``: plain lines such as ``close-set 2/6: 120/193 (62%) 1.4 it/s, 01:25 elapsed, 00:52
  left, loss=1.230``, at most every :data:`LOG_INTERVAL` seconds and once at the end, when the
  output is not a terminal: a log file, a pipe, a notebook that papermill (or ``nbconvert
  --execute``) runs;
- ``off``: nothing.

``FERKIT_PROGRESS=bars|lines|off`` forces a mode (``auto``, the default, decides as above).
``progress=False`` at the call site still turns a bar off, and the line interval follows
``mininterval`` or ``TQDM_MININTERVAL`` (tqdm's own variable) when either is set.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any, Iterable, Iterator

from tqdm.auto import tqdm

#: seconds between two progress lines (``lines`` mode)
LOG_INTERVAL = 30.0

#: the environment variable that forces a mode
MODE_ENV = "FERKIT_PROGRESS"

#: the values it takes
MODES: tuple[str, ...] = ("auto", "bars", "lines", "off")

#: the clock lines are timed with (a module global: tests replace it)
_clock = time.monotonic


def _writes_to_terminal(stream: Any = None) -> bool:
    """Whether ``stream`` (default: stderr, where tqdm writes) is a terminal."""
    stream = sys.stderr if stream is None else stream
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # replaced or closed stream
        return False


def _in_notebook() -> bool:
    return "ipykernel" in sys.modules


def _frontend_renders_widgets() -> bool:
    """Whether this kernel was started by a notebook front end that draws widgets.

    jupyter_server (JupyterLab, Notebook 7) and VS Code set ``JPY_SESSION_NAME`` (the
    notebook's path) for the kernels they start; papermill's and nbconvert's kernels have
    no session and no one to draw a widget."""
    return bool(os.environ.get("JPY_SESSION_NAME"))


def progress_mode(stream: Any = None) -> str:
    """``"bars"``, ``"lines"`` or ``"off"`` for a bar writing to ``stream`` (default stderr):
    ``$FERKIT_PROGRESS`` when set, else as the module docstring says.

    A value outside :data:`MODES` raises ``ValueError``: a misspelt setting must not be
    ignored."""
    mode = os.environ.get(MODE_ENV, "").strip().lower() or "auto"
    if mode not in MODES:
        raise ValueError(f"{MODE_ENV}={os.environ[MODE_ENV]!r}; expected one of {', '.join(MODES)}")
    if mode != "auto":
        return mode
    if _in_notebook():
        return "bars" if _frontend_renders_widgets() else "lines"
    return "bars" if _writes_to_terminal(stream) else "lines"


def _interval(kwargs: dict[str, Any]) -> float:
    """Seconds between progress lines: ``mininterval``, else ``$TQDM_MININTERVAL``, else
    :data:`LOG_INTERVAL` (tqdm's own settings keep meaning what they say)."""
    if kwargs.get("mininterval") is not None:
        return float(kwargs["mininterval"])
    try:
        return float(os.environ["TQDM_MININTERVAL"])
    except (KeyError, ValueError):
        return LOG_INTERVAL


def _count(x: float) -> str:
    """``28709``, not ``28709.0`` nor ``2.87e+04``."""
    return str(int(x)) if float(x).is_integer() else f"{x:.4g}"


def _format_value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


class LineProgress:
    """A progress report for logs: the part of tqdm's interface the kit uses (iterate,
    ``update``, ``set_postfix``, ``set_description``, ``close``, ``with``), written as
    one plain line at most every ``interval`` seconds and once at the end.

    Lines rather than a bar because a log is read top to bottom, later, by someone who
    wants to know how far a run got and how fast; a redrawn bar leaves one unreadable line
    of carriage returns, or nothing (a widget nobody renders)."""

    def __init__(
        self,
        iterable: Iterable[Any] | None = None,
        desc: str | None = None,
        total: float | None = None,
        unit: str = "it",
        file: Any = None,
        interval: float = LOG_INTERVAL,
        initial: int = 0,
        **_: Any,  # tqdm's drawing options (leave, ncols, position...) mean nothing here
    ) -> None:
        if total is None and iterable is not None:
            try:
                total = len(iterable)  # type: ignore[arg-type]
            except (TypeError, AttributeError):
                total = None
        self.iterable = iterable
        self.desc = desc or ""
        self.total = total
        self.unit = unit
        self.file = file
        self.mininterval = interval
        self.n = initial
        self.postfix = ""
        self.disable = False
        self._start = self._last = _clock()
        self._written_at: int | None = None  # the count of the last line written
        self._closed = False

    # -- tqdm's interface

    def __iter__(self) -> Iterator[Any]:
        if self.iterable is None:
            raise TypeError("LineProgress without an iterable cannot be iterated; use update()")
        try:
            for item in self.iterable:
                yield item
                self.update(1)
        finally:
            self.close()

    def __len__(self) -> int:
        return int(self.total) if self.total is not None else 0

    def __enter__(self) -> LineProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def update(self, n: float = 1) -> None:
        self.n += n
        now = _clock()
        if now - self._last >= self.mininterval:
            self._write(now)

    def set_postfix(self, ordered_dict: dict[str, Any] | None = None, refresh: bool = True, **kwargs: Any) -> None:
        items = {**(ordered_dict or {}), **kwargs}
        self.postfix = ", ".join(f"{k}={_format_value(v)}" for k, v in items.items())

    def set_postfix_str(self, s: str = "", refresh: bool = True) -> None:
        self.postfix = str(s)

    def set_description(self, desc: str | None = None, refresh: bool = True) -> None:
        self.desc = desc or ""

    def refresh(self) -> None:
        """Nothing: a line is written on the clock, not on demand."""

    def close(self) -> None:
        """Write the final line (unless the last one already said it) once."""
        if self._closed:
            return
        self._closed = True
        if self._written_at != self.n:
            self._write(_clock())

    # -- the line

    def format_line(self, now: float) -> str:
        elapsed = max(now - self._start, 0.0)
        rate = self.n / elapsed if elapsed > 0 else 0.0
        if rate >= 1 or rate == 0:
            speed = f"{rate:.3g} {self.unit}/s"
        else:
            speed = f"{1 / rate:.3g} s/{self.unit}"
        parts = []
        if self.total:
            done = f"{_count(self.n)}/{_count(self.total)} ({100 * self.n / self.total:.0f}%)"
        else:
            done = f"{_count(self.n)} {self.unit}"
        parts.append(f"{done} {speed}")
        parts.append(f"{tqdm.format_interval(elapsed)} elapsed")
        if self.total and rate > 0 and self.n < self.total:
            parts.append(f"{tqdm.format_interval((self.total - self.n) / rate)} left")
        if self.postfix:
            parts.append(self.postfix)
        prefix = f"{self.desc}: " if self.desc else ""
        return prefix + ", ".join(parts)

    def _write(self, now: float) -> None:
        file = self.file if self.file is not None else sys.stderr
        try:
            file.write(self.format_line(now) + "\n")
            file.flush()
        except (AttributeError, ValueError, OSError):  # a closed or missing stream: progress is optional
            pass
        self._last = now
        self._written_at = self.n


def progress_bar(iterable: Any = None, **kwargs: Any) -> tqdm | LineProgress:
    """``tqdm(iterable, **kwargs)`` in a terminal or an interactive notebook; a
    :class:`LineProgress` writing plain lines to logs; a disabled bar with
    ``FERKIT_PROGRESS=off`` (see the module docstring)."""
    if kwargs.get("disable"):
        return tqdm(iterable, **kwargs)
    mode = progress_mode(kwargs.get("file"))
    if mode == "off":
        return tqdm(iterable, **{**kwargs, "disable": True})
    if mode == "lines":
        options = {k: v for k, v in kwargs.items() if k != "mininterval"}
        return LineProgress(iterable, interval=_interval(kwargs), **options)
    if (  # bars forced into a log: redraw slowly (each redraw is more text in the file)
        "mininterval" not in kwargs
        and "TQDM_MININTERVAL" not in os.environ
        and not _writes_to_terminal(kwargs.get("file"))
        and not _in_notebook()
    ):
        kwargs["mininterval"] = LOG_INTERVAL
    return tqdm(iterable, **kwargs)
