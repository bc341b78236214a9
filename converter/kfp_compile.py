"""Compile a pipeline model to KFP IR YAML with the real KFP compiler, via the generated DSL.

The DSL text from `converter.kfp_dsl` is executed as a module and handed to
`kfp.compiler.Compiler`, so `NAME.py` and `NAME.yaml` cannot drift apart. Everything happens in
memory; files are written only when every output is ready, each atomically.
"""

from __future__ import annotations

import contextlib
import linecache
import os
import sys
import tempfile
import types
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from converter import kfp_dsl
from converter.errors import CellpipeError
from converter.model import Pipeline


@dataclass(frozen=True)
class Compiled:
    name: str
    dsl: str  # NAME.py
    ir_yaml: str  # NAME.yaml

    def files(self) -> dict[str, str]:
        return {f"{self.name}.py": self.dsl, f"{self.name}.yaml": self.ir_yaml}


def compile_pipeline(pipeline: Pipeline) -> Compiled:
    source = kfp_dsl.render(pipeline)
    return Compiled(pipeline.name, source, compile_dsl(source, f"{pipeline.name}.py"))


def compile_dsl(source: str, filename: str) -> str:
    """Run DSL source as a module and compile its `pipeline` with the KFP compiler."""
    from kfp import compiler  # imported here: only compiling pays for kfp

    module = types.ModuleType(f"cellpipe_dsl_{Path(filename).stem.replace('-', '_')}")
    module.__file__ = filename
    # KFP's task setters call inspect.stack(), which looks up every frame's module. A generated
    # module that sys.modules does not know costs a scan of all modules per frame per setter call
    # (~50 ms each); registered, it is one dictionary hit.
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    sys.modules[module.__name__] = module
    try:
        code = compile(source, filename, "exec", dont_inherit=True)  # not our __future__ annotations
        with _fast_task_setters():
            exec(code, module.__dict__)
        with tempfile.TemporaryDirectory(prefix="cellpipe-compile-") as tmp, _fast_yaml():
            target = Path(tmp) / "pipeline.yaml"
            try:
                compiler.Compiler().compile(module.pipeline, str(target))
            except (ValueError, TypeError) as exc:
                raise CellpipeError(f"{filename}: the KFP compiler rejected the pipeline: {exc}") from None
            return target.read_text(encoding="utf-8")
    finally:
        sys.modules.pop(module.__name__, None)
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
    """Let KFP's own YAML writer use libyaml's emitter (same bytes, ~10x faster) while we compile.

    KFP writes with `yaml.dump_all(..., sort_keys=True)` and the pure-Python emitter; for large
    pipelines that dominates compile time. A test checks the bytes equal the pure-Python output.
    """
    from kfp.compiler import pipeline_spec_builder

    if not hasattr(yaml, "CDumper") or getattr(pipeline_spec_builder, "yaml", None) is not yaml:
        yield
        return

    def dump_all(documents: Any, stream: Any = None, **kwargs: Any) -> Any:
        return yaml.dump_all(documents, stream, Dumper=yaml.CDumper, **kwargs)

    pipeline_spec_builder.yaml = types.SimpleNamespace(dump_all=dump_all)
    try:
        yield
    finally:
        pipeline_spec_builder.yaml = yaml


def write_atomically(directory: Path, files: dict[str, str]) -> list[Path]:
    """Write all files or none: each goes to a temporary name first, then is renamed into place."""
    directory.mkdir(parents=True, exist_ok=True)
    staged: list[tuple[Path, Path]] = []
    try:
        for name, text in sorted(files.items()):
            final = directory / name
            final.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp_name = tempfile.mkstemp(prefix=f".{final.name}.", dir=final.parent)
            staged.append((Path(tmp_name), final))
            os.fchmod(fd, 0o644)
            with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as handle:
                handle.write(text)
    except BaseException:
        for staged_path, _ in staged:
            staged_path.unlink(missing_ok=True)
        raise
    for staged_path, final in staged:
        os.replace(staged_path, final)
    return [final for _, final in staged]


def stale_files(directory: Path, files: dict[str, str]) -> list[str]:
    """Names of files that are missing or differ from what a compile would write (for --check)."""
    stale = []
    for name, text in sorted(files.items()):
        path = directory / name
        if not path.is_file() or path.read_text(encoding="utf-8") != text:
            stale.append(name)
    return stale
