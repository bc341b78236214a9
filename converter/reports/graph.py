"""The pipeline DAG as a person or a program wants to see it (`cellpipe graph`, the REST graph).

Every view is derived from :class:`converter.model.Pipeline` alone, so the text view, the JSON the
JupyterLab extension draws and the Graphviz picture always agree with what compile and run do.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import graphviz

from converter.errors import CellpipeError
from converter.model import DEFAULT_GPU_VENDOR, Edge, Pipeline, Step

ImageFormat = Literal["svg", "png"]

# A variable list longer than this is cut to its first names and "+N" so labels stay one short line.
_TEXT_NAMES = 4
_DOT_NAMES = 3
# The upstream column of the text view is padded to the widest entry, but never wider than this, so
# one step with many inputs does not push every other line's resources off the screen.
_UPSTREAM_COLUMN_MAX = 48


def levels(p: Pipeline) -> list[list[str]]:
    """Steps grouped by longest distance from a source: steps of one level can run in parallel.

    Within a level steps keep pipeline (notebook) order, so the grouping is deterministic.
    """
    known = {s.name for s in p.steps}
    for edge in p.edges:
        for end in (edge.source, edge.target):
            if end not in known:
                raise ValueError(f"edge {edge.source} -> {edge.target} names unknown step {end}")
    upstream = {s.name: set(p.upstream(s.name)) for s in p.steps}
    placed: set[str] = set()
    result: list[list[str]] = []
    remaining = [s.name for s in p.steps]
    while remaining:
        level = [name for name in remaining if upstream[name] <= placed]
        if not level:
            raise ValueError(f"the pipeline's edges form a cycle among: {', '.join(remaining)}")
        result.append(level)
        placed.update(level)
        remaining = [name for name in remaining if name not in placed]
    return result


def render_text(p: Pipeline) -> str:
    """A plain-text view readable at a glance: one line per step, grouped by level, no colours."""
    header = f"pipeline {p.name} ({_count(len(p.steps), 'step')}, {_count(len(p.edges), 'edge')}"
    if p.parameters:
        header += f", parameters: {', '.join(param.name for param in p.parameters)}"
    lines = [header + ")"]
    grouped = levels(p)
    if not grouped:
        return lines[0] + "\n"
    level_label_width = len(f"level {len(grouped) - 1}")
    name_width = max(len(s.name) for s in p.steps)
    rows: list[tuple[str, str, str, str]] = []
    for number, names in enumerate(grouped):
        for position, name in enumerate(names):
            label = f"level {number}" if position == 0 else ""
            step = p.step(name)
            rows.append((label, name, _upstream_text(p, name), _summary(p, step)))
    upstream_width = min(max(len(r[2]) for r in rows), _UPSTREAM_COLUMN_MAX)
    for label, name, upstream, summary in rows:
        line = f"{label:<{level_label_width}}  {name:<{name_width}}"
        if upstream or summary:
            line += f"  {upstream:<{upstream_width}}"
        if summary:
            line += f"  {summary}"
        lines.append(line.rstrip())
    return "\n".join(lines) + "\n"


def to_json(p: Pipeline) -> dict[str, object]:
    """The REST graph of the contract: JSON-serialisable, deterministic, never a secret or env value."""
    level_of = {name: number for number, names in enumerate(levels(p)) for name in names}
    order = {s.name: index for index, s in enumerate(p.steps)}
    nodes = [
        {
            "id": step.name,
            "cells": [cell.index for cell in step.cells],
            "inputs": list(step.inputs),
            "outputs": list(step.outputs),
            "parameters": list(step.parameters),
            "metrics": list(step.metrics),
            "resources": _resources_json(step),
            "image": step.settings.image or p.image,
            "retries": step.settings.retries,
            "timeout_seconds": step.settings.timeout_seconds,
            "cache": p.cache_default if step.settings.cache is None else step.settings.cache,
            "env": sorted(name for name, _value in step.settings.env),
            "level": level_of[step.name],
        }
        for step in p.steps
    ]
    edges = sorted(p.edges, key=lambda e: (order[e.source], order[e.target], e.kind, e.names))
    return {
        "name": p.name,
        "nodes": nodes,
        "edges": [edge.to_json() for edge in edges],
        "parameters": [
            {"name": param.name, "type": param.type, "default": param.default} for param in p.parameters
        ],
    }


def to_dot(p: Pipeline) -> str:
    """Graphviz source, top-down like the KFP UI: data edges solid and labelled, after-edges dashed."""
    dot = graphviz.Digraph(name=graphviz.escape(p.name))
    dot.attr(rankdir="TB", label=graphviz.escape(f"pipeline {p.name}"), labelloc="t", fontname="Helvetica")
    dot.attr("node", shape="box", style="rounded", fontname="Helvetica")
    dot.attr("edge", fontname="Helvetica", fontsize="10")
    for step in p.steps:
        parts = [step.name]
        summary = _summary(p, step)
        if summary:
            parts.append(summary)
        # Escape each part (backslashes, HTML-looking text) before joining with DOT's own line break.
        dot.node(step.name, label="\\n".join(graphviz.escape(part) for part in parts))
    order = {s.name: index for index, s in enumerate(p.steps)}
    for edge in sorted(p.edges, key=lambda e: (order[e.source], order[e.target], e.kind, e.names)):
        if edge.kind == "data":
            dot.edge(edge.source, edge.target, label=graphviz.escape(_names(edge.names, _DOT_NAMES)))
        else:
            dot.edge(edge.source, edge.target, style="dashed")
    return dot.source


def render_image(p: Pipeline, fmt: ImageFormat) -> bytes:
    """The DAG drawn by Graphviz's `dot` program as SVG or PNG bytes."""
    try:
        return graphviz.Source(to_dot(p)).pipe(format=fmt)
    except graphviz.ExecutableNotFound as exc:
        raise CellpipeError(
            f"cellpipe graph --format {fmt} needs Graphviz's `dot` program: "
            "apt-get install graphviz (or brew install graphviz)"
        ) from exc


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _names(names: Sequence[str], keep: int) -> str:
    """`a, b, c` or, when longer than `keep`, the first `keep - 1` names and `+N` (never a bare `+1`)."""
    if len(names) <= keep:
        return ", ".join(names)
    shown = keep - 1
    return ", ".join([*names[:shown], f"+{len(names) - shown}"])


def _upstream_text(p: Pipeline, name: str) -> str:
    """`<- a (x, y), b (after)`: each upstream step once, with the variables it passes."""
    incoming: dict[str, list[Edge]] = {}
    for edge in p.edges:
        if edge.target == name:
            incoming.setdefault(edge.source, []).append(edge)
    if not incoming:
        return ""
    parts = []
    for source in sorted(incoming):
        carried = sorted({v for e in incoming[source] if e.kind == "data" for v in e.names})
        parts.append(f"{source} ({_names(carried, _TEXT_NAMES)})" if carried else f"{source} (after)")
    return "<- " + ", ".join(parts)


def _summary(p: Pipeline, step: Step) -> str:
    """The settings a reader of the DAG cares about, in a compact `cpu 1, mem 2Gi, gpu 1` form."""
    settings = step.settings
    res = settings.resources
    parts = []
    for label, request, limit in (
        ("cpu", res.cpu_request, res.cpu_limit),
        ("mem", res.memory_request, res.memory_limit),
    ):
        if request and limit:
            parts.append(f"{label} {request} (limit {limit})")
        elif request:
            parts.append(f"{label} {request}")
        elif limit:
            parts.append(f"{label} limit {limit}")
    if res.gpu:
        gpu = f"gpu {res.gpu}"
        if res.gpu_vendor != DEFAULT_GPU_VENDOR:
            gpu += f" {res.gpu_vendor}"
        if res.gpu_type:
            gpu += f" {res.gpu_type}"
        parts.append(gpu)
    if settings.retries:
        parts.append(f"retries {settings.retries}")
    if settings.timeout_seconds is not None:
        parts.append(f"timeout {_duration(settings.timeout_seconds)}")
    if settings.cache is not None and settings.cache != p.cache_default:
        parts.append("cache on" if settings.cache else "cache off")
    if settings.image and settings.image != p.image:
        parts.append(f"image {settings.image}")
    return ", ".join(parts)


def _duration(seconds: int) -> str:
    """Seconds back in the unit a `timeout:` tag would use (`90s`, `30m`, `2h`)."""
    for unit, size in (("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def _resources_json(step: Step) -> dict[str, object]:
    """Only the resource keys the step sets; the GPU vendor only matters when there is a GPU."""
    res = step.settings.resources
    values: dict[str, object | None] = {
        "cpu": res.cpu_request,
        "cpu_limit": res.cpu_limit,
        "memory": res.memory_request,
        "memory_limit": res.memory_limit,
        "gpu": res.gpu,
        "gpu_vendor": res.gpu_vendor if res.gpu else None,
        "gpu_type": res.gpu_type,
    }
    return {key: value for key, value in values.items() if value is not None}
