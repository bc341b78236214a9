"""The command line's Kubeflow Pipelines side: `cellpipe schedule`, and `cellpipe runs ... --engine kfp`.

`cellpipe run NB --engine kfp` itself is `cellpipe run` with the KFP engine; this module gives it the
connection flags (`add_connection_options`, `engine_options`). Runs started that way are in the local run
store with their KFP run id; `runs list/show --engine kfp` ask the cluster instead, and `runs cancel`
terminates a cluster run on the cluster (with or without `--engine kfp`).
"""

from __future__ import annotations

import argparse
import json
from typing import TYPE_CHECKING, Any

from rich import box
from rich.table import Table
from rich.text import Text

from converter.cli.common import EXIT_OK, Command, add_parameter_options
from converter.cli.common import console as _console
from converter.errors import CellpipeError
from converter.kfp.connection import AUTH_MODES, resolve

if TYPE_CHECKING:
    from converter.kfp.cluster import Cluster
    from converter.store.runstore import RunStore

_STATE_STYLES = {"SUCCEEDED": "green", "FAILED": "red", "RUNNING": "yellow", "CANCELED": "magenta"}


def add_connection_options(parser: argparse.ArgumentParser, experiment: bool = False) -> None:
    group = parser.add_argument_group("Kubeflow Pipelines connection (--engine kfp)")
    group.add_argument("--host", metavar="URL", help="KFP API endpoint (default: $KF_PIPELINES_ENDPOINT)")
    group.add_argument("--namespace", help="your namespace on a multi-user deployment")
    group.add_argument(
        "--auth", choices=AUTH_MODES, help="how to authenticate (default: whatever is configured)"
    )
    if experiment:
        group.add_argument("--experiment", help="KFP experiment (default: the notebook's, else Default)")
        group.add_argument(
            "--no-create-experiment",
            action="store_true",
            help="fail if the experiment does not exist instead of creating it",
        )


def engine_options(args: argparse.Namespace) -> dict[str, Any]:
    """The engine options the connection flags set; unset ones are None (the registry leaves them out,
    and refuses a set one the engine does not take). `--quiet` drops the KFP note with the run's link."""
    options: dict[str, Any] = {
        "host": args.host,
        "namespace": args.namespace,
        "auth": args.auth,
        "experiment": getattr(args, "experiment", None),
        "create_experiment": False if getattr(args, "no_create_experiment", False) else None,
    }
    if getattr(args, "quiet", False) and getattr(args, "engine", None) == "kfp":
        options["notify"] = lambda message: None
    return options


def _connect(args: argparse.Namespace, host: str | None = None) -> Cluster:
    from converter.kfp.cluster import Cluster

    return Cluster.connect(resolve(host=args.host or host, namespace=args.namespace, auth=args.auth))


# ---------------------------------------------------------------- cellpipe schedule


def _schedule(args: argparse.Namespace) -> int:
    if args.list:
        return _schedule_list(args)
    if args.delete:
        cluster = _connect(args)
        cluster.delete_schedule(args.delete)
        print(f"deleted schedule {args.delete} on {cluster.host}")
        return EXIT_OK
    if not args.notebook or not args.cron:
        raise CellpipeError("cellpipe schedule NB --cron EXPR (or --list, or --delete ID)")
    if args.max_concurrency < 1:
        raise CellpipeError("--max-concurrency must be at least 1")
    from converter.kfp.cluster import DEFAULT_EXPERIMENT, kfp_cron
    from converter.kfp.compile import compile_pipeline, without_cache
    from converter.notebook.parameters import parameter_values
    from converter.notebook.reader import read_notebook

    pipeline = read_notebook(args.notebook)
    cron = kfp_cron(args.cron)
    values = {p.name: p.default for p in pipeline.parameters}
    values.update(parameter_values(pipeline, args.parameter or [], args.parameters_file or []))
    cluster = _connect(args)
    ir_yaml = compile_pipeline(pipeline).ir_yaml
    if args.no_cache:
        ir_yaml = without_cache(ir_yaml)
    experiment = (
        args.experiment or pipeline.experiment or cluster.connection.default_experiment or DEFAULT_EXPERIMENT
    )
    name = args.name or pipeline.name
    existing = [s for s in cluster.list_schedules() if s.display_name == name]
    if existing:
        raise CellpipeError(
            f"{cluster.host} already has a schedule named {name!r} ({existing[0].recurring_run_id}): "
            f"delete it with cellpipe schedule --delete ID, or give another --name"
        )
    published = cluster.publish(
        pipeline.name, pipeline.description, ir_yaml, experiment, not args.no_create_experiment
    )
    created = cluster.create_schedule(published, name, cron, values, args.max_concurrency, args.catchup)
    shown = f"{args.cron!r}" + (f" (KFP: {cron!r})" if cron != args.cron.strip() else "")
    print(
        f"scheduled {name!r} ({created.recurring_run_id}) on {cluster.host}: cron {shown}, "
        f"pipeline version {published.version_name}, experiment {experiment!r}"
    )
    return EXIT_OK


def _schedule_list(args: argparse.Namespace) -> int:
    cluster = _connect(args)
    schedules = cluster.list_schedules()
    rows = [
        {
            "id": s.recurring_run_id,
            "name": s.display_name,
            "cron": s.trigger.cron_schedule.cron if s.trigger and s.trigger.cron_schedule else None,
            "status": s.status,
            "created": str(s.created_at) if s.created_at else None,
            "pipeline_version_id": s.pipeline_version_reference.pipeline_version_id
            if s.pipeline_version_reference
            else None,
        }
        for s in schedules
    ]
    if args.json:
        print(json.dumps(rows, indent=2))
        return EXIT_OK
    if not rows:
        print(f"no schedules on {cluster.host}")
        return EXIT_OK
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False)
    for column in ("id", "name", "cron", "status", "created"):
        table.add_column(column, no_wrap=column == "id")
    for row in rows:
        table.add_row(*(str(row[c] or "") for c in ("id", "name", "cron", "status", "created")))
    _console().print(table)
    return EXIT_OK


# ---------------------------------------------------------------- cellpipe runs ... --engine kfp


def runs_list(store: RunStore, args: argparse.Namespace) -> int:
    """The cluster's newest runs, with the local run id of those started from here."""
    cluster = _connect(args)
    local = {r.remote_id: r.id for r in store.list_runs(1000) if r.remote_id}
    rows = [
        {
            "id": r.run_id,
            "name": r.display_name,
            "state": r.state,
            "created": str(r.created_at) if r.created_at else None,
            "local_id": local.get(r.run_id),
        }
        for r in cluster.list_runs(args.limit)
    ]
    if args.json:
        print(json.dumps(rows, indent=2))
        return EXIT_OK
    if not rows:
        print(f"no runs on {cluster.host}")
        return EXIT_OK
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False)
    for column in ("run", "name", "state", "created", "local run"):
        table.add_column(column, no_wrap=column in ("run", "local run"))
    for row in rows:
        state = str(row["state"] or "")
        table.add_row(
            str(row["id"]),
            str(row["name"] or ""),
            Text(state, style=_STATE_STYLES.get(state, "")),
            str(row["created"] or ""),
            str(row["local_id"] or ""),
        )
    _console().print(table)
    return EXIT_OK


def runs_show(store: RunStore, args: argparse.Namespace) -> int:
    """A cluster run's state and tasks, as the cluster sees them now."""
    remote_id, local_id, host = _remote_run(store, args.run)
    cluster = _connect(args, host)
    try:
        run = cluster.client.get_run(remote_id)
    except Exception as error:
        raise cluster.error(f"reading run {remote_id}", error) from None
    details = run.run_details.task_details or [] if run.run_details else []
    tasks = [
        {
            "task": d.display_name,
            "state": d.state,
            "started": str(d.start_time) if d.start_time else None,
            "finished": str(d.end_time) if d.end_time else None,
            "error": d.error.message if d.error else None,
        }
        for d in details
        if d.display_name
        and d.display_name not in ("root", "root-driver")
        and not d.display_name.endswith("-driver")
        and not d.display_name.startswith("executor")
    ]
    report = {
        "id": remote_id,
        "local_id": local_id,
        "name": run.display_name,
        "state": run.state,
        "error": run.error.message if run.error else None,
        "url": cluster.run_url(remote_id),
        "pipeline_version_id": run.pipeline_version_reference.pipeline_version_id
        if run.pipeline_version_reference
        else None,
        "tasks": tasks,
    }
    if args.json:
        print(json.dumps(report, indent=2))
        return EXIT_OK
    console = _console()
    local = f" (local run {local_id})" if local_id else ""
    console.print(f"run {remote_id}{local}: {run.display_name} on {cluster.host}", soft_wrap=True)
    state = str(run.state) + (f": {report['error']}" if report["error"] else "")
    console.print(f"state: {state}", soft_wrap=True)
    console.print(f"url: {report['url']}", soft_wrap=True)
    table = Table(box=box.SIMPLE_HEAD, pad_edge=False)
    for column in ("task", "state", "started", "finished", "error"):
        table.add_column(column)
    for task in tasks:
        task_state = str(task["state"] or "")
        table.add_row(
            str(task["task"]),
            Text(task_state, style=_STATE_STYLES.get(task_state, "")),
            str(task["started"] or ""),
            str(task["finished"] or ""),
            str(task["error"] or ""),
        )
    console.print(table)
    return EXIT_OK


def runs_cancel(store: RunStore, args: argparse.Namespace) -> int:
    """Terminate a cluster run on the cluster; a local monitor following it then ends it "cancelled"."""
    remote_id, local_id, host = _remote_run(store, args.run)
    cluster = _connect(args, host)
    cluster.terminate(remote_id)
    if local_id:
        store.request_cancel(local_id)
    local = f" (local run {local_id})" if local_id else ""
    print(f"cancelled run {remote_id}{local} on {cluster.host}: the cluster stops its pods")
    return EXIT_OK


def _remote_run(store: RunStore, run: str) -> tuple[str, str | None, str | None]:
    """(KFP run id, local run id, recorded host) for a local run id (or prefix) or a KFP run id."""
    try:
        record = store.get_run(run)
    except CellpipeError:
        return run, None, None  # not a local run: take it as the cluster's own id
    if not record.remote_id:
        raise CellpipeError(f"run {record.id} ran on the {record.engine or 'local'} engine, not on KFP")
    started = next((e for e in store.events(record.id) if e.type == "run_started"), None)
    host = (started.data or {}).get("host") if started is not None else None
    return record.remote_id, record.id, host


# ---------------------------------------------------------------- argument parsers


def _schedule_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("notebook", nargs="?")
    action = p.add_mutually_exclusive_group(required=True)
    action.add_argument("--cron", metavar="EXPR", help="cron expression: '0 2 * * *' (5 fields), or KFP's 6")
    action.add_argument("--list", action="store_true", help="list the cluster's schedules")
    action.add_argument("--delete", metavar="ID", help="delete a schedule")
    p.add_argument("--name", help="schedule name (default: the pipeline's)")
    add_parameter_options(p, "a parameter value for every scheduled run")
    p.add_argument("--max-concurrency", type=int, default=1, metavar="N", help="runs at once (default 1)")
    p.add_argument("--catchup", action="store_true", help="run the missed intervals after a pause")
    p.add_argument("--no-cache", action="store_true", help="turn KFP's step caching off for these runs")
    p.add_argument("--json", action="store_true", help="with --list: JSON")
    add_connection_options(p, experiment=True)


COMMANDS = [
    Command(
        "schedule",
        "run a notebook's pipeline on a KFP cluster on a cron schedule",
        _schedule_arguments,
        _schedule,
    ),
]
