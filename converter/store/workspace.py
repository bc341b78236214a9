"""Where the local engine keeps runs, logs and artifacts on this machine.

The workspace is one folder, ``$CELLPIPE_HOME`` or ``~/.cellpipe`` when that variable is unset::

    runs.db                          SQLite (WAL mode): runs, steps, attempts, metrics, events,
                                     cancel requests; safe for several engines and readers at once
    artifacts/<2 hex>/<digest>/      step output artifacts (one directory per value: value.<fmt>
                                     + meta.json, as the step runtime writes them); never modified
                                     once there, shared by every run that uses them
    artifacts/cache/<2 hex>/<key>.json   cache index: step cache key -> output digests and metrics
    artifacts/tmp/                   outputs of steps still running (moved into place on success)
    runs/<run_id>/zygote.log         stderr of the run's fork server (imports it preloaded, crashes)
    runs/<run_id>/<step>/            one folder per step of a run:
        log.txt                      stdout and stderr lines as they came, every attempt
        program.py                   the exact program the step ran (`python -c` text)
        cell_outputs.json            every cell's outputs, for the executed notebook (-o OUT.ipynb)
        report.html                  the step's HTML report (absent with report:off)
        metrics.json                 the step's metrics (only steps with a metrics cell)

A cached step runs nothing and writes no folder: its run store entry points at the folder of the
run that computed it. Deleting the workspace loses history and cache, never a notebook's own files
(steps run in the notebook's folder).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

HOME_VARIABLE = "CELLPIPE_HOME"


@dataclass(frozen=True)
class Workspace:
    root: Path

    @classmethod
    def default(cls) -> Workspace:
        """The workspace `$CELLPIPE_HOME` names, else `~/.cellpipe`."""
        configured = os.environ.get(HOME_VARIABLE)
        return cls(Path(configured).expanduser() if configured else Path.home() / ".cellpipe")

    @property
    def database(self) -> Path:
        return self.root / "runs.db"

    @property
    def artifacts(self) -> Path:
        return self.root / "artifacts"

    def run_folder(self, run_id: str) -> Path:
        return self.root / "runs" / run_id

    def step_folder(self, run_id: str, step: str) -> Path:
        return self.run_folder(run_id) / step


def step_folders(run_id: str, steps: list[str], workspace: Workspace | None = None) -> dict[str, Path]:
    """Each step's result folder; a cached step's is the folder of the run that computed it."""
    from converter.store.runstore import RunStore  # the store's module imports no workspace

    workspace = workspace or Workspace.default()
    folders = {step: workspace.step_folder(run_id, step) for step in steps}
    store = RunStore(workspace.database)
    try:
        for step in store.get_run(run_id).steps:
            if step.folder and step.name in folders:
                folders[step.name] = Path(step.folder)
    finally:
        store.close()
    return folders
