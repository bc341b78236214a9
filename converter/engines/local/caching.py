"""Whether a ready step runs at all, and keeping what a step computed for later runs.

When a step's upstream steps are done, `StepCache.prepare` works out its cache key: its program, its
inputs' digests, its parameters rendered as KFP renders them, its image, packages and environment
(`converter.store.artifacts.cache_key`). Then ``--resume`` takes the step over from the earlier run when
nothing it computed from changed (`reuse`); else an earlier successful execution with the same key
supplies its outputs (`lookup`, unless caching is off for the step or the run); else it runs, and
`keep` commits a succeeded attempt's staged outputs and remembers them under the key.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from converter.engines.base import RunRequest
from converter.engines.local.steprun import StepRun
from converter.errors import CellpipeError
from converter.model import Pipeline
from converter.notebook.parameters import render_parameter
from converter.step import stepcode
from converter.store.artifacts import ArtifactStore, CacheEntry, cache_key
from converter.store.runstore import RunStore, StepOutcome


def rendered(value: object) -> str | None:
    """None stays None: an optional parameter without a value gets no flag at all."""
    return None if value is None else render_parameter(value)


@dataclass(frozen=True)
class Reuse:
    """What a step gets without running: outputs, metrics, and where they come from (its step_cached)."""

    outputs: dict[str, str]
    metrics: dict[str, float]
    message: str
    data: dict[str, Any]


class StepCache:
    """The cache and ``--resume`` decisions of one run (see the module docstring)."""

    def __init__(
        self,
        pipeline: Pipeline,
        request: RunRequest,
        values: Mapping[str, Any],
        programs: Mapping[str, str],
        artifacts: ArtifactStore,
        store: RunStore,
    ):
        self.pipeline, self.request, self.values, self.programs = pipeline, request, values, programs
        self.artifacts = artifacts
        self.reusable: dict[str, StepOutcome] = {}
        self.resumed_parameters: dict[str, Any] = {}
        self.resume_id: str | None = None
        self.reused: set[str] = set()  # steps taken over from the resumed run
        if request.resume:
            self._resume_from(store, request.resume)

    def _resume_from(self, store: RunStore, run_id: str) -> None:
        earlier = store.get_run(run_id)
        if earlier.pipeline and earlier.pipeline != self.pipeline.name:
            raise CellpipeError(
                f"cannot resume run {earlier.id}: it ran pipeline {earlier.pipeline!r}, "
                f"not {self.pipeline.name!r}"
            )
        self.resume_id = earlier.id
        self.reusable = store.step_succeeded_outputs(earlier.id)
        self.resumed_parameters = earlier.parameters

    def prepare(self, run: StepRun, steps: Mapping[str, StepRun]) -> None:
        """Fill in the step's inputs, rendered parameters, cache key and whether it may be cached."""
        step = run.step
        run.inputs = {var: steps[self.pipeline.producer(step.name, var)].outputs[var] for var in step.inputs}
        run.params = {name: rendered(self.values[name]) for name in step.parameters}
        run.key = cache_key(
            stepcode.packed_runtime() + "\n" + self.programs[step.name],  # the command: runtime and program
            run.inputs,
            run.params,
            step.settings.image or self.pipeline.image,
            step.packages,
            step.settings.env,
        )
        setting = step.settings.cache if step.settings.cache is not None else self.pipeline.cache_default
        if self.request.use_cache is None:  # the default: only what the notebook asks to reuse
            run.cacheable = step.settings.cache is True
        else:
            run.cacheable = self.request.use_cache and setting

    def reuse(self, run: StepRun) -> Reuse | None:
        """--resume: a step that succeeded in the earlier run is kept, unless what it computed from
        changed: a parameter it reads, or an upstream step that runs again."""
        name = run.step.name
        outcome = self.reusable.get(name)
        if outcome is None or not all(u in self.reused for u in self.pipeline.upstream(name)):
            return None
        old = self.resumed_parameters
        same_parameters = all(
            param in old and rendered(old[param]) == value for param, value in run.params.items()
        )
        outputs_there = all(
            var in outcome.outputs and self.artifacts.exists(outcome.outputs[var]) for var in run.step.outputs
        )
        if not (same_parameters and outputs_there):
            return None
        self.reused.add(name)
        return Reuse(
            {v: outcome.outputs[v] for v in run.step.outputs},
            dict(outcome.metrics),
            f"from run {self.resume_id}",
            {
                "folder": outcome.folder,
                "log": outcome.log_path,
                "from_run": self.resume_id,
                "cache_key": outcome.cache_key,
            },
        )

    def lookup(self, run: StepRun) -> Reuse | None:
        """An earlier successful execution with the step's cache key."""
        if not run.cacheable:
            return None
        entry = self.artifacts.lookup(run.key, run.step.outputs)
        if entry is None:
            return None
        log = str(Path(entry.folder) / "log.txt")
        return Reuse(
            {v: entry.outputs[v] for v in run.step.outputs},
            dict(entry.metrics),
            f"from run {entry.run_id}",
            {"folder": entry.folder, "log": log, "from_run": entry.run_id, "cache_key": run.key},
        )

    def keep(self, run: StepRun, folder: Path, run_id: str) -> None:
        """A succeeded attempt: commit its staged outputs, read its metrics, remember both by its key.

        Sets `run.outputs` and `run.metrics`; raises OSError or ValueError when they cannot be kept.
        """
        step = run.step
        execution = None if run.cacheable else f"{run_id}.{step.name}.{run.attempt}"
        outputs = self.artifacts.commit(run.staged, run.key, execution)
        self.discard_staging(run)
        metrics: dict[str, float] = {}
        if step.metrics and (folder / "metrics.json").is_file():
            values = json.loads((folder / "metrics.json").read_text(encoding="utf-8"))
            metrics = {k: float(v) for k, v in values.items()}
        run.outputs, run.metrics = outputs, metrics
        self.artifacts.remember(run.key, CacheEntry(outputs, metrics, str(folder), run_id, step.name))

    def discard_staging(self, run: StepRun) -> None:
        if run.staging is not None:
            self.artifacts.discard(run.staging)
            run.staging = None
