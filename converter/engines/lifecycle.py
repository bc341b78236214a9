"""One run's life, the same for every engine: `run_started`, follow the run, `run_finished`, a result.

An engine supplies an `EngineRun` (how to follow its run, how to stop and clean up, how a run that
ended by itself ended); `execute` does the rest, so every engine ends its runs the same way:

- Ctrl-C (KeyboardInterrupt) reaching the run: "cancelled", and `execute` returns normally;
- an error: "failed" with `error_message` (a `CellpipeError` says its own message, anything else
  "engine error: Type: message"), the run's steps are stopped, and the error is raised after
  `run_finished` is recorded;
- otherwise the engine's own verdict (`EngineRun.ended`), e.g. `steps_failed` for failed steps.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any, Protocol

from converter.engines.base import RunResult
from converter.errors import CellpipeError
from converter.events import EventLog, RunState, step_states
from converter.model import Pipeline
from converter.store.runstore import RunStore


class EngineRun(Protocol):
    """One run of one engine, from the moment it has a run id."""

    run_id: str
    pipeline: Pipeline
    log: EventLog
    store: RunStore  # closed after `run_finished`, which it records

    def started_data(self) -> dict[str, Any]:
        """The `run_started` event's data (see `base.run_started_data`)."""
        ...

    def loop(self) -> None:
        """Follow the run until it is over."""
        ...

    def stop(self) -> None:
        """`loop` raised: stop whatever still runs."""
        ...

    def close(self) -> None:
        """Always, after `loop`: release processes, files and threads."""
        ...

    def ended(self) -> tuple[RunState, str | None]:
        """The outcome of a run whose `loop` returned (it may emit its last step events)."""
        ...

    def metrics(self) -> dict[str, float]: ...


def execute(run: EngineRun) -> RunResult:
    clock = time.monotonic()
    run.log.emit("run_started", data=run.started_data())
    error: BaseException | None = None
    try:
        run.loop()
    except BaseException as exc:
        error = exc
        run.stop()
    finally:
        run.close()
    state, message = run.ended() if error is None else outcome_of_error(error)
    run.log.emit("run_finished", state=state, message=message, duration=round(time.monotonic() - clock, 3))
    run.store.close()
    if error is not None and not isinstance(error, KeyboardInterrupt):
        raise error
    names = [s.name for s in run.pipeline.steps]
    return RunResult(run.run_id, state, dict(step_states(run.log.events, names)), run.metrics())


def outcome_of_error(error: BaseException) -> tuple[RunState, str]:
    if isinstance(error, KeyboardInterrupt):
        return "cancelled", "cancelled"
    return "failed", error_message(error)


def error_message(error: BaseException) -> str:
    """What `run_finished` says of an error that ended a run."""
    if isinstance(error, CellpipeError):
        return str(error)  # written for the user already
    return f"engine error: {type(error).__name__}: {error}"


def steps_failed(names: Sequence[str]) -> str:
    return f"step{'s' * (len(names) > 1)} {', '.join(map(repr, names))} failed"
