"""Grouping cells into steps and roles (imports, functions, parameters, metrics) and the left-out preamble."""

from __future__ import annotations

from pathlib import Path

from converter.notebook import tags
from converter.notebook.drafts import Cell, Report, StepDraft, cell_tag
from converter.notebook.naming import step_name_from_file


def group(report: Report, cells: list[Cell]) -> tuple[list[StepDraft], dict[str, list[Cell]], list[Cell]]:
    """Assign every cell to a step, a role, or the left-out preamble."""
    roles: dict[str, list[Cell]] = {}
    drafts: list[StepDraft] = []
    preamble: list[Cell] = []
    by_name: dict[str, StepDraft] = {}
    tagged = any(c.tags.step or c.tags.continues for c in cells)
    report.lenient = not tagged
    for cell, message in report.deferred:
        if cell.tags.role in ("parameters", "metrics"):  # not run as cells: nothing would stop there
            report.error_at(cell, message)
        else:
            report.code_error(cell, message)
    report.deferred.clear()
    if not tagged:
        name = step_name_from_file(Path(report.notebook).stem)
        first = next((c for c in cells if c.tags.role is None), None)
        if first is not None:
            drafts.append(StepDraft(name, first, "notebook"))
    current: StepDraft | None = drafts[0] if drafts else None
    for cell in cells:
        t = cell.tags
        if t.role is not None:
            if t.step or t.continues:
                report.error(cell.index, cell_tag(t), f"a {t.role} cell cannot also be a step")
            for key in sorted(set(t.settings) | set(t.structured)):
                report.warn(cell.index, key, f"settings on a {t.role} cell are ignored")
            roles.setdefault(t.role, []).append(cell)
            continue
        if t.step is not None:
            existing = by_name.get(t.step)
            if existing is not None and existing is current:
                pass  # a repeated tag on the next cell of the same step: harmless
            elif existing is not None:
                report.error(
                    cell.index,
                    f"step:{t.step}",
                    f"duplicate step name {t.step!r}: cell {existing.first.index} already starts it "
                    "(to continue a step, leave the cell untagged or use step: with no name)",
                )
                continue
            elif t.step.replace("_", "-") in {n.replace("_", "-") for n in by_name}:
                other = next(n for n in by_name if n.replace("_", "-") == t.step.replace("_", "-"))
                report.error(
                    cell.index,
                    f"step:{t.step}",
                    f"step {t.step!r} collides with step {other!r}: KFP sees both as "
                    f"{t.step.replace('_', '-')!r}",
                )
                continue
            else:
                current = StepDraft(t.step, cell, f"step:{t.step}")
                by_name[t.step] = current
                drafts.append(current)
        elif current is None:
            if t.continues:
                report.error(cell.index, "step:", "step: with no name continues a step, but no step is above")
            elif cell.source.strip():
                report.warn(
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
                report.warn(cell.index, "after", f"after: on a {role} cell is ignored")
    return drafts, roles, preamble
