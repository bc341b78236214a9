"""The typed pipeline model every reader, output and engine shares.

The reader turns a notebook into a :class:`Pipeline`; the KFP compiler, the graph
renderers and the local engine only ever read this model. It deliberately knows
nothing about KFP so that engines which do not need KFP never import it.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass, field
from typing import Literal

Severity = Literal["error", "warning"]
ParameterType = Literal["int", "float", "bool", "str", "list", "dict"]
EdgeKind = Literal["data", "after"]

DEFAULT_IMAGE = "python:3.11-slim"
DEFAULT_GPU_VENDOR = "nvidia.com/gpu"


def shown_tag(tag: str) -> str:
    """A tag as a problem line shows it: control and format characters (newlines, bidi overrides,
    zero-width ones) escaped, so a tag can neither start a fake second problem line nor reorder
    what the terminal displays."""
    return "".join(
        char.encode("unicode_escape").decode("ascii") if unicodedata.category(char) in ("Cc", "Cf") else char
        for char in tag
    )


@dataclass(frozen=True)
class Problem:
    """One thing wrong (or suspicious) in a notebook, located for a human."""

    notebook: str
    cell: int | None
    tag: str | None
    severity: Severity
    message: str

    def __str__(self) -> str:
        where = f"cell {self.cell}" if self.cell is not None else "notebook"
        tag = f" [{shown_tag(self.tag)}]" if self.tag else ""
        prefix = "warning: " if self.severity == "warning" else ""
        return f"{self.notebook}: {where}{tag}: {prefix}{self.message}"

    def to_json(self) -> dict[str, object]:
        return {
            "cell": self.cell,
            "tag": self.tag,
            "severity": self.severity,
            "message": self.message,
        }


@dataclass(frozen=True)
class Toleration:
    key: str
    value: str
    effect: str  # NoSchedule, PreferNoSchedule or NoExecute


@dataclass(frozen=True)
class SecretEnv:
    """A Kubernetes secret key exposed as an environment variable; never a value."""

    secret: str
    key: str
    env: str


@dataclass(frozen=True)
class VolumeMount:
    pvc: str
    mount_path: str


@dataclass(frozen=True)
class Resources:
    """Requests and limits as Kubernetes quantities, already validated."""

    cpu_request: str | None = None
    cpu_limit: str | None = None
    memory_request: str | None = None
    memory_limit: str | None = None
    gpu: int | None = None
    gpu_vendor: str = DEFAULT_GPU_VENDOR
    gpu_type: str | None = None


@dataclass(frozen=True)
class StepSettings:
    """Everything a tag or structured metadata can set on a step."""

    resources: Resources = field(default_factory=Resources)
    image: str | None = None
    packages: tuple[str, ...] = ()
    retries: int | None = None
    timeout_seconds: int | None = None
    cache: bool | None = None
    env: tuple[tuple[str, str], ...] = ()
    secrets: tuple[SecretEnv, ...] = ()
    node_selector: tuple[tuple[str, str], ...] = ()
    tolerations: tuple[Toleration, ...] = ()
    labels: tuple[tuple[str, str], ...] = ()
    annotations: tuple[tuple[str, str], ...] = ()
    volumes: tuple[VolumeMount, ...] = ()
    report: bool = True
    # Model serving (`serve:FRAMEWORK` on the step that produces the model), None: not served.
    serve: str | None = None
    serve_variable: str | None = None  # `serve:FRAMEWORK:VARIABLE`: the value to serve, named
    serve_min_replicas: int | None = None
    serve_max_replicas: int | None = None
    canary_percent: int | None = None


@dataclass(frozen=True)
class Parameter:
    """A typed pipeline input read from papermill's parameters cell."""

    name: str
    type: ParameterType
    default: object
    cell: int
    search: str | None = None  # the raw "# search: ..." annotation, if any

    @property
    def optional(self) -> bool:
        """`name = None`, papermill's idiom for "to be given": an optional str, None when not given."""
        return self.default is None


@dataclass(frozen=True)
class CodeCell:
    """A notebook code cell as a step runs it."""

    index: int
    source: str  # as written in the notebook
    python: str  # after IPython's input transformer: plain Python
    raises: bool = False  # tagged raises-exception: its error is shown and the step goes on


@dataclass(frozen=True)
class Step:
    name: str
    cells: tuple[CodeCell, ...]
    inputs: tuple[str, ...]  # variables read from earlier steps, sorted
    outputs: tuple[str, ...]  # variables later steps read from this one, sorted
    parameters: tuple[str, ...]  # pipeline parameters the step reads, sorted
    metrics: tuple[str, ...]  # metric names this step records, sorted
    after: tuple[str, ...]  # explicit ordering constraints (step names)
    packages: tuple[str, ...]  # pip requirements the step needs, sorted, pinned where known
    settings: StepSettings
    uses_ipython: bool = False  # magics or shell escapes need an IPython shell
    modules: tuple[str, ...] = ()  # top-level modules its cells (and imports/functions cells) import
    # A serve: step's model: the output holding it (one of `outputs`, read later or not), and when the
    # reader cannot tell which value it is, the values the step runtime chooses from (the one that is
    # a model of the framework) to fill that output.
    model_output: str | None = None
    model_candidates: tuple[str, ...] = ()

    @property
    def first_cell(self) -> int:
        return self.cells[0].index


@dataclass(frozen=True)
class Edge:
    source: str
    target: str
    kind: EdgeKind
    names: tuple[str, ...] = ()  # variables carried by a data edge

    def to_json(self) -> dict[str, object]:
        return {"source": self.source, "target": self.target, "kind": self.kind, "names": list(self.names)}


@dataclass(frozen=True)
class Pipeline:
    name: str
    notebook: str  # path as the user gave it, for messages
    description: str
    experiment: str | None
    image: str
    imports: tuple[CodeCell, ...]  # run at the start of every step
    functions: tuple[CodeCell, ...]  # run after the imports in every step
    parameters: tuple[Parameter, ...]
    steps: tuple[Step, ...]  # in notebook order (a topological order)
    edges: tuple[Edge, ...]
    volumes: tuple[VolumeMount, ...] = ()  # shared volumes mounted in every step
    warnings: tuple[Problem, ...] = ()
    cache_default: bool = True

    def step(self, name: str) -> Step:
        for step in self.steps:
            if step.name == name:
                return step
        raise KeyError(name)

    def upstream(self, name: str) -> tuple[str, ...]:
        return tuple(sorted({e.source for e in self.edges if e.target == name}))

    def downstream(self, name: str) -> tuple[str, ...]:
        return tuple(sorted({e.target for e in self.edges if e.source == name}))

    def producer(self, step: str, variable: str) -> str:
        """The step whose version of `variable` the given step reads."""
        for edge in self.edges:
            if edge.target == step and edge.kind == "data" and variable in edge.names:
                return edge.source
        raise KeyError(f"{step} reads {variable} from no step")
