"""Local hyperparameter tuning: every trial is a real local pipeline run, sampled by optuna.

A trial runs the notebook's pipeline on the local engine with the sampled parameters, so steps
whose inputs do not change between trials (loading, splitting) come from the step cache and only
the steps downstream of a tuned parameter run again. `parallel` trials run at once, each with an
equal share of the CPUs. The first trial runs the notebook's own defaults (when they lie inside
the search space), so the result always says how much tuning gained over them.
"""

from __future__ import annotations

import ast
import dataclasses
import json
import math
import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from converter.errors import CellpipeError
from converter.model import Pipeline
from converter.notebook.search_space import SearchSpace, search_spaces

if TYPE_CHECKING:
    import optuna


Goal = Literal["max", "min"]
Algorithm = Literal["random", "grid", "bayesian"]
GRID_POINTS = 5  # points per continuous range under --algorithm grid


@dataclass(frozen=True)
class Trial:
    number: int
    parameters: dict[str, Any]
    state: Literal["running", "succeeded", "failed"]
    objective: float | None = None
    run_id: str | None = None
    seconds: float | None = None
    message: str | None = None
    baseline: bool = False  # the notebook's own defaults


@dataclass
class TuneResult:
    objective: str
    goal: Goal
    trials: list[Trial] = field(default_factory=list)

    @property
    def finished(self) -> list[Trial]:
        return [t for t in self.trials if t.state == "succeeded" and t.objective is not None]

    @property
    def best(self) -> Trial | None:
        done = self.finished
        if not done:
            return None
        pick = max if self.goal == "max" else min
        return pick(done, key=lambda t: t.objective if t.objective is not None else math.nan)

    @property
    def baseline(self) -> Trial | None:
        return next((t for t in self.finished if t.baseline), None)


TrialSink = Callable[[TuneResult], None]


def check_objective(pipeline: Pipeline, objective: str) -> None:
    """Refuse a metric no step records before any trial runs."""
    recorded = sorted({m for s in pipeline.steps for m in s.metrics})
    if objective not in recorded:
        listed = ", ".join(recorded) if recorded else "none: add a cell tagged metrics"
        raise CellpipeError(
            f"--objective {objective}: the notebook records no such metric (it records {listed})"
        )


def tunable_spaces(pipeline: Pipeline) -> dict[str, SearchSpace]:
    spaces = search_spaces(pipeline.notebook, pipeline.parameters)
    if not spaces:
        raise CellpipeError(
            f"{pipeline.notebook}: no parameter has a search space; annotate one in the parameters cell, "
            "e.g. C = 1.0  # search: loguniform(1e-3, 1e3)"
        )
    return spaces


def _distribution(space: SearchSpace) -> optuna.distributions.BaseDistribution:
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    if space.kind == "choice":
        return CategoricalDistribution(
            [c for c in space.choices if c is None or isinstance(c, bool | int | float | str)]
        )
    if space.kind == "int":
        assert space.low is not None and space.high is not None
        return IntDistribution(int(space.low), int(space.high), log=space.log, step=space.step or 1)
    assert space.low is not None and space.high is not None
    return FloatDistribution(float(space.low), float(space.high), log=space.log)


def grid_values(space: SearchSpace, points: int = GRID_POINTS) -> list[Any]:
    """The values grid search tries: every value of finite spaces, `points` spread over ranges."""
    finite = space.grid
    if finite is not None:
        return list(finite)
    assert space.low is not None and space.high is not None
    low, high = float(space.low), float(space.high)
    if space.log:
        return [
            math.exp(math.log(low) + i * (math.log(high) - math.log(low)) / (points - 1))
            for i in range(points)
        ]
    return [low + i * (high - low) / (points - 1) for i in range(points)]


def _sampler(algorithm: Algorithm, spaces: Mapping[str, SearchSpace], seed: int | None, trials: int) -> Any:
    import optuna

    if algorithm == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if algorithm == "bayesian":
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=max(1, min(10, trials // 2)))
    return optuna.samplers.GridSampler({n: grid_values(s) for n, s in spaces.items()}, seed=seed)


def _in_space(value: object, space: SearchSpace) -> bool:
    if space.kind == "choice":
        return value in space.choices
    assert space.low is not None and space.high is not None
    if not isinstance(value, int | float) or not space.low <= value <= space.high:
        return False
    return space.kind != "int" or (value - space.low) % (space.step or 1) == 0


def _typed(pipeline: Pipeline, values: Mapping[str, Any]) -> dict[str, Any]:
    """optuna hands back ints for int(...) ranges on float parameters: give the declared type."""
    kinds = {p.name: p.type for p in pipeline.parameters}
    return {
        n: float(v) if kinds.get(n) == "float" and not isinstance(v, bool) else v for n, v in values.items()
    }


def tune(
    pipeline: Pipeline,
    notebook: Path,
    objective: str,
    goal: Goal,
    trials: int,
    parallel: int = 1,
    algorithm: Algorithm = "bayesian",
    *,
    seed: int | None = None,
    fixed: Mapping[str, Any] | None = None,
    on_change: TrialSink = lambda result: None,
    workspace: Path | None = None,
) -> TuneResult:
    """Run up to `trials` local pipeline runs, `parallel` at a time; see the module docstring.

    `fixed` parameter values (already typed) apply to every trial. `on_change` is called after
    every trial starts and ends (from this thread only), for live displays.
    """
    import optuna

    if trials < 1 or parallel < 1:
        raise CellpipeError("--trials and --parallel must be at least 1")
    check_objective(pipeline, objective)
    spaces = tunable_spaces(pipeline)
    fixed = dict(fixed or {})
    for name in sorted(set(fixed) & set(spaces)):
        del spaces[name]
    if not spaces:
        raise CellpipeError("every parameter with a search space was fixed with -p")
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(
        direction="maximize" if goal == "max" else "minimize",
        sampler=_sampler(algorithm, spaces, seed, trials),
    )
    distributions = {name: _distribution(space) for name, space in spaces.items()}
    if algorithm == "grid":
        size = math.prod(len(grid_values(s)) for s in spaces.values())
        trials = min(trials, size)
    defaults = {p.name: p.default for p in pipeline.parameters if p.name in spaces}
    baseline_pending = algorithm != "grid" and all(_in_space(defaults[n], spaces[n]) for n in spaces)
    if baseline_pending:
        study.enqueue_trial(defaults)

    result = TuneResult(objective, goal)
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    share = max(1, cpus // parallel)
    from converter.engines.base import RunRequest
    from converter.engines.registry import get_engine
    from converter.engines.runner import WAIT_SLICE_SECONDS, EngineThread

    def trial_of(number: int, values: dict[str, Any], worker: EngineThread, seconds: float) -> Trial:
        try:
            outcome = worker.outcome()
        except CellpipeError:
            raise
        except Exception as exc:  # a broken run must not lose the trials already done
            return Trial(number, values, "failed", message=str(exc))
        if outcome is None:  # cancelled before it started
            return Trial(number, values, "failed", message="cancelled")
        if outcome.state != "succeeded":
            failed = sorted(s for s, state in outcome.step_states.items() if state == "failed")
            why = f"run {outcome.state}" + (f" (step {', '.join(failed)} failed)" if failed else "")
            return Trial(number, values, "failed", None, outcome.run_id, seconds, why)
        value = outcome.metrics.get(objective)
        if value is None or not math.isfinite(value):
            return Trial(number, values, "failed", None, outcome.run_id, seconds, f"{objective} = {value}")
        return Trial(number, values, "succeeded", float(value), outcome.run_id, seconds)

    ended = threading.Event()  # some trial's run ended
    running: dict[int, tuple[EngineThread, optuna.trial.Trial, dict[str, Any], float]] = {}
    asked = 0
    try:
        while asked < trials or running:
            while asked < trials and len(running) < parallel:
                handle = study.ask(distributions)
                values = _typed(pipeline, handle.params)
                is_baseline = baseline_pending and asked == 0
                engine = get_engine("local", workspace=workspace, max_parallel=share)
                request = RunRequest(
                    pipeline=pipeline,
                    notebook=notebook,
                    parameters={**fixed, **values},
                    max_parallel=share,
                    use_cache=True,  # steps the tuned parameters do not reach run once, not per trial
                )
                worker = EngineThread(engine, request, on_done=lambda _: ended.set(), name="cellpipe-trial")
                result.trials.append(Trial(handle.number, values, "running", baseline=is_baseline))
                running[handle.number] = (worker.start(), handle, values, time.monotonic())
                asked += 1
                on_change(result)
            while not ended.wait(WAIT_SLICE_SECONDS):  # in slices: Ctrl-C and SIGTERM land here
                pass
            ended.clear()
            for number in [n for n, (worker, *_) in running.items() if worker.done]:
                worker, handle, values, started = running.pop(number)
                index = next(i for i, t in enumerate(result.trials) if t.number == number)
                trial = trial_of(number, values, worker, time.monotonic() - started)
                trial = dataclasses.replace(trial, baseline=result.trials[index].baseline)
                result.trials[index] = trial
                if trial.state == "succeeded":
                    study.tell(handle, trial.objective)
                else:
                    study.tell(handle, state=optuna.trial.TrialState.FAIL)
                on_change(result)
    except BaseException:
        # Ctrl-C or an error: stop the running trials and wait for their engines to clean up.
        for worker, *_ in running.values():
            worker.cancel()
        for worker, *_ in running.values():
            worker.wait()
        raise
    return result


# ---------------------------------------------------------------- results


def best_yaml(result: TuneResult, notebook: str) -> str:
    """The best parameters as a `cellpipe run -f` / papermill `-f` file, the figures as comments."""
    import yaml

    best = result.best
    if best is None:
        raise CellpipeError("no trial succeeded: no best parameters to write")
    lines = [
        f"# cellpipe tune {notebook}: best of {len(result.finished)} succeeded trial(s)",
        f"# {result.objective} = {best.objective!r} ({result.goal}), trial {best.number}, run {best.run_id}",
    ]
    if result.baseline is not None:
        lines.append(f"# the notebook's defaults gave {result.objective} = {result.baseline.objective!r}")
    return "\n".join(lines) + "\n" + yaml.safe_dump(best.parameters, sort_keys=True)


def write_back(path: Path, values: Mapping[str, Any]) -> list[str]:
    """Put `values` into the notebook's parameters cell in place, keeping every other byte of it.

    Only the literal right of `NAME =` changes; comments (the `# search:` annotations) and the
    rest of the notebook stay. The file is replaced atomically. Returns the names changed.
    """
    data = json.loads(path.read_text(encoding="utf-8"))
    changed: list[str] = []
    for cell in data.get("cells", []):
        meta = cell.get("metadata", {})
        tags = meta.get("tags", [])
        role = (meta.get("cellpipe") or {}).get("role") if isinstance(meta.get("cellpipe"), dict) else None
        if cell.get("cell_type") != "code" or not (
            {"parameters", "pipeline-parameters"} & set(tags) or role == "parameters"
        ):
            continue
        as_list = isinstance(cell["source"], list)
        source = "".join(cell["source"]) if as_list else cell["source"]
        source, names = _replace_literals(source, values)
        changed += names
        cell["source"] = source.splitlines(keepends=True) if as_list else source
    missing = sorted(set(values) - set(changed))
    if missing:
        raise CellpipeError(f"{path}: parameters cell has no assignment of {', '.join(missing)}")
    text = json.dumps(data, indent=1, ensure_ascii=False, sort_keys=True) + "\n"
    temporary = path.with_name(f".{path.name}.cellpipe-tmp")
    temporary.write_text(text, encoding="utf-8")
    os.replace(temporary, path)
    return changed


def _replace_literals(source: str, values: Mapping[str, Any]) -> tuple[str, list[str]]:
    lines = source.splitlines(keepends=True)
    edits: list[tuple[int, int, int, str, str]] = []
    for node in ast.parse(source).body:
        if (
            isinstance(node, ast.Assign)
            and len(node.targets) == 1
            and isinstance(node.targets[0], ast.Name)
            and node.targets[0].id in values
            and node.value.end_lineno == node.value.lineno
            and node.value.end_col_offset is not None
        ):
            name = node.targets[0].id
            edits.append(
                (
                    node.value.lineno - 1,
                    node.value.col_offset,
                    node.value.end_col_offset,
                    name,
                    repr(values[name]),
                )
            )
    for line, start, end, _, text in sorted(edits, reverse=True):
        raw = lines[line].encode("utf-8")  # ast offsets are byte offsets
        lines[line] = (raw[:start] + text.encode("utf-8") + raw[end:]).decode("utf-8")
    return "".join(lines), [e[3] for e in edits]


def summary_rows(result: TuneResult, names: Sequence[str]) -> list[list[str]]:
    """One row per trial for the live table: number, state, parameters, objective, run."""
    best = result.best
    rows = []
    for trial in result.trials:
        mark = "*" if best is not None and trial.number == best.number else ""
        label = f"{trial.number}{mark}" + (" (defaults)" if trial.baseline else "")
        value = f"{trial.objective:.6g}" if trial.objective is not None else (trial.message or "")
        rows.append(
            [label, trial.state, *(_short(trial.parameters.get(n)) for n in names), value, trial.run_id or ""]
        )
    return rows


def _short(value: object) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)
