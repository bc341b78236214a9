"""`launcher(path)`: a run form for one notebook, from its parameters cell: typed inputs, the engine
(any the registry knows), a Run button, and the run's monitor under the form."""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Any

import ipywidgets as widgets
from IPython.display import display

from converter.engines.registry import available
from converter.errors import CellpipeError
from converter.model import Parameter
from converter.notebook.parameters import parameter_values, typed_values
from converter.notebook.reader import read_notebook
from jupyter_ext.widgets.follow import run_notebook
from jupyter_ext.widgets.monitor import RunMonitor


def _input_for(parameter: Parameter) -> widgets.Widget:
    style = {"description_width": "initial"}
    name, default = parameter.name, parameter.default
    if parameter.type == "bool":
        return widgets.Checkbox(value=bool(default), description=name, indent=False)
    if parameter.type == "int":
        return widgets.IntText(value=default, description=name, style=style)
    if parameter.type == "float":
        return widgets.FloatText(value=default, description=name, style=style)
    if parameter.optional:  # `name = None`: an optional str, left unset when the box stays empty
        return widgets.Text(value="", placeholder="None (not set)", description=name, style=style)
    if parameter.type == "str":
        return widgets.Text(value=str(default), description=name, style=style)
    return widgets.Textarea(  # list, dict: JSON text
        value=json.dumps(default), description=name, style=style, layout=widgets.Layout(width="50%")
    )


class Launcher:
    """A form for one notebook: its parameters as typed inputs, the engine, and a Run button."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.pipeline = read_notebook(self.path)
        self.inputs: dict[str, widgets.Widget] = {p.name: _input_for(p) for p in self.pipeline.parameters}
        engines = available() or ["local"]
        self.engine = widgets.Dropdown(
            options=engines, value="local" if "local" in engines else engines[0], description="engine"
        )
        self.use_cache = widgets.Checkbox(value=False, description="use cache", indent=False)
        self.run_button = widgets.Button(description="Run", icon="play", button_style="primary")
        self.run_button.on_click(lambda _button: self._on_run())
        self.output = widgets.Output()
        self.monitor: RunMonitor | None = None
        title = widgets.HTML(
            f"<b>{html.escape(self.pipeline.name)}</b> <small>{html.escape(str(path))}</small>"
        )
        if not self.inputs:
            note = "<small>no parameters cell: the notebook runs with its own values</small>"
            fields: list[widgets.Widget] = [widgets.HTML(note)]
        else:
            fields = list(self.inputs.values())
        self.widget = widgets.VBox(
            [title, *fields, widgets.HBox([self.engine, self.use_cache, self.run_button]), self.output]
        )

    def values(self) -> dict[str, Any]:
        """The parameter values as typed; CellpipeError names a value that does not fit its type."""
        typed: dict[str, object] = {}
        texts: list[tuple[str, str]] = []
        for parameter in self.pipeline.parameters:
            value = self.inputs[parameter.name].value
            if parameter.optional and value == "":
                continue
            if parameter.type in ("list", "dict", "str"):
                texts.append((parameter.name, value))  # parsed as `cellpipe run -p NAME TEXT` would be
            else:
                typed[parameter.name] = value
        return {**typed_values(self.pipeline, typed), **parameter_values(self.pipeline, texts, [])}

    def run(self) -> RunMonitor:
        """Start a run with the form's values and show its monitor under the form."""
        self.monitor = run_notebook(
            self.path, self.values(), engine=self.engine.value, use_cache=self.use_cache.value or None
        )
        self.output.clear_output()
        with self.output:
            display(self.monitor)
        return self.monitor

    def _on_run(self) -> None:
        try:
            self.run()
        except CellpipeError as error:  # a user mistake: say it, no traceback
            self.output.clear_output()
            self.output.append_stdout(f"cellpipe: {error}\n")

    def _ipython_display_(self) -> None:
        display(self.widget)


def launcher(notebook_path: str | Path) -> Launcher:
    """A run form for the notebook: typed inputs from its parameters cell, engine choice, Run button."""
    return Launcher(notebook_path)
