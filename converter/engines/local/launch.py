"""Starting one attempt of a step, and saying in one line why an attempt failed.

An attempt runs the exact program the compiled pipeline carries (`stepcode.program`) with its argv
(`stepcode.arguments`: placeholders filled with artifact paths, parameters rendered as KFP renders
them, an optional parameter without a value left out as on KFP), in the notebook's folder. Its files
are in the step folder (`converter.store.workspace`); its outputs go to a staging folder, committed
only when the attempt succeeds (`converter.engines.local.caching`).
"""

from __future__ import annotations

import os
import re
import signal
from pathlib import Path

from converter.engines.local.processes import Exit, Launch
from converter.engines.local.resources import thread_environment
from converter.engines.local.steprun import StepRun
from converter.model import Pipeline
from converter.step import stepcode
from converter.store.artifacts import ArtifactStore

STALE_FILES = ("metrics.json", "cell_outputs.json", "report.html")  # an earlier attempt's
_RUNTIME_FAILURE = re.compile(r"^cellpipe: step '[^']*'(?: \(.*\))? failed: (.*)$")


def attempt_launch(
    pipeline: Pipeline,
    run: StepRun,
    program: str,
    folder: Path,
    artifacts: ArtifactStore,
    run_id: str,
    cwd: Path,
    resources: tuple[list[str], list[int] | None],
    threads: int | None = None,
) -> Launch:
    """The launch of attempt `run.attempt` of the step: its folder readied, its outputs' staging made.

    `resources`: the GPUs and CPUs the pool handed it (GPU steps start as fresh interpreters).
    `threads`: its share of the CPUs (`resources.thread_share`), unless it was pinned to some.
    """
    step = run.step
    folder.mkdir(parents=True, exist_ok=True)
    program_path = folder / "program.py"
    if run.attempt == 1:
        program_path.write_text(program, encoding="utf-8")
    for stale in STALE_FILES:
        (folder / stale).unlink(missing_ok=True)
    run.staging = artifacts.staging(f"{run_id}.{step.name}.{run.attempt}")
    inputs, outputs = stepcode.artifact_names(step)
    run.staged = {var: run.staging / name for var, name in outputs.items()}
    paths = {name: str(artifacts.path(run.inputs[var])) for var, name in inputs.items()}
    paths.update({name: str(run.staged[var]) for var, name in outputs.items()})
    paths[stepcode.METRICS_ARTIFACT] = str(folder / "metrics.json")
    paths[stepcode.REPORT_ARTIFACT] = str(folder / "report.html")
    argv: list[str] = []
    optional = stepcode.optional_parameters(pipeline)
    for arg in stepcode.arguments(step, executor_output=None, optional=optional):
        if arg.if_present is not None and run.params.get(arg.if_present) is None:
            continue  # an optional parameter without a value: its flag is left out, as on KFP
        if arg.kind == "literal":
            argv.append(arg.value)
        elif arg.kind == "runtime":
            argv.append(stepcode.packed_runtime())  # what the compiled pipeline passes every step
        elif arg.kind == "parameter":
            argv.append(run.params[arg.value] or "")
        else:
            argv.append(paths[arg.value])
    argv += ["--cell-outputs", str(folder / "cell_outputs.json"), "--no-install"]
    gpus, cpus = resources
    env = dict(step.settings.env)
    if cpus or threads:
        env = {**thread_environment(len(cpus) if cpus else threads or 1, {**os.environ, **env}), **env}
    if gpus or run.need.no_gpu:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(gpus)
    key = f"{step.name}#{run.attempt}"
    return Launch(key, program, program_path, argv, cwd, env, folder / "log.txt", cpus, fork=not gpus)


def failure_message(run: StepRun, exit: Exit) -> str:
    """One line saying why an attempt failed."""
    if run.kill_reason is not None:
        return run.kill_reason
    if exit.code is None:
        return exit.lost or "step process lost"
    if exit.code < 0:
        try:
            signame = signal.Signals(-exit.code).name
        except ValueError:
            signame = f"signal {-exit.code}"
        return f"killed by {signame}" + (" (out of memory?)" if -exit.code == signal.SIGKILL else "")
    for line in reversed(exit.stderr_tail):
        match = _RUNTIME_FAILURE.match(line)
        if match:
            return match.group(1)
    last = next((line for line in reversed(exit.stderr_tail) if line.strip()), None)
    return f"exited with status {exit.code}" + (f": {last.strip()}" if last else "")
