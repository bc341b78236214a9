"""How steps are ordered: data edges, after: tags, a stable topological order; files between steps."""

from __future__ import annotations

import functools
import importlib.util
import itertools
from collections.abc import Iterable, Mapping, Sequence

from converter.model import Edge, Pipeline
from converter.notebook.analysis import CellAnalysis
from converter.notebook.drafts import Report, StepDraft, cell_tag


def edges(
    drafts: list[StepDraft],
    step_inputs: Mapping[str, Mapping[str, str]],
    ordering: Iterable[tuple[str, str]] = (),
) -> tuple[Edge, ...]:
    """Data edges, then `after` edges for after: tags and for `ordering` (files, notebook order)."""
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
    linked = {(e.source, e.target) for e in edges}
    for source, target in ordering:
        if (source, target) not in linked and source in names and target in names:
            linked.add((source, target))
            edges.append(Edge(source, target, "after"))
    return tuple(sorted(edges, key=lambda e: (e.source, e.target)))


def file_order(
    report: Report, drafts: Sequence[StepDraft], step_analysis: Mapping[str, CellAnalysis]
) -> list[tuple[str, str]]:
    """(earlier, later) step pairs that must keep their notebook order because of the files they touch.

    A step reading a file after an earlier step writes it runs after that writer; a step writing a
    file runs after the earlier steps that read or wrote it. When a step touches files it cannot name
    (a computed path, a shell command), every step that touches files keeps its notebook order, and
    the warning says so: the analysis cannot be sure, so the notebook's order decides.
    """
    touching = [
        d
        for d in drafts
        if (a := step_analysis.get(d.name)) is not None
        and (a.paths_read or a.paths_written or a.paths_unknown)
    ]
    module_pairs = _module_order(drafts, step_analysis)
    unknown = [d for d in touching if step_analysis[d.name].paths_unknown]
    if unknown:
        for draft in unknown:
            cell = next((c for c in draft.cells if c.analysis and c.analysis.paths_unknown), draft.first)
            report.warn(
                cell.index,
                cell_tag(cell.tags),
                f"step {draft.name!r} touches files it cannot name (a computed path or a shell command): "
                "the steps that touch files run in notebook order",
            )
        return [(a.name, b.name) for a, b in itertools.pairwise(touching)] + module_pairs
    pairs: list[tuple[str, str]] = []
    writer: dict[str, str] = {}
    readers: dict[str, list[str]] = {}  # path -> steps that read it since it was last written
    for draft in touching:
        analysis = step_analysis[draft.name]
        for path in sorted(analysis.paths_read | analysis.paths_written):
            if path in writer:
                pairs.append((writer[path], draft.name))
        for path in sorted(analysis.paths_written):
            pairs.extend((reader, draft.name) for reader in readers.get(path, []))
        for path in analysis.paths_read:
            readers.setdefault(path, []).append(draft.name)
        for path in analysis.paths_written:
            writer[path] = draft.name
            readers[path] = []
    return [(a, b) for a, b in dict.fromkeys(pairs + module_pairs) if a != b]


def _module_order(
    drafts: Sequence[StepDraft], step_analysis: Mapping[str, CellAnalysis]
) -> list[tuple[str, str]]:
    """A step importing a module an earlier step may make runs after it.

    Made by writing `M.py` or `M/...` (`%%writefile helper.py`), or, for a module this environment
    cannot find, by any earlier step touching files it cannot name (`!pip install termcolor`).
    """
    pairs: list[tuple[str, str]] = []
    written: dict[str, str] = {}  # path -> last writer
    shell: list[str] = []  # steps touching files they cannot name
    for draft in drafts:
        analysis = step_analysis.get(draft.name)
        if analysis is None:
            continue
        for module in sorted(analysis.modules):
            makers = [w for p, w in written.items() if p == f"{module}.py" or p.startswith(f"{module}/")]
            if not makers and shell and not _findable(module):
                makers = list(shell)
            pairs.extend((maker, draft.name) for maker in makers if maker != draft.name)
        for path in analysis.paths_written:
            written[path] = draft.name
        if analysis.paths_unknown:
            shell.append(draft.name)
    return pairs


@functools.lru_cache(maxsize=1024)
def _findable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


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
