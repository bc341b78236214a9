"""Files cellpipe writes for the user: `run -o` and `--junit`, `compile -o`, `graph -o`.

Each target is checked before any work starts, so an hour-long run never ends in "is a
directory", and the check creates nothing. Files are written under a temporary name next to
the target and renamed into place (a reader never sees half a file), with the permissions the
user's umask gives a new file: 0644 under the usual 022, as papermill writes its notebooks.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from converter.errors import CellpipeError


def file_mode() -> int:
    """0666 minus the umask; read from /proc where possible (setting the umask to read it would
    race with threads creating files)."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return 0o666 & ~int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


def _existing_folder(path: Path, option: str, target: Path) -> None:
    """The nearest existing ancestor of `path` must be a folder we may write in."""
    ancestor = path
    while not ancestor.exists() and ancestor != ancestor.parent:
        if ancestor.is_symlink():
            raise CellpipeError(f"cannot write {option} {target}: {ancestor} is a broken symbolic link")
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise CellpipeError(f"cannot write {option} {target}: {ancestor} is not a folder")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        raise CellpipeError(f"cannot write {option} {target}: no permission to write in {ancestor}")


def check_file_target(path: Path, option: str) -> None:
    """A `CellpipeError` (one line, naming the option) if `path` cannot become a file."""
    if path.is_dir():
        raise CellpipeError(f"cannot write {option} {path}: it is a folder; give a file name")
    if path.exists() and not path.is_file():
        raise CellpipeError(f"cannot write {option} {path}: it is not a regular file")
    if path.exists() and not os.access(path.parent, os.W_OK | os.X_OK):
        raise CellpipeError(f"cannot write {option} {path}: no permission to write in {path.parent}")
    _existing_folder(path.parent, option, path)


def check_folder_target(path: Path, option: str) -> None:
    """A `CellpipeError` if `path` is not, and cannot become, a folder we may write in."""
    if path.exists() and not path.is_dir():
        raise CellpipeError(f"cannot write {option} {path}: it is a file, not a folder")
    _existing_folder(path, option, path)


def write_file(path: Path, data: bytes) -> None:
    """Replace `path` atomically with `data`, mode from the umask; OSError is a `CellpipeError`."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as error:
        raise CellpipeError(f"cannot write {path}: {error.strerror or error}") from None
    try:
        os.fchmod(fd, file_mode())
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)
    except OSError as error:
        Path(tmp).unlink(missing_ok=True)
        raise CellpipeError(f"cannot write {path}: {error.strerror or error}") from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
