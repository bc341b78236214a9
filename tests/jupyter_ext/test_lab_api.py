"""The lab extension's server side: the step form's view and edits of cells, and a run's results.

Through a real jupyter_server (pytest-jupyter) and a real local run, as tests/test_server_api.py does.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook
from tornado.httpclient import HTTPClientError

from tests.jupyter_ext.rest import API, Fetch

pytest_plugins = ("pytest_jupyter.jupyter_server",)




@pytest.fixture(autouse=True)
def cellpipe_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "cellpipe-home"
    monkeypatch.setenv("CELLPIPE_HOME", str(home))
    return home


PLAIN = [
    ("md", [], "# Plain tags"),
    ("code", ["imports"], "import math"),
    ("code", ["step:load-data", "cpu:500m", "memory:1Gi", "retries:2", "timeout:30m"], "x = 4"),
    ("code", [], "y = x + 1"),
    ("code", ["step:fit", "gpu:1", "gpu-type:a100"], "z = math.sqrt(x) / (y - 5)"),
]


def write(path: Path, cells: list[tuple[str, list[str], str]]) -> Path:
    nb = new_notebook(
        cells=[
            new_markdown_cell(source) if kind == "md" else new_code_cell(source, metadata={"tags": tags})
            for kind, tags, source in cells
        ]
    )
    nbformat.write(nb, path)
    return path


async def call(jp_fetch: Fetch, *parts: str, body: object = None) -> Any:
    kwargs = {"method": "POST", "body": json.dumps(body)} if body is not None else {}
    response = await jp_fetch(API, *parts, **kwargs)
    return json.loads(response.body)


async def test_cells_show_plain_tags_with_sources_and_the_graph(jp_fetch: Fetch, jp_root_dir: Path) -> None:
    write(jp_root_dir / "plain.ipynb", PLAIN)
    view = await call(jp_fetch, "cells", body={"path": "plain.ipynb"})
    cells = view["cells"]
    assert cells[0] == {"index": 0, "type": "markdown"}
    assert cells[1]["role"] == "imports" and cells[1]["step"] is None
    load = cells[2]
    assert load["step"] == "load-data" and load["starts"] is True
    assert load["fields"]["cpu"] == {"value": "500m", "source": "tag", "tags": ["cpu:500m"], "overridden": []}
    assert {k: f["value"] for k, f in load["fields"].items()} == {
        "step": "load-data", "cpu": "500m", "memory": "1Gi", "retries": "2", "timeout": "30m"
    }  # fmt: skip
    assert cells[3]["step"] == "load-data" and cells[3]["starts"] is False and cells[3]["fields"] == {}
    nodes = {node["id"]: node for node in view["graph"]["nodes"]}
    assert nodes["load-data"]["resources"] == {"cpu": "500m", "memory": "1Gi"}
    assert nodes["fit"]["resources"] == {"gpu": 1, "gpu_vendor": "nvidia.com/gpu", "gpu_type": "a100"}

    # the browser's unsaved copy is read instead of the file when it sends one
    nb = json.loads((jp_root_dir / "plain.ipynb").read_text())
    nb["cells"][2]["metadata"]["tags"][1] = "cpu:2"
    unsaved = await call(jp_fetch, "cells", body={"path": "plain.ipynb", "notebook": nb})
    assert unsaved["cells"][2]["fields"]["cpu"]["value"] == "2"


async def test_edit_changes_the_tag_and_reports_bad_values_on_their_field(jp_fetch: Fetch) -> None:
    tags = PLAIN[2][1]
    edited = await call(jp_fetch, "cells", "edit", body={"tags": tags, "values": {"memory": "2Gi"}})
    assert edited == {
        "tags": ["step:load-data", "cpu:500m", "memory:2Gi", "retries:2", "timeout:30m"],
        "cellpipe": None,
        "problems": [],
    }
    bad = await call(jp_fetch, "cells", "edit", body={"tags": tags, "values": {"memory": "lots"}, "cell": 2})
    [problem] = bad["problems"]
    assert problem["field"] == "memory" and problem["cell"] == 2 and problem["severity"] == "error"
    converted = await call(jp_fetch, "cells", "edit", body={"tags": tags, "values": {}, "target": "metadata"})
    assert converted["tags"] == [] and converted["cellpipe"]["retries"] == 2
    with pytest.raises(HTTPClientError) as caught:
        await call(jp_fetch, "cells", "edit", body={"tags": [], "values": {"colour": "red"}})
    assert caught.value.code == 400


async def test_a_failed_run_comes_back_with_its_cell_notebook_and_reports(
    jp_fetch: Fetch, jp_root_dir: Path, cellpipe_home: Path
) -> None:
    write(
        jp_root_dir / "plain.ipynb",
        [(kind, [t for t in tags if "gpu" not in t], source) for kind, tags, source in PLAIN],
    )
    run = await call(jp_fetch, "runs", body={"path": "plain.ipynb", "engine": "local", "use_cache": False})
    for _ in range(600):
        state = (await call(jp_fetch, "runs", run["id"]))["state"]
        if state not in ("running", "pending"):
            break
        await asyncio.sleep(0.1)
    assert state == "failed"

    results = await call(jp_fetch, "runs", run["id"], "results")
    steps = {step["name"]: step for step in results["steps"]}
    assert steps["load-data"]["error"] is None and steps["load-data"]["report"] is True
    error = steps["fit"]["error"]
    assert error["cell"] == 4 and error["ename"] == "ZeroDivisionError"
    assert results["notebook"] == "plain.ipynb"

    written = await call(jp_fetch, "runs", run["id"], "notebook", body={})
    assert written["path"] == f"cellpipe-runs/plain-{run['id']}.ipynb"
    executed = nbformat.read(jp_root_dir / written["path"], as_version=4)
    outputs = {i: [o.get("output_type") for o in c.get("outputs", [])] for i, c in enumerate(executed.cells)}
    assert "error" in [t for ts in outputs.values() for t in ts]
    # no parameter was passed, so papermill's injected-parameters cell is not there either
    assert not any("injected-parameters" in cell.metadata.get("tags", []) for cell in executed.cells)
    # the contents API, which JupyterLab opens files through, serves it
    model = json.loads((await jp_fetch("api", "contents", written["path"])).body)
    assert model["type"] == "notebook"

    response = await jp_fetch(API, "runs", run["id"], "steps", "load-data", "report")
    assert response.headers["Content-Type"].startswith("text/html")
    assert "sandbox" in response.headers["Content-Security-Policy"]
    assert b"load-data" in response.body
    with pytest.raises(HTTPClientError) as caught:
        await jp_fetch(API, "runs", run["id"], "steps", "nope", "report")
    assert caught.value.code == 404


async def test_cells_the_analysis_orders_by_notebook_or_cannot_carry_get_their_marks(
    jp_fetch: Fetch, jp_root_dir: Path
) -> None:
    write(
        jp_root_dir / "marks.ipynb",
        [
            ("code", ["imports"], "import numpy as np"),
            ("code", ["step:setup"], "np.random.seed(0)\nhandle = open('marks.ipynb')"),
            ("code", ["step:draw"], "a = np.random.rand(2)"),
            ("code", ["step:again"], "b = np.random.rand(2)\nprint(handle.read(1))"),
        ],
    )
    view = await call(jp_fetch, "cells", body={"path": "marks.ipynb"})
    marks = {(p["cell"], p["mark"]) for p in view["problems"] if p["mark"]}
    assert (1, "boundary") in marks  # the open file passed on
    assert any(mark == "order" for _, mark in marks)  # the seeded random generators keep the order
    assert all(p["mark"] is None for p in view["problems"] if p["severity"] == "error")


@pytest.mark.filterwarnings("error::pytest.PytestUnhandledThreadExceptionWarning")
async def test_a_run_the_engine_refuses_is_a_422_and_leaves_no_thread_error(
    jp_fetch: Fetch, jp_root_dir: Path
) -> None:
    write(jp_root_dir / "plain.ipynb", PLAIN)  # step fit asks for a GPU this machine does not have
    with pytest.raises(HTTPClientError) as caught:
        await call(jp_fetch, "runs", body={"path": "plain.ipynb", "engine": "local"})
    assert caught.value.code == 422
    await asyncio.sleep(0.5)  # the run's thread ends after the answer
