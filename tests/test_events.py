"""The one event fold (`RunView`) on recorded streams: the state every face shows for a run.

The same streams and expected folds are checked by the lab extension's vitest suite
(labextension/test/events.test.ts), so the Python and TypeScript folds cannot drift apart.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from converter.events import Event, RunView, step_states

STREAMS = Path(__file__).resolve().parent / "event_streams"
NAMES = sorted(p.stem for p in STREAMS.glob("*.json") if not p.name.endswith(".folded.json"))


def _events(name: str) -> list[Event]:
    return [Event.from_json(e) for e in json.loads((STREAMS / f"{name}.json").read_text(encoding="utf-8"))]


def _fold(events: list[Event]) -> RunView:
    view = RunView()
    for event in events:
        view.apply(event)
    return view


def test_there_are_streams_to_check() -> None:
    assert {"local_succeeded", "local_failed", "local_cached", "kfp_retry_cancelled"} <= set(NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_recorded_stream_folds_to_the_committed_state(name: str) -> None:
    folded = _fold(_events(name)).to_json()
    expected_file = STREAMS / f"{name}.folded.json"
    if os.environ.get("CELLPIPE_WRITE_FOLDS"):
        expected_file.write_text(json.dumps(folded, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    assert json.loads(json.dumps(folded)) == json.loads(expected_file.read_text(encoding="utf-8"))


def test_a_failed_run_keeps_the_failure_and_skips_downstream() -> None:
    view = _fold(_events("local_failed"))
    assert view.state == "failed" and view.ended
    assert {n: s.state for n, s in view.steps.items()} == {
        "first": "succeeded",
        "left": "succeeded",
        "right": "failed",
        "join": "skipped",
    }
    right = view.steps["right"]
    assert "right broke" in (right.message or "") and right.attempt == 1 and right.finished is not None
    assert any("RuntimeError" in line for line in right.log)


def test_retry_duplicates_metrics_and_cancel() -> None:
    events = _events("kfp_retry_cancelled")
    view = RunView()
    applied = [view.apply(e) for e in events]
    assert applied.count(False) == 2  # the repeated seq 5 and the replayed seq 3 change nothing
    a = view.steps["a"]
    assert (a.state, a.attempt, a.duration, a.message, a.exit_code) == ("succeeded", 2, 3.0, None, None)
    assert list(a.log) == ["hello", "warning: slow"]
    states = {n: s.state for n, s in view.steps.items()}
    assert states == {"a": "succeeded", "b": "cancelled", "c": "cancelled"}
    assert view.metrics == {"acc": 0.95, "loss": 0.25}
    assert view.step_metrics == {"a": {"acc": 0.93, "loss": 0.25}, "": {"acc": 0.95}}
    assert view.message == "cancelled by the user" and view.duration == 9.0


def test_a_retry_keeps_its_reason_until_the_next_attempt_starts() -> None:
    view = RunView(["a"])
    view.apply(Event("r", 1, "step_started", step="a", attempt=1, time=10.0))
    view.apply(Event("r", 2, "step_retrying", step="a", attempt=1, message="evicted", exit_code=137, time=12))
    a = view.steps["a"]
    assert (a.state, a.message, a.exit_code, a.finished) == ("queued", "evicted", 137, None)
    assert a.seconds(now=20.0) is None  # not running: no ticking time
    view.apply(Event("r", 3, "step_started", step="a", attempt=2, time=13.0))
    assert (a.state, a.message, a.exit_code, a.seconds(now=20.0)) == ("running", None, None, 7.0)


def test_log_tail_is_bounded() -> None:
    view = RunView(["a"], log_lines=3)
    for i in range(10):
        view.apply(Event("r", i + 1, "step_log", step="a", line=f"l{i}"))
    assert list(view.steps["a"].log) == ["l7", "l8", "l9"]


def test_step_states_is_the_fold() -> None:
    for name in NAMES:
        events = _events(name)
        assert step_states(events, []) == {n: s.state for n, s in _fold(events).steps.items()}
