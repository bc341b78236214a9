"""The KFP engine end to end: the real `kfp.Client` and `kubernetes` client against a loopback test double.

`tests/engines/kfp_api_double.py` stands in for the KFP v2beta1 REST API and the Kubernetes pod-log endpoints
(it validates every request body against kfp-server-api's models). Most tests drive `cellpipe` itself
(`converter.cli.main.main`); the event-shape test also runs the same notebook on the real local engine.
Every test gets its own CELLPIPE_HOME, HOME and kube config, and polls the double every few ms.
"""

from __future__ import annotations

import json
import socket
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kfp
import nbformat
import pytest
import yaml

import converter.engines.kfp.engine as kfp_engine
import converter.kfp.connection as kfp_connection
from converter.cli.main import main
from converter.engines.base import RunRequest
from converter.engines.kfp.engine import KfpEngine
from converter.engines.kfp.logs import task_of
from converter.engines.local.engine import LocalEngine
from converter.errors import CellpipeError
from converter.events import Event
from converter.kfp.cluster import kfp_cron
from converter.kfp.compile import compile_pipeline, without_cache
from converter.kfp.connection import Connection, resolve
from converter.notebook.reader import read_notebook
from converter.step.values import METRICS_LOG_PREFIX
from converter.store.runstore import RunStore
from tests.engines.kfp_api_double import KfpApiDouble

TOKEN = "tok-SECRET-7f3a9c"
STEPS = ["prep", "left", "right", "join"]


@pytest.fixture(autouse=True)
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Own CELLPIPE_HOME and HOME, no KFP settings from the environment, fast polling."""
    home = tmp_path / "cellpipe-home"
    monkeypatch.setenv("CELLPIPE_HOME", str(home))
    monkeypatch.setenv("HOME", str(tmp_path / "user"))
    for name in (
        "KF_PIPELINES_ENDPOINT",
        "KF_PIPELINES_TOKEN",
        "KF_PIPELINES_COOKIE",
        "KF_PIPELINES_NAMESPACE",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("KF_PIPELINES_SA_TOKEN_PATH", str(tmp_path / "no-sa-token"))
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "no-kube-config"))
    monkeypatch.setattr(kfp.Client, "_LOCAL_KFP_CONTEXT", str(tmp_path / "user" / "kfp-context.json"))
    monkeypatch.setattr(kfp_engine, "POLL_INITIAL_SECONDS", 0.01)
    monkeypatch.setattr(kfp_engine, "POLL_MAX_SECONDS", 0.05)
    return home


@pytest.fixture
def double(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[KfpApiDouble]:
    """A token-protected double, reachable through KF_PIPELINES_ENDPOINT, with a kube config for its pods."""
    with KfpApiDouble(token=TOKEN) as server:
        monkeypatch.setenv("KF_PIPELINES_ENDPOINT", server.url)
        monkeypatch.setenv("KF_PIPELINES_TOKEN", TOKEN)
        monkeypatch.setenv("KUBECONFIG", str(server.write_kubeconfig(tmp_path / "kube.yaml")))
        yield server
        assert server.problems == [], "the double refused malformed requests"


def _notebook(path: Path, extra: str = "") -> Path:
    """A diamond: prep -> (left, right) -> join; `fail_at` makes a step fail on the local engine."""
    cells = [
        ('n = 3\nfail_at = ""', ["parameters"]),
        ("data = list(range(n))", ["step:prep"]),
        ('left = sum(data)\nif fail_at == "left":\n    raise SystemExit(1)', ["step:left"]),
        ("right = max(data)" + extra, ["step:right"]),
        ("total = left + right\nprint(total)", ["step:join"]),
    ]
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = [nbformat.v4.new_code_cell(src, metadata={"tags": tags}) for src, tags in cells]
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, path)
    return path


@pytest.fixture
def notebook(tmp_path: Path) -> Path:
    return _notebook(tmp_path / "nb" / "diamond.ipynb")


def _events(stdout: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]


def _per_step(events: list[dict[str, Any]]) -> dict[str, list[str]]:
    """Each step's event types in order, without log lines."""
    shape: dict[str, list[str]] = {}
    for event in events:
        if event.get("step") and event["type"] != "step_log":
            shape.setdefault(event["step"], []).append(event["type"])
    return shape


def _store(home: Path) -> RunStore:
    return RunStore(home / "runs.db")


# ---------------------------------------------------------------------- submitting and monitoring


def test_run_uploads_starts_from_the_version_and_reports_the_local_engines_events(
    double: KfpApiDouble, notebook: Path, isolated: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["run", str(notebook), "--engine", "kfp", "-p", "n", "5", "--json-events"]) == 0
    out, err = capsys.readouterr()
    events = _events(out)
    assert len(events) == len(out.splitlines()), "only JSON events on stdout (no kfp.Client links)"

    assert len(double.calls("POST", "/apis/v2beta1/pipelines/upload")) == 1
    assert double.calls("GET", "/apis/v2beta1/healthz"), "the engine probes before anything else"
    (run,) = double.runs.values()
    (version,) = double.versions.values()
    assert run.body["pipeline_version_reference"] == {
        "pipeline_id": version["pipeline_id"],
        "pipeline_version_id": version["pipeline_version_id"],
    }
    assert run.body["runtime_config"]["parameters"] == {"n": 5, "fail_at": ""}
    assert [e["display_name"] for e in double.experiments.values()] == ["Default"]

    assert events[0]["type"] == "run_started" and events[-1]["type"] == "run_finished"
    assert events[-1]["state"] == "succeeded"
    started = events[0]["data"]
    assert started["engine"] == "kfp" and started["remote_id"] == run.body["run_id"]
    assert started["url"].endswith(f"/#/runs/details/{run.body['run_id']}")
    assert started["url"] in err, "the person running it gets the KFP UI link"
    assert _per_step(events) == {s: ["step_queued", "step_started", "step_succeeded"] for s in STEPS}
    order = [e["step"] for e in events if e["type"] == "step_started"]
    assert order[0] == "prep" and order[-1] == "join"

    store = _store(isolated)
    (record,) = store.list_runs()
    assert (record.engine, record.state, record.remote_id) == ("kfp", "succeeded", run.body["run_id"])
    assert [s.state for s in record.steps] == ["succeeded"] * 4
    store.close()


def test_step_logs_stream_from_the_executor_pods(
    double: KfpApiDouble, notebook: Path, isolated: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    double.task_logs = {"join": ["total is 4", "bye"]}
    double.instant_tasks = {"prep"}  # ran between two polls: its lines still come in order
    assert main(["run", str(notebook), "--engine", "kfp", "--json-events"]) == 0
    events = _events(capsys.readouterr().out)
    lines = [(e["step"], e["line"]) for e in events if e["type"] == "step_log"]
    assert ("join", "total is 4") in lines and ("prep", "prep: working") in lines
    assert not any("driver" in line for _, line in lines), "driver pods are not steps"
    for step in STEPS:
        types = [e["type"] for e in events if e.get("step") == step]
        assert types[:2] == ["step_queued", "step_started"] and types[-1] == "step_succeeded", step
        assert set(types[2:-1]) == {"step_log"}, step
    (pod_list,) = {q["labelSelector"][0] for m, p, q, _ in double.requests if p.endswith("/pods")}
    assert pod_list == f"pipeline/runid={next(iter(double.runs))}"
    assert all(
        q.get("container") == ["main"] and q.get("follow", [""])[0].lower() == "true"
        for _, p, q, _ in double.requests
        if p.endswith("/log")
    )

    run_id = events[0]["run_id"]
    assert main(["runs", "logs", run_id, "join"]) == 0
    assert capsys.readouterr().out.splitlines() == ["total is 4", "bye"]
    assert main(["runs", "logs", run_id, "prep"]) == 0
    assert capsys.readouterr().out.splitlines() == ["prep: working", "prep: done"]


def test_metrics_come_back_through_the_pod_log(
    double: KfpApiDouble, notebook: Path, isolated: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The runtime prints its metrics as one log line on KFP; the engine turns it into a metrics event."""
    double.task_logs = {"join": ["total is 4", METRICS_LOG_PREFIX + '{"accuracy": 0.93, "loss": 0.2}']}
    assert main(["run", str(notebook), "--engine", "kfp", "--json-events"]) == 0
    events = _events(capsys.readouterr().out)
    (metrics,) = [e for e in events if e["type"] == "metrics"]
    assert metrics["step"] == "join" and metrics["metrics"] == {"accuracy": 0.93, "loss": 0.2}
    assert not [e for e in events if e["type"] == "step_log" and METRICS_LOG_PREFIX in e["line"]]


def test_without_kubernetes_access_logs_are_skipped_with_one_warning(
    double: KfpApiDouble, notebook: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: Any
) -> None:
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "missing"))
    assert main(["run", str(notebook), "--engine", "kfp", "--json-events"]) == 0
    captured = capsys.readouterr()
    assert captured.err.count("no Kubernetes access") == 1
    events = _events(captured.out)
    assert not [e for e in events if e["type"] == "step_log"]
    assert any("no Kubernetes access" in w for w in events[0]["data"]["warnings"])


def test_no_permission_to_list_pods_is_one_warning(notebook: Path, tmp_path: Path, capsys: Any) -> None:
    with KfpApiDouble(kube_forbidden=True) as server:
        kube = server.write_kubeconfig(tmp_path / "kube.yaml")
        engine = KfpEngine(host=server.url, kube=_kube_configuration(kube))
        events: list[Event] = []
        result = engine.run(RunRequest(read_notebook(notebook), notebook), [events.append])
    assert result.state == "succeeded"
    assert capsys.readouterr().err.count("no permission to list pods") == 1
    assert not [e for e in events if e.type == "step_log"]


def _kube_configuration(path: Path) -> Any:
    from kubernetes import client, config

    configuration = client.Configuration()
    config.load_kube_config(config_file=str(path), client_configuration=configuration)
    return configuration


def test_a_changed_notebook_becomes_a_new_version_and_an_unchanged_one_reuses_its_version(
    double: KfpApiDouble, tmp_path: Path, capsys: Any
) -> None:
    path = tmp_path / "nb" / "diamond.ipynb"
    _notebook(path)
    assert main(["run", str(path), "--engine", "kfp", "-q"]) == 0
    _notebook(path, extra="\nright = right * 2")
    assert main(["run", str(path), "--engine", "kfp", "-q"]) == 0
    assert main(["run", str(path), "--engine", "kfp", "-q", "--experiment", "Default"]) == 0

    assert len(double.calls("POST", "/apis/v2beta1/pipelines/upload")) == 1
    assert len(double.calls("POST", "/apis/v2beta1/pipelines/upload_version")) == 1
    assert len(double.pipelines) == 1 and len(double.versions) == 2
    assert len(double.calls("POST", "/apis/v2beta1/experiments")) == 1, "the experiment is reused"
    first, second, third = (r.body["pipeline_version_id"] for r in double.runs.values())
    newest = max(double.versions.values(), key=lambda v: v["_order"])
    assert first != second == third == newest["pipeline_version_id"]
    assert newest["display_name"].startswith("diamond-")
    assert len({r.body["experiment_id"] for r in double.runs.values()}) == 1


def test_a_failing_task_fails_the_run_and_skips_what_depends_on_it(
    double: KfpApiDouble, notebook: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    double.fail_tasks = {"left": "exit status 1: ZeroDivisionError"}
    assert main(["run", str(notebook), "--engine", "kfp", "--json-events"]) == 1
    events = _events(capsys.readouterr().out)
    shape = _per_step(events)
    assert shape["left"] == ["step_queued", "step_started", "step_failed"]
    assert shape["join"] == ["step_skipped"]
    assert shape["right"] == ["step_queued", "step_started", "step_succeeded"]
    failed = next(e for e in events if e["type"] == "step_failed")
    assert "ZeroDivisionError" in failed["message"]
    assert events[-1]["state"] == "failed" and "left" in events[-1]["message"]


def test_a_cached_task_is_reported_cached(double: KfpApiDouble, notebook: Path) -> None:
    double.cached_tasks = {"prep"}
    events: list[Event] = []
    result = KfpEngine().run(RunRequest(read_notebook(notebook), notebook), [events.append])
    assert result.step_states == {
        "prep": "cached",
        "left": "succeeded",
        "right": "succeeded",
        "join": "succeeded",
    }
    assert [e.type for e in events if e.step == "prep"] == ["step_cached"]


def test_transient_http_errors_and_resets_are_survived(
    double: KfpApiDouble, notebook: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    double.transient = ["reset", 503, 502, 503, "reset", 500]
    assert main(["run", str(notebook), "--engine", "kfp", "-q"]) == 0
    assert double.transient == [], "every scripted failure was met"
    assert next(iter(double.runs.values())).state == "SUCCEEDED"


def test_no_cache_uploads_a_version_with_caching_off(double: KfpApiDouble, notebook: Path) -> None:
    assert main(["run", str(notebook), "--engine", "kfp", "-q", "--no-cache"]) == 0
    (version,) = double.versions.values()
    tasks = version["_spec"]["root"]["dag"]["tasks"].values()
    assert {json.dumps(t["cachingOptions"]) for t in tasks} == {'{"enableCache": false}'}


# ---------------------------------------------------------------------- cancelling


def _run_in_thread(engine: KfpEngine, notebook: Path) -> tuple[threading.Thread, list[Event], dict[str, Any]]:
    events: list[Event] = []
    outcome: dict[str, Any] = {}

    def work() -> None:
        outcome["result"] = engine.run(RunRequest(read_notebook(notebook), notebook), [events.append])

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    return thread, events, outcome


def _wait_for(condition: Any, what: str) -> None:
    deadline = time.monotonic() + 20
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def test_runs_cancel_engine_kfp_terminates_the_remote_run_and_canceled_is_terminal(
    double: KfpApiDouble, notebook: Path, isolated: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    double.hold_tasks = {"left"}
    thread, events, outcome = _run_in_thread(KfpEngine(), notebook)
    _wait_for(lambda: any(e.type == "step_started" and e.step == "left" for e in events), "left to start")
    run_id = events[0].run_id
    assert main(["runs", "cancel", run_id, "--engine", "kfp"]) == 0
    assert "cancelled run" in capsys.readouterr().out
    thread.join(20)
    assert not thread.is_alive(), "CANCELED ends the monitoring"
    assert outcome["result"].state == "cancelled"
    assert events[-1].type == "run_finished" and events[-1].state == "cancelled"
    assert not [e for e in events if e.type == "step_failed"], "a cancelled step is not a failure"
    assert len(double.calls("POST", r"/apis/v2beta1/runs/[^/]+:terminate")) == 1
    store = _store(isolated)
    record = store.get_run(run_id)
    assert record.state == "cancelled"
    assert {s.name: s.state for s in record.steps}["left"] == "cancelled"
    store.close()


def test_engine_cancel_terminates_the_remote_run(double: KfpApiDouble, notebook: Path) -> None:
    double.hold_tasks = {"right"}
    engine = KfpEngine()
    thread, events, outcome = _run_in_thread(engine, notebook)
    _wait_for(lambda: any(e.type == "step_started" and e.step == "right" for e in events), "right to start")
    engine.cancel()
    thread.join(20)
    assert outcome["result"].state == "cancelled"
    assert next(iter(double.runs.values())).state == "CANCELED"


def test_cellpipe_run_exits_130_when_its_cluster_run_is_cancelled(
    double: KfpApiDouble, notebook: Path, isolated: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    double.hold_tasks = {"left"}

    def cancel_when_running() -> None:
        _wait_for(lambda: any(r.tasks["left"].phase == "RUNNING" for r in double.runs.values()), "left")
        store = _store(isolated)
        (record,) = store.list_runs()
        store.close()
        main(["runs", "cancel", record.id])  # a cluster run: cancelled on the cluster without --engine

    helper = threading.Thread(target=cancel_when_running, daemon=True)
    helper.start()
    assert main(["run", str(notebook), "--engine", "kfp", "-q"]) == 130
    helper.join(5)
    assert next(iter(double.runs.values())).state == "CANCELED"


# ---------------------------------------------------------------------- clear failures, nothing half-created


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_an_unreachable_host_fails_at_the_probe_with_one_line(
    notebook: Path, isolated: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    host = f"http://127.0.0.1:{_closed_port()}"
    assert main(["run", str(notebook), "--engine", "kfp", "--host", host]) == 2
    err = capsys.readouterr().err
    assert err.strip().splitlines() == [
        f"cellpipe: cannot reach Kubeflow Pipelines at {host} (host from --host): "
        "connection refused (is the address right? a port-forward still running?)"
    ]
    assert not (isolated / "runs.db").exists() or not _store(isolated).list_runs()


def test_a_host_that_never_answers_times_out_at_the_probe(
    notebook: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(kfp_connection, "PROBE_TIMEOUT_SECONDS", 0.3)
    with socket.socket() as sink:  # listens, never accepts: connections hang like a black-holed host
        sink.bind(("127.0.0.1", 0))
        sink.listen(8)
        host = f"http://127.0.0.1:{sink.getsockname()[1]}"
        monkeypatch.setenv("KF_PIPELINES_ENDPOINT", host)
        assert main(["run", str(notebook), "--engine", "kfp"]) == 2
    err = capsys.readouterr().err
    assert f"cannot reach Kubeflow Pipelines at {host} (host from KF_PIPELINES_ENDPOINT)" in err
    assert "no answer within 0.3 s" in err and "Traceback" not in err


@pytest.mark.parametrize(
    ("token", "expected"),
    [
        (None, "it needs credentials: set KF_PIPELINES_TOKEN"),
        ("wrong-token", "it rejected the token (401 Unauthorized"),
    ],
)
def test_rejected_credentials_are_one_clear_line(
    double: KfpApiDouble,
    notebook: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    token: str | None,
    expected: str,
) -> None:
    if token is None:
        monkeypatch.delenv("KF_PIPELINES_TOKEN")
    else:
        monkeypatch.setenv("KF_PIPELINES_TOKEN", token)
    assert main(["run", str(notebook), "--engine", "kfp"]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert expected in line
    assert not double.pipelines and not double.runs


def test_a_dex_login_redirect_asks_for_the_session_cookie_and_the_cookie_works(
    notebook: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    with KfpApiDouble(cookie="authservice_session=s3ss10n") as server:
        monkeypatch.setenv("KF_PIPELINES_ENDPOINT", server.url)
        assert main(["run", str(notebook), "--engine", "kfp", "-q"]) == 2
        assert "redirects to a login page" in capsys.readouterr().err
        monkeypatch.setenv("KF_PIPELINES_COOKIE", "s3ss10n")  # a bare value: Kubeflow's cookie name is added
        assert main(["run", str(notebook), "--engine", "kfp", "-q"]) == 0
        assert server.problems == []


def test_multi_user_needs_a_namespace_and_a_forbidden_one_is_403(
    notebook: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    with KfpApiDouble(multi_user=True, namespaces=("team-a",)) as server:
        monkeypatch.setenv("KF_PIPELINES_ENDPOINT", server.url)
        assert main(["run", str(notebook), "--engine", "kfp"]) == 2
        assert "multi-user Kubeflow deployment: give --namespace" in capsys.readouterr().err
        assert main(["run", str(notebook), "--engine", "kfp", "--namespace", "team-b"]) == 2
        (line,) = capsys.readouterr().err.strip().splitlines()
        assert "access denied (403 Forbidden)" in line and "team-b" in line
        assert not server.pipelines
        assert main(["run", str(notebook), "--engine", "kfp", "--namespace", "team-a", "-q"]) == 0
        (experiment,) = server.experiments.values()
        assert experiment["namespace"] == "team-a"
        assert server.problems == []


def test_a_pipeline_the_server_rejects_is_one_line_and_creates_nothing(
    double: KfpApiDouble, notebook: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    double.reject_uploads = "Invalid input error: pipeline spec is invalid: unsupported executor"
    assert main(["run", str(notebook), "--engine", "kfp"]) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("cellpipe: uploading pipeline 'diamond' on http://127.0.0.1:")
    assert "HTTP 400" in line and "unsupported executor" in line
    assert not double.pipelines and not double.versions and not double.experiments and not double.runs


def test_a_run_that_cannot_start_deletes_what_its_submission_created(
    double: KfpApiDouble, notebook: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    double.reject_runs = "Invalid input error: service account 'x' not found"
    assert main(["run", str(notebook), "--engine", "kfp", "--experiment", "fresh"]) == 2
    assert "starting the run" in capsys.readouterr().err
    assert not double.pipelines and not double.versions and not double.experiments

    double.reject_runs = None
    assert main(["run", str(notebook), "--engine", "kfp", "-q"]) == 0  # an existing pipeline...
    _notebook(notebook, extra="\nright += 1")
    double.reject_runs = "Invalid input error: quota exceeded"
    assert main(["run", str(notebook), "--engine", "kfp"]) == 2
    assert len(double.pipelines) == 1 and len(double.versions) == 1, "...keeps all but the new version"
    assert [e["display_name"] for e in double.experiments.values()] == ["Default"]


def test_an_experiment_that_must_exist_but_does_not_is_one_line(
    double: KfpApiDouble, notebook: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["run", str(notebook), "--engine", "kfp", "--experiment", "nightly", "--no-create-experiment"]
    assert main(args) == 2
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert "has no experiment 'nightly' (it has: none)" in line
    assert not double.pipelines and not double.versions, "the upload is undone"


def test_resume_and_output_notebook_are_refused_for_kfp(notebook: Path, capsys: Any) -> None:
    assert main(["run", str(notebook), "--engine", "kfp", "-o", "out.ipynb"]) == 2
    assert "stay on the cluster" in capsys.readouterr().err
    assert main(["run", str(notebook), "--engine", "kfp", "--max-parallel", "2"]) == 2
    assert "the kfp engine has no option max_parallel" in capsys.readouterr().err


# ---------------------------------------------------------------------- schedules and remote runs


def test_schedule_create_list_and_delete(double: KfpApiDouble, notebook: Path, capsys: Any) -> None:
    assert (
        main(["schedule", str(notebook), "--cron", "0 2 * * *", "-p", "n", "7", "--experiment", "nightly"])
        == 0
    )
    out = capsys.readouterr().out
    (schedule,) = double.recurring_runs.values()
    assert schedule["recurring_run_id"] in out and "'0 0 2 * * *'" in out
    assert schedule["trigger"] == {"cron_schedule": {"cron": "0 0 2 * * *"}}
    assert schedule["runtime_config"]["parameters"] == {"n": 7, "fail_at": ""}
    (version,) = double.versions.values()
    assert schedule["pipeline_version_reference"]["pipeline_version_id"] == version["pipeline_version_id"]
    assert (schedule["mode"], schedule["no_catchup"], str(schedule["max_concurrency"])) == (
        "ENABLE",
        True,
        "1",
    )

    assert main(["schedule", str(notebook), "--cron", "@daily"]) == 2
    assert "already has a schedule named 'diamond'" in capsys.readouterr().err

    assert main(["schedule", "--list", "--json"]) == 0
    (listed,) = json.loads(capsys.readouterr().out)
    assert (listed["id"], listed["cron"], listed["status"]) == (
        schedule["recurring_run_id"],
        "0 0 2 * * *",
        "ENABLED",
    )

    assert main(["schedule", "--delete", schedule["recurring_run_id"]]) == 0
    assert not double.recurring_runs
    assert main(["schedule", "--list"]) == 0
    assert "no schedules" in capsys.readouterr().out


def test_a_bad_cron_expression_is_refused_before_contacting_the_cluster(
    notebook: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["schedule", str(notebook), "--cron", "every day", "--host", "http://127.0.0.1:9"]) == 2
    assert "is not a cron expression" in capsys.readouterr().err


def test_kfp_cron_forms() -> None:
    assert kfp_cron("*/15 * * * *") == "0 */15 * * * *"
    assert kfp_cron("30 0 9 ? * MON-FRI") == "30 0 9 ? * MON-FRI"
    assert kfp_cron(" @hourly ") == "0 0 * * * *"
    for bad in ("", "* * *", "1 2 3 4 5 6 7", "0 2 * * * ; rm"):
        with pytest.raises(CellpipeError):
            kfp_cron(bad)


def test_runs_list_and_show_with_engine_kfp_ask_the_cluster(
    double: KfpApiDouble, notebook: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["run", str(notebook), "--engine", "kfp", "--json-events"]) == 0
    local_id = _events(capsys.readouterr().out)[0]["run_id"]
    remote_id = next(iter(double.runs))
    assert main(["runs", "list", "--engine", "kfp", "--json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert (row["id"], row["state"], row["local_id"]) == (remote_id, "SUCCEEDED", local_id)
    for run in (local_id, remote_id):
        assert main(["runs", "show", run, "--engine", "kfp", "--json"]) == 0
        shown = json.loads(capsys.readouterr().out)
        assert shown["id"] == remote_id and shown["state"] == "SUCCEEDED"
        assert {t["task"]: t["state"] for t in shown["tasks"]} == {
            "prep": "SUCCEEDED",
            "left": "SUCCEEDED",
            "right": "SUCCEEDED",
            "join": "SUCCEEDED",
        }
    assert main(["runs", "list"]) == 0  # the local store lists the cluster run too
    assert local_id in capsys.readouterr().out


# ---------------------------------------------------------------------- credentials stay secret


def test_the_token_never_reaches_outputs_files_or_the_run_store(
    double: KfpApiDouble, notebook: Path, isolated: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    double.fail_tasks = {"right": "boom"}
    assert (
        main(["run", str(notebook), "--engine", "kfp", "--json-events", "--junit", str(tmp_path / "j.xml")])
        == 1
    )
    assert main(["runs", "show", _events(capsys.readouterr().out)[0]["run_id"], "--json"]) == 0
    captured = capsys.readouterr()
    secret = TOKEN.encode()
    assert secret not in (captured.out + captured.err).encode()
    files = [p for p in [*isolated.rglob("*"), *tmp_path.rglob("*.xml")] if p.is_file()]
    assert any(p.name == "runs.db" for p in files)
    for path in files:  # the database, its WAL, step logs, the JUnit report
        assert secret not in path.read_bytes(), path
    assert all(secret not in upload for upload in double.uploads), "nor the uploaded pipeline YAML"
    assert TOKEN not in repr(resolve())


def test_a_rejected_token_is_not_echoed(
    double: KfpApiDouble, notebook: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("KF_PIPELINES_TOKEN", "wrong-SECRET-value")
    assert main(["run", str(notebook), "--engine", "kfp"]) == 2
    captured = capsys.readouterr()
    assert "wrong-SECRET-value" not in captured.out + captured.err


# ---------------------------------------------------------------------- the same stream as the local engine


@pytest.mark.parametrize("failing", [False, True], ids=["succeeds", "left-fails"])
def test_kfp_and_local_runs_of_one_notebook_have_the_same_event_shape(
    double: KfpApiDouble, notebook: Path, tmp_path: Path, failing: bool
) -> None:
    pipeline = read_notebook(notebook)
    local_events: list[Event] = []
    parameters = {"fail_at": "left"} if failing else {}
    local = LocalEngine(workspace=tmp_path / "local-home").run(
        RunRequest(pipeline, notebook, parameters, use_cache=False), [local_events.append]
    )
    if failing:
        double.fail_tasks = {"left": "exit status 1"}
    kfp_events: list[Event] = []
    remote = KfpEngine().run(RunRequest(pipeline, notebook, use_cache=False), [kfp_events.append])

    def shape(events: list[Event]) -> tuple[str, str, dict[str, list[str]]]:
        return events[0].type, events[-1].type, _per_step([e.to_json() for e in events])

    assert shape(kfp_events) == shape(local_events)
    assert remote.state == local.state == ("failed" if failing else "succeeded")
    assert remote.step_states == local.step_states
    for events in (local_events, kfp_events):
        assert set(events[0].data or {}) >= {"pipeline", "engine", "steps", "upstream", "parameters"}
        assert [e.seq for e in events] == list(range(1, len(events) + 1))


# ---------------------------------------------------------------------- connection settings


def test_flags_beat_the_environment_which_beats_the_config_file(tmp_path: Path) -> None:
    token_file = tmp_path / "token"
    token_file.write_text("from-file\n")
    config = tmp_path / "kfp.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "host": "https://config.example",
                "namespace": "cfg",
                "experiment": "nb",
                "token_file": str(token_file),
            }
        )
    )
    env = {"KF_PIPELINES_ENDPOINT": "https://env.example/", "KF_PIPELINES_NAMESPACE": "env-ns"}
    from_config = resolve(env={}, config_file=config)
    assert (from_config.host, from_config.namespace, from_config.auth) == (
        "https://config.example",
        "cfg",
        "token",
    )
    assert from_config.token == "from-file" and from_config.default_experiment == "nb"
    from_env = resolve(env={**env, "KF_PIPELINES_TOKEN": "from-env"}, config_file=config)
    assert (from_env.host, from_env.namespace, from_env.token) == (
        "https://env.example",
        "env-ns",
        "from-env",
    )
    assert from_env.origin == "KF_PIPELINES_ENDPOINT"
    from_flags = resolve(host="http://flag:8080", namespace="flag-ns", env=env, config_file=config)
    assert (from_flags.host, from_flags.namespace, from_flags.origin) == (
        "http://flag:8080",
        "flag-ns",
        "--host",
    )


def test_auth_modes_are_picked_from_what_is_configured(tmp_path: Path) -> None:
    host = {"KF_PIPELINES_ENDPOINT": "http://kfp:8888"}
    nothing = tmp_path / "none.yaml"
    assert resolve(env=host, config_file=nothing).auth == "none"
    cookie = resolve(env={**host, "KF_PIPELINES_COOKIE": "abc"}, config_file=nothing)
    assert (cookie.auth, cookie.headers()) == ("cookie", {"Cookie": "authservice_session=abc"})
    sa_token = tmp_path / "sa-token"
    sa_token.write_text("rotated-1")
    in_cluster = resolve(env={"KF_PIPELINES_SA_TOKEN_PATH": str(sa_token)}, config_file=nothing)
    assert (in_cluster.auth, in_cluster.host) == ("in-cluster", kfp_connection.IN_CLUSTER_HOST)
    assert in_cluster.headers() == {"Authorization": "Bearer rotated-1"}
    sa_token.write_text("rotated-2")  # the kubelet rotates the projected token: it is read per request
    assert in_cluster.headers() == {"Authorization": "Bearer rotated-2"}
    with pytest.raises(CellpipeError, match="choose one with --auth"):
        resolve(env={**host, "KF_PIPELINES_TOKEN": "t", "KF_PIPELINES_COOKIE": "c"}, config_file=nothing)
    assert (
        resolve(auth="cookie", env={**host, "KF_PIPELINES_TOKEN": "t", "KF_PIPELINES_COOKIE": "c"}).auth
        == "cookie"
    )
    with pytest.raises(CellpipeError, match="needs a token"):
        resolve(auth="token", env=host, config_file=nothing)


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"host": "https://x", "token": "abc"}, "keep credentials out of the config file"),
        ({"hots": "https://x"}, "unknown setting hots"),
        ({"host": "kfp.example.com"}, "needs a scheme"),
        ({"verify_ssl": "no", "host": "https://x"}, "verify_ssl is true or false"),
        ({}, "no Kubeflow Pipelines host: give --host URL, set KF_PIPELINES_ENDPOINT"),
    ],
)
def test_config_mistakes_are_clear(tmp_path: Path, config: dict[str, Any], message: str) -> None:
    path = tmp_path / "kfp.yaml"
    path.write_text(yaml.safe_dump(config))
    with pytest.raises(CellpipeError, match=message):
        resolve(env={}, config_file=path)


def test_the_config_file_lives_in_cellpipe_home_or_the_user_config(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    assert (
        kfp_connection.config_path({"CELLPIPE_HOME": str(home)}) == Path.home() / ".config/cellpipe/kfp.yaml"
    )
    (home / "kfp.yaml").write_text("host: http://x\n")
    assert kfp_connection.config_path({"CELLPIPE_HOME": str(home)}) == home / "kfp.yaml"


def test_in_cluster_auth_runs_against_the_double(tmp_path: Path, notebook: Path) -> None:
    sa_token = tmp_path / "sa-token"
    sa_token.write_text("projected-sa-token")
    with KfpApiDouble(token="projected-sa-token") as server:
        connection = Connection(host=server.url, auth="in-cluster", origin="test", token_file=sa_token)
        result = KfpEngine(connection=connection, kube=None).run(
            RunRequest(read_notebook(notebook), notebook), []
        )
        assert result.state == "succeeded"
        assert server.problems == []


def test_the_connection_repr_hides_credentials() -> None:
    connection = Connection(
        host="https://user:pw@kfp.example/pipeline", auth="token", token=TOKEN, origin="x"
    )
    assert TOKEN not in repr(connection)
    assert connection.display_host == "https://kfp.example/pipeline"


# ---------------------------------------------------------------------- pieces


def test_executor_pods_map_to_steps_by_their_argo_node_name() -> None:
    tasks = {"load-data": "load_data", "train": "train"}
    assert task_of("sk-abc12.root.load-data.executor", tasks) == "load_data"
    assert task_of("sk-abc12.root.train.executor(1)", tasks) == "train"
    assert task_of("sk-abc12.root.train-driver", tasks) is None
    assert task_of("sk-abc12.root-driver", tasks) is None
    assert task_of("sk-abc12.root.other.executor", tasks) is None


def test_without_cache_turns_caching_off_for_every_task(notebook: Path) -> None:
    ir = compile_pipeline(read_notebook(notebook)).ir_yaml
    tasks = yaml.safe_load(without_cache(ir))["root"]["dag"]["tasks"]
    assert {t["cachingOptions"]["enableCache"] for t in tasks.values()} == {False}
    assert len(tasks) == len(STEPS)


def test_the_double_refuses_requests_its_kfp_server_api_models_do_not_describe() -> None:
    with KfpApiDouble() as server:
        bodies = [
            {"display_name": "r", "pipelineVersionId": "camelCase is not the API's field name"},
            {"display_name": 5},
            {"display_name": "r", "state": "ALMOST_DONE"},
            {"display_name": "r", "runtime_config": {"parameters": []}},
        ]
        for body in bodies:
            request = urllib.request.Request(
                f"{server.url}/apis/v2beta1/runs", data=json.dumps(body).encode(), method="POST"
            )
            with pytest.raises(urllib.error.HTTPError) as refused:
                urllib.request.urlopen(request, timeout=5)
            assert refused.value.code == 400
        assert len(server.problems) == len(bodies)
        assert "unknown field 'pipelineVersionId'" in server.problems[0]
        assert "expected str" in server.problems[1] and "ALMOST_DONE" in server.problems[2]
