"""The metrics cell: which step records each metric it names."""

from __future__ import annotations

from collections.abc import Mapping

from converter.notebook.analysis import BUILTIN_NAMES, CellAnalysis
from converter.notebook.drafts import EMPTY, Cell, Report, StepDraft


def producers(
    report: Report,
    cells: list[Cell],
    drafts: list[StepDraft],
    step_analysis: Mapping[str, CellAnalysis],
    param_names: set[str],
) -> dict[str, set[str]]:
    """Each metric is recorded by the last step before the metrics cell that assigns it.

    A pipeline parameter no step assigns is reported by the last step before the cell (Kale's
    `pipeline-metrics` cells list parameters beside results); dataflow gives that step its value.
    """
    metrics_of: dict[str, set[str]] = {}
    for cell in cells:
        if cell.analysis is None:
            continue
        producers = [d for d in drafts if d.first.index < cell.index]
        for name in sorted(cell.analysis.reads - BUILTIN_NAMES):
            producer = next(
                (d for d in reversed(producers) if name in step_analysis.get(d.name, EMPTY).assigns),
                None,
            )
            if producer is None and name in param_names and producers:
                producer = producers[-1]
            if producer is None:
                report.error(
                    cell.index, "metrics", f"metric {name!r} is not assigned by any step before this cell"
                )
            else:
                metrics_of.setdefault(producer.name, set()).add(name)
        if cell.analysis.assigns:
            report.warn(
                cell.index,
                "metrics",
                "a metrics cell only names values; its assignments are not run in the pipeline",
            )
    return metrics_of


def hosts(
    report: Report,
    cells: list[Cell],
    drafts: list[StepDraft],
    step_analysis: Mapping[str, CellAnalysis],
    step_inputs: Mapping[str, Mapping[str, str]],
    known: set[str],
) -> dict[str, list[Cell]]:
    """Metrics cells that also run, as the notebook runs them, at the end of the last step before them.

    Under papermill a metrics cell runs like any other (Kale's print their values): it runs in the
    last step before it when that step has every name it reads (assigned there, an input of it, or
    in `known`: parameters, imports and functions), and it assigns nothing. Otherwise the output
    notebook cannot show what it prints, and a warning says so.
    """
    found: dict[str, list[Cell]] = {}
    for cell in cells:
        last = next((d for d in reversed(drafts) if d.first.index < cell.index), None)
        if cell.analysis is None or last is None:
            continue
        available = set(step_analysis.get(last.name, EMPTY).assigns) | set(step_inputs.get(last.name, {}))
        missing = sorted(cell.analysis.reads - BUILTIN_NAMES - available - known)
        if not missing and not cell.analysis.assigns:
            found.setdefault(last.name, []).append(cell)
        elif not cell.analysis.assigns:
            report.warn(
                cell.index,
                "metrics",
                f"the metrics cell does not run in the pipeline (step {last.name!r} does not have "
                f"{', '.join(map(repr, missing))}): what it shows is missing from the output notebook",
            )
    return found
