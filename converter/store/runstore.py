"""The run store: every run's state in one SQLite file that several processes share.

Engines subscribe `RunStore.record` to their event stream; the CLI (`cellpipe runs ...`), the
server extension and later engines read the same tables. One short ``BEGIN IMMEDIATE`` transaction
per event keeps the tables consistent after every event; WAL mode lets readers work while an
engine writes, and a generous ``busy_timeout`` makes concurrent writers wait instead of failing.

Log lines are not stored here (a chatty step would turn every line into a write transaction):
they are in the step's ``log.txt``, whose path the ``steps`` table holds. Every other event is
kept in ``events`` so a client can replay or resume a run's stream.

A run whose engine process died (SIGKILL, OOM killer, power loss) would stay "running" forever.
So every read that could see it running (`get_run`, `list_runs`, `events`, `request_cancel`)
first checks that the engine of each running local run is alive, and fails the run if it is not:
message "engine stopped", running steps failed, waiting ones cancelled, and the ``step_failed``
and ``run_finished`` events a live engine would have sent, so streams and followers end. The
engine's pid is stored with its start time, so a recycled pid is not mistaken for it. (The next
engine start does the same for every run, `mark_orphans`, and discards their staged outputs.)
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import secrets
import socket
import sqlite3
import sys
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psutil

from converter.errors import CellpipeError
from converter.events import FINAL_STEP_STATES, Event
from converter.store.records import AttemptRecord, RunRecord, StepOutcome, StepRecord, run_record
from converter.store.tables import FOLDS, SCHEMA, SCHEMA_VERSION, add_steps, dumps, load_view, write_view

# The records are defined in `records`; they are part of this module's interface.
__all__ = [
    "ORPHAN_MESSAGE",
    "AttemptRecord",
    "RunRecord",
    "RunStore",
    "StepOutcome",
    "StepRecord",
    "new_run_id",
]

_BUSY_TIMEOUT_MS = 30_000
ORPHAN_MESSAGE = "engine stopped"
_CANDIDATES = 5  # run ids listed for an ambiguous prefix


class AmbiguousRunId(CellpipeError):
    """Several runs start with the prefix given; `candidates` lists (some of) them."""

    def __init__(self, prefix: str, candidates: list[str], more: bool):
        self.candidates = candidates
        listed = ", ".join(candidates) + (", ..." if more else "")
        super().__init__(f"run id {prefix!r} is ambiguous, several runs start with it: {listed}")


def new_run_id(now: float | None = None) -> str:
    """Short, sortable and readable: `20261126-173405-3f2a`."""
    return time.strftime("%Y%m%d-%H%M%S", time.localtime(now)) + "-" + secrets.token_hex(2)


def _process_started(pid: int) -> float | None:
    try:
        return psutil.Process(pid).create_time()
    except (psutil.NoSuchProcess, psutil.AccessDenied, ValueError):
        return None


def _alive(pid: int, started: float | None) -> bool:
    """Is the process that created a run still running (not a zombie, not a recycled pid)?"""
    try:
        process = psutil.Process(pid)
        if process.status() == psutil.STATUS_ZOMBIE:
            return False
        return started is None or abs(process.create_time() - started) < 1.0
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:  # someone else's live process
        return True


def _not_a_folder(folder: Path) -> str:
    return (
        f"the cellpipe workspace {folder} is a file, not a folder: set CELLPIPE_HOME to a folder"
        " (or move that file away)"
    )


def _unusable(path: Path, error: BaseException) -> str:
    """One line for a store SQLite cannot open or write: what, where, and what to do."""
    text = str(error) or type(error).__name__
    if "disk I/O error" in text or "full" in text or getattr(error, "errno", None) == 28:
        fix = "free some disk space there, or set CELLPIPE_HOME to a folder on another disk"
    else:
        fix = "check its permissions, or set CELLPIPE_HOME to a folder you can write"
    return f"cannot use the run store {path}: {text}; {fix}"


_OWNER_COLUMNS = "id, state, pid, pid_started, host, remote_id"


def _orphaned(row: sqlite3.Row) -> bool:
    """A running local run of this host whose engine process is gone (cluster runs have no local engine)."""
    return (
        row["state"] == "running"
        and row["remote_id"] is None
        and row["pid"] is not None
        and row["host"] in (None, socket.gethostname())
        and not _alive(row["pid"], row["pid_started"])
    )


class RunStore:
    """Runs, steps, attempts, metrics and events in SQLite; one instance per process is enough.

    Methods may be called from several threads (engines emit from reader threads).
    """

    def __init__(self, path: Path):
        """Open (or create) the store; a broken workspace is a `CellpipeError` naming the path and
        the fix, and a file that is not a SQLite database is moved aside (kept) for a fresh one."""
        self.path = Path(path)
        self._lock = threading.Lock()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError):
            raise CellpipeError(_not_a_folder(self.path.parent)) from None
        except OSError as error:
            raise CellpipeError(_unusable(self.path.parent, error)) from None
        try:
            self._open()
        except sqlite3.DatabaseError as error:
            if getattr(error, "sqlite_errorname", "") not in ("SQLITE_NOTADB", "SQLITE_CORRUPT"):
                raise CellpipeError(_unusable(self.path, error)) from None
            self._db.close()
            aside = self._move_aside()
            print(
                f"cellpipe: {self.path} is not a usable run store ({error}): moved it to {aside}"
                " and started an empty one (run history before now is in that file)",
                file=sys.stderr,
            )
            try:
                self._open()
            except sqlite3.DatabaseError as again:
                raise CellpipeError(_unusable(self.path, again)) from None

    def _open(self) -> None:
        self._db = sqlite3.connect(
            self.path, timeout=_BUSY_TIMEOUT_MS / 1000, isolation_level=None, check_same_thread=False
        )
        self._db.row_factory = sqlite3.Row
        self._db.execute(f"PRAGMA busy_timeout = {_BUSY_TIMEOUT_MS}")
        self._switch_to_wal()
        self._db.execute("PRAGMA synchronous = NORMAL")  # WAL + NORMAL: durable except on power loss
        with self._write() as db:
            if db.execute("PRAGMA user_version").fetchone()[0] < SCHEMA_VERSION:
                for statement in SCHEMA.split(";"):
                    if statement.strip():
                        db.execute(statement)
                db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    def _move_aside(self) -> Path:
        """Rename the broken file (and its WAL files) to runs.db.corrupt-<time>; another process
        may have done it already, which is as good."""
        aside = self.path.with_name(f"{self.path.name}.corrupt-{time.strftime('%Y%m%d-%H%M%S')}")
        for suffix in ("", "-wal", "-shm"):
            with contextlib.suppress(FileNotFoundError):
                os.replace(f"{self.path}{suffix}", f"{aside}{suffix}")
        return aside

    def _switch_to_wal(self) -> None:
        """SQLite answers "database is locked" at once, without its busy handler, when another
        connection holds the file while this one changes journal mode: retry for a while."""
        deadline = time.monotonic() + _BUSY_TIMEOUT_MS / 1000
        while True:
            try:
                self._db.execute("PRAGMA journal_mode = WAL")
                return
            except sqlite3.OperationalError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.02)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One short write transaction; IMMEDIATE takes the write lock up front (no upgrade deadlock)."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    @contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        """A consistent snapshot across several SELECTs."""
        with self._lock:
            self._db.execute("BEGIN")
            try:
                yield self._db
            finally:
                self._db.execute("COMMIT")

    # ------------------------------------------------------------------ writing

    def create_run(
        self,
        pipeline: str,
        notebook: str,
        engine: str,
        parameters: Mapping[str, Any] | None = None,
        steps: Sequence[str] = (),
        pid: int | None = None,
        resumed_from: str | None = None,
        remote_id: str | None = None,
    ) -> str:
        """Register a new running run owned by process `pid` (default: this one); its id."""
        pid = os.getpid() if pid is None else pid
        started = _process_started(pid)
        while True:
            now = time.time()
            run_id = new_run_id(now)
            try:
                with self._write() as db:
                    db.execute(
                        "INSERT INTO runs (id, pipeline, notebook, engine, state, created, parameters, pid,"
                        " pid_started, host, resumed_from, remote_id) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                        (
                            run_id,
                            pipeline,
                            notebook,
                            engine,
                            "running",
                            now,
                            dumps(dict(parameters or {})),
                            pid,
                            started,
                            socket.gethostname(),
                            resumed_from,
                            remote_id,
                        ),
                    )
                    add_steps(db, run_id, steps)
                return run_id
            except sqlite3.IntegrityError:  # the same second and the same 16 random bits: draw again
                continue

    def request_cancel(self, run_id: str) -> bool:
        """Ask the engine running `run_id` (in any process) to cancel it; False if it is not running
        (a run whose engine is gone is failed here instead: nobody would act on the request)."""
        self._check_run(run_id)
        with self._write() as db:
            cursor = db.execute(
                "UPDATE runs SET cancel_requested = 1 WHERE id = ? AND state = 'running'", (run_id,)
            )
            return cursor.rowcount > 0

    def record(self, event: Event) -> None:
        """Fold one event into the tables (an EventSink). Log lines are left to the log files.

        The run's and its steps' states, attempts, times and messages are the `RunView` fold's: the
        run as the tables have it, the event applied, written back for what the event touched (read in
        the same write transaction, so store instances in several processes never fold a stale view).
        The folds below add what only the store keeps: folders, outputs, cache keys, the attempts and
        metrics tables.
        """
        if event.type == "step_log":
            return
        with self._write() as db:
            _record(db, event)

    def mark_orphans(self) -> list[str]:
        """Fail running local runs of this host whose engine process is gone; their ids."""
        with self._read() as db:
            rows = db.execute(f"SELECT {_OWNER_COLUMNS} FROM runs WHERE state = 'running'").fetchall()
        return [row["id"] for row in rows if _orphaned(row) and self._fail_orphan(row["id"])]

    def _check_run(self, run_id: str) -> None:
        with self._lock:
            row = self._db.execute(f"SELECT {_OWNER_COLUMNS} FROM runs WHERE id = ?", (run_id,)).fetchone()
        if row is not None:
            self._check_engine([row])

    def _check_engine(self, rows: Sequence[sqlite3.Row]) -> bool:
        """Fail the runs among `rows` whose engine is gone (what every reader does before it answers,
        so a killed engine's run never reads as running); True if any was failed."""
        return any([self._fail_orphan(row["id"]) for row in rows if _orphaned(row)])

    def _fail_orphan(self, run_id: str) -> bool:
        """End a run whose engine died with the events a live engine would have sent (so streams end),
        recorded like any other: running steps failed; then the waiting ones cancelled. False if it
        was no longer running."""
        now = time.time()
        with self._write() as db:
            current = db.execute("SELECT state, last_seq, created FROM runs WHERE id = ?", (run_id,))
            state = current.fetchone()
            if state is None or state["state"] != "running":
                return False  # another reader or engine got there first
            running = [
                row[0]
                for row in db.execute(
                    "SELECT name FROM steps WHERE run_id = ? AND state = 'running' ORDER BY position",
                    (run_id,),
                )
            ]
            seq, stopped = state["last_seq"], ORPHAN_MESSAGE
            events = [Event(run_id, 0, "step_failed", time=now, step=n, message=stopped) for n in running]
            took = now - state["created"]
            events.append(
                Event(run_id, 0, "run_finished", time=now, state="failed", message=stopped, duration=took)
            )
            for number, event in enumerate(events, start=seq + 1):
                _record(db, dataclasses.replace(event, seq=number))
            final = tuple(FINAL_STEP_STATES)
            marks = ",".join("?" * len(final))
            db.execute(
                f"UPDATE steps SET state = 'cancelled' WHERE run_id = ? AND state NOT IN ({marks})",
                (run_id, *final),
            )
        return True

    # ------------------------------------------------------------------ reading

    def cancel_requested(self, run_id: str) -> bool:
        with self._lock:
            row = self._db.execute("SELECT cancel_requested FROM runs WHERE id = ?", (run_id,)).fetchone()
        return bool(row and row[0])

    def resolve(self, run_id: str) -> str:
        """A full run id from an id or a unique prefix of one; `CellpipeError` otherwise (an
        `AmbiguousRunId` listing the candidates when several runs start with it)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT id FROM runs WHERE id = ?"
                " UNION SELECT id FROM runs WHERE id LIKE ? ESCAPE '\\' LIMIT ?",
                (
                    run_id,
                    run_id.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%",
                    _CANDIDATES + 1,
                ),
            ).fetchall()
        ids = [row[0] for row in rows]
        if run_id in ids:
            return run_id
        if len(ids) == 1:
            return str(ids[0])
        if not ids:
            raise CellpipeError(f"no run {run_id!r} in {self.path}")
        raise AmbiguousRunId(run_id, sorted(ids)[:_CANDIDATES], more=len(ids) > _CANDIDATES)

    def get_run(self, run_id: str) -> RunRecord:
        """A run with its steps; `run_id` may be a unique prefix. CellpipeError if there is none."""
        full = self.resolve(run_id)
        self._check_run(full)
        with self._read() as db:
            row = db.execute("SELECT * FROM runs WHERE id = ?", (full,)).fetchone()
            return run_record(db, row)

    def list_runs(self, limit: int = 20) -> list[RunRecord]:
        """The newest runs first, with their steps."""
        with self._lock:
            running = self._db.execute(f"SELECT {_OWNER_COLUMNS} FROM runs WHERE state = 'running'")
            rows = running.fetchall()
        self._check_engine(rows)
        with self._read() as db:
            rows = db.execute(
                "SELECT * FROM runs ORDER BY created DESC, id DESC LIMIT ?", (limit,)
            ).fetchall()
            return [run_record(db, row) for row in rows]

    def events(self, run_id: str, after: int = 0) -> list[Event]:
        """A run's events after sequence number `after` (log lines excluded), in order; a run whose
        engine is gone ends with the events that say so."""
        self._check_run(run_id)
        with self._lock:
            rows = self._db.execute(
                "SELECT body FROM events WHERE run_id = ? AND seq > ? ORDER BY seq", (run_id, after)
            ).fetchall()
        return [Event.from_json(json.loads(row[0])) for row in rows]

    def step_succeeded_outputs(self, run_id: str) -> dict[str, StepOutcome]:
        """Steps of `run_id` that succeeded or were cached: what `--resume` reuses."""
        run = self.get_run(run_id)
        return {
            step.name: StepOutcome(
                dict(step.outputs), dict(step.metrics), step.folder, step.log_path, step.cache_key
            )
            for step in run.steps
            if step.state in ("succeeded", "cached")
        }


def _record(db: sqlite3.Connection, event: Event) -> None:
    """Fold one event into the tables, inside the caller's write transaction."""
    db.execute(
        "INSERT OR IGNORE INTO runs (id, state, created) VALUES (?, 'running', ?)", (event.run_id, event.time)
    )
    if event.step is not None:
        add_steps(db, event.run_id, [event.step])
    view = load_view(db, event.run_id)
    if view.apply(event):
        fold = FOLDS.get(event.type)
        if fold is not None:
            fold(db, event)
        write_view(db, view, event)
    db.execute(
        "INSERT OR REPLACE INTO events (run_id, seq, type, step, time, body) VALUES (?,?,?,?,?,?)",
        (event.run_id, event.seq, event.type, event.step, event.time, dumps(event.to_json())),
    )
    db.execute("UPDATE runs SET last_seq = MAX(last_seq, ?) WHERE id = ?", (event.seq, event.run_id))
