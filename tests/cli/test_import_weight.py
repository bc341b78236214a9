"""What each command imports: the shape of its start-up cost, without timing anything.

`validate` and `graph` read a notebook; they must not pay for the KFP SDK (~0.35 s and ~140 modules
to import), its protobuf and Kubernetes clients, or nbformat's JSON-schema stack (jsonschema's
format checkers build ~40 lark grammars on import here). `compile` needs the KFP compiler, and no
more of the run side than that.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOK = ROOT / "sample_notebooks" / "sklearn_tabular.ipynb"

HEAVY = ("kfp", "kfp_server_api", "kubernetes", "google.protobuf", "nbformat", "jsonschema", "lark")
RUN_SIDE = ("converter.engines.local.engine", "converter.engines.kfp.engine", "jupyter_ext", "papermill")

PROBE = """
import json, sys
from converter.cli.main import main
code = main(sys.argv[1:])
print(json.dumps({"code": code, "modules": sorted(sys.modules)}), file=sys.stderr)
"""


def modules_after(*argv: str, cwd: Path) -> set[str]:
    result = subprocess.run(
        [sys.executable, "-c", PROBE, *argv], capture_output=True, text=True, cwd=cwd, timeout=120
    )
    report = json.loads(result.stderr.strip().splitlines()[-1])
    assert report["code"] == 0, result.stderr
    return set(report["modules"])


def loaded(modules: set[str], packages: tuple[str, ...]) -> list[str]:
    return sorted(m for m in modules if any(m == p or m.startswith(p + ".") for p in packages))


@pytest.mark.parametrize(
    "argv",
    [
        ("validate", str(NOTEBOOK)),
        ("validate", "--json", str(NOTEBOOK)),
        ("graph", str(NOTEBOOK)),
        ("graph", "--format", "json", str(NOTEBOOK)),
        ("graph", "--format", "dot", str(NOTEBOOK), "-o", "g.dot"),
    ],
    ids=lambda a: " ".join(a[:3]).replace(str(NOTEBOOK), "NB"),
)
def test_reading_commands_import_no_kfp_and_no_schema_stack(argv: tuple[str, ...], tmp_path: Path) -> None:
    modules = modules_after(*argv, cwd=tmp_path)
    assert loaded(modules, HEAVY) == []
    assert loaded(modules, RUN_SIDE) == []


def test_compile_imports_the_kfp_compiler_but_not_the_run_side(tmp_path: Path) -> None:
    modules = modules_after("compile", "-q", str(NOTEBOOK), "-o", str(tmp_path), cwd=tmp_path)
    assert "kfp.compiler" in modules
    assert loaded(modules, ("nbformat", "jsonschema", "lark", *RUN_SIDE)) == []
