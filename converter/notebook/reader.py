"""Notebook -> `Pipeline`: cells grouped into steps, settings merged, data flow inferred, all problems found.

The reader never stops at the first mistake: it gathers every problem, then raises one
`InvalidNotebook` carrying them all (warnings ride along on the `Pipeline`).
"""

from __future__ import annotations

import ast
import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from converter.errors import CellpipeError, InvalidNotebook
from converter.model import (
    DEFAULT_IMAGE,
    CodeCell,
    Edge,
    Parameter,
    ParameterType,
    Pipeline,
    Problem,
    Step,
    VolumeMount,
)
from converter.notebook import search_space, tags
from converter.notebook.analysis import (
    BUILTIN_NAMES,
    CellAnalysis,
    CellSyntaxError,
    analyze_cell,
    analyze_sequence,
)
from converter.serving import kserve as serving
from converter.step import requirements as packaging

_PARAM_TYPES: Mapping[type, ParameterType] = {
    bool: "bool",
    int: "int",
    float: "float",
    str: "str",
    list: "list",
    dict: "dict",
}
_SEARCH_COMMENT = re.compile(r"#\s*search:\s*(.+?)\s*$")


def read_notebook(path: str | Path) -> Pipeline:
    """Read and validate a notebook file; raise `InvalidNotebook` listing every error."""
    pipeline, problems = check_notebook(path)
    if pipeline is None:
        raise InvalidNotebook(problems)
    return pipeline


def check_notebook(path: str | Path) -> tuple[Pipeline | None, list[Problem]]:
    """All problems of a notebook file, and its pipeline when it has no errors."""
    path = Path(path)
    return check_node(load(path), str(path))


def load(path: Path) -> dict[str, Any]:
    """Read any nbformat version (older ones upgraded to v4); unreadable files are user errors.

    A v4 file is read as plain JSON: importing nbformat pulls in jsonschema and its format
    checkers, which can cost more than a second, on the path of every `cellpipe run`. Older
    formats go through nbformat, which knows how to upgrade them.
    """
    if not path.is_file():
        raise CellpipeError(f"{path}: no such notebook")
    try:
        text = path.read_text(encoding="utf-8")
        data = json.loads(text)
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise CellpipeError(f"{path}: not a readable Jupyter notebook ({reason})") from None
    if isinstance(data, dict) and data.get("nbformat") == 4 and isinstance(data.get("cells"), list):
        for cell in data["cells"]:
            if isinstance(cell, dict) and isinstance(cell.get("source"), list):
                cell["source"] = "".join(str(line) for line in cell["source"])
        return data
    import nbformat

    try:
        return dict(nbformat.reads(text, as_version=4))
    except Exception as exc:  # nbformat raises many types for broken files
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise CellpipeError(f"{path}: not a readable Jupyter notebook ({reason})") from None


def check_node(nb: Mapping[str, Any], notebook: str) -> tuple[Pipeline | None, list[Problem]]:
    """Build the pipeline of an in-memory notebook; the server extension calls this directly."""
    builder = _Builder(nb, notebook)
    pipeline = builder.build()
    problems = sorted(builder.problems, key=_problem_order)
    if any(p.severity == "error" for p in problems):
        return None, problems
    return pipeline, problems


def _problem_order(problem: Problem) -> tuple[int, int]:
    return (problem.cell if problem.cell is not None else -1, 0 if problem.severity == "error" else 1)


@dataclass
class _Cell:
    index: int
    source: str
    tags: tags.CellTags
    analysis: CellAnalysis | None  # None: syntax error (already reported)


@dataclass
class _StepDraft:
    name: str
    first: _Cell
    tag: str  # how the step was named, for messages
    cells: list[_Cell] = field(default_factory=list)
    after: list[str] = field(default_factory=list)
    settings: tags.Settings = field(default_factory=dict)
    structured: tags.Settings = field(default_factory=dict)


class _Builder:
    def __init__(self, nb: Mapping[str, Any], notebook: str):
        self.nb = nb
        self.notebook = notebook
        self.problems: list[Problem] = []

    # -- problems ---------------------------------------------------------------
    def error(self, cell: int | None, tag: str | None, message: str) -> None:
        self.problems.append(Problem(self.notebook, cell, tag, "error", message))

    def warn(self, cell: int | None, tag: str | None, message: str) -> None:
        self.problems.append(Problem(self.notebook, cell, tag, "warning", message))

    # -- the whole build ----------------------------------------------------------
    def build(self) -> Pipeline | None:
        meta = self._notebook_settings()
        cells = self._parse_cells()
        drafts, roles, preamble = self._group(cells)
        if not drafts:
            # As under papermill, a notebook with nothing to run runs (and does nothing);
            # compiling it for KFP, which needs a task, is the error.
            self.warn(
                None,
                None,
                "nothing to run: no code cells outside imports, functions, parameters, metrics "
                "and skipped cells",
            )
        parameters = self._parameters(roles.get("parameters", []))
        self.problems.extend(search_space.check(self.notebook, parameters)[1])
        steps, edges = self._data_flow(drafts, roles, preamble, parameters, meta)
        if steps is None or edges is None:
            return None
        pipeline = Pipeline(
            name=meta["name"],
            notebook=self.notebook,
            description=meta["description"],
            experiment=meta["experiment"],
            image=meta["image"],
            imports=tuple(_code_cell(c) for c in roles.get("imports", [])),
            functions=tuple(_code_cell(c) for c in roles.get("functions", [])),
            parameters=parameters,
            steps=steps,
            edges=edges,
            volumes=tuple(meta["volumes"]),
            warnings=(),
            cache_default=meta["cache"],
        )
        self._check_file_passing(pipeline, drafts)
        self.problems.extend(serving.problems(pipeline))
        return _with_warnings(pipeline, [p for p in self.problems if p.severity == "warning"])

    # -- notebook-level settings ---------------------------------------------------
    def _notebook_settings(self) -> dict[str, Any]:
        metadata = self.nb.get("metadata", {})
        self._check_language(metadata)
        stem = Path(self.notebook).stem
        meta: dict[str, Any] = {
            "name": _pipeline_name(stem),
            "description": f"Pipeline compiled by cellpipe from {Path(self.notebook).name}",
            "experiment": None,
            "image": DEFAULT_IMAGE,
            "defaults": {},
            "volumes": [],
            "packages": [],
            "cache": True,
        }
        if "cellpipe" in metadata:
            settings, other = tags.parse_structured(
                self.notebook, None, metadata["cellpipe"], self.problems, where="metadata.cellpipe"
            )
            # At notebook level image, packages and volumes are pipeline-wide; step settings go in defaults.
            for key in ("name", "description", "experiment"):
                if key in other:
                    meta[key] = str(other[key]) if key != "name" else _pipeline_name(str(other[key]))
            if "image" in settings:
                meta["image"] = settings.pop("image")
            meta["packages"] = settings.pop("packages", [])
            meta["volumes"] = settings.pop("volumes", [])
            for key in sorted(settings):
                self.warn(
                    None, f"metadata.cellpipe.{key}", f"put step settings under 'defaults'; {key!r} ignored"
                )
            if "defaults" in other:
                defaults, rest = tags.parse_structured(
                    self.notebook, None, other["defaults"], self.problems, where="metadata.cellpipe.defaults"
                )
                for key in sorted(rest):
                    self.warn(None, f"metadata.cellpipe.defaults.{key}", f"{key!r} is not a step setting")
                meta["defaults"] = defaults
        elif "kubeflow_notebook" in metadata:
            self._kale_settings(metadata["kubeflow_notebook"], meta)
        return meta

    def _check_language(self, metadata: Mapping[str, Any]) -> None:
        """Steps run Python: a notebook written for another kernel (R, Julia...) is refused, not misread."""
        kernelspec = metadata.get("kernelspec") or {}
        language = str(kernelspec.get("language") or (metadata.get("language_info") or {}).get("name") or "")
        if language and language.lower() != "python":
            name = kernelspec.get("name") or language
            self.error(
                None,
                "kernelspec",
                f"this notebook is written for the {language} kernel {name!r}; "
                "cellpipe runs Python notebooks",
            )

    def _kale_settings(self, kale: Any, meta: dict[str, Any]) -> None:
        """Kale's notebook metadata, so Kale notebooks convert unchanged."""
        if not isinstance(kale, dict):
            self.error(None, "metadata.kubeflow_notebook", "Kale metadata must be a JSON object")
            return
        if kale.get("pipeline_name"):
            meta["name"] = _pipeline_name(str(kale["pipeline_name"]))
        if kale.get("pipeline_description"):
            meta["description"] = str(kale["pipeline_description"])
        if kale.get("experiment_name"):
            meta["experiment"] = str(kale["experiment_name"])
        if kale.get("docker_image") or kale.get("base_image"):
            meta["image"] = str(kale.get("docker_image") or kale.get("base_image"))
        if "enable_caching" in kale:
            meta["cache"] = bool(kale["enable_caching"])
        defaults = tags.parse_tags(self.notebook, -1, [str(t) for t in kale.get("steps_defaults") or []], [])
        meta["defaults"] = defaults.settings
        for volume in kale.get("volumes") or []:
            if isinstance(volume, dict) and volume.get("type", "pvc") in ("pvc", "pv") and volume.get("name"):
                meta["volumes"].append(
                    VolumeMount(str(volume["name"]), str(volume.get("mount_point", "/data")))
                )
            else:
                self.warn(
                    None, "metadata.kubeflow_notebook.volumes", f"volume {volume!r} not supported; ignored"
                )

    # -- cells -------------------------------------------------------------------
    def _parse_cells(self) -> list[_Cell]:
        cells: list[_Cell] = []
        for index, cell in enumerate(self.nb.get("cells", [])):
            if cell.get("cell_type") != "code":
                continue
            metadata = cell.get("metadata", {})
            cell_tags = tags.parse_tags(self.notebook, index, list(metadata.get("tags", [])), self.problems)
            if "cellpipe" in metadata:
                self._apply_structured(cell_tags, metadata["cellpipe"])
            source = cell.get("source", "")
            if cell_tags.role == "skip":
                continue
            try:
                analysis: CellAnalysis | None = analyze_cell(source)
            except CellSyntaxError as exc:
                line = f" (line {exc.lineno})" if exc.lineno else ""
                self.error(index, _cell_tag(cell_tags), f"syntax error: {exc.message}{line}")
                analysis = None
            cells.append(_Cell(index, source, cell_tags, analysis))
        return cells

    def _apply_structured(self, cell: tags.CellTags, data: Any) -> None:
        settings, other = tags.parse_structured(self.notebook, cell.index, data, self.problems)
        for key, what in _conflicts(cell.settings, settings):
            self.warn(
                cell.index,
                f"metadata.cellpipe.{key}",
                f"tags and metadata.cellpipe disagree on {what}; metadata.cellpipe wins",
            )
        cell.structured = settings
        if "step" in other:
            name = str(other["step"])
            if (why := tags.check_step_name(name)) is not None:
                self.error(cell.index, "metadata.cellpipe.step", why)
            else:
                if cell.step is not None and cell.step != name:
                    self.warn(
                        cell.index,
                        "metadata.cellpipe.step",
                        f"tags name step {cell.step!r}, metadata.cellpipe says {name!r}; metadata wins",
                    )
                cell.step = name
        if "after" in other:
            after = other["after"]
            names = [after] if isinstance(after, str) else after
            if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
                self.error(
                    cell.index, "metadata.cellpipe.after", "after must be a step name or a list of names"
                )
            else:
                cell.after.extend(n for n in names if n not in cell.after)
        if "role" in other:
            role = tags.ROLE_TAGS.get(str(other["role"]))
            if role is None:
                self.error(
                    cell.index,
                    "metadata.cellpipe.role",
                    "role must be one of imports, functions, parameters, metrics, skip",
                )
            else:
                cell.role = role
        if isinstance(other.get("search"), dict):
            cell.search.update({str(k): str(v) for k, v in other["search"].items()})

    def _group(self, cells: list[_Cell]) -> tuple[list[_StepDraft], dict[str, list[_Cell]], list[_Cell]]:
        """Assign every cell to a step, a role, or the left-out preamble."""
        roles: dict[str, list[_Cell]] = {}
        drafts: list[_StepDraft] = []
        preamble: list[_Cell] = []
        by_name: dict[str, _StepDraft] = {}
        tagged = any(c.tags.step or c.tags.continues for c in cells)
        if not tagged:
            name = _step_name_from_file(Path(self.notebook).stem)
            first = next((c for c in cells if c.tags.role is None), None)
            if first is not None:
                drafts.append(_StepDraft(name, first, "notebook"))
        current: _StepDraft | None = drafts[0] if drafts else None
        for cell in cells:
            t = cell.tags
            if t.role is not None:
                if t.step or t.continues:
                    self.error(cell.index, _cell_tag(t), f"a {t.role} cell cannot also be a step")
                for key in sorted(set(t.settings) | set(t.structured)):
                    self.warn(cell.index, key, f"settings on a {t.role} cell are ignored")
                roles.setdefault(t.role, []).append(cell)
                continue
            if t.step is not None:
                existing = by_name.get(t.step)
                if existing is not None and existing is current:
                    pass  # a repeated tag on the next cell of the same step: harmless
                elif existing is not None:
                    self.error(
                        cell.index,
                        f"step:{t.step}",
                        f"duplicate step name {t.step!r}: cell {existing.first.index} already starts it "
                        "(to continue a step, leave the cell untagged or use step: with no name)",
                    )
                    continue
                elif t.step.replace("_", "-") in {n.replace("_", "-") for n in by_name}:
                    other = next(n for n in by_name if n.replace("_", "-") == t.step.replace("_", "-"))
                    self.error(
                        cell.index,
                        f"step:{t.step}",
                        f"step {t.step!r} collides with step {other!r}: KFP sees both as "
                        f"{t.step.replace('_', '-')!r}",
                    )
                    continue
                else:
                    current = _StepDraft(t.step, cell, f"step:{t.step}")
                    by_name[t.step] = current
                    drafts.append(current)
            elif current is None:
                if t.continues:
                    self.error(
                        cell.index, "step:", "step: with no name continues a step, but no step is above"
                    )
                elif cell.source.strip():
                    self.warn(
                        cell.index,
                        None,
                        "code before the first step is left out of the pipeline (tag it to include it)",
                    )
                preamble.append(cell)
                continue
            current.cells.append(cell)
            current.after.extend(a for a in t.after if a not in current.after)
            current.settings = tags.merge([current.settings, t.settings])
            current.structured = tags.merge([current.structured, t.structured])
        for role, members in roles.items():
            if role == "metrics" or role == "parameters":
                continue
            for cell in members:
                if cell.tags.after:
                    self.warn(cell.index, "after", f"after: on a {role} cell is ignored")
        return drafts, roles, preamble

    # -- parameters ---------------------------------------------------------------
    def _parameters(self, cells: list[_Cell]) -> tuple[Parameter, ...]:
        found: dict[str, Parameter] = {}
        for cell in cells:
            if cell.analysis is None:
                continue
            try:
                module = ast.parse(cell.analysis.python)
            except SyntaxError:
                continue
            lines = cell.source.splitlines()
            for node in module.body:
                target, value = _literal_assignment(node)
                if target is None:
                    self.error(
                        cell.index,
                        "parameters",
                        f"line {node.lineno}: a parameters cell holds only NAME = literal assignments",
                    )
                    continue
                try:
                    default = ast.literal_eval(value) if value is not None else None
                except ValueError:
                    self.error(
                        cell.index,
                        "parameters",
                        f"{target} = ... is not a literal (int, float, bool, str, list or dict); "
                        "parameter values travel as KFP parameters, not code",
                    )
                    continue
                kind = "str" if default is None else _PARAM_TYPES.get(type(default))
                if kind is None:
                    self.error(
                        cell.index,
                        "parameters",
                        f"{target} has type {type(default).__name__}; "
                        "use int, float, bool, str, list, dict or None",
                    )
                    continue
                line = lines[node.lineno - 1] if node.lineno - 1 < len(lines) else ""
                search = _SEARCH_COMMENT.search(line)
                found[target] = Parameter(
                    target,
                    kind,
                    default,
                    cell.index,
                    search=cell.tags.search.get(target) or (search.group(1) if search else None),
                )
        return tuple(found.values())

    # -- data flow ----------------------------------------------------------------
    def _data_flow(
        self,
        drafts: list[_StepDraft],
        roles: dict[str, list[_Cell]],
        preamble: list[_Cell],
        parameters: tuple[Parameter, ...],
        meta: dict[str, Any],
    ) -> tuple[tuple[Step, ...], tuple[Edge, ...]] | tuple[None, None]:
        shared = [c.analysis for c in roles.get("imports", []) + roles.get("functions", []) if c.analysis]
        common = analyze_sequence(shared) if shared else None
        common_names = set(common.assigns) if common else set()
        functions: dict[str, frozenset[str]] = {}
        for analysis in shared:
            functions.update(analysis.functions)
        param_names = {p.name for p in parameters}
        preamble_defs = {n: c.index for c in preamble if c.analysis for n in c.analysis.assigns}
        opaque_before = [
            c.index
            for c in preamble + [c for d in drafts for c in d.cells]
            if c.analysis and c.analysis.opaque
        ]
        if common and common.reads - BUILTIN_NAMES - common_names:
            for cell in roles.get("imports", []) + roles.get("functions", []):
                if cell.analysis:
                    missing = sorted(cell.analysis.reads - BUILTIN_NAMES - common_names - param_names)
                    for name in missing:
                        self.error(
                            cell.index,
                            cell.tags.role,
                            f"name {name!r} is not defined (imports and functions cells run first in "
                            "every step and can only use each other's names)",
                        )

        names = {d.name for d in drafts}
        for draft in drafts:
            for target in draft.after:
                if target not in names:
                    self.error(draft.first.index, f"after:{target}", f"after: names unknown step {target!r}")
                elif target == draft.name:
                    self.error(draft.first.index, f"after:{target}", "a step cannot run after itself")

        # Walk the steps in notebook order, as a top-to-bottom run would.
        definitions: dict[str, str] = {}
        step_inputs: dict[str, dict[str, str]] = {}  # step -> variable -> producer
        step_params: dict[str, set[str]] = {}
        step_analysis: dict[str, CellAnalysis] = {}
        for draft in drafts:
            analyses = [c.analysis for c in draft.cells if c.analysis is not None]
            if len(analyses) != len(draft.cells):
                step_analysis[draft.name] = analyze_sequence(analyses) if analyses else _EMPTY
                continue
            block = analyze_sequence(analyses)
            step_analysis[draft.name] = block
            reads = set(block.reads)
            # Functions from `functions` cells read globals at call time: follow them.
            pending = [n for n in reads if n in functions]
            seen: set[str] = set()
            while pending:
                fn = pending.pop()
                if fn in seen:
                    continue
                seen.add(fn)
                for free in functions[fn]:
                    if free in functions:
                        pending.append(free)
                    elif free not in block.assigns or free in block.reads:
                        reads.add(free)
            for fn_free in block.functions.values():
                reads.update(n for n in fn_free if n not in block.assigns and n not in functions)
            inputs: dict[str, str] = {}
            params: set[str] = set()
            for name in sorted(reads - common_names):
                if name in definitions:
                    inputs[name] = definitions[name]  # may shadow a builtin, as in the notebook
                elif name in BUILTIN_NAMES:
                    continue
                elif name in param_names:
                    params.add(name)
                elif name in preamble_defs:
                    self._error_at(
                        self._reading_cell(draft, name),
                        f"step {draft.name!r} reads {name!r}, which only cell {preamble_defs[name]} defines, "
                        "and that cell is left out of the pipeline (tag it as a step, imports or functions)",
                    )
                elif name in block.weak_reads:
                    continue  # maybe bound by the step itself first, or a shell line's environment variable
                elif opaque_before and min(opaque_before) <= draft.cells[-1].index:
                    continue  # a %run, exec or star import may define it: cannot tell
                else:
                    self._error_at(
                        self._reading_cell(draft, name),
                        f"name {name!r} is not defined before step {draft.name!r} "
                        "(not a builtin, import, parameter or earlier step's variable)",
                    )
            for name in sorted(block.assigns & param_names):
                self._error_at(
                    self._assigning_cell(draft, name),
                    f"step {draft.name!r} assigns {name!r}, which is a pipeline parameter; parameters are "
                    "read-only inputs (use another variable name)",
                )
            step_inputs[draft.name] = inputs
            step_params[draft.name] = params
            for name in block.assigns - block.imports:
                definitions[name] = draft.name
            for name in block.mutates:
                if name in inputs:
                    definitions[name] = draft.name  # later readers get the mutated version
            for name in block.imports:
                definitions.pop(name, None)

        metrics_of = self._metrics(roles.get("metrics", []), drafts, step_analysis, param_names)
        # Resource and cycle checks run even when other errors were found: every problem at once.
        settings_of = {
            d.name: tags.to_step_settings(tags.merge([meta["defaults"], d.settings, d.structured]))
            for d in drafts
        }
        for draft in drafts:
            tags.check_resources(self.notebook, draft.first.index, settings_of[draft.name], self.problems)
        edges = self._edges(drafts, step_inputs)
        order = self._topological(drafts, edges)
        if order is None or any(p.severity == "error" for p in self.problems):
            return None, None

        outputs: dict[str, set[str]] = {d.name: set() for d in drafts}
        for inputs in step_inputs.values():
            for name, producer in inputs.items():
                outputs[producer].add(name)
        steps = []
        imports_cells = roles.get("imports", []) + roles.get("functions", [])
        for draft in order:
            settings = settings_of[draft.name]
            block = step_analysis[draft.name]
            modules = set(block.modules) | {
                m for c in imports_cells if c.analysis for m in c.analysis.modules
            }
            uses_ipython = block.uses_ipython or any(
                c.analysis.uses_ipython for c in imports_cells if c.analysis
            )
            steps.append(
                Step(
                    name=draft.name,
                    cells=tuple(_code_cell(c) for c in draft.cells),
                    inputs=tuple(sorted(step_inputs[draft.name])),
                    outputs=tuple(sorted(outputs[draft.name])),
                    parameters=tuple(sorted(step_params[draft.name])),
                    metrics=tuple(sorted(metrics_of.get(draft.name, ()))),
                    after=tuple(draft.after),
                    packages=packaging.requirements(
                        modules, meta["packages"], settings.packages, uses_ipython
                    ),
                    settings=settings,
                    uses_ipython=uses_ipython,
                    modules=tuple(sorted(modules)),
                )
            )
        return tuple(steps), edges

    def _error_at(self, cell: _Cell, message: str) -> None:
        """An error in a cell's code, labelled with the cell's own step tag (if it has one)."""
        self.error(cell.index, _cell_tag(cell.tags), message)

    def _reading_cell(self, draft: _StepDraft, name: str) -> _Cell:
        for cell in draft.cells:
            if cell.analysis and (
                name in cell.analysis.reads or any(name in f for f in cell.analysis.functions.values())
            ):
                return cell
        return draft.first

    def _assigning_cell(self, draft: _StepDraft, name: str) -> _Cell:
        for cell in draft.cells:
            if cell.analysis and name in cell.analysis.assigns:
                return cell
        return draft.first

    def _metrics(
        self,
        cells: list[_Cell],
        drafts: list[_StepDraft],
        step_analysis: Mapping[str, CellAnalysis],
        param_names: set[str],
    ) -> dict[str, set[str]]:
        """Each metric is recorded by the last step before the metrics cell that assigns it."""
        metrics_of: dict[str, set[str]] = {}
        for cell in cells:
            if cell.analysis is None:
                continue
            producers = [d for d in drafts if d.first.index < cell.index]
            for name in sorted(cell.analysis.reads - BUILTIN_NAMES):
                producer = next(
                    (d for d in reversed(producers) if name in step_analysis.get(d.name, _EMPTY).assigns),
                    None,
                )
                if producer is None:
                    self.error(
                        cell.index, "metrics", f"metric {name!r} is not assigned by any step before this cell"
                    )
                else:
                    metrics_of.setdefault(producer.name, set()).add(name)
            if cell.analysis.assigns:
                self.warn(
                    cell.index,
                    "metrics",
                    "a metrics cell only names values; its assignments are not run in the pipeline",
                )
        return metrics_of

    def _edges(
        self, drafts: list[_StepDraft], step_inputs: Mapping[str, Mapping[str, str]]
    ) -> tuple[Edge, ...]:
        carried: dict[tuple[str, str], set[str]] = {}
        for consumer, inputs in step_inputs.items():
            for name, producer in inputs.items():
                carried.setdefault((producer, consumer), set()).add(name)
        edges = [Edge(s, t, "data", tuple(sorted(n))) for (s, t), n in carried.items()]
        names = {d.name for d in drafts}
        for draft in drafts:
            for target in draft.after:
                # Unknown and self targets are already errors; leaving them out keeps the cycle check sound.
                if (target, draft.name) not in carried and target != draft.name and target in names:
                    edges.append(Edge(target, draft.name, "after"))
        return tuple(sorted(edges, key=lambda e: (e.source, e.target)))

    def _topological(self, drafts: list[_StepDraft], edges: Iterable[Edge]) -> list[_StepDraft] | None:
        """Stable topological order (notebook order among ready steps); a cycle is an error."""
        position = {d.name: i for i, d in enumerate(drafts)}
        incoming: dict[str, set[str]] = {d.name: set() for d in drafts}
        for edge in edges:
            incoming[edge.target].add(edge.source)
        done: list[_StepDraft] = []
        placed: set[str] = set()
        remaining = list(drafts)
        while remaining:
            ready = next((d for d in remaining if incoming[d.name] <= placed), None)
            if ready is None:
                cycle = _find_cycle({d.name: incoming[d.name] for d in remaining})
                first = min(cycle, key=lambda n: position[n])
                draft = drafts[position[first]]
                # The earliest step's edge in the cycle points backwards: only an after: tag does that.
                before = cycle[cycle.index(first) - 1]
                cycle = cycle[cycle.index(first) :] + cycle[: cycle.index(first)]
                self.error(
                    draft.first.index,
                    f"after:{before}" if before in draft.after else draft.tag,
                    "dependency cycle: " + " -> ".join([*cycle, cycle[0]]) + " (check the after: tags)",
                )
                return None
            done.append(ready)
            placed.add(ready.name)
            remaining.remove(ready)
        return done

    def _check_file_passing(self, pipeline: Pipeline, drafts: Sequence[_StepDraft]) -> None:
        if pipeline.volumes:
            return
        written: dict[str, str] = {}
        for draft in drafts:
            for cell in draft.cells:
                if cell.analysis is None:
                    continue
                for path in sorted(cell.analysis.paths_read):
                    writer = written.get(path, draft.name)
                    if writer != draft.name:
                        self.warn(
                            cell.index,
                            _cell_tag(cell.tags),
                            f"step {draft.name!r} reads file {path!r} that step {writer!r} writes; "
                            "on a cluster, files only travel through a shared volume: declare one in "
                            "the notebook's metadata.cellpipe.volumes (or pass the data as a variable)",
                        )
                for path in cell.analysis.paths_written:
                    written.setdefault(path, draft.name)


_EMPTY = CellAnalysis(
    python="",
    reads=frozenset(),
    assigns=frozenset(),
    imports=frozenset(),
    modules=frozenset(),
    mutates=frozenset(),
    functions={},
    uses_ipython=False,
    star_imports=frozenset(),
    opaque=False,
    paths_written=frozenset(),
    paths_read=frozenset(),
)


_USER_KEYS = {"cpu_request": "cpu", "memory_request": "memory", "timeout_seconds": "timeout"}


def _conflicts(tagged: tags.Settings, structured: tags.Settings) -> list[tuple[str, str]]:
    """(setting as users write it, what disagrees) where both forms set different values.

    List settings accumulate, so they only disagree when both give the same key different values.
    """
    found: list[tuple[str, str]] = []
    for key in sorted(set(tagged) & set(structured)):
        user_key = _USER_KEYS.get(key, key)
        if key in tags.KEYED_SETTINGS:
            from_tags = dict(tagged[key])
            for name, value in structured[key]:
                if name in from_tags and from_tags[name] != value:
                    found.append((user_key, f"{user_key.replace('_', '-')} {name}"))
        elif key not in tags.LIST_SETTINGS and tagged[key] != structured[key]:
            found.append((user_key, user_key.replace("_", "-")))
    return found


def _with_warnings(pipeline: Pipeline, warnings: list[Problem]) -> Pipeline:
    return replace(pipeline, warnings=tuple(sorted(warnings, key=_problem_order)))


def _find_cycle(incoming: Mapping[str, set[str]]) -> list[str]:
    """Some cycle among steps that are all blocked (each has an unplaced predecessor)."""
    start = sorted(incoming)[0]
    path: list[str] = []
    node = start
    while node not in path:
        path.append(node)
        node = sorted(p for p in incoming[node] if p in incoming)[0]
    cycle = path[path.index(node) :]
    cycle.reverse()
    return cycle


def _code_cell(cell: _Cell) -> CodeCell:
    python = cell.analysis.python if cell.analysis else cell.source
    return CodeCell(cell.index, cell.source, python)


def _cell_tag(cell_tags: tags.CellTags) -> str | None:
    if cell_tags.step:
        return f"step:{cell_tags.step}"
    return cell_tags.role


def _literal_assignment(node: ast.stmt) -> tuple[str | None, ast.expr | None]:
    if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
        return node.targets[0].id, node.value
    if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.value is not None:
        return node.target.id, node.value
    return None, None


def _pipeline_name(text: str) -> str:
    name = re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")
    return name or "pipeline"


def _step_name_from_file(stem: str) -> str:
    name = re.sub(r"[^a-z0-9_-]+", "-", stem.lower()).strip("-_")
    if not name or not name[0].isalpha():
        name = "nb-" + name
    return name[:63].rstrip("-_")
