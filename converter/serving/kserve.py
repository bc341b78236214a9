"""Model serving: KServe `InferenceService` manifests and a local KServe model server.

The step tagged ``serve:FRAMEWORK`` produces the model: its output variable ``model`` (or its only
output) is what gets served. On a cluster that value is the step's KFP artifact, pointed at by
`inference_service`; locally, `serve_local` loads it from a run in the local store and serves it
with KServe's own Python model server (the ``kserve`` package), which speaks the V1
(``/v1/models/NAME:predict``) and V2 (``/v2/models/NAME/infer``) protocols, on loopback only.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from converter.errors import CellpipeError
from converter.model import Pipeline, Step

# KServe's predictor model formats for our frameworks (custom: the user's own predictor image).
MODEL_FORMATS = {"sklearn": "sklearn", "xgboost": "xgboost", "pytorch": "pytorch"}


def inference_service(
    pipeline: Pipeline,
    step: Step,
    storage_uri: str,
    *,
    namespace: str | None = None,
    name: str | None = None,
) -> dict[str, Any]:
    """The KServe InferenceService (serving.kserve.io/v1beta1) serving `storage_uri`.

    Resources and GPUs come from the step's own tags, replicas and canary traffic from
    serve-min-replicas, serve-max-replicas and canary.
    """
    settings = step.settings
    framework = settings.serve or "custom"
    res = settings.resources
    requests = {k: v for k, v in (("cpu", res.cpu_request), ("memory", res.memory_request)) if v}
    limits = {k: v for k, v in (("cpu", res.cpu_limit), ("memory", res.memory_limit)) if v}
    if res.gpu:
        limits[res.gpu_vendor] = str(res.gpu)
    resources = {k: v for k, v in (("requests", requests), ("limits", limits)) if v}
    predictor: dict[str, Any] = {}
    if settings.serve_min_replicas is not None:
        predictor["minReplicas"] = settings.serve_min_replicas
    if settings.serve_max_replicas is not None:
        predictor["maxReplicas"] = settings.serve_max_replicas
    if settings.canary_percent is not None:
        predictor["canaryTrafficPercent"] = settings.canary_percent
    if res.gpu_type:
        predictor["nodeSelector"] = {"cloud.google.com/gke-accelerator": res.gpu_type}
    if framework == "custom":
        container: dict[str, Any] = {
            "name": "kserve-container",
            "image": settings.image or pipeline.image,
            "env": [{"name": "STORAGE_URI", "value": storage_uri}],
        }
        if resources:
            container["resources"] = resources
        predictor["containers"] = [container]
    else:
        spec: dict[str, Any] = {"modelFormat": {"name": MODEL_FORMATS[framework]}, "storageUri": storage_uri}
        if framework == "sklearn":
            spec["protocolVersion"] = "v2"
        if resources:
            spec["resources"] = resources
        predictor["model"] = spec
    metadata: dict[str, Any] = {"name": name or pipeline.name[:63].strip("-")}
    if namespace:
        metadata["namespace"] = namespace
    return {
        "apiVersion": "serving.kserve.io/v1beta1",
        "kind": "InferenceService",
        "metadata": metadata,
        "spec": {"predictor": predictor},
    }


# ---------------------------------------------------------------- local serving


_STEP_ENDS = ("step_succeeded", "step_cached")


def load_run_model(run: str, step_name: str, workspace: Path | None = None) -> tuple[object, str, str]:
    """(the model, its run id, its variable) as step `step_name` of local run `run` produced it."""
    from converter.step.values import load_value
    from converter.store.artifacts import ArtifactStore
    from converter.store.runstore import RunStore
    from converter.store.workspace import Workspace

    space = Workspace(workspace) if workspace is not None else Workspace.default()
    store = RunStore(space.database)
    try:
        try:
            run_id = store.resolve(run)
        except KeyError:
            raise CellpipeError(f"no run {run!r} in {space.database}") from None
        record = store.get_run(run_id)
        ends = [e for e in store.events(run_id) if e.step == step_name and e.type in _STEP_ENDS]
    finally:
        store.close()
    step = next((s for s in record.steps if s.name == step_name), None)
    if step is None:
        names = ", ".join(s.name for s in record.steps)
        raise CellpipeError(f"run {run_id} has no step {step_name!r} (steps: {names})")
    if step.state not in ("succeeded", "cached"):
        raise CellpipeError(f"step {step_name!r} of run {run_id} is {step.state}: no model to serve")
    variable = (ends[-1].data or {}).get("model") if ends else None  # a serve: step says which
    if variable is None and "model" in step.outputs:
        variable = "model"
    elif variable is None and len(step.outputs) == 1:
        variable = next(iter(step.outputs))
    if variable is None:
        passed = ", ".join(sorted(step.outputs)) or "nothing"
        raise CellpipeError(
            f"step {step_name!r} of run {run_id} passed on {passed}: "
            "tag it serve:FRAMEWORK:VARIABLE to say which value is the model"
        )
    folder = ArtifactStore(space.artifacts).path(step.outputs[variable])
    return load_value(folder), run_id, variable


@contextmanager
def _kserve_argv() -> Iterator[None]:
    """kserve parses sys.argv when imported: keep our own command line away from it."""
    saved = sys.argv
    sys.argv = saved[:1]
    try:
        yield
    finally:
        sys.argv = saved


def predictor(model: object, name: str) -> Any:
    """A KServe model answering V1 (`{"instances": rows}`) and V2 (one FP32/FP64/INT tensor of rows)."""
    import uuid

    with _kserve_argv():
        import kserve
        import numpy as np
        from kserve.errors import InvalidInput
        from kserve.protocol.infer_type import InferOutput, InferRequest, InferResponse

    predict: Callable[[Any], Any] | None = getattr(model, "predict", None)
    if predict is None or not callable(predict):
        raise CellpipeError(f"the served value is a {type(model).__name__}, which has no predict()")
    model_predict = predict

    class Predictor(kserve.Model):
        def __init__(self) -> None:
            super().__init__(name)
            self.ready = True

        def _rows(self, data: Any) -> Any:
            try:
                rows = np.asarray(data, dtype=float)
            except (TypeError, ValueError) as exc:
                raise InvalidInput(f"inputs must be rows of numbers: {exc}") from None
            if rows.ndim != 2:
                raise InvalidInput(f"inputs must be a 2-D array of rows, got {rows.ndim} dimension(s)")
            return rows

        def _predict(self, rows: Any) -> Any:
            try:
                return np.asarray(model_predict(rows))
            except ValueError as exc:  # wrong number of features and the like
                raise InvalidInput(str(exc)) from None

        def predict(self, payload: Any, headers: Any = None, response_headers: Any = None) -> Any:
            if isinstance(payload, InferRequest):
                if len(payload.inputs) != 1:
                    raise InvalidInput("send exactly one input tensor")
                rows = self._rows(payload.inputs[0].as_numpy())
                result = self._predict(rows)
                if result.dtype.kind in "biu":
                    result, datatype = result.astype(np.int64), "INT64"
                elif result.dtype.kind == "f":
                    result, datatype = result.astype(np.float64), "FP64"
                else:
                    result, datatype = result.astype(str).astype(object), "BYTES"
                output = InferOutput(name="predict", shape=list(result.shape), datatype=datatype)
                output.set_data_from_numpy(result, binary_data=False)
                response_id = payload.id or str(uuid.uuid4())
                return InferResponse(model_name=name, infer_outputs=[output], response_id=response_id)
            if not isinstance(payload, dict) or "instances" not in payload:
                raise InvalidInput('a V1 request is {"instances": [[...], ...]}')
            return {"predictions": self._predict(self._rows(payload["instances"])).tolist()}

    return Predictor()


def serve_local(model: object, name: str, port: int, host: str = "127.0.0.1") -> None:
    """Serve `model` until interrupted, with KServe's ModelServer REST endpoints, on `host` only."""
    served = predictor(model, name)
    with _kserve_argv():
        from kserve import ModelServer
        from kserve.constants.constants import FASTAPI_APP_IMPORT_STRING
        from kserve.protocol.rest.server import RESTServer

    server = ModelServer(http_port=port, enable_grpc=False, workers=1)
    server.register_model(served)
    rest = RESTServer(
        FASTAPI_APP_IMPORT_STRING, server.dataplane, server.model_repository_extension, port, workers=1
    )
    rest.config.host = host  # KServe binds every interface; a local run's model stays on loopback
    rest.run()


# ---------------------------------------------------------------- the deploy step of a compiled pipeline

# What the deploy step's pod runs: point the InferenceService at the model artifact's URI, then
# create it or replace the existing one (a new revision; KServe shifts `canaryTrafficPercent` of
# the traffic to it). KFP's default artifact store is MinIO, which KServe reads as S3.
DEPLOY_SCRIPT = """\
import json, subprocess, sys
subprocess.run([sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
                "kubernetes>=27"], check=True)
from kubernetes import client, config
manifest, uri = json.loads(sys.argv[1]), sys.argv[2]
if uri.startswith("minio://"):
    uri = "s3://" + uri[len("minio://"):]
predictor = manifest["spec"]["predictor"]
if "model" in predictor:
    predictor["model"]["storageUri"] = uri
else:
    for env in predictor["containers"][0]["env"]:
        if env["name"] == "STORAGE_URI":
            env["value"] = uri
config.load_incluster_config()
meta = manifest["metadata"]
if not meta.get("namespace"):
    with open("/var/run/secrets/kubernetes.io/serviceaccount/namespace") as f:
        meta["namespace"] = f.read().strip()
api = client.CustomObjectsApi()
where = ("serving.kserve.io", "v1beta1", meta["namespace"], "inferenceservices")
try:
    current = api.get_namespaced_custom_object(*where, meta["name"])
except client.ApiException as e:
    if e.status != 404:
        raise
    api.create_namespaced_custom_object(*where, manifest)
    print("created InferenceService", meta["namespace"] + "/" + meta["name"], "serving", uri)
else:
    meta["resourceVersion"] = current["metadata"]["resourceVersion"]
    api.replace_namespaced_custom_object(*where, meta["name"], manifest)
    print("updated InferenceService", meta["namespace"] + "/" + meta["name"], "serving", uri)
"""
DEPLOY_PLACEHOLDER_URI = "placeholder://the-model-artifact"
