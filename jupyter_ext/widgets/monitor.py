"""The run monitor: one run's live view in a notebook, fed by its events from any thread.

Three jobs, kept apart: taking events in (`feed` queues them; the monitor's own thread folds them into
a `RunView` and redraws at most a few times a second, so the kernel stays free), drawing (the HTML
comes from `render`, pure functions of the fold), and the controls (progress bar, the step whose log
shows, Cancel). Where no live kernel renders the widget (a saved notebook on GitHub, nbconvert), the
monitor's output carries the HTML summary too, replaced by the final one when the run ends.
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import ipywidgets as widgets
from IPython.display import display, update_display

from converter.events import FINAL_RUN_STATES, Event, RunView
from jupyter_ext.widgets import render

LOG_TAIL_LINES = 200
REDRAW_SECONDS = 0.25  # at most four redraws a second, however chatty the run
TICK_SECONDS = 1.0  # elapsed times move on even when no event comes


class RunMonitor:
    """Live view of one run, fed with its events by `feed` from any thread."""

    def __init__(self, cancel: Callable[[], None] | None = None):
        self.view = RunView(log_lines=LOG_TAIL_LINES)  # the run as its events left it
        self.url: str | None = None
        self.upstream: dict[str, list[str]] = {}
        self.events_applied = 0
        self._cancel = cancel
        self._lock = threading.Lock()  # guards the state above between the monitor thread and readers
        self._inbox: queue.SimpleQueue[Event] = queue.SimpleQueue()
        self._done = threading.Event()
        self._display_id = f"cellpipe-run-{uuid.uuid4().hex}"
        self._displayed = False

        self.header = widgets.HTML()
        self.dag = widgets.HTML()
        self.progress = widgets.IntProgress(value=0, min=0, max=1, description="0/0")
        self.cancel_button = widgets.Button(
            description="Cancel", icon="stop", button_style="danger", disabled=cancel is None
        )
        self.cancel_button.on_click(self._on_cancel)
        self.step_choice = widgets.Dropdown(description="Log of", options=[])
        self.step_choice.observe(self._on_step_choice, names="value")
        self._user_picked = False  # the user chose a step: stop following the running one
        self._auto_choice = False  # the monitor itself is changing the choice
        self.log = widgets.Textarea(
            value="", disabled=True, layout=widgets.Layout(width="100%", height="14em"), rows=12
        )
        self.metrics_table = widgets.HTML()
        self.widget = widgets.VBox(
            [
                self.header,
                self.dag,
                widgets.HBox([self.progress, self.cancel_button]),
                self.step_choice,
                self.log,
                self.metrics_table,
            ]
        )
        self._thread: threading.Thread | None = None  # started by the first event
        self._draw()

    # ------------------------------------------------------------------ input

    def feed(self, event: Event) -> None:
        """Hand over one event (an `EventSink`): safe from any thread, and it never waits for a redraw."""
        self._inbox.put(event)
        if self._thread is None:
            with self._lock:
                if self._thread is None:
                    self._thread = threading.Thread(
                        target=self._apply_events, name="cellpipe-monitor", daemon=True
                    )
                    self._thread.start()

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the run ended and the monitor shows its final state; False on timeout."""
        return self._done.wait(timeout)

    @property
    def finished(self) -> bool:
        return self._done.is_set()

    @property
    def run_id(self) -> str | None:
        return self.view.run_id or None

    @property
    def pipeline(self) -> str:
        return self.view.pipeline

    @property
    def engine(self) -> str:
        return self.view.engine

    @property
    def state(self) -> str:
        """starting, running, then succeeded, failed or cancelled."""
        return self.view.state

    @property
    def message(self) -> str | None:
        return self.view.message

    @property
    def steps(self) -> list[str]:
        with self._lock:
            return list(self.view.steps)

    @property
    def metrics(self) -> dict[tuple[str, str], float]:
        """(step, metric name) -> value; the step is "" for metrics of the run itself."""
        with self._lock:
            return {(s, n): v for s, values in self.view.step_metrics.items() for n, v in values.items()}

    @property
    def step_states(self) -> dict[str, str]:
        """Each step's state as the monitor shows it."""
        with self._lock:
            return {name: step.state for name, step in self.view.steps.items()}

    def log_tail(self, step: str) -> list[str]:
        with self._lock:
            view = self.view.steps.get(step)
            return list(view.log) if view is not None else []

    # ------------------------------------------------------------------ the monitor's thread

    def _apply_events(self) -> None:
        """Apply queued events; redraw at most every REDRAW_SECONDS, and every TICK_SECONDS while running."""
        drawn = 0.0
        pending = False  # applied events not drawn yet
        while True:
            wait = TICK_SECONDS if not pending else max(0.0, REDRAW_SECONDS - (time.monotonic() - drawn))
            try:
                event: Event | None = self._inbox.get(timeout=wait)
            except queue.Empty:
                event = None
            while event is not None:
                self._apply(event)
                pending = True
                try:
                    event = self._inbox.get_nowait()
                except queue.Empty:
                    event = None
            if self.state in FINAL_RUN_STATES:
                self._draw()
                self._publish()
                self._done.set()
                return
            since = time.monotonic() - drawn
            if (pending and since >= REDRAW_SECONDS) or (self.state == "running" and since >= TICK_SECONDS):
                self._draw()
                drawn, pending = time.monotonic(), False

    def _apply(self, event: Event) -> None:
        with self._lock:
            self.events_applied += 1
            self.view.apply(event)
            if event.type == "run_started":
                data = event.data or {}
                self.url = data.get("url")
                self.upstream = {str(k): list(v) for k, v in dict(data.get("upstream", {})).items()}

    # ------------------------------------------------------------------ drawing

    def summary_html(self) -> str:
        """The run as static HTML: what a saved notebook shows where no kernel renders the widget."""
        with self._lock:
            return render.summary_html(self.view, self.url, self.upstream)

    def summary_text(self) -> str:
        with self._lock:
            return render.summary_text(self.view)

    def _draw(self) -> None:
        with self._lock:
            header = render.header_html(self.view, self.url)
            dag, metrics = render.dag_html(self.view, self.upstream), render.metrics_html(self.view)
            total, done = len(self.view.steps), render.steps_done(self.view)
            steps = list(self.view.steps)
            state = self.state
        self.header.value, self.dag.value, self.metrics_table.value = header, dag, metrics
        self.progress.max = max(total, 1)
        self.progress.value = done
        self.progress.description = f"{done}/{total}"
        self.progress.bar_style = render.RUN_BAR_STYLE.get(state, "info" if state == "running" else "")
        if list(self.step_choice.options) != steps:
            current = self.step_choice.value
            self._auto_choice = True
            self.step_choice.options = steps
            if current in steps:
                self.step_choice.value = current
            self._auto_choice = False
        self._follow_step()
        if state in FINAL_RUN_STATES:
            self.cancel_button.disabled = True
            self.cancel_button.button_style = ""  # a red button reads as "still cancellable"
        self._draw_log()

    def _follow_step(self) -> None:
        """Until the user picks a step, show the log of the first failed or running step."""
        if self._user_picked:
            return
        with self._lock:
            running = [name for name, s in self.view.steps.items() if s.state == "running"]
            failed = [name for name, s in self.view.steps.items() if s.state == "failed"]
            logged = [name for name, s in self.view.steps.items() if s.log]
        choices = failed or running or logged
        choice = choices[0] if choices else None
        if choice is not None and choice != self.step_choice.value:
            self._auto_choice = True
            self.step_choice.value = choice
            self._auto_choice = False

    def _on_step_choice(self, _change: dict[str, Any]) -> None:
        if not self._auto_choice:
            self._user_picked = True
        self._draw_log()

    def _draw_log(self) -> None:
        step = self.step_choice.value
        text = "\n".join(self.log_tail(step) if step else [])
        if self.log.value != text:
            self.log.value = text

    def _on_cancel(self, _button: widgets.Button) -> None:
        if self._cancel is not None and not self.finished:
            self.cancel_button.disabled = True
            self.cancel_button.description = "Cancelling…"
            self._cancel()

    # ------------------------------------------------------------------ display

    def _bundle(self) -> dict[str, Any]:
        bundle: dict[str, Any] = dict(self.widget._repr_mimebundle_() or {})
        bundle["text/html"] = self.summary_html()
        bundle["text/plain"] = self.summary_text()
        return bundle

    def _ipython_display_(self) -> None:
        display(self._bundle(), raw=True, display_id=self._display_id)
        self._displayed = True

    def _publish(self) -> None:
        """Replace every display of this monitor with one carrying the final summary."""
        if self._displayed:
            with contextlib.suppress(Exception):  # no kernel any more: nothing to update
                update_display(self._bundle(), raw=True, display_id=self._display_id)
