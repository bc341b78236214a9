"""A bounded version of benchmarks/event_stream_load.py: 20 concurrent SSE clients on one chatty run.

Every client must receive every event exactly once and in order; timing is the benchmark's business.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from event_stream_load import chatty_notebook, load

pytest_plugins = ("pytest_jupyter.jupyter_server",)

CLIENTS = 20
LINES = 300



@pytest.fixture(autouse=True)
def cellpipe_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CELLPIPE_HOME", str(tmp_path / "cellpipe-home"))


async def test_every_client_gets_every_event_in_order(
    jp_fetch: Any,
    jp_root_dir: Path,
    http_server_client: Any,
    jp_base_url: str,
    jp_auth_header: dict[str, str],
) -> None:
    chatty_notebook(jp_root_dir / "chatty.ipynb", LINES)
    body = json.dumps({"path": "chatty.ipynb", "use_cache": False})
    response = await jp_fetch("cellpipe", "api", "runs", method="POST", body=body)
    run_id = json.loads(response.body)["id"]
    path = f"{jp_base_url}cellpipe/api/runs/{run_id}/events"
    report = await load("127.0.0.1", http_server_client.get_http_port(), path, jp_auth_header, CLIENTS)
    assert report.events > LINES  # the log lines plus the run's and steps' own events
    assert report.complete == CLIENTS
