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
import base64
import html
import importlib.util
import json
import linecache
import math
import os
import re
import shutil
import sys
import time
import types
from pathlib import Path
from typing import Any

_VALUE_FILES = (
    "value.npy",
    "value.columns",  # a folder: one .npy per column
    "value.arrow",
    "value.parquet",  # frames saved before Arrow IPC: still read
    "value.joblib",
    "value.pt",
    "value.json",
    "value.pkl",
)
_MMAP_BYTES = 1 << 20  # smaller arrays are read outright: a memory map costs more than it saves
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
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
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


# ---------------------------------------------------------------- serialization


METRICS_LOG_PREFIX = "cellpipe-metrics: "  # a pod log line carrying the step's metrics as JSON


def save_value(value: object, path: str | os.PathLike[str]) -> str:
    """Save `value` into the artifact directory `path` in the fastest faithful format; return it."""
    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    for name in (*_VALUE_FILES, "meta.json"):  # a stale file would win the load dispatch
        if (folder / name).is_dir():
            shutil.rmtree(folder / name)
        (folder / name).unlink(missing_ok=True)
    meta: dict[str, Any] = {}
    fmt = _save_typed(value, folder, meta) or _save_pickle(value, folder)
    cls = type(value)
    meta.update(format=fmt, type=f"{cls.__module__}.{cls.__qualname__}")
    saved = folder / f"value.{fmt}"
    meta["nbytes"] = (
        sum(f.stat().st_size for f in saved.iterdir()) if saved.is_dir() else saved.stat().st_size
    )
    (folder / "meta.json").write_text(json.dumps(meta))
    return fmt


def _save_typed(value: Any, folder: Path, meta: dict[str, Any]) -> str | None:
    """Formats that beat pickle for their type; None when none applies."""
    np, pd = sys.modules.get("numpy"), sys.modules.get("pandas")
    if np is not None and type(value) is np.ndarray and not value.dtype.hasobject:
        with open(folder / "value.npy", "wb") as file:  # a real file: np.save streams, no copy
            np.save(file, value, allow_pickle=False)
        return "npy"
    if pd is not None and type(value) in (pd.DataFrame, pd.Series):
        is_series = type(value) is pd.Series
        name = value.name if is_series else None
        frame = value.to_frame("value") if is_series else value
        if (name is None or type(name) in (str, int, float, bool)) and _parquet_faithful(frame, pd):
            if is_series:
                meta["series"] = {"name": name}
            if _save_columns(frame, folder, meta, np, pd):
                return "columns"
            try:  # Arrow IPC, uncompressed: written ~5x faster than Parquet, memory-mapped on load
                from pyarrow import feather

                feather.write_feather(frame, folder / "value.arrow", compression="uncompressed")
            except Exception:  # pyarrow missing or a dtype it cannot write: pickle instead
                (folder / "value.arrow").unlink(missing_ok=True)
                meta.pop("series", None)
            else:
                return "arrow"
    sklearn_base = sys.modules.get("sklearn.base")
    if sklearn_base is not None and isinstance(value, sklearn_base.BaseEstimator) and _by_reference(value):
        try:
            import joblib
        except ImportError:
            return None
        joblib.dump(value, folder / "value.joblib")
        return "joblib"
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(value, torch.Tensor | torch.nn.Module):
        try:  # classes defined in cells live in __main__: cloudpickle stores them by value
            import cloudpickle as pickler
        except ImportError:
            import pickle as pickler
        torch.save(value, folder / "value.pt", pickle_module=pickler)
        return "pt"
    if _json_exact(value):
        (folder / "value.json").write_text(json.dumps(value))
        return "json"
    return None


def _save_columns(frame: Any, folder: Path, meta: dict[str, Any], np: Any, pd: Any) -> bool:
    """Plain numpy columns and a RangeIndex: one .npy per column, as fast as an array both ways.

    No conversion on either side (Arrow copies a frame into its own buffers and back); the consumer
    memory-maps each column copy-on-write (see `_load_array`). False, writing nothing, for any other frame.
    """
    index = frame.index
    plain = all(isinstance(t, np.dtype) and t.kind in "biufcmM" for t in frame.dtypes)
    if type(index) is not pd.RangeIndex or frame.columns.name is not None or not plain:
        return False
    target = folder / "value.columns"
    target.mkdir()
    for number, name in enumerate(frame.columns):
        with open(target / f"{number}.npy", "wb") as file:
            np.save(file, frame[name].to_numpy(), allow_pickle=False)
    meta["columns"] = list(frame.columns)
    meta["index"] = {"start": index.start, "stop": index.stop, "step": index.step, "name": index.name}
    return True


def _load_array(file: Path) -> Any:
    import numpy as np

    if file.stat().st_size >= _MMAP_BYTES:
        try:  # nothing read until used; copy-on-write, so cells may change it (the file never does)
            return np.load(file, mmap_mode="c", allow_pickle=False).view(np.ndarray)
        except (OSError, ValueError):  # a file system without mmap: read it
            pass
    with open(file, "rb") as handle:
        return np.load(handle, allow_pickle=False)


def _parquet_faithful(frame: Any, pd: Any) -> bool:
    """Parquet round-trips a frame only with unique string labels and homogeneous columns."""
    labels = list(frame.columns)
    names = [*frame.index.names, frame.columns.name]
    if not all(type(c) is str for c in labels) or len(set(labels)) != len(labels):
        return False
    if not all(n is None or type(n) is str for n in names):
        return False
    index = frame.index
    columns = [frame[c] for c in labels] + [index.get_level_values(i) for i in range(index.nlevels)]
    infer = pd.api.types.infer_dtype
    return all(c.dtype != object or infer(c, skipna=True) in ("string", "empty") for c in columns)


def _by_reference(estimator: Any) -> bool:
    """joblib pickles classes by reference: fine unless a part was defined in the notebook."""
    try:
        parts = [estimator, *estimator.get_params(deep=True).values()]
    except Exception:
        return False
    return not any("__main__" in (type(p).__module__, getattr(p, "__module__", None)) for p in parts)


def _json_exact(value: object) -> bool:
    """True when JSON gives back exactly this value (no tuples, no int keys, no subclasses)."""
    try:
        kind = type(value)
        if kind in (type(None), bool, int, float, str):
            return True
        if kind is list:
            return all(_json_exact(v) for v in value)  # type: ignore[attr-defined]
        if kind is dict:
            return all(type(k) is str and _json_exact(v) for k, v in value.items())  # type: ignore[attr-defined]
    except RecursionError:  # cyclic or absurdly deep: pickle handles it
        pass
    return False


def _save_pickle(value: object, folder: Path) -> str:
    try:
        import cloudpickle as pickler
    except ImportError:
        import pickle as pickler
    target = folder / "value.pkl"
    try:
        with open(target, "wb") as file:
            pickler.dump(value, file, protocol=5)
    except BaseException:
        target.unlink(missing_ok=True)
        raise
    return "pkl"


def load_value(path: str | os.PathLike[str]) -> object:
    """Load what `save_value` wrote into `path`, dispatching on the value file present."""
    folder = Path(path)
    meta_file = folder / "meta.json"
    meta = json.loads(meta_file.read_text()) if meta_file.exists() else {}
    file = next((folder / n for n in _VALUE_FILES if (folder / n).exists()), None)
    if file is None:
        raise FileNotFoundError(f"no saved value in {folder}")
    fmt = file.suffix[1:]
    if fmt == "npy":
        return _load_array(file)
    if fmt in ("columns", "arrow", "parquet"):
        import pandas as pd

        if fmt == "columns":
            columns = {name: _load_array(file / f"{n}.npy") for n, name in enumerate(meta["columns"])}
            index = meta["index"]
            rows = pd.RangeIndex(index["start"], index["stop"], index["step"], name=index["name"])
            frame = pd.DataFrame(columns, index=rows, copy=False)  # no copy: the mapped arrays
        elif fmt == "arrow":
            from pyarrow import feather

            # Memory-mapped, then one copy into pandas' own (writable) blocks: cells may change it.
            frame = feather.read_table(file, memory_map=True).to_pandas()
        else:
            frame = pd.read_parquet(file, engine="pyarrow")
        if "series" not in meta:
            return frame
        return frame["value"].rename(meta["series"]["name"])
    if fmt == "joblib":
        import joblib

        return joblib.load(file)
    if fmt == "pt":
        import torch

        where = None if torch.cuda.is_available() else "cpu"  # saved on a GPU pod, loaded on CPU
        return torch.load(file, map_location=where, weights_only=False)
    if fmt == "json":
        return json.loads(file.read_text())
    import pickle

    with open(file, "rb") as handle:
        return pickle.load(handle)


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


class _Capture:
    """One stream output's text, captured in linear time with bounded memory.

    Chunks are kept in a list (growing one string by ``+=`` copies it on every write: quadratic in
    the bytes printed). Past `limit` characters the middle is dropped: the first half of the limit
    stays, then the most recent half, with a line saying how much was cut and why. The step's log
    (the pod log, or the local engine's step log) gets every line regardless.
    """

    limit = int(os.environ.get("CELLPIPE_OUTPUT_LIMIT", 64 * 1024 * 1024))  # characters per output

    def __init__(self, text: str) -> None:
        self.head: list[str] = []
        self.head_size = 0
        self.tail: list[str] = []  # used once the head is full; oldest chunks dropped first
        self.tail_start = 0  # index of the oldest chunk still kept in `tail`
        self.tail_size = 0
        self.cut_chars = self.cut_lines = 0
        self.add(text)

    def add(self, text: str) -> None:
        half = self.limit // 2
        if self.head_size < half and not self.tail:
            self.head.append(text)
            self.head_size += len(text)
            return
        self.tail.append(text)
        self.tail_size += len(text)
        while self.tail_size > half and len(self.tail) - self.tail_start > 1:
            dropped = self.tail[self.tail_start]
            self.tail[self.tail_start] = ""
            self.tail_start += 1
            self.tail_size -= len(dropped)
            self.cut_chars += len(dropped)
            self.cut_lines += dropped.count("\n")
        if self.tail_start > 1024 and self.tail_start * 2 > len(self.tail):
            del self.tail[: self.tail_start]  # amortized: each chunk is moved at most once more
            self.tail_start = 0

    def text(self) -> str:
        head = "".join(self.head)
        if not self.cut_chars:
            return head + "".join(self.tail)
        if not head.endswith("\n"):
            head += "\n"
        note = (
            f"[cellpipe: {self.cut_lines:,} lines ({self.cut_chars:,} characters) of output cut here to "
            f"bound the step's memory (CELLPIPE_OUTPUT_LIMIT={self.limit}); the step log has every line]\n"
        )
        return head + note + "".join(self.tail[self.tail_start :])


class _Tee:
    """A stdout/stderr stand-in: writes through at once (pod log) and records a stream output."""

    def __init__(self, real: Any, name: str, step: _Step) -> None:
        self.real, self.name, self.step = real, name, step

    def write(self, text: str) -> int:
        self.real.write(text)
        if "\n" in text:
            self.real.flush()
        self.step.stream(self.name, text)
        return len(text)

    def flush(self) -> None:
        self.real.flush()

    def __getattr__(self, attr: str) -> Any:
        return getattr(self.real, attr)


def _bundle(data: dict[str, Any]) -> dict[str, Any]:
    """A MIME bundle as nbformat stores it: binary images base64, everything else text or JSON."""
    out: dict[str, Any] = {}
    for mime, value in data.items():
        if isinstance(value, tuple):  # _repr_png_ may return (data, metadata)
            value = value[0]
        if isinstance(value, bytes):
            binary = mime.startswith("image/") and "svg" not in mime
            value = base64.b64encode(value).decode() if binary else value.decode(errors="replace")
        elif not (isinstance(value, str) or "json" in mime):
            value = str(value)
        out[mime] = value
    return out


def _render(output: dict[str, Any]) -> str:
    """One nbformat output as report HTML, preferring the richest representation."""
    kind = output["output_type"]
    if kind == "stream":
        return f'<pre class="{output["name"]}">{_text(output["text"])}</pre>'
    if kind == "error":
        return f'<pre class="error">{_text(chr(10).join(output["traceback"]))}</pre>'
    data = output["data"]
    if "text/html" in data:
        return f"<div>{data['text/html']}</div>"
    for mime in ("image/svg+xml", "image/png", "image/jpeg"):
        if mime in data:
            raw = data[mime].encode() if "svg" in mime else None
            encoded = base64.b64encode(raw).decode() if raw is not None else data[mime]
            return f'<img src="data:{mime};base64,{encoded}">'
    for mime in ("text/markdown", "text/latex", "text/plain"):
        if mime in data:
            return f"<pre>{_text(data[mime])}</pre>"
    return ""


def _text(text: str) -> str:
    return html.escape(_ANSI.sub("", text))


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
        self.real_err.write(_ANSI.sub("", "\n".join(stb)) + "\n")
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
            output["data"] = _bundle(output["data"])
        self.outputs.append(output)

    def stream(self, name: str, text: str) -> None:
        last = self.outputs[-1] if self.outputs else None
        if last and last["output_type"] == "stream" and last["name"] == name and "text" not in last:
            last["_capture"].add(text)
        else:
            self.outputs.append({"output_type": "stream", "name": name, "_capture": _Capture(text)})

    def _finish_outputs(self) -> None:
        """Stream outputs captured as chunks become nbformat's one `text` string each."""
        for output in self.outputs:
            capture = output.pop("_capture", None)
            if capture is not None:
                output["text"] = capture.text()

    def _run_cells(self) -> bool:
        """Run every cell like a kernel would; False when one failed."""
        real_out, self.real_err = sys.stdout, sys.stderr
        sys.stdout, sys.stderr = _Tee(real_out, "stdout", self), _Tee(self.real_err, "stderr", self)
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
            body = f'<pre class="src">{_text(cell.get("source", cell["code"]))}</pre>'
            body += "".join(_render(o) for o in done["outputs"]) if done else ""
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
