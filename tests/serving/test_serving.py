"""Serving: serve:* tags, the KServe InferenceService, and `cellpipe serve --local` over HTTP (V1 and V2)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kserve.models as kserve_models
import kubernetes.client.models as k8s_models
import numpy as np
import pytest
from nbformat.v4 import new_code_cell, new_notebook

from converter.engines.base import RunRequest
from converter.engines.local.engine import LocalEngine
from converter.errors import CellpipeError
from converter.notebook.reader import check_node, read_notebook
from converter.notebook.served import served_step, served_variable
from converter.serving import kserve as serving
from tests.openapi_models import validate

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "sample_notebooks" / "sklearn_tabular.ipynb"
CELLPIPE = str(Path(sys.executable).with_name("cellpipe"))


def _notebook(*train_tags: str) -> Any:
    nb = new_notebook()
    cells = [
        ("n = 3", ["parameters"]),
        ("model = {'n': n}", ["step:train", *train_tags]),
        ("print(model)", ["step:report"]),
    ]
    for source, tags in cells:
        cell = new_code_cell(source)
        cell.metadata["tags"] = tags
        nb.cells.append(cell)
    return nb


def test_serve_tags_land_in_the_step_settings() -> None:
    nb = _notebook("serve:sklearn", "serve-min-replicas:1", "serve-max-replicas:4", "canary:25", "cpu:1")
    pipeline, problems = check_node(nb, "nb.ipynb")
    assert pipeline is not None, problems
    settings = pipeline.step("train").settings
    assert (settings.serve, settings.serve_min_replicas, settings.serve_max_replicas) == ("sklearn", 1, 4)
    assert settings.canary_percent == 25
    assert not [p for p in problems if "unknown" in p.message]


@pytest.mark.parametrize(
    ("tag", "message"),
    [
        ("serve:tensorflow", "'tensorflow' is not a valid serve value (expected one of sklearn, xgboost"),
        ("canary:150", "'150' is not a valid canary value"),
        ("serve-max-replicas:lots", "'lots' is not a valid serve-max-replicas value"),
    ],
)
def test_bad_serve_tags_are_errors(tag: str, message: str) -> None:
    pipeline, problems = check_node(_notebook("serve:sklearn", tag), "nb.ipynb")
    assert pipeline is None
    assert any(message in str(p) and f"[{tag}]" in str(p) for p in problems), problems


def test_min_above_max_replicas_is_an_error() -> None:
    nb = _notebook("serve:custom", "serve-min-replicas:5", "serve-max-replicas:2")
    pipeline, problems = check_node(nb, "nb.ipynb")
    assert pipeline is None
    assert "serve-min-replicas 5 is above serve-max-replicas 2" in str(problems[0])


def test_inference_service_matches_the_kserve_sdk_models() -> None:
    nb = _notebook(
        "serve:sklearn", "serve-min-replicas:1", "serve-max-replicas:3", "canary:10", "cpu:1", "gpu:1"
    )
    pipeline, _ = check_node(nb, "nb.ipynb")
    assert pipeline is not None
    step = served_step(pipeline)
    manifest = serving.inference_service(pipeline, step, "s3://bucket/model", namespace="team")
    assert validate(manifest, "V1beta1InferenceService", [kserve_models, k8s_models]) == []
    predictor = manifest["spec"]["predictor"]
    assert (predictor["minReplicas"], predictor["maxReplicas"], predictor["canaryTrafficPercent"]) == (
        1,
        3,
        10,
    )
    assert predictor["model"]["modelFormat"] == {"name": "sklearn"}
    assert predictor["model"]["storageUri"] == "s3://bucket/model"
    assert predictor["model"]["resources"] == {"requests": {"cpu": "1"}, "limits": {"nvidia.com/gpu": "1"}}


def test_custom_inference_service_runs_the_step_image() -> None:
    nb = _notebook("serve:custom", "image:registry.example/predictor:1", "memory:1Gi")
    pipeline, _ = check_node(nb, "nb.ipynb")
    assert pipeline is not None
    manifest = serving.inference_service(pipeline, pipeline.step("train"), "pvc://models/m")
    assert validate(manifest, "V1beta1InferenceService", [kserve_models, k8s_models]) == []
    container = manifest["spec"]["predictor"]["containers"][0]
    assert container["image"] == "registry.example/predictor:1"
    assert {"name": "STORAGE_URI", "value": "pvc://models/m"} in container["env"]


def test_served_variable_needs_a_serve_tag(tmp_path: Path) -> None:
    assert served_variable(read_notebook(_tagged_sample(tmp_path)).step("train")) == "model"
    pipeline = read_notebook(SAMPLE)
    with pytest.raises(CellpipeError, match="'preprocess' is not tagged serve:FRAMEWORK"):
        served_variable(pipeline.step("preprocess"))


def _last_step_notebook(train: str, *tags: str) -> Any:
    """A notebook whose last step trains a model no later step reads (the usual place for serve:)."""
    nb = new_notebook()
    cells = [
        (
            "from sklearn.linear_model import LogisticRegression\n"
            "from sklearn.preprocessing import StandardScaler",
            ["imports"],
        ),
        ("x = [[0.0, 1.0], [1.0, 0.0], [0.0, 2.0], [2.0, 0.0]]\ny = [0, 1, 0, 1]", ["step:load"]),
        (train, ["step:train", *tags]),
    ]
    for source, cell_tags in cells:
        cell = new_code_cell(source)
        cell.metadata["tags"] = cell_tags
        nb.cells.append(cell)
    return nb


def _run_last_step(nb: Any, folder: Path) -> tuple[Any, str, Any]:
    """Run the notebook locally: (the run result, the served output's name, its value from the store)."""
    import nbformat

    notebook = folder / "nb.ipynb"
    nbformat.write(nb, notebook)
    pipeline = read_notebook(notebook)
    result = LocalEngine(folder / "home").run(RunRequest(pipeline, notebook), [])
    if result.state != "succeeded":
        return result, "", None
    model, _, variable = serving.load_run_model(result.run_id, "train", folder / "home")
    return result, variable, model


def test_a_model_no_later_step_reads_is_served(tmp_path: Path) -> None:
    nb = _last_step_notebook("clf = LogisticRegression().fit(x, y)", "serve:sklearn")
    pipeline, problems = check_node(nb, "nb.ipynb")
    assert pipeline is not None, problems
    train = pipeline.step("train")
    assert (train.outputs, train.model_output, train.model_candidates) == (("clf",), "clf", ())
    result, variable, model = _run_last_step(nb, tmp_path)
    assert result.state == "succeeded"
    assert variable == "clf"
    assert type(model).__name__ == "LogisticRegression" and model.predict([[0.0, 3.0]]).tolist() == [0]


def test_the_runtime_picks_the_fitted_estimator_among_several_values(tmp_path: Path) -> None:
    train = (
        "template = LogisticRegression(C=0.5)\n"  # an estimator, not fitted
        "scaler = StandardScaler().fit(x)\n"  # fitted, but no predict()
        "xs = scaler.transform(x)\n"
        "clf = LogisticRegression().fit(xs, y)\n"
        "accuracy = clf.score(xs, y)"
    )
    nb = _last_step_notebook(train, "serve:sklearn")
    pipeline, problems = check_node(nb, "nb.ipynb")
    assert pipeline is not None, problems
    step = pipeline.step("train")
    assert step.model_output == "model"
    assert step.model_candidates == ("accuracy", "clf", "scaler", "template", "xs")
    result, variable, model = _run_last_step(nb, tmp_path)
    assert result.state == "succeeded"
    assert variable == "model"
    assert type(model).__name__ == "LogisticRegression" and model.C == 1.0  # clf, not the template


def test_two_fitted_models_ask_for_the_variable(tmp_path: Path) -> None:
    train = "a = LogisticRegression().fit(x, y)\nb = LogisticRegression(C=2.0).fit(x, y)"
    result, _, _ = _run_last_step(_last_step_notebook(train, "serve:sklearn"), tmp_path)
    assert result.state == "failed"
    log = (tmp_path / "home" / "runs" / result.run_id / "train" / "log.txt").read_text()
    assert "serve:sklearn: a, b are all sklearn models; name one: serve:sklearn:a" in log
    nb = _last_step_notebook(train, "serve:sklearn:b")
    nb.cells.append(new_code_cell("print(a.C)", metadata={"tags": ["step:report"]}))  # a is passed on too
    result, variable, model = _run_last_step(nb, tmp_path)
    assert result.state == "succeeded"
    assert (variable, model.C) == ("b", 2.0)  # the run says which of its outputs a and b is the model


def test_serve_framework_variable_names_the_model_and_feeds_the_deploy_step(tmp_path: Path) -> None:
    import yaml

    from converter.kfp.compile import compile_pipeline

    nb = _last_step_notebook(
        "scaler = StandardScaler().fit(x)\nclf = LogisticRegression().fit(x, y)", "serve:sklearn:clf"
    )
    pipeline, problems = check_node(nb, "nb.ipynb")
    assert pipeline is not None, problems
    assert pipeline.step("train").outputs == ("clf",)
    spec = next(yaml.safe_load_all(compile_pipeline(pipeline).ir_yaml))
    deploy = spec["root"]["dag"]["tasks"]["deploy-model"]
    assert deploy["inputs"]["artifacts"]["model"]["taskOutputArtifact"] == {
        "outputArtifactKey": "clf",
        "producerTask": "train",
    }


@pytest.mark.parametrize(
    ("train", "tag", "message"),
    [
        (
            "clf = LogisticRegression().fit(x, y)",
            "serve:sklearn:model",
            "step 'train' never assigns 'model' (it assigns clf)",
        ),
        ("print(len(x))", "serve:sklearn", "step 'train' assigns no value to serve"),
        (
            "clf = LogisticRegression().fit(x, y)",
            "serve:sklearn:2clf",
            "'sklearn:2clf' is not a valid serve value",
        ),
    ],
)
def test_a_serve_step_without_a_model_is_an_error_on_its_tag(train: str, tag: str, message: str) -> None:
    pipeline, problems = check_node(_last_step_notebook(train, tag), "nb.ipynb")
    assert pipeline is None
    assert any(f"cell 2 [{tag}]" in str(p) and message in str(p) for p in problems), problems


# ---------------------------------------------------------------- cellpipe serve --local


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _post(url: str, body: bytes) -> tuple[int, Any]:
    request = urllib.request.Request(url, body, {"Content-Type": "application/json"}, method="POST")
    try:
        with urllib.request.urlopen(request, timeout=10) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read() or b"null")


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Any, Any]]:
    """Train the sample locally, then `cellpipe serve RUN train --local` it: (base URL, X_test, model)."""
    from converter.step.values import load_value
    from converter.store.artifacts import ArtifactStore
    from converter.store.runstore import RunStore
    from converter.store.workspace import Workspace

    folder = tmp_path_factory.mktemp("serve")
    notebook = folder / SAMPLE.name
    shutil.copy(SAMPLE, notebook)
    home = folder / "home"
    result = LocalEngine(home).run(RunRequest(read_notebook(notebook), notebook), [])
    assert result.state == "succeeded"
    store = RunStore(Workspace(home).database)
    try:
        steps = {s.name: s for s in store.get_run(result.run_id).steps}
    finally:
        store.close()
    artifacts = ArtifactStore(Workspace(home).artifacts)
    x_test = load_value(artifacts.path(steps["preprocess"].outputs["X_test_scaled"]))
    model = load_value(artifacts.path(steps["train"].outputs["model"]))
    port = _free_port()
    env = {**os.environ, "CELLPIPE_HOME": str(home)}
    process = subprocess.Popen(
        [CELLPIPE, "serve", result.run_id[:15], "train", "--local", "--port", str(port)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"{base}/v2/models/train/ready", timeout=2) as answer:
                    if answer.status == 200:
                        break
            except OSError:
                pass
            assert process.poll() is None, process.stdout.read() if process.stdout else ""
            assert time.monotonic() < deadline, "the model server did not get ready in 60 s"
            time.sleep(0.2)
        yield base, x_test, model
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if process.stdout:
            process.stdout.close()


def test_v1_predictions_are_the_models(served: tuple[str, Any, Any]) -> None:
    base, x_test, model = served
    rows = np.asarray(x_test)[:20]
    status, answer = _post(
        f"{base}/v1/models/train:predict", json.dumps({"instances": rows.tolist()}).encode()
    )
    assert status == 200, answer
    assert answer["predictions"] == model.predict(rows).tolist()


def test_v2_predictions_are_the_models(served: tuple[str, Any, Any]) -> None:
    base, x_test, model = served
    rows = np.asarray(x_test)[:20]
    body = {
        "inputs": [
            {"name": "x", "shape": list(rows.shape), "datatype": "FP64", "data": rows.ravel().tolist()}
        ]
    }
    status, answer = _post(f"{base}/v2/models/train/infer", json.dumps(body).encode())
    assert status == 200, answer
    output = answer["outputs"][0]
    assert output["shape"] == [20]
    assert output["data"] == model.predict(rows).tolist()


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/models/train:predict", b"not json"),
        ("/v1/models/train:predict", b'{"rows": [[1, 2]]}'),
        ("/v1/models/train:predict", b'{"instances": [[1, 2]]}'),
        ("/v1/models/train:predict", b'{"instances": [["a", "b"]]}'),
        ("/v1/models/train:predict", b'{"instances": [1, 2, 3]}'),
        ("/v2/models/train/infer", b'{"inputs": []}'),
        (
            "/v2/models/train/infer",
            b'{"inputs": [{"name": "x", "shape": [1, 2], "datatype": "FP64", "data": [1, 2]}]}',
        ),
        ("/v2/models/train/infer", b"{"),
        ("/v1/models/nosuch:predict", b'{"instances": [[1]]}'),
    ],
)
def test_bad_requests_get_4xx_and_the_server_lives_on(
    served: tuple[str, Any, Any], path: str, body: bytes
) -> None:
    base, x_test, model = served
    status, _ = _post(base + path, body)
    assert 400 <= status < 500
    rows = np.asarray(x_test)[:2]
    status, answer = _post(
        f"{base}/v1/models/train:predict", json.dumps({"instances": rows.tolist()}).encode()
    )
    assert status == 200 and answer["predictions"] == model.predict(rows).tolist()


def test_serve_refuses_a_step_without_a_model(served: tuple[str, Any, Any], tmp_path: Path) -> None:
    done = subprocess.run(
        [CELLPIPE, "serve", "nosuchrun", "train", "--local"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "CELLPIPE_HOME": str(tmp_path)},
    )
    assert done.returncode == 2
    assert "no run 'nosuchrun'" in done.stderr
    assert "Traceback" not in done.stderr


# ---------------------------------------------------------------- the compiled pipeline's deploy step


def _tagged_sample(folder: Path) -> Path:
    """The scikit-learn sample with its train step tagged for serving."""
    data = json.loads(SAMPLE.read_text())
    train = next(c for c in data["cells"] if "step:train" in c["metadata"].get("tags", []))
    train["metadata"]["tags"] += ["serve:sklearn", "serve-max-replicas:2", "canary:20"]
    path = folder / SAMPLE.name
    path.write_text(json.dumps(data))
    return path


def test_compiled_pipeline_ends_with_the_deploy_step(tmp_path: Path) -> None:
    import yaml

    from converter.kfp.compile import compile_pipeline

    compiled = compile_pipeline(read_notebook(_tagged_sample(tmp_path)))
    spec = next(yaml.safe_load_all(compiled.ir_yaml))
    tasks = spec["root"]["dag"]["tasks"]
    deploy = tasks["deploy-model"]
    assert sorted(deploy["dependentTasks"]) == ["evaluate", "train"]  # after every other step's end
    assert deploy["inputs"]["artifacts"]["model"]["taskOutputArtifact"] == {
        "outputArtifactKey": "model",
        "producerTask": "train",
    }
    assert deploy["cachingOptions"] == {}  # caching off: a re-run deploys again
    container = spec["deploymentSpec"]["executors"]["exec-deploy-model"]["container"]
    manifest = json.loads(container["args"][0])
    assert container["args"][1] == "{{$.inputs.artifacts['model'].uri}}"
    assert validate(manifest, "V1beta1InferenceService", [kserve_models, k8s_models]) == []
    predictor = manifest["spec"]["predictor"]
    assert (predictor["maxReplicas"], predictor["canaryTrafficPercent"]) == (2, 20)
    assert predictor["model"]["resources"] == {"requests": {"cpu": "1", "memory": "2Gi"}}
    assert compile_pipeline(read_notebook(_tagged_sample(tmp_path))) == compiled  # byte-identical


FAKE_KUBERNETES = """
import json, os
class ApiException(Exception):
    def __init__(self, status):
        self.status = status
class _Config:
    def load_incluster_config(self):
        pass
class CustomObjectsApi:
    def _log(self, *call):
        with open(os.environ["FAKE_K8S_LOG"], "a") as f:
            f.write(json.dumps(call) + "\\n")
    def get_namespaced_custom_object(self, group, version, namespace, plural, name):
        existing = os.environ.get("FAKE_K8S_EXISTING")
        if not existing:
            raise ApiException(404)
        return {"metadata": {"resourceVersion": existing}}
    def create_namespaced_custom_object(self, group, version, namespace, plural, body):
        self._log("create", group, version, namespace, plural, body)
    def replace_namespaced_custom_object(self, group, version, namespace, plural, name, body):
        self._log("replace", group, version, namespace, plural, body)
class _Client:
    ApiException = ApiException
    CustomObjectsApi = CustomObjectsApi
client, config = _Client(), _Config()
"""


@pytest.mark.parametrize("existing", ["", "41"])
def test_deploy_script_creates_or_replaces_the_inference_service(tmp_path: Path, existing: str) -> None:
    fake = tmp_path / "fake"
    fake.mkdir()
    (fake / "kubernetes.py").write_text(FAKE_KUBERNETES)
    pipeline = read_notebook(_tagged_sample(tmp_path))
    manifest = serving.inference_service(pipeline, pipeline.step("train"), serving.DEPLOY_PLACEHOLDER_URI)
    manifest["metadata"]["namespace"] = "team"
    log = tmp_path / "calls.jsonl"
    env = {
        **os.environ,
        "PYTHONPATH": str(fake),
        "FAKE_K8S_LOG": str(log),
        "FAKE_K8S_EXISTING": existing,
        "PIP_NO_INDEX": "1",  # kubernetes is installed here: pip only checks, never downloads
    }
    uri = "minio://mlpipeline/v2/artifacts/sklearn-tabular/run/train/model"
    done = subprocess.run(
        [sys.executable, "-c", serving.DEPLOY_SCRIPT, json.dumps(manifest), uri],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    (call,) = [json.loads(line) for line in log.read_text().splitlines()]
    verb, group, version, namespace, plural, body = call
    assert verb == ("replace" if existing else "create")
    assert (group, version, namespace, plural) == (
        "serving.kserve.io",
        "v1beta1",
        "team",
        "inferenceservices",
    )
    assert (
        body["spec"]["predictor"]["model"]["storageUri"]
        == "s3://mlpipeline/v2/artifacts/sklearn-tabular/run/train/model"
    )
    assert body["metadata"].get("resourceVersion") == (existing or None)


def test_only_one_step_serves() -> None:
    nb = _notebook()
    nb.cells[2].metadata["tags"] = ["step:report", "serve:custom"]
    nb.cells[2].source = "summary = str(model)"
    nb.cells[1].metadata["tags"] = ["step:train", "serve:sklearn"]
    _, problems = check_node(nb, "nb.ipynb")
    assert {str(p) for p in problems} == {
        f"nb.ipynb: cell {cell} [{tag}]: steps train, report are all tagged serve:; "
        "a pipeline deploys one model"
        for cell, tag in ((1, "serve:sklearn"), (2, "serve:custom"))
    }
