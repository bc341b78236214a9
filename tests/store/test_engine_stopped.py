"""A run whose engine process was killed never reads as running: every reader of the run store
(runs show/list/logs --follow/cancel, the REST API and its event stream) sees it failed with
"engine stopped", with its steps, and streams and followers end."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import nbformat
import pytest

from converter.cli.main import main
from converter.events import EventLog
from converter.store.runstore import ORPHAN_MESSAGE, RunStore
from converter.store.workspace import Workspace

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "cellpipe-home"
    monkeypatch.setenv("CELLPIPE_HOME", str(folder))
    return folder


def _dead_pid() -> int:
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def _orphan(store: RunStore) -> str:
    """A run whose engine (a process that has exited) got as far as starting step a."""
    run_id = store.create_run("pipe", "nb.ipynb", "local", {}, ["a", "b"], pid=_dead_pid())
    log = EventLog(run_id, [store.record])
    log.emit("run_started", data={"steps": ["a", "b"]})
    log.emit("step_queued", step="a")
    log.emit("step_started", step="a", attempt=1)
    return run_id


def _assert_stopped(store: RunStore, run_id: str) -> None:
    run = store.get_run(run_id)
    assert (run.state, run.message) == ("failed", ORPHAN_MESSAGE)
    assert {s.name: s.state for s in run.steps} == {"a": "failed", "b": "cancelled"}
    assert run.steps[0].message == ORPHAN_MESSAGE and run.steps[0].attempts[0].state == "failed"
    events = store.events(run_id)
    assert [(e.type, e.step) for e in events[-2:]] == [("step_failed", "a"), ("run_finished", None)]
    assert [e.seq for e in events] == list(range(1, len(events) + 1))


@pytest.mark.parametrize("reader", ["get_run", "list_runs", "events", "request_cancel"])
def test_every_store_reader_sees_a_dead_engine(tmp_path: Path, reader: str) -> None:
    store = RunStore(tmp_path / "runs.db")
    run_id = _orphan(store)
    live = store.create_run("pipe", "nb.ipynb", "local", {}, ["a"])  # this process: alive
    if reader == "get_run":
        assert store.get_run(run_id).state == "failed"
    elif reader == "list_runs":
        assert {r.id: r.state for r in store.list_runs()} == {run_id: "failed", live: "running"}
    elif reader == "events":
        assert store.events(run_id)[-1].type == "run_finished"
    else:
        assert store.request_cancel(run_id) is False  # nobody would act on the request
        assert store.request_cancel(live) is True
    _assert_stopped(store, run_id)
    assert store.get_run(live).state == "running"


def test_cluster_runs_and_other_hosts_are_left_alone(tmp_path: Path) -> None:
    store = RunStore(tmp_path / "runs.db")
    remote = store.create_run("pipe", "nb", "kfp", {}, ["a"], pid=_dead_pid(), remote_id="kfp-123")
    elsewhere = store.create_run("pipe", "nb", "local", {}, ["a"], pid=_dead_pid())
    with store._write() as db:
        db.execute("UPDATE runs SET host = 'another-machine' WHERE id = ?", (elsewhere,))
    assert store.get_run(remote).state == "running"
    assert store.get_run(elsewhere).state == "running"


def test_cli_readers_of_a_run_whose_engine_is_gone(home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    store = RunStore(Workspace.default().database)
    shown, cancelled, followed = _orphan(store), _orphan(store), _orphan(store)
    assert main(["runs", "show", shown, "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["state"] == "failed" and data["message"] == ORPHAN_MESSAGE
    assert [s["state"] for s in data["steps"]] == ["failed", "cancelled"]
    assert main(["runs", "cancel", cancelled]) == 1
    assert f"run {cancelled} is not running (it failed)" in capsys.readouterr().err
    assert main(["runs", "logs", followed, "--follow"]) == 0  # returns: nothing more will come
    for run_id in (shown, cancelled, followed):
        _assert_stopped(store, run_id)


SLOW = [
    ("import time", ["imports"]),
    ("for i in range(600):\n    print('tick', i, flush=True)\n    time.sleep(0.1)\nx = 1", ["step:slow"]),
    ("print(x)", ["step:after"]),
]


def _cli() -> list[str]:
    script = shutil.which("cellpipe")
    return [script] if script else [sys.executable, "-m", "converter.cli"]


def test_sigkilled_engine_reads_as_failed_and_follow_ends(home: Path, tmp_path: Path) -> None:
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(src, metadata={"tags": tags}) for src, tags in SLOW]
    notebook = tmp_path / "slow.ipynb"
    nbformat.write(nb, notebook)
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    engine = subprocess.Popen(
        [*_cli(), "run", str(notebook), "--json-events"], stdout=subprocess.PIPE, text=True, env=env
    )
    follower: subprocess.Popen[str] | None = None
    try:
        assert engine.stdout is not None
        run_id = ""
        for line in engine.stdout:
            event: dict[str, Any] = json.loads(line)
            run_id = event["run_id"]
            if event.get("line") == "tick 2":
                break
        follower = subprocess.Popen(
            [*_cli(), "runs", "logs", run_id, "slow", "--follow"], stdout=subprocess.PIPE, text=True, env=env
        )
        engine.send_signal(signal.SIGKILL)
        engine.wait(timeout=30)
        out, _ = follower.communicate(timeout=60)  # before the fix: waits forever
        assert follower.returncode == 0 and "tick 0" in out
    finally:
        engine.kill()
        if follower is not None:
            follower.kill()
    shown = subprocess.run(
        [*_cli(), "runs", "show", run_id, "--json"], capture_output=True, text=True, env=env, check=True
    )
    run = json.loads(shown.stdout)
    assert (run["state"], run["message"]) == ("failed", ORPHAN_MESSAGE)
    assert {s["name"]: s["state"] for s in run["steps"]} == {"slow": "failed", "after": "cancelled"}
