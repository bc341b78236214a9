"""JupyterLab with the cellpipe extension, driven in Debian's Chromium as a user would.

One JupyterLab server (real token, its own settings and run store) and one browser page serve the whole
module; the tests run in order, each on what the previous one left: tag cells through the form, save and
read the .ipynb from disk, see the DAG gain an edge, run locally from the panel, run the notebook widget.
Screenshots of every stage go to out/browser/ (git-ignored), kept as test artifacts.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

playwright_sync = pytest.importorskip("playwright.sync_api")

pytestmark = [pytest.mark.browser, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = ROOT / "out" / "browser"
NOTEBOOK = "plain_untagged.ipynb"
PLAIN_TAGS = "plain_tags.ipynb"  # tagged as the README teaches; its second step fails
MARKS = "marks.ipynb"  # steps the analysis orders by the notebook, a value that cannot cross a step
DOCS_IMAGES = ROOT / "docs" / "images"
SHOWN = ".jp-NotebookPanel:not(.lm-mod-hidden)"  # the notebook on screen (others stay in the DOM)
SHOWN_TAB = ".jp-MainAreaWidget:not(.lm-mod-hidden)"
TIMEOUT_MS = 60_000

if not CHROMIUM.exists():
    pytest.skip("Debian's chromium is not installed (.ci/run installs it)", allow_module_level=True)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _write_plain_tags(path: Path) -> None:
    import nbformat
    from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

    cells = [
        new_markdown_cell("# Plain tags\nSettings written as cell tags only."),
        new_code_cell("import statistics", metadata={"tags": ["imports"]}),
        new_code_cell("divisor = 0", metadata={"tags": ["parameters"]}),
        new_code_cell(
            "values = [3, 4, 5]\nprint('loaded', len(values), 'values')",
            metadata={"tags": ["step:load-data", "cpu:500m", "memory:1Gi", "retries:2", "timeout:30m"]},
        ),
        new_code_cell(
            "mean = statistics.mean(values)\nprint('mean', mean)\nscaled = mean / divisor",
            metadata={"tags": ["step:score", "cpu:1", "memory-limit:2Gi"]},
        ),
    ]
    nb = new_notebook(cells=cells)
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)


def _write_marks(path: Path) -> None:
    import nbformat
    from nbformat.v4 import new_code_cell, new_notebook

    cells = [
        new_code_cell("import numpy as np", metadata={"tags": ["imports"]}),
        new_code_cell("np.random.seed(0)\nlog = open('marks.log', 'w')", metadata={"tags": ["step:setup"]}),
        new_code_cell("a = np.random.rand(2)", metadata={"tags": ["step:draw"]}),
        new_code_cell("b = np.random.rand(2)\nlog.write(str(a + b))", metadata={"tags": ["step:again"]}),
    ]
    nb = new_notebook(cells=cells)
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, path)


class Lab:
    """A running `jupyter lab` and what a test needs to reach it."""

    def __init__(self, root: Path, url: str, token: str, process: subprocess.Popen[bytes], log: Path):
        self.root, self.url, self.token, self.process, self.log = root, url, token, process, log


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Lab]:
    base = tmp_path_factory.mktemp("lab")
    root = base / "notebooks"
    shutil.copytree(ROOT / "sample_notebooks", root, ignore=shutil.ignore_patterns("out", "data"))
    _write_plain_tags(root / PLAIN_TAGS)
    _write_marks(root / MARKS)
    settings = base / "app-settings"
    settings.mkdir()
    # The news and update toasts would cover the page.
    (settings / "overrides.json").write_text(
        json.dumps(
            {"@jupyterlab/apputils-extension:notification": {"fetchNews": "false", "checkForUpdates": False}}
        )
    )
    token, port = secrets.token_hex(16), _free_port()
    env = dict(os.environ, CELLPIPE_HOME=str(base / "cellpipe-home"), JUPYTER_CONFIG_DIR=str(base / "config"))
    log = base / "lab.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [
                sys.executable, "-m", "jupyter", "lab", "--no-browser", "--allow-root",
                f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}",
                f"--port={port}", "--ServerApp.ip=127.0.0.1", "--ServerApp.port_retries=0",
                f"--LabApp.app_settings_dir={settings}",
                f"--LabApp.user_settings_dir={base / 'user-settings'}",
                f"--LabApp.workspaces_dir={base / 'workspaces'}",
                "--LabApp.expose_app_in_browser=True",
            ],
            cwd=root, env=env, stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            request = urllib.request.Request(f"{url}/api/status", headers={"Authorization": f"token {token}"})
            with urllib.request.urlopen(request, timeout=2):
                break
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                pytest.fail("jupyter lab did not start:\n" + log.read_text())
            time.sleep(0.3)
    try:
        yield Lab(root, url, token, process, log)
    finally:
        process.terminate()
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="module")
def page(lab: Lab) -> Iterator[Any]:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with playwright_sync.sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path=str(CHROMIUM),
            args=[
                "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--no-first-run",
            ],
        )  # fmt: skip
        context = browser.new_context(viewport={"width": 1600, "height": 1000}, accept_downloads=True)
        page = context.new_page()
        page.set_default_timeout(TIMEOUT_MS)
        errors: list[str] = []
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.goto(f"{lab.url}/lab/tree/{NOTEBOOK}?reset&token={lab.token}")
        page.wait_for_function("() => window.jupyterapp && window.jupyterapp.shell.currentWidget")
        _wait_for_kernel(page)
        try:
            yield page
        finally:
            page.screenshot(path=str(ARTIFACTS / "last.png"))
            context.close()
            browser.close()
        assert not [e for e in errors if "cellpipe" in e.lower()], errors


def _wait_for_kernel(page: Any) -> None:
    """The kernel is ready when the notebook's session context says so (not when the toolbar says idle)."""
    page.wait_for_function(
        """() => {
            const panel = window.jupyterapp.shell.currentWidget;
            const ctx = panel && panel.sessionContext;
            return ctx && ctx.isReady && ctx.session && ctx.session.kernel
                && ctx.session.kernel.status === 'idle';
        }""",
        timeout=120_000,
    )


def _shot(page: Any, name: str) -> None:
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"))


def _open_side_panel(page: Any, widget_id: str) -> None:
    panel = page.locator(f"#{widget_id}")
    if not panel.is_visible():
        page.locator(f'.jp-SideBar .lm-TabBar-tab[data-id="{widget_id}"]').click()
    panel.wait_for(state="visible")


def _select_cell(page: Any, index: int) -> None:
    page.evaluate(f"() => {{ window.jupyterapp.shell.currentWidget.content.activeCellIndex = {index}; }}")


def _save(page: Any) -> None:
    page.evaluate("() => window.jupyterapp.commands.execute('docmanager:save')")


def _scroll_to_last_cell(page: Any) -> None:
    page.evaluate(
        """() => {
            const notebook = window.jupyterapp.shell.currentWidget.content;
            return notebook.scrollToItem(notebook.widgets.length - 1, 'start').then(() => null);
        }"""
    )


def _saved_metadata(lab: Lab, notebook: str = NOTEBOOK) -> list[dict[str, Any]]:
    cells = json.loads((lab.root / notebook).read_text())["cells"]
    return [cell["metadata"].get("cellpipe", {}) for cell in cells]


def _saved_tags(lab: Lab, notebook: str = NOTEBOOK) -> list[list[str]]:
    cells = json.loads((lab.root / notebook).read_text())["cells"]
    return [cell["metadata"].get("tags", []) for cell in cells]


def test_untagged_notebook_shows_one_step(page: Any) -> None:
    _open_side_panel(page, "cellpipe-pipeline-panel")
    dag = page.locator("#cellpipe-pipeline-panel .cp-dag svg")
    dag.locator(".cp-node").first.wait_for()
    assert dag.locator(".cp-node").count() == 1
    assert dag.locator(".cp-edge").count() == 0
    _shot(page, "1-untagged")


def test_tag_cells_through_the_form(page: Any, lab: Lab) -> None:
    """On an untagged notebook the form writes plain tags, as the README teaches."""
    _open_side_panel(page, "cellpipe-step-form")
    form = page.locator("#cellpipe-step-form")
    # cell 1 holds the imports, cell 3 loads the data, cell 5 fits on it
    for index, fields in [(1, {"role": "imports"}), (3, {"step": "load"}), (5, {"step": "fit", "cpu": "1"})]:
        _select_cell(page, index)
        form.locator("#cp-field-step").wait_for()
        for key, value in fields.items():
            field = form.locator(f"#cp-field-{key}")
            if key == "role":
                field.select_option(value)
            else:
                field.fill(value)
        form.get_by_role("button", name="Apply").click()
        page.wait_for_function(
            f"() => (window.jupyterapp.shell.currentWidget.content.widgets[{index}].model.getMetadata('tags')"
            " || []).length > 0"
        )
    page.wait_for_selector('.jp-Cell[data-cellpipe-step="fit"] .cp-step-badge')
    badge = page.locator(f'{SHOWN} .jp-Cell[data-cellpipe-step="fit"] .cp-step-badge').first
    playwright_sync.expect(badge).to_have_text("fit · cpu 1")
    _save(page)
    deadline = time.monotonic() + 30
    while _saved_tags(lab)[5] != ["step:fit", "cpu:1"]:
        assert time.monotonic() < deadline, _saved_tags(lab)
        time.sleep(0.2)
    saved = _saved_tags(lab)
    assert saved[1] == ["imports"] and saved[3] == ["step:load"]
    assert _saved_metadata(lab) == [{}] * len(saved)  # no metadata.cellpipe beside the tags
    _shot(page, "2-tagged")


def test_dag_gains_the_edge(page: Any) -> None:
    _open_side_panel(page, "cellpipe-pipeline-panel")
    edge = page.locator('#cellpipe-pipeline-panel .cp-dag .cp-edge[data-source="load"][data-target="fit"]')
    edge.wait_for(state="attached")  # a vertical line has no width, so never "visible"
    assert page.locator("#cellpipe-pipeline-panel .cp-dag .cp-node").count() == 2
    assert page.locator("#cellpipe-pipeline-panel .cp-problems .cp-error").count() == 0
    _shot(page, "3-dag")


def test_compile_downloads_the_pipeline_yaml(page: Any, tmp_path: Path) -> None:
    panel = page.locator("#cellpipe-pipeline-panel")
    with page.expect_download() as download:
        panel.get_by_role("button", name="Compile").click()
    assert download.value.suggested_filename == "plain-untagged.yaml"
    target = tmp_path / "pipeline.yaml"
    download.value.save_as(target)
    text = target.read_text()
    assert "pipelineInfo:" in text and "comp-load" in text and "comp-fit" in text


def test_form_shows_server_problems_inline(page: Any, lab: Lab) -> None:
    _open_side_panel(page, "cellpipe-step-form")
    form = page.locator("#cellpipe-step-form")
    _select_cell(page, 5)
    error = form.locator("#cp-field-memory-error")
    # a value the reader refuses is shown under its field and never written
    form.locator("#cp-field-memory").fill("lots")
    form.get_by_role("button", name="Apply").click()
    playwright_sync.expect(error).to_contain_text("not a valid memory value", timeout=TIMEOUT_MS)
    assert page.evaluate(_TAGS_OF_CELL_5) == ["step:fit", "cpu:1"]
    # a bad tag typed in the notebook (JupyterLab's tag editor) shows under its field too
    page.evaluate(
        "() => window.jupyterapp.shell.currentWidget.content.widgets[5].model"
        ".setMetadata('tags', ['step:fit', 'cpu:1', 'memory:lots'])"
    )
    _save(page)
    playwright_sync.expect(error).to_contain_text("not a valid memory value", timeout=TIMEOUT_MS)
    error.scroll_into_view_if_needed()
    _shot(page, "4-problem")
    # the same problem in the pipeline panel takes the notebook to its cell
    _select_cell(page, 0)
    _open_side_panel(page, "cellpipe-pipeline-panel")
    page.locator("#cellpipe-pipeline-panel .cp-problem", has_text="not a valid memory value").click()
    page.wait_for_function("() => window.jupyterapp.shell.currentWidget.content.activeCellIndex === 5")
    _open_side_panel(page, "cellpipe-step-form")
    playwright_sync.expect(form.locator("#cp-field-memory")).to_have_value("lots")
    form.locator("#cp-field-memory").fill("")
    form.get_by_role("button", name="Apply").click()
    page.wait_for_function(f'() => JSON.stringify(({_TAGS_OF_CELL_5})()) === \'["step:fit","cpu:1"]\'')
    _save(page)
    playwright_sync.expect(error).to_have_text("", timeout=TIMEOUT_MS)


_TAGS_OF_CELL_5 = "() => window.jupyterapp.shell.currentWidget.content.widgets[5].model.getMetadata('tags')"


def test_run_locally_from_the_panel(page: Any) -> None:
    _open_side_panel(page, "cellpipe-pipeline-panel")
    panel = page.locator("#cellpipe-pipeline-panel")
    panel.get_by_role("button", name="Run locally").click()
    run = panel.locator(".cp-run").first
    run.locator('.cp-chip[data-step="load"]').wait_for()
    page.wait_for_selector("#cellpipe-pipeline-panel .cp-run.cp-run-succeeded", timeout=120_000)
    run = panel.locator(".cp-run.cp-run-succeeded").first
    states = {
        chip.get_attribute("data-step"): chip.get_attribute("data-state")
        for chip in run.locator(".cp-chip").all()
    }
    assert states == {"load": "succeeded", "fit": "succeeded"}
    # the DAG shows the selected run's final states, and the details its step logs
    assert panel.locator('.cp-dag .cp-node.cp-state-succeeded[data-step="fit"]').count() == 1
    playwright_sync.expect(panel.locator(".cp-run-details")).to_contain_text("test R^2")
    _shot(page, "5-run")


def test_run_monitor_widget_renders_and_finishes(page: Any) -> None:
    page.evaluate(
        """() => {
            const app = window.jupyterapp;
            const notebook = app.shell.currentWidget.content;
            notebook.activeCellIndex = notebook.widgets.length - 1;
            return app.commands.execute('notebook:insert-cell-below');
        }"""
    )
    page.evaluate(
        """() => {
            const cell = window.jupyterapp.shell.currentWidget.content.activeCell;
            cell.model.sharedModel.setSource('from jupyter_ext import run_notebook\\n'
                + 'run_notebook("plain_untagged.ipynb", use_cache=False)');
            return window.jupyterapp.commands.execute('notebook:run-cell');
        }"""
    )
    bar = page.locator(".jp-Notebook .widget-hprogress .progress-bar").last
    bar.wait_for(timeout=120_000)
    _scroll_to_last_cell(page)  # the widget redraws: a located element may be replaced under us
    _shot(page, "6-monitor-running")
    page.wait_for_selector(
        ".jp-Notebook .widget-hprogress .progress-bar.progress-bar-success", timeout=120_000
    )
    playwright_sync.expect(page.locator(".jp-Notebook .widget-hprogress").last).to_contain_text("2/2")
    _scroll_to_last_cell(page)
    _shot(page, "7-monitor-finished")


def _open(page: Any, path: str) -> None:
    page.evaluate(
        f"() => window.jupyterapp.commands.execute('docmanager:open', {{path: '{path}'}}).then(() => null)"
    )
    page.wait_for_function(f"() => window.jupyterapp.shell.currentWidget.context.path === '{path}'")
    _wait_for_kernel(page)


def _docs_shot(page: Any, name: str, theme: str = "light") -> None:
    """A screenshot of a stage the docs show; with CELLPIPE_DOCS_IMAGES=1 it replaces docs/images/'s copy."""
    _shot(page, f"lab-{name}-{theme}")
    if os.environ.get("CELLPIPE_DOCS_IMAGES") == "1":
        DOCS_IMAGES.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(ARTIFACTS / f"lab-{name}-{theme}.png", DOCS_IMAGES / f"lab-{name}-{theme}.png")


def _field(page: Any, key: str) -> Any:
    return page.locator(f"#cellpipe-step-form #cp-field-{key}")


def test_plain_tags_show_in_the_form_with_their_tags(page: Any) -> None:
    _open(page, PLAIN_TAGS)
    _open_side_panel(page, "cellpipe-step-form")
    _select_cell(page, 3)
    expect = playwright_sync.expect
    expect(_field(page, "step")).to_have_value("load-data", timeout=TIMEOUT_MS)
    values = {key: _field(page, key).input_value() for key in ("cpu", "memory", "retries", "timeout", "gpu")}
    assert values == {"cpu": "500m", "memory": "1Gi", "retries": "2", "timeout": "30m", "gpu": ""}
    source = page.locator('#cellpipe-step-form .cp-field[data-field="cpu"] .cp-source')
    expect(source).to_have_text("from tag cpu:500m")
    _docs_shot(page, "form")
    _select_cell(page, 4)
    expect(_field(page, "step")).to_have_value("score")
    assert _field(page, "memory_limit").input_value() == "2Gi"
    _select_cell(page, 1)
    expect(_field(page, "role")).to_have_value("imports")


def test_badges_show_requests_and_role_marks(page: Any) -> None:
    expect = playwright_sync.expect
    expect(page.locator(f'{SHOWN} .jp-Cell[data-cellpipe-step="load-data"] .cp-step-badge')).to_have_text(
        "load-data · cpu 500m · mem 1Gi", timeout=TIMEOUT_MS
    )
    expect(page.locator(f'{SHOWN} .jp-Cell[data-cellpipe-step="score"] .cp-step-badge')).to_have_text(
        "score · cpu 1 · mem ≤2Gi"
    )
    expect(page.locator(f'{SHOWN} .jp-Cell[data-cellpipe-role="imports"] .cp-role-mark')).to_have_text(
        "imports"
    )
    expect(page.locator(f'{SHOWN} .jp-Cell[data-cellpipe-role="parameters"] .cp-role-mark')).to_have_text(
        "parameters"
    )
    _docs_shot(page, "badges")


def test_editing_a_value_changes_exactly_that_tag(page: Any, lab: Lab) -> None:
    before = _saved_tags(lab, PLAIN_TAGS)
    _open_side_panel(page, "cellpipe-step-form")
    _select_cell(page, 3)
    playwright_sync.expect(_field(page, "cpu")).to_have_value("500m", timeout=TIMEOUT_MS)
    _field(page, "cpu").fill("750m")
    page.locator("#cellpipe-step-form").get_by_role("button", name="Apply").click()
    playwright_sync.expect(
        page.locator(f'{SHOWN} .jp-Cell[data-cellpipe-step="load-data"] .cp-step-badge')
    ).to_have_text("load-data · cpu 750m · mem 1Gi", timeout=TIMEOUT_MS)
    _save(page)
    deadline = time.monotonic() + 30
    while _saved_tags(lab, PLAIN_TAGS)[3] == before[3]:
        assert time.monotonic() < deadline, _saved_tags(lab, PLAIN_TAGS)
        time.sleep(0.2)
    after = _saved_tags(lab, PLAIN_TAGS)
    assert after[3] == ["step:load-data", "cpu:750m", "memory:1Gi", "retries:2", "timeout:30m"]
    assert after[:3] + after[4:] == before[:3] + before[4:]  # no other cell changed
    assert _saved_metadata(lab, PLAIN_TAGS) == [{}] * len(after)  # and nothing written beside the tags
    playwright_sync.expect(
        page.locator('#cellpipe-step-form .cp-field[data-field="cpu"] .cp-source')
    ).to_have_text("from tag cpu:750m")


def test_settings_move_to_metadata_and_back_when_the_user_chooses(page: Any, lab: Lab) -> None:
    form = page.locator("#cellpipe-step-form")
    _select_cell(page, 4)
    playwright_sync.expect(_field(page, "step")).to_have_value("score", timeout=TIMEOUT_MS)
    form.locator("#cp-write-target").select_option("metadata")
    form.get_by_role("button", name="Apply").click()
    source = form.locator('.cp-field[data-field="memory_limit"] .cp-source')
    playwright_sync.expect(source).to_have_text("from metadata.cellpipe", timeout=TIMEOUT_MS)
    cell = page.evaluate(
        "() => { const m = window.jupyterapp.shell.currentWidget.content.widgets[4].model;"
        " return [m.getMetadata('tags') || [], m.getMetadata('cellpipe')]; }"
    )
    assert cell == [[], {"step": "score", "cpu": "1", "memory_limit": "2Gi"}]
    _shot(page, "form-metadata")
    form.locator("#cp-write-target").select_option("tags")
    form.get_by_role("button", name="Apply").click()
    playwright_sync.expect(source).to_have_text("from tag memory-limit:2Gi", timeout=TIMEOUT_MS)
    cell = page.evaluate(
        "() => { const m = window.jupyterapp.shell.currentWidget.content.widgets[4].model;"
        " return [m.getMetadata('tags'), m.getMetadata('cellpipe') ?? null]; }"
    )
    assert cell == [["step:score", "cpu:1", "memory-limit:2Gi"], None]


def test_commands_are_on_the_toolbar_in_the_palette_and_on_keys(page: Any) -> None:
    toolbar = page.locator(".jp-NotebookPanel:not(.lm-mod-hidden) .jp-NotebookPanel-toolbar")
    for command in ("validate", "compile", "run-local", "submit", "debug"):
        toolbar.locator(f'[data-command="cellpipe:{command}"]').wait_for(state="attached")
    palette = page.evaluate(
        "() => ['validate', 'compile', 'run-local', 'submit', 'debug'].map(c => "
        "window.jupyterapp.commands.hasCommand('cellpipe:' + c))"
    )
    assert palette == [True] * 5
    # Alt+P, then R: run locally (the run fails in step score, cell 4)
    _select_cell(page, 2)
    page.evaluate("() => window.jupyterapp.shell.currentWidget.content.node.focus()")
    page.keyboard.press("Alt+p")
    page.keyboard.press("r")
    page.wait_for_selector("#cellpipe-pipeline-panel .cp-run.cp-run-failed", timeout=120_000)


def test_a_failed_run_shows_its_error_and_the_cell(page: Any) -> None:
    panel = page.locator("#cellpipe-pipeline-panel")
    run = panel.locator(".cp-run.cp-run-failed").first
    states = {
        chip.get_attribute("data-step"): chip.get_attribute("data-state")
        for chip in run.locator(".cp-chip").all()
    }
    assert states == {"load-data": "succeeded", "score": "failed"}
    failure = panel.locator('.cp-step-failure[data-step="score"] .cp-failure-cell')
    playwright_sync.expect(failure).to_contain_text(
        "score failed in cell 4: ZeroDivisionError", timeout=TIMEOUT_MS
    )
    _select_cell(page, 0)
    failure.click()
    page.wait_for_function("() => window.jupyterapp.shell.currentWidget.content.activeCellIndex === 4")
    failure.scroll_into_view_if_needed()
    _docs_shot(page, "failed-run")


def test_the_executed_notebook_opens_with_its_outputs(page: Any, lab: Lab) -> None:
    panel = page.locator("#cellpipe-pipeline-panel")
    panel.locator(".cp-open-executed").first.click()
    page.wait_for_function(
        "() => window.jupyterapp.shell.currentWidget.context.path.startsWith('cellpipe-runs/plain_tags-')"
    )
    path = page.evaluate("() => window.jupyterapp.shell.currentWidget.context.path")
    executed = json.loads((lab.root / path).read_text())
    outputs = ["".join(o.get("text", "")) for c in executed["cells"] for o in c.get("outputs", [])]
    assert "loaded 3 values\n" in outputs and "mean 4\n" in outputs
    errors = [o for c in executed["cells"] for o in c.get("outputs", []) if o["output_type"] == "error"]
    assert [e["ename"] for e in errors] == ["ZeroDivisionError"]
    shown = page.locator(".jp-NotebookPanel:not(.lm-mod-hidden) .jp-OutputArea-output")
    playwright_sync.expect(shown.filter(has_text="loaded 3 values")).to_have_count(1, timeout=TIMEOUT_MS)
    playwright_sync.expect(shown.filter(has_text="ZeroDivisionError")).not_to_have_count(0)
    _docs_shot(page, "executed-notebook")
    # a step's HTML report opens in a tab of its own
    panel.locator(".cp-open-report", has_text="load-data").first.click()
    frame = page.locator(".cp-report-frame iframe")
    frame.wait_for()
    assert "/steps/load-data/report" in (frame.get_attribute("src") or "")
    page.frame_locator(".cp-report-frame iframe").locator("h1").wait_for()
    _docs_shot(page, "report")
    page.evaluate("() => window.jupyterapp.commands.execute('application:close')")
    page.evaluate("() => window.jupyterapp.commands.execute('application:close')")  # the executed notebook


def test_cells_the_analysis_is_unsure_of_are_marked(page: Any) -> None:
    _open(page, MARKS)
    note = page.locator(f"{SHOWN} .jp-Cell").nth(1).locator(".cp-cell-note")
    playwright_sync.expect(note).to_contain_text("cannot cross a step", timeout=TIMEOUT_MS)
    assert "holds an open file" in (note.get_attribute("title") or "")
    playwright_sync.expect(
        page.locator(f"{SHOWN} .cp-cell-note", has_text="notebook order").first
    ).to_be_attached()
    _docs_shot(page, "marks")


def _has_debug_magic() -> bool:
    import jupyter_ext

    return hasattr(jupyter_ext, "load_ipython_extension")


def test_debug_loads_the_inputs_and_the_inserted_cell_reproduces_the_error(page: Any) -> None:
    if not _has_debug_magic():
        pytest.skip("the %cellpipe magic (helper E2's jupyter_ext.load_ipython_extension) is not there yet")
    _open(page, PLAIN_TAGS)
    count = page.evaluate("() => window.jupyterapp.shell.currentWidget.content.widgets.length")
    _open_side_panel(page, "cellpipe-pipeline-panel")
    page.locator('#cellpipe-pipeline-panel .cp-step-failure[data-step="score"] .cp-debug').click()
    page.wait_for_function(
        f"() => window.jupyterapp.shell.currentWidget.content.widgets.length === {count + 2}", timeout=120_000
    )
    cells = page.evaluate(
        """() => window.jupyterapp.shell.currentWidget.content.widgets.map(c => ({
            source: c.model.sharedModel.getSource(), tags: c.model.getMetadata('tags') || []}))"""
    )
    magic, code = cells[5], cells[6]
    assert magic["source"].startswith("%load_ext jupyter_ext\n%cellpipe inputs ") and magic["tags"] == [
        "skip"
    ]
    assert "scaled = mean / divisor" in code["source"] and code["tags"] == ["skip"]
    # the step's inputs are in the kernel: `values` from step load-data, the parameter `divisor`
    loaded = page.evaluate(
        """() => window.jupyterapp.shell.currentWidget.sessionContext.session.kernel.requestExecute(
            {code: '', silent: true, user_expressions: {values: 'values', divisor: 'divisor'}}).done
            .then(reply => Object.fromEntries(Object.entries(reply.content.user_expressions)
                .map(([name, value]) => [name, value.data['text/plain']])))"""
    )
    assert loaded == {"values": "[3, 4, 5]", "divisor": "0"}
    page.evaluate("() => window.jupyterapp.commands.execute('notebook:run-cell')")  # the inserted cell
    page.wait_for_function(
        """() => window.jupyterapp.shell.currentWidget.content.widgets[6].model.outputs.toJSON()
            .some(output => output.output_type === 'error' && output.ename === 'ZeroDivisionError')""",
        timeout=TIMEOUT_MS,
    )
    page.locator(f"{SHOWN} .jp-Cell").nth(6).scroll_into_view_if_needed()
    _docs_shot(page, "debug")


def test_dark_theme_keeps_the_panel_readable(page: Any) -> None:
    page.evaluate(
        "() => window.jupyterapp.commands.execute('apputils:change-theme', {theme: 'JupyterLab Dark'})"
    )
    page.wait_for_function("() => document.body.dataset.jpThemeLight === 'false'")
    page.wait_for_selector("#jupyterlab-splash", state="detached")  # the theme change shows a splash
    _open_side_panel(page, "cellpipe-pipeline-panel")
    colours = page.evaluate(
        """() => {
            const panel = document.querySelector('#cellpipe-pipeline-panel');
            const text = document.querySelector('#cellpipe-pipeline-panel .cp-run-button');
            return [getComputedStyle(panel).backgroundColor, getComputedStyle(text).color];
        }"""
    )
    background, text = (_luminance(colour) for colour in colours)
    assert background < 0.2 < 0.6 < text, colours
    _shot(page, "8-dark")


def _luminance(css: str) -> float:
    """Relative luminance (0 black .. 1 white) of an `rgb(...)`/`rgba(...)` colour."""
    red, green, blue = (int(part) / 255 for part in css[css.index("(") + 1 : -1].split(",")[:3])
    return 0.2126 * red + 0.7152 * green + 0.0722 * blue


def test_submit_dialog_offers_the_parameters_cell(page: Any) -> None:
    """The KFP dialog lists the notebook's parameters with their values (cancelled: no cluster here)."""
    page.evaluate(
        "() => window.jupyterapp.commands.execute('docmanager:open', {path: 'sklearn_tabular.ipynb'})"
        ".then(() => null)"
    )
    panel = page.locator("#cellpipe-pipeline-panel")
    playwright_sync.expect(panel.locator(".cp-pipeline-name")).to_have_text("sklearn-tabular")
    panel.locator('.cp-dag .cp-node[data-step="evaluate"]').wait_for()
    status = panel.locator(".cp-status").inner_text()
    panel.get_by_role("button", name="Submit to KFP").click()
    dialog = page.locator(".jp-Dialog")
    dialog.wait_for()
    values = {
        name: dialog.locator(f'input[name="{name}"]').input_value()
        for name in ("test_size", "C", "max_iter", "random_state", "model_kind")
    }
    assert values == {
        "test_size": "0.2",
        "C": "1",
        "max_iter": "500",
        "random_state": "42",
        "model_kind": "logreg",
    }
    _shot(page, "9-submit-dialog")
    dialog.get_by_role("button", name="Cancel").click()
    dialog.wait_for(state="detached")
    assert panel.locator(".cp-status").inner_text() == status  # nothing was submitted


def test_dark_theme_screenshots_of_each_stage(page: Any) -> None:
    """The docs show every stage in both themes (the theme is dark since the contrast test)."""
    _open(page, PLAIN_TAGS)
    _open_side_panel(page, "cellpipe-step-form")
    _select_cell(page, 3)
    playwright_sync.expect(_field(page, "step")).to_have_value("load-data", timeout=TIMEOUT_MS)
    _docs_shot(page, "form", "dark")
    _docs_shot(page, "badges", "dark")
    _open_side_panel(page, "cellpipe-pipeline-panel")
    page.locator("#cellpipe-pipeline-panel .cp-run.cp-run-failed .cp-run-button").first.click()
    failure = page.locator('#cellpipe-pipeline-panel .cp-step-failure[data-step="score"]')
    failure.wait_for()
    failure.scroll_into_view_if_needed()
    _docs_shot(page, "failed-run", "dark")
    page.locator("#cellpipe-pipeline-panel .cp-open-executed").first.click()
    page.wait_for_function(
        "() => window.jupyterapp.shell.currentWidget.context.path.startsWith('cellpipe-runs/plain_tags-')"
    )
    page.locator(".jp-NotebookPanel:not(.lm-mod-hidden) .jp-OutputArea-output").first.wait_for()
    _docs_shot(page, "executed-notebook", "dark")
    page.locator("#cellpipe-pipeline-panel .cp-open-report", has_text="load-data").first.click()
    page.frame_locator(f"{SHOWN_TAB} .cp-report-frame iframe").locator("h1").wait_for()
    _docs_shot(page, "report", "dark")
    if _has_debug_magic():  # the debug cells the light test inserted
        _open(page, PLAIN_TAGS)
        _open_side_panel(page, "cellpipe-pipeline-panel")
        page.evaluate(
            "() => window.jupyterapp.shell.currentWidget.content.scrollToItem(6, 'center').then(() => null)"
        )
        page.locator(f"{SHOWN} .jp-Cell").nth(6).locator(".jp-OutputArea-output").first.wait_for()
        _docs_shot(page, "debug", "dark")
