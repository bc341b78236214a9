"""TEST DOUBLE: a loopback stand-in for a Kubeflow Pipelines v2beta1 REST API and the Kubernetes pod-log API.

This is not Kubeflow. It is a small threaded HTTP server on 127.0.0.1 that answers the requests the real
`kfp.Client` (and the official `kubernetes` client) make, so the KFP engine can be tested without a
cluster. What it models, and how closely:

- KFP REST v2beta1: healthz, pipeline upload / upload_version (multipart), pipelines and versions
  (list with filters, get, delete; deleting a pipeline that still has versions is refused, as KFP 2.x
  does), experiments (create, list, get, delete), runs (create, get, list, ``:terminate``) and recurring
  runs (create, list, get, delete).
- Request bodies are VALIDATED against the models of `kfp-server-api` (``V2beta1Run``,
  ``V2beta1Experiment``, ``V2beta1RecurringRun``, ...): unknown fields, wrong JSON types and enum values
  outside the model's ``allowable_values`` are 400s, then the body is deserialized with the package's own
  ApiClient deserializer. Uploaded pipeline YAML is parsed into KFP's ``PipelineSpec`` proto. Every
  rejected request is also kept in `KfpApiDouble.problems`, so a malformed request fails a test even
  when the code under test would swallow the 400.
- Runs advance one state per ``GET /runs/{id}`` (each poll), following the DAG in the uploaded IR as
  KFP on Argo reports it in ``run_details.task_details``: a ``<task>-driver`` node first, then the task
  node whose child is an ``executor`` pod (PENDING, RUNNING, SUCCEEDED). Scriptable: `fail_tasks`
  (FAILED with a message; nothing new starts after a failure, as Argo's fail-fast DAG does),
  `hold_tasks` (RUNNING until the run is terminated), `cached_tasks` (executor SKIPPED, task SUCCEEDED),
  `instant_tasks` (from PENDING straight to SUCCEEDED: they ran between two polls),
  `transient` (the next run reads answer 5xx or drop the connection). ``:terminate`` makes the run
  CANCELING, then CANCELED.
- Auth when configured: a bearer `token` (401 without it or with another), a Dex-style session `cookie`
  (a 302 to the login page without it), `multi_user` with `namespaces` the caller may use (403 others).
  `reject_uploads` / `reject_runs` make the server refuse pipeline files / run creations (400).
- Kubernetes: ``GET /api/v1/namespaces/{ns}/pods?labelSelector=pipeline/runid=ID`` lists a pod per
  driver and executor, labelled and annotated (``workflows.argoproj.io/node-name``) as KFP and Argo do;
  ``GET .../pods/{name}/log?container=main&follow=true`` streams the pod's lines and, with follow,
  keeps the stream open while its task runs. A pod whose executor is still PENDING answers 400
  ("waiting to start"), as the kubelet does.
"""

from __future__ import annotations

import datetime
import email.parser
import json
import re
import socket
import threading
import time
import urllib.parse
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import kfp_server_api
import yaml
from google.protobuf import json_format
from kfp.pipeline_spec import pipeline_spec_pb2

_INT64_AS_STRING = frozenset({"max_concurrency", "interval_second", "long_value"})
_PARAMETER_TYPES: dict[str, tuple[type, ...]] = {
    "STRING": (str,),
    "NUMBER_INTEGER": (int,),
    "NUMBER_DOUBLE": (int, float),
    "BOOLEAN": (bool,),
    "LIST": (list,),
    "STRUCT": (dict,),
}
_DESERIALIZER = kfp_server_api.ApiClient()


class Rejected(Exception):
    """A request the real API would refuse: becomes a JSON error answer."""

    def __init__(self, status: int, message: str, scripted: bool = False):
        super().__init__(message)
        self.status = status
        self.scripted = scripted  # asked for by the test, not a sign of a malformed request


# ---------------------------------------------------------------------- validation against kfp-server-api


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)([A-Z])", r"_\1", name).lower()


def check_model(value: Any, type_name: str, where: str = "body") -> None:
    """Raise Rejected(400) unless `value` is JSON the kfp-server-api model `type_name` describes exactly."""
    if value is None:
        return
    leaf = where.rsplit(".", 1)[-1]
    if type_name.startswith("list["):
        if not isinstance(value, list):
            raise Rejected(400, f"{where}: expected a list, got {type(value).__name__}")
        for i, item in enumerate(value):
            check_model(item, type_name[5:-1], f"{where}[{i}]")
        return
    if type_name.startswith("dict("):
        if not isinstance(value, dict):
            raise Rejected(400, f"{where}: expected an object, got {type(value).__name__}")
        inner = re.match(r"dict\(([^,]*), (.*)\)", type_name).group(2)  # type: ignore[union-attr]
        for key, item in value.items():
            check_model(item, inner, f"{where}.{key}")
        return
    simple: dict[str, tuple[type, ...]] = {
        "str": (str,),
        "bool": (bool,),
        "int": (int,),
        "float": (int, float),
    }
    if type_name in simple:
        allowed = simple[type_name] + ((int,) if type_name == "str" and leaf in _INT64_AS_STRING else ())
        if not isinstance(value, allowed) or (type_name != "bool" and isinstance(value, bool)):
            raise Rejected(400, f"{where}: expected {type_name}, got {type(value).__name__} {value!r}")
        return
    if type_name == "datetime":
        if not isinstance(value, str):
            raise Rejected(400, f"{where}: expected an RFC 3339 time string")
        datetime.datetime.fromisoformat(value.replace("Z", "+00:00"))
        return
    if type_name == "object":
        return
    model = getattr(kfp_server_api.models, type_name)
    if not model.openapi_types:  # an enum
        allowed_values = getattr(model, "allowable_values", [])
        if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < len(allowed_values):
            return
        if value not in allowed_values:
            raise Rejected(400, f"{where}: {value!r} is not one of {allowed_values}")
        return
    if not isinstance(value, dict):
        raise Rejected(400, f"{where}: expected a {type_name} object, got {type(value).__name__}")
    fields = {json_name: attr for attr, json_name in model.attribute_map.items()}
    for key, item in value.items():
        if key not in fields:
            raise Rejected(400, f"{where}: unknown field {key!r} for {type_name}")
        check_model(item, model.openapi_types[fields[key]], f"{where}.{key}")


def parse_model(body: bytes, type_name: str) -> Any:
    """A request body checked against the model, then deserialized by kfp-server-api's own ApiClient."""
    try:
        data = json.loads(body or b"null")
    except ValueError as error:
        raise Rejected(400, f"body is not JSON: {error}") from None
    if not isinstance(data, dict):
        raise Rejected(400, f"body must be a {type_name} object")
    check_model(data, type_name)
    return _DESERIALIZER._ApiClient__deserialize(data, type_name)  # type: ignore[attr-defined]


def parse_filter(text: str | None) -> list[tuple[str, Any]]:
    """(key, value) EQUALS predicates of a v2beta1 filter query parameter (proto JSON: either key case)."""
    if not text:
        return []
    data = json.loads(text)
    normalised = {"predicates": [{_snake(k): v for k, v in p.items()} for p in data.get("predicates", [])]}
    check_model(normalised, "V2beta1Filter", "filter")
    predicates = []
    for p in normalised["predicates"]:
        if p.get("operation") not in ("EQUALS", 1):
            raise Rejected(400, f"filter: this test double only knows EQUALS, not {p.get('operation')!r}")
        predicates.append((p["key"], p.get("string_value", p.get("int_value", p.get("long_value")))))
    return predicates


def _matches(item: dict[str, Any], predicates: list[tuple[str, Any]]) -> bool:
    return all(str(item.get(key)) == str(value) for key, value in predicates)


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _id() -> str:
    return str(uuid.uuid4())


# ---------------------------------------------------------------------- simulated runs


@dataclass
class SimTask:
    name: str
    deps: list[str]
    phase: str = "WAITING"  # DRIVER, QUEUED, RUNNING, SUCCEEDED, FAILED, CACHED, CANCELED
    driver_id: str = field(default_factory=_id)
    node_id: str = field(default_factory=_id)
    executor_id: str = field(default_factory=_id)
    driver_pod: str = ""
    executor_pod: str = ""
    started: str | None = None
    finished: str | None = None
    error: str | None = None


@dataclass
class SimRun:
    body: dict[str, Any]
    workflow: str
    tasks: dict[str, SimTask]
    namespace: str
    state: str = "PENDING"
    terminate: bool = False
    reads: int = 0


class KfpApiDouble:
    """TEST DOUBLE of the KFP v2beta1 REST API and the Kubernetes pod-log endpoints (see the module)."""

    def __init__(
        self,
        *,
        token: str | None = None,
        cookie: str | None = None,
        multi_user: bool = False,
        namespaces: tuple[str, ...] = (),
        kube_forbidden: bool = False,
    ):
        self.token, self.cookie = token, cookie
        self.multi_user, self.namespaces = multi_user, set(namespaces)
        self.kube_forbidden = kube_forbidden
        self.fail_tasks: dict[str, str] = {}
        self.hold_tasks: set[str] = set()
        self.cached_tasks: set[str] = set()
        self.instant_tasks: set[str] = set()  # run between two polls: never seen RUNNING
        self.transient: list[int | str] = []  # next GET /runs/{id} answers: a status, or "reset"
        self.reject_uploads: str | None = None
        self.reject_runs: str | None = None  # the next run creations answer 400 with this message
        self.task_logs: dict[str, list[str]] = {}
        self.pipelines: dict[str, dict[str, Any]] = {}
        self.versions: dict[str, dict[str, Any]] = {}  # id -> version JSON (+ "_spec": the IR dict)
        self.experiments: dict[str, dict[str, Any]] = {}
        self.runs: dict[str, SimRun] = {}
        self.recurring_runs: dict[str, dict[str, Any]] = {}
        self.requests: list[tuple[str, str, dict[str, list[str]], dict[str, str]]] = []
        self.uploads: list[bytes] = []  # every pipeline file received
        self.problems: list[str] = []  # every request refused as malformed
        self.lock = threading.RLock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True)

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> KfpApiDouble:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()

    def calls(self, method: str, pattern: str) -> list[str]:
        """Paths of the requests with this method whose path matches the regular expression."""
        return [path for m, path, _, _ in self.requests if m == method and re.fullmatch(pattern, path)]

    def write_kubeconfig(self, path: Path) -> Path:
        """A kube config whose current context points at this double's Kubernetes endpoints."""
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "double", "cluster": {"server": self.url}}],
            "users": [{"name": "tester", "user": {"token": "kube-test-token"}}],
            "contexts": [{"name": "double", "context": {"cluster": "double", "user": "tester"}}],
            "current-context": "double",
        }
        path.write_text(yaml.safe_dump(config), encoding="utf-8")
        return path

    # ------------------------------------------------------------------ auth

    def check_auth(self, headers: Any) -> None:
        if self.token is not None:
            given = headers.get("Authorization", "")
            if given != f"Bearer {self.token}":
                raise Rejected(401, "Unauthorized: bearer token missing or invalid")
        if self.cookie is not None and self.cookie not in headers.get("Cookie", ""):
            raise Rejected(302, "/dex/auth?client_id=kubeflow-oidc-authservice")

    def check_namespace(self, namespace: str | None) -> None:
        if not self.multi_user:
            return
        if not namespace:
            raise Rejected(400, "Invalid input error: namespace is required in multi-user mode")
        if namespace not in self.namespaces:
            raise Rejected(403, f"PermissionDenied: user may not access namespace {namespace}")

    # ------------------------------------------------------------------ pipelines

    def _parse_package(self, data: bytes) -> dict[str, Any]:
        self.uploads.append(data)
        if self.reject_uploads:
            raise Rejected(400, self.reject_uploads, scripted=True)
        try:
            documents = list(yaml.safe_load_all(data.decode("utf-8")))
            spec = documents[0]
            json_format.ParseDict(spec, pipeline_spec_pb2.PipelineSpec())
            for platform in documents[1:]:
                json_format.ParseDict(platform, pipeline_spec_pb2.PlatformSpec())
        except Exception as error:
            raise Rejected(400, f"Invalid input error: failed to parse the pipeline spec: {error}") from None
        if not spec.get("root", {}).get("dag", {}).get("tasks"):
            raise Rejected(400, "Invalid input error: the pipeline spec has no tasks")
        return spec

    def upload(self, query: dict[str, str], package: bytes) -> dict[str, Any]:
        name = query.get("name") or query.get("display_name")
        if not name:
            raise Rejected(400, "Invalid input error: pipeline name is required")
        namespace = query.get("namespace") or ""
        if self.multi_user and namespace:
            self.check_namespace(namespace)
        spec = self._parse_package(package)
        if any(
            p["display_name"] == name and p.get("namespace", "") == namespace for p in self.pipelines.values()
        ):
            raise Rejected(409, f"Already exist error: a pipeline named {name} already exists")
        pipeline = {
            "pipeline_id": _id(),
            "display_name": name,
            "name": name,
            "description": query.get("description", ""),
            "created_at": _now(),
        }
        if namespace:
            pipeline["namespace"] = namespace
        self.pipelines[pipeline["pipeline_id"]] = pipeline
        self._add_version(pipeline["pipeline_id"], name, query.get("description", ""), spec)
        return pipeline

    def upload_version(self, query: dict[str, str], package: bytes) -> dict[str, Any]:
        pipeline_id, name = query.get("pipelineid"), query.get("name") or query.get("display_name")
        if not pipeline_id or pipeline_id not in self.pipelines:
            raise Rejected(404, f"Not found error: pipeline {pipeline_id} not found")
        if not name:
            raise Rejected(400, "Invalid input error: pipeline version name is required")
        spec = self._parse_package(package)
        if any(v["pipeline_id"] == pipeline_id and v["display_name"] == name for v in self.versions.values()):
            raise Rejected(409, f"Already exist error: version {name} exists")
        return self._public(self._add_version(pipeline_id, name, query.get("description", ""), spec))

    def _add_version(
        self, pipeline_id: str, name: str, description: str, spec: dict[str, Any]
    ) -> dict[str, Any]:
        version = {
            "pipeline_id": pipeline_id,
            "pipeline_version_id": _id(),
            "display_name": name,
            "name": name,
            "description": description,
            "created_at": _now(),
            "_spec": spec,
            "_order": len(self.versions),
        }
        self.versions[version["pipeline_version_id"]] = version
        return version

    @staticmethod
    def _public(version: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in version.items() if not k.startswith("_")}

    # ------------------------------------------------------------------ runs

    def create_run(self, body: bytes) -> dict[str, Any]:
        run = parse_model(body, "V2beta1Run")
        if self.reject_runs:
            raise Rejected(400, self.reject_runs, scripted=True)
        raw = json.loads(body)
        if not run.display_name:
            raise Rejected(400, "Invalid input error: run display_name is required")
        experiment = self.experiments.get(run.experiment_id or "")
        if experiment is None:
            raise Rejected(404, f"Not found error: experiment {run.experiment_id!r} not found")
        spec = self._version_spec(run.pipeline_version_reference, run.pipeline_spec)
        self._check_parameters(spec, (run.runtime_config.parameters if run.runtime_config else None) or {})
        run_id = _id()
        workflow = f"{spec['pipelineInfo']['name']}-{run_id[:5]}"
        tasks = {
            name: SimTask(
                name,
                list(task.get("dependentTasks", [])),
                driver_pod=f"{workflow}-system-container-driver-{abs(hash((run_id, name, 'd'))) % 10**10}",
                executor_pod=f"{workflow}-system-container-impl-{abs(hash((run_id, name, 'e'))) % 10**10}",
            )
            for name, task in spec["root"]["dag"]["tasks"].items()
        }
        stored = {
            **raw,
            "run_id": run_id,
            "created_at": _now(),
            "state": "PENDING",
            "storage_state": "AVAILABLE",
        }
        if run.pipeline_version_reference is not None:
            stored["pipeline_version_id"] = run.pipeline_version_reference.pipeline_version_id
        self.runs[run_id] = SimRun(stored, workflow, tasks, experiment.get("namespace", "kubeflow"))
        return self._run_json(self.runs[run_id])

    def _version_spec(self, reference: Any, pipeline_spec: Any) -> dict[str, Any]:
        if reference is None:
            raise Rejected(400, "Invalid input error: this test double only runs uploaded pipeline versions")
        version = self.versions.get(reference.pipeline_version_id or "")
        if version is None or version["pipeline_id"] != reference.pipeline_id:
            raise Rejected(404, "Not found error: pipeline version not found")
        if pipeline_spec is not None:
            raise Rejected(400, "Invalid input error: give a pipeline version or a pipeline spec, not both")
        spec: dict[str, Any] = version["_spec"]
        return spec

    @staticmethod
    def _check_parameters(spec: dict[str, Any], values: dict[str, Any]) -> None:
        declared = spec.get("root", {}).get("inputDefinitions", {}).get("parameters", {})
        for name, value in values.items():
            if name not in declared:
                raise Rejected(400, f"Invalid input error: unknown pipeline parameter {name!r}")
            kind = declared[name]["parameterType"]
            ok = isinstance(value, _PARAMETER_TYPES[kind]) and (
                kind == "BOOLEAN" or not isinstance(value, bool)
            )
            if not ok:
                raise Rejected(400, f"Invalid input error: parameter {name!r} must be {kind}, got {value!r}")

    def read_run(self, run_id: str) -> dict[str, Any]:
        run = self.runs.get(run_id)
        if run is None:
            raise Rejected(404, f"Not found error: run {run_id} not found")
        run.reads += 1
        self._advance(run)
        return self._run_json(run)

    def terminate(self, run_id: str) -> None:
        run = self.runs.get(run_id)
        if run is None:
            raise Rejected(404, f"Not found error: run {run_id} not found")
        if run.state in ("SUCCEEDED", "FAILED", "CANCELED"):
            raise Rejected(400, f"Failed precondition error: run {run_id} already finished ({run.state})")
        run.terminate = True

    def _advance(self, run: SimRun) -> None:
        """One step of every task that can move, decided on the state before this step."""
        if run.state in ("SUCCEEDED", "FAILED", "CANCELED"):
            return
        if run.terminate:
            if run.state != "CANCELING":
                run.state = "CANCELING"
                return
            for task in run.tasks.values():
                if task.phase in ("DRIVER", "QUEUED", "RUNNING"):
                    task.phase, task.finished = "CANCELED", _now()
            run.state, run.body["finished_at"] = "CANCELED", _now()
            return
        run.state = "RUNNING"
        before = {name: task.phase for name, task in run.tasks.items()}
        failed = any(phase == "FAILED" for phase in before.values())
        for name, task in run.tasks.items():
            phase = before[name]
            if (
                phase == "WAITING"
                and not failed
                and all(before[d] in ("SUCCEEDED", "CACHED") for d in task.deps)
            ):
                task.phase, task.started = "DRIVER", _now()
            elif phase == "DRIVER":
                task.phase = "CACHED" if name in self.cached_tasks else "QUEUED"
                if task.phase == "CACHED":
                    task.finished = _now()
            elif phase == "QUEUED" and name in self.instant_tasks:
                task.phase, task.finished = "SUCCEEDED", _now()
            elif phase == "QUEUED":
                task.phase = "RUNNING"
            elif phase == "RUNNING" and name not in self.hold_tasks:
                task.finished = _now()
                if name in self.fail_tasks:
                    task.phase, task.error = "FAILED", self.fail_tasks[name]
                else:
                    task.phase = "SUCCEEDED"
        phases = {task.phase for task in run.tasks.values()}
        if phases & {"DRIVER", "QUEUED", "RUNNING"}:
            return
        if "FAILED" in phases:
            run.state, run.body["finished_at"] = "FAILED", _now()
        elif phases <= {"SUCCEEDED", "CACHED"}:
            run.state, run.body["finished_at"] = "SUCCEEDED", _now()

    def _run_json(self, run: SimRun) -> dict[str, Any]:
        body = dict(run.body)
        body["state"] = run.state
        if run.state == "FAILED":
            failed = [t.name for t in run.tasks.values() if t.phase == "FAILED"]
            body["error"] = {"code": 2, "message": f"task(s) {', '.join(failed)} failed"}
        details = [
            {"run_id": body["run_id"], "task_id": _id(), "display_name": "root-driver", "state": "SUCCEEDED"},
            {"run_id": body["run_id"], "task_id": _id(), "display_name": "root", "state": run.state},
        ]
        for task in run.tasks.values():
            details.extend(self._task_details(body["run_id"], task))
        body["run_details"] = {"task_details": details}
        return body

    @staticmethod
    def _task_details(run_id: str, task: SimTask) -> list[dict[str, Any]]:
        if task.phase == "WAITING":
            return []
        driver_state = (
            "RUNNING" if task.phase == "DRIVER" else "CANCELED" if task.phase == "CANCELED" else "SUCCEEDED"
        )
        details: list[dict[str, Any]] = [
            {
                "run_id": run_id,
                "task_id": task.driver_id,
                "display_name": f"{task.name}-driver",
                "state": driver_state,
                "pod_name": task.driver_pod,
                "create_time": task.started,
            }
        ]
        if task.phase == "DRIVER":
            return details
        node_state = {
            "QUEUED": "RUNNING",
            "RUNNING": "RUNNING",
            "SUCCEEDED": "SUCCEEDED",
            "CACHED": "SUCCEEDED",
            "FAILED": "FAILED",
            "CANCELED": "CANCELED",
        }[task.phase]
        executor_state = {"QUEUED": "PENDING", "CACHED": "SKIPPED"}.get(task.phase, node_state)
        node: dict[str, Any] = {
            "run_id": run_id,
            "task_id": task.node_id,
            "display_name": task.name,
            "state": node_state,
            "create_time": task.started,
            "start_time": task.started,
            "child_tasks": [{"pod_name": task.executor_pod}],
        }
        executor: dict[str, Any] = {
            "run_id": run_id,
            "task_id": task.executor_id,
            "display_name": "executor",
            "state": executor_state,
            "pod_name": task.executor_pod,
            "create_time": task.started,
        }
        if task.phase != "QUEUED":
            executor["start_time"] = task.started
        if task.finished:
            node["end_time"] = executor["end_time"] = task.finished
        if task.error:
            node["error"] = executor["error"] = {"code": 2, "message": task.error}
        return [*details, node, executor]

    # ------------------------------------------------------------------ kubernetes

    def pods(self, namespace: str, selector: str) -> dict[str, Any]:
        items = []
        for run_id, run in self.runs.items():
            if selector != f"pipeline/runid={run_id}" or namespace != run.namespace:
                continue
            for task in run.tasks.values():
                if task.phase == "WAITING":
                    continue
                driver_phase = "Running" if task.phase == "DRIVER" else "Succeeded"
                items.append(self._pod(run_id, run, task.driver_pod, f"{task.name}-driver", driver_phase))
                if task.phase in ("DRIVER", "CACHED"):
                    continue
                phase = {"QUEUED": "Pending", "RUNNING": "Running", "SUCCEEDED": "Succeeded"}.get(
                    task.phase, "Failed"
                )
                items.append(self._pod(run_id, run, task.executor_pod, f"{task.name}.executor", phase))
        return {"kind": "PodList", "apiVersion": "v1", "metadata": {}, "items": items}

    @staticmethod
    def _pod(run_id: str, run: SimRun, name: str, node: str, phase: str) -> dict[str, Any]:
        return {
            "metadata": {
                "name": name,
                "namespace": run.namespace,
                "labels": {"pipeline/runid": run_id, "pipelines.kubeflow.org/v2_component": "true"},
                "annotations": {"workflows.argoproj.io/node-name": f"{run.workflow}.root.{node}"},
            },
            "spec": {"containers": [{"name": "main", "image": "python:3.11-slim"}]},
            "status": {"phase": phase},
        }

    def pod_log(self, namespace: str, pod: str) -> tuple[SimTask, list[str]] | None:
        for run in self.runs.values():
            for task in run.tasks.values():
                if pod == task.driver_pod and run.namespace == namespace:
                    return task, [f"driver: resolved the inputs of {task.name}"]
                if pod == task.executor_pod and run.namespace == namespace:
                    lines = self.task_logs.get(task.name, [f"{task.name}: working", f"{task.name}: done"])
                    return task, lines
        return None


# ---------------------------------------------------------------------- HTTP


def _handler(double: KfpApiDouble) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:  # quiet test output
            return

        def do_GET(self) -> None:
            self._serve("GET")

        def do_POST(self) -> None:
            self._serve("POST")

        def do_DELETE(self) -> None:
            self._serve("DELETE")

        def _serve(self, method: str) -> None:
            parts = urllib.parse.urlsplit(self.path)
            path, query = parts.path, urllib.parse.parse_qs(parts.query)
            one = {k: v[0] for k, v in query.items()}
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            with double.lock:
                double.requests.append((method, path, query, dict(self.headers)))
            try:
                if path.startswith("/api/v1/"):
                    self._kubernetes(method, path, one)
                    return
                with double.lock:
                    double.check_auth(self.headers)
                    if (
                        method == "GET"
                        and re.fullmatch(r"/apis/v2beta1/runs/[^/:]+", path)
                        and double.transient
                    ):
                        scripted = double.transient.pop(0)
                        if scripted == "reset":
                            self.close_connection = True
                            self.connection.shutdown(socket.SHUT_RDWR)
                            return
                        raise Rejected(int(scripted), "Service Unavailable: scripted transient failure")
                    answer = self._kfp(method, path, one, body)
                self._json(200, answer)
            except Rejected as rejected:
                if rejected.status == 400 and not rejected.scripted:
                    with double.lock:
                        double.problems.append(f"{method} {path}: {rejected}")
                if rejected.status == 302:
                    self.send_response(302)
                    self.send_header("Location", str(rejected))
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                grpc = {400: 3, 401: 16, 403: 7, 404: 5, 409: 6}.get(rejected.status, 14)
                self._json(rejected.status, {"error": str(rejected), "code": grpc, "message": str(rejected)})

        def _json(self, status: int, data: Any) -> None:
            payload = json.dumps(data).encode("utf-8")
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def _upload_file(self, body: bytes) -> bytes:
            header = f"Content-Type: {self.headers.get('Content-Type', '')}\r\n\r\n".encode()
            message = email.parser.BytesParser().parsebytes(header + body)
            for part in message.get_payload() if message.is_multipart() else []:
                if part.get_param("name", header="content-disposition") == "uploadfile":
                    data = part.get_payload(decode=True)
                    return data if isinstance(data, bytes) else b""
            raise Rejected(400, "Invalid input error: no uploadfile in the multipart form")

        def _kfp(self, method: str, path: str, q: dict[str, str], body: bytes) -> Any:
            d = double
            route = path[len("/apis/v2beta1") :] if path.startswith("/apis/v2beta1/") else None
            if route is None:
                raise Rejected(404, f"Not found: {path}")
            if method == "GET" and route == "/healthz":
                return {"multi_user": d.multi_user, "pipeline_store": "database"}
            if method == "POST" and route == "/pipelines/upload":
                return d.upload(q, self._upload_file(body))
            if method == "POST" and route == "/pipelines/upload_version":
                return d.upload_version(q, self._upload_file(body))
            if method == "GET" and route == "/pipelines":
                predicates = parse_filter(q.get("filter"))
                namespace = q.get("namespace", "")
                found = [
                    p
                    for p in d.pipelines.values()
                    if _matches(p, predicates) and p.get("namespace", "") in ("", namespace)
                ]
                return {"pipelines": found, "total_size": len(found)} if found else {}
            m = re.fullmatch(r"/pipelines/([^/]+)", route)
            if m and method in ("GET", "DELETE"):
                pipeline = d.pipelines.get(m.group(1))
                if pipeline is None:
                    raise Rejected(404, f"Not found error: pipeline {m.group(1)} not found")
                if method == "GET":
                    return pipeline
                if any(v["pipeline_id"] == m.group(1) for v in d.versions.values()):
                    raise Rejected(
                        400, "Failed precondition error: the pipeline has versions; delete them first"
                    )
                del d.pipelines[m.group(1)]
                return {}
            m = re.fullmatch(r"/pipelines/([^/]+)/versions", route)
            if m and method == "GET":
                predicates = parse_filter(q.get("filter"))
                found = [
                    v
                    for v in d.versions.values()
                    if v["pipeline_id"] == m.group(1) and _matches(v, predicates)
                ]
                found.sort(key=lambda v: v["_order"], reverse=q.get("sort_by", "").endswith("desc"))
                found = found[: int(q.get("page_size", "10") or 10)]
                return (
                    {"pipeline_versions": [d._public(v) for v in found], "total_size": len(found)}
                    if found
                    else {}
                )
            m = re.fullmatch(r"/pipelines/([^/]+)/versions/([^/]+)", route)
            if m and method in ("GET", "DELETE"):
                version = d.versions.get(m.group(2))
                if version is None or version["pipeline_id"] != m.group(1):
                    raise Rejected(404, "Not found error: pipeline version not found")
                if method == "DELETE":
                    del d.versions[m.group(2)]
                    return {}
                return d._public(version)
            if route == "/experiments" and method == "POST":
                experiment = parse_model(body, "V2beta1Experiment")
                if not experiment.display_name:
                    raise Rejected(400, "Invalid input error: experiment display_name is required")
                d.check_namespace(experiment.namespace)
                namespace = experiment.namespace or ""
                if any(
                    e["display_name"] == experiment.display_name and e.get("namespace", "") == namespace
                    for e in d.experiments.values()
                ):
                    raise Rejected(409, f"Already exist error: experiment {experiment.display_name} exists")
                created = {
                    **json.loads(body),
                    "experiment_id": _id(),
                    "created_at": _now(),
                    "storage_state": "AVAILABLE",
                }
                d.experiments[created["experiment_id"]] = created
                return created
            if route == "/experiments" and method == "GET":
                predicates = parse_filter(q.get("filter"))
                if d.multi_user:
                    d.check_namespace(q.get("namespace"))
                namespace = q.get("namespace", "")
                found = [
                    e
                    for e in d.experiments.values()
                    if _matches(e, predicates) and (not d.multi_user or e.get("namespace") == namespace)
                ]
                return {"experiments": found, "total_size": len(found)} if found else {}
            m = re.fullmatch(r"/experiments/([^/:]+)", route)
            if m and method in ("GET", "DELETE"):
                if m.group(1) not in d.experiments:
                    raise Rejected(404, f"Not found error: experiment {m.group(1)} not found")
                if method == "DELETE":
                    del d.experiments[m.group(1)]
                    return {}
                return d.experiments[m.group(1)]
            if route == "/runs" and method == "POST":
                return d.create_run(body)
            if route == "/runs" and method == "GET":
                found = [d._run_json(r) for r in d.runs.values()]
                if q.get("experiment_id"):
                    found = [r for r in found if r.get("experiment_id") == q["experiment_id"]]
                found.sort(key=lambda r: r["created_at"], reverse=True)
                found = found[: int(q.get("page_size", "10") or 10)]
                return {"runs": found, "total_size": len(found)} if found else {}
            m = re.fullmatch(r"/runs/([^/:]+)", route)
            if m and method == "GET":
                return d.read_run(m.group(1))
            m = re.fullmatch(r"/runs/([^/:]+):terminate", route)
            if m and method == "POST":
                d.terminate(m.group(1))
                return {}
            if route == "/recurringruns" and method == "POST":
                return self._create_recurring(body)
            if route == "/recurringruns" and method == "GET":
                found = list(d.recurring_runs.values())
                if q.get("experiment_id"):
                    found = [r for r in found if r.get("experiment_id") == q["experiment_id"]]
                return {"recurringRuns": found, "total_size": len(found)} if found else {}
            m = re.fullmatch(r"/recurringruns/([^/:]+)", route)
            if m and method in ("GET", "DELETE"):
                if m.group(1) not in d.recurring_runs:
                    raise Rejected(404, f"Not found error: recurring run {m.group(1)} not found")
                if method == "DELETE":
                    del d.recurring_runs[m.group(1)]
                    return {}
                return d.recurring_runs[m.group(1)]
            raise Rejected(404, f"Not found: {method} {path}")

        def _create_recurring(self, body: bytes) -> dict[str, Any]:
            d = double
            recurring = parse_model(body, "V2beta1RecurringRun")
            if not recurring.display_name:
                raise Rejected(400, "Invalid input error: recurring run display_name is required")
            if recurring.experiment_id not in d.experiments:
                raise Rejected(404, "Not found error: experiment not found")
            d._version_spec(recurring.pipeline_version_reference, recurring.pipeline_spec)
            trigger = recurring.trigger
            cron = trigger.cron_schedule.cron if trigger and trigger.cron_schedule else None
            if not cron or len(cron.split()) != 6:
                raise Rejected(400, f"Invalid input error: cron schedule {cron!r} must have 6 fields")
            if recurring.mode not in ("ENABLE", "DISABLE"):
                raise Rejected(400, "Invalid input error: recurring run mode must be ENABLE or DISABLE")
            created = {
                **json.loads(body),
                "recurring_run_id": _id(),
                "created_at": _now(),
                "updated_at": _now(),
                "status": "ENABLED" if recurring.mode == "ENABLE" else "DISABLED",
            }
            d.recurring_runs[created["recurring_run_id"]] = created
            return created

        def _kubernetes(self, method: str, path: str, q: dict[str, str]) -> None:
            if double.kube_forbidden:
                body = {"kind": "Status", "status": "Failure", "reason": "Forbidden", "code": 403}
                self._json(403, body)
                return
            m = re.fullmatch(r"/api/v1/namespaces/([^/]+)/pods", path)
            if m and method == "GET":
                with double.lock:
                    answer = double.pods(m.group(1), q.get("labelSelector", ""))
                self._json(200, answer)
                return
            m = re.fullmatch(r"/api/v1/namespaces/([^/]+)/pods/([^/]+)/log", path)
            if not (m and method == "GET"):
                self._json(404, {"kind": "Status", "code": 404, "message": f"no route {path}"})
                return
            with double.lock:
                found = double.pod_log(m.group(1), m.group(2))
            if found is None or q.get("container") != "main":
                self._json(404, {"kind": "Status", "code": 404, "message": "pod or container not found"})
                return
            task, lines = found
            is_executor = m.group(2) == task.executor_pod
            if is_executor and task.phase == "QUEUED":
                message = f'container "main" in pod "{m.group(2)}" is waiting to start: ContainerCreating'
                self._json(400, {"kind": "Status", "code": 400, "message": message})
                return
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Connection", "close")
            self.end_headers()
            self.close_connection = True
            for line in lines:
                self.wfile.write(line.encode("utf-8") + b"\n")
                self.wfile.flush()
            if q.get("follow") in ("1", "t", "T", "true", "True", "TRUE") and is_executor:  # Go's ParseBool
                deadline = time.monotonic() + 30
                while task.phase in ("QUEUED", "RUNNING") and time.monotonic() < deadline:
                    time.sleep(0.02)

    return Handler
