"""Differential suite: corpus notebooks under papermill and under `cellpipe run -o`, untagged and in steps.

A pipeline computes and shows what the notebook computes and shows. Every corpus notebook
(`corpus/*.cells`, see `corpus.py`) runs once under papermill and twice under cellpipe (as written,
split into steps, and untagged, as one step); each cellpipe run must agree with papermill on the exit
status and, cell by cell, on printed text, results, pictures and errors (see `compare.py`).

All runs happen in one module fixture, in three batch processes (papermill's runs in two, cellpipe's
in one), so interpreter and import costs are paid per batch, not per notebook. Each notebook runs in a
folder of its own, its working directory, holding the side files its header declares.

A case that fails for a known reason is listed in KNOWN_DIFFERENCES with the reason, as a strict xfail:
when the difference is fixed the test fails until the entry is removed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.differential import compare, corpus

ROOT = Path(__file__).resolve().parents[2]
TIMEOUT = 120  # seconds for one cell (papermill); a whole batch gets four times this

# (notebook, variant) -> the start of the message with which cellpipe refuses the notebook (exit 2)
# where papermill runs it and fails at the cell: by design, a mistake in a tagged pipeline's code is
# a validation error before any step runs; an untagged notebook runs as papermill runs it.
REFUSED_BY_DESIGN: dict[tuple[str, str], str] = {
    ("syntax_error", "steps"): "syntax error: '(' was never closed",
    ("undefined_name", "steps"): "name 'totl' is not defined before step 'second'",
}
# (notebook, variant) -> why cellpipe still differs from papermill there.
KNOWN_DIFFERENCES: dict[tuple[str, str], str] = {
}

_PAPERMILL_BATCH = """
import io, json, logging, sys, os
import papermill
jobs = json.load(open(sys.argv[2]))
results = {}
for job in jobs:
    log = io.StringIO()
    handler = logging.StreamHandler(log)
    logging.getLogger("papermill").addHandler(handler)
    try:
        papermill.execute_notebook(job["input"], job["output"], parameters=job["parameters"],
                                   kernel_name="python3", progress_bar=False, cwd=job["folder"],
                                   execution_timeout=%(timeout)d)
        results[job["key"]] = [0, log.getvalue()]
    except Exception as error:  # papermill's command line exits 1 on any exception
        results[job["key"]] = [1, log.getvalue() + repr(error)[-3000:]]
    logging.getLogger("papermill").removeHandler(handler)
open(sys.argv[1], "w").write(json.dumps(results))
"""
_CELLPIPE_BATCH = """
import contextlib, io, json, os, sys
from converter.cli.main import main
jobs = json.load(open(sys.argv[2]))
results = {}
for job in jobs:
    os.environ["CELLPIPE_HOME"] = job["folder"] + "/.cellpipe-home"
    os.chdir(job["folder"])
    err = io.StringIO()
    argv = ["run", job["input"], "--quiet", "-o", job["output"]]
    for name, value in job["parameters"].items():
        argv += ["-p", name, json.dumps(value) if not isinstance(value, str) else value]
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = main(argv)
        except SystemExit as exit:
            code = exit.code if isinstance(exit.code, int) else 1
    results[job["key"]] = [code, err.getvalue()]
open(sys.argv[1], "w").write(json.dumps(results))
"""

ENTRIES = {e.name: e for e in corpus.entries()}
CASES = [
    pytest.param(
        name,
        variant,
        id=f"{name}-{variant}",
        marks=[pytest.mark.xfail(strict=True, reason=KNOWN_DIFFERENCES[name, variant])]
        if (name, variant) in KNOWN_DIFFERENCES
        else [],
    )
    for name in ENTRIES
    for variant in corpus.VARIANTS
]


def _start(
    script: str, jobs: list[dict[str, Any]], base: Path, label: str
) -> tuple[subprocess.Popen[bytes], Path]:
    jobs_file, results = base / f"{label}-jobs.json", base / f"{label}-results.json"
    jobs_file.write_text(json.dumps(jobs))
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    argv = [sys.executable, "-c", script, str(results), str(jobs_file)]
    return subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL), results


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[int, str, Path]]:
    """key -> (exit code, log, executed notebook); keys are `tool/name/variant`."""
    base = tmp_path_factory.mktemp("differential")
    papermill_jobs, cellpipe_jobs = [], []
    for entry in ENTRIES.values():
        for tool, variant in (("papermill", "steps"), ("cellpipe", "steps"), ("cellpipe", "untagged")):
            folder = base / tool / variant / entry.name
            path = entry.write(folder, variant)
            job = {
                "key": f"{tool}/{entry.name}/{variant}",
                "folder": str(folder),
                "input": str(path),
                "output": str(folder / "executed.ipynb"),
                "parameters": entry.parameters,
            }
            (papermill_jobs if tool == "papermill" else cellpipe_jobs).append(job)
    half = len(papermill_jobs) // 2
    started = [
        _start(_PAPERMILL_BATCH % {"timeout": TIMEOUT}, papermill_jobs[:half], base, "papermill-1"),
        _start(_PAPERMILL_BATCH % {"timeout": TIMEOUT}, papermill_jobs[half:], base, "papermill-2"),
        _start(_CELLPIPE_BATCH, cellpipe_jobs, base, "cellpipe"),
    ]
    try:
        for process, _ in started:
            process.wait(timeout=TIMEOUT * 4)
    finally:
        for process, _ in started:
            process.kill()
    raw: dict[str, list[Any]] = {}
    for _, results in started:
        if results.exists():
            raw.update(json.loads(results.read_text()))
    found = {}
    for job in papermill_jobs + cellpipe_jobs:
        code, log = raw.get(job["key"], [None, "the batch did not finish"])
        found[job["key"]] = (code, log, Path(job["output"]))
    return found


def test_corpus_is_there() -> None:
    assert len(ENTRIES) >= 8, sorted(ENTRIES)


@pytest.mark.parametrize(("name", "variant"), CASES)
def test_cellpipe_agrees_with_papermill(
    name: str, variant: str, runs: dict[str, tuple[int, str, Path]]
) -> None:
    our_code, our_log, our_path = runs[f"cellpipe/{name}/{variant}"]
    their_code, their_log, their_path = runs[f"papermill/{name}/steps"]
    where = f"\ncellpipe log:\n{our_log[-3000:]}\npapermill log:\n{their_log[-1500:]}"
    assert their_code is not None, where
    if (name, variant) in REFUSED_BY_DESIGN:
        assert their_code == 1 and our_code == 2, where
        assert REFUSED_BY_DESIGN[name, variant] in our_log and "Traceback" not in our_log, where
        assert not our_path.exists(), "a refused notebook leaves no output notebook"
        return
    assert our_code == their_code, f"exit status: cellpipe {our_code}, papermill {their_code}" + where
    assert our_path.exists(), "cellpipe wrote no output notebook" + where
    problems = compare.differences(compare.notebook_view(our_path), compare.notebook_view(their_path))
    assert not problems, "\n".join(problems) + where
