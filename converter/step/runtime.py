"""The program every cellpipe pipeline step runs, on a KFP pod or on the local engine.

A compiled pipeline carries it once, packed, and passes it to every step as the first argument of
``python3 -c PROGRAM RUNTIME ARGS`` (see `converter.step.stepcode`). It stays self-contained:
standard library at module level, numpy/pandas/IPython/... imported only when a value or a cell
needs them, because every step pays the startup cost. It runs the step's cells like a notebook
kernel, tees their output, moves variables in and out as typed artifacts and writes the
step's metrics, HTML report and cell outputs.

A cell raising ``SystemExit`` with code 0 or None stops the remaining cells and the step goes on
to save its outputs (so it can still succeed); any other code fails the step with exit status 1.
"""

from __future__ import annotations

import ast
import html
import importlib.util
import json
import linecache
import math
import os
import sys
import time
import types
from pathlib import Path
from typing import Any

from converter.step.outputs import ANSI, Capture, Tee, bundle, escaped, render_output  # inlined: stepcode
from converter.step.values import METRICS_LOG_PREFIX, load_value, save_value  # inlined: stepcode

_REPRS = (
    ("text/html", "_repr_html_"),
    ("text/markdown", "_repr_markdown_"),
    ("text/latex", "_repr_latex_"),
    ("image/svg+xml", "_repr_svg_"),
    ("image/png", "_repr_png_"),
    ("image/jpeg", "_repr_jpeg_"),
)
_SHARED_ROLES = ("imports", "functions")
RANDOM_STATE = "cellpipe_random_state"  # converter/step/carry.py: the global random state as a value
_INLINE_BACKEND = "module://matplotlib_inline.backend_inline"
_CSS = (
    "body{font:14px/1.4 system-ui,sans-serif;margin:2em auto;max-width:70em;color:#222}"
    "pre{white-space:pre-wrap;margin:.3em 0;padding:.5em;border-radius:4px;overflow-x:auto}"
    ".src{background:#f5f5f7;border-left:3px solid #4a78c2}.stderr{background:#fff4e5}"
    ".error{background:#fdecea;color:#8a1c1c}.cell{margin:1.2em 0}.head{color:#777;font-size:12px}"
    ".skipped{opacity:.5}table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:2px 6px}"
    "img{max-width:100%}"
)


class StepFailed(Exception):
    """A user-caused failure of the step, reported as one line naming the step, never a traceback."""


# ---------------------------------------------------------------- arguments and parameters


def _parse_args(argv: list[str]) -> dict[str, Any]:
    args: dict[str, Any] = {"input": {}, "param": {}, "output": {}, "no-install": False}
    rest = list(argv)
    while rest:
        flag = rest.pop(0)
        key = flag[2:]
        if flag == "--no-install":
            args["no-install"] = True
        elif key in ("input", "param", "output") and len(rest) >= 2:
            name = rest.pop(0)
            args[key][name] = rest.pop(0)
        elif key in ("metrics", "report", "cell-outputs", "executor-output") and rest:
            args[key] = rest.pop(0)
        else:
            raise StepFailed(f"bad runtime argument {flag!r} in {argv}")
    return args


def _typed(name: str, kind: str, raw: str) -> object:
    """A parameter value as KFP renders it on the command line, back to its Python type."""
    try:
        if kind == "str":
            return raw
        if kind == "int":
            number = float(raw) if "." in raw or "e" in raw.lower() else int(raw)
            if isinstance(number, float) and not number.is_integer():
                raise ValueError("not an integer")
            return int(number)
        if kind == "float":
            return float(raw)
        if kind == "bool":
            if raw.strip().lower() in ("true", "1", "false", "0"):
                return raw.strip().lower() in ("true", "1")
            raise ValueError("expected true or false")
        if kind in ("list", "dict"):
            value = json.loads(raw)
            if type(value) is not (list if kind == "list" else dict):
                raise ValueError(f"not a JSON {kind}")
            return value
    except ValueError as error:
        raise StepFailed(f"parameter {name!r} ({kind}): cannot read {raw!r}: {error}") from None
    raise StepFailed(f"parameter {name!r} has unknown type {kind!r}")


class _Installer:
    """A last-resort import finder: pip-installs a module's distribution when a cell imports it.

    Modules are checked where the notebook imports them, after the cells above ran, so a module
    that ``%%writefile`` or ``!pip install`` provides is found as in Jupyter. Only on KFP pods
    (the local engine passes ``--no-install``: a missing module is the cell's ModuleNotFoundError,
    as in Jupyter, never an install into the user's environment).
    """

    def __init__(self, requirements: dict[str, str]) -> None:
        self.requirements, self.tried = dict(requirements), set[str]()

    def find_spec(self, name: str, path: Any = None, target: Any = None) -> Any:
        if path is not None or name not in self.requirements or name in self.tried:
            return None
        self.tried.add(name)
        import importlib.machinery
        import site
        import subprocess

        dist = self.requirements[name]
        print(f"cellpipe: pip install {dist} (for import {name})", file=sys.stderr, flush=True)
        pip = [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-input"]
        code = subprocess.run([*pip, dist], check=False).returncode
        if code:
            print(f"cellpipe: pip install {dist} failed (exit status {code})", file=sys.stderr, flush=True)
            return None
        user_site = site.getusersitepackages()  # pip's fallback target may not have existed at startup
        if os.path.isdir(user_site) and user_site not in sys.path:
            site.addsitedir(user_site)
        importlib.invalidate_caches()
        return importlib.machinery.PathFinder.find_spec(name)


def _importable(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except Exception:  # a dotted name whose parent is missing or broken
        return False


# ---------------------------------------------------------------- running the cells


_HOLDER = "__cellpipe_kernel_shell__"  # sys.modules entry: the shell and the step it records for


def _holder() -> Any:  # a module used as a namespace: shell, step, used
    """Where the shell lives between `preload_shell` (the fork server) and the step that uses it.

    A module in sys.modules, because the fork server and the step program are two executions of
    this source: the shell's classes reach the running step through it, not through a closure.
    """
    holder = sys.modules.get(_HOLDER)
    if holder is None:
        holder = types.ModuleType(_HOLDER)
        holder.__dict__.update(shell=None, step=None, used=False)
        sys.modules[_HOLDER] = holder
    return holder


def preload_shell() -> None:
    """Create the step's shell ahead of time (the local fork server does, before the imports cells'
    imports, so a step pays neither IPython's import nor the shell's ~70 ms set-up).

    ``get_ipython`` goes into builtins, as in a kernel, so libraries imported next see the shell:
    pandas picks its notebook defaults, matplotlib's inline backend hooks into it.
    """
    import builtins

    shell = _new_shell()
    builtins.get_ipython = shell.get_ipython  # type: ignore[attr-defined]
    shell.transform_cell("x = 1\n")  # warms the tokenizer's regular expressions for every step


def _kernel_shell(step: _Step) -> Any:
    """The shell the step's cells run in: the preloaded one if there is one, else a new one."""
    holder = _holder()
    if holder.shell is None or holder.used:
        _new_shell()
        inline = sys.modules.get("matplotlib_inline.backend_inline")
        if inline is not None:  # loaded before this shell existed: hook it up now
            inline._enable_matplotlib_integration()
    holder.step, holder.used = step, True
    return holder.shell


def _new_shell() -> Any:
    """An IPython shell that behaves like ipykernel's, recording outputs instead of sending them.

    What a kernel adds to IPython's InteractiveShell, and so what Jupyter shows, is here: results
    through the display formatter as ``execute_result`` (``x;`` hidden, ``type(1)`` shows ``int``),
    ``display()`` as ``display_data``, errors with the kernel's coloured traceback, the inline
    matplotlib backend flushing figures as PNG at the end of each cell (``%matplotlib inline``
    works: GUI event loops are a no-op, as in ipykernel), and the environment ipykernel sets up
    (``FORCE_COLOR`` and friends, so libraries print the ANSI colour they print under a kernel).

    Libraries that ask whether they run in a notebook frontend get ipykernel's answers: pandas looks
    for "zmq" in the shell's type name (text repr width) and for a ``kernel`` attribute (20 columns
    shown by default), so the class name says ZMQ and ``kernel`` is there, empty.
    """
    os.environ.setdefault("MPLBACKEND", _INLINE_BACKEND if _importable("matplotlib_inline") else "Agg")
    from IPython.core.displayhook import DisplayHook
    from IPython.core.displaypub import DisplayPublisher
    from IPython.core.interactiveshell import InteractiveShell
    from traitlets import Type
    from traitlets.config import Config

    holder = _holder()

    class Publisher(DisplayPublisher):
        def publish(self, data: dict[str, Any], metadata: Any = None, *a: Any, **k: Any) -> None:
            holder.step.record({"output_type": "display_data", "data": data, "metadata": metadata or {}})

        def clear_output(self, wait: bool = False) -> None:
            holder.step.outputs.clear()

    class Hook(DisplayHook):
        """ipykernel's ZMQShellDisplayHook, recording the result instead of sending it."""

        def start_displayhook(self) -> None:
            self.bundle: dict[str, Any] = {"data": {}, "metadata": {}}

        def write_output_prompt(self) -> None:
            pass

        def write_format_data(self, format_dict: dict[str, Any], md_dict: Any = None) -> None:
            self.bundle = {"data": format_dict, "metadata": md_dict or {}}

        def finish_displayhook(self) -> None:
            sys.stdout.flush()
            sys.stderr.flush()
            if self.bundle["data"]:
                count = self.prompt_count
                holder.step.record({"output_type": "execute_result", **self.bundle, "execution_count": count})

    class CellpipeZMQCompatibleShell(InteractiveShell):
        displayhook_class = Type(Hook)
        display_pub_class = Type(Publisher)
        kernel = None

        def init_environment(self) -> None:  # as ipykernel's ZMQInteractiveShell
            os.environ.update(
                TERM="xterm-color", CLICOLOR="1", FORCE_COLOR="1", CLICOLOR_FORCE="1", PAGER="cat"
            )
            os.environ["GIT_PAGER"] = "cat"

        def enable_gui(self, gui: Any = None) -> None:
            pass  # no event loop to integrate with: figures are shown inline

        def _showtraceback(self, etype: type, evalue: BaseException, stb: Any) -> None:
            holder.step.shell_error(etype, evalue, stb)

    config = Config()
    config.HistoryManager.enabled = False  # no sqlite file or saver thread in a pod
    if InteractiveShell._instance is not None:  # an earlier step run in this process (tests)
        type(InteractiveShell._instance).clear_instance()
    holder.shell, holder.used = CellpipeZMQCompatibleShell.instance(config=config), False
    return holder.shell


def _error_output(error: BaseException) -> dict[str, Any]:
    """An nbformat error output for an error raised outside IPython, showing only the cells' frames."""
    import traceback

    tb = error.__traceback__
    while tb is not None and not tb.tb_frame.f_code.co_filename.startswith("<cell "):
        tb = tb.tb_next  # hide the runtime's own frames
    lines = [line.rstrip("\n") for line in traceback.format_exception(type(error), error, tb)]
    ename, evalue = type(error).__name__, str(error)
    return {"output_type": "error", "ename": ename, "evalue": evalue, "traceback": lines}


class _Step:
    """One execution of a step: inputs in, cells run as a kernel would, outputs, metrics and report out.

    Long because the runtime ships as one self-contained file (packed into every pipeline, run by
    ``python -c``), and this class holds one execution's state: the namespace, the shell, the running
    cell's outputs and the failure, which every phase reads and writes.
    """

    def __init__(self, spec: dict[str, Any]) -> None:
        self.spec = spec
        self.name = str(spec.get("step", "?"))
        self.shell: Any = None
        self.ns: dict[str, Any] = {}
        self.done: list[dict[str, Any]] = []  # cells run so far: index, role, count, outputs, seconds
        self.outputs: list[dict[str, Any]] = []  # the running cell's outputs
        self.real_err: Any = sys.stderr  # the process's stderr while cells run with a tee
        self.error_cell: int | None = None
        self.failure: str | None = None
        self.expected: list[tuple[int, BaseException]] = []  # errors of raises-exception cells
        self.random_state: Any = None  # the global random generators' state from the step before

    def run(self, argv: list[str]) -> int:
        args: dict[str, Any] = {}
        main = sys.modules.get("__main__")
        try:
            args = _parse_args(argv)
            if not args["no-install"]:
                sys.meta_path.append(_Installer(self.spec.get("requirements", {})))
            self.ns = self._namespace()
            _limit_threads()
            for name, path in args["input"].items():
                try:
                    value = load_value(path)
                except Exception as error:
                    raise StepFailed(f"cannot load input {name!r} from {path}: {error}") from None
                if name == RANDOM_STATE:
                    self.random_state = value  # set once the imports and functions cells ran
                else:
                    self.ns[name] = value
            missing = sorted(set(self.spec.get("inputs", [])) - set(args["input"]))
            if missing:
                raise StepFailed(f"no --input given for {', '.join(missing)}")
            optional = set(self.spec.get("optional", ()))
            for name, kind in self.spec.get("parameters", {}).items():
                if name not in args["param"] and name in optional:
                    self.ns[name] = None  # papermill's `name = None`, left unset
                    continue
                if name not in args["param"]:
                    raise StepFailed(f"no --param given for parameter {name!r}")
                self.ns[name] = _typed(name, kind, args["param"][name])
            if self._run_cells():
                self._save_outputs(args["output"])
                self._write_metrics(args)
                if self.expected:  # papermill too runs past raises-exception cells, then fails on the first
                    index, raised = self.expected[0]
                    self.error_cell = index
                    self.failure = f"cell {index} raised {type(raised).__name__}: {raised}"
        except StepFailed as failure:
            self.failure = str(failure)
        finally:
            if main is not None:
                sys.modules["__main__"] = main
            self._write_results(args)
        if self.failure:
            where = f" ({self.spec['notebook']})" if self.spec.get("notebook") else ""
            print(f"cellpipe: step {self.name!r}{where} failed: {self.failure}", file=sys.stderr, flush=True)
            return 1
        return 0

    def _namespace(self) -> dict[str, Any]:
        """A fresh __main__ for the cells; registered in sys.modules so pickle finds their classes.

        With IPython importable (always locally: the fork server preloads it), the cells run in a
        kernel-like shell (`_kernel_shell`) so they show what Jupyter shows. Without it (a bare
        image on KFP) they run as plain Python with a minimal `display()`.
        """
        if _importable("IPython"):
            self.shell = _kernel_shell(self)
            module = self.shell.user_module
        else:
            os.environ.setdefault("MPLBACKEND", "Agg")  # no GUI on a pod; figures are captured instead
            module = types.ModuleType("__main__")
            module.__dict__["display"] = self._display
        sys.modules["__main__"] = module
        return module.__dict__

    def shell_error(self, etype: type, evalue: BaseException, stb: list[str]) -> None:
        """An error output exactly as ipykernel sends it (coloured traceback included).

        Errors IPython handles itself (in `%time`, `%%capture`...) do not fail the cell, as in Jupyter;
        an error escaping the cell's code does (see `_run_cell`).
        """
        error = {"output_type": "error", "ename": etype.__name__, "evalue": str(evalue), "traceback": stb}
        self.outputs.append(error)
        self.real_err.write(ANSI.sub("", "\n".join(stb)) + "\n")
        self.real_err.flush()

    def _display(self, *objs: Any, raw: bool = False, metadata: Any = None, **_: Any) -> None:
        """IPython's `display` for kernels without IPython: records rich display_data outputs."""
        for obj in objs:
            data = obj if raw else self._mime(obj)
            self.record({"output_type": "display_data", "data": data, "metadata": metadata or {}})

    def _mime(self, obj: Any) -> dict[str, Any]:
        if self.shell is not None:
            return dict(self.shell.display_formatter.format(obj)[0])
        data = {"text/plain": repr(obj)}
        for mime, attr in _REPRS if not isinstance(obj, type) else ():
            try:
                value = getattr(obj, attr, lambda: None)()
            except Exception:  # a broken optional repr must not fail the cell
                continue
            if value is not None:
                data[mime] = value
        return data

    def record(self, output: dict[str, Any]) -> None:
        if "data" in output:
            output["data"] = bundle(output["data"])
        self.outputs.append(output)

    def stream(self, name: str, text: str) -> None:
        last = self.outputs[-1] if self.outputs else None
        if last and last["output_type"] == "stream" and last["name"] == name and "text" not in last:
            last["_capture"].add(text)
        else:
            self.outputs.append({"output_type": "stream", "name": name, "_capture": Capture(text)})

    def _finish_outputs(self) -> None:
        """Stream outputs captured as chunks become nbformat's one `text` string each."""
        for output in self.outputs:
            capture = output.pop("_capture", None)
            if capture is not None:
                output["text"] = capture.text()

    def _run_cells(self) -> bool:
        """Run every cell like a kernel would; False when one failed."""
        real_out, self.real_err = sys.stdout, sys.stderr
        sys.stdout, sys.stderr = Tee(real_out, "stdout", self), Tee(self.real_err, "stderr", self)
        try:
            count = 0
            for cell in self.spec.get("cells", []):
                if cell["role"] == "replay":
                    self._replay(cell)
                    continue
                if cell["role"] == "step" and self.random_state is not None:
                    _set_random_state(self.random_state)  # after the shared cells, as in one process
                    self.random_state = None
                count += 1
                self.outputs = []
                started = time.perf_counter()
                error, shown = self._run_cell(cell, count)
                if self.shell is None:
                    self._flush_figures()
                self._finish_outputs()
                t = round(time.perf_counter() - started, 3)
                self.done.append({**cell, "execution_count": count, "outputs": self.outputs, "seconds": t})
                if isinstance(error, SystemExit) and error.code in (None, 0):
                    # stops the step, successfully (see the module docstring): not an error output
                    self.outputs[:] = [o for o in self.outputs if o.get("ename") != "SystemExit"]
                    return True
                if error is not None and cell.get("raises") and isinstance(error, Exception):
                    self.expected.append((cell["index"], error))
                    if not shown:  # expected: shown, and the step goes on
                        self.outputs.append(_error_output(error))
                elif error is not None:
                    self._record_error(cell["index"], error, shown)
                    return False
            return True
        finally:
            sys.stdout, sys.stderr = real_out, self.real_err

    def _run_cell(self, cell: dict[str, Any], count: int) -> tuple[BaseException | None, bool]:
        """The error that ended the cell, if any, and whether it is already shown as an output."""
        if self.shell is not None:
            # the notebook's own source: IPython transforms magics exactly as in Jupyter, and shows
            # errors (SystemExit included) as the kernel does
            result = self.shell.run_cell(cell.get("source", cell["code"]), store_history=True)
            error = result.error_before_exec or result.error_in_exec
            return error, error is not None
        index, code = cell["index"], cell["code"]
        filename = f"<cell {index}>"
        linecache.cache[filename] = (len(code), None, code.splitlines(True), filename)
        try:
            tree = ast.parse(code, filename)
            last = None
            tail = tree.body[-1] if tree.body else None
            if isinstance(tail, ast.Expr) and not code.rstrip().endswith(";"):  # `;` hides it, as in Jupyter
                tree.body.pop()
                last = ast.Expression(tail.value)
            exec(compile(tree, filename, "exec"), self.ns)
            if last is not None:
                value = eval(compile(last, filename, "eval"), self.ns)
                if value is not None:
                    result = {"output_type": "execute_result", "data": self._mime(value), "metadata": {}}
                    self.record({**result, "execution_count": count})
        except BaseException as error:  # SystemExit and KeyboardInterrupt end the step too
            return error, False
        return None, False

    def _replay(self, cell: dict[str, Any]) -> None:
        """Run what an earlier step imported or set up (see converter/step/carry.py), silently."""
        import contextlib
        import io

        try:
            with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
                exec(compile(cell["code"], f"<replay of cell {cell['index']}>", "exec"), self.ns)
        except Exception as error:  # the step's own cells then fail, or not, as they would
            where = f"cell {cell['index']} of step {cell.get('step', '?')!r}"
            print(
                f"cellpipe: warning: could not replay {where}: {type(error).__name__}: {error}",
                file=self.real_err,
            )

    def _record_error(self, index: int, error: BaseException, shown: bool = False) -> None:

        ename, evalue = type(error).__name__, str(error)
        if isinstance(error, SyntaxError) and shown:
            evalue = f"{error.msg} (line {error.lineno})"  # not IPython's internal file name
        self.error_cell = index
        self.failure = f"cell {index} raised {ename}: {evalue}"
        missing = getattr(error, "name", None) if isinstance(error, ModuleNotFoundError) else None
        dist = self.spec.get("requirements", {}).get(str(missing).split(".")[0]) if missing else None
        if dist:
            self.failure += f" (install it with: pip install {dist})"
        if shown:  # the shell recorded it, as ipykernel would
            return
        self.outputs.append(output := _error_output(error))
        self.real_err.write("\n".join(output["traceback"]) + "\n")
        self.real_err.flush()

    def _flush_figures(self) -> None:
        """Open matplotlib figures become PNG display outputs, as the inline backend does."""
        plt = sys.modules.get("matplotlib.pyplot")
        if plt is None:
            return
        import io

        try:
            for number in plt.get_fignums():
                figure, buffer = plt.figure(number), io.BytesIO()
                figure.savefig(buffer, format="png", bbox_inches="tight")
                data = {"image/png": buffer.getvalue(), "text/plain": repr(figure)}
                self.record({"output_type": "display_data", "data": data, "metadata": {}})
            plt.close("all")
        except Exception as error:
            print(f"cellpipe: warning: could not capture a figure: {error}", file=sys.stderr)

    def _save_outputs(self, outputs: dict[str, str]) -> None:
        serve = self.spec.get("serve")
        if serve and serve["output"] in outputs:
            try:  # choose_model is in the program only where needed (converter/step/model_choice.py)
                chosen = globals()["choose_model"](self.ns, serve)
            except ValueError as error:
                raise StepFailed(str(error)) from None
            print(f"cellpipe: serving {chosen!r} as the {serve['framework']} model", file=sys.stderr)
            save_value(self.ns[chosen], outputs.pop(serve["output"]))
        for name, path in outputs.items():
            if name == RANDOM_STATE:
                save_value(_random_state(), path)
                continue
            if name not in self.ns:
                raise StepFailed(f"output variable {name!r} is not defined after the step's cells ran")
            try:
                save_value(self.ns[name], path)
            except Exception as error:
                raise StepFailed(_unpassable(name, self.ns[name], self.name, error, path)) from None

    def _write_metrics(self, args: dict[str, Any]) -> None:
        values: dict[str, int | float | bool] = {}
        for name in self.spec.get("metrics", []):
            if name not in self.ns:
                print(f"cellpipe: warning: metric {name!r} was never assigned: skipped", file=sys.stderr)
                continue
            value = self.ns[name]
            if type(value).__module__ == "numpy" and getattr(value, "ndim", None) == 0:
                value = value.item()
            if isinstance(value, int | float) and not (isinstance(value, float) and not math.isfinite(value)):
                values[name] = value
            else:
                print(f"cellpipe: warning: metric {name!r} = {value!r} is not a number", file=sys.stderr)
        if "metrics" in args:
            _write(args["metrics"], json.dumps(values))
        if "executor-output" in args and self.spec.get("metrics"):  # merged into the Metrics artifact
            metadata = {name: float(value) for name, value in values.items()}
            executor_output = {"artifacts": {"metrics": {"artifacts": [{"metadata": metadata}]}}}
            _write(args["executor-output"], json.dumps(executor_output))
            # KFP keeps metric values in ML Metadata, which its REST API does not show: this log line
            # is how `cellpipe run --engine kfp` reads them back (through the pod log).
            print(METRICS_LOG_PREFIX + json.dumps(metadata, sort_keys=True), flush=True)

    def _write_results(self, args: dict[str, Any]) -> None:
        try:
            if "cell-outputs" in args:
                keys = ("index", "role", "execution_count", "outputs", "seconds")
                cells = [{k: c.get(k) for k in keys} for c in self.done]
                status = "error" if self.failure else "ok"
                result = {"cells": cells, "status": status, "error_cell": self.error_cell}
                _write(args["cell-outputs"], json.dumps(result))
            if "report" in args:
                _write(args["report"], self._report())
        except OSError as error:
            self.failure = self.failure or f"cannot write results: {error}"

    def _report(self) -> str:
        """One self-contained HTML page, like a rendered notebook of this step."""
        title = html.escape(self.name)
        status = f"failed: {self.failure}" if self.failure else "succeeded"
        parts = [
            f'<!DOCTYPE html><html><head><meta charset="utf-8"><title>{title}</title><style>{_CSS}</style>',
            f"</head><body><h1>Step {title}</h1><p>{html.escape(str(self.spec.get('notebook', '')))}: ",
            f'<span class="{"error" if self.failure else ""}">{html.escape(status)}</span></p>',
        ]
        ran = {c["index"]: c for c in self.done}
        for cell in self.spec.get("cells", []):
            if cell["role"] == "replay":
                continue  # an earlier step's imports and settings, run silently
            done = ran.get(cell["index"])
            ran_as = f" [{done['execution_count']}] {done['seconds']} s" if done else ": not run"
            head = f"cell {cell['index']}{ran_as}"
            body = f'<pre class="src">{escaped(cell.get("source", cell["code"]))}</pre>'
            body += "".join(render_output(o) for o in done["outputs"]) if done else ""
            if cell.get("role") in _SHARED_ROLES:
                head += f" ({cell['role']})"
                parts.append(f'<details><summary class="head">{head}</summary>{body}</details>')
            else:
                css = "cell" if done else "cell skipped"
                parts.append(f'<div class="{css}"><div class="head">{head}</div>{body}</div>')
        return "".join(parts) + "</body></html>\n"


def _unpassable(name: str, value: object, step: str, error: Exception, path: str) -> str:
    """Why `value` cannot go to the steps that read it, and what to do: no artifact paths."""
    import io
    import socket
    import threading

    kind = type(value)
    label = kind.__name__.lower()
    iterator = hasattr(value, "__next__") and hasattr(value, "__iter__")
    if isinstance(value, io.IOBase):
        fix = f"pass what it holds ({name}.read()) or its file name, and open the file where it is read"
    elif isinstance(value, types.GeneratorType) or iterator:
        fix = f"pass list({name}) instead, or consume it in the step that makes it"
    elif isinstance(value, socket.socket) or "connect" in label or "cursor" in label:
        fix = "open the connection in the step that uses it, or pass the data you fetched with it"
    elif isinstance(value, type(threading.Lock())) or "lock" in label:
        fix = "create it in the step that uses it"
    else:
        fix = "keep the cells that use it in one step, or pass the plain data it holds"
    reason = str(error).replace(str(path), "").strip() or type(error).__name__
    return (
        f"value {name!r} ({kind.__module__}.{kind.__qualname__}) made in step {step!r} cannot be passed "
        f"to the steps that read it ({reason}): {fix}"
    )


def _limit_threads() -> None:
    """Hold thread pools loaded before the step started (the fork server's numpy, scikit-learn...)
    to the step's share of the CPUs, which the local engine puts in CELLPIPE_THREADS; pools loaded
    later size themselves from OMP_NUM_THREADS and friends, set beside it."""
    threads = os.environ.get("CELLPIPE_THREADS", "")
    if not threads.isdigit() or not any(m in sys.modules for m in ("numpy", "scipy", "sklearn", "torch")):
        return
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return
    threadpool_limits(int(threads))
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(int(threads))


def _random_state() -> dict[str, Any]:
    """The global generators' state: `random`'s, and numpy's when numpy is loaded."""
    import random

    state: dict[str, Any] = {"random": random.getstate()}
    np = sys.modules.get("numpy")
    if np is not None:
        state["numpy"] = np.random.get_state()
    return state


def _set_random_state(state: dict[str, Any]) -> None:
    import random

    random.setstate(state["random"])
    if "numpy" in state:
        import numpy as np

        np.random.set_state(state["numpy"])


def _write(path: str, text: str) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(text, encoding="utf-8")


def run_step(spec: dict[str, Any], argv: list[str]) -> int:
    """Run one pipeline step as described by `spec` with command-line `argv`; the exit status."""
    return _Step(spec).run(argv)
