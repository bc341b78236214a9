"""Notebook widgets (ipywidgets 8): launch a run of a notebook and watch it without leaving the page.

`launcher` builds a run form from the notebook's parameters cell; `follow` starts a run from the kernel
(`run_notebook`) or follows one started elsewhere (`watch`); `monitor` is the live `RunMonitor` (events
in, redraws, controls) and `render` its HTML, drawn from the one event fold (`converter.events.RunView`).
"""

from jupyter_ext.widgets.follow import run_notebook, watch
from jupyter_ext.widgets.launcher import Launcher, launcher
from jupyter_ext.widgets.monitor import RunMonitor
from jupyter_ext.widgets.render import levels

__all__ = ["Launcher", "RunMonitor", "launcher", "levels", "run_notebook", "watch"]
