"""Soak the local engine with faults, then check nothing is left inconsistent or running.

Runs N local runs (default 200) of a small diamond pipeline, at most 4 at once, each a real
`cellpipe run` process. Faults, drawn at random per run: steps that raise (a parameter sets the
crash probability), SIGKILL of a running step process, SIGKILL of the engine (`cellpipe run`
itself) part-way. Meanwhile REST readers poll a real Jupyter server with the cellpipe extension
(loopback only, token auth): the run list, single runs and their event streams.

Afterwards it checks, and prints as counts:

- no run reads as running (and how many rows were still "running" in the raw table before any
  reader looked: killed engines whose runs nobody had read yet);
- every step of every run has a final state;
- no process of the soak is left (step processes, fork servers, engines);
- no REST request answered 5xx, and every event stream ended.

Bounded: every run has a deadline, the whole soak a time limit; everything lives in a temporary
folder. Exit status 0 only if every check holds.

    python benchmarks/soak_local.py [--runs 200] [--parallel 4] [--seed 1]
"""

from __future__ import annotations

import argparse
import atexit
import collections
import json
import os
import random
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import nbformat
import psutil

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "soak-token"
RUN_DEADLINE = 120.0
SOAK_LIMIT = 1800.0
FINAL_STEP_STATES = {"succeeded", "failed", "cached", "skipped", "cancelled"}

CELLS = [
    ("import random\nimport time", ["imports"]),
    ("seed = 0\ncrash = 0.0", ["parameters"]),
    (
        "rng = random.Random(seed)\ntime.sleep(rng.uniform(0.05, 0.6))\n"
        "if rng.random() < crash:\n    raise RuntimeError('random crash in load')\n"
        "data = list(range(seed % 7 + 3))",
        ["step:load"],
    ),
    (
        "time.sleep(random.Random(seed + 1).uniform(0.05, 0.8))\n"
        "if random.Random(seed + 2).random() < crash:\n    raise RuntimeError('random crash in left')\n"
        "left = sum(data)",
        ["step:left"],
    ),
    (
        "time.sleep(random.Random(seed + 3).uniform(0.05, 0.8))\nright = max(data)",
        ["step:right", "retries:1"],
    ),
    ("total = left + right\nprint('total', total)", ["step:join"]),
]


def write_notebook(path: Path) -> None:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = [nbformat.v4.new_code_cell(src, metadata={"tags": tags}) for src, tags in CELLS]
    nbformat.write(nb, path)


def cli() -> list[str]:
    return [sys.executable, "-m", "converter.cli"]


class Counters:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.counts: collections.Counter[str] = collections.Counter()

    def add(self, key: str, n: int = 1) -> None:
        with self.lock:
            self.counts[key] += n


def step_processes(engine: psutil.Process) -> list[psutil.Process]:
    """The engine's step processes: the fork server's children (the engine's grandchildren)."""
    try:
        return [step for server in engine.children() for step in server.children()]
    except psutil.Error:
        return []


def one_run(index: int, notebook: Path, env: dict[str, str], rng: random.Random, counters: Counters) -> None:
    fault = rng.choices(["none", "crashy", "kill-step", "kill-engine"], weights=[3, 3, 2, 2])[0]
    crash = 0.35 if fault == "crashy" else 0.05
    args = [
        *cli(),
        "run",
        str(notebook),
        "--quiet",
        "--no-cache",
        "-p",
        "seed",
        str(index),
        "-p",
        "crash",
        str(crash),
    ]
    engine = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    counters.add(f"fault {fault}")
    process = psutil.Process(engine.pid)
    deadline = time.monotonic() + RUN_DEADLINE
    if fault == "kill-engine":  # once a step runs (mostly): a run is in the store and mid-way
        started = time.monotonic()
        while engine.poll() is None and not step_processes(process) and time.monotonic() - started < 10:
            time.sleep(0.05)
        time.sleep(rng.uniform(0.0, 1.0))
        if engine.poll() is None:
            engine.send_signal(signal.SIGKILL)
            counters.add("engines SIGKILLed")
    elif fault == "kill-step":
        wanted = rng.uniform(0.5, 4.0)
        started = time.monotonic()
        while engine.poll() is None and time.monotonic() - started < 8.0:
            steps = step_processes(process)
            if steps and time.monotonic() - started >= wanted:
                victim = rng.choice(steps)
                try:
                    victim.kill()
                    counters.add("steps SIGKILLed")
                except psutil.Error:
                    pass
                break
            time.sleep(0.05)
    try:
        _, err = engine.communicate(timeout=max(1.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        engine.kill()
        _, err = engine.communicate()
        counters.add("runs over their deadline")
    counters.add(f"exit {engine.returncode}")
    if any(line.startswith("Traceback") for line in (err or "").splitlines()):  # not a step's own
        counters.add("cellpipe tracebacks on stderr")
        sys.stderr.write(err)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def start_server(folder: Path, env: dict[str, str]) -> tuple[subprocess.Popen[bytes], str]:
    config = folder / "jupyter-config"
    config.mkdir()
    (config / "jupyter_server_config.json").write_text(
        json.dumps({"ServerApp": {"jpserver_extensions": {"jupyter_ext": True}}})
    )
    port = free_port()
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "jupyter_server",
            "--ServerApp.ip=127.0.0.1",
            f"--ServerApp.port={port}",
            "--ServerApp.port_retries=0",
            "--ServerApp.open_browser=False",
            f"--ServerApp.root_dir={folder}",
            f"--IdentityProvider.token={TOKEN}",
            "--ServerApp.allow_root=True",
        ],
        env={**env, "JUPYTER_CONFIG_DIR": str(config)},
        stdout=subprocess.DEVNULL,
        stderr=open(folder / "server.log", "wb"),  # noqa: SIM115 (the server's for its lifetime)
    )
    base = f"http://127.0.0.1:{port}/cellpipe/api"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            get(f"{base}/runs?limit=1", timeout=2)
            return server, base
        except (OSError, urllib.error.URLError):
            time.sleep(0.3)
    server.kill()
    log = (folder / "server.log").read_text(errors="replace")[-3000:]
    raise SystemExit(f"the Jupyter server did not come up:\n{log}")


def get(url: str, timeout: float) -> tuple[int, bytes]:
    request = urllib.request.Request(url, headers={"Authorization": f"token {TOKEN}"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def reader(base: str, stop: threading.Event, rng: random.Random, counters: Counters) -> None:
    known: list[str] = []
    while not stop.is_set():
        try:
            kind = rng.choice(["list", "run", "events"] if known else ["list"])
            if kind == "list":
                status, body = get(f"{base}/runs?limit=50", timeout=30)
                if status == 200:
                    known = [run["id"] for run in json.loads(body)["runs"]]
            elif kind == "run":
                status, _ = get(f"{base}/runs/{rng.choice(known)}", timeout=30)
            else:
                status, body = get(f"{base}/runs/{rng.choice(known)}/events", timeout=RUN_DEADLINE)
                if status == 200:
                    ended = b"event: run_finished" in body
                    counters.add("REST streams ended" if ended else "REST streams cut short")
            counters.add(f"REST {kind} {status}")
            if status >= 500:
                counters.add("REST 5xx")
        except (OSError, urllib.error.URLError) as error:
            counters.add(f"REST connection errors ({type(error).__name__})")
        stop.wait(rng.uniform(0.05, 0.3))


def leftovers(home: Path, own: set[int]) -> list[str]:
    """Processes of this soak still alive: anything whose environment names its workspace."""
    found = []
    for process in psutil.process_iter(["pid", "environ", "cmdline", "status"]):
        info = process.info
        if info["pid"] in own or not info["environ"] or info["status"] == psutil.STATUS_ZOMBIE:
            continue
        if info["environ"].get("CELLPIPE_HOME") == str(home):
            found.append(f"{info['pid']}: {' '.join(info['cmdline'] or [])[:100]}")
    return found


def check_store(database: Path) -> dict[str, Any]:
    raw = sqlite3.connect(database)
    raw_running = raw.execute("SELECT COUNT(*) FROM runs WHERE state = 'running'").fetchone()[0]
    raw.close()
    sys.path.insert(0, str(ROOT))
    from converter.store.runstore import RunStore

    store = RunStore(database)
    runs = store.list_runs(100_000)
    result: dict[str, Any] = {
        "runs": len(runs),
        "raw rows running before reading": raw_running,
        "runs by state": dict(collections.Counter(run.state for run in runs)),
        "steps by state": dict(collections.Counter(step.state for run in runs for step in run.steps)),
        "engine stopped runs": sum(1 for run in runs if run.message == "engine stopped"),
        "runs reading as running": sum(1 for run in runs if run.state == "running"),
        "steps without a final state": sum(
            1 for run in runs for step in run.steps if step.state not in FINAL_STEP_STATES
        ),
        "runs whose events do not end in run_finished": sum(
            1 for run in runs if (events := store.events(run.id)) and events[-1].type != "run_finished"
        ),
    }
    store.close()
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--parallel", type=int, default=4)
    parser.add_argument("--readers", type=int, default=2)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    counters = Counters()
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="cellpipe-soak-") as tmp:
        folder = Path(tmp)
        home = folder / "home"
        notebook = folder / "soak.ipynb"
        write_notebook(notebook)
        env = {**os.environ, "CELLPIPE_HOME": str(home), "PYTHONPATH": str(ROOT)}
        server, base = start_server(folder, env)
        atexit.register(lambda: server.poll() is None and server.kill())  # interrupted: no server left
        stop = threading.Event()
        readers = [
            threading.Thread(
                target=reader, args=(base, stop, random.Random(rng.random()), counters), daemon=True
            )
            for _ in range(args.readers)
        ]
        for thread in readers:
            thread.start()
        queue = list(range(args.runs))
        queue_lock = threading.Lock()

        def worker(seed: float) -> None:
            local = random.Random(seed)
            while time.monotonic() - started < SOAK_LIMIT:
                with queue_lock:
                    if not queue:
                        return
                    index = queue.pop(0)
                one_run(index, notebook, env, local, counters)

        workers = [threading.Thread(target=worker, args=(rng.random(),)) for _ in range(args.parallel)]
        for thread in workers:
            thread.start()
        for thread in workers:
            thread.join()
        counters.add("runs not started (soak time limit)", len(queue))
        time.sleep(1.0)  # let the readers see the last runs end
        stop.set()
        for thread in readers:
            thread.join(timeout=RUN_DEADLINE + 10)
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        time.sleep(1.0)  # steps of SIGKILLed engines die with them (parent-death signal, fork server)
        left = leftovers(home, {os.getpid()})
        store = check_store(home / "runs.db")
        elapsed = time.monotonic() - started

    print(f"soak: {args.runs} runs, {args.parallel} at once, {args.readers} REST readers, {elapsed:.0f}s")
    for key, value in sorted(counters.counts.items()):
        print(f"  {key}: {value}")
    for key, value in store.items():
        print(f"  store: {key}: {value}")
    print(f"  processes left: {len(left)}")
    for line in left:
        print(f"    {line}")
    ok = (
        store["runs reading as running"] == 0
        and store["steps without a final state"] == 0
        and store["runs whose events do not end in run_finished"] == 0
        and not left
        and counters.counts["REST 5xx"] == 0
        and counters.counts["cellpipe tracebacks on stderr"] == 0
        and counters.counts["runs over their deadline"] == 0
    )
    print("soak: OK" if ok else "soak: PROBLEMS (see above)")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
