"""`cellpipe run --junit FILE`: a run as a JUnit XML report, the format every CI dashboard reads.

One test case per step: CI shows which step broke, its log tail and how long each step took,
without anyone opening the run store. Built from the event stream, so any engine gets it.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections.abc import Callable, Sequence
from pathlib import Path

from converter.events import Event, RunView
from converter.outputs import write_file

LOG_TAIL_LINES = 50
# Characters XML 1.0 cannot hold (terminal colour codes are common in logs) and the escapes themselves.
_NOT_XML = re.compile(r"\x1b\[[0-9;]*[A-Za-z]|[^\x09\x0a\x0d\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def report(
    pipeline_name: str,
    steps: Sequence[str],
    events: Sequence[Event],
    log_tail: Callable[[str], list[str]] | None = None,
) -> ET.Element:
    """The `<testsuites>` element of a run; `log_tail(step)` gives a failed step's last log lines.

    Without `log_tail`, the step's log lines are taken from the events.
    """
    run = RunView(steps, log_lines=LOG_TAIL_LINES)
    for event in events:
        run.apply(event)
    run_time = run.duration or 0.0

    counts = {"tests": len(steps), "failures": 0, "skipped": 0}
    suite = ET.Element("testsuite", name=pipeline_name)
    for name in steps:
        step = run.steps[name]
        state = step.state
        case = ET.SubElement(
            suite, "testcase", classname=pipeline_name, name=name, time=f"{step.duration or 0.0:.3f}"
        )
        props = ET.SubElement(case, "properties")
        ET.SubElement(props, "property", name="state", value=state)
        if step.attempt is not None:
            ET.SubElement(props, "property", name="attempts", value=str(step.attempt))
        if state == "cached":
            ET.SubElement(props, "property", name="cached", value="true")
        if state == "failed":
            counts["failures"] += 1
            tail = log_tail(name) if log_tail is not None else list(step.log)
            message = _xml_text(step.message or "step failed")
            failure = ET.SubElement(case, "failure", message=message, type="StepFailed")
            failure.text = _xml_text("\n".join(tail[-LOG_TAIL_LINES:]))
        elif state not in ("succeeded", "cached"):
            counts["skipped"] += 1
            why = step.message or f"step {state}"
            ET.SubElement(case, "skipped", message=_xml_text(why))
    for key, value in counts.items():
        suite.set(key, str(value))
    suite.set("errors", "0")
    suite.set("time", f"{run_time:.3f}")
    root = ET.Element("testsuites", name=pipeline_name, time=f"{run_time:.3f}")
    for key, value in counts.items():
        root.set(key, str(value))
    root.set("errors", "0")
    root.append(suite)
    return root


def write(root: ET.Element, path: Path) -> None:
    """Replace `path` atomically: a CI step reading it never sees a half-written report."""
    ET.indent(root)
    data = ET.tostring(root, encoding="utf-8", xml_declaration=True)
    write_file(path, data + b"\n")


def _xml_text(text: str) -> str:
    return _NOT_XML.sub("", text)
