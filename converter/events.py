"""The one event stream every engine emits and every user interface reads.

The CLI, the notebook widgets and the JupyterLab panel know engines only through these events,
so a local run and a cluster run look the same to them. Events are JSON-serialisable and carry a
per-run sequence number so a reconnecting client can resume after the last one it saw.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
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
    states: dict[str, StepState] = {name: "pending" for name in steps}
    for event in events:
        if event.step is not None and event.type in STEP_STATE_AFTER:
            states[event.step] = STEP_STATE_AFTER[event.type]
        elif event.type == "run_finished" and event.state == "cancelled":
            for name, state in states.items():
                if state not in FINAL_STEP_STATES:
                    states[name] = "cancelled"
    return states
