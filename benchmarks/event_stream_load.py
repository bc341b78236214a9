"""Event-stream load: many server-sent-event clients on one run, every one must get every event in order.

    python benchmarks/event_stream_load.py [--clients 50] [--lines 2000]

Starts a Jupyter server with the cellpipe extension on 127.0.0.1 (a free port, a random token, a
temporary root directory and CELLPIPE_HOME), starts a run of a small notebook whose step prints
`--lines` log lines over a few seconds, connects `--clients` clients to
``/cellpipe/api/runs/ID/events`` at once, and reads every stream to its ``run_finished``.
Prints events/s delivered (over all clients) and the 95th-percentile delay from an event's
emission (its ``time``) to its receipt by a client; target < 200 ms. Exits 1 if any client missed
an event, saw one twice or out of order, or the delay target is missed.

`read_events` and `load` are also what `tests/jupyter_ext/test_event_stream_load.py` runs, smaller.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_notebook

DELAY_TARGET_SECONDS = 0.2
CLIENT_TIMEOUT_SECONDS = 120.0  # bound: a stuck stream fails the run instead of hanging it


@dataclass
class Stream:
    """What one client received: (seq, type, emission time, receipt time) per event, in arrival order."""

    events: list[tuple[int, str, float, float]] = field(default_factory=list)
    status: int = 0

    @property
    def seqs(self) -> list[int]:
        return [seq for seq, _type, _sent, _got in self.events]


async def read_events(
    host: str,
    port: int,
    path: str,
    headers: dict[str, str] | None = None,
    stop_after: int | None = None,
) -> Stream:
    """GET an SSE stream over a raw HTTP/1.0 connection (no chunking: the body ends when the server closes).

    Stops at ``run_finished``, at the server's end of stream, or after `stop_after` events (then it
    drops the connection, as a client that lost its network would).
    """
    reader, writer = await asyncio.open_connection(host, port)
    stream = Stream()
    try:
        lines = [f"GET {path} HTTP/1.0", f"Host: {host}:{port}", "Accept: text/event-stream"]
        lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
        await writer.drain()
        status_line = await reader.readline()
        stream.status = int(status_line.split()[1])
        while (await reader.readline()).strip():  # response headers
            pass
        if stream.status != 200:
            return stream
        fields: dict[str, str] = {}
        while True:
            raw = await reader.readline()
            if not raw:
                return stream
            line = raw.decode().rstrip("\r\n")
            if line:
                name, _, value = line.partition(":")
                fields[name] = value.removeprefix(" ")
                continue
            if "data" in fields:
                data = json.loads(fields["data"])
                stream.events.append((int(fields["id"]), fields["event"], data["time"], time.time()))
                if fields["event"] == "run_finished":
                    return stream
                if stop_after is not None and len(stream.events) >= stop_after:
                    return stream
            fields = {}
    finally:
        writer.close()


def chatty_notebook(path: Path, lines: int) -> None:
    """One quick step, then one that prints `lines` lines over about lines/1000 seconds."""
    nb = new_notebook(
        cells=[
            new_code_cell("n = 1", metadata={"tags": ["step:start"]}),
            new_code_cell(
                "import time\n"
                f"for i in range({lines}):\n"
                "    print('line', i, flush=True)\n"
                "    if i % 10 == 0:\n"
                "        time.sleep(0.01)\n"
                "done = n",
                metadata={"tags": ["step:chatty"]},
            ),
        ]
    )
    nbformat.write(nb, path)


@dataclass
class Report:
    clients: int
    events: int  # in the run
    complete: int  # clients that got every event exactly once, in order
    seconds: float
    delays: list[float]

    @property
    def events_per_second(self) -> float:
        return self.clients * self.events / self.seconds if self.seconds else 0.0

    @property
    def p95_delay(self) -> float:
        ordered = sorted(self.delays)
        return ordered[int(0.95 * (len(ordered) - 1))] if ordered else 0.0


async def load(host: str, port: int, events_path: str, headers: dict[str, str], clients: int) -> Report:
    """`clients` concurrent streams of one run from its first event; checks each one is whole and ordered."""
    started = time.monotonic()
    streams = await asyncio.wait_for(
        asyncio.gather(*(read_events(host, port, events_path, headers) for _ in range(clients))),
        CLIENT_TIMEOUT_SECONDS,
    )
    seconds = time.monotonic() - started
    total = max((max(s.seqs, default=0) for s in streams), default=0)
    expected = list(range(1, total + 1))
    complete = sum(1 for s in streams if s.status == 200 and s.seqs == expected)
    delays = [got - sent for s in streams for _seq, _type, sent, got in s.events]
    return Report(clients, total, complete, seconds, delays)


# ---------------------------------------------------------------------- the stand-alone benchmark


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _request(url: str, token: str, body: dict[str, object] | None = None) -> dict[str, object]:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Authorization": f"token {token}"})
    with urllib.request.urlopen(request, timeout=30) as response:
        answer: dict[str, object] = json.load(response)
        return answer


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--lines", type=int, default=2000)
    args = parser.parse_args()
    token, port = secrets.token_hex(16), _free_port()
    with tempfile.TemporaryDirectory(prefix="cellpipe-sse-") as tmp:
        root = Path(tmp) / "root"
        root.mkdir()
        chatty_notebook(root / "chatty.ipynb", args.lines)
        env = {**os.environ, "CELLPIPE_HOME": str(Path(tmp) / "home")}
        server = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "jupyter_server",
                "--ip=127.0.0.1",
                f"--port={port}",
                "--no-browser",
                "--allow-root",  # CI runs as root
                f"--IdentityProvider.token={token}",
                f"--ServerApp.root_dir={root}",
                "--ServerApp.jpserver_extensions={'jupyter_ext': True}",
            ],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        try:
            base = f"http://127.0.0.1:{port}/cellpipe/api"
            for _ in range(300):
                try:
                    _request(f"{base}/runs", token)
                    break
                except (urllib.error.URLError, ConnectionError):
                    time.sleep(0.1)
            run = _request(f"{base}/runs", token, {"path": "chatty.ipynb", "use_cache": False})
            path = f"/cellpipe/api/runs/{run['id']}/events"
            report = asyncio.run(
                load("127.0.0.1", port, path, {"Authorization": f"token {token}"}, args.clients)
            )
        finally:
            server.terminate()
            server.wait(30)
    print(f"clients:            {report.clients}")
    print(f"events in the run:  {report.events}")
    print(f"complete, in order: {report.complete}/{report.clients}")
    print(f"events/s delivered: {report.events_per_second:,.0f}")
    target_ms = DELAY_TARGET_SECONDS * 1000
    print(f"p95 delay:          {report.p95_delay * 1000:.1f} ms (target < {target_ms:.0f} ms)")
    return 0 if report.complete == report.clients and report.p95_delay < DELAY_TARGET_SECONDS else 1


if __name__ == "__main__":
    sys.exit(main())
