"""The JupyterLab extension's own checks (tsc, ESLint, vitest) and its packaging, inside the one test command.

The npm dependencies come from `pip install -e .` (the hatch-jupyter-builder hook runs `npm install` and the
build), so node_modules/ and the built extension exist whenever the Python package is installed from source.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BUILT = ROOT / "jupyter_ext" / "labextension"
NAME = "cellpipe-labextension"

pytestmark = pytest.mark.skipif(shutil.which("npx") is None, reason="Node.js is not installed")


def _npx(*command: str) -> subprocess.CompletedProcess[str]:
    if not (ROOT / "node_modules").is_dir():
        pytest.fail("node_modules/ is missing: run `pip install -e .` (or `npm ci`) first")
    return subprocess.run(
        ["npx", "--no-install", *command], cwd=ROOT, capture_output=True, text=True, timeout=300
    )


def test_typescript_compiles_without_errors() -> None:
    result = _npx("tsc", "-p", "tsconfig.json", "--noEmit")
    assert result.returncode == 0, result.stdout + result.stderr


def test_eslint_finds_nothing() -> None:
    result = _npx("eslint", "--max-warnings", "0", "labextension")
    assert result.returncode == 0, result.stdout + result.stderr


def test_frontend_unit_tests_pass() -> None:
    result = _npx("vitest", "run", "--reporter", "dot")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "passed" in result.stdout


def test_built_extension_is_a_prebuilt_lab_extension() -> None:
    """What the wheel ships: the federated bundle, its style and the settings schema of the main plugin."""
    meta = json.loads((BUILT / "package.json").read_text())
    assert meta["name"] == NAME
    assert meta["jupyterlab"]["_build"]["load"].startswith("static/remoteEntry.")
    assert (BUILT / meta["jupyterlab"]["_build"]["load"]).is_file()
    assert (BUILT / "static" / "style.js").is_file()
    schema = json.loads((BUILT / "schemas" / NAME / "plugin.json").read_text())
    assert set(schema["properties"]) == {"kfpEndpoint", "defaultImage"}


def test_jupyter_lists_the_extensions_enabled() -> None:
    """The environment this suite runs in sees both halves: the lab extension and the server extension."""
    labext = subprocess.run(
        [sys.executable, "-m", "jupyter", "labextension", "list"], capture_output=True, text=True, timeout=120
    )
    listing = labext.stdout + labext.stderr
    line = next((line for line in listing.splitlines() if NAME in line), "")
    assert "enabled" in line and "OK" in line, listing
    server = subprocess.run(
        [sys.executable, "-m", "jupyter", "server", "extension", "list"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    listing = server.stdout + server.stderr
    line = next((line for line in listing.splitlines() if line.strip().startswith("jupyter_ext")), "")
    assert "enabled" in line, listing
