"""The REST API against hostile bodies and dead engines: always a JSON 4xx, never a 500, and a
run whose engine is gone reads as failed with its event stream ended."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_notebook

from converter.events import EventLog
from converter.store.runstore import ORPHAN_MESSAGE, RunStore
from tests.jupyter_ext.rest import API, Fetch, error_of

pytest_plugins = ("pytest_jupyter.jupyter_server",)




@pytest.fixture(autouse=True)
def cellpipe_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "cellpipe-home"
    monkeypatch.setenv("CELLPIPE_HOME", str(home))
    return home


@pytest.fixture
def root(jp_root_dir: Path) -> Path:
    nb = new_notebook(cells=[new_code_cell("x = 1", metadata={"tags": ["step:one"]})])
    nbformat.write(nb, jp_root_dir / "one.ipynb")
    return jp_root_dir



@pytest.mark.parametrize("endpoint", ["validate", "runs", "compile"])
async def test_deeply_nested_and_huge_bodies_are_4xx_json(jp_fetch: Fetch, root: Path, endpoint: str) -> None:
    for depth in (100_000, 1000, 33):
        body = '{"path": "one.ipynb", "parameters": ' + "[" * depth + "]" * depth + "}"
        status, answer = await error_of(jp_fetch(API, endpoint, method="POST", body=body))
        assert status == 400 and "nested too deeply" in answer["message"], (depth, answer)
    huge = json.dumps({"path": "one.ipynb", "parameters": {"x": "a" * (2 << 20)}})
    status, answer = await error_of(jp_fetch(API, endpoint, method="POST", body=huge))
    assert status == 413 and "at most" in answer["message"]


async def test_a_run_whose_engine_died_reads_failed_and_its_stream_ends(
    jp_fetch: Fetch, root: Path, cellpipe_home: Path
) -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    store = RunStore(cellpipe_home / "runs.db")
    ids = []
    for _ in range(2):
        run_id = store.create_run("pipe", str(root / "one.ipynb"), "local", {}, ["one"], pid=dead.pid)
        log = EventLog(run_id, [store.record])
        log.emit("run_started", data={"steps": ["one"]})
        log.emit("step_started", step="one", attempt=1)
        ids.append(run_id)
    shown = json.loads((await jp_fetch(API, "runs", ids[0])).body)
    assert (shown["state"], shown["message"]) == ("failed", ORPHAN_MESSAGE)
    assert shown["steps"][0]["state"] == "failed"
    # the stream of the other one (nobody looked at it yet) ends instead of waiting forever
    response = await jp_fetch(API, "runs", ids[1], "events", request_timeout=30)
    kinds = [
        line.split(": ", 1)[1] for line in response.body.decode().splitlines() if line.startswith("event:")
    ]
    assert kinds[-2:] == ["step_failed", "run_finished"]
    status, answer = await error_of(jp_fetch(API, "runs", ids[1], method="DELETE"))
    assert status == 409 and answer["state"] == "failed"


async def test_malformed_notebook_json_is_a_4xx_naming_the_cell(jp_fetch: Fetch, root: Path) -> None:
    nb = {
        "nbformat": 4,
        "nbformat_minor": 5,
        "metadata": {},
        "cells": [{"cell_type": "code", "source": 12345, "metadata": {"tags": [1, None, {}]}}],
    }
    (root / "bad.ipynb").write_text(json.dumps(nb))
    for endpoint in ("runs", "compile"):
        status, answer = await error_of(
            jp_fetch(API, endpoint, method="POST", body=json.dumps({"path": "bad.ipynb"}))
        )
        assert status == 422 and answer["problems"] and {p["cell"] for p in answer["problems"]} == {0}
    response = await jp_fetch(API, "validate", method="POST", body=json.dumps({"path": "bad.ipynb"}))
    answer = json.loads(response.body)
    assert answer["valid"] is False and any("source must be" in p["message"] for p in answer["problems"])


async def test_an_ambiguous_run_id_prefix_lists_the_candidates(
    jp_fetch: Fetch, root: Path, cellpipe_home: Path
) -> None:
    store = RunStore(cellpipe_home / "runs.db")
    ids = sorted(store.create_run("pipe", "nb", "local", {}, ["a"]) for _ in range(3))
    prefix = ids[0][:4]
    status, answer = await error_of(jp_fetch(API, "runs", prefix))
    assert status == 400 and "ambiguous" in answer["message"] and answer["candidates"] == ids
    shown = json.loads((await jp_fetch(API, "runs", ids[1])).body)  # a whole id is never ambiguous
    assert shown["id"] == ids[1]
