"""The local engine with real step processes: scheduling, failures, timeouts, retries, cancel, caching,
resume, resources, orphans and the event stream. Pipelines are built by hand so each test shows the
exact DAG it exercises; the sample notebooks run at the end through the real reader."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import pytest
import yaml

from converter.engines.base import RunRequest, RunResult
from converter.engines.local import engine as local
from converter.engines.local.engine import LocalEngine
from converter.engines.local.processes import fork_server_supported
from converter.errors import CellpipeError
from converter.events import Event, step_states
from converter.model import CodeCell, Edge, Parameter, Pipeline, Resources, Step, StepSettings
from converter.step import stepcode
from converter.store.runstore import RunStore

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = ROOT / "sample_notebooks"
FORK_MODES = [
    pytest.param(
        True, id="fork-server", marks=pytest.mark.skipif(not fork_server_supported(), reason="no fork")
    ),
    pytest.param(False, id="subprocess"),
]

# ---------------------------------------------------------------------- building pipelines


def make_step(
    name: str,
    code: str,
    *,
    inputs: tuple[str, ...] = (),
    outputs: tuple[str, ...] = (),
    params: tuple[str, ...] = (),
    metrics: tuple[str, ...] = (),
    after: tuple[str, ...] = (),
    modules: tuple[str, ...] = (),
    packages: tuple[str, ...] = (),
    **settings: Any,
) -> Step:
    code = textwrap.dedent(code).strip()
    return Step(
        name=name,
        cells=(CodeCell(len(name) * 10, code, code),),
        inputs=tuple(sorted(inputs)),
        outputs=tuple(sorted(outputs)),
        parameters=tuple(sorted(params)),
        metrics=tuple(sorted(metrics)),
        after=after,
        packages=packages,
        settings=StepSettings(**settings),
        modules=modules,
    )


def make_pipeline(
    *steps: Step, params: tuple[Parameter, ...] = (), imports: str = "", name: str = "test-pipe"
) -> Pipeline:
    """Data edges from each input to the latest earlier step that outputs it, plus `after` edges."""
    edges: list[Edge] = []
    for i, step in enumerate(steps):
        carried: dict[str, list[str]] = {}
        for var in step.inputs:
            producer = next(s.name for s in reversed(steps[:i]) if var in s.outputs)
            carried.setdefault(producer, []).append(var)
        edges += [Edge(source, step.name, "data", tuple(names)) for source, names in carried.items()]
        edges += [Edge(source, step.name, "after") for source in step.after]
    imports_cells = (CodeCell(0, imports, imports),) if imports else ()
    return Pipeline(
        name=name,
        notebook="nb.ipynb",
        description="",
        experiment=None,
        image="python:3.11",
        imports=imports_cells,
        functions=(),
        parameters=params,
        steps=steps,
        edges=tuple(edges),
    )


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """The notebook's folder: steps run here."""
    path = tmp_path / "nb"
    path.mkdir()
    return path


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    return tmp_path / "ws"


def run(
    pipeline: Pipeline,
    folder: Path,
    workspace: Path,
    *,
    engine: LocalEngine | None = None,
    sink: Callable[[Event], None] | None = None,
    **request: Any,
) -> tuple[RunResult, list[Event]]:
    events: list[Event] = []
    sinks: list[Callable[[Event], None]] = [events.append] + ([sink] if sink else [])
    engine = engine or LocalEngine(workspace=workspace)
    result = engine.run(RunRequest(pipeline, folder / "nb.ipynb", **request), sinks)
    check_stream(events, pipeline, result, workspace)
    return result, events


def check_stream(events: list[Event], pipeline: Pipeline, result: RunResult, workspace: Path) -> None:
    """The event stream contract: numbering, first and last events, each step's event grammar,
    and a run store that agrees with the stream."""
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    assert events[0].type == "run_started" and events[-1].type == "run_finished"
    assert events[-1].state == result.state
    for step in pipeline.steps:
        kinds = [e.type for e in events if e.step == step.name and e.type not in ("step_log", "metrics")]
        if kinds and kinds[0] in ("step_cached", "step_skipped"):
            assert len(kinds) == 1, kinds
            continue
        if not kinds:
            assert result.state == "cancelled"
            continue
        assert kinds[0] == "step_queued", kinds
        body = kinds[1:]
        while body[:2] == ["step_started", "step_retrying"]:
            body = body[2:]
        assert body in (
            [],
            ["step_started"],
            ["step_started", "step_succeeded"],
            ["step_started", "step_failed"],
        ), kinds
        started = [i for i, e in enumerate(events) if e.step == step.name and e.type == "step_started"]
        logs = [i for i, e in enumerate(events) if e.step == step.name and e.type == "step_log"]
        ends = [
            i
            for i, e in enumerate(events)
            if e.step == step.name and e.type in ("step_succeeded", "step_failed")
        ]
        assert all(started[0] < i for i in logs) and all(i < ends[0] for i in logs) if logs and ends else True
    names = [s.name for s in pipeline.steps]
    assert result.step_states == step_states(events, names)
    stored = RunStore(workspace / "runs.db").get_run(result.run_id)
    assert stored.state == result.state
    assert {s.name: s.state for s in stored.steps} == result.step_states


def of(events: list[Event], type: str, step: str | None = None) -> list[Event]:
    return [e for e in events if e.type == type and (step is None or e.step == step)]


def log_lines(events: list[Event], step: str) -> list[str]:
    return [e.line or "" for e in of(events, "step_log", step)]


def gone(pid: int, within: float = 10.0) -> bool:
    """True once the process no longer runs (a zombie waiting for init to reap it counts as gone)."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.05)
    return False


# ---------------------------------------------------------------------- scheduling


@pytest.mark.parametrize("fork_server", FORK_MODES)
def test_independent_steps_overlap_and_values_flow(folder: Path, workspace: Path, fork_server: bool) -> None:
    pipeline = make_pipeline(
        make_step("a", "x = [1, 2, 3]", outputs=("x",)),
        make_step("b", "import time; time.sleep(1.0)\ny = sum(x)", inputs=("x",), outputs=("y",)),
        make_step("c", "import time; time.sleep(1.0)\nz = len(x)", inputs=("x",), outputs=("z",)),
        make_step("d", "print('d got', y, z)", inputs=("y", "z")),
    )
    engine = LocalEngine(workspace=workspace, max_parallel=2, fork_server=fork_server)
    result, events = run(pipeline, folder, workspace, engine=engine)
    assert result.state == "succeeded"
    start = {e.step: e.time for e in of(events, "step_started")}
    end = {e.step: e.time for e in of(events, "step_succeeded")}
    assert start["b"] < end["c"] and start["c"] < end["b"]  # the siblings ran at the same time
    assert end["a"] <= min(start["b"], start["c"]) and max(end["b"], end["c"]) <= start["d"]
    assert log_lines(events, "d") == ["d got 6 3"]
    assert (workspace / "runs" / result.run_id / "d" / "log.txt").read_text() == "d got 6 3\n"


def test_max_parallel_one_runs_siblings_one_after_the_other(folder: Path, workspace: Path) -> None:
    pipeline = make_pipeline(
        make_step("b", "import time; time.sleep(0.3)"), make_step("c", "import time; time.sleep(0.3)")
    )
    _, events = run(pipeline, folder, workspace, max_parallel=1)
    start = {e.step: e.time for e in of(events, "step_started")}
    end = {e.step: e.time for e in of(events, "step_succeeded")}
    assert end["b"] <= start["c"]


def test_cpu_requests_keep_big_steps_apart(folder: Path, workspace: Path) -> None:
    cpus = str(len(os.sched_getaffinity(0)))
    pipeline = make_pipeline(
        make_step("b", "import time; time.sleep(0.3)", resources=Resources(cpu_request=cpus)),
        make_step("c", "import time; time.sleep(0.3)", resources=Resources(cpu_request=cpus)),
    )
    _, events = run(pipeline, folder, workspace, max_parallel=4)
    start = {e.step: e.time for e in of(events, "step_started")}
    end = {e.step: e.time for e in of(events, "step_succeeded")}
    assert end["b"] <= start["c"]  # each needs the whole machine


def test_step_that_can_never_fit_fails_before_anything_runs(folder: Path, workspace: Path) -> None:
    pipeline = make_pipeline(
        make_step("small", "open('ran', 'w').write('x')"),
        make_step("big", "pass", resources=Resources(cpu_request="1000", memory_request="100Ei")),
    )
    with pytest.raises(
        CellpipeError, match=r"step 'big' requests 1000 CPUs but this machine has \d+ and .* memory"
    ):
        LocalEngine(workspace=workspace).run(RunRequest(pipeline, folder / "nb.ipynb"), [])
    assert not (folder / "ran").exists()
    assert not (workspace / "runs.db").exists() or RunStore(workspace / "runs.db").list_runs() == []


def test_fitting_resources_runs_oversized_steps_with_a_warning(folder: Path, workspace: Path) -> None:
    pipeline = make_pipeline(
        make_step(
            "big",
            "import os; print(repr(os.environ['CUDA_VISIBLE_DEVICES']))",
            resources=Resources(cpu_request="1000", gpu=1),
        ),
    )
    env_before = os.environ.pop("CUDA_VISIBLE_DEVICES", None)
    try:
        engine = LocalEngine(workspace=workspace, fit_resources=True)
        result, events = run(pipeline, folder, workspace, engine=engine)
    finally:
        if env_before is not None:
            os.environ["CUDA_VISIBLE_DEVICES"] = env_before
    assert result.state == "succeeded"
    assert "fitted to this machine" in (events[0].data or {})["warnings"][0]
    if not local.Machine.detect().gpus:
        assert log_lines(events, "big") == ["''"]  # no GPU here: CUDA sees none, the step runs on the CPU


def test_gpus_are_handed_out_exclusively(
    folder: Path, workspace: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    code = "import os, time; print(os.environ['CUDA_VISIBLE_DEVICES']); time.sleep(0.5)"
    pipeline = make_pipeline(*(make_step(f"g{i}", code, resources=Resources(gpu=1)) for i in range(3)))
    _, events = run(pipeline, folder, workspace, max_parallel=3)
    devices = {s: log_lines(events, s) for s in ("g0", "g1", "g2")}
    assert sorted(devices.values()) in ([["0"], ["0"], ["1"]], [["0"], ["1"], ["1"]])
    assert devices["g0"] != devices["g1"]  # started together, so they must hold different GPUs
    start = {e.step: e.time for e in of(events, "step_started")}
    end = {e.step: e.time for e in of(events, "step_succeeded")}
    assert min(end["g0"], end["g1"]) <= start["g2"]  # the third waited for a free GPU
    with pytest.raises(CellpipeError, match=r"3 GPUs \(nvidia.com/gpu\) but this machine has 2"):
        LocalEngine(workspace=workspace).run(
            RunRequest(
                make_pipeline(make_step("g", "pass", resources=Resources(gpu=3))), folder / "nb.ipynb"
            ),
            [],
        )


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two CPUs")
def test_cpu_limit_pins_the_step(folder: Path, workspace: Path) -> None:
    pipeline = make_pipeline(
        make_step(
            "pinned", "import os; print(len(os.sched_getaffinity(0)))", resources=Resources(cpu_limit="500m")
        )
    )
    _, events = run(pipeline, folder, workspace)
    assert log_lines(events, "pinned") == ["1"]


# ---------------------------------------------------------------------- failures


@pytest.mark.parametrize("fork_server", FORK_MODES)
def test_raising_step_skips_downstream_and_spares_siblings(
    folder: Path, workspace: Path, fork_server: bool
) -> None:
    pipeline = make_pipeline(
        make_step("a", "x = 1", outputs=("x",)),
        make_step(
            "b", "print('about to fail')\nraise ValueError('boom')\ny = 2", inputs=("x",), outputs=("y",)
        ),
        make_step("c", "import time; time.sleep(0.3)\nprint('c fine', x)", inputs=("x",)),
        make_step("d", "print(y)", inputs=("y",)),
        make_step("e", "print(y)", after=("d",), inputs=("y",)),
    )
    engine = LocalEngine(workspace=workspace, fork_server=fork_server)
    result, events = run(pipeline, folder, workspace, engine=engine)
    assert result.state == "failed"
    assert result.step_states == {
        "a": "succeeded",
        "b": "failed",
        "c": "succeeded",
        "d": "skipped",
        "e": "skipped",
    }
    (failed,) = of(events, "step_failed")
    assert failed.message == "cell 10 raised ValueError: boom" and failed.exit_code == 1
    assert [e.message for e in of(events, "step_skipped")] == ["upstream step 'b' failed"] * 2
    assert log_lines(events, "c") == ["c fine 1"]
    log = (workspace / "runs" / result.run_id / "b" / "log.txt").read_text()
    assert "about to fail" in log and "ValueError: boom" in log and "Traceback" in log
    assert events[-1].message == "step 'b' failed"


@pytest.mark.parametrize(
    ("code", "message", "exit_code"),
    [
        ("import os\nos._exit(3)", "exited with status 3", 3),
        (
            "import os, signal\nos.kill(os.getpid(), signal.SIGKILL)",
            "killed by SIGKILL (out of memory?)",
            None,
        ),
        ("import sys\nsys.exit('bye')", "cell 10 raised SystemExit: bye", 1),
    ],
)
def test_hard_exits_fail_only_their_step(
    folder: Path, workspace: Path, code: str, message: str, exit_code: int | None
) -> None:
    pipeline = make_pipeline(
        make_step("x", code), make_step("ok", "import time; time.sleep(0.2); print('alive')")
    )
    result, events = run(pipeline, folder, workspace)
    assert result.step_states == {"x": "failed", "ok": "succeeded"}
    (failed,) = of(events, "step_failed")
    assert (failed.message, failed.exit_code) == (message, exit_code)


def test_missing_package_fails_with_a_clear_message(folder: Path, workspace: Path) -> None:
    pipeline = make_pipeline(
        make_step(
            "declared",
            "import not_a_real_module_xyz",
            modules=("not_a_real_module_xyz",),
            packages=("not-a-real-module-xyz",),
        ),
        make_step("undeclared", "import not_a_real_module_xyz"),
    )
    result, events = run(pipeline, folder, workspace)
    assert result.state == "failed"
    messages = {e.step: e.message or "" for e in of(events, "step_failed")}
    assert messages["declared"] == (  # checked where it is imported, as Jupyter does; nothing installed
        "cell 80 raised ModuleNotFoundError: No module named 'not_a_real_module_xyz' "
        "(install it with: pip install not-a-real-module-xyz)"
    )
    assert "--no-install" not in messages["declared"]
    assert (
        messages["undeclared"]
        == "cell 100 raised ModuleNotFoundError: No module named 'not_a_real_module_xyz'"
    )


def test_timeout_kills_the_whole_process_tree(folder: Path, workspace: Path) -> None:
    code = """
        import subprocess, time
        child = subprocess.Popen(["sleep", "60"])
        open("sleep.pid", "w").write(str(child.pid))
        time.sleep(60)
    """
    # 3 s: the step's clock includes waiting for the fork server (IPython preloaded), slow on a busy machine
    pipeline = make_pipeline(make_step("slow", code, timeout_seconds=3))
    result, events = run(pipeline, folder, workspace)
    (failed,) = of(events, "step_failed")
    assert failed.message == "timed out after 3s" and result.state == "failed"
    assert gone(int((folder / "sleep.pid").read_text()))


def test_memory_limit_kills_a_step_past_it(folder: Path, workspace: Path) -> None:
    code = "import time\nblock = b'x' * (300 * 2**20)\ntime.sleep(30)"
    pipeline = make_pipeline(make_step("hog", code, resources=Resources(memory_limit="100Mi")))
    _, events = run(pipeline, folder, workspace)
    (failed,) = of(events, "step_failed")
    assert (failed.message or "").startswith("exceeded its memory limit 100Mi (")


def test_retries_with_backoff_until_success(
    folder: Path, workspace: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(local, "BACKOFF_BASE_SECONDS", 0.05)
    flaky = """
        from pathlib import Path
        if not Path("attempted").exists():
            Path("attempted").write_text("1")
            raise RuntimeError("first attempt fails")
        print("second attempt works")
    """
    pipeline = make_pipeline(
        make_step("flaky", flaky, retries=2), make_step("hopeless", "raise KeyError('k')", retries=1)
    )
    result, events = run(pipeline, folder, workspace)
    assert result.step_states == {"flaky": "succeeded", "hopeless": "failed"}
    flaky_events = [(e.type, e.attempt) for e in events if e.step == "flaky" and e.type != "step_log"]
    assert flaky_events == [
        ("step_queued", None),
        ("step_started", 1),
        ("step_retrying", 1),
        ("step_started", 2),
        ("step_succeeded", 2),
    ]
    (retrying,) = of(events, "step_retrying", "flaky")
    assert retrying.message == "cell 50 raised RuntimeError: first attempt fails"
    assert (retrying.data or {})["delay"] == 0.05  # the first backoff is the base
    assert [e.attempt for e in of(events, "step_started", "hopeless")] == [1, 2]
    assert of(events, "step_failed", "hopeless")[0].attempt == 2
    stored = {s.name: s for s in RunStore(workspace / "runs.db").get_run(result.run_id).steps}
    assert [(a.attempt, a.state) for a in stored["flaky"].attempts] == [(1, "failed"), (2, "succeeded")]
    assert (workspace / "runs" / result.run_id / "flaky" / "log.txt").read_text().count("RuntimeError") >= 1


@pytest.mark.skipif(not fork_server_supported(), reason="no fork server here")
def test_fork_server_death_falls_back_to_subprocesses(folder: Path, workspace: Path) -> None:
    code = """
        import os, signal, time
        from pathlib import Path
        import psutil
        parent = " ".join(psutil.Process(os.getppid()).cmdline())
        if not Path("killed").exists() and "fork server" in parent:  # never the engine itself
            Path("killed").write_text("1")
            os.kill(os.getppid(), signal.SIGKILL)
            time.sleep(30)
        print("parent is the fork server:", "fork server" in parent)
    """
    pipeline = make_pipeline(make_step("a", code, retries=1), make_step("b", "print('b ran')", after=("a",)))
    result, events = run(pipeline, folder, workspace)
    assert result.state == "succeeded"
    assert of(events, "step_retrying", "a")[0].message == "step process lost: the fork server exited"
    assert log_lines(events, "a") == ["parent is the fork server: False"]
    assert log_lines(events, "b") == ["b ran"]


@pytest.mark.skipif(not fork_server_supported(), reason="no fork server here")
def test_import_that_kills_the_fork_server_fails_the_step_as_it_would_alone(
    folder: Path, workspace: Path
) -> None:
    """The fork server dies preloading: its steps start as fresh interpreters and show the real error."""
    (folder / "crashy.py").write_text(
        "import os, sys\nprint('crashy imported', file=sys.stderr, flush=True)\nos._exit(7)\n"
    )
    pipeline = make_pipeline(
        make_step("a", "print('unreachable')"), make_step("b", "pass"), imports="import crashy"
    )
    result, events = run(pipeline, folder, workspace)
    assert result.step_states == {"a": "failed", "b": "failed"}
    assert {e.message for e in of(events, "step_failed")} == {"exited with status 7: crashy imported"}
    assert log_lines(events, "a") == ["crashy imported"]


# ---------------------------------------------------------------------- cancel and orphans


def _run_in_thread(
    engine: LocalEngine, pipeline: Pipeline, folder: Path, workspace: Path, ready: Callable[[Event], bool]
) -> tuple[threading.Thread, threading.Event, dict[str, Any]]:
    seen = threading.Event()
    out: dict[str, Any] = {}

    def sink(event: Event) -> None:
        if ready(event):
            seen.set()

    def target() -> None:
        out["result"], out["events"] = run(pipeline, folder, workspace, engine=engine, sink=sink)

    thread = threading.Thread(target=target)
    thread.start()
    return thread, seen, out


SLEEPER = """
    import os, time
    open(f"{os.environ['NAME']}.pid", "w").write(str(os.getpid()))
    print("ready", flush=True)
    time.sleep(60)
"""


def test_cancel_kills_running_steps_and_saves_state(folder: Path, workspace: Path) -> None:
    pipeline = make_pipeline(
        make_step("a", SLEEPER, env=(("NAME", "a"),)),
        make_step("b", SLEEPER, env=(("NAME", "b"),)),
        make_step("c", "print('never')", after=("a",)),
    )
    engine = LocalEngine(workspace=workspace, max_parallel=2)
    lines: set[str] = set()

    def both_ready(event: Event) -> bool:
        if event.line == "ready" and event.step:
            lines.add(event.step)
        return lines == {"a", "b"}

    thread, seen, out = _run_in_thread(engine, pipeline, folder, workspace, both_ready)
    assert seen.wait(30)
    engine.cancel()
    thread.join(30)
    assert not thread.is_alive()
    result: RunResult = out["result"]
    assert result.state == "cancelled"
    assert result.step_states == {"a": "cancelled", "b": "cancelled", "c": "cancelled"}
    assert gone(int((folder / "a.pid").read_text())) and gone(int((folder / "b.pid").read_text()))
    assert not of(out["events"], "step_failed")


@pytest.mark.parametrize("fork_server", [True, False])
def test_cancel_right_after_a_step_starts_still_kills_it(
    folder: Path, workspace: Path, fork_server: bool
) -> None:
    """A step forked a moment ago may not lead its own process group yet; the cancel must not miss it."""
    pipeline = make_pipeline(
        make_step("a", "import time\ntime.sleep(3)\nopen('survived.txt', 'w').write('x')")
    )
    engine = LocalEngine(workspace=workspace, fork_server=fork_server)

    def cancel_at_start(event: Event) -> None:
        if event.type == "step_started":
            engine.cancel()

    request = RunRequest(pipeline=pipeline, notebook=folder / "nb.ipynb", use_cache=False)
    result = engine.run(request, [cancel_at_start])
    assert result.state == "cancelled"
    assert not (folder / "survived.txt").exists()


def test_cancel_requested_through_the_store(folder: Path, workspace: Path) -> None:
    pipeline = make_pipeline(make_step("a", SLEEPER, env=(("NAME", "a"),)))
    thread, seen, out = _run_in_thread(
        LocalEngine(workspace=workspace), pipeline, folder, workspace, lambda e: e.line == "ready"
    )
    assert seen.wait(30)
    (running,) = RunStore(workspace / "runs.db").list_runs(1)
    assert RunStore(workspace / "runs.db").request_cancel(running.id)  # as `cellpipe runs cancel` does
    thread.join(30)
    assert out["result"].state == "cancelled"
    assert gone(int((folder / "a.pid").read_text()))


ENGINE_SCRIPT = """
import sys
from pathlib import Path
from converter.engines.base import RunRequest
from converter.engines.local.engine import LocalEngine
from converter.model import CodeCell, Pipeline, Step, StepSettings

code = "import os, time\\nopen('step.pid', 'w').write(str(os.getpid()))\\ntime.sleep(60)"
step = Step("sleepy", (CodeCell(1, code, code),), (), (), (), (), (), (), StepSettings())
pipeline = Pipeline("orphan-test", "nb.ipynb", "", None, "python:3.11", (), (), (), (step,), ())
LocalEngine(workspace=Path(sys.argv[1])).run(RunRequest(pipeline, Path(sys.argv[2]) / "nb.ipynb"), [])
"""


def test_killed_engine_leaves_an_orphan_the_next_start_marks(folder: Path, workspace: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    engine = subprocess.Popen([sys.executable, "-c", ENGINE_SCRIPT, str(workspace), str(folder)], env=env)
    try:
        deadline = time.monotonic() + 30
        while not (folder / "step.pid").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert (folder / "step.pid").exists()
        (run,) = RunStore(workspace / "runs.db").list_runs()
        assert run.state == "running" and run.pid == engine.pid
    finally:
        engine.send_signal(signal.SIGKILL)
        engine.wait()
    assert list((workspace / "artifacts" / "tmp").glob(f"{run.id}.*"))  # the step's unfinished outputs
    LocalEngine(workspace=workspace).run(
        RunRequest(make_pipeline(make_step("next", "pass")), folder / "nb.ipynb"), []
    )
    store = RunStore(workspace / "runs.db")
    assert not list((workspace / "artifacts" / "tmp").glob(f"{run.id}.*"))  # cleaned by the next engine
    marked = store.get_run(run.id)
    assert (marked.state, marked.message) == ("failed", "engine stopped")
    assert gone(int((folder / "step.pid").read_text()))  # the fork server took its steps with it


def test_two_runs_at_once_share_one_store(folder: Path, workspace: Path) -> None:
    pipeline = make_pipeline(
        make_step("a", "import time; time.sleep(0.3)\nx = n", outputs=("x",), params=("n",)),
        make_step("b", "print(x)", inputs=("x",)),
        params=(Parameter("n", "int", 1, 0),),
    )
    results: dict[int, RunResult] = {}

    def one(n: int) -> None:
        results[n], _ = run(pipeline, folder, workspace, parameters={"n": n})

    threads = [threading.Thread(target=one, args=(n,)) for n in (1, 2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert [results[n].state for n in (1, 2)] == ["succeeded", "succeeded"]
    runs = RunStore(workspace / "runs.db").list_runs()
    assert sorted(r.id for r in runs) == sorted(r.run_id for r in results.values())
    assert all([s.state for s in r.steps] == ["succeeded", "succeeded"] for r in runs)


# ---------------------------------------------------------------------- caching and resume


def test_second_run_is_cached_and_starts_no_process(folder: Path, workspace: Path) -> None:
    pipeline = make_pipeline(
        make_step("a", "x = 21\nopen('runs.txt', 'a').write('a')", outputs=("x",)),
        make_step("b", "score = x * 2\nprint(score)", inputs=("x",), metrics=("score",)),
    )
    first, _ = run(pipeline, folder, workspace, use_cache=True)
    second, events = run(pipeline, folder, workspace, use_cache=True)
    assert second.step_states == {"a": "cached", "b": "cached"}
    assert not of(events, "step_started") and not of(events, "step_queued")
    assert [e.message for e in of(events, "step_cached")] == [f"from run {first.run_id}"] * 2
    assert second.metrics == first.metrics == {"score": 42.0}
    assert (folder / "runs.txt").read_text() == "a"  # step code ran once
    assert not (workspace / "runs" / second.run_id).exists()  # no step folder, no fork server
    stored = {s.name: s for s in RunStore(workspace / "runs.db").get_run(second.run_id).steps}
    assert stored["b"].log_path == str(workspace / "runs" / first.run_id / "b" / "log.txt")
    assert stored["b"].cached_from == first.run_id and stored["b"].metrics == {"score": 42.0}

    third, _ = run(pipeline, folder, workspace, use_cache=False)
    assert third.step_states == {"a": "succeeded", "b": "succeeded"}
    changed = make_pipeline(
        pipeline.steps[0], make_step("b", "score = x * 3", inputs=("x",), metrics=("score",))
    )
    fourth, _ = run(changed, folder, workspace, use_cache=True)
    assert fourth.step_states == {"a": "cached", "b": "succeeded"} and fourth.metrics == {"score": 63.0}


def test_a_changed_step_runtime_misses_the_cache(
    folder: Path, workspace: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The runtime is an argument of the step program, not part of it: it must still key the cache."""
    pipeline = make_pipeline(make_step("a", "x = 1", outputs=("x",)))
    run(pipeline, folder, workspace, use_cache=True)
    assert run(pipeline, folder, workspace, use_cache=True)[0].step_states == {"a": "cached"}
    changed = stepcode.packed(stepcode.runtime_source() + "\n# changed\n")
    monkeypatch.setattr(stepcode, "packed_runtime", lambda: changed)
    assert run(pipeline, folder, workspace, use_cache=True)[0].step_states == {"a": "succeeded"}


def test_uncached_step_reruns_with_its_downstream(folder: Path, workspace: Path) -> None:
    pipeline = make_pipeline(
        make_step("fresh", "import time\nstamp = time.time()", outputs=("stamp",), cache=False),
        make_step("uses", "print(stamp)", inputs=("stamp",)),
        make_step("other", "print('other')"),
    )
    run(pipeline, folder, workspace, use_cache=True)
    again, _ = run(pipeline, folder, workspace, use_cache=True)
    assert again.step_states == {"fresh": "succeeded", "uses": "succeeded", "other": "cached"}


def test_by_default_every_step_runs_again_as_re_executing_would(folder: Path, workspace: Path) -> None:
    """No stale results (issue 10 item 9): a step reading a file that changed, or the clock, runs again;
    only a step tagged cache:on is reused without --cache."""
    pipeline = make_pipeline(
        make_step("read", "text = open('in.txt').read()", outputs=("text",)),
        make_step("clock", "import time\nnow = time.time()", outputs=("now",)),
        make_step("slow", "import time\nstarted = time.time()", outputs=("started",), cache=True),
        make_step("show", "print(text, now, started)", inputs=("text", "now", "started")),
    )
    (folder / "in.txt").write_text("first")
    first, _ = run(pipeline, folder, workspace)
    (folder / "in.txt").write_text("second")
    second, events = run(pipeline, folder, workspace)
    assert second.step_states == {
        "read": "succeeded",
        "clock": "succeeded",
        "slow": "cached",
        "show": "succeeded",
    }
    (line,) = [e.line for e in of(events, "step_log", "show")]
    assert (line or "").startswith("second ")  # the file as it is now
    assert [e.message for e in of(events, "step_cached")] == [f"from run {first.run_id}"]
    assert run(pipeline, folder, workspace, use_cache=False)[0].step_states["slow"] == "succeeded"


def test_resume_reruns_only_what_failed_or_never_ran(folder: Path, workspace: Path) -> None:
    pipeline = make_pipeline(
        make_step("a", "x = 5\nopen('a.count', 'a').write('a')", outputs=("x",)),
        make_step(
            "b",
            "import os\nassert os.path.exists('fixed'), 'not fixed yet'\ny = x + 1",
            inputs=("x",),
            outputs=("y",),
        ),
        make_step("c", "print('c got', y)", inputs=("y",)),
        make_step("d", "open('d.count', 'a').write('d')"),
    )
    failed, _ = run(pipeline, folder, workspace, use_cache=False)
    assert failed.step_states == {"a": "succeeded", "b": "failed", "c": "skipped", "d": "succeeded"}
    (folder / "fixed").write_text("yes")
    resumed, events = run(pipeline, folder, workspace, use_cache=False, resume=failed.run_id[:-1])
    assert resumed.step_states == {"a": "cached", "b": "succeeded", "c": "succeeded", "d": "cached"}
    assert {e.step: e.message for e in of(events, "step_cached")} == {
        "a": f"from run {failed.run_id}",
        "d": f"from run {failed.run_id}",
    }
    assert log_lines(events, "c") == ["c got 6"]
    assert (folder / "a.count").read_text() == "a" and (folder / "d.count").read_text() == "d"
    assert RunStore(workspace / "runs.db").get_run(resumed.run_id).resumed_from == failed.run_id


def test_resume_reruns_steps_whose_parameters_or_upstream_changed(folder: Path, workspace: Path) -> None:
    pipeline = make_pipeline(
        make_step("a", "x = n * 10", params=("n",), outputs=("x",)),
        make_step("b", "y = x + 1", inputs=("x",), outputs=("y",)),
        make_step("c", "assert os.path.exists('fixed')\nprint('c got', y)", inputs=("y",)),
        params=(Parameter("n", "int", 1, 0),),
        imports="import os",
    )
    failed, _ = run(pipeline, folder, workspace)
    assert failed.step_states == {"a": "succeeded", "b": "succeeded", "c": "failed"}
    (folder / "fixed").write_text("yes")
    resumed, events = run(
        pipeline, folder, workspace, use_cache=False, resume=failed.run_id, parameters={"n": 2}
    )
    assert resumed.step_states == {"a": "succeeded", "b": "succeeded", "c": "succeeded"}
    assert log_lines(events, "c") == ["c got 21"]
    with pytest.raises(CellpipeError, match="no run"):
        LocalEngine(workspace=workspace).run(RunRequest(pipeline, folder / "nb.ipynb", resume="nope"), [])


# ---------------------------------------------------------------------- what runs


def test_runs_the_program_the_compiled_pipeline_ships(
    folder: Path, workspace: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Change the step runtime: the local run and the compiled component both carry the change."""
    original = stepcode.runtime_source()
    monkeypatch.setattr(stepcode, "runtime_source", lambda: original + "\nprint('shipped-marker-7')\n")
    monkeypatch.setattr(stepcode, "packed_runtime", lambda: stepcode.packed(stepcode.runtime_source()))
    pipeline = make_pipeline(make_step("a", "print('cell')"))
    result, events = run(pipeline, folder, workspace)
    assert log_lines(events, "a") == ["shipped-marker-7", "cell"]
    ran = (workspace / "runs" / result.run_id / "a" / "program.py").read_text()
    from converter.kfp.compile import compile_pipeline

    ir = yaml.safe_load(compile_pipeline(pipeline).ir_yaml)
    assert ir["deploymentSpec"]["executors"]["exec-a"]["container"]["command"] == ["python3", "-c", ran]


def test_parameters_arrive_typed_as_kfp_renders_them(folder: Path, workspace: Path) -> None:
    params = (
        Parameter("n", "int", 3, 0),
        Parameter("rate", "float", 0.1, 0),
        Parameter("flag", "bool", False, 0),
        Parameter("label", "str", "a b", 0),
        Parameter("items", "list", [1, "x"], 0),
        Parameter("conf", "dict", {"k": {"v": 1.5}}, 0),
    )
    names = tuple(p.name for p in params)
    code = "for v in (n, rate, flag, label, items, conf):\n    print(type(v).__name__, repr(v))"
    pipeline = make_pipeline(make_step("show", code, params=names), params=params)
    _, events = run(pipeline, folder, workspace, parameters={"n": 5, "flag": True})
    assert log_lines(events, "show") == [
        "int 5",
        "float 0.1",
        "bool True",
        "str 'a b'",
        "list [1, 'x']",
        "dict {'k': {'v': 1.5}}",
    ]
    assert events[0].data and events[0].data["parameters"]["n"] == 5
    with pytest.raises(CellpipeError, match="unknown parameter nope"):
        LocalEngine(workspace=workspace).run(
            RunRequest(pipeline, folder / "nb.ipynb", parameters={"nope": 1}), []
        )


def test_steps_run_in_the_notebook_folder_with_their_environment(folder: Path, workspace: Path) -> None:
    pipeline = make_pipeline(
        make_step(
            "w", "import os\nopen('shared.txt', 'w').write(os.environ['GREETING'])", env=(("GREETING", "hi"),)
        ),
        make_step(
            "r", "import os\nprint(open('shared.txt').read(), os.environ.get('GREETING'))", after=("w",)
        ),
    )
    _, events = run(pipeline, folder, workspace)
    assert log_lines(events, "r") == ["hi None"]  # the file is shared, the variable only the step's own


@pytest.mark.skipif(not fork_server_supported(), reason="no fork server here")
def test_heavy_libraries_work_in_forked_steps(folder: Path, workspace: Path) -> None:
    """numpy (BLAS threads), pandas/pyarrow and scikit-learn, preloaded in the fork server, still work
    in each step, and numpy's global random state differs between steps as in fresh interpreters."""
    imports = "import numpy as np\nimport pandas as pd\nfrom sklearn.linear_model import LogisticRegression"
    make = """
        a = np.random.rand(400, 400)
        product = float((a @ a).sum())
        frame = pd.DataFrame({"x": np.arange(1000), "y": np.random.rand(1000)})
        model = LogisticRegression().fit(np.random.rand(200, 3), np.arange(200) % 2)
        draw = float(np.random.rand())
    """
    pipeline = make_pipeline(
        make_step("p", make, outputs=("frame", "model", "draw")),
        make_step(
            "q",
            make.replace("frame", "frame2").replace("model", "model2").replace("draw", "draw2"),
            outputs=("draw2",),
        ),
        make_step(
            "use",
            "print(frame.shape, model.coef_.shape, draw != draw2)",
            inputs=("frame", "model", "draw", "draw2"),
        ),
        imports=imports,
    )
    result, events = run(pipeline, folder, workspace)
    assert result.state == "succeeded", [e.message for e in of(events, "step_failed")]
    assert log_lines(events, "use") == ["(1000, 2) (1, 3) True"]


def test_default_workspace_is_cellpipe_home(
    folder: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CELLPIPE_HOME", str(tmp_path / "home"))
    events: list[Event] = []
    result = LocalEngine().run(
        RunRequest(make_pipeline(make_step("a", "print(1)")), folder / "nb.ipynb"), [events.append]
    )
    assert (tmp_path / "home" / "runs" / result.run_id / "a" / "log.txt").read_text() == "1\n"
    assert (events[0].data or {})["run_folder"] == str(tmp_path / "home" / "runs" / result.run_id)
    assert RunStore(tmp_path / "home" / "runs.db").get_run(result.run_id).state == "succeeded"


def test_engine_imports_no_ui_and_no_kfp() -> None:
    code = "import sys, converter.engines.local.engine; print(sorted({m.split('.')[0] for m in sys.modules}))"
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    loaded = set(json.loads(done.stdout.replace("'", '"')))
    assert not loaded & {"kfp", "rich", "jupyter_ext", "IPython", "nbformat", "numpy", "pandas"}


# ---------------------------------------------------------------------- the sample notebooks


@pytest.mark.parametrize(
    ("notebook", "metrics"),
    [
        ("sklearn_tabular.ipynb", {"accuracy", "f1", "roc_auc"}),
        ("pandas_etl.ipynb", set()),
        ("kale_style.ipynb", {"lr_acc", "dt_acc"}),
        ("magics_and_shell.ipynb", set()),
        ("gpu_training.ipynb", {"test_accuracy"}),
    ],
)
def test_sample_notebooks_run_end_to_end(
    tmp_path: Path, workspace: Path, notebook: str, metrics: set[str]
) -> None:
    from converter.notebook.reader import read_notebook

    copy = tmp_path / "samples"
    copy.mkdir()
    (copy / notebook).write_bytes((SAMPLES / notebook).read_bytes())
    pipeline = read_notebook(copy / notebook)
    engine = LocalEngine(workspace=workspace, fit_resources=notebook == "gpu_training.ipynb")
    events: list[Event] = []
    result = engine.run(RunRequest(pipeline, copy / notebook), [events.append])
    assert result.state == "succeeded", [(e.step, e.message) for e in of(events, "step_failed")]
    check_stream(events, pipeline, result, workspace)
    assert set(result.metrics) == metrics
    assert all(0.5 < value <= 1.0 for value in result.metrics.values())
    for step in pipeline.steps:
        outputs = json.loads(
            (workspace / "runs" / result.run_id / step.name / "cell_outputs.json").read_text()
        )
        assert outputs["status"] == "ok"


def test_gpu_sample_asks_for_more_than_a_small_machine_has(tmp_path: Path, workspace: Path) -> None:
    """gpu_training's train step asks for 4 CPUs, 16Gi and a GPU: unfitted, a smaller machine refuses."""
    from converter.notebook.reader import read_notebook

    machine = local.Machine.detect()
    if len(machine.cpus) >= 4 and machine.memory >= 16 * 2**30 and machine.gpus:
        pytest.skip("this machine can hold the step")
    pipeline = read_notebook(SAMPLES / "gpu_training.ipynb")
    with pytest.raises(CellpipeError, match="step 'train' requests"):
        LocalEngine(workspace=workspace).run(RunRequest(pipeline, tmp_path / "gpu_training.ipynb"), [])
