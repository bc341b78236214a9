"""The registry and the runner thread every face uses, with the real local engine."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_notebook

from converter.engines import registry
from converter.engines.base import RunRequest
from converter.engines.local.engine import LocalEngine
from converter.engines.runner import EngineThread
from converter.errors import CellpipeError
from converter.events import Event
from converter.notebook.reader import read_notebook


@pytest.fixture
def notebook(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("CELLPIPE_HOME", str(tmp_path / "home"))
    path = tmp_path / "slow.ipynb"
    cells = [("step:wait", "import time\ntime.sleep(60)\nx = 1"), ("step:after", "y = x + 1")]
    nbformat.write(new_notebook(cells=[new_code_cell(c, metadata={"tags": [t]}) for t, c in cells]), path)
    return path


def test_options_reach_the_engine_and_a_foreign_one_is_named(tmp_path: Path) -> None:
    engine = registry.get_engine("local", max_parallel=3, workspace=tmp_path, fit_resources=None)
    assert isinstance(engine, LocalEngine) and engine.max_parallel == 3 and not engine.fit_resources
    with pytest.raises(
        CellpipeError, match=r"the local engine has no option host \(it takes: .*max_parallel"
    ):
        registry.get_engine("local", host="http://elsewhere")
    with pytest.raises(CellpipeError, match=r"unknown engine 'nope' \(available: .*kfp, local"):
        registry.get_engine("nope")


def test_an_in_process_engine_is_found_by_name(tmp_path: Path) -> None:
    registry.register("mine", lambda **options: LocalEngine(workspace=tmp_path, **options))
    try:
        assert "mine" in registry.available()
        engine = registry.get_engine("mine", max_parallel=2)
        assert isinstance(engine, LocalEngine) and engine.max_parallel == 2
    finally:
        registry.unregister("mine")
    assert "mine" not in registry.available()


def test_a_cancel_before_the_engine_starts_is_not_lost(notebook: Path) -> None:
    """Cancelled at once: either the run never starts, or it starts and ends cancelled at its first event
    (LocalEngine.run resets its cancel flag as a run starts; the runner cancels again then)."""
    seen: list[Event] = []
    worker = EngineThread(LocalEngine(), RunRequest(read_notebook(notebook), notebook), [seen.append])
    worker.cancel()
    worker.start()
    assert worker.wait(120)
    result = worker.outcome()
    if result is None:
        assert seen == []
    else:
        assert result.state == "cancelled"
        assert result.step_states["after"] != "succeeded"


def test_a_run_cancelled_while_running_ends_cancelled(notebook: Path) -> None:
    started: list[Event] = []
    worker = EngineThread(LocalEngine(), RunRequest(read_notebook(notebook), notebook), [started.append])
    worker.start()
    while not any(e.type == "step_started" for e in started):
        assert not worker.wait(0.05), "the run ended before its step started"
    worker.cancel()
    assert worker.wait(120)
    result = worker.outcome()
    assert result is not None and result.state == "cancelled"
    assert started[-1].type == "run_finished" and started[-1].state == "cancelled"
