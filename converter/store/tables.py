"""The run store's SQLite tables, and how one event lands in them.

`runstore.RunStore.record` reads the run as the tables have it into a `RunView` (the one event fold,
`converter.events`), applies the event, and writes back what changed; the folds here add what only the
store keeps (folders, outputs, cache keys, attempts, metrics).
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Sequence
from typing import Any

from converter.events import STEP_STATE_AFTER, Event, RunView

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id TEXT PRIMARY KEY,
    pipeline TEXT NOT NULL DEFAULT '',
    notebook TEXT NOT NULL DEFAULT '',
    engine TEXT NOT NULL DEFAULT '',
    state TEXT NOT NULL,
    message TEXT,
    created REAL NOT NULL,
    started REAL,
    finished REAL,
    duration REAL,
    parameters TEXT NOT NULL DEFAULT '{}',
    folder TEXT,
    remote_id TEXT,
    pid INTEGER,
    pid_started REAL,
    host TEXT,
    resumed_from TEXT,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    last_seq INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS runs_by_state ON runs (state);
CREATE TABLE IF NOT EXISTS steps (
    run_id TEXT NOT NULL,
    name TEXT NOT NULL,
    position INTEGER NOT NULL,
    state TEXT NOT NULL,
    attempt INTEGER,
    queued REAL,
    started REAL,
    finished REAL,
    duration REAL,
    exit_code INTEGER,
    message TEXT,
    folder TEXT,
    log_path TEXT,
    outputs TEXT,
    cache_key TEXT,
    cached_from TEXT,
    PRIMARY KEY (run_id, name)
);
CREATE TABLE IF NOT EXISTS attempts (
    run_id TEXT NOT NULL,
    step TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    state TEXT NOT NULL,
    started REAL,
    finished REAL,
    duration REAL,
    exit_code INTEGER,
    message TEXT,
    pid INTEGER,
    PRIMARY KEY (run_id, step, attempt)
);
CREATE TABLE IF NOT EXISTS metrics (
    run_id TEXT NOT NULL,
    step TEXT NOT NULL,
    name TEXT NOT NULL,
    value REAL NOT NULL,
    PRIMARY KEY (run_id, step, name)
);
CREATE TABLE IF NOT EXISTS events (
    run_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    type TEXT NOT NULL,
    step TEXT,
    time REAL NOT NULL,
    body TEXT NOT NULL,
    PRIMARY KEY (run_id, seq)
);
"""
SCHEMA_VERSION = 1


def dumps(value: object) -> str:
    return json.dumps(value, default=str, sort_keys=True)


def add_steps(db: sqlite3.Connection, run_id: str, steps: Sequence[str]) -> None:
    for name in steps:
        db.execute(
            "INSERT OR IGNORE INTO steps (run_id, name, position, state)"
            " VALUES (?, ?, (SELECT COUNT(*) FROM steps WHERE run_id = ?), 'pending')",
            (run_id, name, run_id),
        )


def _data(event: Event) -> dict[str, Any]:
    return event.data or {}


def load_view(db: sqlite3.Connection, run_id: str) -> RunView:
    """The fold of a run as the tables have it (log lines are the log files' business)."""
    view = RunView(log_lines=0)
    view.run_id = run_id
    columns = "state, message, started, finished, duration, pipeline, engine, last_seq"
    row = db.execute(f"SELECT {columns} FROM runs WHERE id = ?", (run_id,)).fetchone()
    if row is not None:
        view.state = row["state"]
        view.message, view.started, view.finished = row["message"], row["started"], row["finished"]
        view.duration, view.pipeline, view.engine = row["duration"], row["pipeline"], row["engine"]
        view.last_seq = row["last_seq"]
    for s in db.execute("SELECT * FROM steps WHERE run_id = ? ORDER BY position", (run_id,)):
        step = view.step(s["name"])
        step.state, step.attempt, step.queued = s["state"], s["attempt"], s["queued"]
        step.started, step.finished, step.duration = s["started"], s["finished"], s["duration"]
        step.message, step.exit_code = s["message"], s["exit_code"]
    return view


def write_view(db: sqlite3.Connection, view: RunView, event: Event) -> None:
    """Write back the run and the steps `event` may have changed, as the fold has them."""
    if event.type in ("run_started", "run_finished"):
        db.execute(
            "UPDATE runs SET state = ?, message = ?, started = ?, finished = ?, duration = ? WHERE id = ?",
            (view.state, view.message, view.started, view.finished, view.duration, view.run_id),
        )
    names = list(view.steps) if event.type == "run_finished" else [event.step] if event.step else []
    for name in names:
        step = view.steps[name]
        db.execute(
            "UPDATE steps SET state = ?, attempt = ?, queued = ?, started = ?, finished = ?, duration = ?,"
            " exit_code = ?, message = ? WHERE run_id = ? AND name = ?",
            (
                step.state,
                step.attempt,
                step.queued,
                step.started,
                step.finished,
                step.duration,
                step.exit_code,
                step.message,
                view.run_id,
                name,
            ),
        )


# What only the store keeps, beside the fold.


def _fold_run_started(db: sqlite3.Connection, event: Event) -> None:
    data = _data(event)
    db.execute(
        "UPDATE runs SET folder = COALESCE(?, folder), pipeline = COALESCE(?, pipeline),"
        " engine = COALESCE(?, engine) WHERE id = ?",
        (data.get("run_folder"), data.get("pipeline"), data.get("engine"), event.run_id),
    )
    add_steps(db, event.run_id, list(data.get("steps", [])))


def _fold_step_started(db: sqlite3.Connection, event: Event) -> None:
    data = _data(event)
    db.execute(
        "UPDATE steps SET folder = COALESCE(?, folder), log_path = COALESCE(?, log_path)"
        " WHERE run_id = ? AND name = ?",
        (data.get("folder"), data.get("log"), event.run_id, event.step),
    )
    db.execute(
        "INSERT OR REPLACE INTO attempts (run_id, step, attempt, state, started, pid) VALUES (?,?,?,?,?,?)",
        (event.run_id, event.step, event.attempt or 1, "running", event.time, data.get("pid")),
    )


def _end_attempt(db: sqlite3.Connection, event: Event) -> None:
    state = "failed" if event.type == "step_retrying" else STEP_STATE_AFTER[event.type]
    db.execute(
        "UPDATE attempts SET state = ?, finished = ?, duration = ?, exit_code = ?, message = ?"
        " WHERE run_id = ? AND step = ?"
        " AND attempt = (SELECT attempt FROM steps WHERE run_id = ? AND name = ?)",
        (
            state,
            event.time,
            event.duration,
            event.exit_code,
            event.message,
            event.run_id,
            event.step,
            event.run_id,
            event.step,
        ),
    )


def _fold_step_end(db: sqlite3.Connection, event: Event) -> None:
    data = _data(event)
    _end_attempt(db, event)
    outputs = data.get("outputs")
    db.execute(
        "UPDATE steps SET outputs = COALESCE(?, outputs), cache_key = COALESCE(?, cache_key),"
        " folder = COALESCE(?, folder), log_path = COALESCE(?, log_path),"
        " cached_from = COALESCE(?, cached_from)"
        " WHERE run_id = ? AND name = ?",
        (
            None if outputs is None else dumps(outputs),
            data.get("cache_key"),
            data.get("folder"),
            data.get("log"),
            data.get("from_run"),
            event.run_id,
            event.step,
        ),
    )


def _fold_metrics(db: sqlite3.Connection, event: Event) -> None:
    for name, value in (event.metrics or {}).items():
        db.execute(
            "INSERT OR REPLACE INTO metrics (run_id, step, name, value) VALUES (?,?,?,?)",
            (event.run_id, event.step or "", name, float(value)),
        )


def _fold_run_finished(db: sqlite3.Connection, event: Event) -> None:
    if event.state == "cancelled":
        db.execute(
            "UPDATE attempts SET state = 'cancelled', finished = ? WHERE run_id = ? AND state = 'running'",
            (event.time, event.run_id),
        )


FOLDS: dict[str, Callable[[sqlite3.Connection, Event], None]] = {
    "run_started": _fold_run_started,
    "step_started": _fold_step_started,
    "step_retrying": _end_attempt,
    "step_succeeded": _fold_step_end,
    "step_failed": _fold_step_end,
    "step_cached": _fold_step_end,
    "step_skipped": _fold_step_end,
    "metrics": _fold_metrics,
    "run_finished": _fold_run_finished,
}
