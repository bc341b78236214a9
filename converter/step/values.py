"""Values passed between steps: each is saved by type (npy, Arrow, joblib, pt, json, pickle) and loaded back.

Part of the step program: `converter.step.stepcode.runtime_source` inlines this module's body into
`runtime.py` where runtime imports it, so its imports must be ones runtime.py makes too (a test checks).
Engines, serving and the debug magic import it to read a run's values.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
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
