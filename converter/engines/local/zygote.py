"""The fork server ("zygote") of a local run: pays a pipeline's imports once, forks one process per step.

Most of a step's start-up time is its imports cell (pandas, scikit-learn, ...) and IPython, which
every step runs its cells under. The local engine starts this program once per run as
``python -c SOURCE CONTROL_FD PRELOAD_JSON``; it runs the preload statements (the step runtime's
kernel-like IPython shell, made once here, then the imports of the pipeline's imports and
functions cells, with matplotlib's inline backend selected as ipykernel selects it), then waits
for spawn requests on a Unix SOCK_SEQPACKET socket. For each request it forks a child that becomes
exactly what ``python -c PROGRAM ARGS`` would be: its own session and process group (so a timeout or a cancel
kills its whole tree), stdout and stderr on pipes the engine passed over the socket, the step's
working folder and environment, ``sys.argv``, a fresh ``__main__`` module, and the *same* program
text, compiled and run. A crash, ``os._exit`` or SIGKILL in a child cannot touch the server or the
engine. The server reaps children and reports their exit status (negative: killed by that signal).

Known differences from a fresh interpreter, all harmless for notebook code: modules the imports
cells import are already in ``sys.modules`` (their import-time output is not repeated), every child
shares the server's str hash seed, and numpy's global random state is re-seeded from the OS in each
child (Python's ``random`` re-seeds itself after a fork).

It is self-contained (standard library only, nothing from cellpipe) because it runs from its source.
"""

from __future__ import annotations

import atexit
import contextlib
import gc
import importlib.util
import json
import os
import select
import signal
import socket
import sys
import threading
import time
import traceback
import types
from typing import Any, NoReturn

_MAX_MESSAGE = 1 << 20
INLINE_BACKEND = "module://matplotlib_inline.backend_inline"


def _send(sock: socket.socket, message: dict[str, Any]) -> None:
    with contextlib.suppress(OSError):  # the engine is gone; the main loop notices EOF
        sock.send(json.dumps(message).encode())


def _preload(statements: list[str]) -> dict[str, Any]:
    """Run each import statement on its own: one missing module must not stop the others."""
    started = time.perf_counter()
    failed = []
    scratch: dict[str, Any] = {"__name__": "__cellpipe_preload__"}
    for statement in statements:
        try:
            exec(compile(statement, "<cellpipe preload>", "exec"), scratch)
        except BaseException as error:  # SystemExit or KeyboardInterrupt from a module too
            failed.append(f"{statement}: {type(error).__name__}: {error}")
    return {
        "preloaded": len(statements) - len(failed),
        "failed": failed,
        "seconds": round(time.perf_counter() - started, 3),
    }


def _exit_status(error: SystemExit) -> int:
    """What the interpreter would exit with for this SystemExit."""
    code = error.code
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF
    print(code, file=sys.stderr)
    return 1


def _child(request: dict[str, Any], stdout_fd: int, stderr_fd: int, inherited: list[int]) -> NoReturn:
    """Become `python -c PROGRAM ARGV...` in the requested folder and environment; never returns."""
    status = 1
    try:
        os.setsid()
        signal.set_wakeup_fd(-1)
        for number in (signal.SIGCHLD, signal.SIGTERM, signal.SIGHUP):
            signal.signal(number, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        for fd in inherited:
            os.close(fd)
        os.dup2(stdout_fd, 1)
        os.dup2(stderr_fd, 2)
        os.close(stdout_fd)
        os.close(stderr_fd)
        os.chdir(request["cwd"])
        os.environ.update(request["env"])
        if request.get("cpus"):
            os.sched_setaffinity(0, request["cpus"])
        numpy_random = sys.modules.get("numpy.random")
        if numpy_random is not None:
            numpy_random.seed()  # a fresh interpreter seeds from the OS; the fork copied our state
        sys.argv = ["-c", *request["argv"]]
        with open(request["program_path"], encoding="utf-8") as handle:
            source = handle.read()
        main = types.ModuleType("__main__")
        sys.modules["__main__"] = main
        exec(compile(source, "<cellpipe step>", "exec"), main.__dict__)
        status = 0
    except SystemExit as error:
        status = _exit_status(error)
    except BaseException:
        traceback.print_exc()
        status = 1
    _finish(status)


def _finish(status: int) -> NoReturn:
    """Shut down like the interpreter does (threads, atexit, buffers), then leave without unwinding."""
    try:
        shutdown = getattr(threading, "_shutdown", None)
        if shutdown is not None:
            shutdown()
        atexit._run_exitfuncs()
        sys.stdout.flush()
        sys.stderr.flush()
    except BaseException:
        pass
    os._exit(status)


def _kill_all(children: dict[int, str]) -> None:
    """Kill the steps' process groups, and every process left to us as subreaper (what steps
    started and left behind, even forks that changed session and environment)."""
    for pid in children:
        with contextlib.suppress(OSError):
            os.killpg(pid, signal.SIGKILL)
    me = os.getpid()
    with contextlib.suppress(OSError):
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/stat", "rb") as stat:
                    ppid = int(stat.read().rsplit(b")", 1)[1].split()[1])
                if ppid == me:
                    os.kill(int(entry), signal.SIGKILL)
            except (OSError, ValueError, IndexError):
                continue


def _become_subreaper() -> None:
    """Linux: processes a step leaves behind (setsid'd daemons) become our children when their
    parent exits, rather than init's: they stay findable, and we reap them once the engine has
    killed them (it finds them by the marker in their environment)."""
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER


def serve(control_fd: int, preload: list[str]) -> None:
    """Preload, then fork children on request until the engine closes the socket."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the engine's to handle
    _become_subreaper()
    sock = socket.socket(fileno=control_fd)
    if importlib.util.find_spec("matplotlib_inline") is not None:  # before matplotlib is preloaded
        os.environ.setdefault("MPLBACKEND", INLINE_BACKEND)  # what the step runtime (and ipykernel) use
    summary = _preload(preload)
    for failure in summary["failed"]:
        print(f"cellpipe fork server: could not preload {failure}", file=sys.stderr)
    sys.stdout.flush()
    sys.stderr.flush()
    gc.collect()
    gc.freeze()  # keep the preloaded objects out of the children's collections: fewer copied pages
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_r, False)
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)  # a handler, so the wakeup fd gets the signal
    _send(sock, {"op": "ready", **summary})
    children: dict[int, str] = {}
    while True:
        ready, _, _ = select.select([control_fd, wake_r], [], [])
        if wake_r in ready:
            try:
                while os.read(wake_r, 512):
                    pass
            except BlockingIOError:
                pass
        while True:  # steps, and what they left behind (we are their subreaper)
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            ident = children.pop(pid, None)
            if ident is not None:
                _send(sock, {"op": "exited", "id": ident, "code": os.waitstatus_to_exitcode(status)})
        if control_fd not in ready:
            continue
        try:
            data, fds, _, _ = socket.recv_fds(sock, _MAX_MESSAGE, 4)
        except OSError:
            data, fds = b"", []
        if not data:  # the engine closed the socket or died: take the steps with us
            _kill_all(children)
            os._exit(0)
        request = json.loads(data)
        if request.get("op") != "spawn" or len(fds) != 2:
            for fd in fds:
                os.close(fd)
            _send(sock, {"op": "error", "id": request.get("id"), "message": "bad request"})
            continue
        try:
            pid = os.fork()
        except OSError as error:
            for fd in fds:
                os.close(fd)
            _send(sock, {"op": "error", "id": request["id"], "message": f"fork failed: {error}"})
            continue
        if pid == 0:
            _child(request, fds[0], fds[1], [sock.fileno(), wake_r, wake_w])
        for fd in fds:
            os.close(fd)
        children[pid] = request["id"]
        _send(sock, {"op": "spawned", "id": request["id"], "pid": pid})


if __name__ == "__main__":
    serve(int(sys.argv[1]), json.loads(sys.argv[2]))
