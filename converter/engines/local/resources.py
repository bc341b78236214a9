"""What this machine has (CPUs, memory, GPUs) and what each step asks for, as the local scheduler sees it.

Requests are read as Kubernetes reads them: a step that sets only a limit requests that limit.
A step that could never fit on this machine is reported before the run starts, unless the engine
is told to fit steps to the machine (then its request is cut to what exists and a warning says so,
and GPU steps on a machine without GPUs run on the CPU with ``CUDA_VISIBLE_DEVICES`` empty).

Limits: a memory limit is enforced by watching the resident memory of the step's process tree and
killing it past the limit (``RLIMIT_AS`` would count the huge virtual reservations of numpy,
pyarrow and JIT runtimes and fail steps that use little memory); a CPU limit pins the step to that
many CPUs (rounded up) through its CPU affinity. Only NVIDIA GPUs are detected: ``nvidia-smi -L``,
or the GPUs ``CUDA_VISIBLE_DEVICES`` names when it is set (an empty value means none).
"""

from __future__ import annotations

import math
import os
import re
import shutil
import subprocess
from dataclasses import dataclass

import psutil

from converter.errors import CellpipeError
from converter.model import DEFAULT_GPU_VENDOR, Pipeline, Step
from converter.notebook.tags import cpu_cores, memory_bytes


def gib(size: float) -> str:
    return f"{size / 2**30:.1f} GiB"


@dataclass(frozen=True)
class Machine:
    cpus: tuple[int, ...]  # CPU ids this process may run on
    memory: int  # bytes
    gpus: tuple[str, ...]  # CUDA device ids

    @classmethod
    def detect(cls) -> Machine:
        cpus = (
            tuple(sorted(os.sched_getaffinity(0)))
            if hasattr(os, "sched_getaffinity")
            else tuple(range(os.cpu_count() or 1))
        )
        return cls(cpus, psutil.virtual_memory().total, detect_gpus())


def detect_gpus() -> tuple[str, ...]:
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return tuple(g.strip() for g in visible.split(",") if g.strip() and g.strip() != "-1")
    if shutil.which("nvidia-smi") is None:
        return ()
    try:
        listing = subprocess.run(
            ["nvidia-smi", "-L"], capture_output=True, text=True, timeout=10, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return ()
    return tuple(m.group(1) for m in re.finditer(r"^GPU (\d+):", listing.stdout, re.MULTILINE))


@dataclass(frozen=True)
class Need:
    """What one step holds while it runs, and the limits it is held to."""

    cpu: float = 0.0
    memory: int = 0
    gpus: int = 0
    cpu_limit: float | None = None
    memory_limit: int | None = None
    memory_limit_text: str | None = None
    no_gpu: bool = False  # asked for GPUs, fitted to a machine with none: hide CUDA devices


def _need(step: Step) -> Need:
    r = step.settings.resources
    # The model holds quantities the reader validated (tags.parse_cpu / parse_memory).
    cpu_limit = cpu_cores(r.cpu_limit) if r.cpu_limit else None
    memory_limit = memory_bytes(r.memory_limit) if r.memory_limit else None
    cpu = cpu_cores(r.cpu_request) if r.cpu_request else (cpu_limit or 0.0)
    memory = memory_bytes(r.memory_request) if r.memory_request else (memory_limit or 0)
    return Need(cpu, memory, r.gpu or 0, cpu_limit, memory_limit, r.memory_limit)


def plan(pipeline: Pipeline, machine: Machine, fit: bool = False) -> tuple[dict[str, Need], list[str]]:
    """Each step's needs on this machine, and warnings; CellpipeError naming every step that cannot fit."""
    needs: dict[str, Need] = {}
    problems: list[str] = []
    warnings: list[str] = []
    for step in pipeline.steps:
        try:
            need = _need(step)
        except ValueError as error:
            problems.append(f"step {step.name!r}: {error}")
            continue
        vendor = step.settings.resources.gpu_vendor
        gpus_here = len(machine.gpus) if vendor == DEFAULT_GPU_VENDOR else 0
        asks: list[str] = []
        if need.cpu > len(machine.cpus):
            asks.append(f"{need.cpu:g} CPUs but this machine has {len(machine.cpus)}")
        if need.memory > machine.memory:
            asks.append(f"{gib(need.memory)} of memory but this machine has {gib(machine.memory)}")
        if need.gpus > gpus_here:
            asks.append(
                f"{need.gpus} GPU{'s' * (need.gpus > 1)} ({vendor}) but this machine has "
                f"{gpus_here or 'none'}"
            )
        if asks and not fit:
            problems.append(f"step {step.name!r} requests {' and '.join(asks)}")
        elif asks:
            warnings.append(f"step {step.name!r} requests {' and '.join(asks)}: fitted to this machine")
            need = Need(
                min(need.cpu, len(machine.cpus)),
                min(need.memory, machine.memory),
                min(need.gpus, gpus_here),
                need.cpu_limit,
                need.memory_limit,
                need.memory_limit_text,
                no_gpu=need.gpus > 0 and gpus_here == 0,
            )
        needs[step.name] = need
    if problems:
        fix = "--fit-resources fits the requests to this machine (GPU steps then run on the CPU)"
        raise CellpipeError("cannot run on this machine:\n  " + "\n  ".join([*problems, fix]))
    return needs, warnings


class Pool:
    """What is free right now; the scheduler takes and returns needs as steps start and end."""

    def __init__(self, machine: Machine):
        self.machine = machine
        self.cpu = float(len(machine.cpus))
        self.memory = machine.memory
        self.free_gpus = list(machine.gpus)
        self._pinned = dict.fromkeys(machine.cpus, 0)  # steps pinned to each CPU

    def fits(self, need: Need) -> bool:
        return need.cpu <= self.cpu + 1e-9 and need.memory <= self.memory and need.gpus <= len(self.free_gpus)

    def take(self, need: Need) -> tuple[list[str], list[int] | None]:
        """Hold the need; the GPUs handed out, and the CPUs to pin to (None: all)."""
        self.cpu -= need.cpu
        self.memory -= need.memory
        gpus, self.free_gpus = self.free_gpus[: need.gpus], self.free_gpus[need.gpus :]
        cpus = None
        if need.cpu_limit is not None and math.ceil(need.cpu_limit) < len(self.machine.cpus):
            cpus = sorted(
                sorted(self._pinned, key=lambda c: self._pinned[c])[: max(1, math.ceil(need.cpu_limit))]
            )
            for cpu in cpus:
                self._pinned[cpu] += 1
        return gpus, cpus

    def give_back(self, need: Need, gpus: list[str], cpus: list[int] | None) -> None:
        self.cpu += need.cpu
        self.memory += need.memory
        self.free_gpus.extend(gpus)
        for cpu in cpus or ():
            self._pinned[cpu] -= 1


def tree_rss(pid: int) -> int:
    """Resident memory of a process and all its descendants, in bytes (0 when it is gone)."""
    try:
        root = psutil.Process(pid)
        processes = [root, *root.children(recursive=True)]
    except psutil.Error:
        return 0
    total = 0
    for process in processes:
        try:
            total += process.memory_info().rss
        except psutil.Error:
            continue
    return total


# Thread pools a step's libraries size from the environment when they load (OpenMP, OpenBLAS, MKL,
# numexpr, Accelerate, BLIS) and joblib's process pools (loky).
THREAD_VARIABLES = (
    "OMP_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
    "NUMEXPR_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
    "BLIS_NUM_THREADS",
    "LOKY_MAX_CPU_COUNT",
)
THREADS_VARIABLE = "CELLPIPE_THREADS"  # the step runtime limits already loaded pools to it (threadpoolctl)


def parallel_width(pipeline: Pipeline) -> int:
    """How many steps can run at once: the most steps on one level of the graph (longest path from
    a root), which is exact for the usual fan-out / fan-in shapes."""
    level: dict[str, int] = {}
    for step in pipeline.steps:  # topological order
        level[step.name] = 1 + max((level[u] for u in pipeline.upstream(step.name) if u in level), default=0)
    counts: dict[int, int] = {}
    for value in level.values():
        counts[value] = counts.get(value, 0) + 1
    return max(counts.values(), default=1)


def thread_share(pipeline: Pipeline, cpus: int, max_parallel: int) -> int:
    """Threads each running step gets: the CPUs split between the steps that can run at once.

    Without it two scikit-learn steps running together each start one OpenMP/BLAS thread per CPU,
    and on a small machine the oversubscribed pair runs slower than the same steps one after another.
    """
    return max(1, cpus // max(1, min(max_parallel, parallel_width(pipeline))))


def thread_environment(
    threads: int, environ: dict[str, str] | os._Environ[str] = os.environ
) -> dict[str, str]:
    """The variables that give a step `threads` threads, except those the user set."""
    values = {name: str(threads) for name in THREAD_VARIABLES if name not in environ}
    values[THREADS_VARIABLE] = str(threads)
    return values
