"""The one event stream every engine emits and every user interface reads.

The CLI, the notebook widgets and the JupyterLab panel know engines only through these events,
so a local run and a cluster run look the same to them. Events are JSON-serialisable and carry a
per-run sequence number so a reconnecting client can resume after the last one it saw.

`RunView` is the one fold of a stream into the run's state (steps, attempts, times, messages, log
tails, metrics): every reader folds with it, and the lab extension's TypeScript twin is checked
against it on the same recorded streams (tests/event_streams/).
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

EventType = Literal[
    "run_started",
    "step_queued",
    "step_started",
    "step_log",
    "step_retrying",
    "step_succeeded",
    "step_failed",
    "step_cached",
    "step_skipped",
    "metrics",
    "run_finished",
]
RunState = Literal["running", "succeeded", "failed", "cancelled"]
StepState = Literal["pending", "queued", "running", "succeeded", "failed", "cached", "skipped", "cancelled"]

# The state a step is in after each step event: lets any consumer fold events into a status table.
STEP_STATE_AFTER: dict[str, StepState] = {
    "step_queued": "queued",
    "step_started": "running",
    "step_retrying": "queued",
    "step_succeeded": "succeeded",
    "step_failed": "failed",
    "step_cached": "cached",
    "step_skipped": "skipped",
}
FINAL_STEP_STATES: frozenset[str] = frozenset({"succeeded", "failed", "cached", "skipped", "cancelled"})
FINAL_RUN_STATES: frozenset[str] = frozenset({"succeeded", "failed", "cancelled"})


@dataclass(frozen=True)
class Event:
    run_id: str
    seq: int  # 1, 2, 3... within a run; resume with "after=seq"
    type: EventType
    time: float = field(default_factory=time.time)
    step: str | None = None
    state: str | None = None  # run_finished: the run's final RunState
    attempt: int | None = None  # step_started/step_retrying/step_failed: 1-based attempt
    stream: str | None = None  # step_log: "stdout" or "stderr"
    line: str | None = None  # step_log: one line without its newline
    message: str | None = None  # step_failed/step_skipped/run_finished: why, for humans
    exit_code: int | None = None  # step_failed
    duration: float | None = None  # step_succeeded/step_failed/run_finished: seconds
    metrics: dict[str, float] | None = None  # metrics: name -> value
    data: dict[str, Any] | None = None  # run_started: {"pipeline", "engine", "steps", "parameters", ...}

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if v is not None}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Event:
        return cls(**data)


EventSink = Callable[[Event], None]


class EventLog:
    """Numbers events of one run and fans them out to sinks; keeps them for late subscribers."""

    def __init__(self, run_id: str, sinks: list[EventSink] | None = None):
        self.run_id = run_id
        self.events: list[Event] = []
        self._sinks = list(sinks or [])
        self._lock = threading.Lock()  # engines emit from several threads; numbering must stay gap-free

    def subscribe(self, sink: EventSink) -> None:
        self._sinks.append(sink)

    def emit(self, type: EventType, **fields: Any) -> Event:
        with self._lock:
            event = Event(run_id=self.run_id, seq=len(self.events) + 1, type=type, **fields)
            self.events.append(event)
            for sink in list(self._sinks):
                sink(event)
        return event


def step_states(events: list[Event], steps: list[str]) -> dict[str, StepState]:
    """Fold a stream of events into each step's current state."""
    view = RunView(steps)
    for event in events:
        view.apply(event)
    return {name: step.state for name, step in view.steps.items()}


# ---------------------------------------------------------------------- the fold


@dataclass
class StepView:
    """One step as its events left it; times are the events' (epoch seconds)."""

    name: str
    state: StepState = "pending"
    attempt: int | None = None  # 1-based, of the current (or last) attempt
    queued: float | None = None
    started: float | None = None  # start of the current attempt
    finished: float | None = None
    duration: float | None = None  # of the finished attempt
    message: str | None = None  # why the attempt ended (failed, retried, skipped); cleared by a new attempt
    exit_code: int | None = None
    log: deque[str] = field(default_factory=deque)  # the last `log_lines` lines

    def seconds(self, now: float) -> float | None:
        """How long the step took, or has been running for; None before it started."""
        if self.duration is not None:
            return self.duration
        return now - self.started if self.started is not None and self.state == "running" else None

    def to_json(self) -> dict[str, Any]:
        return {
            "state": self.state,
            "attempt": self.attempt,
            "queued": self.queued,
            "started": self.started,
            "finished": self.finished,
            "duration": self.duration,
            "message": self.message,
            "exit_code": self.exit_code,
            "log": list(self.log),
        }


class RunView:
    """The one fold of an event stream: the run's state, each step's state, attempt, times, message and
    log tail, and the metrics. Incremental (`apply` one event at a time, in seq order); every reader of
    events (CLI progress, JUnit, widgets, the server, the run store's bookkeeping) folds with it, and the
    lab extension's `RunView` (labextension/src/events.ts) is the same fold, checked against the same
    recorded streams (tests/event_streams/).

    An event whose seq is not after the last one applied is a duplicate (a reconnecting stream) and is
    ignored; events without a number (seq 0) always apply. Not thread-safe: callers that fold on one
    thread and read on another hold their own lock.
    """

    def __init__(self, steps: Sequence[str] = (), log_lines: int = 200) -> None:
        self.log_lines = log_lines
        self.run_id = ""
        self.pipeline = ""
        self.engine = ""
        self.data: dict[str, Any] = {}  # the run_started event's data
        self.state = "starting"  # then running, and a final RunState
        self.message: str | None = None
        self.started: float | None = None
        self.finished: float | None = None
        self.duration: float | None = None
        self.steps: dict[str, StepView] = {}
        self.metrics: dict[str, float] = {}  # by name; a later value wins
        self.step_metrics: dict[str, dict[str, float]] = {}  # by step ("" for the run's own)
        self.last_seq = 0
        for name in steps:
            self.step(name)

    def step(self, name: str) -> StepView:
        """The step's view, added (pending) if the run has not mentioned it yet."""
        view = self.steps.get(name)
        if view is None:
            view = self.steps[name] = StepView(name, log=deque(maxlen=self.log_lines))
        return view

    @property
    def ended(self) -> bool:
        return self.state in FINAL_RUN_STATES

    def counts(self) -> dict[str, int]:
        """How many steps are in each state."""
        counts: dict[str, int] = {}
        for view in self.steps.values():
            counts[view.state] = counts.get(view.state, 0) + 1
        return counts

    def apply(self, event: Event) -> bool:
        """Fold one event in; False if it was a duplicate and changed nothing."""
        if 0 < event.seq <= self.last_seq:
            return False
        self.last_seq = max(self.last_seq, event.seq)
        self.run_id = self.run_id or event.run_id
        step = self.step(event.step) if event.step is not None else None
        if event.type == "run_started":
            self.data = dict(event.data or {})
            self.state, self.started = "running", event.time
            self.pipeline = str(self.data.get("pipeline", ""))
            self.engine = str(self.data.get("engine", ""))
            for name in self.data.get("steps", []):
                self.step(str(name))
        elif event.type == "run_finished":
            self.state = event.state or "failed"
            self.message, self.finished, self.duration = event.message, event.time, event.duration
            if self.state == "cancelled":
                for view in self.steps.values():
                    if view.state not in FINAL_STEP_STATES:
                        view.state = "cancelled"
        elif event.type == "metrics":
            values = {name: float(value) for name, value in (event.metrics or {}).items()}
            self.metrics.update(values)
            self.step_metrics.setdefault(event.step or "", {}).update(values)
        elif event.type == "step_log":
            if step is not None and event.line is not None:
                step.log.append(event.line)
        elif step is not None and event.type in STEP_STATE_AFTER:
            step.state = STEP_STATE_AFTER[event.type]
            if event.attempt is not None:
                step.attempt = event.attempt
            if event.type == "step_queued":
                step.queued = event.time
            elif event.type == "step_started":
                step.started, step.finished, step.duration = event.time, None, None
                step.message = step.exit_code = None
            else:
                if step.state in FINAL_STEP_STATES:
                    step.finished = event.time
                if event.duration is not None:
                    step.duration = event.duration
                if event.message:
                    step.message = event.message
                if event.exit_code is not None:
                    step.exit_code = event.exit_code
        return True

    def to_json(self) -> dict[str, Any]:
        """The folded state as plain JSON: what the TypeScript fold's `toJSON()` gives for the same stream."""
        return {
            "run_id": self.run_id,
            "pipeline": self.pipeline,
            "engine": self.engine,
            "state": self.state,
            "message": self.message,
            "started": self.started,
            "finished": self.finished,
            "duration": self.duration,
            "last_seq": self.last_seq,
            "metrics": dict(self.metrics),
            "step_metrics": {k: dict(v) for k, v in self.step_metrics.items()},
            "steps": {name: view.to_json() for name, view in self.steps.items()},
        }
