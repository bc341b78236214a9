"""Step processes of a local run: start them (through the fork server, else as plain subprocesses),
capture their output line by line, kill their process groups, and report how they ended.

One I/O thread owns every pipe and the fork server's control socket (a selector over all of
them), so a step that prints a lot costs no thread of its own and a step is reported finished
only after its exit status is known *and* its output is fully read: the engine never sees a step
end before its last log line. When a step's main process exits, what is left of its process group
is killed, as a pod's containers end with their main process.

If the fork server cannot be used (no fork on this platform, it crashed, it was disabled), steps
start as ``python -c PROGRAM ARGS`` subprocesses, which behave the same, only slower to start.
Steps in flight in a fork server that dies are reported lost (no exit status exists for them).
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import json
import os
import selectors
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

_READ_SIZE = 1 << 16
_LONGEST_LINE = 1 << 16  # a line longer than this (a progress bar without newlines) is cut
_DRAIN_SECONDS = 2.0  # after exit, how long a grandchild that escaped the group may hold the pipes
_TAIL_LINES = 20
STEP_MARKER = "CELLPIPE_STEP_PROCESS"  # in every step's environment: "<engine token>/<step#attempt>/"


@dataclass(frozen=True)
class Launch:
    """One attempt of a step: `python -c program argv...` in `cwd` with `env` added."""

    key: str
    program: str
    program_path: Path  # the same text in a file: the fork server reads it from there
    argv: Sequence[str]
    cwd: Path
    env: dict[str, str]
    log_path: Path
    cpus: Sequence[int] | None = None  # CPU affinity (a cpu-limit), None for all
    fork: bool = True  # False: always a fresh interpreter (GPU steps: CUDA and fork do not mix)


@dataclass(frozen=True)
class Exit:
    key: str
    code: int | None  # exit status, negative for "killed by signal -code", None when lost
    stderr_tail: tuple[str, ...]  # the last lines the step wrote to stderr
    lost: str | None = None  # why there is no exit status


@dataclass
class _Attempt:
    launch: Launch
    log: BinaryIO
    streams: dict[int, str]  # open read fds -> "stdout"/"stderr"
    buffers: dict[int, bytes]
    via_fork_server: bool
    registered: bool = False  # its pipes are in the I/O thread's selector
    pid: int | None = None
    pending_signal: int | None = None
    code: int | None = None
    exited: bool = False
    exited_at: float = 0.0
    lost: str | None = None
    tail: collections.deque[str] = field(default_factory=lambda: collections.deque(maxlen=_TAIL_LINES))


def fork_server_supported() -> bool:
    """Linux only: macOS frameworks are not fork-safe and Windows has no fork."""
    return sys.platform.startswith("linux") and hasattr(os, "fork") and hasattr(socket, "send_fds")


class StepProcesses:
    """Starts and watches the step processes of one run; callbacks run on the I/O thread."""

    def __init__(
        self,
        on_line: Callable[[str, str, str], None],  # (key, stream, line)
        on_exit: Callable[[Exit], None],
        cwd: Path,
        preload: Sequence[str] = (),
        fork_server: bool = True,
        server_log: Path | None = None,
    ):
        self._on_line, self._on_exit = on_line, on_exit
        self._lock = threading.Lock()
        self._attempts: dict[str, _Attempt] = {}
        self._inbox: collections.deque[Callable[[], None]] = collections.deque()
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        self._selector.register(self._wake_r, selectors.EVENT_READ)
        self._closing = False
        self._server_gone = False
        self._token = f"{os.getpid()}.{time.time_ns():x}.{id(self):x}"  # tells this run's steps apart
        self._server: subprocess.Popen[bytes] | None = None
        self._control: socket.socket | None = None
        self.server_info: dict[str, Any] = {}  # the fork server's "ready" message: what it preloaded
        if fork_server and fork_server_supported():
            self._start_server(cwd, preload, server_log)
        self._thread = threading.Thread(target=self._loop, name="cellpipe-step-io", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ called by the engine

    def start(self, launch: Launch) -> None:
        (out_r, out_w), (err_r, err_w) = _pipe(), _pipe()
        launch.log_path.parent.mkdir(parents=True, exist_ok=True)
        attempt = _Attempt(
            launch,
            open(launch.log_path, "ab"),  # noqa: SIM115 (closed when the attempt ends)
            {out_r: "stdout", err_r: "stderr"},
            {out_r: b"", err_r: b""},
            via_fork_server=False,
        )
        with self._lock:  # atomic with the I/O thread's view of a dying fork server (see _server_died)
            self._attempts[launch.key] = attempt
            control = self._control if launch.fork and not self._server_gone else None
            attempt.via_fork_server = control is not None
        try:
            if control is not None:
                # if the server is gone, sending fails or the request is never served: either way
                # _server_died starts the attempt as a subprocess (it has no pid yet)
                self._spawn_forked(control, launch, out_w, err_w)
            else:
                self._spawn_subprocess(attempt, out_w, err_w)
        finally:
            os.close(out_w)
            os.close(err_w)
        self._post(lambda: self._register(attempt))

    def kill(self, key: str) -> None:
        """SIGKILL the attempt's whole process group (now, or as soon as its pid is known)."""
        with self._lock:
            attempt = self._attempts.get(key)
            if attempt is None or attempt.exited:
                return
            if attempt.pid is None:
                attempt.pending_signal = signal.SIGKILL
                return
            pid = attempt.pid
        _killpg(pid)

    def pid(self, key: str) -> int | None:
        with self._lock:
            attempt = self._attempts.get(key)
            return None if attempt is None or attempt.exited else attempt.pid

    def _marker(self, key: str) -> str:
        return f"{self._token}/{key}/"

    def close(self) -> None:
        """Kill every step still running (and all they started), stop the fork server and the I/O thread."""
        with self._lock:
            pids = [a.pid for a in self._attempts.values() if a.pid is not None and not a.exited]
        for pid in pids:
            _killpg(pid)
        kill_marked(self._token + "/")
        self._closing = True
        self._post(lambda: None)
        self._thread.join(timeout=_DRAIN_SECONDS + 3)
        if self._control is not None:
            self._control.close()
            self._control = None
        if self._server is not None:
            try:
                self._server.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._server.kill()
                self._server.wait()
        for attempt in self._attempts.values():
            for fd in attempt.streams:
                os.close(fd)
            attempt.log.close()
        os.close(self._wake_r)
        os.close(self._wake_w)
        self._selector.close()

    # ------------------------------------------------------------------ starting

    def _start_server(self, cwd: Path, preload: Sequence[str], server_log: Path | None) -> None:
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        source = (Path(__file__).parent / "zygote.py").read_text(encoding="utf-8")
        env = dict(os.environ)
        env.setdefault("MPLBACKEND", "Agg")  # as the step runtime does, before matplotlib is preloaded
        if server_log is not None:
            server_log.parent.mkdir(parents=True, exist_ok=True)
        log = open(server_log, "ab") if server_log is not None else subprocess.DEVNULL  # noqa: SIM115
        try:
            self._server = subprocess.Popen(
                [sys.executable, "-c", source, str(theirs.fileno()), json.dumps(list(preload))],
                cwd=cwd,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=log,
                pass_fds=[theirs.fileno()],
                start_new_session=True,
            )
        except OSError:
            ours.close()
            return
        finally:
            theirs.close()
            if not isinstance(log, int):
                log.close()
        self._control = ours
        self._selector.register(ours, selectors.EVENT_READ)

    def _spawn_forked(self, control: socket.socket, launch: Launch, out_w: int, err_w: int) -> None:
        request = {
            "op": "spawn",
            "id": launch.key,
            "program_path": str(launch.program_path),
            "argv": list(launch.argv),
            "cwd": str(launch.cwd),
            "env": {**launch.env, STEP_MARKER: self._marker(launch.key)},
            "cpus": list(launch.cpus) if launch.cpus else None,
        }
        with contextlib.suppress(OSError):
            socket.send_fds(control, [json.dumps(request).encode()], [out_w, err_w])

    def _spawn_subprocess(self, attempt: _Attempt, out_w: int, err_w: int) -> None:
        launch = attempt.launch
        try:
            popen = subprocess.Popen(
                [sys.executable, "-c", launch.program, *launch.argv],
                cwd=launch.cwd,
                env={**os.environ, **launch.env, STEP_MARKER: self._marker(launch.key)},
                stdin=subprocess.DEVNULL,
                stdout=out_w,
                stderr=err_w,
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )
        except OSError as error:
            attempt.lost = f"cannot start the step process: {error}"
            self._post(lambda: self._exited(attempt.launch.key, None))
            return
        if launch.cpus:
            with contextlib.suppress(OSError):
                os.sched_setaffinity(popen.pid, launch.cpus)
        with self._lock:
            attempt.pid = popen.pid
            pending = attempt.pending_signal
        if pending is not None:
            _killpg(popen.pid)

        def wait() -> None:
            code = popen.wait()
            self._post(lambda: self._exited(launch.key, code))

        threading.Thread(target=wait, name=f"cellpipe-wait-{launch.key}", daemon=True).start()

    # ------------------------------------------------------------------ the I/O thread

    def _post(self, action: Callable[[], None]) -> None:
        self._inbox.append(action)
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"x")

    def _register(self, attempt: _Attempt) -> None:
        attempt.registered = True
        for fd in attempt.streams:
            self._selector.register(fd, selectors.EVENT_READ, attempt)

    def _loop(self) -> None:
        while True:
            try:
                self._step()
            except Exception:  # a bug here must not leave the engine waiting forever for silent steps
                print("cellpipe: internal error in the step I/O thread:", file=sys.stderr)
                traceback.print_exc()
            if self._closing and not self._inbox:
                return

    def _step(self) -> None:
        for key, _ in self._selector.select(timeout=0.5):
            if self._selector.get_map().get(key.fd) is not key:
                continue  # closed (its number maybe reused) by an earlier event of this batch
            if key.fd == self._wake_r:
                with contextlib.suppress(BlockingIOError):
                    while os.read(self._wake_r, 512):
                        pass
            elif key.fileobj is self._control:
                self._control_message()
            else:
                self._read(key.data, key.fd)
        while self._inbox:
            self._inbox.popleft()()
        now = time.monotonic()
        with self._lock:
            stuck = [a for a in self._attempts.values() if a.exited and now - a.exited_at > _DRAIN_SECONDS]
        for attempt in stuck:
            for fd in list(attempt.streams):
                self._close_stream(attempt, fd)

    def _read(self, attempt: _Attempt, fd: int) -> None:
        try:
            data = os.read(fd, _READ_SIZE)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._close_stream(attempt, fd)
            return
        *lines, rest = (attempt.buffers[fd] + data).split(b"\n")
        if len(rest) > _LONGEST_LINE:
            lines.append(rest)
            rest = b""
        attempt.buffers[fd] = rest
        for raw in lines:
            self._line(attempt, fd, raw)
        attempt.log.flush()

    def _line(self, attempt: _Attempt, fd: int, raw: bytes) -> None:
        attempt.log.write(raw + b"\n")
        line = raw.decode("utf-8", errors="replace").removesuffix("\r")
        stream = attempt.streams[fd]
        if stream == "stderr":
            attempt.tail.append(line)
        self._on_line(attempt.launch.key, stream, line)

    def _close_stream(self, attempt: _Attempt, fd: int) -> None:
        rest = attempt.buffers.pop(fd, b"")
        if rest:
            self._line(attempt, fd, bytes(rest))
        if attempt.registered:
            self._selector.unregister(fd)
        os.close(fd)
        del attempt.streams[fd]
        self._maybe_done(attempt)

    def _control_message(self) -> None:
        assert self._control is not None
        try:
            data = self._control.recv(1 << 16)
        except OSError:
            data = b""
        if not data:
            self._server_died()
            return
        message = json.loads(data)
        op, key = message.get("op"), message.get("id")
        if op == "ready":
            self.server_info = message
            return
        with self._lock:
            attempt = self._attempts.get(key) if key is not None else None
        if attempt is None:
            return
        if op == "spawned":
            with self._lock:
                attempt.pid = message["pid"]
                pending = attempt.pending_signal
            if pending is not None:
                _killpg(message["pid"])
        elif op == "exited":
            self._exited(key, message["code"])
        elif op == "error":  # it could not fork: a fresh interpreter can still run the step
            attempt.via_fork_server = False
            self._restart_as_subprocess(attempt)

    def _server_died(self) -> None:
        """Steps the server forked have no parent to report them any more: lost, killed. Steps it
        never forked (it died preloading, say) start afresh as subprocesses, so a crash in an import
        shows up in the step's own log as it would without a fork server."""
        assert self._control is not None
        self._selector.unregister(self._control)
        with self._lock:
            self._server_gone = True
            orphans = [a for a in self._attempts.values() if a.via_fork_server and not a.exited]
        for attempt in orphans:
            attempt.via_fork_server = False
            if attempt.pid is None:
                self._restart_as_subprocess(attempt)
                continue
            _killpg(attempt.pid)
            attempt.lost = "step process lost: the fork server exited"
            self._exited(attempt.launch.key, None)

    def _restart_as_subprocess(self, attempt: _Attempt) -> None:
        for fd in list(attempt.streams):
            if attempt.registered:
                self._selector.unregister(fd)
            os.close(fd)
        (out_r, out_w), (err_r, err_w) = _pipe(), _pipe()
        attempt.streams, attempt.buffers = {out_r: "stdout", err_r: "stderr"}, {out_r: b"", err_r: b""}
        try:
            self._spawn_subprocess(attempt, out_w, err_w)
        finally:
            os.close(out_w)
            os.close(err_w)
        if attempt.registered:
            self._register(attempt)

    def _exited(self, key: str, code: int | None) -> None:
        with self._lock:
            attempt = self._attempts.get(key)
            if attempt is None or attempt.exited:
                return
            attempt.code, attempt.exited, attempt.exited_at = code, True, time.monotonic()
            pid = attempt.pid
        if pid is not None:
            _killpg(pid)  # what the step left behind ends with it, as in a pod
        kill_marked(self._marker(key))  # and so does what escaped its group (setsid, daemons)
        self._maybe_done(attempt)

    def _maybe_done(self, attempt: _Attempt) -> None:
        if not attempt.exited or attempt.streams:
            return
        with self._lock:
            self._attempts.pop(attempt.launch.key, None)
        attempt.log.close()
        self._on_exit(Exit(attempt.launch.key, attempt.code, tuple(attempt.tail), attempt.lost))


def _prctl() -> Callable[..., int] | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl: Callable[..., int] = ctypes.CDLL(None, use_errno=True).prctl
        return prctl
    except (OSError, AttributeError):
        return None


_PRCTL = _prctl()  # looked up before any fork: a child between fork and exec must not dlopen


def _die_with_parent() -> None:
    """In a step subprocess before exec: SIGKILL it if the engine dies (SIGKILL, OOM killer), as
    the fork server's children die with the fork server."""
    if _PRCTL is not None:
        _PRCTL(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG


def kill_marked(marker: str) -> int:
    """SIGKILL every process whose environment has ``STEP_MARKER`` starting with `marker`: a step's
    descendants, even those that left its process group and session (a daemon,
    ``Popen(start_new_session=True)``), as long as they keep the environment they inherited. The
    fork server is a child subreaper, so such processes of forked steps are its children, which it
    reaps. How many were killed.

    Reads ``/proc/PID/environ`` directly (a few milliseconds for a few hundred processes; psutil
    objects cost some 50 times that, on every step's end). Linux only; elsewhere nothing."""
    needle = f"\0{STEP_MARKER}={marker}".encode()
    killed = 0
    try:
        entries = os.listdir("/proc")
    except OSError:
        return 0
    for entry in entries:
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as handle:
                environ = b"\0" + handle.read()
        except OSError:  # gone, or someone else's
            continue
        if needle in environ:
            with contextlib.suppress(OSError):
                os.kill(int(entry), signal.SIGKILL)
                killed += 1
    return killed


def _pipe() -> tuple[int, int]:
    """A pipe whose read end never blocks the I/O thread."""
    read, write = os.pipe()
    os.set_blocking(read, False)
    return read, write


def _killpg(pgid: int) -> None:
    """Kill a step's process group; a step forked a moment ago may not lead its group yet
    (its first act is setsid), and then it is still alone: kill the process itself."""
    try:
        os.killpg(pgid, signal.SIGKILL)
    except ProcessLookupError:
        with contextlib.suppress(OSError):  # already gone
            os.kill(pgid, signal.SIGKILL)
    except OSError:
        pass
