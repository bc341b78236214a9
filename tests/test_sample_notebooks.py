"""Reference runs of the sample notebooks, plus checks that keep them well-formed.

Each notebook runs top to bottom in a real `python3` kernel, the way a user would run it in Jupyter. The
values checked here are what the pipeline engines' results are compared with. All notebooks run
concurrently (one kernel each) from a module fixture to keep this file fast; each test then looks at its
own notebook's run, so one broken notebook fails only its own test.
"""

from __future__ import annotations

import ast
import asyncio
import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import joblib
import nbformat
import pandas as pd
import pytest
from nbclient import NotebookClient
from nbformat import NotebookNode

from converter.model import Problem
from converter.notebook.tags import parse_tags

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "sample_notebooks"
BAD_TAGS = ROOT / "tests" / "notebooks" / "bad_tags.ipynb"
PROBE_MARKER = "<<cellpipe-probe>>"

# Kernel-side expressions whose values each test reads after the notebook has run.
PROBES: dict[str, dict[str, str]] = {
    "sklearn_tabular.ipynb": {
        "accuracy": "accuracy",
        "f1": "f1",
        "roc_auc": "roc_auc",
        "n_test": "len(X_test)",
        "n_features": "X_train_scaled.shape[1]",
    },
    "pandas_etl.ipynb": {
        "summary": "summary",
        "n_customers_clean": "len(customers_clean)",
        "duplicates_dropped": "duplicates_dropped",
        "report_revenue": "float(report['revenue'].sum())",
        "report_share": "float(report['revenue_share'].sum())",
        "n_days": "len(daily)",
        "manifest": "manifest",
    },
    "gpu_training.ipynb": {
        "test_accuracy": "test_accuracy",
        "cache_dir": "str(cache_dir)",
        "n_test": "len(X_test)",
    },
    "kale_style.ipynb": {
        "lr_acc": "lr_acc",
        "dt_acc": "dt_acc",
        "best_model_name": "best_model_name",
        "columns": "list(df.columns)",
    },
    "plain_untagged.ipynb": {"r2": "r2", "mae": "mae"},
    "magics_and_shell.ipynb": {
        "name": "name",
        "files": "list(files)",
        "cv_accuracy": "cv_accuracy",
        "training_log": "training_log",
        "config": "config",
        "feature_means": "feature_means.to_dict()",
    },
}
SAMPLE_NAMES = sorted(PROBES)


@dataclass
class Run:
    """One executed copy of a sample notebook: its folder, executed cells and probed values."""

    folder: Path
    nb: NotebookNode
    values: dict[str, Any]

    def stdout(self, cell: int) -> str:
        return "".join(o["text"] for o in self.nb.cells[cell].outputs if o.get("name") == "stdout")


def read(path: Path) -> NotebookNode:
    return nbformat.read(path, as_version=nbformat.NO_CONVERT)


def code_cells(nb: NotebookNode) -> list[tuple[int, NotebookNode]]:
    return [(i, c) for i, c in enumerate(nb.cells) if c.cell_type == "code"]


def tagged(nb: NotebookNode, tag: str) -> int:
    """Index of the first cell carrying `tag`."""
    return next(i for i, c in enumerate(nb.cells) if tag in c.metadata.get("tags", []))


async def execute(name: str, folder: Path) -> Run:
    """Run a copy of the notebook in `folder`, so its data/ and out/ never land in the source tree."""
    folder.mkdir(parents=True)
    shutil.copy(SAMPLES / name, folder / name)
    nb = read(folder / name)
    values = ", ".join(f"{key!r}: {expr}" for key, expr in PROBES[name].items())
    dump = f"_json.dumps({{{values}}}, default=lambda o: o.item())"
    nb.cells.append(nbformat.v4.new_code_cell(f"import json as _json\nprint({PROBE_MARKER!r} + {dump})"))
    client = NotebookClient(
        nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(folder)}}
    )
    await client.async_execute()
    probe = "".join(o["text"] for o in nb.cells.pop().outputs if o.get("name") == "stdout")
    assert probe.startswith(PROBE_MARKER), probe
    return Run(folder, nb, json.loads(probe.removeprefix(PROBE_MARKER)))


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Run | BaseException]:
    base = tmp_path_factory.mktemp("samples")

    async def run_all() -> list[Run | BaseException]:
        jobs = (execute(name, base / Path(name).stem) for name in SAMPLE_NAMES)
        return await asyncio.gather(*jobs, return_exceptions=True)

    return dict(zip(SAMPLE_NAMES, asyncio.run(run_all()), strict=True))


def run_of(runs: dict[str, Run | BaseException], name: str) -> Run:
    run = runs[name]
    if isinstance(run, BaseException):
        raise run
    return run


# ------------------------------------------------------------------------------------------ static


def test_every_sample_is_probed_and_documented() -> None:
    on_disk = sorted(p.name for p in SAMPLES.glob("*.ipynb"))
    assert on_disk == SAMPLE_NAMES
    readme = (SAMPLES / "README.md").read_text()
    for name in on_disk:
        assert f"`{name}`" in readme


@pytest.mark.parametrize("name", SAMPLE_NAMES)
def test_sample_is_clean_nbformat_45_without_outputs(name: str) -> None:
    nb = read(SAMPLES / name)
    nbformat.validate(nb)
    assert (nb.nbformat, nb.nbformat_minor) == (4, 5)
    assert nb.metadata.kernelspec.name == "python3"
    for _, cell in code_cells(nb):
        assert cell.outputs == [] and cell.execution_count is None


@pytest.mark.parametrize("name", SAMPLE_NAMES)
def test_sample_tags_are_in_the_vocabulary(name: str) -> None:
    """A typo in a sample is a bug: every tag parses cleanly with the one vocabulary (notebook/tags.py)."""
    problems: list[Problem] = []
    for index, cell in enumerate(read(SAMPLES / name).cells):
        parse_tags(name, index, [str(tag) for tag in cell.metadata.get("tags", [])], problems)
    assert problems == []


@pytest.mark.parametrize("name", SAMPLE_NAMES)
def test_parameters_cells_hold_only_literal_assignments(name: str) -> None:
    for _, cell in code_cells(read(SAMPLES / name)):
        if not {"parameters", "pipeline-parameters"} & set(cell.metadata.get("tags", [])):
            continue
        for stmt in ast.parse(cell.source).body:
            assert isinstance(stmt, ast.Assign) and len(stmt.targets) == 1
            assert isinstance(stmt.targets[0], ast.Name)
            assert isinstance(ast.literal_eval(stmt.value), int | float | bool | str | list | dict)


def test_gpu_notebook_carries_structured_settings() -> None:
    nb = read(SAMPLES / "gpu_training.ipynb")
    assert nb.metadata.cellpipe["name"] == "digits-gpu-training"
    structured = [c.metadata.cellpipe for c in nb.cells if "cellpipe" in c.metadata]
    assert structured == [{"step": "export", "after": ["train"], "memory": "1Gi"}]


def test_bad_tags_notebook_matches_its_documented_problems() -> None:
    """The first cell's table is what validator tests assert; it must describe the notebook exactly."""
    nb = read(BAD_TAGS)
    nbformat.validate(nb)
    rows = re.findall(r"^\| (\d+) \| (\S+) \| (.+?) \|$", nb.cells[0].source, flags=re.MULTILINE)
    assert len(rows) == 8
    documented = {int(index): (tag, problem) for index, tag, problem in rows}
    for index, cell in code_cells(nb):
        tag, problem = documented.get(index, ("-", "none"))
        if tag != "-":
            assert tag in cell.metadata.get("tags", [])
        if problem == "syntax error":
            with pytest.raises(SyntaxError):
                ast.parse(cell.source)
            continue
        names = {n.id for n in ast.walk(ast.parse(cell.source)) if isinstance(n, ast.Name)}
        if undefined := re.fullmatch(r"reads (\w+), which nothing defines", problem):
            assert undefined.group(1) in names
            assert sum(undefined.group(1) in c.source for _, c in code_cells(nb)) == 1
    assert [i for i, _ in code_cells(nb) if i not in documented] == [1, 2]  # imports and the first `load`


# ------------------------------------------------------------------------------------------ runs


@pytest.mark.parametrize("name", SAMPLE_NAMES)
def test_sample_runs_without_errors_or_warnings(runs: dict[str, Run | BaseException], name: str) -> None:
    run = run_of(runs, name)
    for index, cell in code_cells(run.nb):
        for output in cell.outputs:
            assert output.output_type != "error", f"cell {index}"
            assert output.get("name") != "stderr", f"cell {index} wrote to stderr: {output['text']}"
    written = {p.relative_to(run.folder).parts[0] for p in run.folder.rglob("*") if p.is_file()}
    assert written <= {name, "data", "out"}


def test_sklearn_tabular_reference(runs: dict[str, Run | BaseException]) -> None:
    values = run_of(runs, "sklearn_tabular.ipynb").values
    assert values["n_test"] == 114 and values["n_features"] == 30
    assert values["accuracy"] > 0.9
    assert values["f1"] > 0.9
    assert values["roc_auc"] > 0.95


def test_pandas_etl_reference(runs: dict[str, Run | BaseException]) -> None:
    run = run_of(runs, "pandas_etl.ipynb")
    values, summary, manifest = run.values, run.values["summary"], run.values["manifest"]
    assert values["n_customers_clean"] == 200 and values["duplicates_dropped"] == 12
    assert values["n_days"] == 90
    assert values["report_revenue"] == pytest.approx(summary["total_revenue"])
    assert values["report_share"] == pytest.approx(1.0, abs=1e-3)
    assert summary["snapshot_date"] == "2024-03-30"
    report = pd.read_csv(run.folder / "out" / "region_report.csv")
    assert sorted(report["region"]) == ["east", "north", "south", "west"]
    assert report.loc[0, "region"] == summary["best_region"]
    on_disk = json.loads((run.folder / "out" / "manifest.json").read_text())
    assert on_disk == manifest
    assert (manifest["rows"], manifest["timezone"], manifest["snapshot_date"]) == (4, "UTC", "2024-03-30")
    assert len(pd.read_csv(run.folder / "data" / "sales.csv")) == 5000


def test_gpu_training_reference(runs: dict[str, Run | BaseException]) -> None:
    run = run_of(runs, "gpu_training.ipynb")
    assert run.values["test_accuracy"] > 0.9
    bundle = joblib.load(run.folder / "out" / "digits_mlp.joblib")
    assert set(bundle) == {"scaler", "model"}
    card = json.loads((run.folder / "out" / "model_card.json").read_text())
    assert card["test_accuracy"] == round(run.values["test_accuracy"], 4)
    assert card["hidden_layer_sizes"] == [128, 64]
    cache = run.folder / run.values["cache_dir"]  # an absolute /mnt/cache stays absolute
    losses = json.loads((cache / "loss_curve.json").read_text())
    assert len(losses) == card["epochs"]


def test_kale_style_reference(runs: dict[str, Run | BaseException]) -> None:
    run = run_of(runs, "kale_style.ipynb")
    values = run.values
    assert values["lr_acc"] > 0.9 and values["dt_acc"] > 0.9
    assert values["best_model_name"] in {"logistic_regression", "decision_tree"}
    assert values["columns"] == ["sepal_length", "sepal_width", "petal_length", "petal_width", "target"]
    printed = [float(line) for line in run.stdout(tagged(run.nb, "pipeline-metrics")).split()]
    assert printed == [values["lr_acc"], values["dt_acc"]]


def test_plain_untagged_reference(runs: dict[str, Run | BaseException]) -> None:
    run = run_of(runs, "plain_untagged.ipynb")
    assert run.values["r2"] > 0.35
    assert 30 < run.values["mae"] < 60
    last = run.nb.cells[-1].outputs
    assert [o.output_type for o in last] == ["execute_result"]
    assert last[0]["data"]["text/plain"].split()[0] == "bmi"  # the final expression's value is displayed


def test_magics_and_shell_reference(runs: dict[str, Run | BaseException]) -> None:
    run = run_of(runs, "magics_and_shell.ipynb")
    values = run.values
    assert values["name"] == "wine-forest-50"
    assert values["files"] == ["config.json"]
    assert values["cv_accuracy"] > 0.9
    assert values["training_log"] == ["fitting 50 trees of depth <= 4 on 7 features", "fitted 50 trees"]
    assert len(values["feature_means"]) == 7
    config = json.loads((run.folder / "data" / "config.json").read_text())
    assert config == values["config"] and len(config["features"]) == 7
    summary = json.loads((run.folder / "data" / "summary.json").read_text())
    assert summary == {
        "run": "wine-forest-50",
        "cv_accuracy": values["cv_accuracy"],
        "features": 7,
        "log_lines": 2,
    }
    assert "wine-forest-50" in run.stdout(
        tagged(run.nb, "step:configure")
    )  # `!echo $name` expanded the Python variable
