"""The README's test command passes on a machine without the optional system packages: tests that
need Graphviz's `dot` skip, saying which package unlocks them (CI installs it, so nothing skips
there). Checked by running those tests with a PATH from which `dot` is hidden."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HIDDEN = {"dot"}


def _path_without(tmp_path: Path, hidden: set[str]) -> str:
    """Every program on PATH except `hidden`, as symlinks in one folder."""
    folder = tmp_path / "bin"
    folder.mkdir()
    for directory in os.environ.get("PATH", "").split(os.pathsep):
        if not os.path.isdir(directory):
            continue
        for name in os.listdir(directory):
            link = folder / name
            if name not in hidden and not link.exists() and not link.is_symlink():
                link.symlink_to(os.path.join(directory, name))
    return str(folder)


def test_graphviz_tests_skip_without_dot(tmp_path: Path) -> None:
    env = dict(
        os.environ,
        PATH=_path_without(tmp_path, HIDDEN),
        PYTHONPATH=str(ROOT),
        CELLPIPE_HOME=str(tmp_path / "home"),
    )
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-rs",
            "-p",
            "no:cacheprovider",
            "-k",
            "graph or dot or svg or png",
            "tests/cli/test_cli.py",
            "tests/reports/test_graph.py",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-3000:]
    assert "skipped" in result.stdout and "apt-get install graphviz" in result.stdout
