"""`cellpipe tune`: tune the notebook's annotated parameters locally, or as a Katib Experiment."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rich.console import Console
from rich.live import Live
from rich.table import Table

from converter.cli.common import EXIT_FAILED, EXIT_OK, Command, add_parameter_options
from converter.engines.runner import interrupts_cancel
from converter.errors import CellpipeError
from converter.notebook.parameters import parameter_values


def _tune(args: argparse.Namespace) -> int:
    from converter.notebook.reader import read_notebook

    notebook = Path(args.notebook)
    pipeline = read_notebook(notebook)
    fixed = parameter_values(pipeline, args.parameter or [], args.parameters_file or [])
    if args.katib:
        return _katib(args, pipeline, fixed)
    try:
        import optuna  # noqa: F401
    except ImportError:
        raise CellpipeError("local tuning needs optuna: pip install 'cellpipe[tune]'") from None
    from converter.tuning import trials as tune

    tune.check_objective(pipeline, args.objective)
    names = sorted(n for n in tune.tunable_spaces(pipeline) if n not in fixed)
    console = Console(highlight=False, width=None if sys.stdout.isatty() else 200)

    def table(result: tune.TuneResult) -> Table:
        best = result.best
        title = f"{len(result.finished)}/{args.trials} trial(s) done"
        if best is not None:
            title += f"; best {result.objective} = {best.objective:.6g} (trial {best.number})"
        view = Table(title=title, title_justify="left")
        for column in ["trial", "state", *names, result.objective, "run"]:
            view.add_column(column)
        for row in tune.summary_rows(result, names):
            view.add_row(*row)
        return view

    live = Live(console=console, auto_refresh=False) if console.is_terminal and not args.quiet else None
    printed: set[int] = set()

    def show(result: tune.TuneResult) -> None:
        if live is not None:
            live.update(table(result), refresh=True)
            return
        if args.quiet:
            return
        for trial in result.trials:
            if trial.state != "running" and trial.number not in printed:
                printed.add(trial.number)
                value = f"{trial.objective:.6g}" if trial.objective is not None else trial.message
                params = ", ".join(f"{n}={trial.parameters[n]!r}" for n in names)
                run = f"run {trial.run_id}"
                print(
                    f"trial {trial.number}: {trial.state} {result.objective}={value} ({params}) {run}",
                    flush=True,
                )

    if live is not None:
        live.start()
    try:
        with interrupts_cancel():  # a CI runner's stop (SIGTERM) cancels trials like Ctrl-C
            result = tune.tune(
                pipeline,
                notebook.resolve(),
                args.objective,
                args.goal,
                args.trials,
                args.parallel,
                args.algorithm,
                seed=args.seed,
                fixed=fixed,
                on_change=show,
            )
    finally:
        if live is not None:
            live.stop()
    best = result.best
    if best is None:
        print("cellpipe: no trial succeeded", file=sys.stderr)
        return EXIT_FAILED
    baseline = result.baseline
    gain = (
        f" (defaults: {baseline.objective:.6g})"
        if baseline is not None and baseline.objective is not None
        else ""
    )
    params = ", ".join(f"{n}={best.parameters[n]!r}" for n in names)
    figure = f"{args.objective} = {best.objective:.6g}{gain}"
    print(f"best: trial {best.number}, {figure}: {params}, run {best.run_id}")
    if args.best_out:
        from converter.kfp.compile import write_atomically

        target = Path(args.best_out)
        write_atomically(target.parent, {target.name: tune.best_yaml(result, args.notebook)})
        print(f"wrote {target}")
    if args.write_back:
        changed = tune.write_back(notebook, best.parameters)
        print(f"{notebook}: parameters cell now has the best {', '.join(sorted(changed))}")
    return EXIT_OK


def _katib(args: argparse.Namespace, pipeline: object, fixed: dict[str, object]) -> int:
    from converter.model import Pipeline
    from converter.tuning import katib

    assert isinstance(pipeline, Pipeline)
    manifest = katib.experiment(
        pipeline,
        objective=args.objective,
        goal=args.goal,
        trials=args.trials,
        parallel=args.parallel,
        algorithm=args.algorithm,
        namespace=args.namespace,
        image=args.image,
        fixed=fixed,
    )
    text = katib.to_yaml(manifest)
    if args.output:
        from converter.kfp.compile import write_atomically

        target = Path(args.output)
        write_atomically(target.parent, {target.name: text})
        print(f"wrote {target}")
        return EXIT_OK
    submitted = katib.submit(manifest)
    if submitted is None:
        sys.stdout.write(text)
        print("cellpipe: no Kubernetes access: printed the Experiment; kubectl apply -f it", file=sys.stderr)
    else:
        print(f"submitted Katib Experiment {submitted}")
    return EXIT_OK


def _tune_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("notebook")
    p.add_argument(
        "--objective", required=True, help="the metric to optimise (a name the metrics cell records)"
    )
    p.add_argument("--goal", choices=["max", "min"], default="max")
    p.add_argument("--trials", type=int, default=10, metavar="N", help="at most N trials (default 10)")
    p.add_argument("--parallel", type=int, default=1, metavar="P", help="P trials at once (default 1)")
    p.add_argument("--algorithm", choices=["random", "grid", "bayesian"], default="bayesian")
    p.add_argument("--seed", type=int, help="sampler seed, for repeatable trials")
    add_parameter_options(p, "a parameter fixed for every trial")
    p.add_argument(
        "--best-out", metavar="FILE", help="write the best parameters as YAML (cellpipe run -f FILE)"
    )
    p.add_argument("--write-back", action="store_true", help="put the best values into the parameters cell")
    p.add_argument(
        "--katib", action="store_true", help="a Katib Experiment for a cluster instead of local trials"
    )
    p.add_argument("-o", "--output", metavar="FILE", help="with --katib: write the Experiment YAML here")
    p.add_argument("--namespace", default="kubeflow", help="with --katib: the Experiment's namespace")
    p.add_argument(
        "--image",
        help="with --katib: the trial image, with cellpipe and the notebook's packages "
        "(default: the notebook's image)",
    )
    p.add_argument("-q", "--quiet", action="store_true")


COMMANDS = [
    Command(
        "tune",
        "tune the parameters annotated with # search: (local trials or Katib)",
        _tune_arguments,
        _tune,
    ),
]
