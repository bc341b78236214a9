"""Compiling to KFP: every contract setting lands where KFP expects it, and the outputs are trustworthy.

The IR is walked as KFP's backend reads it: document 1 is the pipeline spec (components, deployment
spec, the root DAG), document 2 the Kubernetes platform spec (what `kfp-kubernetes` sets). Steps are
found through their task's display name, component reference and executor label, never by
guessing names.
"""

from __future__ import annotations

import ast
import base64
import importlib.metadata
import os
import re
import subprocess
import sys
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import kfp.components
import nbformat
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from nbformat.v4 import new_code_cell, new_notebook

from converter.cli.main import main
from converter.errors import CellpipeError
from converter.kfp import compile as kfp_compile
from converter.kfp.compile import Compiled, compile_pipeline, write_atomically
from converter.kfp.yaml_emitter import FastDumper
from converter.model import Pipeline
from converter.notebook.reader import read_notebook
from converter.step import stepcode

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = ROOT / "sample_notebooks"
SAMPLE_PATHS = sorted(SAMPLES.glob("*.ipynb"))
BAD_TAGS = ROOT / "tests" / "notebooks" / "bad_tags.ipynb"

# A notebook that sets every contract setting the samples do not, with distinctive parameter values.
PURPOSE_CELLS: list[tuple[str, list[str]]] = [
    ("import json\nimport yaml", ["imports"]),
    (
        "n_rows = 987654321\nratio = 0.123456789\nverbose = True\nlabel_text = 'zebra-unicorn'\n"
        "sizes = [31337, 42]\nconfig = {'depth': 77777}",
        ["parameters"],
    ),
    (
        "rows = list(range(3))\nscore = 0.5",
        [
            "step:make",
            "gpu:2",
            "gpu-vendor:amd.com/gpu",
            "gpu-type:example.com/accelerator=mi300",
            "cpu:250m",
            "memory:256Mi",
            "retries:4",
            "timeout:90s",
            "cache:off",
            "env:STAGE=prod",
            "secret:db-creds:password:DB_PASSWORD",
            "node-selector:pool=batch",
            "toleration:dedicated:NoSchedule",
            "label:app:demo",
            "label:tier:batch",
            "annotation:note:hello",
            "volume:scratch:/scratch",
            "report:off",
        ],
    ),
    ("rows.append(n_rows)\nprint(json.dumps(sizes), ratio, verbose, label_text, config)", ["step:grow"]),
    ("total = sum(rows)\nprint(yaml.safe_dump({'t': total}))", ["step:total", "cache:on"]),
    ("score\ntotal", ["metrics"]),
]
PARAMETER_VALUES = ["987654321", "0.123456789", "zebra-unicorn", "31337", "77777"]


def write_notebook(
    path: Path, cells: list[tuple[str, list[str]]], metadata: dict[str, Any] | None = None
) -> Path:
    nb = new_notebook()
    for source, tags in cells:
        cell = new_code_cell(source)
        cell.metadata["tags"] = tags
        nb.cells.append(cell)
    nb.metadata.update(metadata or {})
    nbformat.write(nb, path)
    return path


class IR:
    """The two YAML documents of a compiled pipeline, with lookups by step name."""

    def __init__(self, text: str):
        self.text = text
        documents = list(yaml.safe_load_all(text))
        self.spec = documents[0]
        self.platform = documents[1] if len(documents) > 1 else {}  # only with Kubernetes settings
        self.tasks = self.spec["root"]["dag"]["tasks"]

    def task_name(self, step: str) -> str:
        (name,) = [k for k, t in self.tasks.items() if t["taskInfo"]["name"] == step]
        return name

    def task(self, step: str) -> dict[str, Any]:
        return dict(self.tasks[self.task_name(step)])

    def component(self, step: str) -> dict[str, Any]:
        return dict(self.spec["components"][self.task(step)["componentRef"]["name"]])

    def executor_label(self, step: str) -> str:
        return str(self.component(step)["executorLabel"])

    def container(self, step: str) -> dict[str, Any]:
        return dict(self.spec["deploymentSpec"]["executors"][self.executor_label(step)]["container"])

    def kubernetes(self, step: str) -> dict[str, Any]:
        kubernetes = self.platform.get("platforms", {}).get("kubernetes", {})
        return dict(
            kubernetes.get("deploymentSpec", {}).get("executors", {}).get(self.executor_label(step), {})
        )

    def runtime(self) -> str:
        """The packed step runtime: the default of the pipeline input every step reads it from."""
        parameters = self.spec["root"]["inputDefinitions"]["parameters"]
        return str(parameters[stepcode.RUNTIME_PARAMETER]["defaultValue"])

    def output_types(self, step: str) -> dict[str, str]:
        artifacts = self.component(step).get("outputDefinitions", {}).get("artifacts", {})
        return {name: a["artifactType"]["schemaTitle"] for name, a in artifacts.items()}


def compiled_spec(program: str) -> dict[str, Any]:
    """The SPEC dict a step program carries (its tail is plain Python literals)."""
    tail = program[program.index("\nSPEC = ") + len("\nSPEC = ") : program.index("\nraise SystemExit")]
    spec = ast.literal_eval(tail)
    assert isinstance(spec, dict)
    return spec


@pytest.fixture(scope="module")
def samples() -> dict[str, tuple[Pipeline, Compiled]]:
    return {p.stem: (pipeline := read_notebook(p), compile_pipeline(pipeline)) for p in SAMPLE_PATHS}


@pytest.fixture(scope="module")
def purpose(tmp_path_factory: pytest.TempPathFactory) -> tuple[Pipeline, IR]:
    folder = tmp_path_factory.mktemp("purpose")
    path = write_notebook(
        folder / "purpose.ipynb",
        PURPOSE_CELLS,
        {"cellpipe": {"volumes": [{"pvc": "shared", "mount_path": "/mnt/shared"}]}},
    )
    pipeline = read_notebook(path)
    return pipeline, IR(compile_pipeline(pipeline).ir_yaml)


# ------------------------------------------------------------------------------ every sample


@pytest.mark.parametrize("path", SAMPLE_PATHS, ids=[p.stem for p in SAMPLE_PATHS])
def test_every_sample_compiles_and_kfp_loads_the_yaml(
    samples: dict[str, tuple[Pipeline, Compiled]], path: Path, tmp_path: Path
) -> None:
    pipeline, compiled = samples[path.stem]
    written = write_atomically(tmp_path, compiled.files())
    assert sorted(p.name for p in written) == [f"{pipeline.name}.py", f"{pipeline.name}.yaml"]
    component = kfp.components.load_component_from_file(str(tmp_path / f"{pipeline.name}.yaml"))
    assert component.name == pipeline.name
    inputs = {p.name for p in pipeline.parameters} | {stepcode.RUNTIME_PARAMETER}
    assert set(component.component_spec.inputs or {}) == inputs
    ir = IR(compiled.ir_yaml)
    assert sorted(t["taskInfo"]["name"] for t in ir.tasks.values()) == sorted(s.name for s in pipeline.steps)


@pytest.mark.parametrize("path", SAMPLE_PATHS, ids=[p.stem for p in SAMPLE_PATHS])
def test_data_edges_are_artifacts_wired_to_the_producers_output(
    samples: dict[str, tuple[Pipeline, Compiled]], path: Path
) -> None:
    pipeline, compiled = samples[path.stem]
    ir = IR(compiled.ir_yaml)
    for step in pipeline.steps:
        task = ir.task(step.name)
        artifacts = task.get("inputs", {}).get("artifacts", {})
        assert len(artifacts) == len(step.inputs)
        producers = {pipeline.producer(step.name, var) for var in step.inputs}
        upstream = {ir.task_name(s) for s in pipeline.upstream(step.name)}
        assert set(task.get("dependentTasks", [])) == upstream
        for wire in artifacts.values():
            source = wire["taskOutputArtifact"]
            assert source["producerTask"] in {ir.task_name(p) for p in producers}
            producer_step = ir.tasks[source["producerTask"]]["taskInfo"]["name"]
            assert ir.output_types(producer_step)[source["outputArtifactKey"]] == "system.Artifact"


def test_pandas_etl_branches_after_edge_env_label_and_cache(
    samples: dict[str, tuple[Pipeline, Compiled]],
) -> None:
    _, compiled = samples["pandas_etl"]
    ir = IR(compiled.ir_yaml)
    for branch in ("clean_customers", "aggregate_sales", "daily_trends"):
        assert ir.task(branch)["dependentTasks"] == ["extract"]  # parallel: only the extract step
    publish = ir.task("publish")
    assert "join-report" in publish["dependentTasks"]  # after:join_report, no data from it
    assert "join-report" not in {
        w["taskOutputArtifact"]["producerTask"] for w in publish["inputs"]["artifacts"].values()
    }
    assert publish["cachingOptions"] == {}  # cache:off (protobuf leaves out false)
    assert ir.task("extract")["cachingOptions"] == {"enableCache": True}
    assert ir.container("publish")["env"] == [{"name": "REPORT_TZ", "value": "UTC"}]
    assert ir.kubernetes("extract")["podMetadata"] == {"labels": {"team": "analytics"}}
    regions = ir.spec["root"]["inputDefinitions"]["parameters"]["regions"]
    assert regions == {
        "defaultValue": ["north", "south", "east", "west"],
        "isOptional": True,
        "parameterType": "LIST",
    }


def test_gpu_training_resources_and_placement(samples: dict[str, tuple[Pipeline, Compiled]]) -> None:
    _, compiled = samples["gpu_training"]
    ir = IR(compiled.ir_yaml)
    train = ir.container("train")
    assert train["image"] == "pytorch/pytorch:2.3.1-cuda12.1-cudnn8-runtime"
    resources = train["resources"]
    assert {k: resources[k] for k in resources if k.startswith("resource")} == {
        "resourceCpuRequest": "4",
        "resourceCpuLimit": "8",
        "resourceMemoryRequest": "16Gi",
        "resourceMemoryLimit": "32Gi",
    }
    assert resources["accelerator"]["resourceType"] == "nvidia.com/gpu"
    assert resources["accelerator"]["resourceCount"] == "1"
    k8s = ir.kubernetes("train")
    assert k8s["nodeSelector"]["labels"] == {
        "cloud.google.com/gke-accelerator": "nvidia-tesla-a100",  # gpu-type, GKE's label by default
        "cloud.google.com/gke-nodepool": "gpu-pool",
    }
    assert k8s["tolerations"] == [
        {"effect": "NoSchedule", "key": "nvidia.com/gpu", "operator": "Equal", "value": "present"}
    ]
    assert k8s["secretAsEnv"][0]["secretName"] == "wandb"
    assert k8s["secretAsEnv"][0]["keyToEnv"] == [{"envVar": "WANDB_API_KEY", "secretKey": "api-key"}]
    assert [(m["constant"], m["mountPath"]) for m in k8s["pvcMount"]] == [("training-cache", "/mnt/cache")]
    assert k8s["podMetadata"] == {"annotations": {"owner": "ml-team"}}
    assert k8s["activeDeadlineSeconds"] == "7200"  # timeout:2h
    # Notebook defaults (retries: 1) reach every step, with the contract's backoff.
    for step in ("prepare_data", "train", "evaluate", "export"):
        assert ir.task(step)["retryPolicy"] == {
            "maxRetryCount": 1,
            "backoffDuration": "30s",
            "backoffFactor": 2.0,
            "backoffMaxDuration": "3600s",
        }
    # export is set by the structured metadata.cellpipe form only.
    assert ir.container("export")["resources"]["resourceMemoryRequest"] == "1Gi"
    assert "train" in {ir.tasks[t]["taskInfo"]["name"] for t in ir.task("export")["dependentTasks"]}
    assert ir.kubernetes("prepare_data") == {}
    assert "resources" not in ir.container("prepare_data")
    assert ir.spec["pipelineInfo"]["name"] == "digits-gpu-training"


def test_kale_notebook_caching_default(tmp_path: Path) -> None:
    path = write_notebook(
        tmp_path / "kale.ipynb",
        [("x = 1", ["block:a"]), ("y = x", ["block:b", "cache:enabled"])],
        {"kubeflow_notebook": {"pipeline_name": "kale", "enable_caching": False}},
    )
    ir = IR(compile_pipeline(read_notebook(path)).ir_yaml)
    assert ir.task("a")["cachingOptions"] == {}
    assert ir.task("b")["cachingOptions"] == {"enableCache": True}


# ---------------------------------------------------------------------- a purpose-built notebook


def test_every_resource_and_kubernetes_setting_lands(purpose: tuple[Pipeline, IR]) -> None:
    _, ir = purpose
    make = ir.container("make")
    assert make["resources"]["resourceCpuRequest"] == "250m"
    assert make["resources"]["resourceMemoryRequest"] == "256Mi"
    assert make["resources"]["accelerator"]["resourceType"] == "amd.com/gpu"  # gpu-vendor
    assert make["resources"]["accelerator"]["resourceCount"] == "2"
    assert make["env"] == [{"name": "STAGE", "value": "prod"}]
    task = ir.task("make")
    assert task["retryPolicy"]["maxRetryCount"] == 4
    assert task["cachingOptions"] == {}
    assert ir.task("total")["cachingOptions"] == {"enableCache": True}
    k8s = ir.kubernetes("make")
    assert k8s["activeDeadlineSeconds"] == "90"
    # gpu-type:KEY=VALUE names a custom node label instead of GKE's.
    assert k8s["nodeSelector"]["labels"] == {"example.com/accelerator": "mi300", "pool": "batch"}
    assert k8s["tolerations"] == [{"effect": "NoSchedule", "key": "dedicated", "operator": "Exists"}]
    assert k8s["podMetadata"] == {
        "annotations": {"note": "hello"},
        "labels": {"app": "demo", "tier": "batch"},
    }
    # The notebook's shared volume is mounted in every step; `volume:` adds one to a step.
    assert [(m["constant"], m["mountPath"]) for m in k8s["pvcMount"]] == [
        ("shared", "/mnt/shared"),
        ("scratch", "/scratch"),
    ]
    for step in ("grow", "total"):
        assert [m["constant"] for m in ir.kubernetes(step)["pvcMount"]] == ["shared"]
        assert "retryPolicy" not in ir.task(step)


def test_a_secret_is_only_ever_a_reference(purpose: tuple[Pipeline, IR]) -> None:
    _, ir = purpose
    assert ir.kubernetes("make")["secretAsEnv"] == [
        {
            "keyToEnv": [{"envVar": "DB_PASSWORD", "secretKey": "password"}],
            "optional": False,
            "secretName": "db-creds",
            "secretNameParameter": {"runtimeValue": {"constant": "db-creds"}},
        }
    ]
    assert ir.text.count("DB_PASSWORD") == 1  # no env entry, no value, no mention in the code
    for executor in ir.spec["deploymentSpec"]["executors"].values():
        assert all(e["name"] != "DB_PASSWORD" for e in executor["container"].get("env", []))


def test_parameters_are_typed_pipeline_inputs_never_pasted_into_code(purpose: tuple[Pipeline, IR]) -> None:
    _, ir = purpose
    parameters = dict(ir.spec["root"]["inputDefinitions"]["parameters"])
    assert parameters.pop(stepcode.RUNTIME_PARAMETER)["parameterType"] == "STRING"
    assert {name: (p["parameterType"], p["defaultValue"]) for name, p in parameters.items()} == {
        "n_rows": ("NUMBER_INTEGER", 987654321),
        "ratio": ("NUMBER_DOUBLE", 0.123456789),
        "verbose": ("BOOLEAN", True),
        "label_text": ("STRING", "zebra-unicorn"),
        "sizes": ("LIST", [31337, 42]),
        "config": ("STRUCT", {"depth": 77777}),
    }
    grow = ir.container("grow")
    for value in PARAMETER_VALUES:
        for executor in ir.spec["deploymentSpec"]["executors"].values():
            assert value not in executor["container"]["command"][2]
            assert all(value not in arg for arg in executor["container"]["args"])
    args = grow["args"]
    assert args[args.index("n_rows") + 1] == "{{$.inputs.parameters['n_rows']}}"
    assert ir.task("grow")["inputs"]["parameters"]["n_rows"] == {"componentInputParameter": "n_rows"}
    assert set(ir.task("make")["inputs"]["parameters"]) == {stepcode.RUNTIME_PARAMETER}  # no notebook one


def test_mutated_input_travels_on_under_its_own_artifact(purpose: tuple[Pipeline, IR]) -> None:
    _, ir = purpose
    assert ir.task("grow")["inputs"]["artifacts"]["rows"]["taskOutputArtifact"] == {
        "outputArtifactKey": "rows",
        "producerTask": "make",
    }
    assert ir.task("total")["inputs"]["artifacts"]["rows"]["taskOutputArtifact"] == {
        "outputArtifactKey": "rows_updated",
        "producerTask": "grow",
    }


def test_metrics_and_report_outputs(purpose: tuple[Pipeline, IR]) -> None:
    _, ir = purpose
    assert ir.output_types("make") == {"metrics": "system.Metrics", "rows": "system.Artifact"}  # report:off
    assert ir.output_types("grow") == {"report": "system.HTML", "rows_updated": "system.Artifact"}
    assert ir.output_types("total") == {"metrics": "system.Metrics", "report": "system.HTML"}
    assert "--report" not in ir.container("make")["args"]


def test_variables_named_like_reserved_artifacts_or_dsl_names(tmp_path: Path) -> None:
    path = write_notebook(
        tmp_path / "reserved.ipynb",
        [
            ("dsl = 1\nkubernetes = 'k'", ["parameters"]),
            ("report = 'r'\nmetrics = {'a': 1}\nacc = 0.5", ["step:pipeline", "label:a:b"]),
            ("print(report, metrics, dsl)\nreport = report + '!'", ["step:class", "timeout:1m"]),
            ("print(report, kubernetes)", ["step:last", "node-selector:k=v"]),
            ("acc", ["metrics"]),
        ],
    )
    pipeline = read_notebook(path)
    ir = IR(compile_pipeline(pipeline).ir_yaml)
    assert ir.output_types("pipeline") == {
        "metrics": "system.Metrics",
        "metrics_": "system.Artifact",
        "report": "system.HTML",
        "report_": "system.Artifact",
    }
    wires = ir.task("last")["inputs"]["artifacts"]
    assert wires["report_"]["taskOutputArtifact"] == {
        "outputArtifactKey": "report_updated",
        "producerTask": ir.task_name("class"),
    }
    assert ir.task_name("class") == "class-step"  # a Python keyword: the function gets a suffix
    args = ir.container("class")["args"]
    assert args[args.index("report") + 1] == "{{$.inputs.artifacts['report_'].path}}"


# ------------------------------------------------------------------------- run what you ship


def unpacked(program: str) -> str:
    blob = re.search(r"b85decode\('([^']*)'\)", program)
    assert blob is not None
    return zlib.decompress(base64.b85decode(blob.group(1))).decode("utf-8")


@pytest.mark.parametrize("path", SAMPLE_PATHS, ids=[p.stem for p in SAMPLE_PATHS])
def test_the_yaml_carries_exactly_the_program_the_local_engine_runs(
    samples: dict[str, tuple[Pipeline, Compiled]], path: Path
) -> None:
    pipeline, compiled = samples[path.stem]
    ir = IR(compiled.ir_yaml)
    assert unpacked(ir.runtime()) == stepcode.runtime_source()
    assert ir.runtime() == stepcode.packed_runtime()  # what the local engine passes
    for step in pipeline.steps:
        command = ir.container(step.name)["command"]
        assert command[:2] == ["python3", "-c"]
        assert command[2] == stepcode.program(pipeline, step)
        assert command[2].startswith(stepcode.LOADER)
        assert (
            ir.container(step.name)["args"][0]
            == f"{{{{$.inputs.parameters['{stepcode.RUNTIME_PARAMETER}']}}}}"
        )
        wire = ir.task(step.name)["inputs"]["parameters"][stepcode.RUNTIME_PARAMETER]
        assert wire == {"componentInputParameter": stepcode.RUNTIME_PARAMETER}


@pytest.fixture
def changed_runtime(monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    marker = "# a change to the generated step code"
    original = stepcode.runtime_source()
    monkeypatch.setattr(stepcode, "runtime_source", lambda: original + "\n" + marker + "\n")
    stepcode.packed_runtime.cache_clear()
    yield marker
    monkeypatch.undo()
    stepcode.packed_runtime.cache_clear()


def test_changing_the_step_code_changes_the_yaml_and_the_local_program_alike(changed_runtime: str) -> None:
    pipeline = read_notebook(SAMPLES / "sklearn_tabular.ipynb")
    compiled = compile_pipeline(pipeline)
    ir = IR(compiled.ir_yaml)
    assert changed_runtime in compiled.dsl  # the readable DSL shows it too
    assert changed_runtime in unpacked(ir.runtime())
    for step in pipeline.steps:
        assert ir.container(step.name)["command"][2] == stepcode.program(pipeline, step)


def one_line_steps(path: Path, count: int) -> Pipeline:
    cells = [("v0 = 0", ["step:s0"])]
    cells += [(f"v{i} = v{i - 1} + 1", [f"step:s{i}"]) for i in range(1, count)]
    return read_notebook(str(write_notebook(path, cells)))


def test_the_runtime_is_carried_once_per_pipeline_not_once_per_step(tmp_path: Path) -> None:
    """The shape of the IR's size: the runtime is a constant, each extra one-line step <= 3 KiB."""
    small, large = (compile_pipeline(one_line_steps(tmp_path / f"n{n}.ipynb", n)) for n in (5, 25))
    runtime = stepcode.packed_runtime()
    for compiled in (small, large):
        ir = IR(compiled.ir_yaml)
        assert ir.runtime() == runtime
        body = yaml.safe_dump(ir.spec) + yaml.safe_dump(ir.platform)
        assert body.count(runtime[-200:]) == 1  # the pipeline input's default, nowhere else
    assert (large.ir_bytes - small.ir_bytes) / 20 <= 3 * 1024  # per extra step
    assert large.ir_bytes < len(runtime) + 25 * 3 * 1024


def test_compile_prints_the_size_and_warns_past_each_cluster_limit(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    path = write_notebook(tmp_path / "nb.ipynb", [("x = 1", ["step:a"]), ("y = x", ["step:b"])])
    assert main(["compile", str(path), "-o", str(tmp_path / "out")]) == 0
    out, err = capsys.readouterr()
    assert out.splitlines() == [str(tmp_path / "out" / "nb.py"), str(tmp_path / "out" / "nb.yaml")]
    assert "nb.yaml: " in err and " KiB of IR for 2 step(s)" in err and "warning" not in err
    monkeypatch.setattr(kfp_compile, "ANNOTATION_LIMIT", 1024)
    assert main(["compile", str(path), "-o", str(tmp_path / "out"), "-q"]) == 0
    out, err = capsys.readouterr()
    assert out == ""
    assert "nb.yaml: warning: " in err and "256 KiB" in err and "kubeflow/pipelines#10968" in err
    assert "KFP 2.3+" in err and "fewer steps" in err
    monkeypatch.setattr(kfp_compile, "ETCD_LIMIT", 2048)
    assert main(["compile", str(path), "-o", str(tmp_path / "out")]) == 0
    err = capsys.readouterr().err
    assert "1.5 MiB" in err and "#13738" in err and "--max-request-bytes" in err and "#10968" not in err


EXPECTED_MODULES = {
    "sklearn_tabular": {"sklearn"},
    "pandas_etl": {"numpy", "pandas"},
    "gpu_training": {"joblib", "numpy", "sklearn"},
    "kale_style": {"pandas", "sklearn"},
    "plain_untagged": {"numpy", "pandas", "sklearn"},
    "magics_and_shell": {"IPython", "sklearn"},  # magics need an IPython shell
}


@pytest.mark.parametrize("path", SAMPLE_PATHS, ids=[p.stem for p in SAMPLE_PATHS])
def test_a_step_installs_only_what_the_notebook_imports(
    samples: dict[str, tuple[Pipeline, Compiled]], path: Path
) -> None:
    pipeline, compiled = samples[path.stem]
    ir = IR(compiled.ir_yaml)
    for step in pipeline.steps:
        requirements = compiled_spec(ir.container(step.name)["command"][2])["requirements"]
        assert set(requirements) == EXPECTED_MODULES[path.stem], step.name
        for requirement in requirements.values():  # pinned to what is installed here
            name, _, version = requirement.partition("==")
            assert version == importlib.metadata.version(name)


def test_extra_packages_and_stdlib_imports(purpose: tuple[Pipeline, IR]) -> None:
    _, ir = purpose
    for step in ("make", "grow", "total"):
        # `import json` is the standard library: nothing to install; `yaml` is pyyaml.
        assert compiled_spec(ir.container(step)["command"][2])["requirements"] == {
            "yaml": f"pyyaml=={importlib.metadata.version('pyyaml')}"
        }


# ----------------------------------------------------------------------- repeatable, readable


def test_compiling_twice_in_one_process_gives_the_same_bytes() -> None:
    pipeline = read_notebook(SAMPLES / "gpu_training.ipynb")
    first, second = compile_pipeline(pipeline), compile_pipeline(pipeline)
    assert first.files() == second.files()


def test_separate_processes_write_the_same_bytes(tmp_path: Path) -> None:
    # gpu_training has a dict parameter: KFP's own header comment orders it differently per process.
    for folder in ("one", "two"):
        command = ["compile", str(SAMPLES / "gpu_training.ipynb"), "-o", str(tmp_path / folder), "-q"]
        subprocess.run([sys.executable, "-m", "converter.cli", *command], check=True)
    expected = compile_pipeline(read_notebook(SAMPLES / "gpu_training.ipynb")).files()
    for folder in ("one", "two"):
        assert {p.name: p.read_text() for p in (tmp_path / folder).iterdir()} == expected


def test_the_written_dsl_compiles_to_the_same_yaml(tmp_path: Path, purpose: tuple[Pipeline, IR]) -> None:
    path = write_notebook(tmp_path / "purpose.ipynb", PURPOSE_CELLS)
    out = tmp_path / "out"
    assert main(["compile", str(path), "-o", str(out), "-q"]) == 0
    shipped = (out / "purpose.yaml").read_bytes()
    (out / "purpose.yaml").unlink()
    subprocess.run([sys.executable, "purpose.py"], cwd=out, check=True, capture_output=True)
    assert (out / "purpose.yaml").read_bytes() == shipped


def test_fast_emitter_writes_pyyamls_bytes(samples: dict[str, tuple[Pipeline, Compiled]]) -> None:
    documents = [doc for _, compiled in samples.values() for doc in yaml.safe_load_all(compiled.ir_yaml)]
    awkward = ["", " lead", "trail ", "a\n b", "a \nb", "#x", "- x", "x: y", "é\u2028\ufeff\x85", "\t\r\0"]
    documents.append({"strings": [*awkward, "a" * 200 + " b" * 50 + "\n" + "\\" * 90]})
    for document in documents:
        assert yaml.dump_all([document], sort_keys=True, Dumper=FastDumper) == yaml.dump_all(
            [document], sort_keys=True
        )


YAML_TEXT = st.text(alphabet=st.sampled_from(list("ab :#-?,[]{}'\"\\\n\t\r\x00\x85é\u2028\ufeff😀!%@`|>&*.")))


@settings(max_examples=300, deadline=None)
@given(text=YAML_TEXT, unicode=st.booleans(), width=st.sampled_from([10, 80]))
def test_fast_emitter_matches_pyyaml_on_any_string(text: str, unicode: bool, width: int) -> None:
    document = {"key": [text, {text: text}]}
    options: dict[str, Any] = {"sort_keys": True, "allow_unicode": unicode, "width": width}
    assert yaml.dump_all([document], Dumper=FastDumper, **options) == yaml.dump_all([document], **options)


# ------------------------------------------------------------------------ files, --check, failures


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_check_is_0_when_up_to_date_1_when_stale_and_writes_nothing(tmp_path: Path) -> None:
    path = write_notebook(tmp_path / "nb.ipynb", [("x = 1", ["step:a"]), ("y = x", ["step:b"])])
    out = tmp_path / "out"
    assert main(["compile", str(path), "-o", str(out), "-q"]) == 0
    assert main(["compile", str(path), "-o", str(out), "--check"]) == 0
    before = snapshot(out)
    write_notebook(path, [("x = 1", ["step:a"]), ("y = x", ["step:b", "cpu:2"])])
    assert main(["compile", str(path), "-o", str(out), "--check"]) == 1
    assert snapshot(out) == before
    assert main(["compile", str(path), "-o", str(tmp_path / "never"), "--check"]) == 1  # missing = stale
    assert not (tmp_path / "never").exists()


def test_check_on_an_invalid_notebook_is_2(tmp_path: Path) -> None:
    assert main(["compile", str(BAD_TAGS), "-o", str(tmp_path), "--check"]) == 2
    assert list(tmp_path.iterdir()) == []


def test_an_invalid_notebook_leaves_the_output_folder_untouched(tmp_path: Path) -> None:
    (tmp_path / "bad-tags.yaml").write_text("old yaml\n")
    (tmp_path / "bad-tags.py").write_text("old dsl\n")
    before = snapshot(tmp_path)
    assert main(["compile", str(BAD_TAGS), "-o", str(tmp_path)]) == 2
    assert snapshot(tmp_path) == before


def test_a_failed_write_replaces_nothing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write_notebook(tmp_path / "nb.ipynb", [("x = 1", ["step:a"])])
    out = tmp_path / "out"
    out.mkdir()
    (out / "nb.py").write_text("old dsl\n")
    (out / "nb.yaml").mkdir()  # the second file cannot be renamed into place
    before = snapshot(out)
    assert main(["compile", str(path), "-o", str(out), "-q"]) == 2
    assert snapshot(out) == before
    assert sorted(p.name for p in out.iterdir()) == ["nb.py", "nb.yaml"]  # no temporary files left
    assert f"cannot write {out / 'nb.yaml'}" in capsys.readouterr().err


def test_a_failed_rename_midway_puts_back_the_files_already_replaced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "a.txt").write_text("old a\n")
    real_replace = os.replace

    def full_disk_on_b(source: Any, target: Any) -> None:
        if Path(target).name == "b.txt" and Path(source).name.startswith(".b.txt."):
            raise OSError(28, "No space left on device", str(target))
        real_replace(source, target)

    monkeypatch.setattr(kfp_compile.os, "replace", full_disk_on_b)
    with pytest.raises(CellpipeError, match="No space left on device"):
        write_atomically(tmp_path, {"a.txt": "new a\n", "b.txt": "new b\n", "c.txt": "new c\n"})
    assert snapshot(tmp_path) == {"a.txt": b"old a\n"}


def test_build_context_per_distinct_image_with_pinned_requirements(tmp_path: Path) -> None:
    assert (
        main(["compile", str(SAMPLES / "gpu_training.ipynb"), "-o", str(tmp_path), "--build-context", "-q"])
        == 0
    )
    build = tmp_path / "build"
    assert sorted(p.name for p in build.iterdir()) == [
        "python-3-11-slim",
        "pytorch-pytorch-2-3-1-cuda12-1-cudnn8-runtime",
    ]
    dockerfile = (build / "pytorch-pytorch-2-3-1-cuda12-1-cudnn8-runtime" / "Dockerfile").read_text()
    assert "FROM pytorch/pytorch:2.3.1-cuda12.1-cudnn8-runtime\n" in dockerfile
    assert "# Image for steps: train\n" in dockerfile
    assert "FROM python:3.11-slim\n" in (build / "python-3-11-slim" / "Dockerfile").read_text()
    for folder in build.iterdir():
        lines = (folder / "requirements.txt").read_text().splitlines()
        assert lines == sorted(lines)
        assert {line.partition("==")[0] for line in lines} == {"joblib", "numpy", "scikit-learn"}
        for line in lines:
            name, _, version = line.partition("==")
            assert version == importlib.metadata.version(name)
    # The build context is part of what --check compares.
    check = [
        "compile",
        str(SAMPLES / "gpu_training.ipynb"),
        "-o",
        str(tmp_path),
        "--build-context",
        "--check",
    ]
    assert main(check) == 0
    (build / "python-3-11-slim" / "requirements.txt").write_text("tampered\n")
    assert main(check) == 1
