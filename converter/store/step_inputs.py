"""What one step of a run read, gathered again to debug the step in a kernel (`%cellpipe inputs RUN STEP`).

Both engines leave what this needs in the run store and the step's folder:

- the exact program the step ran, ``program.py``, whose spec lists its cells (imports and functions
  cells first), the variables it reads from earlier steps and the parameters it reads;
- where each input was when the step started (the ``step_started`` event's ``inputs``): a digest in
  the local artifact store (local runs), or ``TASK/ARTIFACT`` below the run's artifact root (the
  ``run_started`` event's ``artifact_root``, KFP runs), read from S3/MinIO or GCS where the cluster
  wrote it (`converter.store.object_store`); the KFP launcher puts a salt folder between the task and
  the artifact (``TASK/SALT/ARTIFACT/``), and a retried task has several: the newest wins;
- the run's parameter values.

A run recorded before local steps said where their inputs were falls back to the upstream steps'
outputs of the same name.
"""

from __future__ import annotations

import ast
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from converter.errors import CellpipeError
from converter.events import Event
from converter.step.values import load_value
from converter.store.artifacts import ArtifactStore
from converter.store.object_store import ObjectStore, split_uri
from converter.store.runstore import RunRecord, RunStore, StepRecord
from converter.store.workspace import Workspace

RANDOM_STATE = "cellpipe_random_state"  # the input carrying the global random generators' state


@dataclass(frozen=True)
class LoadedValue:
    name: str
    value: object
    origin: str  # "step 'prep'", "parameter"
    where: str  # the artifact folder or URI it was read from ("" for parameters)


@dataclass(frozen=True)
class SetupCell:
    """What the step runs before its own cells: the imports and functions cells, then the replay of
    earlier steps' imports and process-wide state (role "replay", where the runtime carries them)."""

    index: int
    role: str
    code: str  # plain Python (magics already turned into get_ipython() calls)
    step: str | None = None  # the earlier step a replayed cell belongs to


@dataclass(frozen=True)
class StepInputs:
    run_id: str
    step: str
    engine: str
    state: str  # the step's state in the run
    message: str | None  # why it failed, when it did
    setup: tuple[SetupCell, ...]
    cells: tuple[int, ...]  # the step's own cells (notebook indices)
    code: str  # the step's cells as written in the notebook, one block
    values: tuple[LoadedValue, ...]  # inputs from earlier steps, then parameters
    random_state: Any = None  # the global random generators' state the step started with, if carried


def read_step_inputs(run: str, step: str, workspace: Path | None = None) -> StepInputs:
    """Load what step `step` of run `run` (an id or a unique prefix) read; CellpipeError if it cannot."""
    space = Workspace(workspace) if workspace is not None else Workspace.default()
    if not space.database.exists():
        raise CellpipeError(f"no runs yet: {space.database} does not exist")
    store = RunStore(space.database)
    try:
        record = store.get_run(run)
        events = store.events(record.id)
    finally:
        store.close()
    found = next((s for s in record.steps if s.name == step), None)
    if found is None:
        names = ", ".join(s.name for s in record.steps) or "none"
        raise CellpipeError(f"run {record.id} has no step {step!r} (its steps: {names})")
    spec = _spec(record, found)
    started = _last_data(events, "step_started", step)
    values = [*_inputs(space, record, found, spec, events, started), *_parameters(record, spec)]
    random_state = next((v.value for v in values if v.name == RANDOM_STATE), None)
    cells = spec.get("cells", [])
    own = [c for c in cells if c.get("role", "step") == "step"]
    setup = [c for c in cells if c.get("role", "step") != "step"]
    return StepInputs(
        run_id=record.id,
        step=step,
        engine=record.engine,
        state=found.state,
        message=found.message,
        setup=tuple(SetupCell(c["index"], c["role"], c["code"], c.get("step")) for c in setup),
        cells=tuple(c["index"] for c in own),
        code="\n\n".join(c.get("source", c["code"]).rstrip("\n") for c in own) + "\n",
        values=tuple(v for v in values if v.name != RANDOM_STATE),
        random_state=random_state,
    )


def restore_random_state(state: dict[str, Any]) -> None:
    """Give this process's global generators (`random`, numpy's when carried) a step's starting state."""
    import random

    random.setstate(_tuples(state["random"]))
    if "numpy" in state:
        import numpy

        numpy.random.set_state(_tuples(state["numpy"]))


def _tuples(state: Any) -> Any:
    """A generator state read back from JSON has lists where `setstate` wants tuples."""
    return tuple(_tuples(part) for part in state) if isinstance(state, list) else state


def _spec(record: RunRecord, step: StepRecord) -> dict[str, Any]:
    """The step's spec, from the program it ran (the `SPEC = {...}` at its end)."""
    if step.folder is None or not (Path(step.folder) / "program.py").is_file():
        why = f"it is {step.state}" + (f" ({step.message})" if step.message else "")
        raise CellpipeError(f"step {step.name!r} of run {record.id} never ran, so it read nothing: {why}")
    program = (Path(step.folder) / "program.py").read_text(encoding="utf-8")
    try:
        for node in ast.parse(program).body:
            if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "SPEC" for t in node.targets):
                spec = ast.literal_eval(node.value)
                if isinstance(spec, dict):
                    return spec
    except (SyntaxError, ValueError):
        pass
    raise CellpipeError(f"{step.folder}/program.py is not a cellpipe step program (no SPEC)")


def _last_data(events: list[Event], kind: str, step: str | None) -> dict[str, Any]:
    matching = [e for e in events if e.type == kind and e.step == step]
    return dict(matching[-1].data or {}) if matching else {}


def _inputs(
    space: Workspace,
    record: RunRecord,
    step: StepRecord,
    spec: dict[str, Any],
    events: list[Event],
    started: dict[str, Any],
) -> list[LoadedValue]:
    names = list(spec.get("inputs", []))
    if not names:
        return []
    where = dict(started.get("inputs") or {})
    root = _last_data(events, "run_started", None).get("artifact_root")
    if record.engine == "kfp" or root:
        if not root:
            raise CellpipeError(f"run {record.id} did not record where the cluster wrote its artifacts")
        return [_remote(str(root), name, str(where.get(name, "")), record, step) for name in names]
    artifacts = ArtifactStore(space.artifacts)
    upstream = set(_last_data(events, "run_started", None).get("upstream", {}).get(step.name, []))
    loaded = []
    for name in names:
        digest = where.get(name) or _fallback_digest(record, step, name, upstream)
        producer = next((s.name for s in record.steps if digest in s.outputs.values()), "an earlier step")
        folder = artifacts.path(str(digest))
        if not folder.is_dir():
            raise CellpipeError(
                f"input {name!r} of step {step.name!r} is gone from the artifact store ({folder})"
            )
        loaded.append(LoadedValue(name, _load(name, folder, str(folder)), f"step {producer!r}", str(folder)))
    return loaded


def _fallback_digest(record: RunRecord, step: StepRecord, name: str, upstream: set[str]) -> str:
    producers = [s for s in record.steps if s.name in upstream and name in s.outputs]
    if len(producers) != 1:
        raise CellpipeError(f"run {record.id} does not say where step {step.name!r} read {name!r} from")
    return producers[0].outputs[name]


def _remote(root: str, name: str, location: str, record: RunRecord, step: StepRecord) -> LoadedValue:
    task, _, artifact = location.partition("/")
    if not task or not artifact:
        raise CellpipeError(f"run {record.id} does not say where step {step.name!r} read {name!r} from")
    _, _, prefix = split_uri(root)
    objects = ObjectStore(root)
    task_prefix = f"{prefix.strip('/')}/{task}/"
    newest: dict[str, float] = {}  # artifact folder -> newest object in it
    for blob in objects.list(task_prefix):
        parts = blob.key[len(task_prefix) :].split("/")
        depth = 1 if parts[0] == artifact else 2 if len(parts) > 2 and parts[1] == artifact else 0
        if depth:
            folder = task_prefix + "/".join(parts[:depth])
            newest[folder] = max(newest.get(folder, 0.0), blob.modified)
    if not newest:
        raise CellpipeError(
            f"input {name!r} of step {step.name!r}: no artifact {artifact!r} of task {task!r} under "
            f"{root} (a step KFP took from its cache keeps its artifacts under the run that computed it)"
        )
    folder = max(newest, key=lambda f: (newest[f], f))
    uri = f"{objects.where}/{folder}"
    with tempfile.TemporaryDirectory(prefix="cellpipe-input-") as local:
        objects.download(folder, Path(local))
        value = _load(name, Path(local), uri)
    return LoadedValue(name, value, f"task {task!r}", uri)


def _load(name: str, folder: Path, where: str) -> object:
    try:
        return load_value(folder)
    except Exception as error:
        raise CellpipeError(
            f"cannot load input {name!r} from {where}: {type(error).__name__}: {error}"
        ) from None


def _parameters(record: RunRecord, spec: dict[str, Any]) -> list[LoadedValue]:
    values = []
    for name in spec.get("parameters", {}):
        if name not in record.parameters:
            raise CellpipeError(f"run {record.id} has no value for parameter {name!r}")
        values.append(LoadedValue(name, record.parameters[name], "parameter", ""))
    return values
