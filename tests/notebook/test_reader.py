"""Notebook -> pipeline model: grouping, data flow, parameters, metrics, settings, and every bad input.

Notebooks are built in memory, so each test shows the exact cells it is about. Problems are compared
as the CLI prints them (`NB: cell N [tag]: message`), which is the shape users and the UI rely on.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

from converter.errors import CellpipeError, InvalidNotebook
from converter.kfp.compile import compile_pipeline
from converter.model import Pipeline, Problem, Resources, VolumeMount
from converter.notebook.reader import check_node, check_notebook, read_notebook

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = ROOT / "sample_notebooks"
BAD_TAGS = ROOT / "tests" / "notebooks" / "bad_tags.ipynb"

# A cell: source, or (source, tags), or (source, tags, metadata.cellpipe). A bare "# md" string is markdown.
Cell = str | tuple[str, Sequence[str]] | tuple[str, Sequence[str], dict[str, Any]]
SHAPE = re.compile(r"^nb\.ipynb: cell \d+( \[[^\]]+\])?: (warning: )?\S.*$")


def notebook(*cells: Cell, metadata: dict[str, Any] | None = None) -> nbformat.NotebookNode:
    nb = new_notebook()
    for cell in cells:
        if isinstance(cell, str):
            nb.cells.append(new_markdown_cell(cell[5:]) if cell.startswith("# md ") else new_code_cell(cell))
            continue
        code = new_code_cell(cell[0])
        if cell[1]:
            code.metadata["tags"] = list(cell[1])
        if len(cell) == 3:
            code.metadata["cellpipe"] = cell[2]
        nb.cells.append(code)
    nb.metadata.update(metadata or {})
    return nb


def check(
    *cells: Cell, metadata: dict[str, Any] | None = None, name: str = "nb.ipynb"
) -> tuple[Pipeline | None, list[Problem]]:
    return check_node(notebook(*cells, metadata=metadata), name)


def read(*cells: Cell, metadata: dict[str, Any] | None = None, name: str = "nb.ipynb") -> Pipeline:
    pipeline, problems = check(*cells, metadata=metadata, name=name)
    assert pipeline is not None, "\n".join(map(str, problems))
    return pipeline


def problems_of(*cells: Cell, metadata: dict[str, Any] | None = None) -> list[str]:
    """Every problem as the CLI prints it; asserts the shape of each line."""
    _, problems = check(*cells, metadata=metadata)
    lines = [str(p) for p in problems]
    for line in lines:
        assert SHAPE.match(line), line
    return lines


def errors_of(*cells: Cell, metadata: dict[str, Any] | None = None) -> list[str]:
    pipeline, problems = check(*cells, metadata=metadata)
    assert pipeline is None
    return [str(p) for p in problems if p.severity == "error"]


def reachable(pipeline: Pipeline, source: str) -> set[str]:
    seen: set[str] = set()
    pending = [source]
    while pending:
        for target in pipeline.downstream(pending.pop()):
            if target not in seen:
                seen.add(target)
                pending.append(target)
    return seen


def edges(pipeline: Pipeline) -> set[tuple[str, str, str, tuple[str, ...]]]:
    return {(e.source, e.target, e.kind, e.names) for e in pipeline.edges}


# ------------------------------------------------------------------------------------- grouping


def test_untagged_cells_join_the_step_above_and_markdown_is_ignored() -> None:
    p = read(
        ("a = 1", ["step:first"]),
        "# md some prose",
        "b = a + 1",
        ("c = b", ["step:second"]),
        "d = c",
    )
    assert [(s.name, [c.index for c in s.cells]) for s in p.steps] == [("first", [0, 2]), ("second", [3, 4])]
    assert p.step("first").cells[1].source == "b = a + 1"


@pytest.mark.parametrize("continuation", ["step:", "block:"])
def test_bare_step_tag_continues_the_step_above(continuation: str) -> None:
    p = read(("x = 1", ["block:load"]), ("y = x", [continuation]), ("z = y", ["step:use"]))
    assert [c.index for c in p.step("load").cells] == [0, 1]
    assert p.step("load").outputs == ("y",)


def test_repeating_the_step_tag_on_the_next_cell_continues_it() -> None:
    p = read(("x = 1", ["step:load"]), ("y = x", ["step:load"]))
    assert [c.index for c in p.step("load").cells] == [0, 1]


def test_skip_cells_are_left_out_and_define_nothing() -> None:
    p = read(("x = 1", ["step:a"]), ("x.bit_length()", ["skip"]), "y = x")
    assert [c.index for c in p.step("a").cells] == [0, 2]
    assert errors_of(("debug = 1", ["skip"]), ("print(debug)", ["step:a"])) == [
        "nb.ipynb: cell 1 [step:a]: name 'debug' is not defined before step 'a' "
        "(not a builtin, import, parameter or earlier step's variable)"
    ]


def test_imports_and_functions_cells_run_in_every_step() -> None:
    p = read(
        ("import json\nimport numpy as np", ["imports"]),
        ("def scaled(x):\n    return x * factor", ["functions"]),
        ("factor = 3", ["step:a"]),
        ("y = scaled(np.ones(2))\nprint(json.dumps(1))", ["step:b"]),
    )
    assert [c.index for c in p.imports] == [0] and [c.index for c in p.functions] == [1]
    assert [c.index for s in p.steps for c in s.cells] == [2, 3]
    # `scaled` reads the global `factor` when step b calls it: b needs a's `factor`.
    assert p.step("b").inputs == ("factor",)
    assert {"json", "numpy"} <= set(p.step("a").modules)  # the imports cell counts for every step
    assert any(r.startswith("numpy") for r in p.step("a").packages)
    assert not any(r.startswith("json") for r in p.step("a").packages)  # standard library


def test_structured_role_key_is_the_same_as_a_role_tag() -> None:
    p = read(("import math", [], {"role": "imports"}), ("y = math.pi", ["step:a"]))
    assert [c.index for c in p.imports] == [0] and p.step("a").inputs == ()


def test_notebook_without_step_tags_is_one_step_named_after_the_file() -> None:
    cells: list[Cell] = [("import math", ["imports"]), "r = 2", "# md area", "area = math.pi * r**2"]
    p = read(*cells, name="/somewhere/My Analysis.ipynb")
    assert [s.name for s in p.steps] == ["my-analysis"]
    assert [c.index for c in p.steps[0].cells] == [1, 3]
    assert p.name == "my-analysis"
    assert [s.name for s in read("x = 1", name="2024_report.ipynb").steps] == ["nb-2024_report"]


def test_code_before_the_first_step_is_left_out_with_a_warning_naming_it() -> None:
    p, _ = check("!pip install pandas", ("import os", ["imports"]), ("x = os.sep", ["step:a"]))
    assert p is not None
    assert [c.index for s in p.steps for c in s.cells] == [2]
    assert [str(w) for w in p.warnings] == [
        "nb.ipynb: cell 0: warning: code before the first step is left out of the pipeline "
        "(tag it to include it)"
    ]


# ------------------------------------------------------------------------------------ data flow


def test_data_edges_carry_the_names_each_step_reads() -> None:
    p = read(
        ("a = 1\nb = 2\nunused = 3", ["step:make"]),
        ("c = a + b", ["step:use_both"]),
        ("d = b * c", ["step:use_b_and_c"]),
    )
    assert edges(p) == {
        ("make", "use_both", "data", ("a", "b")),
        ("make", "use_b_and_c", "data", ("b",)),
        ("use_both", "use_b_and_c", "data", ("c",)),
    }
    assert p.step("make").outputs == ("a", "b")  # `unused` is read by nobody: not an artifact
    assert p.step("use_b_and_c").inputs == ("b", "c")
    assert p.producer("use_b_and_c", "b") == "make"


def test_the_most_recent_earlier_definition_wins() -> None:
    p = read(
        ("x = 1", ["step:first"]),
        ("x = 2", ["step:second"]),
        ("y = x", ["step:reader"]),
        ("x = 3", ["step:later"]),
    )
    assert p.producer("reader", "x") == "second"
    assert edges(p) == {("second", "reader", "data", ("x",))}
    assert p.step("first").outputs == () and p.step("later").outputs == ()


@pytest.mark.parametrize(
    "mutation", ["df.dropna(inplace=True)", "df.append(1)", "df['c'] = 1", "df.update({})"]
)
def test_a_step_that_mutates_an_input_passes_its_version_on(mutation: str) -> None:
    p = read(
        ("import pandas as pd", ["imports"]),
        ("df = pd.DataFrame({'a': [1.0, None]})", ["step:load"]),
        (mutation, ["step:clean"]),
        ("print(df)", ["step:report"]),
    )
    assert p.producer("report", "df") == "clean"
    assert p.step("clean").inputs == ("df",) and p.step("clean").outputs == ("df",)
    assert edges(p) == {("load", "clean", "data", ("df",)), ("clean", "report", "data", ("df",))}


def test_a_step_that_only_reads_an_input_does_not_pass_it_on() -> None:
    p = read(
        ("items = [1]", ["step:make"]),
        ("n = len(items)", ["step:count"]),
        ("items.append(n)", ["step:grow"]),
        ("print(items)", ["step:show"]),
    )
    assert p.producer("count", "items") == "make"
    assert p.producer("grow", "items") == "make"
    assert p.producer("show", "items") == "grow"
    assert p.step("count").outputs == ("n",)


def test_after_tags_add_ordering_edges_without_data() -> None:
    p = read(
        ("open('x.txt', 'w').write('1')", ["step:write"]),
        ("a = 1", ["step:other"]),
        ("print(a)", ["step:publish", "after:write", "prev:other"]),
    )
    # `other` also feeds data to `publish`: one data edge, no duplicate after edge.
    assert edges(p) == {("write", "publish", "after", ()), ("other", "publish", "data", ("a",))}
    assert p.step("publish").after == ("write", "other")
    assert p.upstream("publish") == ("other", "write")


def test_after_a_later_step_reorders_the_steps() -> None:
    p = read(("a = 1", ["step:a", "after:b"]), ("b = 1", ["step:b"]))
    assert [s.name for s in p.steps] == ["b", "a"]


def test_independent_steps_have_no_path_between_them() -> None:
    p = read(
        ("import pandas as pd", ["imports"]),
        ("raw = pd.DataFrame({'x': [1, 2]})", ["step:extract"]),
        ("left = raw.x.sum()", ["step:branch_a"]),
        ("right = raw.x.max()", ["step:branch_b"]),
        ("seconds = 3", ["step:branch_c"]),
        ("total = left + right + seconds", ["step:join"]),
    )
    branches = ["branch_a", "branch_b", "branch_c"]
    for one in branches:
        for other in branches:
            assert other not in reachable(p, one)
    assert {b for b in branches if "join" in reachable(p, b)} == set(branches)
    assert p.upstream("branch_c") == ()  # Kale would chain it after branch_b: we do not


def test_pandas_etl_sample_branches_stay_parallel() -> None:
    p = read_notebook(SAMPLES / "pandas_etl.ipynb")
    parallel = ["clean_customers", "aggregate_sales", "daily_trends"]
    for one in parallel:
        assert reachable(p, one).isdisjoint(parallel)
        assert p.upstream(one) == ("extract",)
    assert ("join_report", "publish", "after", ()) in edges(p)


# ------------------------------------------------------------------------------------ Kale


def test_kale_notebook_converts_unchanged() -> None:
    p, problems = check_notebook(SAMPLES / "kale_style.ipynb")
    assert p is not None
    assert (p.name, p.experiment, p.image, p.cache_default) == (
        "kale-iris",
        "kale-demo",
        "python:3.11-slim",
        True,
    )
    assert [s.name for s in p.steps] == [
        "load_data",
        "split_data",
        "train_logreg",
        "train_tree",
        "compare_models",
    ]
    assert [c.index for c in p.step("load_data").cells] == [7, 8]  # `block:` continuation
    assert [c.index for c in p.step("train_tree").cells] == [14, 15]
    assert 9 not in [c.index for s in p.steps for c in s.cells]  # skip
    assert [c.index for c in p.functions] == [5]
    assert [(x.name, x.type) for x in p.parameters] == [
        ("TEST_SIZE", "float"),
        ("SEED", "int"),
        ("LR_C", "float"),
        ("TREE_DEPTH", "int"),
    ]
    assert p.step("train_logreg").settings.resources.memory_limit == "4Gi"
    assert (p.step("train_logreg").metrics, p.step("train_tree").metrics) == (("lr_acc",), ("dt_acc",))
    assert p.upstream("compare_models") == ("train_logreg", "train_tree")
    assert "train_tree" not in reachable(p, "train_logreg")
    # The `!pip install` setup cell is left out, and the only problem is the warning naming it.
    assert 1 not in [c.index for s in p.steps for c in s.cells]
    assert [str(x) for x in problems] == [
        f"{SAMPLES / 'kale_style.ipynb'}: cell 1: warning: code before the first step is left out of "
        "the pipeline (tag it to include it)"
    ]


def test_kale_notebook_metadata_defaults_volumes_and_caching() -> None:
    kale = {
        "pipeline_name": "My Kale Pipeline",
        "experiment_name": "exp",
        "docker_image": "gcr.io/x/y:1",
        "enable_caching": False,
        "steps_defaults": ["label:team:ml", "limit:memory:2Gi"],
        "volumes": [{"mount_point": "/home/jovyan", "name": "workspace", "size": 5, "type": "pvc"}],
    }
    p = read(("x = 1", ["block:a"]), metadata={"kubeflow_notebook": kale})
    assert (p.name, p.experiment, p.image, p.cache_default) == (
        "my-kale-pipeline",
        "exp",
        "gcr.io/x/y:1",
        False,
    )
    assert p.volumes == (VolumeMount("workspace", "/home/jovyan"),)
    settings = p.step("a").settings
    assert settings.labels == (("team", "ml"),) and settings.resources.memory_limit == "2Gi"


def test_cellpipe_metadata_wins_over_kale_metadata() -> None:
    p = read(
        ("x = 1", ["step:a"]),
        metadata={"cellpipe": {"name": "ours"}, "kubeflow_notebook": {"pipeline_name": "theirs"}},
    )
    assert p.name == "ours"


# ------------------------------------------------------------------------------ parameters, metrics


def test_parameters_are_typed_keep_their_case_and_capture_search_comments() -> None:
    p = read(
        (
            "n_trees = 100  # search: [50, 100, 200]\n"
            "LR = 0.1\n"
            "use_gpu = False\n"
            "Model_Kind: str = 'forest'\n"
            "layers = [64, 32]\n"
            "opts = {'solver': 'adam'}\n"
            "offset = -3\n",
            ["parameters"],
        ),
        ("print(n_trees, LR, use_gpu, Model_Kind, layers, opts, offset)", ["step:train"]),
    )
    assert [(x.name, x.type, x.default, x.search) for x in p.parameters] == [
        ("n_trees", "int", 100, "[50, 100, 200]"),
        ("LR", "float", 0.1, None),
        ("use_gpu", "bool", False, None),
        ("Model_Kind", "str", "forest", None),
        ("layers", "list", [64, 32], None),
        ("opts", "dict", {"solver": "adam"}, None),
        ("offset", "int", -3, None),
    ]
    step = p.step("train")
    assert step.parameters == ("LR", "Model_Kind", "layers", "n_trees", "offset", "opts", "use_gpu")
    assert step.inputs == ()  # parameters are not data edges
    assert p.edges == ()


def test_papermill_alias_and_structured_search() -> None:
    p = read(
        ("SEED = 1", ["pipeline-parameters"], {"search": {"SEED": "range(5)"}}), ("x = SEED", ["step:a"])
    )
    assert p.parameters[0].search == "range(5)"


def test_metrics_go_to_the_last_step_before_the_metrics_cell_that_assigns_them() -> None:
    p = read(
        ("acc = 0.5\nloss = 1.0", ["step:train"]),
        ("acc = 0.9", ["step:evaluate"]),
        ("acc\nloss", ["metrics"]),
        ("acc = 0.0", ["step:after_metrics"]),
    )
    assert (p.step("train").metrics, p.step("evaluate").metrics, p.step("after_metrics").metrics) == (
        ("loss",),
        ("acc",),
        (),
    )


def test_kale_style_print_metrics() -> None:
    p = read(("f1 = 0.7", ["block:score"]), ("print(f1)", ["pipeline-metrics"]))
    assert p.step("score").metrics == ("f1",)


# ------------------------------------------------------------------------------------- settings


def test_settings_merge_notebook_defaults_then_tags_then_structured_metadata() -> None:
    p, problems = check(
        (
            "a = 1",
            ["step:tagged", "cpu:1", "retries:2", "env:MODE=tag"],
            {"cpu": "2", "env": {"MODE": "meta"}},
        ),
        ("b = 1", ["step:plain"]),
        metadata={
            "cellpipe": {
                "defaults": {
                    "cpu": "500m",
                    "memory": "1Gi",
                    "retries": 5,
                    "env": {"MODE": "default", "Z": "z"},
                }
            }
        },
    )
    assert p is not None
    tagged, plain = p.step("tagged").settings, p.step("plain").settings
    assert (tagged.resources.cpu_request, tagged.resources.memory_request, tagged.retries) == ("2", "1Gi", 2)
    assert dict(tagged.env) == {"MODE": "meta", "Z": "z"}
    assert (plain.resources.cpu_request, plain.retries, dict(plain.env)) == (
        "500m",
        5,
        {"MODE": "default", "Z": "z"},
    )
    assert [str(x) for x in problems] == [
        "nb.ipynb: cell 0 [metadata.cellpipe.cpu]: warning: tags and metadata.cellpipe disagree on cpu; "
        "metadata.cellpipe wins",
        "nb.ipynb: cell 0 [metadata.cellpipe.env]: warning: tags and metadata.cellpipe disagree on env MODE; "
        "metadata.cellpipe wins",
    ]


def test_structured_metadata_repeating_a_default_still_beats_the_tag() -> None:
    p = read(
        ("a = 1", ["step:a", "env:MODE=tag"], {"env": {"MODE": "default"}}),
        metadata={"cellpipe": {"defaults": {"env": {"MODE": "default"}}}},
    )
    assert dict(p.step("a").settings.env) == {"MODE": "default"}


def test_settings_on_continuation_cells_apply_to_their_step() -> None:
    p = read(("a = 1", ["step:a"]), ("b = a", ["memory:2Gi"]), ("c = b", ["step:c"]))
    assert p.step("a").settings.resources == Resources(memory_request="2Gi")
    assert p.step("c").settings.resources == Resources()


def test_structured_step_form_alone_defines_a_step() -> None:
    p = read(
        ("a = 1", ["step:a"]),
        (
            "b = 2",
            [],
            {"step": "b", "after": ["a"], "gpu": 1, "gpu_type": "nvidia-tesla-t4", "memory": "4Gi"},
        ),
    )
    b = p.step("b")
    assert b.after == ("a",)
    assert b.settings.resources == Resources(memory_request="4Gi", gpu=1, gpu_type="nvidia-tesla-t4")


def test_notebook_level_metadata() -> None:
    p = read(
        ("import pandas", ["imports"]),
        ("a = 1", ["step:a", "image:custom:2"]),
        ("b = 1", ["step:b"]),
        metadata={
            "cellpipe": {
                "name": "Sales Report",
                "description": "d",
                "experiment": "e",
                "image": "python:3.12-slim",
                "packages": ["pyarrow"],
                "volumes": ["shared:/mnt/shared"],
            }
        },
    )
    assert (p.name, p.description, p.experiment, p.image) == ("sales-report", "d", "e", "python:3.12-slim")
    assert p.volumes == (VolumeMount("shared", "/mnt/shared"),)
    assert p.step("a").settings.image == "custom:2" and p.step("b").settings.image is None
    assert any(r.startswith("pyarrow") for r in p.step("b").packages)


def test_unknown_tag_is_a_warning_and_the_notebook_stays_valid() -> None:
    p, problems = check(("a = 1", ["step:a", "flurb", "colour:red"]))
    assert p is not None
    assert [str(x) for x in problems] == [
        "nb.ipynb: cell 0 [flurb]: warning: unknown tag 'flurb' ignored",
        "nb.ipynb: cell 0 [colour:red]: warning: unknown tag 'colour:red' ignored",
    ]


# ------------------------------------------------------------------------------ files and volumes

FILE_CELLS: tuple[Cell, ...] = (
    ("import pandas as pd", ["imports"]),
    ("pd.DataFrame({'a': [1]}).to_csv('out/table.csv')", ["step:write"]),
    ("table = pd.read_csv('out/table.csv')", ["step:read"]),
)


def test_files_passed_between_steps_without_a_shared_volume_warn() -> None:
    p, problems = check(*FILE_CELLS)
    assert p is not None
    assert [str(x) for x in problems] == [
        "nb.ipynb: cell 2 [step:read]: warning: step 'read' reads file 'out/table.csv' that step 'write' "
        "writes; on a cluster, files only travel through a shared volume: declare one in the notebook's "
        "metadata.cellpipe.volumes (or pass the data as a variable)"
    ]


def test_no_file_warning_with_a_shared_volume() -> None:
    volumes = [{"pvc": "shared", "mount_path": "/mnt/work"}]
    p, problems = check(*FILE_CELLS, metadata={"cellpipe": {"volumes": volumes}})
    assert p is not None and problems == []
    assert p.volumes == (VolumeMount("shared", "/mnt/work"),)


def test_a_step_reading_its_own_file_does_not_warn() -> None:
    _, problems = check(("open('a.txt', 'w').write('x')\ntext = open('a.txt').read()", ["step:a"]))
    assert problems == []


# ---------------------------------------------------------------------------------- bad inputs

NOT_DEFINED = "(not a builtin, import, parameter or earlier step's variable)"


@pytest.mark.parametrize(
    ("cells", "expected"),
    [
        pytest.param(
            [("a = 1", ["step:a", "after:c"]), ("b = a", ["step:b"]), ("c = b", ["step:c"])],
            ["nb.ipynb: cell 0 [after:c]: dependency cycle: a -> b -> c -> a (check the after: tags)"],
            id="cycle",
        ),
        pytest.param(
            [("a = 1", ["step:a", "prev:b"]), ("b = 1", ["step:b", "prev:a"])],
            ["nb.ipynb: cell 0 [after:b]: dependency cycle: a -> b -> a (check the after: tags)"],
            id="cycle-kale-prev",
        ),
        pytest.param(
            [("a = 1", ["step:a", "after:a"])],
            ["nb.ipynb: cell 0 [after:a]: a step cannot run after itself"],
            id="after-itself",
        ),
        pytest.param(
            [("a = 1", ["step:a", "after:ghost"])],
            ["nb.ipynb: cell 0 [after:ghost]: after: names unknown step 'ghost'"],
            id="unknown-after",
        ),
        pytest.param(
            [("a = 1", ["step:x"]), ("b = 1", ["step:y"]), ("c = 1", ["step:x"])],
            [
                "nb.ipynb: cell 2 [step:x]: duplicate step name 'x': cell 0 already starts it "
                "(to continue a step, leave the cell untagged or use step: with no name)"
            ],
            id="duplicate",
        ),
        pytest.param(
            [("a = 1", ["step:Train"])],
            [
                "nb.ipynb: cell 0 [step:Train]: invalid step name 'Train': use lowercase letters, digits, "
                "'-' and '_', start with a letter, at most 63 characters"
            ],
            id="invalid-uppercase",
        ),
        pytest.param(
            [("a = 1", ["step:9lives"])],
            [
                "nb.ipynb: cell 0 [step:9lives]: invalid step name '9lives': use lowercase letters, "
                "digits, '-' and '_', start with a letter, at most 63 characters"
            ],
            id="invalid-digit-first",
        ),
        pytest.param(
            [("a = 1", ["step:" + "s" * 64])],
            [
                f"nb.ipynb: cell 0 [step:{'s' * 64}]: invalid step name '{'s' * 64}': use lowercase "
                "letters, digits, '-' and '_', start with a letter, at most 63 characters"
            ],
            id="invalid-too-long",
        ),
        pytest.param(
            [("a = 1", ["step:a_b"]), ("b = 1", ["step:a-b"])],
            ["nb.ipynb: cell 1 [step:a-b]: step 'a-b' collides with step 'a_b': KFP sees both as 'a-b'"],
            id="kfp-name-collision",
        ),
        pytest.param(
            [("a = 1", ["step:a", "memory:4gigs"])],
            [
                "nb.ipynb: cell 0 [memory:4gigs]: '4gigs' is not a valid memory value "
                "(expected a memory quantity such as 512Mi, 4Gi or 1G)"
            ],
            id="memory-4gigs",
        ),
        pytest.param(
            [("a = 1", ["step:a", "gpu:-1"])],
            [
                "nb.ipynb: cell 0 [gpu:-1]: '-1' is not a valid gpu value "
                "(expected a positive whole number of GPUs)"
            ],
            id="gpu-negative",
        ),
        pytest.param(
            [("a = 1", ["step:a", "cpu:abc"])],
            [
                "nb.ipynb: cell 0 [cpu:abc]: 'abc' is not a valid cpu value "
                "(expected a CPU quantity such as 500m, 1 or 2.5)"
            ],
            id="cpu-abc",
        ),
        pytest.param(
            [("a = 1", ["step:a"]), ("b = a + offset", [])],
            [f"nb.ipynb: cell 1: name 'offset' is not defined before step 'a' {NOT_DEFINED}"],
            id="undefined-in-continuation",
        ),
        pytest.param(
            [("a = 1", ["step:a"]), ("b = later", ["step:b"]), ("later = 2", ["step:c"])],
            [f"nb.ipynb: cell 1 [step:b]: name 'later' is not defined before step 'b' {NOT_DEFINED}"],
            id="defined-only-later",
        ),
        pytest.param(
            [("a = 1", ["step:a"]), ("def f(:\n    pass", [])],
            ["nb.ipynb: cell 1: syntax error: invalid syntax (line 1)"],
            id="syntax-error",
        ),
        pytest.param(
            [("x = (1,\n", ["step:a"])],
            ["nb.ipynb: cell 0 [step:a]: syntax error: '(' was never closed (line 1)"],
            id="syntax-error-step-cell",
        ),
        pytest.param(
            ["!wget http://x/data.csv\nsetup = 1", ("import os", ["imports"]), ("print(setup)", ["step:a"])],
            [
                "nb.ipynb: cell 2 [step:a]: step 'a' reads 'setup', which only cell 0 defines, and that cell "
                "is left out of the pipeline (tag it as a step, imports or functions)"
            ],
            id="reads-left-out-preamble",
        ),
        pytest.param(
            [
                ("import os", ["imports"]),
                ("n = os.cpu_count()\nm = 1 + 2", ["parameters"]),
                ("x = 1", ["step:a"]),
            ],
            [
                "nb.ipynb: cell 1 [parameters]: n = ... is not a literal "
                "(int, float, bool, str, list or dict); parameter values travel as KFP parameters, not code",
                "nb.ipynb: cell 1 [parameters]: m = ... is not a literal "
                "(int, float, bool, str, list or dict); parameter values travel as KFP parameters, not code",
            ],
            id="non-literal-parameter",
        ),
        pytest.param(
            [("nothing = {1, 2}\nprint(1)", ["parameters"]), ("x = 1", ["step:a"])],
            [
                "nb.ipynb: cell 0 [parameters]: nothing has type set; use int, float, bool, str, "
                "list, dict or None",
                "nb.ipynb: cell 0 [parameters]: line 2: a parameters cell holds only "
                "NAME = literal assignments",
            ],
            id="unsupported-parameter",
        ),
        pytest.param(
            [("a = 1", ["step:a", "cpu:4", "cpu-limit:2", "memory:8Gi", "memory-limit:4Gi"])],
            [
                "nb.ipynb: cell 0 [cpu-limit]: CPU request 4 is above its limit 2",
                "nb.ipynb: cell 0 [memory-limit]: memory request 8Gi is above its limit 4Gi",
            ],
            id="request-above-limit",
        ),
        pytest.param(
            [("x = 1", ["step:"])],
            ["nb.ipynb: cell 0 [step:]: step: with no name continues a step, but no step is above"],
            id="continuation-without-step",
        ),
        pytest.param(
            [("acc = 1", ["step:a"]), ("acc\nf1", ["metrics"])],
            ["nb.ipynb: cell 1 [metrics]: metric 'f1' is not assigned by any step before this cell"],
            id="unknown-metric",
        ),
    ],
)
def test_bad_input_messages(cells: list[Cell], expected: list[str]) -> None:
    assert errors_of(*cells) == expected


def test_a_notebook_for_another_kernel_is_refused() -> None:
    r_kernel = {"kernelspec": {"name": "ir", "language": "R", "display_name": "R"}}
    assert errors_of(("print(1)", ["step:a"]), metadata=r_kernel) == [
        "nb.ipynb: notebook [kernelspec]: this notebook is written for the R kernel 'ir'; "
        "cellpipe runs Python notebooks"
    ]
    python = {"kernelspec": {"name": "python3", "language": "python", "display_name": "Python 3"}}
    assert [s.name for s in read(("x = 1", ["step:a"]), metadata=python).steps] == ["a"]


def test_a_none_parameter_is_an_optional_str() -> None:
    p, problems = check(("msg = None\nlimit = 3", ["parameters"]), ("print(msg, limit)", ["step:a"]))
    assert p is not None and problems == []
    msg, limit = p.parameters
    assert (msg.type, msg.default, msg.optional) == ("str", None, True)
    assert (limit.type, limit.optional) == ("int", False)


def test_a_notebook_with_nothing_to_run_is_valid_but_does_not_compile() -> None:
    message = (
        "nb.ipynb: notebook: warning: nothing to run: no code cells outside imports, functions, parameters, "
        "metrics and skipped cells"
    )
    for cells in (["# md only prose"], [("import os", ["imports"]), ("x = 1", ["skip"])]):
        p, problems = check(*cells)
        assert p is not None and p.steps == ()
        assert [str(x) for x in problems] == [message]
        with pytest.raises(CellpipeError, match="nothing to compile: a KFP pipeline needs at least one step"):
            compile_pipeline(p)


def test_tag_metadata_conflict_is_only_a_warning() -> None:
    p, problems = check(("a = 1", ["step:a", "memory:1Gi", "step:a"], {"memory": "2Gi", "step": "b"}))
    assert p is not None and [s.name for s in p.steps] == ["b"]
    assert p.steps[0].settings.resources.memory_request == "2Gi"
    assert [str(x) for x in problems] == [
        "nb.ipynb: cell 0 [metadata.cellpipe.memory]: warning: tags and metadata.cellpipe disagree "
        "on memory; metadata.cellpipe wins",
        "nb.ipynb: cell 0 [metadata.cellpipe.step]: warning: tags name step 'a', metadata.cellpipe says 'b'; "
        "metadata wins",
    ]


def test_every_problem_is_reported_at_once() -> None:
    lines = problems_of(
        ("import math", ["imports"]),
        ("a = 1", ["step:a", "after:b", "cpu:abc"]),
        ("b = a", ["step:b", "after:a", "gpu:-1"]),
        ("c = (", ["step:c"]),
        ("d = missing", ["step:d", "after:nowhere", "memory:8Gi", "memory-limit:1Gi", "shiny"]),
        ("e = 1", ["step:a"]),
    )
    assert lines == [
        "nb.ipynb: cell 1 [cpu:abc]: 'abc' is not a valid cpu value "
        "(expected a CPU quantity such as 500m, 1 or 2.5)",
        "nb.ipynb: cell 1 [after:b]: dependency cycle: a -> b -> a (check the after: tags)",
        "nb.ipynb: cell 2 [gpu:-1]: '-1' is not a valid gpu value (expected a positive whole number of GPUs)",
        "nb.ipynb: cell 3 [step:c]: syntax error: '(' was never closed (line 1)",
        "nb.ipynb: cell 4 [after:nowhere]: after: names unknown step 'nowhere'",
        f"nb.ipynb: cell 4 [step:d]: name 'missing' is not defined before step 'd' {NOT_DEFINED}",
        "nb.ipynb: cell 4 [memory-limit]: memory request 8Gi is above its limit 1Gi",
        "nb.ipynb: cell 4 [shiny]: warning: unknown tag 'shiny' ignored",
        "nb.ipynb: cell 5 [step:a]: duplicate step name 'a': cell 1 already starts it "
        "(to continue a step, leave the cell untagged or use step: with no name)",
    ]


def test_bad_tags_notebook_reports_all_its_problems() -> None:
    with pytest.raises(InvalidNotebook) as raised:
        read_notebook(BAD_TAGS)
    nb = BAD_TAGS
    assert [str(p) for p in raised.value.problems] == [
        f"{nb}: cell 3 [memory:4gigs]: '4gigs' is not a valid memory value "
        "(expected a memory quantity such as 512Mi, 4Gi or 1G)",
        f"{nb}: cell 4 [gpu:-1]: '-1' is not a valid gpu value (expected a positive whole number of GPUs)",
        f"{nb}: cell 5 [cpu:abc]: 'abc' is not a valid cpu value "
        "(expected a CPU quantity such as 500m, 1 or 2.5)",
        f"{nb}: cell 6 [after:nonexistent]: after: names unknown step 'nonexistent'",
        f"{nb}: cell 7 [step:load]: duplicate step name 'load': cell 2 already starts it "
        "(to continue a step, leave the cell untagged or use step: with no name)",
        f"{nb}: cell 8 [step:9lives]: invalid step name '9lives': use lowercase letters, digits, "
        "'-' and '_', start with a letter, at most 63 characters",
        f"{nb}: cell 9 [step:broken_syntax]: syntax error: '(' was never closed (line 1)",
        f"{nb}: cell 10 [step:uses_undefined]: name 'undefined_offset' is not defined before step "
        f"'uses_undefined' {NOT_DEFINED}",
    ]
    assert str(raised.value).splitlines() == [str(p) for p in raised.value.problems]


# ------------------------------------------------------------------------------------ files


def test_older_nbformat_is_upgraded(tmp_path: Path) -> None:
    from nbformat import v3

    old = v3.new_notebook(
        worksheets=[
            v3.new_worksheet(
                cells=[
                    v3.new_code_cell("x = 1", metadata={"tags": ["step:make"]}),
                    v3.new_code_cell("y = x", metadata={"tags": ["step:use"]}),
                ]
            )
        ]
    )
    path = tmp_path / "old.ipynb"
    path.write_text(nbformat.writes(old, version=3), encoding="utf-8")
    p = read_notebook(path)
    assert [s.name for s in p.steps] == ["make", "use"] and p.step("use").inputs == ("x",)


def test_every_sample_notebook_reads_without_errors() -> None:
    for path in sorted(SAMPLES.glob("*.ipynb")):
        pipeline, problems = check_notebook(path)
        assert pipeline is not None, [str(p) for p in problems]
        assert pipeline.steps


def test_a_step_may_rebind_a_parameter_as_papermill_runs_it() -> None:
    p = read(
        ("lr = 0.1\nepochs = 3", ["parameters"]),
        ("lr = lr * 2\nepochs += 1", ["step:derive"]),
        ("print(lr, epochs)", ["step:use"]),
    )
    assert p.step("derive").parameters == ("epochs", "lr")
    assert p.step("use").parameters == ()
    assert p.step("use").inputs == ("epochs", "lr")
    assert p.producer("use", "lr") == "derive"


def test_functions_that_change_their_arguments_pass_the_changed_value_on() -> None:
    p = read(
        (
            "def clean(df):\n    df.dropna(inplace=True)\n\ndef add(lst, v):\n    lst.append(v)\n\n"
            "def score(model, X):\n    model.fit(X)\n    return len(X)",
            ["functions"],
        ),
        (
            "import pandas as pd\nraw = pd.DataFrame({'a': [1, None]})\nseen = []\nX = [1]\nm = object()",
            ["step:load"],
        ),
        ("clean(raw)\nadd(seen, 'x')", ["step:clean"]),
        ("n = score(m, X)", ["step:fit"]),
        ("print(raw, seen, X, m)", ["step:show"]),
    )
    assert p.producer("show", "raw") == "clean" and p.producer("show", "seen") == "clean"
    assert p.producer("show", "m") == "fit"
    assert p.producer("show", "X") == "load"  # score changes its model, not its data


def test_what_cannot_be_proven_harmless_passes_the_value_on() -> None:
    p = read(
        ("from helpers import tidy", ["imports"]),
        ("import pandas as pd\nraw = pd.DataFrame({'a': [1]})\nother = [1]", ["step:load"]),
        ("raw.custom_normalise()\nprint(raw.head())", ["step:unknown_method"]),
        ("tidy(other)", ["step:imported_call"]),
        ("print(raw, other)", ["step:show"]),
    )
    assert p.producer("show", "raw") == "unknown_method"  # a method not known to leave it alone
    assert p.producer("show", "other") == "load"  # imported library functions are taken as harmless
    p = read(
        ("def helper(d):\n    d['k'] = 1", ["step:define"]),
        ("data = {}\nlst = []", ["step:load"]),
        ("helper(data)\nprint(lst.count(1))", ["step:use"]),
        ("print(data, lst)", ["step:show"]),
    )
    assert p.producer("show", "data") == "use"  # a function an earlier step defined, that changes d
    assert p.producer("show", "lst") == "load"  # count() leaves a list alone


def after_edges(p: Pipeline) -> set[tuple[str, str]]:
    return {(e.source, e.target) for e in p.edges if e.kind == "after"}


def test_files_written_and_read_by_steps_order_them() -> None:
    p = read(
        ("open('data.txt', 'w').write('1')", ["step:save"]),
        ("import pandas as pd\npd.DataFrame({'a': [1]}).to_csv('t.csv')", ["step:table"]),
        ("print(open('data.txt').read())", ["step:load"]),
        ("import pandas as pd\nprint(pd.read_csv('t.csv'))", ["step:read_table"]),
        ("open('data.txt', 'w').write('2')", ["step:overwrite"]),
        ("print(1)", ["step:unrelated"]),
    )
    assert after_edges(p) == {
        ("save", "load"),  # read after write
        ("table", "read_table"),
        ("save", "overwrite"),  # write after write
        ("load", "overwrite"),  # write after read
    }
    assert not any("notebook order" in w.message for w in p.warnings)


def test_a_computed_path_keeps_the_steps_that_touch_files_in_notebook_order() -> None:
    p, problems = check(
        ("import os\nname = os.path.join('out', 'r.txt')", ["step:name"]),
        ("open(name, 'w').write('1')", ["step:write"]),
        ("print(2)", ["step:unrelated"]),
        ("import numpy as np\nnp.save('w.npy', np.ones(2))", ["step:save"]),
        ("!ls", ["step:shell"]),
    )
    assert p is not None
    assert {("write", "save"), ("save", "shell")} <= after_edges(p)
    assert "unrelated" not in {t for e in p.edges for t in (e.source, e.target)}
    assert [str(w) for w in problems if "cannot name" in w.message] == [
        "nb.ipynb: cell 1 [step:write]: warning: step 'write' touches files it cannot name (a computed "
        "path or a shell command): the steps that touch files run in notebook order",
        "nb.ipynb: cell 4 [step:shell]: warning: step 'shell' touches files it cannot name (a computed "
        "path or a shell command): the steps that touch files run in notebook order",
    ]


def test_an_untagged_notebook_runs_up_to_a_code_mistake_as_papermill_does() -> None:
    p, problems = check("x = 1", "print(totl)", "y = (", "print('never')")
    assert p is not None and [s.name for s in p.steps] == ["nb"]
    assert [str(w) for w in problems] == [
        "nb.ipynb: cell 1: warning: name 'totl' is not defined before step 'nb' (not a builtin, import, "
        "parameter or earlier step's variable); the run stops at this cell, as papermill's does",
        "nb.ipynb: cell 2: warning: syntax error: '(' was never closed (line 1); the run stops at this "
        "cell, as papermill's does",
    ]
    assert p.steps[0].cells[2].python == "y = ("  # run as written: the step raises SyntaxError there
    # A parameters cell is not run as a cell: its syntax error stays an error.
    assert errors_of(("lr = (", ["parameters"]), "print(1)") == [
        "nb.ipynb: cell 0 [parameters]: syntax error: '(' was never closed (line 1)"
    ]
    # Tagged, the same mistakes are errors: a pipeline is checked before any step runs.
    assert len(errors_of(("x = 1", ["step:a"]), ("print(totl)", ["step:b"]), ("y = (", ["step:c"]))) == 2


def test_raises_exception_is_a_known_tag_carried_to_the_step() -> None:
    p, problems = check(("d = {}", ["step:a"]), ("d['k']", ["raises-exception"]), ("print(d)", []))
    assert p is not None and problems == []
    assert [c.raises for c in p.step("a").cells] == [False, True, False]


def test_kale_pipeline_parameters_reported_as_metrics() -> None:
    """Kale's backend test notebook pipeline_parameters_and_metrics.ipynb, in our own words."""
    p = read(
        ("import numpy as np", ["imports"]),
        ("d1 = 5\nd2 = 6", ["pipeline-parameters"]),
        ("rnd_matrix = np.random.rand(d1, d2)", ["step:create_matrix"]),
        ("sum_result = rnd_matrix.sum()", ["prev:create_matrix", "step:sum_matrix"]),
        ("print(d1)\nprint(d2)\nprint(sum_result)", ["pipeline-metrics"]),
    )
    step = p.step("sum_matrix")
    assert step.metrics == ("d1", "d2", "sum_result")
    assert step.parameters == ("d1", "d2")
    assert [c.index for c in step.cells] == [3, 4]  # the metrics cell runs there too, printing its values


def test_a_metrics_cell_whose_values_are_not_in_one_step_says_it_does_not_run() -> None:
    p, problems = check(
        ("a = 1", ["step:one"]),
        ("b = 2", ["step:two"]),
        ("print(a, b)", ["metrics"]),
    )
    assert p is not None and p.step("one").metrics == ("a",) and p.step("two").metrics == ("b",)
    assert [c.index for c in p.step("two").cells] == [1]
    assert [w.message for w in problems] == [
        "the metrics cell does not run in the pipeline (step 'two' does not have 'a'): what it shows is "
        "missing from the output notebook"
    ]


def test_values_that_cannot_cross_a_step_boundary_warn_at_their_cell() -> None:
    p, problems = check(
        ("handle = open('data.txt')\nimport sqlite3\ndb = sqlite3.connect(':memory:')", ["step:make"]),
        ("def rows():\n    yield 1\n\nstream = rows()\nsquares = (x * x for x in [1])\nn = 1", ["step:gen"]),
        ("import threading\nguard = threading.Lock()", ["step:lock"]),
        ("print(handle.read(), db, stream, squares, guard, n)", ["step:use"]),
    )
    assert p is not None
    found = {(w.cell, w.message.split(" holds ")[1].split(",")[0]) for w in problems if "holds" in w.message}
    assert found == {
        (0, "an open file"),
        (0, "a connection"),
        (1, "a generator"),
        (2, "a lock"),
    }
    message = next(w.message for w in problems if "'handle'" in w.message)
    assert message.startswith("step 'make' passes 'handle' to 'use', but 'handle' holds an open file")


def test_validate_lists_the_state_later_steps_lose() -> None:
    p, problems = check(
        ("import logging\nlogging.basicConfig(level=logging.INFO)", ["step:setup"]),
        ("print(1)", ["step:later"]),
    )
    assert p is not None
    assert any("sets state that the steps after 'setup' will not see" in w.message for w in problems)


def test_validate_says_where_a_value_is_assumed_changed() -> None:
    _, problems = check(
        ("raw = {'a': 1}", ["step:load"]),
        ("raw.custom_normalise()", ["step:unknown"]),
        ("print(raw)", ["step:show"]),
    )
    assert [w.message for w in problems] == [
        "step 'unknown' may change 'raw' (a method or function the analysis cannot prove harmless): "
        "later steps read its version, in notebook order"
    ]


def test_validate_lists_where_state_keeps_the_notebook_order() -> None:
    _, problems = check(
        ("import numpy as np\nimport pandas as pd", ["imports"]),
        ("pd.set_option('display.width', 120)\nnp.random.seed(0)", ["step:setup"]),
        ("a = np.random.rand(2)", ["step:draw"]),
        ("b = np.random.rand(2)", ["step:again"]),
    )
    messages = [w.message for w in problems]
    assert (
        "step 'setup' sets process-wide state the later steps replay: the steps after it run after it, "
        "in notebook order" in messages
    )
    assert (
        "the global random generators are seeded: the steps drawing from them run in notebook order "
        "('draw', 'again' each after the one before)" in messages
    )


def test_a_module_an_earlier_step_makes_orders_its_importers() -> None:
    p = read(
        ("%%writefile helper_mod_xyz.py\ndef f():\n    return 1", ["step:write"]),
        ("!echo installing not_installed_mod_xyz", ["step:install"]),
        ("from helper_mod_xyz import f\nprint(f())", ["step:use"]),
        ("import not_installed_mod_xyz", ["step:use_installed"]),
        ("import json\nprint(json.dumps(1))", ["step:plain"]),
    )
    assert {("write", "use"), ("install", "use_installed")} <= after_edges(p)
    assert not any("plain" in pair for pair in after_edges(p) if pair[0] != "install")
