"""`%cellpipe inputs RUN STEP` in a real kernel: a failed step's inputs come back and its code fails again.

A local run is started from the kernel itself (`run_notebook`); a KFP run goes through the KFP engine
against the loopback KFP API double, with its artifacts where the cluster's launcher writes them, in
a local S3 endpoint (moto's server, loopback only) that the kernel reads through boto3.
"""

from __future__ import annotations

import json
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import kfp
import nbformat
import pytest
from jupyter_client.blocking.client import BlockingKernelClient
from jupyter_client.manager import KernelManager, start_new_kernel
from moto.server import ThreadedMotoServer
from nbformat.v4 import new_code_cell, new_notebook

import converter.engines.kfp.engine as kfp_engine
from converter.engines.base import RunRequest
from converter.engines.kfp.engine import KfpEngine
from converter.engines.local.engine import LocalEngine
from converter.notebook.reader import read_notebook
from converter.step import stepcode
from converter.store.artifacts import ArtifactStore
from converter.store.runstore import RunStore
from tests.engines.kfp_api_double import KfpApiDouble

STEP_CODE = "total = sum(values) + n\nratio = total // (len(label) - 2)\nprint(ratio)"


def write_notebook(folder: Path) -> Path:
    """prep -> boom; boom divides by zero (len("ab") - 2) with values from prep and the parameter n."""
    cells = [
        (["imports"], "import json"),
        (["parameters"], "n = 4"),
        (["step:prep"], "values = list(range(n))\nlabel = json.loads('\"ab\"')"),
        (["step:boom"], STEP_CODE),
    ]
    path = folder / "nb.ipynb"
    nbformat.write(new_notebook(cells=[new_code_cell(s, metadata={"tags": t}) for t, s in cells]), path)
    return path


@pytest.fixture(autouse=True)
def cellpipe_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    home = tmp_path / "cellpipe-home"
    monkeypatch.setenv("CELLPIPE_HOME", str(home))  # the kernel inherits it
    return home


class Kernel:
    """A real IPython kernel; `run` executes code and returns (reply content, stdout, stderr)."""

    def __init__(self, cwd: Path):
        self.manager: KernelManager
        self.client: BlockingKernelClient
        self.manager, self.client = start_new_kernel(kernel_name="python3", cwd=str(cwd))

    def run(self, code: str) -> tuple[dict[str, Any], str, str, list[dict[str, Any]]]:
        streams: dict[str, list[str]] = {"stdout": [], "stderr": []}
        errors: list[dict[str, Any]] = []

        def hook(message: dict[str, Any]) -> None:
            kind, content = message["msg_type"], message["content"]
            if kind == "stream":
                streams[content["name"]].append(content["text"])
            elif kind == "error":
                errors.append(content)

        reply = self.client.execute_interactive(code, timeout=180, output_hook=hook)
        return reply["content"], "".join(streams["stdout"]), "".join(streams["stderr"]), errors

    def close(self) -> None:
        self.client.stop_channels()
        self.manager.shutdown_kernel(now=True)


@pytest.fixture
def kernel(tmp_path: Path) -> Iterator[Kernel]:
    """Asked for after the fixtures that set the environment it inherits (S3 endpoint, credentials)."""
    started = Kernel(tmp_path)
    try:
        yield started
    finally:
        started.close()


def recorded_error(home: Path, run_id: str, step: str) -> tuple[str, str]:
    """(ename, evalue) of the error the step's failing cell recorded when the run executed it."""
    outputs = json.loads((home / "runs" / run_id / step / "cell_outputs.json").read_text())
    (error,) = [o for c in outputs["cells"] for o in c["outputs"] if o["output_type"] == "error"]
    return error["ename"], error["evalue"]


def debug(kernel: Kernel, run: str, step: str) -> tuple[str, str]:
    """`%cellpipe inputs RUN STEP`: (what it printed, the code of the cell it inserts)."""
    reply, out, err, _ = kernel.run(f"%load_ext jupyter_ext\n%cellpipe inputs {run} {step}")
    assert reply["status"] == "ok", err
    (inserted,) = [p for p in reply["payload"] if p["source"] == "set_next_input"]
    assert inserted["replace"] is False  # a new cell, the magic's own cell stays
    return out, inserted["text"]


def test_a_failed_local_step_reproduces_in_the_kernel(
    tmp_path: Path, kernel: Kernel, cellpipe_home: Path
) -> None:
    write_notebook(tmp_path)
    reply, out, err, _ = kernel.run(
        "from jupyter_ext import run_notebook\n"
        "monitor = run_notebook('nb.ipynb', {'n': 5}, wait=True)\n"
        "print(monitor.run_id, monitor.state, monitor.step_states['boom'])"
    )
    assert reply["status"] == "ok", err
    run_id, state, boom = out.split()[-3:]
    assert (state, boom) == ("failed", "failed")
    reply, _, _, _ = kernel.run("del json")  # the imports cell must bring it back
    out, code = debug(kernel, run_id[:13], "boom")  # a unique prefix of the run id
    assert code.strip() == STEP_CODE
    assert f"step 'boom' of run {run_id} (local, failed: cell 3 raised ZeroDivisionError" in out
    assert "ran the imports cell 0" in out
    assert "values  list of 5  from step 'prep'" in out
    assert "n       5  (parameter)" in out
    reply, out, _, _ = kernel.run("print(values, label, n, json.dumps(1))")
    assert out.split("\n")[0] == "[0, 1, 2, 3, 4] ab 5 1"
    reply, _, _, errors = kernel.run(code)
    assert reply["status"] == "error"
    assert (reply["ename"], reply["evalue"]) == recorded_error(cellpipe_home, run_id, "boom")
    assert errors and errors[0]["ename"] == "ZeroDivisionError"


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("", "UsageError: usage: %cellpipe inputs RUN STEP"),
        ("inputs", "got 0 argument(s) after 'inputs'"),
        ("inputs a b c", "got 3 argument(s) after 'inputs'"),
        ("outputs a b", "unknown %cellpipe command 'outputs'"),
        ("inputs 'unclosed b", "No closing quotation"),
        ("inputs nosuchrun boom", "no run"),
    ],
)
def test_bad_arguments_are_one_line_without_a_traceback(kernel: Kernel, line: str, message: str) -> None:
    if "nosuchrun" in line:  # a run store exists, without that run
        RunStore(Path(__import__("os").environ["CELLPIPE_HOME"]) / "runs.db").close()
    reply, out, err, errors = kernel.run(f"%load_ext jupyter_ext\n%cellpipe {line}")
    assert reply["status"] == "error"
    assert message in err
    assert len(err.strip().splitlines()) == 1, err
    assert err.startswith("UsageError: ")
    assert "Traceback" not in err + out and not errors
    assert not reply.get("payload")


def test_a_step_that_never_ran_and_a_missing_step_are_clear(
    tmp_path: Path, kernel: Kernel, cellpipe_home: Path
) -> None:
    notebook = write_notebook(tmp_path)
    source = notebook.read_text().replace("list(range(n))", "1 / 0")  # prep fails: boom is skipped
    notebook.write_text(source)
    result = LocalEngine().run(RunRequest(read_notebook(notebook), notebook), [])
    reply, _, err, _ = kernel.run(f"%load_ext jupyter_ext\n%cellpipe inputs {result.run_id} boom")
    assert reply["status"] == "error"
    assert "UsageError: step 'boom' of run" in err and "never ran, so it read nothing: it is skipped" in err
    reply, _, err, _ = kernel.run(f"%cellpipe inputs {result.run_id} train")
    assert f"run {result.run_id} has no step 'train' (its steps: prep, boom)" in err


# ---------------------------------------------------------------------- a KFP run, artifacts in S3


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def s3(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """moto's S3 server on loopback, reached through AWS_ENDPOINT_URL (the kernel inherits it)."""
    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "minio")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "minio123")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    try:
        client = boto3.client("s3")
        client.create_bucket(Bucket="mlpipeline")
        yield client
    finally:
        server.stop()


@pytest.fixture
def kfp_double(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[KfpApiDouble]:
    (tmp_path / "user").mkdir()
    monkeypatch.setenv("HOME", str(tmp_path / "user"))
    monkeypatch.setenv("KF_PIPELINES_SA_TOKEN_PATH", str(tmp_path / "no-sa-token"))
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "no-kube-config"))
    monkeypatch.delenv("KF_PIPELINES_NAMESPACE", raising=False)
    monkeypatch.delenv("KF_PIPELINES_COOKIE", raising=False)
    monkeypatch.delenv(kfp_engine.PIPELINE_ROOT_VARIABLE, raising=False)
    monkeypatch.setattr(kfp.Client, "_LOCAL_KFP_CONTEXT", str(tmp_path / "user" / "kfp-context.json"))
    monkeypatch.setattr(kfp_engine, "POLL_INITIAL_SECONDS", 0.01)
    monkeypatch.setattr(kfp_engine, "POLL_MAX_SECONDS", 0.05)
    with KfpApiDouble(token="tok") as server:
        monkeypatch.setenv("KF_PIPELINES_ENDPOINT", server.url)
        monkeypatch.setenv("KF_PIPELINES_TOKEN", "tok")
        yield server
        assert server.problems == []


def test_a_failed_kfp_step_reads_its_inputs_from_s3(
    tmp_path: Path, cellpipe_home: Path, s3: Any, kfp_double: KfpApiDouble, kernel: Kernel
) -> None:
    notebook = write_notebook(tmp_path)
    pipeline = read_notebook(notebook)
    kfp_double.fail_tasks = {"boom": "exit status 1: ZeroDivisionError"}
    result = KfpEngine(kube=None).run(RunRequest(pipeline, notebook, {"n": 6}), [])
    assert result.state == "failed"
    store = RunStore(cellpipe_home / "runs.db")
    run = store.get_run(result.run_id)
    (started,) = [e for e in store.events(result.run_id) if e.type == "run_started"]
    store.close()
    root = started.data["artifact_root"]
    assert root == f"minio://mlpipeline/v2/artifacts/nb/{run.remote_id}"  # KFP's default pipeline root
    # What the cluster wrote: prep's output folders, as its launcher uploads them (TASK/SALT/ARTIFACT/).
    # The values come from running prep with the same parameter on the local engine.
    local = LocalEngine(tmp_path / "local-home").run(RunRequest(pipeline, notebook, {"n": 6}), [])
    local_store = RunStore(tmp_path / "local-home" / "runs.db")
    prep = next(s for s in local_store.get_run(local.run_id).steps if s.name == "prep")
    local_store.close()
    artifacts = ArtifactStore(tmp_path / "local-home" / "artifacts")
    _, names = stepcode.artifact_names(pipeline.step("prep"))
    prefix = root.removeprefix("minio://mlpipeline/")
    salt = str(uuid.uuid4())
    for var, artifact in names.items():
        for file in artifacts.path(prep.outputs[var]).iterdir():
            s3.upload_file(str(file), "mlpipeline", f"{prefix}/prep/{salt}/{artifact}/{file.name}")

    out, code = debug(kernel, result.run_id, "boom")
    assert f"step 'boom' of run {result.run_id} (kfp, failed: exit status 1: ZeroDivisionError)" in out
    assert f"values  list of 6  from task 'prep': minio://mlpipeline/{prefix}/prep/{salt}/values" in out
    assert "n       6  (parameter)" in out
    reply, _, _, _ = kernel.run(code)
    assert reply["status"] == "error"
    assert (reply["ename"], reply["evalue"]) == ("ZeroDivisionError", "integer division or modulo by zero")


def test_kfp_inputs_missing_from_the_bucket_are_one_line(
    tmp_path: Path, s3: Any, kfp_double: KfpApiDouble, kernel: Kernel
) -> None:
    notebook = write_notebook(tmp_path)
    kfp_double.fail_tasks = {"boom": "exit status 1"}
    result = KfpEngine(kube=None).run(RunRequest(read_notebook(notebook), notebook), [])
    reply, _, err, _ = kernel.run(f"%load_ext jupyter_ext\n%cellpipe inputs {result.run_id} boom")
    assert reply["status"] == "error"
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert "input 'label' of step 'boom': no artifact 'label' of task 'prep' under minio://mlpipeline/" in err


def test_carried_imports_settings_and_random_state_come_back(
    tmp_path: Path, kernel: Kernel, cellpipe_home: Path
) -> None:
    """Step b uses numpy imported in step a, an environment variable a set, and the seeded generator."""
    cells = [
        (["imports"], "import os\nimport random"),
        (
            ["step:a"],
            "import numpy as np\nrandom.seed(7)\nos.environ['STAGE'] = 'seeded'\nfirst = random.random()",
        ),
        (
            ["step:b"],
            "draw = random.random()\nnoise = np.zeros(2)\n"
            "raise ValueError(f\"{os.environ['STAGE']} {draw} {noise.sum()}\")",
        ),
    ]
    nbformat.write(
        new_notebook(cells=[new_code_cell(s, metadata={"tags": t}) for t, s in cells]),
        tmp_path / "carry.ipynb",
    )
    notebook = tmp_path / "carry.ipynb"
    result = LocalEngine().run(RunRequest(read_notebook(notebook), notebook), [])
    assert result.state == "failed"
    reply, _, _, _ = kernel.run("import random\nrandom.seed(1)")  # another state: the step's must win
    out, code = debug(kernel, result.run_id, "b")
    assert "replayed the imports and settings of earlier steps (a)" in out
    assert "set the random generators' state the step started with" in out
    assert "cellpipe_random_state" not in out
    reply, _, _, _ = kernel.run(code)
    assert reply["status"] == "error"
    recorded = recorded_error(cellpipe_home, result.run_id, "b")
    assert (reply["ename"], reply["evalue"]) == recorded
    assert recorded[1].startswith("seeded 0.") and recorded[1].endswith(" 0.0")
