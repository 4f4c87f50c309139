"""Progress bars: log-friendly outside terminals, tqdm's own settings still honoured."""

import io

import pytest

from ferlib import progress


@pytest.fixture
def to_log(monkeypatch):
    monkeypatch.delenv("TQDM_MININTERVAL", raising=False)
    monkeypatch.setattr(progress, "_writes_to_terminal", lambda: False)
    monkeypatch.setattr(progress, "_in_notebook", lambda: False)


def test_log_file_gets_a_slow_redraw(to_log):
    bar = progress.progress_bar(range(3), file=io.StringIO())
    assert bar.mininterval == progress.LOG_INTERVAL
    assert list(bar) == [0, 1, 2]


def test_terminal_keeps_tqdm_default(to_log, monkeypatch):
    monkeypatch.setattr(progress, "_writes_to_terminal", lambda: True)
    bar = progress.progress_bar(range(3), file=io.StringIO())
    assert bar.mininterval < 1


def test_explicit_and_environment_settings_win(to_log, monkeypatch):
    assert progress.progress_bar(range(3), mininterval=2, file=io.StringIO()).mininterval == 2
    monkeypatch.setenv("TQDM_MININTERVAL", "5")  # tqdm reads it at import: we only must not override it
    assert progress.progress_bar(range(3), file=io.StringIO()).mininterval != progress.LOG_INTERVAL


def test_log_output_stays_small(to_log):
    """A thousand steps with a postfix write a handful of redraws, not a thousand."""
    sink = io.StringIO()
    bar = progress.progress_bar(range(1000), file=sink)
    for i in bar:
        bar.set_postfix(loss=f"{i:.3f}", refresh=False)
    assert sink.getvalue().count("\r") < 10
