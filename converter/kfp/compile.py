"""Compile a pipeline model to KFP IR YAML with the real KFP compiler, via the generated DSL.

The DSL text from `converter.kfp.dsl` is executed as a module and handed to
`kfp.compiler.Compiler`, so `NAME.py` and `NAME.yaml` cannot drift apart. Everything happens in
memory; files are written only when every output is ready, each atomically.
"""

from __future__ import annotations

import contextlib
import linecache
import os
import shutil
import sys
import tempfile
import types
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from converter.errors import CellpipeError
from converter.kfp import dsl as kfp_dsl
from converter.kfp.yaml_emitter import FastDumper
from converter.model import Pipeline
from converter.outputs import file_mode

# A KFP backend turns the whole IR into one Argo Workflow object, which must fit these limits.
ANNOTATION_LIMIT = 256 * 1024  # KFP <= 2.2 keeps component logic in annotations (kubeflow/pipelines#10968)
ETCD_LIMIT = 1536 * 1024  # etcd's default request size, which newer backends still hit (#13738)


@dataclass(frozen=True)
class Compiled:
    name: str
    dsl: str  # NAME.py
    ir_yaml: str  # NAME.yaml

    def files(self) -> dict[str, str]:
        return {f"{self.name}.py": self.dsl, f"{self.name}.yaml": self.ir_yaml}

    @property
    def ir_bytes(self) -> int:
        """The IR the backend reads, without the comment KFP writes atop it: a floor for the Workflow."""
        body = self.ir_yaml
        while body.startswith("#"):
            body = body[body.find("\n") + 1 :] if "\n" in body else ""
        return len(body.encode("utf-8"))

    def size_report(self, steps: int) -> tuple[str, list[str]]:
        """A line on the pipeline's projected size, and a warning when it exceeds a cluster's limit."""
        size = self.ir_bytes
        line = (
            f"{self.name}.yaml: {size / 1024:.0f} KiB of IR for {steps} step(s) (the step runtime in it once)"
        )
        warnings = []
        if size > ETCD_LIMIT:
            warnings.append(
                f"{size / 1024:.0f} KiB of IR: the Argo Workflow KFP makes of it exceeds "
                "etcd's default 1.5 MiB request limit and will not start (kubeflow/pipelines#13738). "
                "Fix: fewer steps (give several cells one step: tag), or raise etcd's --max-request-bytes"
            )
        elif size > ANNOTATION_LIMIT:
            warnings.append(
                f"{size / 1024:.0f} KiB of IR: KFP backends up to 2.2 keep it in Argo "
                "Workflow annotations, capped at 256 KiB: the run will not start there "
                "(kubeflow/pipelines#10968). Fix: a KFP 2.3+ backend (#10979), or fewer steps (give several "
                "cells one step: tag)"
            )
        return line, warnings


def compile_pipeline(pipeline: Pipeline) -> Compiled:
    if not pipeline.steps:
        raise CellpipeError(
            f"{pipeline.notebook}: nothing to compile: a KFP pipeline needs at least one step "
            "(no code cells outside imports, functions, parameters, metrics and skipped cells)"
        )
    source = kfp_dsl.render(pipeline)
    return Compiled(pipeline.name, source, compile_dsl(source, f"{pipeline.name}.py"))


def compile_dsl(source: str, filename: str) -> str:
    """Run DSL source as a module and compile its `pipeline` with the KFP compiler."""
    from kfp import compiler  # imported here: only compiling pays for kfp

    module = types.ModuleType(f"cellpipe_dsl_{Path(filename).stem.replace('-', '_')}")
    module.__file__ = filename
    # Tracebacks from the generated code show its lines.
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    try:
        code = compile(source, filename, "exec", dont_inherit=True)  # not our __future__ annotations
        with tempfile.TemporaryDirectory(prefix="cellpipe-compile-") as tmp:
            target = Path(tmp) / "pipeline.yaml"
            try:  # KFP checks the pipeline both while the DSL defines it and while compiling it
                with _fast_task_setters():
                    exec(code, module.__dict__)
                with _fast_yaml(), _stable_comments():
                    compiler.Compiler().compile(module.pipeline, str(target))
            except (ValueError, TypeError) as exc:
                raise CellpipeError(f"{filename}: the KFP compiler rejected the pipeline: {exc}") from None
            return target.read_text(encoding="utf-8")
    finally:
        linecache.cache.pop(filename, None)


@contextlib.contextmanager
def _fast_task_setters() -> Iterator[None]:
    """Skip the `inspect.stack()` KFP's task setters run only to name themselves in an error.

    `PipelineTask._ensure_container_spec_exists` builds the whole stack with source context on
    every `set_cpu_request`, `set_memory_limit`, ... call: ~40 ms each, the bulk of compiling a
    large pipeline. The replacement makes the same check and raises the same error.
    """
    from kfp.dsl import pipeline_task

    original = pipeline_task.PipelineTask.__dict__.get("_ensure_container_spec_exists")

    def ensure_container_spec_exists(self: Any) -> None:
        if self.container_spec is None:
            caller = sys._getframe(1).f_code.co_name
            raise ValueError(
                f"{caller} can only be used on single-step components, not pipelines used as components, "
                "or special components like importers."
            )

    if original is None:
        yield
        return
    pipeline_task.PipelineTask._ensure_container_spec_exists = ensure_container_spec_exists
    try:
        yield
    finally:
        pipeline_task.PipelineTask._ensure_container_spec_exists = original


@contextlib.contextmanager
def _fast_yaml() -> Iterator[None]:
    """Let KFP's own YAML writer use `FastDumper` (the same bytes, several times faster) while we compile.

    KFP writes with `yaml.dump_all(..., sort_keys=True)` and the pure-Python emitter; for large
    pipelines that dominates compile time. libyaml's emitter would be faster still, but it folds
    long strings differently, and `python NAME.py` (stock KFP) must give the bytes of NAME.yaml.
    """
    from kfp.compiler import pipeline_spec_builder

    if getattr(pipeline_spec_builder, "yaml", None) is not yaml:
        yield
        return

    def dump_all(documents: Any, stream: Any = None, **kwargs: Any) -> Any:
        return yaml.dump_all(documents, stream, Dumper=FastDumper, **kwargs)

    pipeline_spec_builder.yaml = types.SimpleNamespace(dump_all=dump_all)
    try:
        yield
    finally:
        pipeline_spec_builder.yaml = yaml


@contextlib.contextmanager
def _stable_comments() -> Iterator[None]:
    """Sort dict defaults in the header comment KFP writes above the IR.

    KFP prints a dict parameter's default with `str()` of a protobuf Struct converted back to a
    dict, whose key order changes from process to process; sorted, compiling is repeatable. (The
    YAML body is sorted by KFP itself.)
    """
    from kfp.compiler import pipeline_spec_builder

    original = pipeline_spec_builder.extract_comments_from_pipeline_spec

    def extract_comments(pipeline_spec: dict[str, Any], pipeline_description: str) -> str:
        return str(original(_sorted_keys(pipeline_spec), pipeline_description))

    pipeline_spec_builder.extract_comments_from_pipeline_spec = extract_comments
    try:
        yield
    finally:
        pipeline_spec_builder.extract_comments_from_pipeline_spec = original


def _sorted_keys(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _sorted_keys(value[key]) for key in sorted(value)}
    if isinstance(value, list):
        return [_sorted_keys(item) for item in value]
    return value


def write_atomically(directory: Path, files: Mapping[str, str | bytes]) -> list[Path]:
    """Write all files or none.

    Each file is staged under a temporary name next to its target, then all are renamed into
    place; if a rename fails midway, the files already replaced get their old content back. A
    target that cannot be written (a folder in the way, no permission) is a user error.
    """
    staged: list[tuple[Path, Path]] = []
    mode = file_mode()
    try:
        directory.mkdir(parents=True, exist_ok=True)
        for name, text in sorted(files.items()):
            final = directory / name
            final.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp_name = tempfile.mkstemp(prefix=f".{final.name}.", dir=final.parent)
            staged.append((Path(tmp_name), final))
            os.fchmod(fd, mode)
            with os.fdopen(fd, "wb") as handle:
                handle.write(text if isinstance(text, bytes) else text.encode("utf-8"))
        _replace_all(staged)
    except OSError as exc:
        where = exc.filename2 if isinstance(exc, IsADirectoryError) and exc.filename2 else exc.filename
        raise CellpipeError(f"cannot write {where or directory}: {exc.strerror or exc}") from None
    finally:
        for staged_path, _ in staged:
            staged_path.unlink(missing_ok=True)
    return [final for _, final in staged]


def _replace_all(staged: list[tuple[Path, Path]]) -> None:
    """Rename staged files onto their targets; on failure put back what was there before."""
    replaced: list[tuple[Path, Path | None]] = []  # target, its previous content (None: it was new)
    try:
        for staged_path, final in staged:
            previous = None
            if final.is_file():
                previous = final.with_name(f"{staged_path.name}.previous")
                try:
                    os.link(final, previous)
                except OSError:  # no hard links on this file system
                    shutil.copy2(final, previous)
            replaced.append((final, previous))
            os.replace(staged_path, final)
    except BaseException:
        for final, previous in reversed(replaced):
            if previous is not None:
                os.replace(previous, final)
            elif final.is_file():
                final.unlink()
        raise
    finally:
        for _, previous in replaced:
            if previous is not None:
                previous.unlink(missing_ok=True)


def stale_files(directory: Path, files: dict[str, str]) -> list[str]:
    """Names of files that are missing or differ from what a compile would write (for --check)."""
    stale = []
    for name, text in sorted(files.items()):
        path = directory / name
        if not path.is_file() or path.read_text(encoding="utf-8") != text:
            stale.append(name)
    return stale


def without_cache(ir_yaml: str) -> str:
    """The IR with caching turned off for every task (``--no-cache``: a run cannot override a version's)."""
    documents = list(yaml.safe_load_all(ir_yaml))
    for task in documents[0].get("root", {}).get("dag", {}).get("tasks", {}).values():
        task["cachingOptions"] = {"enableCache": False}
    return yaml.safe_dump_all(documents, sort_keys=True)
