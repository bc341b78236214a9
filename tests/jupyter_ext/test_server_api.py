"""The Jupyter server extension's REST API, exercised through a real jupyter_server (pytest-jupyter)."""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

import nbformat
import pytest
import yaml
from jupyter_server.auth.authorizer import Authorizer
from nbformat.v4 import new_code_cell, new_notebook
from prometheus_client.parser import text_string_to_metric_families
from tornado.httpclient import HTTPResponse

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
from event_stream_load import read_events

from tests.jupyter_ext.rest import API, Fetch, error_of

pytest_plugins = ("pytest_jupyter.jupyter_server",)

SECRET_VALUE = "hunter2-do-not-leak"



@pytest.fixture(autouse=True)
def cellpipe_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "cellpipe-home"
    monkeypatch.setenv("CELLPIPE_HOME", str(home))
    monkeypatch.setenv("DB_PASSWORD", SECRET_VALUE)  # as if the secret's value were around locally
    return home


def write_notebook(path: Path, cells: list[tuple[list[str], str]]) -> Path:
    nb = new_notebook(cells=[new_code_cell(source, metadata={"tags": tags}) for tags, source in cells])
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, path)
    return path


DIAMOND = [
    (["parameters"], 'n = 3\nlabel = "x"'),
    (["step:first"], 'a = n * 2\nprint("first", a, label)'),
    (["step:left"], 'b = a + 1\nprint("left", b)'),
    (["step:right", "secret:db-creds:password:DB_PASSWORD", "env:MODE=fast"], "c = a + 2"),
    (["step:join"], 'total = b + c\nprint("total", total)'),
    (["metrics"], "total"),
]


@pytest.fixture
def root(jp_root_dir: Path) -> Path:
    write_notebook(jp_root_dir / "diamond.ipynb", DIAMOND)
    write_notebook(
        jp_root_dir / "sub" / "slow.ipynb",
        [(["step:wait"], "import time\nprint('waiting', flush=True)\ntime.sleep(60)\nx = 1")],
    )
    write_notebook(
        jp_root_dir / "ticker.ipynb",
        [
            (
                ["step:tick"],
                "import time\nfor i in range(40):\n    print('tick', i, flush=True)\n    time.sleep(0.02)",
            ),
            (["step:after_tick", "after:tick"], "y = 2"),
        ],
    )
    write_notebook(jp_root_dir / "broken.ipynb", [(["step:uses"], "print(undefined_name)")])
    (jp_root_dir / "notes.txt").write_text("not a notebook")
    return jp_root_dir




async def post(jp_fetch: Fetch, endpoint: str, body: object, **kwargs: Any) -> HTTPResponse:
    data = body if isinstance(body, str | bytes) else json.dumps(body)
    response: HTTPResponse = await jp_fetch(API, endpoint, method="POST", body=data, **kwargs)
    return response



def events_path(jp_base_url: str, run_id: str, after: int | None = None) -> str:
    query = f"?after={after}" if after is not None else ""
    return f"{jp_base_url}{API}/runs/{run_id}/events{query}"


async def stream(
    http_server_client: Any,
    jp_base_url: str,
    jp_auth_header: dict[str, str],
    run_id: str,
    after: int | None = None,
    headers: dict[str, str] | None = None,
    stop_after: int | None = None,
) -> list[tuple[int, str]]:
    port = http_server_client.get_http_port()
    got = await asyncio.wait_for(
        read_events(
            "127.0.0.1",
            port,
            events_path(jp_base_url, run_id, after),
            {**jp_auth_header, **(headers or {})},
            stop_after,
        ),
        60,
    )
    assert got.status == 200
    return [(seq, kind) for seq, kind, _sent, _got in got.events]


async def start_run(jp_fetch: Fetch, body: dict[str, Any]) -> dict[str, Any]:
    response = await post(jp_fetch, "runs", body)
    assert response.code == 201
    run: dict[str, Any] = json.loads(response.body)
    assert response.headers["Location"].endswith(f"/{API}/runs/{run['id']}")
    return run


# ---------------------------------------------------------------------- validate, compile, graph


async def test_validate_reports_problems_with_cells(jp_fetch: Fetch, root: Path) -> None:
    good = json.loads((await post(jp_fetch, "validate", {"path": "diamond.ipynb"})).body)
    assert good["valid"] is True
    assert all(p["severity"] == "warning" for p in good["problems"])
    bad = json.loads((await post(jp_fetch, "validate", {"path": "broken.ipynb"})).body)
    assert bad["valid"] is False
    [problem] = [p for p in bad["problems"] if p["severity"] == "error"]
    assert problem["cell"] == 0 and "undefined_name" in problem["message"]
    assert set(problem) == {"cell", "tag", "severity", "message"}


async def test_compile_returns_the_ir_yaml_as_a_download_with_secret_refs_only(
    jp_fetch: Fetch, root: Path
) -> None:
    response = await post(jp_fetch, "compile", {"path": "diamond.ipynb"})
    assert response.headers["Content-Type"].startswith("application/yaml")
    assert response.headers["Content-Disposition"] == 'attachment; filename="diamond.yaml"'
    text = response.body.decode()
    documents = list(yaml.safe_load_all(text))
    assert documents[0]["pipelineInfo"]["name"] == "diamond"
    assert "db-creds" in text  # the secret is referenced by name...
    assert SECRET_VALUE not in text  # ...its value is nowhere

    status, body = await error_of(post(jp_fetch, "compile", {"path": "broken.ipynb"}))
    assert status == 422
    assert "undefined_name" in body["message"]
    assert body["problems"][0]["cell"] == 0


async def test_graph_has_nodes_edges_and_settings_but_no_secret_or_env_values(
    jp_fetch: Fetch, root: Path
) -> None:
    response = await jp_fetch(API, "graph", params={"path": "diamond.ipynb"})
    graph = json.loads(response.body)
    assert [n["id"] for n in graph["nodes"]] == ["first", "left", "right", "join"]
    edges = {(e["source"], e["target"], e["kind"]) for e in graph["edges"]}
    assert edges == {
        ("first", "left", "data"),
        ("first", "right", "data"),
        ("left", "join", "data"),
        ("right", "join", "data"),
    }
    right = graph["nodes"][2]
    assert right["inputs"] == ["a"] and right["outputs"] == ["c"] and right["env"] == ["MODE"]
    assert {"cells", "resources", "level"} <= set(right)
    assert SECRET_VALUE not in response.body.decode() and "fast" not in response.body.decode()

    status, body = await error_of(jp_fetch(API, "graph"))
    assert status == 400 and "path" in body["message"]


# ---------------------------------------------------------------------- runs and their events


async def test_run_lifecycle_state_list_events_and_metrics(
    jp_fetch: Fetch, root: Path, http_server_client: Any, jp_base_url: str, jp_auth_header: dict[str, str]
) -> None:
    run = await start_run(
        jp_fetch, {"path": "diamond.ipynb", "parameters": {"n": 5}, "engine": "local", "use_cache": False}
    )
    assert run["notebook"] == "diamond.ipynb" and run["engine"] == "local"
    assert run["parameters"] == {"n": 5, "label": "x"}

    events = await stream(http_server_client, jp_base_url, jp_auth_header, run["id"])
    assert [seq for seq, _ in events] == list(range(1, len(events) + 1))
    assert events[0][1] == "run_started" and events[-1][1] == "run_finished"
    assert "step_log" in {kind for _, kind in events}  # log lines come live from memory

    shown = json.loads((await jp_fetch(API, "runs", run["id"])).body)
    assert shown["state"] == "succeeded"
    assert {s["name"]: s["state"] for s in shown["steps"]} == dict.fromkeys(
        ["first", "left", "right", "join"], "succeeded"
    )
    assert shown["metrics"] == {"total": 23.0}
    prefix = json.loads((await jp_fetch(API, "runs", run["id"][:-2])).body)
    assert prefix["id"] == run["id"]

    listed = json.loads((await jp_fetch(API, "runs")).body)["runs"]
    assert [r["id"] for r in listed] == [run["id"]]

    status, body = await error_of(jp_fetch(API, "runs", run["id"], method="DELETE"))
    assert status == 409 and body["state"] == "succeeded"
    status, body = await error_of(jp_fetch(API, "runs", "20000101-000000-beef"))
    assert status == 404

    metrics = (await jp_fetch(API, "metrics")).body.decode()
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(metrics)
        for s in family.samples
    }
    assert samples[("cellpipe_runs_started_total", (("engine", "local"),))] == 1
    assert samples[("cellpipe_runs_finished_total", (("engine", "local"), ("state", "succeeded")))] == 1
    assert samples[("cellpipe_active_runs", ())] == 0
    assert (
        samples[("cellpipe_step_duration_seconds_count", (("engine", "local"), ("state", "succeeded")))] == 4
    )
    assert samples[("cellpipe_event_stream_clients", ())] == 0


async def test_event_stream_reconnect_resumes_without_gaps_or_duplicates(
    jp_fetch: Fetch, root: Path, http_server_client: Any, jp_base_url: str, jp_auth_header: dict[str, str]
) -> None:
    run = await start_run(jp_fetch, {"path": "ticker.ipynb", "use_cache": False})
    args = (http_server_client, jp_base_url, jp_auth_header, run["id"])
    first = await stream(*args, after=0, stop_after=5)  # the client drops mid-run
    assert [seq for seq, _ in first] == [1, 2, 3, 4, 5]
    # A browser's EventSource reconnects to the same URL with Last-Event-ID: that wins over ?after=.
    second = await stream(*args, after=0, headers={"Last-Event-ID": "5"}, stop_after=10)
    third = await stream(*args, after=second[-1][0])
    whole = first + second + third
    assert [seq for seq, _ in whole] == list(range(1, len(whole) + 1))
    assert whole[-1][1] == "run_finished"
    assert sum(kind == "step_log" for _, kind in whole) == 40
    # After the end, a resume from the middle replays exactly the rest.
    again = await stream(*args, after=20)
    assert again == whole[20:]

    status, body = await error_of(jp_fetch(API, "runs", run["id"], "events", params={"after": "x"}))
    assert status == 400 and "whole number" in body["message"]


async def test_events_of_a_run_started_elsewhere_come_from_the_run_store(
    jp_fetch: Fetch, root: Path, http_server_client: Any, jp_base_url: str, jp_auth_header: dict[str, str]
) -> None:
    from converter.engines.base import RunRequest
    from converter.engines.local.engine import LocalEngine
    from converter.notebook.reader import read_notebook

    notebook = root / "diamond.ipynb"
    result = LocalEngine().run(RunRequest(read_notebook(notebook), notebook), [])  # like `cellpipe run`
    events = await stream(http_server_client, jp_base_url, jp_auth_header, result.run_id)
    assert events[0] == (1, "run_started") and events[-1][1] == "run_finished"
    assert "step_log" not in {kind for _, kind in events}  # the store keeps no log lines
    seqs = [seq for seq, _ in events]
    assert seqs == sorted(set(seqs))
    resumed = await stream(http_server_client, jp_base_url, jp_auth_header, result.run_id, after=seqs[3])
    assert resumed == events[4:]
    shown = json.loads((await jp_fetch(API, "runs", result.run_id)).body)
    assert shown["state"] == "succeeded" and shown["notebook"] == "diamond.ipynb"


async def test_cancel_a_running_run(
    jp_fetch: Fetch, root: Path, http_server_client: Any, jp_base_url: str, jp_auth_header: dict[str, str]
) -> None:
    run = await start_run(jp_fetch, {"path": "sub/slow.ipynb"})
    args = (http_server_client, jp_base_url, jp_auth_header, run["id"])
    # run_started, step_queued, step_started, step_log: the step is running (the engine's own
    # tests cancel right at step_started).
    started = await stream(*args, stop_after=4)
    assert started[-1][1] == "step_log"
    response = await jp_fetch(API, "runs", run["id"], method="DELETE")
    assert response.code == 202 and json.loads(response.body)["cancel_requested"] is True
    events = await stream(*args)
    assert events[-1][1] == "run_finished"
    shown = json.loads((await jp_fetch(API, "runs", run["id"])).body)
    assert shown["state"] == "cancelled"
    assert shown["steps"][0]["state"] == "cancelled"


async def test_run_parameters_and_engine_are_checked(jp_fetch: Fetch, root: Path) -> None:
    status, body = await error_of(
        post(jp_fetch, "runs", {"path": "diamond.ipynb", "parameters": {"n": "many"}})
    )
    assert status == 400 and "'n' is int" in body["message"]
    status, body = await error_of(post(jp_fetch, "runs", {"path": "diamond.ipynb", "parameters": {"m": 1}}))
    assert status == 400 and "unknown parameter 'm'" in body["message"]
    status, body = await error_of(post(jp_fetch, "runs", {"path": "diamond.ipynb", "engine": "warp"}))
    assert status == 400 and "unknown engine 'warp'" in body["message"]
    status, body = await error_of(post(jp_fetch, "runs", {"path": "broken.ipynb"}))
    assert status == 422 and body["problems"]
    assert json.loads((await jp_fetch(API, "runs")).body)["runs"] == []


# ---------------------------------------------------------------------- malformed requests, paths


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("{not json", "not valid JSON"),
        ("", "not valid JSON"),
        ("[1, 2]", "must be a JSON object"),
        ({}, "missing field 'path'"),
        ({"path": 3}, "'path' must be a string"),
        ({"path": "diamond.ipynb", "parameters": [1]}, "'parameters' must be an object"),
        ({"path": "diamond.ipynb", "use_cache": 1}, "'use_cache' must be true or false"),
        ({"path": "diamond.ipynb", "colour": "red"}, "unknown field colour"),
    ],
)
async def test_malformed_bodies_are_400_json(jp_fetch: Fetch, root: Path, body: object, message: str) -> None:
    status, answer = await error_of(post(jp_fetch, "runs", body))
    assert status == 400
    assert message in answer["message"]


@pytest.mark.parametrize(
    ("path", "status", "message"),
    [
        ("../outside.ipynb", 400, "'..' is not allowed"),
        ("sub/../../outside.ipynb", 400, "'..' is not allowed"),
        ("/etc/passwd", 400, "absolute paths are not allowed"),
        ("C:\\Windows\\x.ipynb", 400, "absolute paths are not allowed"),
        ("escape.ipynb", 403, "outside the server's root"),
        ("linked/outside.ipynb", 403, "outside the server's root"),
        ("missing.ipynb", 404, "no such notebook"),
        ("notes.txt", 400, "not a notebook"),
        ("sub", 400, "not a notebook"),
        ("", 400, "non-empty string"),
    ],
)
async def test_paths_cannot_leave_the_root(
    jp_fetch: Fetch, root: Path, tmp_path: Path, path: str, status: int, message: str
) -> None:
    outside = write_notebook(tmp_path / "elsewhere" / "outside.ipynb", DIAMOND)
    (root / "escape.ipynb").symlink_to(outside)
    (root / "linked").symlink_to(outside.parent, target_is_directory=True)
    for request in (
        post(jp_fetch, "validate", {"path": path}),
        post(jp_fetch, "compile", {"path": path}),
        post(jp_fetch, "runs", {"path": path}),
        jp_fetch(API, "graph", params={"path": path}),
    ):
        code, body = await error_of(request)
        assert (code, message in body["message"]) == (status, True), body


async def test_a_symlink_inside_the_root_is_fine(jp_fetch: Fetch, root: Path) -> None:
    (root / "alias.ipynb").symlink_to(root / "diamond.ipynb")
    assert json.loads((await post(jp_fetch, "validate", {"path": "alias.ipynb"})).body)["valid"] is True


# ---------------------------------------------------------------------- authentication, XSRF, authorization


ENDPOINTS = [
    ("POST", "validate", {"path": "diamond.ipynb"}),
    ("POST", "compile", {"path": "diamond.ipynb"}),
    ("GET", "graph?path=diamond.ipynb", None),
    ("POST", "runs", {"path": "diamond.ipynb"}),
    ("GET", "runs", None),
    ("GET", "runs/20000101-000000-beef", None),
    ("DELETE", "runs/20000101-000000-beef", None),
    ("GET", "runs/20000101-000000-beef/events", None),
    ("GET", "metrics", None),
]


async def raw_fetch(
    http_server_client: Any, jp_base_url: str, target: str, method: str, body: object, headers: dict[str, str]
) -> HTTPResponse:
    response: HTTPResponse = await http_server_client.fetch(
        f"{jp_base_url}{API}/{target}",
        method=method,
        body=None if body is None else json.dumps(body),
        headers=headers,
        raise_error=False,
        follow_redirects=False,
    )
    return response


async def test_every_endpoint_needs_authentication(
    root: Path, http_server_client: Any, jp_base_url: str, jp_auth_header: dict[str, str]
) -> None:
    for method, target, body in ENDPOINTS:
        for headers in ({}, {"Authorization": "token wrong"}):
            response = await raw_fetch(http_server_client, jp_base_url, target, method, body, headers)
            assert response.code == 403, (method, target, headers)
    response = await raw_fetch(http_server_client, jp_base_url, "runs", "GET", None, jp_auth_header)
    assert response.code == 200


async def test_cookie_authenticated_posts_need_the_xsrf_token(
    root: Path, http_server_client: Any, jp_base_url: str, jp_serverapp: Any
) -> None:
    token = jp_serverapp.identity_provider.token
    login = await raw_fetch(http_server_client, jp_base_url, f"runs?token={token}", "GET", None, {})
    assert login.code == 200
    cookie = "; ".join(c.split(";")[0] for c in login.headers.get_list("Set-Cookie"))
    assert "username-" in cookie
    # The login cookie alone is enough to read...
    response = await raw_fetch(http_server_client, jp_base_url, "runs", "GET", None, {"Cookie": cookie})
    assert response.code == 200
    # ...but not to change anything: a cross-site form could send that cookie.
    for method, target, body in ENDPOINTS:
        if method == "GET":
            continue
        response = await raw_fetch(http_server_client, jp_base_url, target, method, body, {"Cookie": cookie})
        assert response.code == 403, (method, target)
        assert "xsrf" in json.loads(response.body)["message"].lower()
    # With the XSRF cookie echoed in the header, as JupyterLab sends it, it works.
    xsrf = "2|abcdef12|0123456789abcdef0123456789abcdef|1700000000"
    headers = {"Cookie": f"{cookie}; _xsrf={xsrf}", "X-XSRFToken": xsrf}
    response = await raw_fetch(
        http_server_client, jp_base_url, "validate", "POST", {"path": "diamond.ipynb"}, headers
    )
    assert response.code == 200, response.body


class CellpipeReadOnly(Authorizer):
    """Lets anyone authenticated read cellpipe, but not run or cancel anything."""

    def is_authorized(self, handler: Any, user: Any, action: str, resource: str) -> bool:
        return not (resource == "cellpipe" and action != "read")


READ_ONLY = {
    "ServerApp": {"jpserver_extensions": {"jupyter_ext": True}, "authorizer_class": CellpipeReadOnly}
}


@pytest.mark.parametrize("jp_server_config", [READ_ONLY])
async def test_the_server_authorizer_decides(jp_fetch: Fetch, root: Path) -> None:
    assert json.loads((await post(jp_fetch, "validate", {"path": "diamond.ipynb"})).body)["valid"]
    assert (await jp_fetch(API, "metrics")).code == 200
    status, body = await error_of(post(jp_fetch, "runs", {"path": "diamond.ipynb"}))
    assert status == 403 and "execute" in body["message"]
    status, body = await error_of(jp_fetch(API, "runs", "x", method="DELETE"))
    assert status == 403
