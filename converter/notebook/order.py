"""How steps are ordered: data edges, after: tags, a stable topological order; files between steps."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

from converter.model import Edge, Pipeline
from converter.notebook.drafts import Report, StepDraft, cell_tag


def edges(drafts: list[StepDraft], step_inputs: Mapping[str, Mapping[str, str]]) -> tuple[Edge, ...]:
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


def topological(report: Report, drafts: list[StepDraft], edges: Iterable[Edge]) -> list[StepDraft] | None:
    """Stable topological order (notebook order among ready steps); a cycle is an error."""
    position = {d.name: i for i, d in enumerate(drafts)}
    incoming: dict[str, set[str]] = {d.name: set() for d in drafts}
    for edge in edges:
        incoming[edge.target].add(edge.source)
    done: list[StepDraft] = []
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
            report.error(
                draft.first.index,
                f"after:{before}" if before in draft.after else draft.tag,
                "dependency cycle: " + " -> ".join([*cycle, cycle[0]]) + " (check the after: tags)",
            )
            return None
        done.append(ready)
        placed.add(ready.name)
        remaining.remove(ready)
    return done


def check_file_passing(report: Report, pipeline: Pipeline, drafts: Sequence[StepDraft]) -> None:
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
                    report.warn(
                        cell.index,
                        cell_tag(cell.tags),
                        f"step {draft.name!r} reads file {path!r} that step {writer!r} writes; "
                        "on a cluster, files only travel through a shared volume: declare one in "
                        "the notebook's metadata.cellpipe.volumes (or pass the data as a variable)",
                    )
            for path in cell.analysis.paths_written:
                written.setdefault(path, draft.name)


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
