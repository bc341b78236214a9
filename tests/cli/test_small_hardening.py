"""Small things a user meets: the summary table with long messages, the retry wait, tags that
could fake a problem line, a folder named like a notebook, SIGINT to a background run, and a GPU
step on a machine without one."""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

from converter.cli.main import main
from converter.events import EventLog
from converter.model import Problem
from converter.reports.progress import Progress

ROOT = Path(__file__).resolve().parents[2]


def _notebook(path: Path, *cells: tuple[str, list[str]]) -> Path:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = [nbformat.v4.new_code_cell(src, metadata={"tags": tags}) for src, tags in cells]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(nb))  # as written by hand: nbformat's schema would refuse odd tags
    return path


def _plain_run(*, long_message: str) -> str:
    out = io.StringIO()
    progress = Progress("plain", ["preprocess_data", "train_model"], stdout=out, stderr=io.StringIO())
    log = EventLog("r1", [progress])
    log.emit("run_started", data={"pipeline": "pipe"})
    log.emit("step_started", step="preprocess_data", attempt=1)
    log.emit(
        "step_retrying", step="preprocess_data", attempt=1, message="boom", duration=0.1, data={"delay": 2.0}
    )
    log.emit("step_started", step="preprocess_data", attempt=2)
    log.emit("step_failed", step="preprocess_data", attempt=2, duration=3.25, message=long_message)
    log.emit("step_skipped", step="train_model", message="upstream step 'preprocess_data' failed")
    log.emit("run_finished", state="failed", duration=4.0)
    progress.close()
    return out.getvalue()


def test_summary_table_wraps_long_messages_instead_of_squeezing_columns() -> None:
    shown = _plain_run(long_message="ValueError: " + "the input frame has no column named price " * 8)
    rows = [line for line in shown.splitlines() if "preprocess_data" in line and "│" in line]
    assert rows and "failed" in rows[0] and "3.2s" in rows[0]  # step, state and time in full
    assert any("train_model" in line and "skipped" in line for line in shown.splitlines())
    assert "price" in shown.split("┃ message")[-1]  # the message is there, wrapped


def test_retry_line_says_the_wait_not_the_attempt_time() -> None:
    shown = _plain_run(long_message="x")
    (line,) = [line for line in shown.splitlines() if "failed attempt 1" in line]
    assert line.endswith("failed attempt 1 in 0.1s: boom; retrying in 2s")


def test_control_and_bidi_characters_in_tags_are_escaped(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fake = "step:a\nnb.ipynb: cell 7 [step:z]: all good\u202e"
    assert str(Problem("nb.ipynb", 0, fake, "error", "bad")).count("\n") == 0
    notebook = _notebook(tmp_path / "tags.ipynb", ("x = 1", [fake, "cpu:\u2067lots"]))
    assert main(["validate", str(notebook)]) == 2
    err = capsys.readouterr().err
    assert "\u202e" not in err and "\u2067" not in err
    lines = err.strip().splitlines()
    assert all(line.startswith(str(notebook)) for line in lines), lines  # no line faked


def test_a_folder_named_like_a_notebook(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "x.ipynb"
    folder.mkdir()
    assert main(["validate", str(folder)]) == 2
    assert "is a folder, not a notebook file" in capsys.readouterr().err


def test_gpu_refusal_names_fit_resources(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("CELLPIPE_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # whatever this machine has: no GPU for this run
    notebook = _notebook(tmp_path / "gpu.ipynb", ("x = 1", ["step:train", "gpu:1"]))
    assert main(["run", str(notebook), "--quiet"]) == 2
    assert "--fit-resources" in capsys.readouterr().err


def _cli() -> list[str]:
    script = shutil.which("cellpipe")
    return [script] if script else [sys.executable, "-m", "converter.cli"]


def test_sigint_cancels_a_run_started_in_the_background(tmp_path: Path) -> None:
    """`cellpipe run NB &` in a script: the shell starts it with SIGINT ignored."""
    notebook = _notebook(
        tmp_path / "slow.ipynb",
        (
            "import time\nfor i in range(600):\n    print('tick', i, flush=True)\n    time.sleep(0.1)",
            ["step:slow"],
        ),
    )
    env = dict(os.environ, PYTHONPATH=str(ROOT), CELLPIPE_HOME=str(tmp_path / "home"))
    process = subprocess.Popen(
        [*_cli(), "run", str(notebook), "--json-events"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
    )
    try:
        assert process.stdout is not None
        for line in process.stdout:
            if '"tick 2"' in line:
                break
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == 130, err
    assert json.loads(out.strip().splitlines()[-1])["state"] == "cancelled"
