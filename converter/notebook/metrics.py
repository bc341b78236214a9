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
    """Each metric is recorded by the last step before the metrics cell that assigns it."""
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
