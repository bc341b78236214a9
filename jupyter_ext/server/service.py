"""What the handlers share (`Service`: the root, the run store, live runs, metrics, KFP endpoints), the
live runs' shared event feeds, and the JSON views of runs (a stored record, or a live run folded with
`RunView`)."""

from __future__ import annotations

import asyncio
import contextlib
import json
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from converter.events import Event, RunView
from converter.store.runstore import RunRecord, RunStore
from converter.store.workspace import Workspace
from jupyter_ext.metrics import RunMetrics
from jupyter_ext.runs import LiveRun, LiveRuns
from jupyter_ext.server.endpoints import KfpEndpoints
from jupyter_ext.server.paths import shown_path


@dataclass
class Service:
    """What the handlers share: the root they serve, the run store, live runs and metrics."""

    root: Path
    workspace: Workspace
    runs: LiveRuns = field(default_factory=LiveRuns)
    kfp_endpoints: KfpEndpoints = field(default_factory=lambda: KfpEndpoints({}))
    metrics: RunMetrics = field(default_factory=RunMetrics)
    # One worker: reading and compiling notebooks stays off the event loop, and the KFP compiler,
    # which patches module state while it works, never runs twice at once.
    converter: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(1, thread_name_prefix="cellpipe-convert")
    )
    _store: RunStore | None = None
    _feeds: dict[str, Feed] = field(default_factory=dict)

    @property
    def store(self) -> RunStore:
        if self._store is None:
            self._store = RunStore(self.workspace.database)
        return self._store

    def feed(self, run: LiveRun) -> Feed:
        """The shared feed of a live run (called on the event loop)."""
        assert run.run_id is not None
        feed = self._feeds.get(run.run_id)
        if feed is None:
            feed = self._feeds[run.run_id] = Feed(run, asyncio.get_running_loop())
        return feed

    def leave(self, feed: Feed, wake: asyncio.Event) -> None:
        """A client is gone; the feed goes with its last client (the run keeps the events)."""
        feed.clients.discard(wake)
        if not feed.clients and feed.run.run_id is not None:
            self._feeds.pop(feed.run.run_id, None)
            feed.close()

    def stop_runs(self) -> None:
        """At server exit: cancel the runs still going so no step process outlives the server."""
        running = [run for run in self.runs.all() if not run.finished]
        for run in running:
            run.cancel()
        for run in running:
            run.wait(10)


def run_json(root: Path, record: RunRecord) -> dict[str, Any]:
    return {
        "id": record.id,
        "pipeline": record.pipeline,
        "notebook": shown_path(root, record.notebook),
        "engine": record.engine,
        "state": record.state,
        "message": record.message,
        "created": record.created,
        "started": record.started,
        "finished": record.finished,
        "duration": record.duration,
        "parameters": record.parameters,
        "remote_id": record.remote_id,
        "resumed_from": record.resumed_from,
        "cancel_requested": record.cancel_requested,
        "metrics": record.metrics,
        "steps": [
            {
                "name": step.name,
                "state": step.state,
                "attempt": step.attempt,
                "started": step.started,
                "finished": step.finished,
                "duration": step.duration,
                "exit_code": step.exit_code,
                "message": step.message,
                "cached_from": step.cached_from,
                "metrics": step.metrics,
            }
            for step in record.steps
        ],
    }


def live_run_json(root: Path, run: LiveRun) -> dict[str, Any]:
    """A run the store does not know (an engine that keeps no local record), folded from its events."""
    events = run.events_after(0)
    data = events[0].data or {}
    view = RunView([str(name) for name in data.get("steps", [s.name for s in run.request.pipeline.steps])])
    for event in events:
        view.apply(event)
    return {
        "id": view.run_id,
        "pipeline": view.pipeline or run.request.pipeline.name,
        "notebook": shown_path(root, str(run.request.notebook)),
        "engine": view.engine or run.engine.name,
        "state": run.state,
        "message": view.message,
        "created": events[0].time,
        "started": view.started if view.started is not None else events[0].time,
        "finished": view.finished,
        "duration": view.duration,
        "parameters": data.get("parameters", run.request.parameters),
        "metrics": view.metrics,
        "steps": [
            {
                "name": name,
                "state": step.state,
                "attempt": step.attempt,
                "duration": step.duration,
                "message": step.message,
            }
            for name, step in view.steps.items()
        ],
    }


def sse_frame(event: Event) -> bytes:
    body = json.dumps(event.to_json(), separators=(",", ":"), default=str)
    return f"id: {event.seq}\nevent: {event.type}\ndata: {body}\n\n".encode()


class Feed:
    """One live run's stream as this server's clients read it.

    Each event is encoded once, on the event loop, for every client; the engine's thread wakes the
    loop at most once per batch of events (not once per event per client), and the loop then wakes
    every client of the run. This is what keeps fifty clients of a chatty run within milliseconds.
    """

    def __init__(self, run: LiveRun, loop: asyncio.AbstractEventLoop):
        self.run = run
        self.loop = loop
        self.clients: set[asyncio.Event] = set()
        self._frames: list[bytes] = []
        self._first_seq = 1
        self._last_seq = 0
        self._ended = False
        self._pending = False  # a wake-up is already on its way to the loop
        self._unsubscribe = run.listen(self._on_event)

    def _on_event(self) -> None:  # on the engine's thread
        if self._pending:
            return
        self._pending = True
        with contextlib.suppress(RuntimeError):  # the server's loop is gone
            self.loop.call_soon_threadsafe(self._wake_all)

    def _wake_all(self) -> None:
        self._pending = False
        for wake in self.clients:
            wake.set()

    def join(self) -> asyncio.Event:
        wake = asyncio.Event()
        self.clients.add(wake)
        return wake

    def close(self) -> None:
        self._unsubscribe()

    def frames_after(self, seq: int) -> tuple[bytes, int, bool]:
        """The encoded events after `seq`, the last one's sequence number, and whether the run ended."""
        new = self.run.events_after(self._last_seq)
        if new:
            if not self._frames:
                self._first_seq = new[0].seq
            self._frames.extend(map(sse_frame, new))
            self._last_seq = new[-1].seq
            self._ended = self._ended or new[-1].type == "run_finished"
        start = max(0, seq - self._first_seq + 1)
        ended = self._ended or (self.run.finished and not self.run.events_after(self._last_seq))
        return b"".join(self._frames[start:]), self._last_seq, ended
