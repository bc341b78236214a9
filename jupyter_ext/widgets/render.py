"""The run monitor's pictures as HTML, from the one event fold (`RunView`): the header line, the DAG
coloured by step state, the metrics table, the static summary a saved notebook keeps.

Pure functions of the folded run, so the monitor's thread draws them under its lock and tests read
them without a kernel.
"""

from __future__ import annotations

import html
import time
from collections.abc import Mapping, Sequence

from converter.events import FINAL_STEP_STATES, RunView, StepView

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


def seconds(value: float) -> str:
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


def header_html(run: RunView, url: str | None) -> str:
    if run.duration is not None:
        elapsed = seconds(run.duration)
    elif run.started is not None:
        elapsed = seconds(max(0.0, time.time() - run.started))
    else:
        elapsed = ""
    _fill, colour = STATE_COLOURS.get(run.state, ("#fff", "#616161"))
    parts = [
        f"<b>{html.escape(run.pipeline or 'run')}</b>",
        html.escape(run.run_id or "starting"),
        f"<span style='color:{colour};font-weight:bold'>{html.escape(run.state)}</span>",
    ]
    if run.engine:
        parts.append(f"engine {html.escape(run.engine)}")
    if elapsed:
        parts.append(elapsed)
    if url:
        parts.append(f"<a href='{html.escape(url)}' target='_blank' rel='noopener'>open in KFP</a>")
    message = f"<div>{html.escape(run.message)}</div>" if run.message and run.state != "succeeded" else ""
    return f"<div style='font-family:sans-serif'>{' · '.join(parts)}{message}</div>"


def _elapsed(step: StepView) -> str:
    took = step.seconds(time.time())
    return seconds(max(0.0, took)) if took is not None else ""


def box_html(name: str, step: StepView, upstream: Sequence[str]) -> str:
    state = step.state
    fill, border = STATE_COLOURS.get(state, STATE_COLOURS["pending"])
    detail: list[str] = [state]
    if step.attempt and step.attempt > 1:
        detail.append(f"attempt {step.attempt}")
    elapsed = _elapsed(step)
    if elapsed:
        detail.append(elapsed)
    lines = [f"<b>{html.escape(name)}</b>", f"<small>{html.escape(' · '.join(detail))}</small>"]
    if upstream:
        lines.append(f"<small style='color:#757575'>after {html.escape(', '.join(upstream))}</small>")
    style = (
        # Dark text on the pale fill whatever the notebook's theme (light theme text is unreadable on it).
        f"border:2px solid {border};background:{fill};color:#212121;border-radius:6px;"
        "padding:4px 10px;margin:4px;min-width:7em;text-align:center"
    )
    title = html.escape(step.message or "")
    return (
        f"<div title='{title}' data-step='{html.escape(name)}' data-state='{state}' style='{style}'>"
        + "<br>".join(lines)
        + "</div>"
    )


def dag_html(run: RunView, upstream: Mapping[str, Sequence[str]]) -> str:
    """The DAG top-down by level, as the KFP UI draws it; each box coloured by its step's state."""
    row_style = "display:flex;flex-wrap:wrap;justify-content:center"
    rows = [
        f"<div style='{row_style}'>"
        + "".join(box_html(name, run.step(name), upstream.get(name, [])) for name in row)
        + "</div>"
        for row in levels(list(run.steps), upstream)
    ]
    arrow = "<div style='text-align:center;color:#9e9e9e'>↓</div>"
    return "<div style='font-family:sans-serif'>" + arrow.join(rows) + "</div>"


def metrics_html(run: RunView) -> str:
    if not run.step_metrics:
        return ""
    cells = "".join(
        f"<tr><td>{html.escape(step)}</td><td>{html.escape(name)}</td>"
        f"<td style='text-align:right'>{value:.6g}</td></tr>"
        for step, values in run.step_metrics.items()
        for name, value in values.items()
    )
    return (
        "<table style='font-family:sans-serif;border-collapse:collapse'>"
        "<tr><th>step</th><th>metric</th><th>value</th></tr>" + cells + "</table>"
    )


def steps_done(run: RunView) -> int:
    return sum(1 for s in run.steps.values() if s.state in FINAL_STEP_STATES)


def summary_html(run: RunView, url: str | None, upstream: Mapping[str, Sequence[str]]) -> str:
    """The run as static HTML: what a saved notebook shows where no kernel renders the widget."""
    counts = f"<div style='font-family:sans-serif'>{steps_done(run)}/{len(run.steps)} steps done</div>"
    return header_html(run, url) + dag_html(run, upstream) + counts + metrics_html(run)


def summary_text(run: RunView) -> str:
    states = ", ".join(f"{name} {step.state}" for name, step in run.steps.items())
    return f"cellpipe run {run.run_id or '(starting)'}: {run.state}" + (f" ({states})" if states else "")
