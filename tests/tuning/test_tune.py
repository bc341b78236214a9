"""Search spaces, local tuning of the scikit-learn sample, write-back, and the Katib Experiment."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import kubernetes.client.models as k8s_models
import pytest
import yaml
from kubeflow.katib import models as katib_models
from nbformat.v4 import new_code_cell, new_notebook

from converter.errors import CellpipeError
from converter.notebook import search_space
from converter.notebook.reader import check_node, read_notebook
from converter.tuning import katib
from converter.tuning import trials as tune
from tests.openapi_models import validate

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "sample_notebooks" / "sklearn_tabular.ipynb"
CELLPIPE = str(Path(sys.executable).with_name("cellpipe"))


def _problems(parameters_cell: str) -> list[str]:
    nb = new_notebook()
    cell = new_code_cell(parameters_cell)
    cell.metadata["tags"] = ["parameters"]
    nb.cells = [cell, new_code_cell("print(lr, depth, kernel)")]
    _, problems = check_node(nb, "nb.ipynb")
    return [str(p) for p in problems]


# ---------------------------------------------------------------- search spaces


def test_the_issue_notations_parse() -> None:
    lr = search_space.parse("lr", "loguniform(1e-4, 1e-1)")
    assert (lr.kind, lr.low, lr.high, lr.log) == ("loguniform", 1e-4, 1e-1, True)
    depth = search_space.parse("depth", "int(2, 12)")
    assert depth.grid == tuple(range(2, 13))
    assert search_space.parse("d", "int(2, 10, step=4)").grid == (2, 6, 10)
    assert search_space.parse("k", 'choice("rbf", "linear")').choices == ("rbf", "linear")
    assert search_space.parse("x", "uniform(0, 1)").grid is None
    assert search_space.parse("n", "[50, 100, 200]").choices == (50, 100, 200)
    assert search_space.parse("n", "range(2, 9, 3)").grid == (2, 5, 8)


def test_valid_annotations_validate_clean() -> None:
    cell = (
        "lr = 0.01  # search: loguniform(1e-4, 1e-1)\n"
        "depth = 6  # search: int(2, 12)\n"
        'kernel = "rbf"  # search: choice("rbf", "linear")'
    )
    assert _problems(cell) == []


@pytest.mark.parametrize(
    ("annotation", "message"),
    [
        ("depth = 6  # search: int(12, 2)", "low must be below high"),
        ("depth = 6  # search: normal(0, 1)", "unknown distribution 'normal'"),
        ("depth = 6  # search: int(2, 12, step=0)", "step must be a positive whole number"),
        ("lr = 0.1  # search: loguniform(0, 1)", "loguniform needs a positive low bound"),
        ("depth = 6  # search: uniform(0, 1)", "uniform(...) gives floats; the parameter is a int"),
        ('kernel = "rbf"  # search: choice("rbf", 2)', "choice value 2 is not a str"),
        ("lr = 0.1  # search: uniform(0, ", "is not a distribution call"),
        ("lr = 0.1  # search: uniform(0, x)", "arguments must be literals"),
    ],
)
def test_bad_annotations_are_parameters_errors(annotation: str, message: str) -> None:
    cell = 'lr = 0.01\ndepth = 6\nkernel = "rbf"\n'
    name = annotation.split(" ")[0]
    lines = [annotation if line.startswith(name + " ") else line for line in cell.splitlines()]
    problems = _problems("\n".join(lines))
    assert len(problems) == 1, problems
    assert problems[0].startswith(f"nb.ipynb: cell 0 [parameters]: {name}: ")
    assert message in problems[0]


def test_metadata_search_form_is_validated_too() -> None:
    nb = new_notebook()
    cell = new_code_cell("depth = 6")
    cell.metadata["tags"] = ["parameters"]
    cell.metadata["cellpipe"] = {"search": {"depth": "int(9, 3)"}}
    nb.cells = [cell, new_code_cell("print(depth)")]
    pipeline, problems = check_node(nb, "nb.ipynb")
    assert pipeline is None
    assert [str(p) for p in problems] == [
        "nb.ipynb: cell 0 [parameters]: depth: int(9, 3): low must be below high"
    ]


def test_validate_command_reports_search_errors(tmp_path: Path) -> None:
    nb = new_notebook()
    cell = new_code_cell("depth = 6  # search: int(12, 2)")
    cell.metadata["tags"] = ["parameters"]
    nb.cells = [cell, new_code_cell("print(depth)")]
    path = tmp_path / "nb.ipynb"
    path.write_text(json.dumps(nb))
    done = subprocess.run([CELLPIPE, "validate", str(path)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "cell 0 [parameters]: depth: int(12, 2): low must be below high" in done.stderr


# ---------------------------------------------------------------- local tuning


@pytest.fixture(scope="module")
def tuned(tmp_path_factory: pytest.TempPathFactory) -> tuple[tune.TuneResult, Path, Path]:
    """One seeded tuning run of the sample, shared by the tests below (about 6 s on 2 CPUs)."""
    folder = tmp_path_factory.mktemp("tune")
    notebook = folder / "sklearn_tabular.ipynb"
    shutil.copy(SAMPLE, notebook)
    home = folder / "home"
    pipeline = read_notebook(notebook)
    result = tune.tune(
        pipeline, notebook, "roc_auc", "max", trials=4, parallel=2, algorithm="random", seed=1, workspace=home
    )
    return result, notebook, home


def test_tuning_improves_on_the_defaults_and_reports_the_real_best(
    tuned: tuple[tune.TuneResult, Path, Path],
) -> None:
    result, _, _ = tuned
    assert len(result.trials) == 4
    assert all(t.state == "succeeded" for t in result.trials), result.trials
    baseline, best = result.baseline, result.best
    assert baseline is not None and best is not None
    assert baseline.parameters == {"C": 1.0, "max_iter": 500}
    assert best.objective is not None and baseline.objective is not None
    assert best.objective > baseline.objective
    assert best.objective == max(t.objective for t in result.trials if t.objective is not None)


def test_the_best_trial_objective_is_what_its_run_recorded(tuned: tuple[tune.TuneResult, Path, Path]) -> None:
    from converter.store.runstore import RunStore
    from converter.store.workspace import Workspace

    result, _, home = tuned
    best = result.best
    assert best is not None and best.run_id is not None
    store = RunStore(Workspace(home).database)
    try:
        run = store.get_run(best.run_id)
        recorded = {t.run_id: store.get_run(t.run_id).metrics["roc_auc"] for t in result.trials if t.run_id}
    finally:
        store.close()
    assert run.parameters["C"] == best.parameters["C"]
    assert run.metrics["roc_auc"] == best.objective
    assert best.objective == max(recorded.values())


def test_trials_share_cached_steps(tuned: tuple[tune.TuneResult, Path, Path]) -> None:
    from converter.store.runstore import RunStore
    from converter.store.workspace import Workspace

    result, _, home = tuned
    store = RunStore(Workspace(home).database)
    try:
        states = [store.get_run(t.run_id).steps for t in result.trials if t.run_id]
    finally:
        store.close()
    load_states = [s.state for steps in states for s in steps if s.name == "load_data"]
    # Two trials start together (so both may compute load_data); the later ones reuse it.
    assert load_states.count("cached") >= len(load_states) - 2


def test_best_yaml_runs_as_a_parameters_file(tuned: tuple[tune.TuneResult, Path, Path]) -> None:
    result, notebook, _ = tuned
    text = tune.best_yaml(result, notebook.name)
    best = result.best
    assert best is not None
    assert yaml.safe_load(text) == best.parameters
    from converter.notebook.parameters import parameter_values

    path = notebook.with_name("best.yaml")
    path.write_text(text)
    assert parameter_values(read_notebook(notebook), [], [str(path)]) == best.parameters


def test_write_back_changes_only_the_values(tmp_path: Path) -> None:
    notebook = tmp_path / "nb.ipynb"
    shutil.copy(SAMPLE, notebook)
    before = json.loads(notebook.read_text())
    changed = tune.write_back(notebook, {"C": 0.25, "max_iter": 120})
    after = json.loads(notebook.read_text())
    assert sorted(changed) == ["C", "max_iter"]
    source = "".join(after["cells"][3]["source"])
    assert "C = 0.25  # search: loguniform(1e-3, 1e2)\n" in source
    assert "max_iter = 120  # search: int(20, 500, step=20)\n" in source
    for index, cell in enumerate(before["cells"]):
        if index != 3:
            assert after["cells"][index] == cell
    assert after["metadata"] == before["metadata"]
    pipeline = read_notebook(notebook)
    assert {p.name: p.default for p in pipeline.parameters}["C"] == 0.25
    with pytest.raises(CellpipeError, match="no assignment of gamma"):
        tune.write_back(notebook, {"gamma": 1.0})


def test_tune_refuses_an_unknown_objective() -> None:
    pipeline = read_notebook(SAMPLE)
    with pytest.raises(CellpipeError, match="records no such metric"):
        tune.tune(pipeline, SAMPLE, "loss", "min", trials=1)


def test_grid_values_cover_finite_spaces_and_spread_ranges() -> None:
    assert tune.grid_values(search_space.parse("k", 'choice("a", "b")')) == ["a", "b"]
    values = tune.grid_values(search_space.parse("c", "loguniform(1e-2, 1e2)"))
    assert values[0] == pytest.approx(1e-2) and values[-1] == pytest.approx(1e2)
    assert values[2] == pytest.approx(1.0)


# ---------------------------------------------------------------- Katib


def _experiment() -> list[dict[str, object]]:
    pipeline = read_notebook(SAMPLE)
    return katib.experiment(
        pipeline, objective="roc_auc", goal="max", trials=12, parallel=3, algorithm="bayesian"
    )


def test_katib_experiment_matches_the_katib_sdk_models() -> None:
    config_map, experiment = _experiment()
    modules = [katib_models, k8s_models]
    assert validate(experiment, "V1beta1Experiment", modules) == []
    assert validate(config_map, "V1ConfigMap", [k8s_models]) == []
    spec = experiment["spec"]
    assert isinstance(spec, dict)
    job = spec["trialTemplate"]["trialSpec"]
    assert validate(job, "V1Job", [k8s_models]) == []


def test_katib_experiment_content() -> None:
    config_map, experiment = _experiment()
    spec = experiment["spec"]
    assert isinstance(spec, dict)
    assert experiment["apiVersion"] == "kubeflow.org/v1beta1"
    assert spec["objective"]["type"] == "maximize"
    assert spec["objective"]["objectiveMetricName"] == "roc_auc"
    assert spec["algorithm"]["algorithmName"] == "tpe"
    assert (spec["parallelTrialCount"], spec["maxTrialCount"]) == (3, 12)
    params = {p["name"]: p for p in spec["parameters"]}
    assert params["C"]["parameterType"] == "double"
    assert float(params["C"]["feasibleSpace"]["min"]) == pytest.approx(-3.0)  # log10 of 1e-3
    assert params["max_iter"]["feasibleSpace"] == {"min": "20", "max": "500", "step": "20"}
    command = spec["trialTemplate"]["trialSpec"]["spec"]["template"]["spec"]["containers"][0]["command"]
    assert command[command.index("--log10") :][:3] == ["--log10", "C", "${trialParameters.C}"]
    assert json.loads(config_map["data"]["sklearn_tabular.ipynb"]) == json.loads(SAMPLE.read_text())
    container = spec["trialTemplate"]["trialSpec"]["spec"]["template"]["spec"]["containers"][0]
    assert container["resources"] == {"requests": {"cpu": "1", "memory": "2Gi"}}  # the train step's


def test_katib_trial_runner_prints_metrics_for_the_stdout_collector(tmp_path: Path) -> None:
    notebook = tmp_path / "sklearn_tabular.ipynb"
    shutil.copy(SAMPLE, notebook)
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "converter.tuning.katib",
            str(notebook),
            "--log10",
            "C",
            "-1",
            "-p",
            "max_iter",
            "100",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env={"CELLPIPE_HOME": str(tmp_path / "home"), "PATH": "/usr/bin:/bin"},
    )
    assert done.returncode == 0, done.stderr
    lines = dict(line.split("=", 1) for line in done.stdout.splitlines() if "=" in line)
    assert set(lines) == {"accuracy", "f1", "roc_auc"}
    assert 0.9 < float(lines["roc_auc"]) <= 1.0


def test_cli_katib_writes_the_yaml(tmp_path: Path) -> None:
    out = tmp_path / "experiment.yaml"
    done = subprocess.run(
        [
            CELLPIPE,
            "tune",
            str(SAMPLE),
            "--objective",
            "accuracy",
            "--katib",
            "-o",
            str(out),
            "--trials",
            "4",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    kinds = [d["kind"] for d in yaml.safe_load_all(out.read_text())]
    assert kinds == ["ConfigMap", "Experiment"]


def test_cli_tune_prints_trials_writes_best_and_writes_back(tmp_path: Path) -> None:
    notebook = tmp_path / "sklearn_tabular.ipynb"
    shutil.copy(SAMPLE, notebook)
    best_file = tmp_path / "best.yaml"
    command = [CELLPIPE, "tune", str(notebook), "--objective", "roc_auc", "--trials", "2", "--algorithm"]
    command += [
        "bayesian",
        "--seed",
        "3",
        "-p",
        "max_iter",
        "200",
        "--best-out",
        str(best_file),
        "--write-back",
    ]
    done = subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=120,
        env={"CELLPIPE_HOME": str(tmp_path / "home"), "PATH": "/usr/bin:/bin"},
    )
    assert done.returncode == 0, done.stderr
    trial_lines = [line for line in done.stdout.splitlines() if line.startswith("trial ")]
    assert len(trial_lines) == 2 and all("succeeded roc_auc=" in line for line in trial_lines)
    assert "(C=1.0) run" in done.stdout  # the defaults ran as a trial; max_iter was fixed, not tuned
    best = yaml.safe_load(best_file.read_text())
    assert set(best) == {"C"}
    defaults = {p.name: p.default for p in read_notebook(notebook).parameters}
    assert defaults["C"] == best["C"] and defaults["max_iter"] == 500


def test_sigterm_cancels_the_running_trials(tmp_path: Path) -> None:
    from converter.store.runstore import RunStore
    from converter.store.workspace import Workspace

    nb = new_notebook()
    cells = [
        ("x = 0.5  # search: uniform(0, 1)", "parameters"),
        ("import time\ntime.sleep(60)\nscore = x", "step:slow"),
    ]
    for source, tag in [*cells, ("score", "metrics")]:
        cell = new_code_cell(source)
        cell.metadata["tags"] = [tag]
        nb.cells.append(cell)
    notebook = tmp_path / "slow.ipynb"
    notebook.write_text(json.dumps(nb))
    home = tmp_path / "home"
    command = [CELLPIPE, "tune", str(notebook), "--objective", "score", "--trials", "4", "--parallel", "2"]
    process = subprocess.Popen(
        command,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env={"CELLPIPE_HOME": str(home), "PATH": "/usr/bin:/bin"},
    )
    try:
        running: list[str] = []
        for _ in range(300):  # until both trials' runs are under way (at most ~30 s)
            if Workspace(home).database.exists():
                store = RunStore(Workspace(home).database)
                try:
                    running = [run.id for run in store.list_runs() if run.state == "running"]
                finally:
                    store.close()
            if len(running) == 2:
                break
            time.sleep(0.1)
        assert len(running) == 2, "the trials did not start"
        process.terminate()
        _, stderr = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 130, stderr
    assert "Traceback" not in stderr
    store = RunStore(Workspace(home).database)
    try:
        states = {run.id: run.state for run in store.list_runs()}
    finally:
        store.close()
    assert states == {run_id: "cancelled" for run_id in running}  # and no third trial started


def test_cli_katib_without_kubernetes_access_prints_the_yaml(tmp_path: Path) -> None:
    done = subprocess.run(
        [CELLPIPE, "tune", str(SAMPLE), "--objective", "accuracy", "--katib", "--namespace", "team"],
        capture_output=True,
        text=True,
        timeout=60,
        env={"HOME": str(tmp_path), "KUBECONFIG": str(tmp_path / "none"), "PATH": "/usr/bin:/bin"},
    )
    assert done.returncode == 0, done.stderr
    documents = list(yaml.safe_load_all(done.stdout))
    assert [d["metadata"]["namespace"] for d in documents] == ["team", "team"]
    assert "no Kubernetes access" in done.stderr


class _FakeKubernetes:
    """A loopback stand-in for the two Kubernetes API calls `cellpipe tune --katib` makes."""

    def __init__(self) -> None:
        import http.server
        import threading

        self.requests: list[tuple[str, str, dict[str, object]]] = []
        self.existing: set[str] = set()
        fake = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: object) -> None:
                pass

            def _answer(self, status: int, body: object) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def _handle(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                fake.requests.append((self.command, self.path, body))
                key = f"{body['kind']}/{body['metadata']['name']}"
                if self.command == "POST" and key in fake.existing:
                    self._answer(409, {"kind": "Status", "reason": "AlreadyExists", "code": 409})
                    return
                fake.existing.add(key)
                self._answer(201 if self.command == "POST" else 200, body)

            do_POST = do_PUT = _handle

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def kubeconfig(self, path: Path) -> Path:
        url = f"http://127.0.0.1:{self.server.server_address[1]}"
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "fake", "cluster": {"server": url}}],
            "users": [{"name": "me", "user": {"token": "t"}}],
            "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "me"}}],
            "current-context": "fake",
        }
        path.write_text(yaml.safe_dump(config))
        return path

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_cli_katib_submits_with_kubernetes_access(tmp_path: Path) -> None:
    fake = _FakeKubernetes()
    try:
        env = {"HOME": str(tmp_path), "KUBECONFIG": str(fake.kubeconfig(tmp_path / "config"))}
        command = [CELLPIPE, "tune", str(SAMPLE), "--objective", "roc_auc", "--katib", "--namespace", "team"]
        done = subprocess.run(command, capture_output=True, text=True, timeout=60, env=env)
        assert done.returncode == 0, done.stderr
        assert "submitted Katib Experiment team/sklearn-tabular-tune" in done.stdout
        # Again: the ConfigMap is replaced, the existing Experiment is not (a clear error instead).
        again = subprocess.run(command, capture_output=True, text=True, timeout=60, env=env)
        assert again.returncode == 2
        assert "Experiment sklearn-tabular-tune already exists in team: kubectl delete" in again.stderr
    finally:
        fake.close()
    calls = [(method, path) for method, path, _ in fake.requests]
    assert calls[:2] == [
        ("POST", "/api/v1/namespaces/team/configmaps"),
        ("POST", "/apis/kubeflow.org/v1beta1/namespaces/team/experiments"),
    ]
    assert calls[2:] == [
        ("POST", "/api/v1/namespaces/team/configmaps"),
        ("PUT", "/api/v1/namespaces/team/configmaps/sklearn-tabular-tune-notebook"),
        ("POST", "/apis/kubeflow.org/v1beta1/namespaces/team/experiments"),
    ]
    experiment = fake.requests[1][2]
    assert validate(experiment, "V1beta1Experiment", [katib_models, k8s_models]) == []
