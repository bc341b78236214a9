"""Compile a pipeline model to KFP IR YAML with the real KFP compiler, via the generated DSL.

The DSL text from `converter.kfp_dsl` is executed as a module and handed to
`kfp.compiler.Compiler`, so `NAME.py` and `NAME.yaml` cannot drift apart. Everything happens in
memory; files are written only when every output is ready, each atomically.
"""

from __future__ import annotations

import linecache
import os
import tempfile
import types
from dataclasses import dataclass
from pathlib import Path

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
    # Let tracebacks and inspect find the generated source.
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    code = compile(source, filename, "exec")
    exec(code, module.__dict__)
    with tempfile.TemporaryDirectory(prefix="cellpipe-compile-") as tmp:
        target = Path(tmp) / "pipeline.yaml"
        try:
            compiler.Compiler().compile(module.pipeline, str(target))
        except (ValueError, TypeError) as exc:
            raise CellpipeError(f"{filename}: the KFP compiler rejected the pipeline: {exc}") from None
        return target.read_text(encoding="utf-8")


def write_atomically(directory: Path, files: dict[str, str]) -> list[Path]:
    """Write all files or none: each goes to a temporary name first, then is renamed into place."""
    directory.mkdir(parents=True, exist_ok=True)
    staged: list[tuple[Path, Path]] = []
    try:
        for name, text in sorted(files.items()):
            final = directory / name
            final.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", dir=final.parent)
            os.fchmod(fd, 0o644)
            with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as handle:
                handle.write(text)
            staged.append((Path(tmp), final))
    except BaseException:
        for tmp, _ in staged:
            tmp.unlink(missing_ok=True)
        raise
    for tmp, final in staged:
        os.replace(tmp, final)
    return [final for _, final in staged]


def stale_files(directory: Path, files: dict[str, str]) -> list[str]:
    """Names of files that are missing or differ from what a compile would write (for --check)."""
    stale = []
    for name, text in sorted(files.items()):
        path = directory / name
        if not path.is_file() or path.read_text(encoding="utf-8") != text:
            stale.append(name)
    return stale
