"""cellpipe inside Jupyter: a server extension (REST API, live run events, metrics) and notebook widgets.

The server extension is enabled on install (``jupyter-config/jupyter_server_config.d/cellpipe.json``);
the widgets are imported on first use, so loading the extension never imports ipywidgets::

    from jupyter_ext import launcher, run_notebook
    launcher("train.ipynb")            # typed parameter inputs, engine choice, Run button
    monitor = run_notebook("train.ipynb", {"C": 0.5})

In a kernel, ``%load_ext jupyter_ext`` adds the ``%cellpipe`` line magic (`jupyter_ext.magics`):
``%cellpipe inputs RUN STEP`` loads what a step of a run read and inserts its code, to debug it.
"""

from __future__ import annotations

from typing import Any

_WIDGETS = frozenset({"launcher", "Launcher", "RunMonitor", "run_notebook", "watch"})


def _jupyter_server_extension_points() -> list[dict[str, str]]:
    return [{"module": "jupyter_ext"}]


def _load_jupyter_server_extension(serverapp: Any) -> None:
    from jupyter_ext.server import cells, results
    from jupyter_ext.server.endpoints import Cellpipe, KfpEndpoints
    from jupyter_ext.server.handlers import setup

    endpoints = KfpEndpoints(Cellpipe(parent=serverapp).kfp_endpoints, serverapp.log)
    setup(serverapp.web_app, serverapp.root_dir, [*cells.HANDLERS, *results.HANDLERS], endpoints)
    serverapp.log.info("cellpipe: REST API at %scellpipe/api/", serverapp.base_url)


def load_ipython_extension(shell: Any) -> None:
    """``%load_ext jupyter_ext``: the ``%cellpipe`` magic."""
    from jupyter_ext import magics

    magics.load_ipython_extension(shell)


def __getattr__(name: str) -> Any:
    if name in _WIDGETS:
        from jupyter_ext import widgets

        return getattr(widgets, name)
    raise AttributeError(f"module 'jupyter_ext' has no attribute {name!r}")
