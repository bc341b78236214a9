"""The notebook widgets: a real kernel (nbclient) launches local runs through them and watches them end."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

import ipywidgets as widgets
import nbformat
import pytest
from nbclient import NotebookClient
from nbformat.v4 import new_code_cell, new_notebook

from converter.errors import CellpipeError
from converter.events import Event
from jupyter_ext import Launcher, RunMonitor, launcher
from jupyter_ext.widgets import levels

ROOT = Path(__file__).resolve().parents[2]
SKLEARN = ROOT / "sample_notebooks" / "sklearn_tabular.ipynb"
STEPS = ["first", "left", "right", "join"]


@pytest.fixture(autouse=True)
def cellpipe_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "cellpipe-home"
    monkeypatch.setenv("CELLPIPE_HOME", str(home))  # the kernel inherits it
    return home


def write_notebook(path: Path, cells: list[tuple[list[str], str]]) -> Path:
    nbformat.write(new_notebook(cells=[new_code_cell(s, metadata={"tags": t}) for t, s in cells]), path)
    return path


def diamond(path: Path, fail_right: bool = False, first_sleeps: float = 0) -> Path:
    right = "c = a + 2\nraise RuntimeError('right broke')" if fail_right else "c = a + 2"
    pause = f"import time\ntime.sleep({first_sleeps})\n" if first_sleeps else ""
    return write_notebook(
        path,
        [
            (["parameters"], 'n = 3\nweights = [1, 2]\nopts = {"k": 1}\nverbose = False\nlabel = "x"'),
            (
                ["step:first"],
                pause + "a = n * 2 + sum(weights) + opts['k']\nprint('first', a, label, verbose)",
            ),
            (["step:left"], "b = a + 1\nprint('left', b)"),
            (["step:right"], right),
            (["step:join"], "total = b + c\nprint('total', total)"),
            (["metrics"], "total"),
        ],
    )


def execute(tmp_path: Path, sources: list[str]) -> nbformat.NotebookNode:
    nb = new_notebook(cells=[new_code_cell(textwrap.dedent(source)) for source in sources])
    NotebookClient(
        nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    ).execute()
    return nb


def printed_json(cell: nbformat.NotebookNode) -> dict[str, Any]:
    text = "".join(
        o.get("text", "") for o in cell.outputs if o.output_type == "stream" and o.name == "stdout"
    )
    data: dict[str, Any] = json.loads(text.strip().splitlines()[-1])
    return data


REPORT = """
    import json
    FINAL = ("succeeded", "failed", "skipped")
    def report(m):
        print(json.dumps({
            "state": m.state,
            "steps": m.step_states,
            "progress": [m.progress.value, m.progress.max, m.progress.description, m.progress.bar_style],
            "dag_states": [m.dag.value.count(f"data-state='{s}'") for s in FINAL],
            "metrics": m.metrics_table.value,
            "cancel_disabled": m.cancel_button.disabled,
            "log_step": m.step_choice.value,
            "log": m.log.value,
        }))
"""


def test_a_kernel_runs_a_notebook_through_the_widgets_and_sees_every_final_state(tmp_path: Path) -> None:
    diamond(tmp_path / "diamond.ipynb", first_sleeps=1)  # still running when its monitor is shown
    diamond(tmp_path / "broken.ipynb", fail_right=True)
    nb = execute(
        tmp_path,
        [
            "from jupyter_ext import launcher, run_notebook",
            REPORT,
            # run_notebook returns at once; the cell's result is the live monitor
            "monitor = run_notebook('diamond.ipynb', {'n': 4}, use_cache=False)\nmonitor",
            "assert monitor.wait(120)\nreport(monitor)",
            # the launcher's Run button, as a click in the browser would press it
            """
            form = launcher('broken.ipynb')
            form.inputs['n'].value = 10
            form.inputs['weights'].value = '[5, 5]'
            form.run_button.click()
            assert form.monitor.wait(120)
            report(form.monitor)
            """,
        ],
    )
    ok = printed_json(nb.cells[3])
    assert ok["state"] == "succeeded"
    assert ok["steps"] == dict.fromkeys(STEPS, "succeeded")
    assert ok["progress"] == [4, 4, "4/4", "success"]
    assert ok["dag_states"] == [4, 0, 0]
    assert "total" in ok["metrics"] and ">27<" in ok["metrics"]  # a = 4*2 + 3 + 1; (a + 1) + (a + 2)
    assert ok["cancel_disabled"] is True

    failed = printed_json(nb.cells[4])
    assert failed["state"] == "failed"
    assert failed["steps"] == {
        "first": "succeeded",
        "left": "succeeded",
        "right": "failed",
        "join": "skipped",
    }
    assert failed["progress"][:2] == [4, 4] and failed["progress"][3] == "danger"
    assert failed["dag_states"] == [2, 1, 1]
    assert failed["log_step"] == "right" and "right broke" in failed["log"]  # follows the failed step

    # The monitor's display carries the widget and, for renderers without a kernel, an HTML summary
    # that the monitor replaced with the final one when the run ended (the notebook saves that).
    [shown] = [o for o in nb.cells[2].outputs if o.output_type in ("display_data", "execute_result")]
    assert "application/vnd.jupyter.widget-view+json" in shown["data"]
    assert shown["data"]["text/html"].count("data-state='succeeded'") == 4
    assert shown["data"]["text/plain"].endswith(
        "succeeded (first succeeded, left succeeded, right succeeded, join succeeded)"
    )


def test_the_launcher_has_typed_inputs_from_the_parameters_cell() -> None:
    form = launcher(SKLEARN)
    assert isinstance(form, Launcher)
    kinds = {name: type(widget) for name, widget in form.inputs.items()}
    assert kinds == {
        "test_size": widgets.FloatText,
        "C": widgets.FloatText,
        "max_iter": widgets.IntText,
        "random_state": widgets.IntText,
        "model_kind": widgets.Text,
    }
    assert form.values() == {
        "test_size": 0.2,
        "C": 1.0,
        "max_iter": 500,
        "random_state": 42,
        "model_kind": "logreg",
    }
    assert form.engine.value == "local" and "local" in form.engine.options


def test_list_dict_and_bool_parameters_get_json_text_and_checkbox(tmp_path: Path) -> None:
    form = launcher(diamond(tmp_path / "d.ipynb"))
    assert isinstance(form.inputs["weights"], widgets.Textarea)
    assert isinstance(form.inputs["opts"], widgets.Textarea)
    assert isinstance(form.inputs["verbose"], widgets.Checkbox)
    form.inputs["weights"].value = "[3, 4.5]"
    form.inputs["opts"].value = '{"k": 2}'
    form.inputs["verbose"].value = True
    form.inputs["label"].value = "1.10"  # a str stays as typed, as with `cellpipe run -p label 1.10`
    assert form.values() == {"n": 3, "weights": [3, 4.5], "opts": {"k": 2}, "verbose": True, "label": "1.10"}
    form.inputs["weights"].value = '{"not": "a list"}'
    with pytest.raises(CellpipeError, match="'weights' is list"):
        form.values()
    form._on_run()  # the Run button shows the mistake instead of raising
    assert "'weights' is list" in form.output.outputs[0]["text"]


def test_the_monitor_folds_a_kfp_like_stream_without_an_engine() -> None:
    """Only events drive the monitor: a stream from any engine, fed from another thread, shows up."""
    monitor = RunMonitor()
    data = {
        "pipeline": "p",
        "engine": "kfp",
        "steps": ["a", "b"],
        "upstream": {"b": ["a"]},
        "url": "http://kfp/x",
    }
    stream = [
        Event("r1", 1, "run_started", data=data),
        Event("r1", 2, "step_started", step="a", attempt=1),
        Event("r1", 3, "step_log", step="a", stream="stdout", line="hello"),
        Event("r1", 4, "step_retrying", step="a", attempt=1, message="pod evicted"),
        Event("r1", 5, "step_started", step="a", attempt=2),
        Event("r1", 6, "step_succeeded", step="a", attempt=2, duration=3.0),
        Event("r1", 7, "metrics", step="a", metrics={"acc": 0.93}),
        Event("r1", 8, "step_started", step="b", attempt=1),
        Event("r1", 9, "run_finished", state="cancelled", message="cancelled"),
    ]
    for event in stream:
        monitor.feed(event)
    assert monitor.wait(10)
    assert monitor.step_states == {"a": "succeeded", "b": "cancelled"}
    assert monitor.events_applied == len(stream)
    assert monitor.progress.value == 2 and monitor.progress.bar_style == "warning"
    assert "open in KFP" in monitor.header.value and "0.93" in monitor.metrics_table.value
    assert "attempt 2" in monitor.dag.value
    assert monitor.log_tail("a") == ["hello"]
    assert "data-state='cancelled'" in monitor.summary_html()
    assert monitor.cancel_button.disabled and monitor.cancel_button.button_style == ""  # no longer looks live
    assert "color:#212121" in monitor.dag.value  # step boxes stay readable in a dark theme


def test_levels_follow_the_dag() -> None:
    assert levels(["a", "b", "c", "d"], {"b": ["a"], "c": ["a"], "d": ["b", "c"]}) == [
        ["a"],
        ["b", "c"],
        ["d"],
    ]
    assert levels(["x", "y"], {}) == [["x", "y"]]


def test_watch_follows_a_run_started_elsewhere_from_the_store(tmp_path: Path) -> None:
    from converter.engines.base import RunRequest
    from converter.engines.local.engine import LocalEngine
    from converter.notebook.reader import read_notebook
    from jupyter_ext import watch

    notebook = diamond(tmp_path / "d.ipynb")
    result = LocalEngine().run(RunRequest(read_notebook(notebook), notebook), [])  # like `cellpipe run`
    monitor = watch(result.run_id[:-1])  # a unique prefix is enough, as with `cellpipe runs show`
    assert monitor.wait(30)
    assert monitor.run_id == result.run_id and monitor.state == "succeeded"
    assert monitor.step_states == dict.fromkeys(STEPS, "succeeded")
    assert "total" in monitor.metrics_table.value
    with pytest.raises(CellpipeError, match="no run"):
        watch("19990101-000000-0000")


def test_an_optional_parameter_stays_unset_until_given(tmp_path: Path) -> None:
    notebook = write_notebook(
        tmp_path / "opt.ipynb", [(["parameters"], "token = None\nn = 1"), (["step:use"], "print(token, n)")]
    )
    form = launcher(notebook)
    assert isinstance(form.inputs["token"], widgets.Text) and form.inputs["token"].value == ""
    assert form.values() == {"n": 1}
    form.inputs["token"].value = "abc"
    assert form.values() == {"token": "abc", "n": 1}
