"""What travels between steps besides values (converter/step/carry.py): imports and process-wide state
replayed, the global random state passed on, and what cannot be carried named for `validate`.

The end-to-end agreement with papermill is in the differential corpus (seeded_random, process_state,
magics_and_shell); these tests pin the reader's and the step program's side.
"""

from __future__ import annotations

from pathlib import Path

from converter.step import carry, runtime, stepcode
from tests.notebook.test_reader import edges, read


def step_named(pipeline, name):  # type: ignore[no-untyped-def]
    return next(s for s in pipeline.steps if s.name == name)


def test_an_import_in_an_earlier_step_is_replayed_not_passed() -> None:
    pipeline = read(
        ("import numpy as np\nfrom math import pi\nx = np.arange(3)", ["step:a"]),
        ("total = np.sum(x) * pi", ["step:b"]),
    )
    b = step_named(pipeline, "b")
    assert b.inputs == ("x",)  # np and pi are not values passed on
    assert "numpy" in b.modules  # so KFP installs what the replayed import needs
    replay = [c for c in stepcode.spec(pipeline, b)["cells"] if c["role"] == "replay"]  # type: ignore[union-attr]
    assert replay == [
        {"index": 0, "role": "replay", "step": "a", "code": "import numpy as np\nfrom math import pi\n"}
    ]


def test_state_setters_are_replayed_in_order_and_order_the_steps() -> None:
    pipeline = read(
        ("import os, sys, warnings\nimport pandas as pd\nimport matplotlib as mpl", ["imports"]),
        ("x = 1", ["step:first"]),
        (
            "pd.set_option('display.max_rows', 5)\nos.chdir('data')\nsys.path.append('lib')\n"
            "os.environ['A'] = '1'\nwarnings.simplefilter('ignore')\nmpl.rcParams['lines.linewidth'] = 2\n"
            "%cd sub\n%env B=2\n%load_ext autoreload\nprint('not replayed')\ny = 2",
            ["step:setup"],
        ),
        ("print(x)", ["step:later"]),
    )
    later = step_named(pipeline, "later")
    (replay,) = [c for c in stepcode.spec(pipeline, later)["cells"] if c["role"] == "replay"]  # type: ignore[union-attr]
    code = str(replay["code"])
    for kept in ("pd.set_option", "os.chdir('data')", "sys.path.append", "os.environ['A']", "simplefilter"):
        assert kept in code
    assert "rcParams" in code and "'cd', 'sub'" in code and "'env', 'B=2'" in code and "load_ext" in code
    assert "print" not in code and "y = 2" not in code
    assert ("setup", "later", "after", ()) in edges(pipeline)  # state travels along notebook order
    assert ("first", "setup", "after", ()) not in edges(pipeline)  # nothing to carry from `first`


def test_the_random_state_flows_from_the_seed_through_every_step_drawing() -> None:
    pipeline = read(
        ("import random\nimport numpy as np", ["imports"]),
        ("a = 1", ["step:before"]),
        ("np.random.seed(0)", ["step:seed"]),
        ("b = np.random.rand(2)", ["step:draw"]),
        ("c = a + 1", ["step:other"]),
        ("d = random.random()", ["step:more"]),
        ("g = np.random.default_rng(1).random()", ["step:own"]),
    )
    state = carry.RANDOM_STATE
    assert ("seed", "draw", "data", (state,)) in edges(pipeline)
    assert ("draw", "more", "data", (state,)) in edges(pipeline)
    assert state not in step_named(pipeline, "other").inputs  # draws nothing: runs in parallel
    assert state not in step_named(pipeline, "own").inputs  # its own generator
    assert state not in step_named(pipeline, "before").outputs  # before any seed: nothing to keep
    assert runtime.RANDOM_STATE == carry.RANDOM_STATE  # the runtime is self-contained: one name


def test_uncarried_names_the_state_later_steps_lose() -> None:
    pipeline = read(
        ("import os, torch, logging", ["imports"]),
        (
            "folder = 'x'\ntorch.manual_seed(0)\nlogging.basicConfig(level=logging.INFO)\nos.chdir(folder)",
            ["step:a"],
        ),
        ("torch.manual_seed(1)", ["step:b"]),
    )
    found = carry.uncarried(pipeline)
    assert [(u.step, u.cell, u.what) for u in found] == [
        ("a", 1, "torch.manual_seed(0)"),
        ("a", 1, "logging.basicConfig(level=logging.INFO)"),
        ("a", 1, "os.chdir(folder)"),
    ]  # b is the last step: its state ends with it
    assert "folder" in found[2].why and "processes of their own" in found[0].why


def test_replayed_statements_run_silently_before_the_step_cells(tmp_path: Path) -> None:
    from tests.step.test_runtime import cell, cell_outputs, make_spec, run

    (tmp_path / "sub").mkdir()
    replay = {
        "index": 2,
        "role": "replay",
        "step": "a",
        "code": "import os\nprint('hidden')\nget_ipython().run_line_magic('cd', 'sub')\n",
    }
    broken = {"index": 3, "role": "replay", "step": "a", "code": "import not_a_module_at_all\n"}
    spec = make_spec(cell(1, "import sys\n", "imports"), replay, broken, cell(5, "print(os.getcwd())\n"))
    result = run(spec, "--cell-outputs", tmp_path / "c.json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    cells = cell_outputs(tmp_path / "c.json")["cells"]
    assert [c["index"] for c in cells] == [1, 5] and [c["execution_count"] for c in cells] == [1, 2]
    assert cells[1]["outputs"][0]["text"].strip().endswith("sub") and "hidden" not in result.stdout
    assert "could not replay cell 3 of step 'a': ModuleNotFoundError" in result.stderr


def test_a_step_importing_a_module_an_earlier_step_wrote_runs_after_it() -> None:
    pipeline = read(
        ("%%writefile helper_mod.py\ndef double(x):\n    return 2 * x", ["step:write"]),
        ("y = 1", ["step:other"]),
        ("from helper_mod import double\nprint(double(21))", ["step:use"]),
    )
    assert ("write", "use", "after", ()) in edges(pipeline)
    assert ("other", "use", "after", ()) not in edges(pipeline)
