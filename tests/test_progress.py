"""Progress: tqdm bars on a terminal and in an interactive notebook; plain, rate-limited lines
in logs (files, pipes, papermill's kernels); FERKIT_PROGRESS forces a mode."""

import io

import pytest
from tqdm.auto import tqdm

from ferlib import progress


@pytest.fixture
def to_log(monkeypatch):
    monkeypatch.delenv("TQDM_MININTERVAL", raising=False)
    monkeypatch.delenv(progress.MODE_ENV, raising=False)
    monkeypatch.delenv("JPY_SESSION_NAME", raising=False)
    monkeypatch.setattr(progress, "_writes_to_terminal", lambda stream=None: False)
    monkeypatch.setattr(progress, "_in_notebook", lambda: False)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch):
    fake = FakeClock()
    monkeypatch.setattr(progress, "_clock", fake)
    return fake


def test_a_log_gets_one_plain_line_at_the_end_of_a_short_loop(to_log):
    sink = io.StringIO()
    bar = progress.progress_bar(range(3), file=sink, desc="pack")
    assert isinstance(bar, progress.LineProgress)
    assert list(bar) == [0, 1, 2]
    lines = sink.getvalue().splitlines()
    assert len(lines) == 1 and lines[0].startswith("pack: 3/3 (100%) ")
    assert "\r" not in sink.getvalue()


def test_a_real_file_is_not_a_terminal_and_gets_lines(tmp_path, monkeypatch):
    monkeypatch.delenv(progress.MODE_ENV, raising=False)
    monkeypatch.setattr(progress, "_in_notebook", lambda: False)
    with open(tmp_path / "log", "w") as log:
        for _ in progress.progress_bar(range(5), file=log, desc="decode x/train", unit="img"):
            pass
    text = (tmp_path / "log").read_text()
    assert text.startswith("decode x/train: 5/5 (100%) ") and " img/s" in text and text.count("\n") == 1


def test_lines_are_rate_limited_and_say_how_far_and_how_fast(to_log, clock):
    """125 s of steps, a line at most every 30 s and one at the end: five lines, not 1000."""
    sink = io.StringIO()
    bar = progress.progress_bar(range(1000), file=sink, desc="close-set 2/6", leave=False)
    for i in bar:
        clock.now += 0.125
        bar.set_postfix(loss=f"{1 / (i + 1):.3f}", refresh=False)
    lines = sink.getvalue().splitlines()
    assert len(lines) == 5, lines
    assert lines[0] == "close-set 2/6: 240/1000 (24%) 8 it/s, 00:30 elapsed, 01:35 left, loss=0.004"
    assert lines[1].startswith("close-set 2/6: 480/1000 (48%) 8 it/s, 01:00 elapsed")
    assert lines[-1] == "close-set 2/6: 1000/1000 (100%) 8 it/s, 02:05 elapsed, loss=0.001"


def test_the_end_line_is_not_repeated(to_log, clock):
    sink = io.StringIO()
    with progress.progress_bar(total=4, file=sink, desc="unpack") as bar:
        for _ in range(4):
            clock.now += 30
            bar.update()  # every update is 30 s after the last line: each writes one
        bar.close()  # and the line that says 4/4 is written: closing adds none
    lines = sink.getvalue().splitlines()
    assert len(lines) == 4 and lines[-1] == "unpack: 4/4 (100%) 30 s/it, 02:00 elapsed"


def test_slow_steps_and_unknown_totals_read_well(to_log, clock):
    sink = io.StringIO()
    bar = progress.progress_bar(file=sink, desc="epoch counts")
    clock.now += 50
    bar.update(2)
    bar.close()
    assert sink.getvalue().splitlines() == ["epoch counts: 2 it 25 s/it, 00:50 elapsed"]


def test_terminal_keeps_tqdm_bars(to_log, monkeypatch):
    monkeypatch.setattr(progress, "_writes_to_terminal", lambda stream=None: True)
    bar = progress.progress_bar(range(3), file=io.StringIO())
    assert isinstance(bar, tqdm) and bar.mininterval < 1


def test_interactive_notebook_keeps_widget_bars_papermill_gets_lines(to_log, monkeypatch):
    monkeypatch.setattr(progress, "_in_notebook", lambda: True)
    assert isinstance(progress.progress_bar(range(3), file=io.StringIO()), progress.LineProgress)  # no front end
    monkeypatch.setenv("JPY_SESSION_NAME", "notebooks/01_train_close_set.ipynb")  # JupyterLab, VS Code
    assert isinstance(progress.progress_bar(range(3), file=io.StringIO()), tqdm)


def test_environment_forces_a_mode(to_log, monkeypatch):
    monkeypatch.setenv(progress.MODE_ENV, "bars")
    bar = progress.progress_bar(range(3), file=io.StringIO())
    assert isinstance(bar, tqdm) and bar.mininterval == progress.LOG_INTERVAL  # a bar in a log: slow redraw
    monkeypatch.setattr(progress, "_writes_to_terminal", lambda stream=None: True)
    monkeypatch.setenv(progress.MODE_ENV, "Lines")
    assert isinstance(progress.progress_bar(range(3), file=io.StringIO()), progress.LineProgress)
    monkeypatch.setenv(progress.MODE_ENV, "off")
    sink = io.StringIO()
    assert list(progress.progress_bar(range(3), file=sink)) == [0, 1, 2]
    assert sink.getvalue() == ""
    monkeypatch.setenv(progress.MODE_ENV, "quiet")
    with pytest.raises(ValueError, match="FERKIT_PROGRESS='quiet'.*auto, bars, lines, off"):
        progress.progress_bar(range(3))


def test_disabled_writes_nothing(to_log):
    sink = io.StringIO()
    assert list(progress.progress_bar(range(3), file=sink, disable=True)) == [0, 1, 2]
    assert sink.getvalue() == ""


def test_explicit_and_environment_intervals_win(to_log, monkeypatch):
    assert progress.progress_bar(range(3), mininterval=2, file=io.StringIO()).mininterval == 2
    monkeypatch.setenv("TQDM_MININTERVAL", "5")
    assert progress.progress_bar(range(3), file=io.StringIO()).mininterval == 5
    monkeypatch.setattr(progress, "_writes_to_terminal", lambda stream=None: True)
    # tqdm reads TQDM_MININTERVAL at import: on a terminal we only must not override it
    assert progress.progress_bar(range(3), file=io.StringIO()).mininterval != progress.LOG_INTERVAL
