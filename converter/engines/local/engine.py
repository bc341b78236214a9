"""The local engine: runs a pipeline on this machine, steps in parallel, as the compiled pipeline would.

Each step attempt runs the exact program the compiled pipeline carries (`stepcode.program`) with
its argv (`stepcode.arguments`, placeholders filled with artifact paths and parameter values
rendered as KFP renders them), in the notebook's folder, in its own process and process group.
Processes are forked from a per-run fork server that has already run the imports cells' imports
(see `converter.engines.local.zygote`), or started as plain ``python -c`` subprocesses when it is not
available (and always for GPU steps).

The scheduler starts every step whose upstream steps succeeded (or were cached), as long as
`max_parallel` (default: the CPUs this process may use) and the CPU, memory and GPU requests
against this machine allow; GPUs are handed out exclusively through ``CUDA_VISIBLE_DEVICES``.
Timeouts and memory limits kill the step's process group; failures are retried with exponential
backoff when the step has ``retries``; a failed step skips everything downstream of it while
independent steps go on. Caching is explicit (``RunRequest.use_cache``: by default only steps tagged
``cache:on``): such a step whose cache key (see `converter.store.artifacts`) matches an earlier
successful execution is not run (``step_cached``); ``RunRequest.resume`` reuses the succeeded steps
of an earlier run. `cancel()` (safe from a signal handler) or a cancel request in the run store
kills running steps and ends the run "cancelled".

This module is the scheduler (`LocalEngine`, `_Run`); beside it: `caching` (cache keys, cache hits,
--resume), `launch` (one attempt's files and argv, why it failed), `processes` and `zygote` (step
processes, the fork server), `resources` (CPU, memory and GPU accounting), `steprun` (a step's state).

Missing packages are not installed into the user's environment: steps run with ``--no-install``, and
a cell importing a missing module fails with its ModuleNotFoundError, the step naming the pip package.

Figures on a 2-CPU VM: a trivial step costs ~20 ms through the fork server and ~50 ms as a fresh
interpreter; with a pandas + scikit-learn imports cell, ~25 ms against ~1.35 s (the imports are
paid once per run, in the fork server). Handing a step's outputs to the next step takes ~1 ms
(a rename); the rest of moving a value is the runtime's save and load.
"""

from __future__ import annotations

import ast
import collections
import contextlib
import os
import select
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from converter.engines import lifecycle
from converter.engines.base import RunRequest, RunResult, run_started_data
from converter.engines.local.caching import Reuse, StepCache
from converter.engines.local.launch import attempt_launch, failure_message
from converter.engines.local.processes import Exit, StepProcesses, fork_server_supported
from converter.engines.local.resources import Machine, Pool, gib, plan, thread_share, tree_rss
from converter.engines.local.steprun import StepRun
from converter.errors import CellpipeError
from converter.events import EventLog, EventSink, EventType, RunState
from converter.model import Pipeline, Step
from converter.step import stepcode
from converter.store.artifacts import ArtifactStore
from converter.store.runstore import RunStore
from converter.store.workspace import Workspace

BACKOFF_BASE_SECONDS = 1.0
BACKOFF_CAP_SECONDS = 30.0
CANCEL_POLL_SECONDS = 1.0
MEMORY_POLL_SECONDS = 0.5
NO_FORK_VARIABLE = "CELLPIPE_NO_FORK"  # set to 1 to start every step as a fresh interpreter


def preload_statements(pipeline: Pipeline) -> list[str]:
    """What the fork server imports before forking: the imports and functions cells' imports.

    Only import statements: the cells themselves still run in every step (cheaply, as the modules
    are loaded), so their other effects happen where the notebook expects them.
    """
    # Every step runs its cells in the runtime's kernel-like IPython shell: made here, once, first
    # (so libraries imported next see it, as in a kernel).
    statements = ["from converter.step.runtime import preload_shell; preload_shell()"]
    for cell in (*pipeline.imports, *pipeline.functions):
        try:
            tree = ast.parse(cell.python)
        except SyntaxError:
            continue
        for node in tree.body:
            if isinstance(node, ast.Import) or (
                isinstance(node, ast.ImportFrom) and node.module != "__future__"
            ):
                statements.append(ast.unparse(node))
    modules = {s.split()[1].split(".")[0] for s in statements[1:]}
    if "pandas" in modules:
        statements.append("import pyarrow.feather")  # the runtime's DataFrame format
    if "sklearn" in modules:
        statements.append("import joblib")  # the runtime's estimator format
    if modules & {"numpy", "pandas", "scipy", "sklearn", "torch"}:
        statements.append("import threadpoolctl")  # the runtime holds each step to its CPU share
    return list(dict.fromkeys(statements))


def duration_text(seconds: float) -> str:
    """90 -> "90s", 1800 -> "30m", 7200 -> "2h": how timeout tags are written."""
    whole = int(seconds)
    if whole and whole % 3600 == 0:
        return f"{whole // 3600}h"
    if whole and whole % 60 == 0:
        return f"{whole // 60}m"
    return f"{seconds:g}s"


def _model(step: Step) -> dict[str, str]:
    """A serve: step's end event names the output holding its model (`cellpipe serve` reads it)."""
    return {"model": step.model_output} if step.model_output else {}


def parameter_values(pipeline: Pipeline, given: Mapping[str, Any]) -> dict[str, Any]:
    """Every parameter's value for a run: the notebook's defaults, then what the request gives."""
    values = {p.name: p.default for p in pipeline.parameters}
    unknown = sorted(set(given) - set(values))
    if unknown:
        raise CellpipeError(
            f"unknown parameter{'s' * (len(unknown) > 1)} {', '.join(unknown)} "
            f"(the pipeline has: {', '.join(values) or 'none'})"
        )
    values.update(given)
    return values


def check_inputs(pipeline: Pipeline) -> None:
    for step in pipeline.steps:
        for var in step.inputs:
            try:
                pipeline.producer(step.name, var)
            except KeyError:
                raise CellpipeError(f"step {step.name!r} reads {var!r} but no step produces it") from None


class LocalEngine:
    """Runs pipelines on this machine; see the module docstring. One run at a time per instance
    (`cancel()` addresses the current one); make one instance per concurrent run."""

    name = "local"

    def __init__(
        self,
        workspace: Path | None = None,
        max_parallel: int | None = None,
        *,
        fork_server: bool | None = None,
        fit_resources: bool = False,
    ):
        """`fork_server` None: use it where supported unless $CELLPIPE_NO_FORK is set.
        `fit_resources`: cut requests larger than this machine down (with a warning) instead of
        refusing the run; GPU steps then run on the CPU when there is no GPU."""
        self.workspace = Workspace(Path(workspace)) if workspace is not None else Workspace.default()
        self.max_parallel = max_parallel
        if fork_server is None:
            fork_server = not os.environ.get(NO_FORK_VARIABLE)
        self.fork_server = fork_server and fork_server_supported()
        self.fit_resources = fit_resources
        self._cancelled = False
        self._wake_w: int | None = None

    def cancel(self) -> None:
        """Ask the current run to stop; only sets a flag and writes a byte: safe in a signal handler."""
        self._cancelled = True
        fd = self._wake_w
        if fd is not None:
            with contextlib.suppress(OSError):
                os.write(fd, b"c")

    def run(self, request: RunRequest, sinks: list[EventSink]) -> RunResult:
        self._cancelled = False
        wake_r, wake_w = os.pipe()
        os.set_blocking(wake_r, False)
        os.set_blocking(wake_w, False)
        self._wake_w = wake_w
        try:
            return _Run(self, request, sinks, wake_r, wake_w).execute()
        finally:
            self._wake_w = None
            os.close(wake_r)
            os.close(wake_w)


class _Run:
    """One run of the local engine: the scheduler that starts, watches and ends its step attempts.

    Long because its loop, readiness, start, watch and end steps all read and change the same queue,
    running attempts and step states; the jobs that stand alone live beside it: the cache and
    --resume decisions (`caching`), an attempt's files and argv (`launch`), processes (`processes`),
    CPU/memory/GPU accounting (`resources`), the run's life from run_started to run_finished
    (`converter.engines.lifecycle`).
    """

    def __init__(
        self, engine: LocalEngine, request: RunRequest, sinks: list[EventSink], wake_r: int, wake_w: int
    ):
        self.engine, self.request, self.pipeline = engine, request, request.pipeline
        self.wake_r, self.wake_w = wake_r, wake_w
        self.machine = Machine.detect()
        needs, self.warnings = plan(self.pipeline, self.machine, fit=engine.fit_resources)
        self.values = parameter_values(self.pipeline, request.parameters)
        check_inputs(self.pipeline)
        self.cwd = request.notebook.resolve().parent
        workspace = engine.workspace
        self.store = RunStore(workspace.database)
        self.artifacts = ArtifactStore(workspace.artifacts)
        for orphan in self.store.mark_orphans():
            self.artifacts.discard_run(orphan)
        self.programs = {s.name: stepcode.program(self.pipeline, s) for s in self.pipeline.steps}
        try:
            self.cache = StepCache(
                self.pipeline, request, self.values, self.programs, self.artifacts, self.store
            )
        except BaseException:
            self.store.close()
            raise
        self.resume_id = self.cache.resume_id
        self.run_id = self.store.create_run(
            self.pipeline.name,
            str(request.notebook),
            engine.name,
            self.values,
            [s.name for s in self.pipeline.steps],
            resumed_from=self.resume_id,
        )
        self.run_folder = workspace.run_folder(self.run_id)
        self.log = EventLog(self.run_id, [self.store.record, *sinks])
        self.steps = {s.name: StepRun(s, needs[s.name]) for s in self.pipeline.steps}
        self.pool = Pool(self.machine)
        self.max_parallel = max(1, request.max_parallel or engine.max_parallel or len(self.machine.cpus))
        self.threads = thread_share(self.pipeline, len(self.machine.cpus), self.max_parallel)
        self.queue: list[str] = []  # ready to start, in notebook order
        self.running: dict[str, str] = {}  # process key -> step
        self.exits: collections.deque[Exit] = collections.deque()
        self.cancelling = False
        self.next_cancel_poll = 0.0
        self.processes: StepProcesses | None = None

    # ------------------------------------------------------------------ events

    def emit(self, type: EventType, **fields: Any) -> None:
        self.log.emit(type, **fields)

    def _on_line(self, key: str, stream: str, line: str) -> None:
        self.emit("step_log", step=key.rsplit("#", 1)[0], stream=stream, line=line)

    def _on_exit(self, exit: Exit) -> None:
        self.exits.append(exit)
        with contextlib.suppress(OSError):
            os.write(self.wake_w, b"x")

    # ------------------------------------------------------------------ the run

    def execute(self) -> RunResult:
        return lifecycle.execute(self)

    def started_data(self) -> dict[str, Any]:
        return run_started_data(
            self.request,
            self.engine.name,
            self.values,
            self.run_folder,
            max_parallel=self.max_parallel,
            resumed_from=self.resume_id,
            warnings=self.warnings,
        )

    def close(self) -> None:
        if self.processes is not None:
            self.processes.close()
        for run in self.steps.values():
            if run.staging is not None:
                self.artifacts.discard(run.staging)

    def ended(self) -> tuple[RunState, str | None]:
        if self.cancelling:
            return "cancelled", "cancelled"
        failed = [name for name, run in self.steps.items() if run.state == "failed"]
        if failed:
            return "failed", lifecycle.steps_failed(failed)
        return "succeeded", None

    def metrics(self) -> dict[str, float]:
        return {k: v for s in self.pipeline.steps for k, v in self.steps[s.name].metrics.items()}

    def loop(self) -> None:
        self._advance()
        while True:
            try:
                self._start_ready()
                if not any(r.state in ("queued", "running", "retry_wait") for r in self.steps.values()):
                    return
                self._wait()
                while self.exits:
                    self._finished(self.exits.popleft())
                self._check_cancel()
                self._check_running()
                self._check_retries()
                self._advance()
            except KeyboardInterrupt:  # no handler installed by the caller: Ctrl-C cancels the run
                self.engine._cancelled = True
                self._check_cancel()

    def _wait(self) -> None:
        now = time.monotonic()
        deadline = now + CANCEL_POLL_SECONDS
        for run in self.steps.values():
            if run.state == "retry_wait":
                deadline = min(deadline, run.retry_at)
            elif run.state == "running":
                timeout = run.step.settings.timeout_seconds
                if timeout and run.kill_reason is None:
                    deadline = min(deadline, run.started + timeout)
                if run.need.memory_limit is not None:
                    deadline = min(deadline, run.next_memory_check)
        if self.engine._cancelled and not self.cancelling:
            deadline = now
        ready, _, _ = select.select([self.wake_r], [], [], max(0.0, deadline - now))
        if ready:
            with contextlib.suppress(BlockingIOError):
                while os.read(self.wake_r, 512):
                    pass

    def stop(self) -> None:
        """An engine error or Ctrl-C outside the loop's care: stop every step."""
        self.cancelling = True
        if self.processes is not None:
            for key in list(self.running):
                self.processes.kill(key)

    # ------------------------------------------------------------------ becoming ready

    def _advance(self) -> None:
        """Decide every pending step whose upstream steps are done: reuse, cache hit, or queue it."""
        if self.cancelling:
            return
        for step in self.pipeline.steps:
            run = self.steps[step.name]
            if run.state != "pending":
                continue
            if not all(
                self.steps[u].state in ("succeeded", "cached") for u in self.pipeline.upstream(step.name)
            ):
                continue
            self.cache.prepare(run, self.steps)
            reuse = self.cache.reuse(run) or self.cache.lookup(run)
            if reuse is not None:
                self._use(run, reuse)
                continue
            run.state = "queued"
            self.queue.append(step.name)
            self.emit("step_queued", step=step.name)

    def _use(self, run: StepRun, reuse: Reuse) -> None:
        run.state, run.outputs, run.metrics = "cached", reuse.outputs, dict(reuse.metrics)
        data = {**reuse.data, "outputs": reuse.outputs, **_model(run.step)}
        self.emit("step_cached", step=run.step.name, message=reuse.message, data=data)
        if reuse.metrics:
            self.emit("metrics", step=run.step.name, metrics=dict(reuse.metrics))

    # ------------------------------------------------------------------ starting

    def _start_ready(self) -> None:
        for name in list(self.queue):
            if self.cancelling or len(self.running) >= self.max_parallel:
                return
            run = self.steps[name]
            if not self.pool.fits(run.need):
                continue  # a later, smaller step may still fit
            self.queue.remove(name)
            self._start(run)

    def _start(self, run: StepRun) -> None:
        if self.processes is None:  # not before a step needs it: a fully cached run starts nothing
            self.processes = StepProcesses(
                self._on_line,
                self._on_exit,
                self.cwd,
                preload_statements(self.pipeline),
                fork_server=self.engine.fork_server,
                server_log=self.run_folder / "zygote.log",
            )
        step = run.step
        run.attempt += 1
        folder = self.engine.workspace.step_folder(self.run_id, step.name)
        run.held = self.pool.take(run.need)
        launch = attempt_launch(
            self.pipeline,
            run,
            self.programs[step.name],
            folder,
            self.artifacts,
            self.run_id,
            self.cwd,
            run.held,
            self.threads,
        )
        run.state, run.started, run.kill_reason = "running", time.monotonic(), None
        run.next_memory_check = run.started + MEMORY_POLL_SECONDS
        self.running[launch.key] = step.name
        self.emit(
            "step_started",
            step=step.name,
            attempt=run.attempt,
            # the input artifacts by digest: what `%cellpipe inputs` loads to debug the step
            data={"folder": str(folder), "log": str(launch.log_path), "inputs": dict(run.inputs)},
        )
        self.processes.start(launch)

    # ------------------------------------------------------------------ watching

    def _check_cancel(self) -> None:
        now = time.monotonic()
        if not self.engine._cancelled and now >= self.next_cancel_poll:
            self.next_cancel_poll = now + CANCEL_POLL_SECONDS
            if self.store.cancel_requested(self.run_id):
                self.engine._cancelled = True
        if not self.engine._cancelled or self.cancelling:
            return
        self.cancelling = True
        self.queue.clear()
        for run in self.steps.values():
            if run.state in ("queued", "retry_wait"):
                run.state = "cancelled"
        for key, name in self.running.items():
            self.steps[name].kill_reason = "cancelled"
            if self.processes is not None:
                self.processes.kill(key)

    def _check_running(self) -> None:
        if self.processes is None:
            return
        now = time.monotonic()
        for key, name in self.running.items():
            run = self.steps[name]
            if run.kill_reason is not None:
                continue
            timeout = run.step.settings.timeout_seconds
            if timeout and now - run.started >= timeout:
                run.kill_reason = f"timed out after {duration_text(timeout)}"
            elif run.need.memory_limit is not None and now >= run.next_memory_check:
                run.next_memory_check = now + MEMORY_POLL_SECONDS
                pid = self.processes.pid(key)
                rss = tree_rss(pid) if pid is not None else 0
                if rss > run.need.memory_limit:
                    run.kill_reason = (
                        f"exceeded its memory limit {run.need.memory_limit_text} ({gib(rss)} resident)"
                    )
            if run.kill_reason is not None:
                self.processes.kill(key)

    def _check_retries(self) -> None:
        now = time.monotonic()
        for name, run in self.steps.items():
            if run.state == "retry_wait" and now >= run.retry_at:
                run.state = "queued"
                self.queue.append(name)
        order = {s.name: i for i, s in enumerate(self.pipeline.steps)}
        self.queue.sort(key=order.__getitem__)

    # ------------------------------------------------------------------ ending

    def _finished(self, exit: Exit) -> None:
        name = self.running.pop(exit.key)
        run = self.steps[name]
        self.pool.give_back(run.need, *run.held)
        run.held = ([], None)
        duration = round(time.monotonic() - run.started, 3)
        folder = self.engine.workspace.step_folder(self.run_id, name)
        where = {"folder": str(folder), "log": str(folder / "log.txt")}
        message = None
        if exit.code == 0:  # finished on its own, even if a kill was on its way
            try:
                self._succeeded(run, duration, where)
                return
            except (OSError, ValueError) as error:
                message = f"cannot keep the step's results: {error}"
        self.cache.discard_staging(run)
        if run.kill_reason == "cancelled":
            run.state = "cancelled"  # run_finished "cancelled" says it for every unfinished step
            return
        message = message or failure_message(run, exit)
        code = exit.code if exit.code is not None and exit.code > 0 else None
        retries = run.step.settings.retries or 0
        if run.attempt <= retries and not self.cancelling:
            delay = min(BACKOFF_CAP_SECONDS, BACKOFF_BASE_SECONDS * 2 ** (run.attempt - 1))
            run.state, run.retry_at = "retry_wait", time.monotonic() + delay
            self.emit(
                "step_retrying",
                step=name,
                attempt=run.attempt,
                message=message,
                exit_code=code,
                duration=duration,
                data={**where, "delay": delay},
            )
            return
        run.state = "failed"
        self.emit(
            "step_failed",
            step=name,
            attempt=run.attempt,
            message=message,
            exit_code=code,
            duration=duration,
            data=where,
        )
        self._skip_downstream(name)

    def _succeeded(self, run: StepRun, duration: float, where: dict[str, str]) -> None:
        step = run.step
        self.cache.keep(run, Path(where["folder"]), self.run_id)
        run.state = "succeeded"
        self.emit(
            "step_succeeded",
            step=step.name,
            attempt=run.attempt,
            duration=duration,
            data={**where, "outputs": run.outputs, "cache_key": run.key, **_model(step)},
        )
        if run.metrics:
            self.emit("metrics", step=step.name, metrics=run.metrics)

    def _skip_downstream(self, failed: str) -> None:
        pending = list(self.pipeline.downstream(failed))
        while pending:
            name = pending.pop(0)
            run = self.steps[name]
            if run.state != "pending":
                continue
            run.state = "skipped"
            self.emit("step_skipped", step=name, message=f"upstream step {failed!r} failed")
            pending.extend(self.pipeline.downstream(name))
