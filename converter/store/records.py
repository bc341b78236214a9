"""What the run store answers with: runs, steps and attempts as frozen records, read from its tables."""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class AttemptRecord:
    attempt: int
    state: str
    started: float | None
    finished: float | None
    duration: float | None
    exit_code: int | None
    message: str | None
    pid: int | None


@dataclass(frozen=True)
class StepRecord:
    name: str
    state: str
    attempt: int | None = None
    queued: float | None = None
    started: float | None = None
    finished: float | None = None
    duration: float | None = None
    exit_code: int | None = None
    message: str | None = None
    folder: str | None = None  # log.txt, report.html, cell_outputs.json, metrics.json live here
    log_path: str | None = None
    outputs: dict[str, str] = field(default_factory=dict)  # variable -> artifact digest
    cache_key: str | None = None
    cached_from: str | None = None  # run id whose execution a cached or resumed step reused
    metrics: dict[str, float] = field(default_factory=dict)
    attempts: tuple[AttemptRecord, ...] = ()


@dataclass(frozen=True)
class RunRecord:
    id: str
    pipeline: str
    notebook: str
    engine: str
    state: str
    message: str | None
    created: float
    started: float | None
    finished: float | None
    duration: float | None
    parameters: dict[str, Any]
    folder: str | None
    remote_id: str | None
    pid: int | None
    host: str | None
    resumed_from: str | None
    cancel_requested: bool
    steps: tuple[StepRecord, ...] = ()

    @property
    def metrics(self) -> dict[str, float]:
        """The union of every step's metrics, in step order."""
        return {name: value for step in self.steps for name, value in step.metrics.items()}


@dataclass(frozen=True)
class StepOutcome:
    """A succeeded (or cached) step of an earlier run, as `--resume` reuses it."""

    outputs: dict[str, str]
    metrics: dict[str, float]
    folder: str | None
    log_path: str | None
    cache_key: str | None


def run_record(db: sqlite3.Connection, row: sqlite3.Row) -> RunRecord:
    run_id = row["id"]
    metrics: dict[str, dict[str, float]] = {}
    for m in db.execute("SELECT step, name, value FROM metrics WHERE run_id = ? ORDER BY rowid", (run_id,)):
        metrics.setdefault(m["step"], {})[m["name"]] = m["value"]
    attempts: dict[str, list[AttemptRecord]] = {}
    for a in db.execute("SELECT * FROM attempts WHERE run_id = ? ORDER BY step, attempt", (run_id,)):
        attempts.setdefault(a["step"], []).append(
            AttemptRecord(
                a["attempt"],
                a["state"],
                a["started"],
                a["finished"],
                a["duration"],
                a["exit_code"],
                a["message"],
                a["pid"],
            )
        )
    steps = tuple(
        StepRecord(
            name=s["name"],
            state=s["state"],
            attempt=s["attempt"],
            queued=s["queued"],
            started=s["started"],
            finished=s["finished"],
            duration=s["duration"],
            exit_code=s["exit_code"],
            message=s["message"],
            folder=s["folder"],
            log_path=s["log_path"],
            outputs=json.loads(s["outputs"] or "{}"),
            cache_key=s["cache_key"],
            cached_from=s["cached_from"],
            metrics=metrics.get(s["name"], {}),
            attempts=tuple(attempts.get(s["name"], ())),
        )
        for s in db.execute("SELECT * FROM steps WHERE run_id = ? ORDER BY position", (run_id,))
    )
    return RunRecord(
        id=run_id,
        pipeline=row["pipeline"],
        notebook=row["notebook"],
        engine=row["engine"],
        state=row["state"],
        message=row["message"],
        created=row["created"],
        started=row["started"],
        finished=row["finished"],
        duration=row["duration"],
        parameters=json.loads(row["parameters"]),
        folder=row["folder"],
        remote_id=row["remote_id"],
        pid=row["pid"],
        host=row["host"],
        resumed_from=row["resumed_from"],
        cancel_requested=bool(row["cancel_requested"]),
        steps=steps,
    )
