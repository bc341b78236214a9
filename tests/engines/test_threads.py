"""Each running step gets its share of the CPUs (issue 10 item 10): thread pools sized by environment
variables when they load, and pools the fork server loaded earlier held to the share by threadpoolctl.

The speed itself is measured by benchmarks/local_bench.py (f), never asserted here.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from converter.engines.local.engine import LocalEngine
from converter.engines.local.resources import parallel_width, thread_environment, thread_share
from tests.engines.test_local_engine import make_pipeline, make_step, run

REPORT = """
import os
from threadpoolctl import threadpool_info
pools = sorted({(p["internal_api"], p["num_threads"]) for p in threadpool_info()})
threads = (os.environ.get("OMP_NUM_THREADS"), os.environ.get("OPENBLAS_NUM_THREADS"), pools)
"""


def fan_out(imports: str = "") -> object:
    return make_pipeline(
        make_step("left", REPORT.replace("threads =", "left ="), outputs=("left",)),
        make_step("right", REPORT.replace("threads =", "right ="), outputs=("right",)),
        make_step(
            "join",
            "import json\nopen('threads.json', 'w').write(json.dumps([left, right]))",
            inputs=("left", "right"),
        ),
        imports=imports,
    )


def test_the_share_splits_the_cpus_between_steps_that_can_run_at_once() -> None:
    pipeline = fan_out()
    assert parallel_width(pipeline) == 2  # type: ignore[arg-type]
    assert thread_share(pipeline, 8, 8) == 4  # type: ignore[arg-type]
    assert thread_share(pipeline, 8, 1) == 8  # type: ignore[arg-type]  # --max-parallel 1: all of them
    assert thread_share(pipeline, 1, 8) == 1  # type: ignore[arg-type]
    chain = make_pipeline(make_step("a", "x = 1", outputs=("x",)), make_step("b", "y = x", inputs=("x",)))
    assert thread_share(chain, 8, 8) == 8
    assert thread_environment(2, {"OMP_NUM_THREADS": "7"}) == {
        "OPENBLAS_NUM_THREADS": "2",
        "MKL_NUM_THREADS": "2",
        "NUMEXPR_NUM_THREADS": "2",
        "VECLIB_MAXIMUM_THREADS": "2",
        "BLIS_NUM_THREADS": "2",
        "LOKY_MAX_CPU_COUNT": "2",
        "CELLPIPE_THREADS": "2",
    }  # what the user set stays theirs


@pytest.mark.parametrize("fork_server", [True, False])
def test_parallel_steps_run_with_their_share_of_threads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fork_server: bool
) -> None:
    """numpy and scikit-learn loaded by the fork server before the step (its BLAS and OpenMP pools
    sized for the whole machine) or by the step itself: either way each pool has the step's share."""
    folder, workspace = tmp_path / "nb", tmp_path / "ws"
    folder.mkdir()
    monkeypatch.setattr("converter.engines.local.resources.Machine.detect", lambda: _machine(2))
    for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "CELLPIPE_THREADS"):
        monkeypatch.delenv(name, raising=False)
    pipeline = fan_out("import numpy\nimport sklearn.cluster\n")
    engine = LocalEngine(workspace=workspace, fork_server=fork_server)
    result, _ = run(pipeline, folder, workspace, engine=engine)  # type: ignore[arg-type]
    assert result.state == "succeeded"
    for omp, openblas, pools in json.loads((folder / "threads.json").read_text()):
        assert (omp, openblas) == ("1", "1")  # 2 CPUs, 2 steps at once
        assert pools and all(threads == 1 for _, threads in pools), pools  # not one per CPU


def _machine(cpus: int) -> object:
    from converter.engines.local.resources import Machine

    return Machine(tuple(range(cpus)), 8 * 2**30, ())
