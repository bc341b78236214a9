"""Katib `Experiment`s (kubeflow.org/v1beta1) for the notebook's search spaces, and the trial runner.

Each Katib trial is a Kubernetes Job whose container runs ``python -m converter.tuning.katib``: it runs
the notebook's pipeline (the very step programs the compiled KFP pipeline carries, through the
local engine inside the trial pod) with the trial's parameters and prints every metric as
``name=value`` for Katib's StdOut metrics collector. The notebook travels in a ConfigMap next to
the Experiment (mounted read-only: the runner copies it to a writable folder first), so the trial
image only needs cellpipe and the notebook's packages. The trial pod runs the steps itself, so it
requests the largest CPU, memory and GPU request among the steps.

`loguniform` ranges are searched by Katib over log10 of the value (the trial runner takes the
power back), which every Katib version understands, rather than the `distribution` field only
newer Katib releases know.
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from converter.errors import CellpipeError
from converter.model import Pipeline
from converter.notebook.parameters import render_parameter
from converter.notebook.search_space import SearchSpace

NOTEBOOK_MOUNT = "/cellpipe"
CONTAINER = "trial"
_ALGORITHMS = {"random": "random", "grid": "grid", "bayesian": "tpe"}


def _parameter_spec(space: SearchSpace) -> dict[str, Any]:
    if space.kind == "choice":
        return {
            "name": space.name,
            "parameterType": "categorical",
            "feasibleSpace": {"list": [render_parameter(c) for c in space.choices]},
        }
    assert space.low is not None and space.high is not None
    if space.kind == "int":
        feasible = {"min": str(int(space.low)), "max": str(int(space.high))}
        if space.step and space.step != 1:
            feasible["step"] = str(space.step)
        return {"name": space.name, "parameterType": "int", "feasibleSpace": feasible}
    low, high = float(space.low), float(space.high)
    if space.log:
        low, high = math.log10(low), math.log10(high)
    return {
        "name": space.name,
        "parameterType": "double",
        "feasibleSpace": {"min": repr(low), "max": repr(high)},
    }


def trial_resources(pipeline: Pipeline) -> dict[str, dict[str, str]]:
    """The trial pod runs every step, one after another at worst: the largest request of each kind."""
    from converter.notebook.tags import cpu_cores, memory_bytes

    res = [s.settings.resources for s in pipeline.steps]
    requests: dict[str, str] = {}
    limits: dict[str, str] = {}
    cpus = [r.cpu_request for r in res if r.cpu_request]
    if cpus:
        requests["cpu"] = max(cpus, key=cpu_cores)
    memory = [r.memory_request for r in res if r.memory_request]
    if memory:
        requests["memory"] = max(memory, key=memory_bytes)
    gpus = [r for r in res if r.gpu]
    if gpus:
        most = max(gpus, key=lambda r: r.gpu or 0)
        limits[most.gpu_vendor] = str(most.gpu)
    return {k: v for k, v in (("requests", requests), ("limits", limits)) if v}


def experiment(
    pipeline: Pipeline,
    *,
    objective: str,
    goal: str,
    trials: int,
    parallel: int,
    algorithm: str,
    namespace: str = "kubeflow",
    image: str | None = None,
    fixed: Mapping[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """The ConfigMap holding the notebook, then the Experiment: `kubectl apply -f` order."""
    from converter.tuning.trials import check_objective, tunable_spaces

    check_objective(pipeline, objective)
    fixed = dict(fixed or {})
    spaces = {n: s for n, s in tunable_spaces(pipeline).items() if n not in fixed}
    if not spaces:
        raise CellpipeError("every parameter with a search space was fixed with -p")
    notebook = Path(pipeline.notebook)
    name = f"{pipeline.name}-tune"[:63].strip("-")
    config_map = f"{name}-notebook"[:63].strip("-")
    metrics = sorted({m for s in pipeline.steps for m in s.metrics})
    resources = trial_resources(pipeline)
    command = ["python", "-m", "converter.tuning.katib", f"{NOTEBOOK_MOUNT}/{notebook.name}"]
    for pname, value in sorted(fixed.items()):
        command += ["-p", pname, render_parameter(value)]
    for pname, space in sorted(spaces.items()):
        flag = "--log10" if space.kind != "choice" and space.kind != "int" and space.log else "-p"
        command += [flag, pname, "${trialParameters." + pname + "}"]
    job = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "spec": {
            "template": {
                "metadata": {"annotations": {"sidecar.istio.io/inject": "false"}},
                "spec": {
                    "restartPolicy": "Never",
                    "containers": [
                        {
                            "name": CONTAINER,
                            "image": image or pipeline.image,
                            "command": command,
                            "env": [{"name": "CELLPIPE_HOME", "value": "/tmp/cellpipe"}],
                            **({"resources": resources} if resources else {}),
                            "volumeMounts": [{"name": "notebook", "mountPath": NOTEBOOK_MOUNT}],
                        }
                    ],
                    "volumes": [{"name": "notebook", "configMap": {"name": config_map}}],
                },
            }
        },
    }
    source = notebook.read_text(encoding="utf-8") if notebook.is_file() else ""
    return [
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {"name": config_map, "namespace": namespace},
            "data": {notebook.name: source},
        },
        {
            "apiVersion": "kubeflow.org/v1beta1",
            "kind": "Experiment",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {
                "objective": {
                    "type": "maximize" if goal == "max" else "minimize",
                    "objectiveMetricName": objective,
                    "additionalMetricNames": [m for m in metrics if m != objective],
                },
                "algorithm": {"algorithmName": _ALGORITHMS[algorithm]},
                "parallelTrialCount": parallel,
                "maxTrialCount": trials,
                "maxFailedTrialCount": trials,
                "metricsCollectorSpec": {"collector": {"kind": "StdOut"}},
                "parameters": [_parameter_spec(spaces[n]) for n in sorted(spaces)],
                "trialTemplate": {
                    "primaryContainerName": CONTAINER,
                    "trialParameters": [
                        {"name": n, "reference": n, "description": f"notebook parameter {n}"}
                        for n in sorted(spaces)
                    ],
                    "trialSpec": job,
                },
            },
        },
    ]


def to_yaml(documents: Sequence[Mapping[str, Any]]) -> str:
    import yaml

    return yaml.safe_dump_all(list(documents), sort_keys=False, width=1000)


def submit(documents: Sequence[Mapping[str, Any]]) -> str | None:
    """Create the ConfigMap and Experiment; None when there is no Kubernetes access to do it with."""
    try:
        from kubernetes import client, config
    except ImportError:
        return None
    try:
        config.load_incluster_config()
    except config.ConfigException:
        try:
            config.load_kube_config()
        except (config.ConfigException, OSError):
            return None
    from urllib3.exceptions import HTTPError

    config_map, exp = documents
    namespace = exp["metadata"]["namespace"]
    core = client.CoreV1Api()
    what = f"ConfigMap {config_map['metadata']['name']}"
    try:
        try:
            core.create_namespaced_config_map(namespace, config_map)
        except client.ApiException as exc:
            if exc.status != 409:
                raise
            core.replace_namespaced_config_map(config_map["metadata"]["name"], namespace, config_map)
        what = f"Experiment {exp['metadata']['name']}"
        client.CustomObjectsApi().create_namespaced_custom_object(
            "kubeflow.org", "v1beta1", namespace, "experiments", exp
        )
    except client.ApiException as exc:
        if exc.status == 409:  # a finished or running Experiment is not replaced behind its trials' back
            raise CellpipeError(
                f"{what} already exists in {namespace}: kubectl delete -n {namespace} "
                f"experiment {exp['metadata']['name']}, then submit again"
            ) from None
        raise CellpipeError(f"creating {what} in {namespace}: {exc.status} {exc.reason}") from None
    except HTTPError as exc:
        raise CellpipeError(f"creating {what}: cannot reach the Kubernetes API ({exc})") from None
    return f"{namespace}/{exp['metadata']['name']}"


# ---------------------------------------------------------------- the trial runner


def main(argv: Sequence[str] | None = None) -> int:
    """Run one trial: the pipeline with the trial's parameters, metrics printed as name=value."""
    from converter.engines.base import RunRequest
    from converter.engines.registry import get_engine
    from converter.engines.runner import run_cancellable
    from converter.notebook.parameters import parameter_values
    from converter.notebook.reader import read_notebook

    parser = argparse.ArgumentParser(prog="python -m converter.tuning.katib")
    parser.add_argument("notebook")
    parser.add_argument("-p", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"))
    parser.add_argument("--log10", nargs=2, action="append", default=[], metavar=("NAME", "EXPONENT"))
    args = parser.parse_args(argv)
    try:
        pipeline = read_notebook(args.notebook)
        pairs = [*args.p, *([n, repr(10 ** float(v))] for n, v in args.log10)]
        values = parameter_values(pipeline, pairs, [])
    except (CellpipeError, ValueError) as exc:
        print(f"cellpipe: {exc}", file=sys.stderr)
        return 2
    notebook = Path(args.notebook).resolve()
    if not os.access(notebook.parent, os.W_OK):
        # A ConfigMap mount is read-only; steps run in the notebook's folder and may write files.
        workdir = Path(tempfile.mkdtemp(prefix="cellpipe-trial-"))
        notebook = Path(shutil.copy(notebook, workdir / notebook.name))
    request = RunRequest(pipeline=pipeline, notebook=notebook, parameters=values)
    result = run_cancellable(get_engine("local"), request, [])  # Katib stops a trial with SIGTERM
    for metric, value in sorted(result.metrics.items()):
        print(f"{metric}={value!r}", flush=True)
    return 0 if result.state == "succeeded" else 1


if __name__ == "__main__":
    raise SystemExit(main())
