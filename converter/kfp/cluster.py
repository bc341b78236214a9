"""A Kubeflow Pipelines deployment as cellpipe uses it, through the real `kfp.Client` (REST v2beta1).

Publishing a notebook uploads its compiled pipeline, or a new version of it when a pipeline with that
name exists. Versions are named ``NAME-<sha256 prefix of the IR>``, so submitting an unchanged notebook
again reuses its version instead of piling up identical ones. Runs and recurring runs start from the
uploaded version (``pipeline_version_reference``), so the KFP UI links each run to the exact pipeline
it ran. If a later step fails (experiment, run), what this submission created is deleted again.

Every API failure becomes one line naming what was being done and what the server said; ApiException's
own text (which carries response headers) is never shown.

The printing conveniences of `kfp.Client` (`upload_pipeline`, `create_experiment`, `run_pipeline`) print
links to stdout, which would corrupt ``--json-events``; their generated-API counterparts on the same
client (``client.pipeline_uploads``, ``client.experiments``, ``client.runs``) are used instead.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from converter.errors import CellpipeError
from converter.kfp.connection import Connection, Healthz, probe

T = TypeVar("T")

DEFAULT_EXPERIMENT = "Default"  # the experiment every KFP deployment has
Undo = Sequence[tuple[str, tuple[str, ...]]]  # ("version" | "pipeline" | "experiment", ids) to delete
TRANSIENT_STATUSES = frozenset({0, 429, 500, 502, 503, 504})  # 0: kfp_server_api's own network errors
_RETRY_DELAYS = (0.5, 1.0, 2.0)
_CRON_DESCRIPTORS = {
    "@yearly": "0 0 0 1 1 *",
    "@annually": "0 0 0 1 1 *",
    "@monthly": "0 0 0 1 * *",
    "@weekly": "0 0 0 * * 0",
    "@daily": "0 0 0 * * *",
    "@midnight": "0 0 0 * * *",
    "@hourly": "0 0 * * * *",
}


def api_status(error: BaseException) -> int | None:
    """The HTTP status of a kfp_server_api error, None for anything else."""
    from kfp_server_api.exceptions import ApiException

    return error.status if isinstance(error, ApiException) else None


def api_message(error: BaseException) -> str:
    """What the server said, in one line (its JSON `message`/`error`, else the reason)."""
    from kfp_server_api.exceptions import ApiException

    if not isinstance(error, ApiException):
        return _one_line(str(error) or type(error).__name__)
    text = ""
    body = error.body.decode("utf-8", "replace") if isinstance(error.body, bytes) else error.body
    if body:
        try:
            data = json.loads(body)
        except ValueError:
            data = None
        if isinstance(data, dict):
            text = str(data.get("message") or data.get("error") or data.get("error_message") or "")
        elif "<html" not in body.lower():
            text = body
    status = f"HTTP {error.status}" + (f" {error.reason}" if error.reason else "") if error.status else ""
    return _one_line(": ".join(part for part in (status, text) if part) or "no answer")


def _one_line(text: str, limit: int = 400) -> str:
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


def is_transient(error: BaseException) -> bool:
    """Worth retrying: 5xx/429, resets, timeouts, refused connections (an API server restarting)."""
    import urllib3

    status = api_status(error)
    if status is not None:
        return status in TRANSIENT_STATUSES
    return isinstance(error, urllib3.exceptions.HTTPError | ConnectionError | TimeoutError)


def kfp_cron(expression: str) -> str:
    """A cron expression as KFP's scheduler reads it: six fields, seconds first.

    Standard five-field cron (``0 2 * * *``) gets a leading ``0`` seconds field; KFP's own six-field form
    and the ``@daily``-style shortcuts are accepted too.
    """
    text = " ".join(expression.split())
    if text.lower() in _CRON_DESCRIPTORS:
        return _CRON_DESCRIPTORS[text.lower()]
    fields = text.split(" ") if text else []
    allowed = set("0123456789*/,-?LW#") | set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")
    if len(fields) not in (5, 6) or any(not set(f) <= allowed for f in fields):
        raise CellpipeError(
            f"--cron {expression!r} is not a cron expression: use five fields (minute hour day month "
            "weekday, e.g. '0 2 * * *'), KFP's six (seconds first) or @hourly/@daily/@weekly/@monthly"
        )
    return text if len(fields) == 6 else f"0 {text}"


@dataclass(frozen=True)
class Published:
    """The pipeline version a run or schedule starts from."""

    pipeline_id: str
    version_id: str
    version_name: str
    experiment_id: str = ""
    experiment: str = ""
    undo: tuple[tuple[str, tuple[str, ...]], ...] = field(default=(), repr=False)  # what to delete on failure


class Cluster:
    """One KFP deployment: `connect` probes it first, so every later failure is about the request."""

    def __init__(self, connection: Connection, healthz: Healthz):
        self.connection = connection
        self.multi_user = healthz.multi_user
        if healthz.multi_user and not connection.namespace:
            raise CellpipeError(
                f"{connection.display_host} is a multi-user Kubeflow deployment: give --namespace "
                "(your profile's namespace) or set KF_PIPELINES_NAMESPACE"
            )
        # Single-user deployments keep everything in KFP's own namespace and want none in requests.
        self.namespace = connection.namespace if healthz.multi_user else None
        self.client = connection.client()

    @classmethod
    def connect(cls, connection: Connection) -> Cluster:
        return cls(connection, probe(connection))

    @property
    def host(self) -> str:
        return self.connection.display_host

    def run_url(self, run_id: str) -> str:
        return f"{self.host}/#/runs/details/{run_id}"

    # ------------------------------------------------------------------ calling the API

    def call(self, doing: str, fn: Callable[..., T], *args: Any, idempotent: bool = True, **kwargs: Any) -> T:
        """`fn(*args, **kwargs)`; transient failures of idempotent calls are retried a few times.

        Every other failure is a CellpipeError: "<doing> on <host>: <what the server said>".
        """
        for delay in (*_RETRY_DELAYS, None):
            try:
                return fn(*args, **kwargs)
            except Exception as error:
                if idempotent and delay is not None and is_transient(error):
                    time.sleep(delay)
                    continue
                raise self.error(doing, error) from None
        raise AssertionError("unreachable")  # the loop returns or raises

    def error(self, doing: str, error: BaseException) -> CellpipeError:
        status = api_status(error)
        if status == 401:
            why = "the credentials were rejected (401 Unauthorized; expired?)"
        elif status == 403:
            scope = f" in namespace {self.namespace!r}" if self.namespace else ""
            why = f"access denied (403 Forbidden): the credentials may not do this{scope}"
        elif status is None and is_transient(error):
            why = f"lost contact ({_one_line(type(error).__name__)})"
        else:
            why = api_message(error)
        return CellpipeError(f"{doing} on {self.host}: {why}")

    # ------------------------------------------------------------------ publishing

    def publish(
        self, name: str, description: str, ir_yaml: str, experiment: str, create_experiment: bool
    ) -> Published:
        """Upload the pipeline (or a version of it) and find or create the experiment.

        The returned `Published.undo` lists what this call created; `discard` deletes it.
        """
        digest = hashlib.sha256(ir_yaml.encode("utf-8")).hexdigest()[:12]
        version_name = f"{name}-{digest}"
        described = f"{description} (sha256 {digest})".strip()
        undo: list[tuple[str, tuple[str, ...]]] = []
        with tempfile.TemporaryDirectory(prefix="cellpipe-kfp-") as tmp:
            package = Path(tmp) / f"{name}.yaml"
            package.write_text(ir_yaml, encoding="utf-8")
            pipeline_id = self._find_pipeline(name)
            version_id: str | None = None
            if pipeline_id is None:
                uploaded = self.call(
                    f"uploading pipeline {name!r}",
                    self.client.pipeline_uploads.upload_pipeline,
                    str(package),
                    name=name,
                    description=described,
                    namespace=self.namespace,
                    idempotent=False,
                )
                pipeline_id = str(uploaded.pipeline_id)
                undo.append(("pipeline", (pipeline_id,)))
                versions = self._versions(pipeline_id)
                version_id = versions[0][0] if versions else None
                if version_id:
                    undo.insert(0, ("version", (pipeline_id, version_id)))
                    version_name = versions[0][1]
            else:
                version_id = self._find_version(pipeline_id, version_name, digest)
                if version_id is None:
                    version_id = self._upload_version(pipeline_id, version_name, described, package, digest)
                    if version_id is not None:
                        undo.insert(0, ("version", (pipeline_id, version_id)))
            if version_id is None:
                self.discard(undo)
                raise CellpipeError(f"uploading pipeline {name!r} on {self.host}: the server made no version")
        try:
            experiment_id, created = self._experiment(experiment, create_experiment)
        except BaseException:
            self.discard(undo)
            raise
        if created:
            undo.append(("experiment", (experiment_id,)))
        return Published(pipeline_id, version_id, version_name, experiment_id, experiment, tuple(undo))

    def discard(self, undo: Undo) -> None:
        """Delete what a failed submission created (versions before their pipeline, as KFP requires).

        Best effort: the submission is already failing, and its own error is the one to report.
        """
        deleters: dict[str, Callable[..., Any]] = {
            "version": self.client.delete_pipeline_version,
            "pipeline": self.client.delete_pipeline,
            "experiment": self.client.delete_experiment,
        }
        for kind, ids in undo:
            try:
                deleters[kind](*ids)
            except Exception:  # leave it: nothing better to do
                continue

    def _find_pipeline(self, name: str) -> str | None:
        found = self.call(
            f"looking up pipeline {name!r}",
            self.client.list_pipelines,
            filter=_equals("display_name", name),
            namespace=self.namespace,
            page_size=2,
        )
        pipelines = found.pipelines or []
        if len(pipelines) > 1:
            raise CellpipeError(f"{self.host} has several pipelines named {name!r}: rename one")
        return str(pipelines[0].pipeline_id) if pipelines else None

    def _versions(self, pipeline_id: str) -> list[tuple[str, str, str]]:
        """(id, display name, description) of the pipeline's newest versions, newest first."""
        found = self.call(
            "listing pipeline versions",
            self.client.list_pipeline_versions,
            pipeline_id,
            page_size=100,
            sort_by="created_at desc",
        )
        return [
            (str(v.pipeline_version_id), str(v.display_name or v.name or ""), str(v.description or ""))
            for v in found.pipeline_versions or []
        ]

    def _find_version(self, pipeline_id: str, version_name: str, digest: str) -> str | None:
        for version_id, display, description in self._versions(pipeline_id):
            if display == version_name or f"(sha256 {digest})" in description:
                return version_id
        return None

    def _upload_version(
        self, pipeline_id: str, version_name: str, description: str, package: Path, digest: str
    ) -> str | None:
        try:
            uploaded = self.client.pipeline_uploads.upload_pipeline_version(
                str(package), name=version_name, pipelineid=pipeline_id, description=description
            )
        except Exception as error:
            if api_status(error) == 409:  # another submission of the same notebook got there first
                return self._find_version(pipeline_id, version_name, digest)
            raise self.error(f"uploading version {version_name!r}", error) from None
        return str(uploaded.pipeline_version_id)

    def _experiment(self, name: str, create: bool) -> tuple[str, bool]:
        """The experiment's id and whether this call created it."""
        import kfp_server_api

        found = self.call(
            f"looking up experiment {name!r}",
            self.client.list_experiments,
            filter=_equals("display_name", name),
            namespace=self.namespace,
            page_size=2,
        )
        experiments = found.experiments or []
        if experiments:
            return str(experiments[0].experiment_id), False
        if not create:
            listed = self.call("listing experiments", self.client.list_experiments, namespace=self.namespace)
            names = sorted(str(e.display_name) for e in listed.experiments or [])
            where = f" in namespace {self.namespace!r}" if self.namespace else ""
            shown = ", ".join(names[:10]) + (", ..." if len(names) > 10 else "") if names else "none"
            raise CellpipeError(f"{self.host} has no experiment {name!r}{where} (it has: {shown})")
        body = kfp_server_api.V2beta1Experiment(display_name=name, namespace=self.namespace)
        created = self.call(
            f"creating experiment {name!r}",
            self.client.experiments.experiment_service_create_experiment,
            body,
            idempotent=False,
        )
        return str(created.experiment_id), True

    # ------------------------------------------------------------------ runs

    def start_run(self, published: Published, display_name: str, parameters: dict[str, Any]) -> Any:
        """Start a run of the published version; on failure the submission's new objects are deleted."""
        import kfp_server_api

        body = kfp_server_api.V2beta1Run(
            experiment_id=published.experiment_id,
            display_name=display_name,
            pipeline_version_reference=kfp_server_api.V2beta1PipelineVersionReference(
                pipeline_id=published.pipeline_id, pipeline_version_id=published.version_id
            ),
            runtime_config=kfp_server_api.V2beta1RuntimeConfig(parameters=parameters),
        )
        try:
            return self.call(
                "starting the run", self.client.runs.run_service_create_run, body, idempotent=False
            )
        except BaseException:
            self.discard(published.undo)
            raise

    def get_run(self, run_id: str) -> Any:
        """One read of a run with its task details; errors are raised as they are (the monitor retries)."""
        return self.client.get_run(run_id)

    def terminate(self, run_id: str) -> None:
        self.call(f"cancelling run {run_id}", self.client.terminate_run, run_id, idempotent=False)

    def list_runs(self, limit: int) -> list[Any]:
        found = self.call(
            "listing runs",
            self.client.list_runs,
            page_size=limit,
            sort_by="created_at desc",
            namespace=self.namespace,
        )
        return list(found.runs or [])

    # ------------------------------------------------------------------ recurring runs

    def create_schedule(
        self,
        published: Published,
        display_name: str,
        cron: str,
        parameters: dict[str, Any],
        max_concurrency: int,
        catchup: bool,
    ) -> Any:
        import kfp_server_api

        body = kfp_server_api.V2beta1RecurringRun(
            display_name=display_name,
            description=f"cellpipe schedule {cron}",
            experiment_id=published.experiment_id,
            namespace=self.namespace,
            pipeline_version_reference=kfp_server_api.V2beta1PipelineVersionReference(
                pipeline_id=published.pipeline_id, pipeline_version_id=published.version_id
            ),
            runtime_config=kfp_server_api.V2beta1RuntimeConfig(parameters=parameters),
            trigger=kfp_server_api.V2beta1Trigger(
                cron_schedule=kfp_server_api.V2beta1CronSchedule(cron=cron)
            ),
            mode=kfp_server_api.RecurringRunMode.ENABLE,
            max_concurrency=str(max_concurrency),
            no_catchup=not catchup,
        )
        try:
            return self.call(
                "creating the schedule",
                self.client.recurring_runs.recurring_run_service_create_recurring_run,
                body,
                idempotent=False,
            )
        except BaseException:
            self.discard(published.undo)
            raise

    def list_schedules(self, experiment_id: str | None = None) -> list[Any]:
        found = self.call(
            "listing schedules",
            self.client.list_recurring_runs,
            page_size=100,
            sort_by="created_at desc",
            experiment_id=experiment_id,
            namespace=self.namespace,
        )
        return list(found.recurring_runs or [])

    def delete_schedule(self, recurring_run_id: str) -> None:
        self.call(
            f"deleting schedule {recurring_run_id}",
            self.client.delete_recurring_run,
            recurring_run_id,
            idempotent=False,
        )


def _equals(key: str, value: str) -> str:
    """A v2beta1 filter: `key` equals `value` (the API takes it URL-encoded JSON in the query)."""
    predicate = {"operation": "EQUALS", "key": key, "stringValue": value}
    return json.dumps({"predicates": [predicate]})
