"""Runs executing in this process (the Jupyter server or a kernel), known only through their events.

`LiveRun` runs ``engine.run`` on a worker thread (`converter.engines.runner.EngineThread`), keeps
every event in memory (log lines included, which the run store does not keep) so a client can
replay the stream from any sequence number, and wakes listeners as events arrive. Both the REST
API and the notebook widgets build on it, so they see exactly the same stream whatever the engine.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future

from converter.engines.base import Engine, RunRequest, RunResult
from converter.engines.lifecycle import error_message
from converter.engines.runner import EngineThread
from converter.errors import CellpipeError
from converter.events import Event, EventSink

log = logging.getLogger(__name__)

Waker = Callable[[], None]


class LiveRun:
    """One run of `engine` on a worker thread; its events in memory, in sequence order."""

    def __init__(self, engine: Engine, request: RunRequest, sinks: Sequence[EventSink] = ()):
        """`sinks` see every event on the engine's thread, after it is stored; they must be quick."""
        self.engine = engine
        self.request = request
        self.run_id: str | None = None
        self.result: RunResult | None = None
        self.error: BaseException | None = None
        self._sinks = list(sinks)
        self._events: list[Event] = []
        self._lock = threading.Lock()
        self._wakers: list[Waker] = []
        self._started: Future[str] = Future()
        self._done = threading.Event()
        self._worker = EngineThread(engine, request, [self._record], on_done=self._ended, name="cellpipe-run")

    # ------------------------------------------------------------------ life cycle

    def start(self) -> Future[str]:
        """Start the run; the future gives the run id at the first event, or the engine's refusal."""
        self._worker.start()
        return self._started

    def cancel(self) -> None:
        self._worker.cancel()

    def wait(self, timeout: float | None = None) -> bool:
        """True once the run has ended (its `run_finished` event is stored)."""
        return self._done.wait(timeout)

    @property
    def finished(self) -> bool:
        return self._done.is_set()

    @property
    def state(self) -> str:
        last = self.last_event()
        if last is not None and last.type == "run_finished":
            return last.state or "failed"
        return "running"

    def _ended(self, worker: EngineThread) -> None:
        """On the engine's thread, once `engine.run` returned or raised."""
        self.result, self.error = worker.result, worker.error
        error = self.error
        if error is not None:  # reported through the stream and `error`; the thread just ends
            if self._started.done():
                log.error(
                    "cellpipe: engine %s failed during run %s",
                    self.engine.name,
                    self.run_id,
                    exc_info=(type(error), error, error.__traceback__),
                )
            else:
                self._started.set_exception(error)
        elif not self._started.done():  # cancelled before the engine started it
            self._started.set_exception(CellpipeError("the run was cancelled before it started"))
        if self._started.done() and self.last_event() is not None and not self.finished:
            self._finish_for_engine()  # (a run refused before it started has no stream to end)
        self._done.set()

    def _finish_for_engine(self) -> None:
        """An engine that raised without ending its stream: end it, so no client waits forever."""
        last = self.last_event()
        assert last is not None and self.run_id is not None
        message = error_message(self.error) if self.error else "engine error: the engine stopped"
        self._record(Event(self.run_id, last.seq + 1, "run_finished", state="failed", message=message))

    # ------------------------------------------------------------------ the stream

    def _record(self, event: Event) -> None:
        with self._lock:
            self._events.append(event)
            wakers = list(self._wakers)
        if self.run_id is None:
            self.run_id = event.run_id
            self._started.set_result(event.run_id)
        for sink in self._sinks:
            try:
                sink(event)
            except Exception:  # a broken display must never stop the engine
                log.exception("cellpipe: event sink failed on %s", event.type)
        if event.type == "run_finished":
            self._done.set()
        for wake in wakers:
            wake()

    def events_after(self, seq: int) -> list[Event]:
        """Events with a sequence number above `seq`, in order (sequence numbers have no gaps)."""
        with self._lock:
            if not self._events:
                return []
            first = self._events[0].seq
            return self._events[max(0, seq - first + 1) :]

    def last_event(self) -> Event | None:
        with self._lock:
            return self._events[-1] if self._events else None

    def listen(self, wake: Waker) -> Callable[[], None]:
        """Call `wake` (on the engine's thread) after each new event; returns the unsubscribe function."""
        with self._lock:
            self._wakers.append(wake)

        def unsubscribe() -> None:
            with self._lock:
                if wake in self._wakers:
                    self._wakers.remove(wake)

        return unsubscribe


class LiveRuns:
    """The runs this process started, by id; finished ones beyond `keep_finished` are forgotten.

    Forgotten runs stay in the run store (without their log lines); forgetting them keeps a
    long-lived server's memory from growing with every run it ever started.
    """

    def __init__(self, keep_finished: int = 32):
        self.keep_finished = keep_finished
        self._runs: dict[str, LiveRun] = {}  # in start order
        self._lock = threading.Lock()

    def add(self, run: LiveRun) -> None:
        assert run.run_id is not None
        with self._lock:
            self._runs[run.run_id] = run
            finished = [run_id for run_id, r in self._runs.items() if r.finished]
            for run_id in finished[: max(0, len(finished) - self.keep_finished)]:
                del self._runs[run_id]

    def get(self, run_id: str) -> LiveRun | None:
        with self._lock:
            return self._runs.get(run_id)

    def all(self) -> list[LiveRun]:
        with self._lock:
            return list(self._runs.values())
