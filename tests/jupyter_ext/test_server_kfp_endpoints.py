"""Named KFP endpoints in the server's config: a browser picks one by name and never names a host.

A real jupyter_server (pytest-jupyter) with ``c.Cellpipe.kfp_endpoints``, and two KFP API test doubles:
``prod``, the configured endpoint that wants its own token, and ``elsewhere``, which stands for any
other host (the server's environment points at it, with another token). Runs go to the endpoint named,
with that endpoint's credentials only; nothing a browser sends can make the server talk to another host.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kfp
import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_notebook
from tornado.httpclient import HTTPClientError

from converter.engines.kfp import engine as kfp_engine
from tests.engines.kfp_api_double import KfpApiDouble
from tests.jupyter_ext.rest import API, Fetch

pytest_plugins = ("pytest_jupyter.jupyter_server",)

PROD_TOKEN = "prod-token-SECRET-1b2c"
ENV_TOKEN = "env-token-SECRET-9d8e"


@pytest.fixture
def prod() -> Iterator[KfpApiDouble]:
    with KfpApiDouble(token=PROD_TOKEN) as server:
        yield server
        assert server.problems == [], "the double refused malformed requests"


@pytest.fixture
def elsewhere() -> Iterator[KfpApiDouble]:
    with KfpApiDouble() as server:
        yield server


@pytest.fixture
def token_file(tmp_path: Path) -> Path:
    path = tmp_path / "secrets" / "prod-token"
    path.parent.mkdir()
    path.write_text(PROD_TOKEN + "\n")
    return path


@pytest.fixture
def jp_server_config(prod: KfpApiDouble, elsewhere: KfpApiDouble, token_file: Path) -> dict[str, Any]:
    return {
        "ServerApp": {"jpserver_extensions": {"jupyter_ext": True}},
        "Cellpipe": {
            "kfp_endpoints": {
                "prod": {
                    "host": prod.url,
                    "auth": "token",
                    "token_file": str(token_file),
                    "namespace": "team-a",
                    "experiment": "notebooks",
                },
                "open": {"host": elsewhere.url},  # no credentials
                "basic": {"host": "https://user:pw@kfp.example.com/pipeline/"},
                "inline": {"host": prod.url, "token": PROD_TOKEN},  # refused: credentials inline
            }
        },
    }


@pytest.fixture(autouse=True)
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, elsewhere: KfpApiDouble) -> None:
    """The server's own environment points at `elsewhere` with a token: no endpoint may use either."""
    monkeypatch.setenv("CELLPIPE_HOME", str(tmp_path / "cellpipe-home"))
    monkeypatch.setenv("HOME", str(tmp_path / "user"))
    monkeypatch.setenv("KF_PIPELINES_ENDPOINT", elsewhere.url)
    monkeypatch.setenv("KF_PIPELINES_TOKEN", ENV_TOKEN)
    monkeypatch.delenv("KF_PIPELINES_COOKIE", raising=False)
    monkeypatch.delenv("KF_PIPELINES_NAMESPACE", raising=False)
    monkeypatch.setenv("KF_PIPELINES_SA_TOKEN_PATH", str(tmp_path / "no-sa-token"))
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "no-kube-config"))
    monkeypatch.setattr(kfp.Client, "_LOCAL_KFP_CONTEXT", str(tmp_path / "user" / "kfp-context.json"))
    monkeypatch.setattr(kfp_engine, "POLL_INITIAL_SECONDS", 0.01)
    monkeypatch.setattr(kfp_engine, "POLL_MAX_SECONDS", 0.05)


@pytest.fixture
def root(jp_root_dir: Path) -> Path:
    nb = new_notebook(
        cells=[
            new_code_cell("n = 3", metadata={"tags": ["parameters"]}),
            new_code_cell("data = list(range(n))", metadata={"tags": ["step:prep"]}),
            new_code_cell("total = sum(data)\nprint(total)", metadata={"tags": ["step:join"]}),
        ]
    )
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, jp_root_dir / "pipe.ipynb")
    return jp_root_dir


async def post_run(jp_fetch: Fetch, body: dict[str, Any]) -> dict[str, Any]:
    response = await jp_fetch(API, "runs", method="POST", body=json.dumps(body))
    assert response.code == 201
    run: dict[str, Any] = json.loads(response.body)
    return run


async def refused(jp_fetch: Fetch, body: dict[str, Any]) -> tuple[int, str]:
    with pytest.raises(HTTPClientError) as caught:
        await jp_fetch(API, "runs", method="POST", body=json.dumps(body))
    assert caught.value.response is not None
    return caught.value.code, json.loads(caught.value.response.body)["message"]


async def finished(jp_fetch: Fetch, run_id: str) -> dict[str, Any]:
    for _ in range(1200):  # the double advances a step per poll; this bounds a hang, it times nothing
        shown: dict[str, Any] = json.loads((await jp_fetch(API, "runs", run_id)).body)
        if shown["state"] != "running":
            return shown
        await asyncio.sleep(0.05)
    raise AssertionError(f"run {run_id} never finished")


async def test_endpoints_are_listed_by_name_without_credentials(
    jp_fetch: Fetch, prod: KfpApiDouble, elsewhere: KfpApiDouble, token_file: Path
) -> None:
    response = await jp_fetch(API, "kfp", "endpoints")
    listed = json.loads(response.body)["endpoints"]
    assert listed == [
        {"name": "basic", "host": "https://kfp.example.com/pipeline", "namespace": None, "experiment": None},
        {"name": "open", "host": elsewhere.url, "namespace": None, "experiment": None},
        {"name": "prod", "host": prod.url, "namespace": "team-a", "experiment": "notebooks"},
    ], "the endpoint with an inline token is left out; user:pw@ is not shown"
    text = response.body.decode()
    for secret in (PROD_TOKEN, str(token_file), "pw@", "token_file"):
        assert secret not in text


async def test_a_run_goes_to_the_named_endpoint_with_its_own_token(
    jp_fetch: Fetch, root: Path, prod: KfpApiDouble, elsewhere: KfpApiDouble
) -> None:
    run = await post_run(jp_fetch, {"path": "pipe.ipynb", "engine": "kfp", "endpoint": "prod"})
    shown = await finished(jp_fetch, run["id"])
    assert shown["state"] == "succeeded" and shown["engine"] == "kfp"
    assert shown["remote_id"] in prod.runs
    assert [e["display_name"] for e in prod.experiments.values()] == ["notebooks"]
    tokens = {headers.get("Authorization") for _, _, _, headers in prod.requests}
    assert f"Bearer {PROD_TOKEN}" in tokens and tokens <= {f"Bearer {PROD_TOKEN}", None}
    assert elsewhere.requests == []


async def test_an_endpoint_without_credentials_gets_none_of_the_servers(
    jp_fetch: Fetch, root: Path, elsewhere: KfpApiDouble
) -> None:
    run = await post_run(jp_fetch, {"path": "pipe.ipynb", "engine": "kfp", "endpoint": "open"})
    assert (await finished(jp_fetch, run["id"]))["state"] == "succeeded"
    assert elsewhere.requests, "the run went to the endpoint's host"
    for _, _, _, headers in elsewhere.requests:
        assert ENV_TOKEN not in json.dumps(headers), "the server's own token went to an endpoint"


async def test_a_browser_cannot_name_a_host(
    jp_fetch: Fetch, root: Path, prod: KfpApiDouble, elsewhere: KfpApiDouble
) -> None:
    code, message = await refused(
        jp_fetch, {"path": "pipe.ipynb", "engine": "kfp", "endpoint": "prod", "host": elsewhere.url}
    )
    assert code == 400 and "unknown field host" in message
    code, message = await refused(
        jp_fetch, {"path": "pipe.ipynb", "engine": "kfp", "endpoint": elsewhere.url}
    )
    assert (
        code == 400 and "unknown KFP endpoint" in message and "this server has: basic, open, prod" in message
    )
    code, message = await refused(jp_fetch, {"path": "pipe.ipynb", "engine": "kfp", "endpoint": "inline"})
    assert code == 400 and "unknown KFP endpoint 'inline'" in message
    code, message = await refused(jp_fetch, {"path": "pipe.ipynb", "engine": "local", "endpoint": "prod"})
    assert code == 400 and "'endpoint' is for the kfp engine" in message
    assert prod.requests == [] and elsewhere.requests == []
