"""Data flow: each step's inputs (names an earlier step assigned), outputs, parameters, and the steps."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from converter.model import Edge, Parameter, Step, StepSettings
from converter.notebook import boundaries, metrics, order, served, tags
from converter.notebook.analysis import BUILTIN_NAMES, ArgumentEffects, CellAnalysis, analyze_sequence
from converter.notebook.drafts import EMPTY, Cell, Report, StepDraft, code_cell
from converter.step import carry
from converter.step import requirements as packaging


def data_flow(
    report: Report,
    drafts: list[StepDraft],
    roles: dict[str, list[Cell]],
    preamble: list[Cell],
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
        c.index for c in preamble + [c for d in drafts for c in d.cells] if c.analysis and c.analysis.opaque
    ]
    if common and common.reads - BUILTIN_NAMES - common_names:
        for cell in roles.get("imports", []) + roles.get("functions", []):
            if cell.analysis:
                missing = sorted(cell.analysis.reads - BUILTIN_NAMES - common_names - param_names)
                for name in missing:
                    report.error(
                        cell.index,
                        cell.tags.role,
                        f"name {name!r} is not defined (imports and functions cells run first in "
                        "every step and can only use each other's names)",
                    )

    names = {d.name for d in drafts}
    for draft in drafts:
        for target in draft.after:
            if target not in names:
                report.error(draft.first.index, f"after:{target}", f"after: names unknown step {target!r}")
            elif target == draft.name:
                report.error(draft.first.index, f"after:{target}", "a step cannot run after itself")

    # Walk the steps in notebook order, as a top-to-bottom run would.
    definitions: dict[str, str] = {}
    step_inputs: dict[str, dict[str, str]] = {}  # step -> variable -> producer
    step_params: dict[str, set[str]] = {}
    step_analysis: dict[str, CellAnalysis] = {}
    # Functions defined so far (functions cells, then steps) -> the arguments a call may change.
    mutators: dict[str, ArgumentEffects | None] = {}
    imported: set[str] = set()  # names bound by an import (imports cells, then steps): library code
    if common is not None:
        mutators = {n: common.mutating_functions.get(n) for n in common.functions}
        imported = set(common.imports)
    # Earlier steps' imports are replayed in later ones (converter/step/carry.py): their modules too.
    earlier_modules: set[str] = set()
    modules_before: dict[str, set[str]] = {}
    # The global random state travels from step to step once something seeds it (carry.RANDOM_STATE).
    shared_cells = [code_cell(c) for c in roles.get("imports", []) + roles.get("functions", [])]
    module_aliases = carry.aliases([*shared_cells, *(code_cell(c) for d in drafts for c in d.cells)])
    random_live = carry.random_use(shared_cells, module_aliases)[0]
    for draft in drafts:
        modules_before[draft.name] = set(earlier_modules)
        analyses = [c.analysis for c in draft.cells if c.analysis is not None]
        if report.lenient and len(analyses) != len(draft.cells):  # the run stops at the broken cell
            before = draft.cells[: draft.cells.index(_broken(draft))]
            analyses = [c.analysis for c in before if c.analysis is not None]
        if len(analyses) != len(draft.cells) and not report.lenient:
            step_analysis[draft.name] = analyze_sequence(analyses) if analyses else EMPTY
            continue
        block = analyze_sequence(analyses)
        step_analysis[draft.name] = block
        earlier_modules |= set(block.modules)
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
            elif name in imported:
                continue  # imported by an earlier step: replayed here, as the notebook would have it
            elif name in param_names:
                params.add(name)
            elif name in preamble_defs:
                report.error_at(
                    reading_cell(draft, name),
                    f"step {draft.name!r} reads {name!r}, which only cell {preamble_defs[name]} defines, "
                    "and that cell is left out of the pipeline (tag it as a step, imports or functions)",
                )
            elif name in block.weak_reads:
                continue  # maybe bound by the step itself first, or a shell line's environment variable
            elif opaque_before and min(opaque_before) <= draft.cells[-1].index:
                continue  # a %run, exec or star import may define it: cannot tell
            else:
                report.code_error(
                    reading_cell(draft, name),
                    f"name {name!r} is not defined before step {draft.name!r} "
                    "(not a builtin, import, parameter or earlier step's variable)",
                )
        seeds, uses_random = carry.random_use([code_cell(c) for c in draft.cells], module_aliases)
        random_live = random_live or seeds
        if random_live and uses_random:
            if carry.RANDOM_STATE in definitions:
                inputs[carry.RANDOM_STATE] = definitions[carry.RANDOM_STATE]
            definitions[carry.RANDOM_STATE] = draft.name
        step_inputs[draft.name] = inputs
        step_params[draft.name] = params
        for name in block.assigns - block.imports:
            definitions[name] = draft.name
        changed, assumed = _changed(block, seen, common, mutators, imported)
        assumed &= set(inputs)
        if assumed:
            report.warn(
                draft.first.index,
                draft.tag,
                f"step {draft.name!r} may change {', '.join(map(repr, sorted(assumed)))} (a method or "
                "function the analysis cannot prove harmless): later steps read its version, in notebook "
                "order",
            )
        for name in sorted(changed & set(inputs)):
            definitions[name] = draft.name  # later readers get the (possibly) changed version
        for name in block.imports:
            definitions.pop(name, None)
            mutators.pop(name, None)
        imported = (imported - block.assigns) | set(block.imports)
        for name in block.assigns - block.imports:
            if name in block.functions:
                mutators[name] = block.mutating_functions.get(name)
            elif name not in block.conditional_assigns:
                mutators.pop(name, None)

    metrics_of = metrics.producers(report, roles.get("metrics", []), drafts, step_analysis, param_names)
    hosted = metrics.hosts(
        report, roles.get("metrics", []), drafts, step_analysis, step_inputs, param_names | common_names
    )
    for step, cells in hosted.items():  # the metrics cell runs there: it needs the parameters it shows
        reads = set().union(*(c.analysis.reads for c in cells if c.analysis))
        metrics_of.setdefault(step, set()).update(reads & param_names)
    for step, names in metrics_of.items():  # a parameter reported as a metric: the step needs its value
        inputs = step_inputs.get(step, {})
        step_params.setdefault(step, set()).update(n for n in names if n in param_names and n not in inputs)
    # Resource and cycle checks run even when other errors were found: every problem at once.
    settings_of = {
        d.name: tags.to_step_settings(tags.merge([meta["defaults"], d.settings, d.structured]))
        for d in drafts
    }
    for draft in drafts:
        tags.check_resources(report.notebook, draft.first.index, settings_of[draft.name], report.problems)
    # A step runs after the last step above it that sets process-wide state it replays (%cd into a
    # folder that step made, say): state travels along the notebook's order.
    state_order: list[tuple[str, str]] = []
    setter: str | None = None
    module_writers: dict[str, str] = {}  # a module %%writefile wrote -> the step that wrote it
    for draft in drafts:
        written, imported_modules = carry.module_files([code_cell(c) for c in draft.cells])
        state_order += [
            (module_writers[m], draft.name) for m in sorted(imported_modules) if m in module_writers
        ]
        module_writers.update(dict.fromkeys(written, draft.name))
        if setter is not None:
            state_order.append((setter, draft.name))
        if carry.sets_state([code_cell(c) for c in draft.cells], module_aliases):
            setter = draft.name
            if draft is not drafts[-1]:
                report.warn(
                    draft.first.index,
                    draft.tag,
                    f"step {draft.name!r} sets process-wide state the later steps replay: the steps after it "
                    "run after it, in notebook order",
                )
    chained = [d.name for d in drafts if carry.RANDOM_STATE in step_inputs.get(d.name, {})]
    if chained:
        first = next(d for d in drafts if d.name == chained[0])
        report.warn(
            first.first.index,
            first.tag,
            "the global random generators are seeded: the steps drawing from them run in notebook order "
            f"({', '.join(map(repr, chained))} each after the one before)",
        )
    ordering = [*order.file_order(report, drafts, step_analysis), *state_order]
    edges = order.edges(drafts, step_inputs, ordering)
    ordered = order.topological(report, drafts, edges)
    boundaries.warn_unpassable(report, drafts, step_inputs)
    if ordered is None or any(p.severity == "error" for p in report.problems):
        return None, None

    outputs: dict[str, set[str]] = {d.name: set() for d in drafts}
    for inputs in step_inputs.values():
        for name, producer in inputs.items():
            outputs[producer].add(name)
    models: dict[str, tuple[str, tuple[str, ...]]] = {}
    for draft in drafts:
        if settings_of[draft.name].serve:
            model = served_model(report, draft, settings_of[draft.name], step_analysis, step_inputs)
            models[draft.name] = model
            outputs[draft.name].add(model[0])
    steps = []
    imports_cells = roles.get("imports", []) + roles.get("functions", [])
    for draft in ordered:
        settings = settings_of[draft.name]
        block = step_analysis[draft.name]
        modules = set(block.modules) | {m for c in imports_cells if c.analysis for m in c.analysis.modules}
        modules |= modules_before.get(draft.name, set())
        uses_ipython = block.uses_ipython or any(c.analysis.uses_ipython for c in imports_cells if c.analysis)
        steps.append(
            Step(
                name=draft.name,
                cells=tuple(
                    code_cell(c) for c in sorted([*draft.cells, *hosted.get(draft.name, [])], key=_index)
                ),
                inputs=tuple(sorted(step_inputs[draft.name])),
                outputs=tuple(sorted(outputs[draft.name])),
                parameters=tuple(sorted(step_params[draft.name])),
                metrics=tuple(sorted(metrics_of.get(draft.name, ()))),
                after=tuple(draft.after),
                packages=packaging.requirements(modules, meta["packages"], settings.packages, uses_ipython),
                settings=settings,
                uses_ipython=uses_ipython,
                modules=tuple(sorted(modules)),
                model_output=models[draft.name][0] if draft.name in models else None,
                model_candidates=models[draft.name][1] if draft.name in models else (),
            )
        )
    return tuple(steps), edges


def served_model(
    report: Report,
    draft: StepDraft,
    settings: StepSettings,
    step_analysis: dict[str, CellAnalysis],
    step_inputs: dict[str, dict[str, str]],
) -> tuple[str, tuple[str, ...]]:
    """The output holding a serve: step's model (see `converter.notebook.served`)."""
    block = step_analysis[draft.name]
    assigns = block.assigns - block.imports - set(block.functions)
    mutated = block.mutates & set(step_inputs[draft.name])
    try:
        return served.served_model(draft.name, settings, assigns, mutated)
    except served.NoModel as problem:
        named = f":{settings.serve_variable}" if settings.serve_variable else ""
        report.error(draft.first.index, f"serve:{settings.serve}{named}", str(problem))
        return served.DEFAULT_NAME, ()


def reading_cell(draft: StepDraft, name: str) -> Cell:
    for cell in draft.cells:
        if cell.analysis and (
            name in cell.analysis.reads or any(name in f for f in cell.analysis.functions.values())
        ):
            return cell
    return draft.first


def assigning_cell(draft: StepDraft, name: str) -> Cell:
    for cell in draft.cells:
        if cell.analysis and name in cell.analysis.assigns:
            return cell
    return draft.first


def _changed(
    block: CellAnalysis,
    called: set[str],
    common: CellAnalysis | None,
    mutators: Mapping[str, ArgumentEffects | None],
    imported: set[str],
) -> tuple[set[str], set[str]]:
    """Names the step may change in place (mutated, or not provably left alone), and the latter alone.

    `called` holds the functions-cell functions the step reaches: their changes to globals count.
    A value passed to a function the notebook defined counts when that function may change that
    argument; passed to a function of unknown origin (not imported, not defined), it counts too.
    """
    changed, assumed = set(block.mutates), set(block.may_mutate)
    if common is not None:
        for fn in called:
            changed |= common.function_mutates.get(fn, frozenset())
    for callee, sites in block.calls.items():
        for site in sites:
            if callee in mutators:
                effects = mutators[callee]
                changed |= effects.changed_by(site) if effects else frozenset()
            elif callee not in imported:
                assumed |= site.roots()
    return changed | assumed, assumed - changed


def _broken(draft: StepDraft) -> Cell:
    """The step's first cell with a syntax error."""
    return next(c for c in draft.cells if c.analysis is None)


def _index(cell: Cell) -> int:
    return cell.index
