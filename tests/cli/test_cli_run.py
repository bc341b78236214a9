"""`cellpipe run` and `cellpipe runs`, end to end: real runs of real notebooks on the local engine.

Every test gets its own CELLPIPE_HOME and its own copy of the notebooks it runs (steps run in the
notebook's folder and may write files there).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import nbformat
import pytest
from hypothesis import given
from hypothesis import strategies as st
from papermill.cli import _resolve_type

from converter.cli.main import main
from converter.errors import CellpipeError
from converter.model import Parameter
from converter.notebook.parameters import coerce, papermill_value, parameter_values
from converter.notebook.reader import read_notebook

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = ROOT / "sample_notebooks"


@pytest.fixture(autouse=True)
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "cellpipe-home"
    monkeypatch.setenv("CELLPIPE_HOME", str(folder))
    return folder


def _sample(tmp_path: Path, name: str) -> Path:
    target = tmp_path / "nb" / name
    target.parent.mkdir(exist_ok=True)
    shutil.copy(SAMPLES / name, target)
    return target


def _notebook(path: Path, *cells: tuple[str, list[str]]) -> Path:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = [nbformat.v4.new_code_cell(src, metadata={"tags": tags}) for src, tags in cells]
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, path)
    return path


def _cli_command() -> list[str]:
    """The installed console script; a checkout that was never `pip install`ed runs the same `main`."""
    script = shutil.which("cellpipe")
    return [script] if script else [sys.executable, "-m", "converter.cli"]


def _cellpipe(*args: str, cwd: Path | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run(
        [*_cli_command(), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
        env=env,
        check=False,
    )


# ---------------------------------------------------------------- parameters, as papermill reads them

_PARAM_TEXT = st.one_of(
    st.text(max_size=12),
    st.sampled_from(
        ["True", "False", "None", "true", "1", "-3", "1e3", "1.10", "nan", "inf", "0x10", "1_000", " 7 "]
    ),
    st.integers().map(str),
    st.floats(allow_nan=False).map(str),
)


@given(_PARAM_TEXT)
def test_p_values_are_typed_exactly_as_papermill_types_them(text: str) -> None:
    ours, theirs = papermill_value(text), _resolve_type(text)
    assert type(ours) is type(theirs)
    assert ours == theirs or (ours != ours and theirs != theirs)  # nan


def _param(kind: str) -> Parameter:
    defaults: dict[str, Any] = {
        "int": 1,
        "float": 1.0,
        "bool": True,
        "str": "a",
        "list": [1],
        "dict": {"a": 1},
    }
    return Parameter("p", kind, defaults[kind], 3)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kind", "raw", "expected"),
    [
        ("int", "7", 7),
        ("int", "7.0", 7),
        ("float", "3", 3.0),
        ("float", "2.5e-3", 0.0025),
        ("bool", "True", True),
        ("bool", "false", False),
        ("bool", "0", False),
        ("str", "1.10", "1.10"),  # the text as typed: papermill would make it the float 1.1
        ("str", "None", "None"),
        ("list", "[1, 2.5, 'x']", [1, 2.5, "x"]),
        ("dict", '{"lr": 0.1, "layers": [64, 32]}', {"lr": 0.1, "layers": [64, 32]}),
    ],
)
def test_p_values_coerced_to_the_declared_type(kind: str, raw: str, expected: object) -> None:
    value = coerce(_param(kind), papermill_value(raw), raw, "nb.ipynb")
    assert value == expected and type(value) is type(expected)


@pytest.mark.parametrize(
    ("kind", "raw"),
    [
        ("int", "abc"),
        ("int", "2.5"),
        ("int", "True"),
        ("float", "fast"),
        ("float", "True"),
        ("bool", "maybe"),
        ("bool", "2"),
        ("list", "{'a': 1}"),
        ("list", "[1, 2"),
        ("dict", "[1]"),
        ("list", "[.nan]"),
    ],
)
def test_values_that_do_not_parse_name_parameter_type_and_notebook(kind: str, raw: str) -> None:
    with pytest.raises(CellpipeError) as error:
        coerce(_param(kind), papermill_value(raw), raw, "nb.ipynb")
    message = str(error.value)
    assert "nb.ipynb" in message and "'p'" in message and kind in message and repr(raw) in message


def test_yaml_values_keep_their_type_but_must_fit(tmp_path: Path) -> None:
    assert coerce(_param("str"), 2024, None, "nb") == "2024"
    assert coerce(_param("float"), 1, None, "nb") == 1.0
    with pytest.raises(CellpipeError):
        coerce(_param("int"), "12", None, "nb")  # quoted in YAML: a string, not an int


def test_unknown_parameter_warns_as_papermill_and_bad_value_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    notebook = _sample(tmp_path, "sklearn_tabular.ipynb")
    pipeline = read_notebook(notebook)
    warnings: list[str] = []
    values = parameter_values(
        pipeline, [["max_iters", "5"], ["max_iter", "7"]], [], warn_unknown=warnings.append
    )
    assert values == {"max_iter": 7}
    assert warnings == [f"{notebook}: passed unknown parameter 'max_iters'; ignored"]
    with pytest.raises(CellpipeError, match="unknown parameter 'max_iters'"):
        parameter_values(pipeline, [["max_iters", "5"]], [])  # REST, widgets, schedule: still an error
    assert main(["run", str(notebook), "-p", "max_iter", "lots"]) == 2
    err = capsys.readouterr().err
    assert "parameter 'max_iter' is int; cannot use 'lots'" in err and "sklearn_tabular.ipynb" in err
    assert "Traceback" not in err


def test_parameters_file_then_p(tmp_path: Path) -> None:
    from converter.notebook.parameters import parameter_values
    from converter.notebook.reader import read_notebook

    pipeline = read_notebook(_sample(tmp_path, "pandas_etl.ipynb"))
    params = tmp_path / "params.yaml"
    params.write_text("start_date: 2024-02-01\nn_days: 10\nregions: [north, south]\n")
    values = parameter_values(pipeline, [["n_days", "12"]], [str(params)])
    assert values == {"start_date": "2024-02-01", "n_days": 12, "regions": ["north", "south"]}
    params.write_text("- not\n- a mapping\n")
    with pytest.raises(CellpipeError, match="NAME: VALUE"):
        parameter_values(pipeline, [], [str(params)])
    with pytest.raises(CellpipeError, match="cannot read"):
        parameter_values(pipeline, [], [str(tmp_path / "missing.yaml")])


# ---------------------------------------------------------------- real runs

FAILING = (
    ("n = 3", ["parameters"]),
    ("x = n * 2\nprint('x is', x)", ["step:make"]),
    ("print('about to fail')\ny = x / 0", ["step:divide"]),
    ("print(y)", ["step:show"]),
    ("z = x + 1\nz", ["step:side"]),
)


def _events(stdout: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stdout.splitlines()]


def test_sample_notebook_runs_with_outputs_junit_and_events(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    notebook = _sample(tmp_path, "sklearn_tabular.ipynb")
    out, report = tmp_path / "out" / "executed.ipynb", tmp_path / "junit.xml"
    code = main(
        [
            "run",
            str(notebook),
            "-p",
            "max_iter",
            "300",
            "-o",
            str(out),
            "--junit",
            str(report),
            "--json-events",
        ]
    )
    captured = capsys.readouterr()
    assert code == 0, captured.err
    events = _events(captured.out)  # every stdout line is an event: nothing else is printed there
    assert events[0]["type"] == "run_started" and events[-1] == {
        **events[-1],
        "type": "run_finished",
        "state": "succeeded",
    }
    metrics = {k: v for e in events if e["type"] == "metrics" for k, v in e["metrics"].items()}
    assert set(metrics) == {"accuracy", "f1", "roc_auc"} and metrics["accuracy"] > 0.9

    nb = nbformat.read(out, as_version=4)
    nbformat.validate(nb)
    injected = [c for c in nb.cells if "injected-parameters" in c.metadata.get("tags", [])]
    assert len(injected) == 1 and injected[0].source == "# Parameters\nmax_iter = 300\n"
    printed = "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.outputs)
    assert "569 samples, 30 features" in printed and "train accuracy" in printed
    counts = [c.execution_count for c in nb.cells if c.cell_type == "code" and c.execution_count]
    assert counts == list(range(1, len(counts) + 1))
    assert nb.metadata.papermill["parameters"] == {"max_iter": 300}

    cases = ET.parse(report).getroot().findall("./testsuite/testcase")
    assert [c.get("name") for c in cases] == ["load_data", "preprocess", "train", "evaluate"]
    assert all(c.find("failure") is None and c.find("skipped") is None for c in cases)


def test_a_chatty_step_keeps_every_line_in_the_notebook_and_the_step_log(tmp_path: Path, home: Path) -> None:
    code = "for i in range(20000):\n    print('x' * 94, f'{i:05d}')\n"
    notebook = _notebook(tmp_path / "chatty.ipynb", (code, ["step:chatty"]))
    out = tmp_path / "out.ipynb"
    assert main(["run", "-q", str(notebook), "-o", str(out)]) == 0
    (cell,) = nbformat.read(out, as_version=4).cells
    (stream,) = cell.outputs
    expected = [f"{'x' * 94} {i:05d}" for i in range(20000)]
    assert stream.text.splitlines() == expected
    (log,) = home.glob("runs/*/chatty/log.txt")
    assert log.read_text().splitlines() == expected


def test_failing_step_exits_1_skips_downstream_and_marks_the_cell(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    notebook = _notebook(tmp_path / "nb" / "fail.ipynb", *FAILING)
    out, report = tmp_path / "out.ipynb", tmp_path / "junit.xml"
    assert main(["run", str(notebook), "-o", str(out), "--junit", str(report), "--quiet"]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""  # quiet: a failed run's summary and errors go to stderr
    assert "step divide failed: cell 2 raised ZeroDivisionError" in captured.err
    assert "divide | about to fail" in captured.err  # the log tail comes with it

    cases = {c.get("name"): c for c in ET.parse(report).getroot().iter("testcase")}
    failure = cases["divide"].find("failure")
    assert failure is not None and "ZeroDivisionError" in (failure.text or "")
    assert cases["show"].find("skipped") is not None
    assert cases["side"].find("failure") is None and cases["side"].find("skipped") is None

    nb = nbformat.read(out, as_version=4)
    tags = [c.metadata.get("tags", []) for c in nb.cells]
    assert "papermill-error-cell-tag" in tags[0]
    failing = next(i for i, c in enumerate(nb.cells) if "step:divide" in c.metadata.get("tags", []))
    assert "papermill-error-cell-tag" in tags[failing - 1]  # the anchor right before the failing cell
    assert f"In [{nb.cells[failing].execution_count}]" in nb.cells[0].source
    assert nb.cells[failing].outputs[-1]["ename"] == "ZeroDivisionError"
    shown = next(c for c in nb.cells if "step:show" in c.metadata.get("tags", []))
    assert shown.execution_count is None and shown.metadata.papermill["status"] == "pending"


def test_console_script_exit_codes(tmp_path: Path) -> None:
    good = _notebook(tmp_path / "nb" / "good.ipynb", ("print('hello')", []))
    bad = _notebook(tmp_path / "nb" / "fail.ipynb", *FAILING)
    done = _cellpipe("run", str(good))
    assert done.returncode == 0, done.stderr
    assert "hello" in done.stdout and "succeeded" in done.stdout
    assert _cellpipe("run", str(bad), "--quiet").returncode == 1
    invalid = _cellpipe("run", str(bad), "-p", "n", "three")
    assert invalid.returncode == 2 and "Traceback" not in invalid.stderr
    missing = _cellpipe("run", str(tmp_path / "nope.ipynb"))
    assert missing.returncode == 2 and "no such notebook" in missing.stderr


def _start(*args: str, cwd: Path) -> subprocess.Popen[str]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.Popen(
        [*_cli_command(), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=cwd, env=env
    )


def _wait_for_line(process: subprocess.Popen[str], needle: str) -> str:
    """Read the process's stdout until a line containing `needle` (the step is really running)."""
    assert process.stdout is not None
    for line in process.stdout:
        if needle in line:
            return line
    raise AssertionError(
        f"never printed {needle!r}; stderr: {process.stderr.read() if process.stderr else ''}"
    )


SLOW = (
    ("import time", ["imports"]),
    ("for i in range(600):\n    print('tick', i, flush=True)\n    time.sleep(0.1)\nx = 1", ["step:slow"]),
    ("print(x)", ["step:after"]),
)


def test_ctrl_c_cancels_cleanly_with_exit_130(tmp_path: Path) -> None:
    notebook = _notebook(tmp_path / "nb" / "slow.ipynb", *SLOW)
    process = _start("run", str(notebook), "--json-events", cwd=tmp_path)
    try:
        run_id = json.loads(_wait_for_line(process, '"tick 3"'))["run_id"]
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=30)
    finally:
        process.kill()
    assert process.returncode == 130, err
    assert "Traceback" not in err
    assert _events(out)[-1]["type"] == "run_finished" and _events(out)[-1]["state"] == "cancelled"
    shown = json.loads(_cellpipe("runs", "show", run_id, "--json").stdout)
    assert shown["state"] == "cancelled"
    assert {s["name"]: s["state"] for s in shown["steps"]} == {"slow": "cancelled", "after": "cancelled"}


def test_runs_cancel_and_logs_follow_a_running_run(tmp_path: Path) -> None:
    notebook = _notebook(tmp_path / "nb" / "slow.ipynb", *SLOW)
    process = _start("run", str(notebook), "--json-events", cwd=tmp_path)
    try:
        run_id = json.loads(_wait_for_line(process, '"tick 2"'))["run_id"]
        follower = _start("runs", "logs", run_id, "slow", "--follow", cwd=tmp_path)
        _wait_for_line(follower, "tick 5")  # it streams while the step runs...
        _wait_for_line(follower, "tick 6")  # ...line by line (read here: communicate() skips buffered lines)
        cancel = _cellpipe("runs", "cancel", run_id[:15])  # a unique prefix is enough
        assert cancel.returncode == 0 and run_id in cancel.stdout
        assert process.wait(timeout=30) == 130
        follower.communicate(timeout=30)  # --follow ends by itself when the run is over
        assert follower.returncode == 0
    finally:
        process.kill()
    again = _cellpipe("runs", "cancel", run_id)
    assert again.returncode == 1 and "not running" in again.stderr


def test_runs_list_show_logs(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    notebook = _notebook(tmp_path / "nb" / "fail.ipynb", *FAILING)
    assert main(["run", str(notebook), "--quiet"]) == 1
    capsys.readouterr()
    assert main(["runs", "list", "--json"]) == 0
    runs = json.loads(capsys.readouterr().out)
    assert len(runs) == 1 and runs[0]["state"] == "failed"
    run_id = runs[0]["id"]

    assert main(["runs", "list"]) == 0
    assert run_id in capsys.readouterr().out  # the whole id, never cut to fit

    assert main(["runs", "show", run_id]) == 0
    shown = capsys.readouterr().out
    assert "divide" in shown and "ZeroDivisionError" in shown and "upstream step 'divide' failed" in shown

    assert main(["runs", "logs", run_id, "make"]) == 0
    assert capsys.readouterr().out == "x is 6\n"
    assert main(["runs", "logs", run_id]) == 0
    every = capsys.readouterr().out
    assert "make | x is 6" in every and "divide | about to fail" in every
    assert main(["runs", "logs", run_id, "nope"]) == 2
    assert "has no step 'nope'" in capsys.readouterr().err
    assert main(["runs", "show", "no-such-run"]) == 2


def test_resume_reruns_only_what_failed_and_cached_steps_keep_their_outputs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    notebook = _notebook(
        tmp_path / "nb" / "flaky.ipynb",
        ("import pathlib", ["imports"]),
        ("print('expensive work')\nvalue = 41", ["step:first"]),
        (
            "assert pathlib.Path('ready.txt').exists(), 'not ready'\nresult = value + 1\nprint(result)",
            ["step:second"],
        ),
    )
    assert main(["run", str(notebook), "--quiet", "--no-cache"]) == 1
    capsys.readouterr()
    assert main(["runs", "list", "--json"]) == 0
    failed_run = json.loads(capsys.readouterr().out)[0]["id"]

    (notebook.parent / "ready.txt").write_text("yes")
    out = tmp_path / "resumed.ipynb"
    assert main(["run", str(notebook), "--resume", failed_run, "--json-events", "-o", str(out)]) == 0
    events = _events(capsys.readouterr().out)
    started = [e["step"] for e in events if e["type"] == "step_started"]
    assert started == ["second"]  # first is reused, not run again
    # The executed notebook still shows what the reused step printed, from the run that computed it.
    cells = nbformat.read(out, as_version=4).cells
    printed = ["".join(o.get("text", "") for o in c.outputs) for c in cells]
    assert printed[1:] == ["expensive work\n", "42\n"]
    assert cells[1].metadata["cellpipe_reused"] == {"step": "first", "from_run": failed_run}  # marked
    assert "cellpipe_reused" not in cells[2].metadata


def test_cache_is_an_explicit_choice(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """By default a run re-executes every step (papermill parity); --cache reuses unchanged steps and
    the run summary and the -o notebook say which."""
    notebook = _notebook(
        tmp_path / "nb" / "clock.ipynb",
        ("import time\nstamp = time.time()\nprint('computed')", ["step:first"]),
        ("print(stamp > 0)", ["step:second"]),
    )
    assert main(["run", str(notebook), "--quiet"]) == 0
    capsys.readouterr()
    assert main(["run", str(notebook), "--json-events"]) == 0
    assert [e["type"] for e in _events(capsys.readouterr().out)].count("step_cached") == 0
    assert main(["run", str(notebook), "--cache", "-o", str(tmp_path / "out.ipynb")]) == 0
    summary = capsys.readouterr().out
    assert "cached" in summary and "from run" in summary
    cells = nbformat.read(tmp_path / "out.ipynb", as_version=4).cells
    assert all("cellpipe_reused" in c.metadata for c in cells)
    assert ["".join(o.get("text", "") for o in c.outputs) for c in cells] == ["computed\n", "True\n"]


def test_a_run_that_cannot_fit_is_refused_unless_asked_to_fit(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    notebook = _notebook(tmp_path / "nb" / "big.ipynb", ("x = 1\nprint('ran', x)", ["step:big", "cpu:512"]))
    assert main(["run", str(notebook)]) == 2
    captured = capsys.readouterr()
    assert "512" in captured.err and "Traceback" not in captured.err
    assert captured.out == ""  # no progress table for a run that never started
    assert main(["run", str(notebook), "--fit-resources"]) == 0
    assert "big | ran 1" in capsys.readouterr().out
