"""The run store: event folding, consistency after every event, cancel requests, orphans, concurrency."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
import threading
from pathlib import Path
from typing import Any

import pytest

from converter.errors import CellpipeError
from converter.events import EventLog, step_states
from converter.store.runstore import ORPHAN_MESSAGE, RunStore

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def store(tmp_path: Path) -> RunStore:
    return RunStore(tmp_path / "runs.db")


def new_run(store: RunStore, steps: tuple[str, ...] = ("a", "b", "c", "d"), **fields: Any) -> str:
    return store.create_run("pipe", "nb.ipynb", "local", {"n": 3}, steps, **fields)


def test_run_ids_are_short_sortable_and_unique(store: RunStore) -> None:
    ids = [new_run(store) for _ in range(30)]
    assert len(set(ids)) == 30
    assert all(re.fullmatch(r"\d{8}-\d{6}-[0-9a-f]{4}", run_id) for run_id in ids)
    run = store.get_run(ids[0])
    assert (run.state, run.pipeline, run.engine, run.parameters) == ("running", "pipe", "local", {"n": 3})
    assert run.pid == os.getpid()
    assert [s.name for s in run.steps] == ["a", "b", "c", "d"]
    assert {s.state for s in run.steps} == {"pending"}
    assert [r.id for r in store.list_runs(5)] == ids[::-1][:5]  # newest first


def test_store_is_consistent_after_every_event(store: RunStore) -> None:
    """A whole run's events, folded one at a time, always match the events' own fold."""
    run_id = new_run(store)
    log = EventLog(run_id, [store.record])
    script: list[tuple[str, dict[str, Any]]] = [
        (
            "run_started",
            {"data": {"steps": ["a", "b", "c", "d"], "run_folder": "/w/runs/x", "pipeline": "pipe"}},
        ),
        ("step_queued", {"step": "a"}),
        ("step_started", {"step": "a", "attempt": 1, "data": {"folder": "/w/a", "log": "/w/a/log.txt"}}),
        ("step_log", {"step": "a", "stream": "stdout", "line": "hello"}),
        ("step_retrying", {"step": "a", "attempt": 1, "message": "boom", "exit_code": 1}),
        ("step_started", {"step": "a", "attempt": 2}),
        ("step_succeeded", {"step": "a", "attempt": 2, "duration": 1.5, "data": {"outputs": {"x": "d1"}}}),
        ("metrics", {"step": "a", "metrics": {"acc": 0.9}}),
        (
            "step_cached",
            {"step": "b", "message": "from run r0", "data": {"outputs": {"y": "d2"}, "from_run": "r0"}},
        ),
        ("step_queued", {"step": "c"}),
        ("step_started", {"step": "c", "attempt": 1}),
        (
            "step_failed",
            {"step": "c", "attempt": 1, "message": "cell 3 raised ValueError: no", "exit_code": 1},
        ),
        ("step_skipped", {"step": "d", "message": "upstream step 'c' failed"}),
        ("run_finished", {"state": "failed", "message": "step 'c' failed", "duration": 3.0}),
    ]
    for type, fields in script:
        log.emit(type, **fields)  # type: ignore[arg-type]
        run = store.get_run(run_id)
        assert {s.name: s.state for s in run.steps} == step_states(log.events, ["a", "b", "c", "d"])
    steps = {s.name: s for s in run.steps}
    assert run.state == "failed" and run.message == "step 'c' failed" and run.folder == "/w/runs/x"
    assert [(a.attempt, a.state, a.message) for a in steps["a"].attempts] == [
        (1, "failed", "boom"),
        (2, "succeeded", None),
    ]
    assert steps["a"].outputs == {"x": "d1"} and steps["a"].log_path == "/w/a/log.txt"
    assert steps["b"].cached_from == "r0" and steps["b"].outputs == {"y": "d2"}
    assert (steps["c"].exit_code, steps["c"].message) == (1, "cell 3 raised ValueError: no")
    assert run.metrics == {"acc": 0.9}
    assert set(store.step_succeeded_outputs(run_id)) == {"a", "b"}
    events = store.events(run_id)
    assert [e.seq for e in events] == [e.seq for e in log.events if e.type != "step_log"]
    assert [e.type for e in store.events(run_id, after=events[-2].seq)] == ["run_finished"]


def test_cancelled_run_cancels_unfinished_steps(store: RunStore) -> None:
    run_id = new_run(store)
    log = EventLog(run_id, [store.record])
    log.emit("run_started", data={"steps": ["a", "b", "c", "d"]})
    log.emit("step_queued", step="a")
    log.emit("step_started", step="a", attempt=1)
    log.emit("step_cached", step="b")
    log.emit("run_finished", state="cancelled", message="cancelled")
    run = store.get_run(run_id)
    assert {s.name: s.state for s in run.steps} == {
        "a": "cancelled",
        "b": "cached",
        "c": "cancelled",
        "d": "cancelled",
    }
    assert run.steps[0].attempts[0].state == "cancelled"


def test_cancel_requests(store: RunStore) -> None:
    run_id = new_run(store)
    other = RunStore(store.path)  # another process's view of the same file
    assert not store.cancel_requested(run_id)
    assert other.request_cancel(run_id)
    assert store.cancel_requested(run_id)
    EventLog(run_id, [store.record]).emit("run_finished", state="cancelled")
    assert not other.request_cancel(run_id)  # only running runs can be cancelled
    assert not store.request_cancel("nope")


def test_get_run_by_unique_prefix(store: RunStore) -> None:
    run_id = new_run(store)
    assert store.get_run(run_id[:-2]).id == run_id
    with pytest.raises(CellpipeError, match="no run 'zzz'"):
        store.get_run("zzz")
    new_run(store)
    with pytest.raises(CellpipeError, match="ambiguous"):
        store.get_run(run_id[:4])


def test_orphaned_runs_are_failed_and_live_ones_kept(store: RunStore) -> None:
    dead = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    orphan = new_run(store, pid=dead.pid)
    live = new_run(store)
    finished = new_run(store, pid=dead.pid)
    log = EventLog(orphan, [store.record])
    log.emit("run_started", data={"steps": ["a", "b", "c", "d"]})
    log.emit("step_started", step="a", attempt=1)
    log.emit("step_queued", step="b")
    EventLog(finished, [store.record]).emit("run_finished", state="succeeded")
    dead.kill()
    dead.wait()
    assert store.mark_orphans() == [orphan]
    run = store.get_run(orphan)
    assert (run.state, run.message) == ("failed", ORPHAN_MESSAGE)
    assert {s.name: s.state for s in run.steps} == {
        "a": "failed",
        "b": "cancelled",
        "c": "cancelled",
        "d": "cancelled",
    }
    assert store.events(orphan)[-1].type == "run_finished"
    assert store.get_run(live).state == "running"
    assert store.get_run(finished).state == "succeeded"
    assert store.mark_orphans() == []


def test_recycled_pid_is_not_the_engine(store: RunStore) -> None:
    """Our own pid, but recorded as started long ago: that engine is gone."""
    run_id = new_run(store)
    with store._write() as db:
        db.execute("UPDATE runs SET pid_started = 1000 WHERE id = ?", (run_id,))
    assert store.mark_orphans() == [run_id]


WRITER = textwrap.dedent(
    """
    import sys
    from converter.events import EventLog
    from converter.store.runstore import RunStore

    store = RunStore(sys.argv[1])
    for _ in range(int(sys.argv[2])):
        run_id = store.create_run("pipe", "nb", "local", {}, ["a", "b"])
        log = EventLog(run_id, [store.record])
        log.emit("run_started", data={"steps": ["a", "b"]})
        for step in ("a", "b"):
            log.emit("step_queued", step=step)
            log.emit("step_started", step=step, attempt=1)
            log.emit("step_succeeded", step=step, attempt=1, duration=0.1)
            log.emit("metrics", step=step, metrics={"m": 1.0})
        log.emit("run_finished", state="succeeded", duration=1.0)
    """
)


def test_two_processes_write_one_store(tmp_path: Path) -> None:
    db = tmp_path / "runs.db"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    writers = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, str(db), "25"], env=env, stderr=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    errors = [w.communicate(timeout=120)[1] for w in writers]
    assert [w.returncode for w in writers] == [0, 0], errors
    runs = RunStore(db).list_runs(100)
    assert len(runs) == 50
    assert all(r.state == "succeeded" and [s.state for s in r.steps] == ["succeeded"] * 2 for r in runs)
    assert all(r.metrics == {"m": 1.0} for r in runs)


def test_many_openers_of_a_new_store_at_once(tmp_path: Path) -> None:
    """Switching a fresh file to WAL needs a lock the first writers race for; nobody may fail."""
    errors: list[BaseException] = []

    def open_store(db: Path, barrier: threading.Barrier) -> None:
        barrier.wait()
        try:
            new_run(RunStore(db))
        except BaseException as error:
            errors.append(error)

    for attempt in range(5):
        db, barrier = tmp_path / f"fresh{attempt}.db", threading.Barrier(8)
        threads = [threading.Thread(target=open_store, args=(db, barrier)) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert errors == []
        assert len(RunStore(db).list_runs()) == 8
