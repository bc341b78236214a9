"""File paths a cell reads and writes (best effort: string literals only)."""

from __future__ import annotations

import ast
import posixpath

from converter.notebook.analysis.nodes import _argument, _string
from converter.notebook.analysis.scopes import _Scopes

# Callables taking a file path: which positional argument (None: the first string literal among the
# first two, for `np.save(path, a)` as well as `joblib.dump(obj, path)`), else a keyword below.
_FIRST_ARGUMENT_READERS = (
    "read_csv", "read_parquet", "read_json", "read_pickle", "read_excel", "read_feather", "read_hdf",
    "read_stata", "read_orc", "read_table", "read_fwf", "read_sas", "read_spss", "read_xml",
    "read_ipc", "scan_csv", "scan_parquet", "loadtxt", "genfromtxt", "fromfile", "imread",
    "open_dataset", "read_file", "load_workbook",
)  # fmt: skip
_FIRST_ARGUMENT_WRITERS = (
    "to_csv", "to_parquet", "to_json", "to_pickle", "to_excel", "to_feather", "to_hdf", "to_stata",
    "to_orc", "to_html", "to_xml", "to_netcdf", "to_file", "write_csv", "write_parquet",
    "write_json", "write_ipc", "savefig", "savetxt", "savez", "savez_compressed", "imwrite",
    "imsave", "write_image", "write_html",
)  # fmt: skip
_READERS: dict[str, int | None] = {
    **dict.fromkeys(_FIRST_ARGUMENT_READERS, 0),
    "load": None,
    "load_model": None,
}
_WRITERS: dict[str, int | None] = {
    **dict.fromkeys(_FIRST_ARGUMENT_WRITERS, 0),
    "save": None,
    "dump": None,
    "save_model": None,
    "urlretrieve": 1,
}
_COPIERS = frozenset({"copy", "copy2", "copyfile", "move"})  # shutil: (source, destination)
_PATH_KEYWORDS = frozenset(
    {"path", "path_or_buf", "filepath_or_buffer", "fname", "filename", "file", "filepath", "uri"}
)


def _path_argument(node: ast.Call, index: int | None) -> str | None:
    if index is None:
        literal = next((s for a in node.args[:2] if (s := _string(a)) is not None), None)
        return literal if literal is not None else _string(_argument(node, 99, _PATH_KEYWORDS))
    return _string(_argument(node, index, _PATH_KEYWORDS))


def _path_object(node: ast.expr) -> str | None:
    """The literal in `Path("p")` / `pathlib.Path("p")`."""
    if isinstance(node, ast.Call) and len(node.args) == 1 and not node.keywords:
        func = node.func
        name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""
        if name in ("Path", "PurePath", "PosixPath"):
            return _string(node.args[0])
    return None


def _open_mode(node: ast.Call, index: int) -> str | None:
    """The literal mode of an open() call ("r" when absent), None when it is not a literal."""
    mode = _argument(node, index, ("mode",))
    return "r" if mode is None else _string(mode)


def _built_path(node: ast.expr) -> bool:
    """An f-string, a string concatenation or a join/Path call: a path computed at run time."""
    if isinstance(node, ast.JoinedStr | ast.BinOp):
        return True
    func = node.func if isinstance(node, ast.Call) else None
    name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""
    return name in ("join", "Path", "PurePath", "PosixPath", "abspath", "expanduser", "format")


_PATH_METHODS = frozenset({"read_text", "read_bytes", "write_text", "write_bytes", "touch", "unlink"})


class _Files(_Scopes):
    """Paths given to open(), pathlib, readers and writers."""

    def _file_paths(self, node: ast.Call, name: str, receiver: ast.expr | None) -> None:
        path_object = None if receiver is None else _path_object(receiver)
        if path_object is None and name in _PATH_METHODS and receiver is not None:
            self.paths_unknown = True  # a Path (or file-like) built elsewhere: which file is unknown
        if path_object is not None:
            if name in ("read_text", "read_bytes"):
                self._path(path_object, "r")
            elif name in ("write_text", "write_bytes", "touch"):
                self._path(path_object, "w")
            elif name == "open":
                self._path(path_object, _open_mode(node, 0))
        elif name == "open":
            path = _argument(node, 0, ("file", "filename", "fp"))
            self._computed(path)
            self._path(_string(path), _open_mode(node, 1))
        elif name in _READERS:
            index = _READERS[name]
            self._computed_path(node, index)
            self._path(_path_argument(node, index), "r")
        elif name in _WRITERS:
            index = _WRITERS[name]
            self._computed_path(node, index)
            self._path(_path_argument(node, index), "w")
        elif name in _COPIERS and receiver is not None:
            self._path(_string(_argument(node, 0, ("src",))), "r")
            self._path(_string(_argument(node, 1, ("dst",))), "w")

    def _computed_path(self, node: ast.Call, index: int | None) -> None:
        if index is not None:
            self._computed(_argument(node, index, _PATH_KEYWORDS))
        elif _path_argument(node, None) is None and any(_built_path(a) for a in node.args[:2]):
            self.paths_unknown = True  # np.save(f"{folder}/w.npy", a), joblib.dump(m, os.path.join(...))

    def _computed(self, path: ast.expr | None) -> None:
        """A file API given a path that is not a string literal: which file it touches is unknown."""
        if path is not None and _string(path) is None:
            self.paths_unknown = True

    def _path(self, path: str | None, mode: str | None) -> None:
        if not path or not mode or "://" in path or not path.strip() or "\0" in path:
            return
        path = posixpath.normpath(path)
        if "+" in mode or "r" in mode:
            self.paths_read.add(path)
        if "+" in mode or any(c in mode for c in "wax"):
            self.paths_written.add(path)
