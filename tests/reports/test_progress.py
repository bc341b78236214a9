"""What each audience of `cellpipe run` sees for the same events."""

from __future__ import annotations

import io
import json

import pytest

from converter.events import Event, EventLog
from converter.reports.progress import Progress, choose_mode


def _feed(progress: Progress, fail: bool = True) -> list[Event]:
    log = EventLog("r1", [progress])
    log.emit("run_started", data={"pipeline": "demo", "steps": ["load", "train", "report"]})
    log.emit("step_started", step="load", attempt=1)
    log.emit("step_log", step="load", stream="stdout", line="loaded 569 rows")
    log.emit("step_succeeded", step="load", duration=0.5)
    log.emit("step_started", step="train", attempt=1)
    log.emit("step_log", step="train", stream="stderr", line="Traceback: boom" if fail else "fit ok")
    if fail:
        log.emit(
            "step_failed", step="train", attempt=1, duration=1.0, message="cell 3 raised ValueError: boom"
        )
        log.emit("step_skipped", step="report", message="upstream failed")
        log.emit("run_finished", state="failed", duration=1.5, message="1 step failed")
    else:
        log.emit("step_succeeded", step="train", attempt=1, duration=1.0)
        log.emit("metrics", step="train", metrics={"accuracy": 0.9561})
        log.emit("step_cached", step="report")
        log.emit("run_finished", state="succeeded", duration=1.5)
    progress.close()
    return log.events


def _progress(mode: str) -> tuple[Progress, io.StringIO, io.StringIO]:
    out, err = io.StringIO(), io.StringIO()
    return Progress(mode, ["load", "train", "report"], stdout=out, stderr=err), out, err  # type: ignore[arg-type]


def test_json_events_put_only_events_on_stdout() -> None:
    progress, out, _ = _progress("json")
    events = _feed(progress)
    lines = out.getvalue().splitlines()
    assert [Event.from_json(json.loads(line)) for line in lines] == events


def test_plain_is_one_line_per_event_with_the_failure() -> None:
    progress, out, err = _progress("plain")
    _feed(progress)
    text = out.getvalue()
    assert "\x1b[" not in text  # no cursor or colour codes in a CI log
    assert "run r1 started: demo (3 steps)" in text
    assert "load | loaded 569 rows" in text
    assert "train FAILED in 1.0s: cell 3 raised ValueError: boom" in text
    assert "report skipped: upstream failed" in text
    assert "run r1 failed: 3 steps (1 failed, 1 skipped, 1 succeeded) in 1.5s (1 step failed)" in text
    assert "step train failed: cell 3 raised ValueError: boom" in err.getvalue()


def test_quiet_prints_summary_and_errors_only() -> None:
    progress, out, err = _progress("quiet")
    _feed(progress, fail=False)
    assert out.getvalue().strip() == (
        "run r1 succeeded: 3 steps (1 cached, 2 succeeded) in 1.5s; accuracy=0.9561"
    )
    assert err.getvalue() == ""

    progress, out, err = _progress("quiet")
    _feed(progress, fail=True)
    assert out.getvalue() == ""
    assert "step train failed: cell 3 raised ValueError: boom" in err.getvalue()
    assert "train | Traceback: boom" in err.getvalue()  # the log tail: nothing else showed it
    assert "run r1 failed" in err.getvalue()


def test_live_ends_with_a_final_table() -> None:
    progress, out, _ = _progress("live")
    _feed(progress, fail=False)
    text = out.getvalue()
    for expected in ("load", "train", "report", "succeeded", "cached", "run r1 succeeded"):
        assert expected in text


def test_cancelled_run_marks_unfinished_steps() -> None:
    progress, out, _ = _progress("plain")
    log = EventLog("r2", [progress])
    log.emit("run_started", data={"pipeline": "demo", "steps": ["load", "train", "report"]})
    log.emit("step_started", step="load", attempt=1)
    log.emit("run_finished", state="cancelled", duration=0.2)
    progress.close()
    assert "run r2 cancelled: 3 steps (3 cancelled)" in out.getvalue()


@pytest.mark.parametrize(
    ("quiet", "json_events", "tty", "mode"),
    [
        (False, False, True, "live"),
        (False, False, False, "plain"),
        (True, False, True, "quiet"),
        (True, True, False, "json"),
        (False, True, True, "json"),
    ],
)
def test_choose_mode(quiet: bool, json_events: bool, tty: bool, mode: str) -> None:
    class Stream(io.StringIO):
        def isatty(self) -> bool:
            return tty

    assert choose_mode(quiet, json_events, Stream()) == mode
