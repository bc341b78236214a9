"""Run an engine on a thread, cancellable: the one way every face runs an engine.

`EngineThread` runs ``engine.run`` on a worker thread and keeps its result or error; `cancel` may
come before the engine has started (the run then does not start, or is cancelled at its first
event: an engine that resets its cancel flag when a run starts cannot lose it). `run_cancellable`
is the blocking form for a main thread (`cellpipe run`, papermill): Ctrl-C, and SIGTERM through
`interrupts_cancel`, cancel the run and wait for its engine to clean up. The Jupyter side
(`jupyter_ext.runs.LiveRun`) and local tuning build on `EngineThread` too.
"""

from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from types import FrameType

from converter.engines.base import Engine, RunRequest, RunResult
from converter.events import Event, EventSink

log = logging.getLogger(__name__)

WAIT_SLICE_SECONDS = 0.2  # how often a waiting main thread looks up for a signal


class EngineThread:
    """One `engine.run(request, sinks)` on its own daemon thread."""

    def __init__(
        self,
        engine: Engine,
        request: RunRequest,
        sinks: Sequence[EventSink] = (),
        *,
        on_done: Callable[[EngineThread], None] | None = None,
        name: str = "cellpipe-engine",
    ):
        """`on_done` is called on the worker thread once `result` or `error` is set and `done` is true."""
        self.engine, self.request = engine, request
        self.result: RunResult | None = None  # None with no error: cancelled before it started
        self.error: BaseException | None = None
        self._sinks = list(sinks)
        self._on_done = on_done
        self._cancel_asked = False
        self._seen_event = False
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._work, name=name, daemon=True)

    def start(self) -> EngineThread:
        self._thread.start()
        return self

    def cancel(self) -> None:
        """Ask the run to stop; safe from any thread and before the run started."""
        self._cancel_asked = True
        self.engine.cancel()

    @property
    def cancel_asked(self) -> bool:
        return self._cancel_asked

    @property
    def done(self) -> bool:
        return self._done.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        return self._done.wait(timeout)

    def outcome(self) -> RunResult | None:
        """After `wait`: the result, the engine's error raised, or None if it never started."""
        if self.error is not None:
            raise self.error
        return self.result

    def _event(self, event: Event) -> None:
        if not self._seen_event:
            self._seen_event = True
            if self._cancel_asked:
                self.engine.cancel()  # asked while the engine was setting up the run
        for sink in list(self._sinks):
            try:
                sink(event)
            except Exception as error:  # a broken display must never fail a step or the run
                self._sinks.remove(sink)
                log.warning("cellpipe: an event consumer failed and gets no more events: %r", error)

    def _work(self) -> None:
        try:
            if not self._cancel_asked:
                self.result = self.engine.run(self.request, [self._event])
        except BaseException as error:  # handed to whoever reads `outcome`
            self.error = error
        finally:
            self._done.set()  # before `on_done`: a waiter it wakes sees the thread done
            if self._on_done is not None:
                self._on_done(self)


def run_cancellable(
    engine: Engine,
    request: RunRequest,
    sinks: Sequence[EventSink],
    on_cancel: Callable[[], None] = lambda: None,
) -> RunResult:
    """Run on a worker thread so Ctrl-C (or SIGTERM from a CI runner) lands here, not inside the engine.

    The first interrupt asks the engine to cancel and then waits for it to clean up: the run ends
    "cancelled" with its state saved and no step process left behind.
    """
    worker = EngineThread(engine, request, sinks)
    with interrupts_cancel():
        worker.start()

        def cancel() -> None:
            on_cancel()
            worker.cancel()

        wait_interruptibly(worker.wait, cancel)
    result = worker.outcome()
    if result is None:  # interrupted before the engine started the run: nothing ran, nothing to report
        raise KeyboardInterrupt
    return result


def wait_interruptibly(done: Callable[[float], bool], cancel: Callable[[], None]) -> None:
    """Wait until `done(timeout)` is true; the first Ctrl-C calls `cancel`, later ones are ignored.

    Waits in slices (Event.wait, not Thread.join: an interrupt inside join can leave the thread
    state wrong), so signals are handled while waiting.
    """
    cancelled = False
    while True:
        try:
            if done(WAIT_SLICE_SECONDS):
                return
        except KeyboardInterrupt:
            if not cancelled:
                cancelled = True
                cancel()


@contextmanager
def interrupts_cancel() -> Iterator[None]:
    """SIGTERM (a CI runner's or a scheduler's stop) raises KeyboardInterrupt, as Ctrl-C does, and
    so does SIGINT even where it was ignored (a background job of a script).

    Only in the main thread: signal handlers cannot be set elsewhere (e.g. in the Jupyter server),
    where this does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def interrupt(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    # A shell starts `cellpipe run ... &` from a script with SIGINT ignored, and Python then
    # installs no handler: `kill -INT` would do nothing. Cancelling is what SIGINT asks for.
    previous_int = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
        signal.signal(signal.SIGINT, previous_int)
