"""Progress bars written to a log file are throttled; a terminal's keep tqdm's pace, and a setting given wins."""
from __future__ import annotations

import io

import pytest
import tqdm.std

from latent_transforms.progress import _LOG_INTERVAL, progress_bar


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _updates(stream: io.StringIO, monkeypatch, seconds: float = 1.0, **kwargs) -> list[str]:
    """The states a bar over 300 items, one every ``seconds``, writes to ``stream``."""
    clock = [0.0]
    monkeypatch.setattr(tqdm.std, "time", lambda: clock[0])
    for _ in progress_bar(range(300), file=stream, desc="run", **kwargs):
        clock[0] += seconds
    return [s for s in stream.getvalue().split("\r") if s.strip()]


@pytest.fixture(autouse=True)
def _no_tqdm_env(monkeypatch):
    monkeypatch.delenv("TQDM_MININTERVAL", raising=False)


def test_a_bar_in_a_log_file_writes_a_state_every_log_interval_and_its_last(monkeypatch):
    # a 45-minute training run wrote 27,000 states into its log (tqdm's 0.1 s), as one line of carriage returns
    states = _updates(io.StringIO(), monkeypatch)
    assert _LOG_INTERVAL == 30 and 300 / _LOG_INTERVAL <= len(states) <= 300 / _LOG_INTERVAL + 3
    assert "300/300" in states[-1]


def test_a_bar_in_a_log_file_is_throttled_by_time_not_by_items(monkeypatch):
    # items of 2 s: a state every 30 s is one every 15 items (every 30 items would be a state a minute)
    states = _updates(io.StringIO(), monkeypatch, seconds=2.0)
    assert 600 / _LOG_INTERVAL <= len(states) <= 600 / _LOG_INTERVAL + 3


def test_tqdms_monitor_thread_keeps_a_log_bars_interval(monkeypatch):
    # tqdm's monitor thread wakes every tqdm.monitor_interval (10 s) and refreshes a bar that has printed nothing for
    # its maxinterval (tqdm's 10 s): a 4-minute `latent-transforms train ... > train.log` wrote 16 states, 10 to 20 s
    # apart. Its rule, from tqdm/_monitor.py, run here on the test's clock
    clock = [0.0]
    monkeypatch.setattr(tqdm.std, "time", lambda: clock[0])
    stream = io.StringIO()
    bar = progress_bar(range(300), file=stream, desc="run")
    for _ in bar:
        clock[0] += 1.0
        if clock[0] % tqdm.std.tqdm.monitor_interval == 0 and bar.miniters > 1 and \
                clock[0] - bar.last_print_t >= bar.maxinterval:
            bar.miniters = 1
            bar.refresh()
    states = [s for s in stream.getvalue().split("\r") if s.strip()]
    assert 300 / _LOG_INTERVAL <= len(states) <= 300 / _LOG_INTERVAL + 3


def test_a_bar_on_a_terminal_keeps_tqdms_pace(monkeypatch):
    assert len(_updates(Terminal(), monkeypatch)) >= 290


def test_a_chosen_interval_wins_in_a_log_file(monkeypatch):
    assert 300 / 5 <= len(_updates(io.StringIO(), monkeypatch, mininterval=5)) <= 300 / 5 + 3


def test_a_chosen_item_count_wins_in_a_log_file(monkeypatch):
    # mutation round 23 (audit 204): miniters=1 is the log bar's default, not forced over one given: a state every 100
    # items of 1 s, not every 30 s
    assert 300 / 100 <= len(_updates(io.StringIO(), monkeypatch, miniters=100)) <= 300 / 100 + 3


def test_a_log_bar_of_slow_items_writes_each(monkeypatch):
    # mutation round 23 (audit 204): items of 40 s (an evaluation epoch), each past _LOG_INTERVAL, write a state each:
    # the time is checked at every item (miniters=1), not every other one
    assert len(_updates(io.StringIO(), monkeypatch, seconds=40.0)) >= 300


def test_tqdms_environment_setting_is_left_to_tqdm(monkeypatch):
    # tqdm reads TQDM_MININTERVAL once, at import, into its defaults: an interval given here would override it. Here
    # the import saw none, so tqdm's own 0.1 s shows
    monkeypatch.setenv("TQDM_MININTERVAL", "5")
    assert len(_updates(io.StringIO(), monkeypatch)) >= 290


class LogWithoutIsatty:
    """A stream of one's own (a logger's adapter) that can only write: not a terminal."""

    def __init__(self):
        self.buffer = io.StringIO()

    def write(self, s: str) -> int:
        return self.buffer.write(s)

    def flush(self) -> None:
        pass

    def getvalue(self) -> str:
        return self.buffer.getvalue()


def test_a_stream_without_isatty_counts_as_a_log(monkeypatch):
    states = _updates(LogWithoutIsatty(), monkeypatch)
    assert 300 / _LOG_INTERVAL <= len(states) <= 300 / _LOG_INTERVAL + 3


def test_a_notebook_bar_is_left_to_tqdm(monkeypatch):
    # tqdm.auto gives a widget in a notebook: it is no text in a log, and it takes no throttling of ours
    from latent_transforms import progress

    made = []
    monkeypatch.setattr(progress, "tqdm", lambda iterable=None, **kwargs: made.append(kwargs) or iterable)
    assert progress.progress_bar(range(3), file=io.StringIO(), desc="run") == range(3)
    assert made == [{"file": made[0]["file"], "desc": "run"}]
