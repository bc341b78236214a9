"""What every engine offers: start a run of a pipeline model and report it as events."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from converter.events import EventSink, RunState
from converter.model import Pipeline


@dataclass(frozen=True)
class RunRequest:
    """Everything a user can ask of one run, whatever the engine."""

    pipeline: Pipeline
    notebook: Path  # the notebook file; the local engine runs steps in its folder
    parameters: dict[str, Any] = field(default_factory=dict)  # already typed and validated
    # None (default): a step is reused only when tagged cache:on, so a run gives what re-executing
    # gives (papermill parity); True (--cache): every step not tagged cache:off; False: none.
    # The KFP engine leaves KFP's own caching on unless it is False.
    use_cache: bool | None = None
    resume: str | None = None  # run id whose succeeded steps are reused
    max_parallel: int | None = None
    output_notebook: Path | None = None  # papermill-style executed copy


@dataclass(frozen=True)
class RunResult:
    run_id: str
    state: RunState
    step_states: dict[str, str]
    metrics: dict[str, float]


class Engine(Protocol):
    """An engine runs a request to completion, emitting events to the sinks as it goes.

    `cancel()` may be called from another thread (or a signal handler); the run then ends with
    state "cancelled" after its step processes are gone.
    """

    name: str

    def run(self, request: RunRequest, sinks: list[EventSink]) -> RunResult: ...

    def cancel(self) -> None: ...


def run_started_data(
    request: RunRequest, engine: str, values: dict[str, Any], run_folder: Path, **extra: Any
) -> dict[str, Any]:
    """What every engine's `run_started` event says, so consumers read one shape; engines add theirs."""
    pipeline = request.pipeline
    return {
        "pipeline": pipeline.name,
        "engine": engine,
        "steps": [s.name for s in pipeline.steps],
        "upstream": {s.name: list(pipeline.upstream(s.name)) for s in pipeline.steps},
        "parameters": values,
        "notebook": str(request.notebook),
        "run_folder": str(run_folder),
        **extra,
    }
