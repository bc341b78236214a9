"""The program each step runs, and its command line: one definition for every output and engine.

A step is `python3 -c PROGRAM RUNTIME ARGS...`. PROGRAM is a one-line loader plus the step's spec;
RUNTIME, its first argument, is `converter/step/runtime.py`'s source with the step modules it
inlines (`values`, `outputs`), packed, which the loader runs first. The runtime is the same for
every step, so the compiled pipeline carries it once, as the default of a pipeline-level input
(`RUNTIME_PARAMETER`) every step reads, and not once per step: a KFP backend turns the whole
pipeline into one Argo Workflow object, which must fit in 256 KiB (KFP <= 2.2 keeps component
logic in annotations, kubeflow/pipelines#10968) and in etcd's 1.5 MiB.

The KFP output puts exactly this command in a container component; the local engine runs exactly
this command (with the same packed runtime as RUNTIME) in a process. Changing the generated code
here changes both ("run what you ship").
"""

from __future__ import annotations

import ast
import functools
import json
import keyword
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from converter.model import CodeCell, Pipeline, Step
from converter.step import carry
from converter.step import requirements as packaging

ArgKind = Literal["literal", "input", "output", "parameter", "runtime"]
KFP_EXECUTOR_OUTPUT = "/tmp/kfp_outputs/output_metadata.json"  # read by the KFP v2 launcher after the command
RUNTIME_PARAMETER = "cellpipe_runtime"  # the pipeline input holding the packed runtime
METRICS_ARTIFACT = "metrics"
REPORT_ARTIFACT = "report"
# Names the generated DSL module uses itself; steps with these names get a suffix in Python.
_DSL_NAMES = frozenset(
    {"dsl", "kubernetes", "compiler", "packed", "Artifact", "HTML", "Input", "Metrics", "Output", "pipeline"}
)


@dataclass(frozen=True)
class Arg:
    """One argv token: a literal, or a placeholder an engine fills in (artifact path or parameter value)."""

    kind: ArgKind
    value: str  # the literal text, the artifact / parameter name, or RUNTIME_PARAMETER
    if_present: str | None = None  # part of an optional parameter's flag: left out when it has no value


# A line of runtime.py importing one of the step program's other modules, which are inlined there.
_INLINED = re.compile(r"^from converter\.step\.(\w+) import .*# inlined: stepcode$", re.M)


@functools.cache
def runtime_source() -> str:
    """The step program's runtime as one self-contained source: `runtime.py` with the modules it marks
    `# inlined: stepcode` (values, outputs) put in place of their import lines, since a pod has no
    cellpipe package to import them from."""
    text = (Path(__file__).parent / "runtime.py").read_text(encoding="utf-8")
    return _INLINED.sub(lambda match: _module_body(match.group(1)), text)


def _module_body(name: str) -> str:
    """A step module's source without its docstring and `from __future__` line (runtime.py has both)."""
    source = (Path(__file__).parent / f"{name}.py").read_text(encoding="utf-8")
    tree = ast.parse(source)
    future = [node for node in tree.body if isinstance(node, ast.ImportFrom) and node.module == "__future__"]
    skip = {node.lineno for node in future}
    first = tree.body[0]
    if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
        skip.update(range(first.lineno, (first.end_lineno or first.lineno) + 1))
    kept = [line for number, line in enumerate(source.splitlines(), 1) if number not in skip]
    return "\n".join(kept).strip("\n")


def spec(pipeline: Pipeline, step: Step) -> dict[str, object]:
    """What the runtime needs to know about a step, as a JSON-compatible dict."""
    types = {p.name: p.type for p in pipeline.parameters}
    cells = [
        *(_cell_spec(c, "imports") for c in pipeline.imports),
        *(_cell_spec(c, "functions") for c in pipeline.functions),
        *carry.replay_cells(pipeline, step),  # earlier steps' imports and process-wide state
        *(_cell_spec(c, "step") for c in step.cells),
    ]
    result: dict[str, object] = {
        "step": step.name,
        "notebook": Path(pipeline.notebook).name,
        "cells": cells,
        "inputs": list(step.inputs),
        "outputs": list(step.outputs),
        "parameters": {name: types[name] for name in step.parameters},
        "metrics": list(step.metrics),
        "requirements": packaging.module_requirements(
            {*step.modules, *(["IPython"] if step.uses_ipython else [])}, step.packages
        ),
        "ipython": step.uses_ipython,
    }
    if step.model_candidates:  # serve: which value is the model is known only when the step has run
        result["serve"] = {
            "framework": step.settings.serve,
            "output": step.model_output,
            "candidates": list(step.model_candidates),
        }
    optional = sorted(optional_parameters(pipeline) & set(step.parameters))
    if optional:
        result["optional"] = optional  # may arrive without a value: then None
    return result


def _cell_spec(cell: CodeCell, role: str) -> dict[str, object]:
    """`code` runs; `source` (only where magics made them differ) is what the report shows."""
    spec: dict[str, object] = {"index": cell.index, "role": role, "code": cell.python}
    if cell.source.rstrip("\n") != cell.python.rstrip("\n"):  # not for the newline `python` ends with
        spec["source"] = cell.source
    if cell.raises:
        spec["raises"] = True
    return spec


def step_tail(pipeline: Pipeline, step: Step) -> str:
    """The step-specific end of the program, appended to the shared runtime source.

    Laid out for people: cell code appears as code blocks, not as escaped one-liners.
    """
    lines = [""]
    if step.model_candidates:  # the runtime chooses the served model among the step's values
        lines += [model_choice_source(), ""]
    lines += ["SPEC = {"]
    for key, value in spec(pipeline, step).items():
        if key == "cells":
            lines.append('    "cells": [')
            for cell in value:  # type: ignore[attr-defined]
                code = _code_literal(cell["code"])
                source = f', "source": {_code_literal(cell["source"])}' if "source" in cell else ""
                source += ', "raises": True' if cell.get("raises") else ""
                source += f', "step": {json.dumps(cell["step"])}' if "step" in cell else ""
                lines.append(
                    f'        {{"index": {cell["index"]}, "role": "{cell["role"]}", "code": {code}{source}}},'
                )
            lines.append("    ],")
        else:
            text = repr(value) if isinstance(value, bool) else json.dumps(value, ensure_ascii=False)
            lines.append(f'    "{key}": {text},')
    lines += ["}", "raise SystemExit(run_step(SPEC, sys.argv[1:]))", ""]
    return "\n".join(lines)


def _code_literal(code: str) -> str:
    """Cell code as a raw double-quoted block when exact (the DSL wraps the tail in single quotes)."""
    if '"""' not in code and "'''" not in code and not code.endswith(("\\", '"')) and "\r" not in code:
        candidate = 'r"""' + code + '"""'
        try:
            if ast.literal_eval(candidate) == code:
                return candidate
        except (SyntaxError, ValueError):
            pass
    return repr(code)


def packed(source: str) -> str:
    """Source as a zlib+base85 blob that executes itself.

    Packed, the runtime costs ~16 kB instead of ~39 kB in the compiled pipeline (once per pipeline)
    and on each pod's command line. The readable source stays in the generated DSL (this function's
    own text is copied there too). One line, because KFP copies a pipeline input's default into
    the comment atop the YAML, where a line break would end the comment mid-value.
    """
    import base64
    import zlib

    blob = base64.b85encode(zlib.compress(source.encode("utf-8"), 9)).decode("ascii")
    return f"import base64, zlib; exec(zlib.decompress(base64.b85decode({blob!r})))"  # one line: see below


@functools.cache
def model_choice_source() -> str:
    """`converter/step/model_choice.py` without its module header (the runtime's imports cover it)."""
    source = (Path(__file__).parent / "model_choice.py").read_text(encoding="utf-8")
    return source[source.index("\ndef ") + 1 :]


@functools.cache
def packed_runtime() -> str:
    return packed(runtime_source())


# Runs the runtime given as the first argument, in this module's namespace, then the step's spec.
LOADER = "import sys\nexec(sys.argv.pop(1))  # the cellpipe step runtime, passed in once per pipeline\n"


def program(pipeline: Pipeline, step: Step) -> str:
    """The exact program text the step runs, on a pod and locally; its first argument is the runtime."""
    return LOADER + step_tail(pipeline, step)


def artifact_names(step: Step) -> tuple[dict[str, str], dict[str, str]]:
    """Variable -> KFP artifact name, for the step's inputs and outputs.

    Inputs keep the variable's name. An output that is also an input (a mutated value passed on)
    and names our own artifacts use get a suffix, since one component cannot reuse a name.
    """
    used = {METRICS_ARTIFACT, REPORT_ARTIFACT, *step.parameters}
    inputs: dict[str, str] = {}
    for var in step.inputs:
        inputs[var] = _unique(var, used)
    outputs: dict[str, str] = {}
    for var in step.outputs:
        outputs[var] = _unique(var if var not in step.inputs else f"{var}_updated", used)
    return inputs, outputs


def _unique(name: str, used: set[str]) -> str:
    candidate = name
    while candidate in used:
        candidate = f"{candidate}_"
    used.add(candidate)
    return candidate


def arguments(
    step: Step, executor_output: str | None = KFP_EXECUTOR_OUTPUT, optional: frozenset[str] = frozenset()
) -> list[Arg]:
    """The step's argv after the program, with placeholders for the runtime, artifacts and parameters.

    `optional` names parameters that may have no value (default None): their flags carry `if_present`.
    """
    inputs, outputs = artifact_names(step)
    args: list[Arg] = [Arg("runtime", RUNTIME_PARAMETER)]  # read by LOADER
    for var, name in inputs.items():
        args += [Arg("literal", "--input"), Arg("literal", var), Arg("input", name)]
    for param in step.parameters:
        group = param if param in optional else None
        args += [Arg("literal", "--param", group), Arg("literal", param, group)]
        args.append(Arg("parameter", param, group))
    for var, name in outputs.items():
        args += [Arg("literal", "--output"), Arg("literal", var), Arg("output", name)]
    if step.metrics:
        args += [Arg("literal", "--metrics"), Arg("output", METRICS_ARTIFACT)]
    if step.settings.report:
        args += [Arg("literal", "--report"), Arg("output", REPORT_ARTIFACT)]
    if executor_output:
        args += [Arg("literal", "--executor-output"), Arg("literal", executor_output)]
    return args


def optional_parameters(pipeline: Pipeline) -> frozenset[str]:
    return frozenset(p.name for p in pipeline.parameters if p.optional)


def python_names(pipeline: Pipeline) -> dict[str, str]:
    """Step name -> a Python identifier for its component function, clear of every other name used."""
    taken = set(_DSL_NAMES) | {p.name for p in pipeline.parameters}
    names: dict[str, str] = {}
    for step in pipeline.steps:
        name = step.name.replace("-", "_")
        if keyword.iskeyword(name) or name in taken:
            name = f"{name}_step"
        names[step.name] = _unique(name, taken)
    return names


def task_name(python_name: str) -> str:
    """KFP derives task and component names from the function name this way."""
    return python_name.replace("_", "-")
