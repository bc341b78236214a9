"""Starting a run from the kernel (`run_notebook`) and following one started elsewhere (`watch`).

Both return a `RunMonitor`; it reads nothing but the event stream, so local and KFP runs, and runs
started in a terminal or by the server, look the same.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping
from pathlib import Path

from converter.engines.base import RunRequest
from converter.engines.registry import get_engine
from converter.notebook.parameters import typed_values
from converter.notebook.reader import read_notebook
from jupyter_ext.runs import LiveRun
from jupyter_ext.widgets.monitor import RunMonitor

STORE_POLL_SECONDS = 0.5


def run_notebook(
    path: str | Path,
    parameters: Mapping[str, object] | None = None,
    engine: str = "local",
    wait: bool = False,
    use_cache: bool | None = None,
) -> RunMonitor:
    """Run a notebook as a pipeline from this kernel, on a thread; the monitor of the run.

    Parameters are checked against the notebook's parameters cell before anything starts. With
    `wait`, returns once the run ended; interrupting the kernel then cancels the run.
    """
    notebook = Path(path)
    pipeline = read_notebook(notebook)
    values = typed_values(pipeline, dict(parameters or {}))
    runner = get_engine(engine)
    monitor = RunMonitor(cancel=runner.cancel)
    run = LiveRun(runner, RunRequest(pipeline, notebook.resolve(), values, use_cache), [monitor.feed])
    run.start().result()  # the engine's refusal (resources, parameters) is raised here
    if wait:
        try:
            monitor.wait()
        except KeyboardInterrupt:
            runner.cancel()
            monitor.wait()
            raise
    return monitor


def watch(run_id: str) -> RunMonitor:
    """Monitor a run started elsewhere (``cellpipe run``, another kernel, the server) from the run store.

    The store keeps every event but log lines, so the log tail stays empty; Cancel asks the
    run's engine, wherever it runs, to stop.
    """
    from converter.store.runstore import RunStore
    from converter.store.workspace import Workspace

    store = RunStore(Workspace.default().database)
    full_id = store.resolve(run_id)

    def cancel() -> None:
        store.request_cancel(full_id)

    monitor = RunMonitor(cancel=cancel)

    def follow() -> None:
        after = 0
        while True:
            events = store.events(full_id, after)
            for event in events:
                monitor.feed(event)
            if events:
                after = events[-1].seq
                if events[-1].type == "run_finished":
                    return
            elif store.get_run(full_id).state != "running":
                return
            time.sleep(STORE_POLL_SECONDS)

    threading.Thread(target=follow, name="cellpipe-watch", daemon=True).start()
    return monitor
