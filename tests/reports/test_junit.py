"""The JUnit report: one test case per step, with the states CI dashboards understand."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

from converter.events import Event, EventLog
from converter.reports import junit

STEPS = ["load", "train", "evaluate", "cached_step", "publish"]


def _events() -> list[Event]:
    log = EventLog("run-1")
    log.emit("run_started", data={"pipeline": "demo", "steps": STEPS})
    log.emit("step_started", step="load", attempt=1)
    log.emit("step_succeeded", step="load", duration=1.25)
    log.emit("step_cached", step="cached_step")
    log.emit("step_started", step="train", attempt=1)
    log.emit("step_retrying", step="train", attempt=1, message="cell 3 raised MemoryError")
    log.emit("step_started", step="train", attempt=2)
    for i in range(80):
        log.emit("step_log", step="train", stream="stderr", line=f"line {i}")
    log.emit("step_log", step="train", stream="stderr", line="\x1b[31mValueError\x1b[0m: bad \x00value")
    log.emit(
        "step_failed",
        step="train",
        attempt=2,
        exit_code=1,
        duration=2.5,
        message="cell 4 raised ValueError: bad value",
    )
    log.emit("step_skipped", step="evaluate", message="upstream step train failed")
    log.emit("run_finished", state="failed", duration=4.0, message="1 step failed")
    return log.events


def test_one_case_per_step_with_its_outcome(tmp_path: Path) -> None:
    out = tmp_path / "reports" / "junit.xml"
    junit.write(junit.report("demo", STEPS, _events()), out)
    root = ET.parse(out).getroot()  # parses: the colour codes and NUL were stripped
    assert root.tag == "testsuites"
    assert (root.get("tests"), root.get("failures"), root.get("skipped")) == ("5", "1", "2")
    suite = root.find("testsuite")
    assert suite is not None and suite.get("time") == "4.000"
    cases = {c.get("name"): c for c in suite.iter("testcase")}
    assert list(cases) == STEPS
    assert all(c.get("classname") == "demo" for c in cases.values())

    assert cases["load"].get("time") == "1.250"
    assert cases["load"].find("failure") is None and cases["load"].find("skipped") is None

    failure = cases["train"].find("failure")
    assert failure is not None
    assert failure.get("message") == "cell 4 raised ValueError: bad value"
    tail = (failure.text or "").splitlines()
    assert len(tail) == junit.LOG_TAIL_LINES
    assert tail[-1] == "ValueError: bad value"
    assert tail[0] == f"line {81 - junit.LOG_TAIL_LINES}"
    props = {p.get("name"): p.get("value") for p in cases["train"].iter("property")}
    assert props["attempts"] == "2"

    skipped = cases["evaluate"].find("skipped")
    assert skipped is not None and skipped.get("message") == "upstream step train failed"
    cached = cases["cached_step"]
    assert cached.find("skipped") is None and cached.find("failure") is None
    assert {p.get("name"): p.get("value") for p in cached.iter("property")}["cached"] == "true"
    # A step that never got an event (the run ended first) is reported, as skipped, not lost.
    assert cases["publish"].find("skipped") is not None


def test_cancelled_steps_are_skipped_and_log_tail_comes_from_reader(tmp_path: Path) -> None:
    log = EventLog("run-2")
    log.emit("run_started", data={"pipeline": "demo", "steps": ["a", "b"]})
    log.emit("step_started", step="a", attempt=1)
    log.emit("step_failed", step="a", attempt=1, message="killed")
    log.emit("step_started", step="b", attempt=1)
    log.emit("run_finished", state="cancelled", duration=1.0)
    root = junit.report("demo", ["a", "b"], log.events, log_tail=lambda step: [f"{step} from log.txt"])
    cases = {c.get("name"): c for c in root.iter("testcase")}
    skipped = cases["b"].find("skipped")
    assert skipped is not None and "cancelled" in (skipped.get("message") or "")
    failure = cases["a"].find("failure")
    assert failure is not None and failure.text == "a from log.txt"


def test_write_replaces_atomically(tmp_path: Path) -> None:
    out = tmp_path / "junit.xml"
    out.write_text("old")
    junit.write(junit.report("demo", STEPS, _events()), out)
    assert out.read_text().startswith("<?xml")
    assert [p.name for p in tmp_path.iterdir()] == ["junit.xml"]
