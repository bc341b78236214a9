"""Random notebooks never crash the converter: it compiles them or raises its own error type.

Tags come from the contract (valid and malformed values), Kale's aliases and plain garbage; cells
mix Python that assigns and reads a small pool of names (so data edges, parameters and metrics
appear), magics, shell escapes, syntax errors and empty cells. Anything other than success or a
`CellpipeError` (of which `InvalidNotebook` is one) is a bug: a traceback a user would see.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

import nbformat
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

from converter.errors import CellpipeError
from converter.kfp.compile import compile_pipeline
from converter.notebook.reader import read_notebook

NAMES = ["a", "b", "c", "dsl", "report", "metrics", "pipeline", "a_b", "a-b"]

VALID_TAGS = [
    *(f"step:{n}" for n in NAMES),
    "step:",
    *(f"after:{n}" for n in NAMES[:4]),
    "imports",
    "functions",
    "parameters",
    "metrics",
    "skip",
    "cpu:500m",
    "cpu-limit:2",
    "memory:1Gi",
    "memory-limit:512Mi",
    "gpu:1",
    "gpu-type:nvidia-tesla-t4",
    "gpu-type:example.com/accel=mi300",
    "gpu-vendor:amd.com/gpu",
    "image:python:3.12-slim",
    "packages:requests,pyyaml==6.0.1",
    "retries:2",
    "timeout:30m",
    "cache:off",
    "cache:on",
    "env:MODE=test",
    "secret:db-creds:password:DB_PASSWORD",
    "node-selector:pool=batch",
    "toleration:dedicated=ml:NoSchedule",
    "toleration:spot:NoExecute",
    "label:team:ml",
    "annotation:owner:me",
    "volume:shared:/mnt/shared",
    "report:off",
]
INVALID_TAGS = [
    "step:Bad Name",
    "step:9lives",
    "step:" + "x" * 70,
    "after:nowhere",
    "after:",
    "cpu:abc",
    "cpu:0",
    "memory:4gigs",
    "gpu:-1",
    "gpu:two",
    "retries:-1",
    "timeout:forever",
    "cache:maybe",
    "env:=x",
    "env:1BAD=x",
    "secret:only-two:parts",
    "node-selector:novalue",
    "toleration:key=value:Sometimes",
    "label:nocolon",
    "volume:pvc:relative/path",
    "limit:disk:10Gi",
    "image:",
]
KALE_TAGS = [
    *(f"block:{n}" for n in NAMES[:4]),
    "block:",
    *(f"prev:{n}" for n in NAMES[:4]),
    "pipeline-parameters",
    "pipeline-metrics",
    "limit:cpu:2",
    "limit:memory:8Gi",
    "limit:nvidia.com/gpu:1",
    "cache:disabled",
    "report:disabled",
]


# Snippets that define or read a small pool of names the way notebooks do.
DEFINE = [
    "a = 1\nb = 2\nc = [a, b]",
    "a = 1",
    "import math\nb = math.sqrt(4)",
    "import numpy as np\nc = np.zeros(3)",
    "dsl = 1\nreport = 2\nmetrics = 3",
    "lr = 0.1\nepochs = 3\nnames = ['x']\nconf = {'k': 1}",
    "def helper(x):\n    return x + 1",
]
USE = [
    "b = a + 1",
    "c = [a, b]\nc.append(3)",
    "print(a, b, c)",
    "a = a * 2",
    "a\nb",
    "for i in range(3):\n    b = i",
    "if a:\n    c = 1\nprint(c)",
    "open('data.txt', 'w').write(str(a))",
    "text = open('data.txt').read()",
    "%time a = 1",
    "%%capture out\nprint(a)",
    "!echo $a",
    "files = !ls",
    "%env MODE=1",
]
TRICKY = [
    "",
    "c = helper(b)",
    "print(dsl, report, metrics)",
    "lr = compute()",
    "%run other.py",
    "from os.path import *",
    "def broken(:\n    pass",
    "x = (",
    "undefined_name + 1",
    "global g\ng = 1",
    "del a",
]
# Settings that keep a notebook valid whatever cells they land on (steps, roles, after: can break it).
SAFE_SETTINGS = [
    t for t in VALID_TAGS + KALE_TAGS if ":" in t and not t.startswith(("step:", "block:", "after:", "prev:"))
]
STEPS = [t for t in VALID_TAGS + KALE_TAGS if t.startswith(("step:", "block:"))]
GARBAGE = st.text(alphabet="abc:-_=/ 1", max_size=12)
ANY_TAG = st.one_of(st.sampled_from(VALID_TAGS + INVALID_TAGS + KALE_TAGS), GARBAGE)
CELL_METADATA: list[Any] = [
    {"step": "a"},
    {"step": "Bad"},
    {"after": ["b"]},
    {"after": 3},
    {"role": "imports"},
    {"role": "nonsense"},
    {"cpu": "2", "memory": "1Gi", "gpu": 1},
    {"cpu": "abc"},
    {"env": {"A": "1"}, "secrets": [{"secret": "s", "key": "k", "env": "E"}]},
    {"unknown": 1},
    [1, 2],
]
NOTEBOOK_METADATA: list[dict[str, Any]] = [
    {},
    {"cellpipe": {"name": "Random Pipeline", "defaults": {"retries": 1, "cpu": "250m"}}},
    {"cellpipe": {"volumes": ["shared:/mnt/shared"], "image": "python:3.12-slim"}},
    {"kubeflow_notebook": {"pipeline_name": "kale", "enable_caching": False}},
    {"kubeflow_notebook": {"steps_defaults": ["label:a:b"], "volumes": [{"name": "v", "mount_point": "/v"}]}},
    {"cellpipe": {"defaults": {"cpu": "nope"}}},
    {"cellpipe": "not an object"},
]


@st.composite
def notebooks(draw: st.DrawFn) -> nbformat.NotebookNode:
    """Half use only safe tags and defined names, so that many notebooks reach KFP's compiler."""
    safe = draw(st.booleans())
    sources = st.sampled_from(DEFINE + USE if safe else DEFINE + USE + TRICKY)
    nb = new_notebook()
    for index in range(draw(st.integers(min_value=2, max_value=8))):
        if draw(st.integers(0, 9)) == 0 and index:
            nb.cells.append(new_markdown_cell("notes"))
            continue
        cell = new_code_cell(DEFINE[0] if index == 0 and safe else draw(sources))
        if safe:  # at most one step tag, and the first cell starts a step (or there is none at all)
            step = draw(st.sampled_from(STEPS[:-1] if index == 0 else ["", *STEPS]))
            cell_tags = [step] * bool(step) + draw(st.lists(st.sampled_from(SAFE_SETTINGS), max_size=3))
        else:
            cell_tags = draw(st.lists(ANY_TAG, max_size=3))
        if cell_tags:
            cell.metadata["tags"] = cell_tags
        if not safe and draw(st.integers(0, 5)) == 0:
            cell.metadata["cellpipe"] = draw(st.sampled_from(CELL_METADATA))
        nb.cells.append(cell)
    nb.metadata.update(draw(st.sampled_from(NOTEBOOK_METADATA[:5] if safe else NOTEBOOK_METADATA)))
    return nb


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(nb=notebooks(), filename=st.sampled_from(["nb.ipynb", "My Notebook.ipynb", "2024 report.ipynb"]))
def test_converter_compiles_or_raises_its_own_error(nb: nbformat.NotebookNode, filename: str) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / filename
        # Written as plain JSON: real notebooks may hold tags nbformat's schema rejects (empty ones).
        path.write_text(json.dumps(nb), encoding="utf-8")
        try:
            pipeline = read_notebook(path)
            compiled = compile_pipeline(pipeline)
        except CellpipeError:
            return
    assert compiled.ir_yaml.startswith("# PIPELINE DEFINITION")
    assert compiled.dsl.startswith('"""KFP v2 pipeline')
