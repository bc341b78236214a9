"""The KFP engine: runs a pipeline on a Kubeflow Pipelines deployment and reports it as the local engine does.

`run` compiles the pipeline in memory, probes the host (one quick healthz request: an unreachable host,
a login redirect or a rejected credential fails within seconds), publishes it (`converter.kfp.cluster`:
upload or new version, experiment found or created), starts a run from that version, and then polls
the run with its task details (1 s, doubling to 10 s while nothing changes) until it is SUCCEEDED,
FAILED or CANCELED. Transient failures (5xx, resets, timeouts) are retried for up to
`LOST_CONTACT_SECONDS`. The run is recorded in the local run store with its remote id, so
``cellpipe runs list`` shows local and cluster runs together.

Task states become the same events, in the same order, as the local engine's (a test compares them):

- a task's driver runs first (``<task>-driver``): the step is still pending;
- its executor pod exists but is not running: ``step_queued``;
- the executor runs: ``step_started`` (and its pod's log lines as ``step_log``, see `kfp_logs`);
- the task succeeded with an executor that ran: ``step_succeeded``; without one (KFP's cache skipped
  the executor): ``step_cached``;
- the task failed: ``step_failed``, then ``step_skipped`` for every step downstream of it;
- the run ended FAILED with steps never started (Argo stops scheduling after a failure): ``step_skipped``.

When the server reports no executor children for a task, the task node's own state stands in
(caching is then not told apart from running). Retries of a step on the cluster show as one attempt.

Metrics: KFP keeps metric values in ML Metadata, which its REST API does not expose (task details
carry only artifact ids), so the step runtime also prints them as one log line, and a cluster run
reports ``metrics`` events when its pod logs can be read (Kubernetes access); the KFP UI shows them anyway.

`cancel()` (or ``cellpipe runs cancel``) terminates the remote run; CANCELED is terminal (the stock
client's ``wait_for_run_completion`` does not treat it so and waits forever).
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import yaml

from converter.engines import lifecycle
from converter.engines.base import RunRequest, RunResult, run_started_data
from converter.errors import CellpipeError
from converter.events import EventLog, EventSink, EventType, RunState
from converter.kfp.cluster import DEFAULT_EXPERIMENT, Cluster, Published, is_transient
from converter.kfp.connection import Connection, resolve
from converter.model import Pipeline
from converter.step import stepcode
from converter.step.values import METRICS_LOG_PREFIX
from converter.store.runstore import RunStore
from converter.store.workspace import Workspace

POLL_INITIAL_SECONDS = 1.0
POLL_MAX_SECONDS = 10.0
LOST_CONTACT_SECONDS = 300.0  # transient errors for this long in a row end the monitoring (not the run)
CANCEL_CONFIRM_SECONDS = 120.0  # after asking the cluster to cancel, wait this long for CANCELED
LOG_DRAIN_SECONDS = 5.0
DEFAULT_PIPELINE_ROOT = "minio://mlpipeline/v2/artifacts"  # KFP's default artifact store
PIPELINE_ROOT_VARIABLE = "CELLPIPE_KFP_PIPELINE_ROOT"  # a deployment's own defaultPipelineRoot
TERMINAL_RUN_STATES = frozenset({"SUCCEEDED", "FAILED", "CANCELED", "SKIPPED"})
_RUN_OUTCOME: dict[str, RunState] = {
    "SUCCEEDED": "succeeded",
    "SKIPPED": "succeeded",
    "CANCELED": "cancelled",
}


def _warn(message: str) -> None:
    print(f"cellpipe: warning: {message}", file=sys.stderr, flush=True)


def _note(message: str) -> None:
    print(f"cellpipe: {message}", file=sys.stderr, flush=True)


def task_names(pipeline: Pipeline) -> dict[str, str]:
    """KFP task name -> step name (task names are the component function names with dashes)."""
    names = stepcode.python_names(pipeline)
    return {stepcode.task_name(names[step.name]): step.name for step in pipeline.steps}


class KfpEngine:
    """Runs pipelines on a Kubeflow Pipelines deployment; see the module docstring.

    `host`, `namespace`, `auth` override the environment and the config file (`converter.kfp.connection`).
    `experiment` wins over the notebook's own and the config's default. `kube` is a
    `kubernetes.client.Configuration` for pod logs: "auto" finds the in-cluster or kube config, None
    turns logs off. `warn` and `notify` tell a person about problems and where the run is (the KFP UI
    link); by default on stderr, so stdout stays the progress or JSON event stream.
    """

    name = "kfp"

    def __init__(
        self,
        host: str | None = None,
        namespace: str | None = None,
        experiment: str | None = None,
        auth: str | None = None,
        *,
        create_experiment: bool = True,
        workspace: Path | None = None,
        connection: Connection | None = None,
        kube: Any = "auto",
        warn: Callable[[str], None] = _warn,
        notify: Callable[[str], None] = _note,
    ):
        self.host, self.namespace, self.auth = host, namespace, auth
        self.experiment = experiment
        self.create_experiment = create_experiment
        self.workspace = Workspace(Path(workspace)) if workspace is not None else Workspace.default()
        self.connection = connection
        self.kube = kube
        self.warn, self.notify = warn, notify
        self._cancelled = threading.Event()
        self._wake = threading.Event()

    def cancel(self) -> None:
        """Ask the current run to stop: the monitor terminates the remote run at its next look."""
        self._cancelled.set()
        self._wake.set()

    def run(self, request: RunRequest, sinks: list[EventSink]) -> RunResult:
        from converter.kfp.compile import compile_pipeline, without_cache

        self._cancelled.clear()
        if request.resume:
            raise CellpipeError("--resume works with the local engine only (KFP caches steps by itself)")
        pipeline = request.pipeline
        values = {p.name: p.default for p in pipeline.parameters}
        unknown = sorted(set(request.parameters) - set(values))
        if unknown:
            raise CellpipeError(
                f"unknown parameter(s) {', '.join(unknown)} (the pipeline has: {', '.join(values)})"
            )
        values.update(request.parameters)
        # Resolved per run: a long-lived engine (the Jupyter server's) sees a refreshed token or cookie.
        connection = self.connection or resolve(host=self.host, namespace=self.namespace, auth=self.auth)
        cluster = Cluster.connect(connection)
        ir_yaml = compile_pipeline(pipeline).ir_yaml
        if request.use_cache is False:
            ir_yaml = without_cache(ir_yaml)
        experiment = (
            self.experiment or pipeline.experiment or connection.default_experiment or DEFAULT_EXPERIMENT
        )
        published = cluster.publish(
            pipeline.name, pipeline.description, ir_yaml, experiment, self.create_experiment
        )
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        remote = cluster.start_run(published, f"{pipeline.name} {stamp}", values)
        self.notify(
            f"running on {cluster.host} as KFP run {remote.run_id}: {cluster.run_url(str(remote.run_id))}"
        )
        monitor = _Monitor(self, cluster, request, published, str(remote.run_id), values, sinks)
        monitor.artifact_root = run_artifact_root(ir_yaml, str(remote.run_id))
        return monitor.execute()


def run_artifact_root(ir_yaml: str, remote_id: str) -> str:
    """Where the cluster writes a run's artifacts, as KFP v2's driver lays it out.

    The pipeline root (`$CELLPIPE_KFP_PIPELINE_ROOT`, else KFP's default MinIO bucket) / the IR's
    pipeline name / the run id; below it each task's launcher writes ``TASK/[SALT/]ARTIFACT/``, the
    folder the step runtime wrote (``value.<fmt>`` + ``meta.json``).
    """
    root = os.environ.get(PIPELINE_ROOT_VARIABLE) or DEFAULT_PIPELINE_ROOT
    name = (yaml.safe_load(ir_yaml.split("\n---", 1)[0]) or {}).get("pipelineInfo", {}).get("name", "")
    return f"{root.rstrip('/')}/{name}/{remote_id}"


@dataclass
class _Step:
    name: str
    state: str = "pending"  # + queued, running, succeeded, failed, cached, skipped
    started: float | None = None  # monotonic, when seen running
    pod: str | None = None
    log: IO[str] | None = None  # the copy of its log lines under the workspace
    early: list[str] = field(default_factory=list)  # lines that came before step_started


class _Monitor:
    """Follows one remote run to its end, turning what the API shows into events.

    Long because polling, cancelling, pod log lines (from follower threads) and folding task states
    into step events all read and change the same step states and event log; what stands alone lives
    elsewhere: the cluster calls (`converter.kfp.cluster`), pod logs (`logs`), the run's life from
    run_started to run_finished (`converter.engines.lifecycle`).
    """

    def __init__(
        self,
        engine: KfpEngine,
        cluster: Cluster,
        request: RunRequest,
        published: Published,
        remote_id: str,
        values: dict[str, Any],
        sinks: list[EventSink],
    ):
        self.engine, self.cluster, self.request = engine, cluster, request
        self.pipeline, self.published, self.remote_id, self.values = (
            request.pipeline,
            published,
            remote_id,
            values,
        )
        self.tasks = task_names(self.pipeline)
        self.task_of = {step: task for task, step in self.tasks.items()}
        self.artifact_root: str | None = None  # set by KfpEngine.run (see run_artifact_root)
        self.store = RunStore(engine.workspace.database)
        self.run_id = self.store.create_run(
            self.pipeline.name,
            str(request.notebook),
            engine.name,
            values,
            [s.name for s in self.pipeline.steps],
            remote_id=remote_id,
        )
        self.log = EventLog(self.run_id, [self.store.record, *sinks])
        self.steps = {s.name: _Step(s.name) for s in self.pipeline.steps}
        self.metrics_seen: dict[str, float] = {}  # read back from the steps' pod logs
        self.warnings: list[str] = []
        self.logs = self._pod_logs()
        self.terminate_asked: float | None = None  # monotonic
        self.remote_state = "PENDING"
        self.remote_error: str | None = None
        self._log_lock = threading.Lock()
        self._closed = False  # no more log lines: the run is over

    # ------------------------------------------------------------------ set-up

    def _pod_logs(self) -> Any:
        from converter.engines.kfp.logs import PodLogs, kube_configuration

        kube = self.engine.kube
        if kube is None:
            return None
        configuration = kube_configuration() if kube == "auto" else kube
        if configuration is None:
            self._warning(
                "no Kubernetes access (no kube config, not in a cluster): step logs are not streamed; "
                "they are in the KFP UI"
            )
            return None
        namespace = self.cluster.namespace or self.cluster.connection.namespace or "kubeflow"
        return PodLogs(configuration, namespace, self.remote_id, self.tasks, self._on_line, self._warning)

    def _warning(self, message: str) -> None:
        self.warnings.append(message)
        self.engine.warn(message)

    def emit(self, type: EventType, **fields: Any) -> None:
        self.log.emit(type, **fields)

    def _on_line(self, name: str, line: str) -> None:
        """A pod log line (from a follower thread): kept in order after the step's step_started."""
        with self._log_lock:
            step = self.steps[name]
            if self._closed:
                return
            if step.state in ("pending", "queued"):
                step.early.append(line)
                return
            self._log_line(step, line)

    def _log_line(self, step: _Step, line: str) -> None:
        """Write and emit one line; the caller holds `_log_lock`."""
        if step.log is None:
            path = self.engine.workspace.step_folder(self.run_id, step.name) / "log.txt"
            path.parent.mkdir(parents=True, exist_ok=True)
            step.log = path.open("a", encoding="utf-8")
        step.log.write(line + "\n")
        step.log.flush()
        if line.startswith(METRICS_LOG_PREFIX):
            with contextlib.suppress(ValueError):
                values = json.loads(line[len(METRICS_LOG_PREFIX) :])
                if isinstance(values, dict) and all(isinstance(v, int | float) for v in values.values()):
                    self.metrics_seen.update(values)
                    self.emit("metrics", step=step.name, metrics=values)
                    return
        self.emit("step_log", step=step.name, stream="stdout", line=line)

    # ------------------------------------------------------------------ the run

    def execute(self) -> RunResult:
        return lifecycle.execute(self)

    def started_data(self) -> dict[str, Any]:
        return run_started_data(
            self.request,
            self.engine.name,
            self.values,
            self.engine.workspace.run_folder(self.run_id),
            host=self.cluster.host,
            namespace=self.cluster.namespace,
            remote_id=self.remote_id,
            url=self.cluster.run_url(self.remote_id),
            experiment=self.published.experiment,
            experiment_id=self.published.experiment_id,
            pipeline_id=self.published.pipeline_id,
            pipeline_version_id=self.published.version_id,
            pipeline_version=self.published.version_name,
            artifact_root=self.artifact_root,
            warnings=list(self.warnings),
        )

    def stop(self) -> None:
        """The monitoring failed: the remote run goes on (its link was given); nothing to stop here."""

    def close(self) -> None:
        if self.logs is not None:
            self.logs.close()
        with self._log_lock:
            self._closed = True
            for step in self.steps.values():
                if step.log is not None:
                    step.log.close()

    def metrics(self) -> dict[str, float]:
        return dict(self.metrics_seen)

    def loop(self) -> None:
        delay = POLL_INITIAL_SECONDS
        last_contact = time.monotonic()
        while True:
            try:
                try:
                    run = self.cluster.get_run(self.remote_id)
                except Exception as error:
                    lost = time.monotonic() - last_contact
                    if not is_transient(error) or lost > LOST_CONTACT_SECONDS:
                        raise self._lost(error, lost) from None
                    delay = min(delay * 2, POLL_MAX_SECONDS)
                    self._sleep(delay)
                    continue
                last_contact = time.monotonic()
                if self.logs is not None:
                    self.logs.scan()  # first: a step that ran between two polls has its log to drain
                changed = self._update(run)
                if self.remote_state in TERMINAL_RUN_STATES:
                    return
                self._check_cancel()
                if self._cancel_unconfirmed():
                    return
                delay = POLL_INITIAL_SECONDS if changed else min(delay * 2, POLL_MAX_SECONDS)
                self._sleep(delay)
            except KeyboardInterrupt:  # no handler installed by the caller: Ctrl-C cancels the run
                self.engine.cancel()

    def _sleep(self, seconds: float) -> None:
        self.engine._wake.wait(seconds)
        self.engine._wake.clear()

    def _lost(self, error: BaseException, lost: float) -> CellpipeError:
        doing = f"following run {self.remote_id}"
        if is_transient(error):
            return CellpipeError(
                f"{doing} on {self.cluster.host}: no answer for {lost:.0f} s; the run goes on there: "
                f"{self.cluster.run_url(self.remote_id)}"
            )
        return self.cluster.error(doing, error)

    def _check_cancel(self) -> None:
        """Terminate the remote run once a cancel is asked for, here or in the run store."""
        if self.terminate_asked is not None:
            return
        if not self.engine._cancelled.is_set():
            if not self.store.cancel_requested(self.run_id):
                return
            # Asked through the store: `runs cancel` may have terminated the run already. Look again.
            try:
                self._update(self.cluster.get_run(self.remote_id))
            except Exception:
                return  # try again after the next poll
        if self.remote_state not in ("CANCELING", *TERMINAL_RUN_STATES):
            try:
                self.cluster.terminate(self.remote_id)
            except CellpipeError:
                return  # try again after the next poll
        self.terminate_asked = time.monotonic()

    def _cancel_unconfirmed(self) -> bool:
        """The cluster never confirmed a cancel: stop following rather than wait forever."""
        asked = self.terminate_asked
        if asked is None or time.monotonic() - asked < CANCEL_CONFIRM_SECONDS:
            return False
        self.remote_error = (
            f"cancel requested; the cluster had not confirmed it after {CANCEL_CONFIRM_SECONDS:.0f} s "
            f"(see {self.cluster.run_url(self.remote_id)})"
        )
        self.remote_state = "CANCELED"
        return True

    def ended(self) -> tuple[RunState, str | None]:
        state = _RUN_OUTCOME.get(self.remote_state, "failed")
        self._skip_unstarted(state)
        if state == "cancelled":
            return state, self.remote_error or "cancelled"
        failed = [name for name, step in self.steps.items() if step.state == "failed"]
        if state == "succeeded" and not failed:
            return state, None
        if failed:
            return "failed", lifecycle.steps_failed(failed)
        return "failed", self.remote_error or f"the run ended {self.remote_state} on the cluster"

    # ------------------------------------------------------------------ task states

    def _update(self, run: Any) -> bool:
        """Fold one look at the run into events; True if anything changed."""
        before = [step.state for step in self.steps.values()]
        self.remote_state = str(run.state or "PENDING")
        if run.error is not None and run.error.message:
            self.remote_error = str(run.error.message)
        details = list(run.run_details.task_details or []) if run.run_details is not None else []
        cancelling = self.terminate_asked is not None or self.remote_state in ("CANCELING", "CANCELED")
        for task, name in self.tasks.items():
            self._task(name, task, details, cancelling)
        return before != [step.state for step in self.steps.values()]

    def _task(self, name: str, task: str, details: list[Any], cancelling: bool) -> None:
        step = self.steps[name]
        if step.state in ("succeeded", "failed", "cached", "skipped"):
            return
        nodes = [d for d in details if d.display_name == task]
        drivers = [d for d in details if d.display_name == f"{task}-driver"]
        if not nodes:
            driver = drivers[-1] if drivers else None
            if driver is not None and driver.state == "FAILED" and not cancelling:
                self._failed(step, _error(driver) or "its KFP driver failed", None)
            return
        node, state = nodes[-1], str(nodes[-1].state)
        executors = _executors(node, details)
        executor = executors[-1] if executors else None  # the latest attempt
        if executor is not None:
            step.pod = executor.pod_name or step.pod
        if state == "SUCCEEDED":
            ran = executor.state == "SUCCEEDED" if executor is not None else not node.child_tasks
            if ran:
                self._succeeded(step, _seconds(executor or node))
            else:
                step.state = "cached"
                self.emit("step_cached", step=name, message="cached on the cluster")
        elif state == "FAILED":
            if not cancelling:
                why = _error(executor) or _error(node) or "failed on the cluster"
                self._failed(step, why, _seconds(executor or node))
        else:
            # An executor that ended while its task node still runs is a retry on its way: still running.
            current = str(executor.state) if executor is not None else None if node.child_tasks else state
            if current == "PENDING":
                self._queued(step)
            elif current in ("RUNNING", "SUCCEEDED", "FAILED"):
                self._started(step)

    def _queued(self, step: _Step) -> None:
        if step.state == "pending":
            step.state = "queued"
            self.emit("step_queued", step=step.name)

    def _started(self, step: _Step) -> None:
        self._queued(step)
        if step.state != "queued":
            return
        folder = self.engine.workspace.step_folder(self.run_id, step.name)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "log.txt").touch()
        model = self.pipeline.step(step.name)
        # The exact program the task runs, and where its inputs are below the run's artifact root:
        # what `%cellpipe inputs` needs to debug the step in a kernel.
        (folder / "program.py").write_text(stepcode.program(self.pipeline, model), encoding="utf-8")
        inputs = {
            var: f"{self.task_of[self.pipeline.producer(step.name, var)]}/{self._output_name(var, step.name)}"
            for var in model.inputs
        }
        data: dict[str, Any] = {"folder": str(folder), "log": str(folder / "log.txt"), "inputs": inputs}
        if step.pod:
            data["pod"] = step.pod
        with self._log_lock:
            step.state, step.started = "running", time.monotonic()
            self.emit("step_started", step=step.name, attempt=1, data=data)
            for line in step.early:
                self._log_line(step, line)
            step.early.clear()

    def _output_name(self, var: str, reader: str) -> str:
        """The artifact name under which the step producing `var` for `reader` wrote it."""
        producer = self.pipeline.step(self.pipeline.producer(reader, var))
        return stepcode.artifact_names(producer)[1][var]

    def _ended(self, step: _Step, reported: float | None) -> float:
        """Let the step's log stream finish (its lines come before its end) and say how long it took."""
        if self.logs is not None:
            self.logs.drain(step.name, LOG_DRAIN_SECONDS)
        if reported is not None:
            return reported
        return round(time.monotonic() - step.started, 3) if step.started is not None else 0.0

    def _where(self, step: _Step) -> dict[str, str]:
        folder = self.engine.workspace.step_folder(self.run_id, step.name)
        return {"folder": str(folder), "log": str(folder / "log.txt")}

    def _succeeded(self, step: _Step, reported: float | None) -> None:
        self._started(step)
        duration = self._ended(step, reported)
        step.state = "succeeded"
        self.emit("step_succeeded", step=step.name, attempt=1, duration=duration, data=self._where(step))

    def _failed(self, step: _Step, message: str, reported: float | None) -> None:
        self._started(step)
        duration = self._ended(step, reported)
        step.state = "failed"
        self.emit(
            "step_failed",
            step=step.name,
            attempt=1,
            message=message,
            duration=duration,
            data=self._where(step),
        )
        pending = list(self.pipeline.downstream(step.name))
        while pending:
            name = pending.pop(0)
            downstream = self.steps[name]
            if downstream.state != "pending":
                continue
            downstream.state = "skipped"
            self.emit("step_skipped", step=name, message=f"upstream step {step.name!r} failed")
            pending.extend(self.pipeline.downstream(name))

    def _skip_unstarted(self, state: RunState) -> None:
        """A failed run whose cluster never started some steps: say so, as the run store expects."""
        if state != "failed":
            return
        for step in self.steps.values():
            if step.state == "pending":
                step.state = "skipped"
                self.emit(
                    "step_skipped", step=step.name, message="not started: the run failed on the cluster"
                )


def _executors(node: Any, details: list[Any]) -> list[Any]:
    """The executor attempts of a task node, as the server lists them (children by task id or pod name)."""
    ids = {c.task_id for c in node.child_tasks or [] if c.task_id}
    pods = {c.pod_name for c in node.child_tasks or [] if c.pod_name}
    found = [
        d
        for d in details
        if str(d.display_name or "").startswith("executor")
        and (
            d.task_id in ids
            or (d.pod_name and d.pod_name in pods)
            or (node.task_id and d.parent_task_id == node.task_id)
        )
    ]
    return found


def _error(detail: Any) -> str | None:
    if detail is None or detail.error is None:
        return None
    message = detail.error.message
    return " ".join(str(message).split()) if message else None


def _seconds(detail: Any) -> float | None:
    start, end = getattr(detail, "start_time", None), getattr(detail, "end_time", None)
    if start is None or end is None:
        return None
    try:
        return round(max(0.0, (end - start).total_seconds()), 3)
    except (TypeError, AttributeError):
        return None
