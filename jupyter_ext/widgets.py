"""Notebook widgets (ipywidgets 8): launch a run of a notebook and watch it without leaving the page.

`launcher(path)` builds typed inputs from the notebook's parameters cell, an engine choice and a
Run button. `run_notebook(path, ...)` starts a run in the kernel process (on a thread, through the
engine API) and returns a `RunMonitor`: the DAG with each step's live state, a progress bar,
elapsed times, the log tail of a chosen step, metrics, and a Cancel button. `watch(run_id)` monitors
a run started elsewhere (``cellpipe run`` in a terminal, a KFP run) from the run store.

The monitor reads nothing but the event stream, so local and KFP runs look the same. Events are
queued by whichever thread emits them and applied by the monitor's own thread, which redraws at
most a few times a second: the kernel stays free while a run goes on. Where no live kernel
renders the widget (a saved notebook on GitHub, nbconvert), the monitor's output carries an HTML
summary too, replaced by the final one when the run ends.
"""

from __future__ import annotations

import contextlib
import html
import json
import queue
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import ipywidgets as widgets
from IPython.display import display, update_display

from converter.engines.base import RunRequest
from converter.engines.registry import available, get_engine
from converter.errors import CellpipeError
from converter.events import FINAL_RUN_STATES, FINAL_STEP_STATES, Event, RunView, StepView
from converter.model import Parameter
from converter.notebook.parameters import parameter_values, typed_values
from converter.notebook.reader import read_notebook
from jupyter_ext.runs import LiveRun

LOG_TAIL_LINES = 200
REDRAW_SECONDS = 0.25  # at most four redraws a second, however chatty the run
TICK_SECONDS = 1.0  # elapsed times move on even when no event comes
STORE_POLL_SECONDS = 0.5

STATE_COLOURS = {
    "pending": ("#f5f5f5", "#9e9e9e"),
    "queued": ("#fff8e1", "#ffb300"),
    "running": ("#fff3c4", "#f9a825"),
    "succeeded": ("#e8f5e9", "#43a047"),
    "cached": ("#e0f7fa", "#00acc1"),
    "failed": ("#ffebee", "#e53935"),
    "skipped": ("#eceff1", "#78909c"),
    "cancelled": ("#f3e5f5", "#8e24aa"),
}
RUN_BAR_STYLE = {"succeeded": "success", "failed": "danger", "cancelled": "warning"}


def _seconds(value: float) -> str:
    if value < 60:
        return f"{value:.1f}s"
    minutes, seconds = divmod(int(value), 60)
    if minutes < 60:
        return f"{minutes}m{seconds:02d}s"
    return f"{minutes // 60}h{minutes % 60:02d}m"


def levels(steps: Sequence[str], upstream: Mapping[str, Sequence[str]]) -> list[list[str]]:
    """Steps by depth in the DAG (a step sits one level below its deepest upstream step)."""
    depth: dict[str, int] = {}

    def level(name: str, seen: frozenset[str] = frozenset()) -> int:
        if name not in depth:
            parents = [u for u in upstream.get(name, ()) if u in steps and u not in seen]
            depth[name] = 1 + max((level(u, seen | {name}) for u in parents), default=-1)
        return depth[name]

    rows: list[list[str]] = []
    for name in steps:
        number = level(name)
        while len(rows) <= number:
            rows.append([])
        rows[number].append(name)
    return rows


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

    def _elapsed(self, step: StepView) -> str:
        seconds = step.seconds(time.time())
        return _seconds(max(0.0, seconds)) if seconds is not None else ""

    def _header_html(self) -> str:
        run = self.view
        if run.duration is not None:
            elapsed = _seconds(run.duration)
        elif run.started is not None:
            elapsed = _seconds(max(0.0, time.time() - run.started))
        else:
            elapsed = ""
        _fill, colour = STATE_COLOURS.get(self.state, ("#fff", "#616161"))
        parts = [
            f"<b>{html.escape(self.pipeline or 'run')}</b>",
            html.escape(self.run_id or "starting"),
            f"<span style='color:{colour};font-weight:bold'>{html.escape(self.state)}</span>",
        ]
        if self.engine:
            parts.append(f"engine {html.escape(self.engine)}")
        if elapsed:
            parts.append(elapsed)
        if self.url:
            parts.append(f"<a href='{html.escape(self.url)}' target='_blank' rel='noopener'>open in KFP</a>")
        message = (
            f"<div>{html.escape(self.message)}</div>" if self.message and self.state != "succeeded" else ""
        )
        return f"<div style='font-family:sans-serif'>{' · '.join(parts)}{message}</div>"

    def _box_html(self, step: str) -> str:
        view = self.view.step(step)
        state = view.state
        fill, border = STATE_COLOURS.get(state, STATE_COLOURS["pending"])
        detail: list[str] = [state]
        if view.attempt and view.attempt > 1:
            detail.append(f"attempt {view.attempt}")
        elapsed = self._elapsed(view)
        if elapsed:
            detail.append(elapsed)
        lines = [f"<b>{html.escape(step)}</b>", f"<small>{html.escape(' · '.join(detail))}</small>"]
        after = self.upstream.get(step, [])
        if after:
            lines.append(f"<small style='color:#757575'>after {html.escape(', '.join(after))}</small>")
        style = (
            # Dark text on the pale fill whatever the notebook's theme (light theme text is unreadable on it).
            f"border:2px solid {border};background:{fill};color:#212121;border-radius:6px;"
            "padding:4px 10px;margin:4px;min-width:7em;text-align:center"
        )
        title = html.escape(view.message or "")
        return (
            f"<div title='{title}' data-step='{html.escape(step)}' data-state='{state}' style='{style}'>"
            + "<br>".join(lines)
            + "</div>"
        )

    def _dag_html(self) -> str:
        """The DAG top-down by level, as the KFP UI draws it; each box coloured by its step's state."""
        row_style = "display:flex;flex-wrap:wrap;justify-content:center"
        rows = [
            f"<div style='{row_style}'>" + "".join(self._box_html(step) for step in row) + "</div>"
            for row in levels(list(self.view.steps), self.upstream)
        ]
        arrow = "<div style='text-align:center;color:#9e9e9e'>↓</div>"
        return "<div style='font-family:sans-serif'>" + arrow.join(rows) + "</div>"

    def _metrics_html(self) -> str:
        if not self.view.step_metrics:
            return ""
        cells = "".join(
            f"<tr><td>{html.escape(step)}</td><td>{html.escape(name)}</td>"
            f"<td style='text-align:right'>{value:.6g}</td></tr>"
            for step, values in self.view.step_metrics.items()
            for name, value in values.items()
        )
        return (
            "<table style='font-family:sans-serif;border-collapse:collapse'>"
            "<tr><th>step</th><th>metric</th><th>value</th></tr>" + cells + "</table>"
        )

    def summary_html(self) -> str:
        """The run as static HTML: what a saved notebook shows where no kernel renders the widget."""
        with self._lock:
            done = sum(1 for s in self.view.steps.values() if s.state in FINAL_STEP_STATES)
            counts = f"<div style='font-family:sans-serif'>{done}/{len(self.view.steps)} steps done</div>"
            return self._header_html() + self._dag_html() + counts + self._metrics_html()

    def summary_text(self) -> str:
        with self._lock:
            states = ", ".join(f"{name} {step.state}" for name, step in self.view.steps.items())
            return f"cellpipe run {self.run_id or '(starting)'}: {self.state}" + (
                f" ({states})" if states else ""
            )

    def _draw(self) -> None:
        with self._lock:
            header, dag, metrics = self._header_html(), self._dag_html(), self._metrics_html()
            total = len(self.view.steps)
            done = sum(1 for s in self.view.steps.values() if s.state in FINAL_STEP_STATES)
            steps = list(self.view.steps)
            state = self.state
        self.header.value, self.dag.value, self.metrics_table.value = header, dag, metrics
        self.progress.max = max(total, 1)
        self.progress.value = done
        self.progress.description = f"{done}/{total}"
        self.progress.bar_style = RUN_BAR_STYLE.get(state, "info" if state == "running" else "")
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


# ---------------------------------------------------------------------- starting and following runs


def run_notebook(
    path: str | Path,
    parameters: Mapping[str, object] | None = None,
    engine: str = "local",
    wait: bool = False,
    use_cache: bool = True,
) -> RunMonitor:
    """Run a notebook as a pipeline from this kernel, on a thread; the monitor of the run.

    Parameters are checked against the notebook's parameters cell before anything starts. With
    `wait`, returns once the run ended; interrupting the kernel then cancels the run.
    """
    notebook = Path(path)
    pipeline = read_notebook(notebook)
    values = typed_values(pipeline, dict(parameters or {}))
    runner = get_engine(engine)
    monitor = RunMonitor(cancel=runner.cancel)
    run = LiveRun(runner, RunRequest(pipeline, notebook.resolve(), values, use_cache), [monitor.feed])
    run.start().result()  # the engine's refusal (resources, parameters) is raised here
    if wait:
        try:
            monitor.wait()
        except KeyboardInterrupt:
            runner.cancel()
            monitor.wait()
            raise
    return monitor


def watch(run_id: str) -> RunMonitor:
    """Monitor a run started elsewhere (``cellpipe run``, another kernel, the server) from the run store.

    The store keeps every event but log lines, so the log tail stays empty; Cancel asks the
    run's engine, wherever it runs, to stop.
    """
    from converter.store.runstore import RunStore
    from converter.store.workspace import Workspace

    store = RunStore(Workspace.default().database)
    full_id = store.resolve(run_id)

    def cancel() -> None:
        store.request_cancel(full_id)

    monitor = RunMonitor(cancel=cancel)

    def follow() -> None:
        after = 0
        while True:
            events = store.events(full_id, after)
            for event in events:
                monitor.feed(event)
            if events:
                after = events[-1].seq
                if events[-1].type == "run_finished":
                    return
            elif store.get_run(full_id).state != "running":
                return
            time.sleep(STORE_POLL_SECONDS)

    threading.Thread(target=follow, name="cellpipe-watch", daemon=True).start()
    return monitor


# ---------------------------------------------------------------------- the launcher


def _input_for(parameter: Parameter) -> widgets.Widget:
    style = {"description_width": "initial"}
    name, default = parameter.name, parameter.default
    if parameter.type == "bool":
        return widgets.Checkbox(value=bool(default), description=name, indent=False)
    if parameter.type == "int":
        return widgets.IntText(value=default, description=name, style=style)
    if parameter.type == "float":
        return widgets.FloatText(value=default, description=name, style=style)
    if parameter.optional:  # `name = None`: an optional str, left unset when the box stays empty
        return widgets.Text(value="", placeholder="None (not set)", description=name, style=style)
    if parameter.type == "str":
        return widgets.Text(value=str(default), description=name, style=style)
    return widgets.Textarea(  # list, dict: JSON text
        value=json.dumps(default), description=name, style=style, layout=widgets.Layout(width="50%")
    )


class Launcher:
    """A form for one notebook: its parameters as typed inputs, the engine, and a Run button."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.pipeline = read_notebook(self.path)
        self.inputs: dict[str, widgets.Widget] = {p.name: _input_for(p) for p in self.pipeline.parameters}
        engines = available() or ["local"]
        self.engine = widgets.Dropdown(
            options=engines, value="local" if "local" in engines else engines[0], description="engine"
        )
        self.use_cache = widgets.Checkbox(value=True, description="use cache", indent=False)
        self.run_button = widgets.Button(description="Run", icon="play", button_style="primary")
        self.run_button.on_click(lambda _button: self._on_run())
        self.output = widgets.Output()
        self.monitor: RunMonitor | None = None
        title = widgets.HTML(
            f"<b>{html.escape(self.pipeline.name)}</b> <small>{html.escape(str(path))}</small>"
        )
        if not self.inputs:
            note = "<small>no parameters cell: the notebook runs with its own values</small>"
            fields: list[widgets.Widget] = [widgets.HTML(note)]
        else:
            fields = list(self.inputs.values())
        self.widget = widgets.VBox(
            [title, *fields, widgets.HBox([self.engine, self.use_cache, self.run_button]), self.output]
        )

    def values(self) -> dict[str, Any]:
        """The parameter values as typed; CellpipeError names a value that does not fit its type."""
        typed: dict[str, object] = {}
        texts: list[tuple[str, str]] = []
        for parameter in self.pipeline.parameters:
            value = self.inputs[parameter.name].value
            if parameter.optional and value == "":
                continue
            if parameter.type in ("list", "dict", "str"):
                texts.append((parameter.name, value))  # parsed as `cellpipe run -p NAME TEXT` would be
            else:
                typed[parameter.name] = value
        return {**typed_values(self.pipeline, typed), **parameter_values(self.pipeline, texts, [])}

    def run(self) -> RunMonitor:
        """Start a run with the form's values and show its monitor under the form."""
        self.monitor = run_notebook(
            self.path, self.values(), engine=self.engine.value, use_cache=self.use_cache.value
        )
        self.output.clear_output()
        with self.output:
            display(self.monitor)
        return self.monitor

    def _on_run(self) -> None:
        try:
            self.run()
        except CellpipeError as error:  # a user mistake: say it, no traceback
            self.output.clear_output()
            self.output.append_stdout(f"cellpipe: {error}\n")

    def _ipython_display_(self) -> None:
        display(self.widget)


def launcher(notebook_path: str | Path) -> Launcher:
    """A run form for the notebook: typed inputs from its parameters cell, engine choice, Run button."""
    return Launcher(notebook_path)
