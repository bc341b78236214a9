"""One step of a local run as the scheduler, the cache and the launcher see it (`StepRun`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from converter.engines.local.resources import Need
from converter.model import Step


@dataclass
class StepRun:
    step: Step
    need: Need
    state: str = "pending"  # + queued, running, retry_wait, succeeded, cached, failed, skipped, cancelled
    attempt: int = 0
    inputs: dict[str, str] = field(default_factory=dict)  # variable -> digest
    params: dict[str, str | None] = field(default_factory=dict)  # rendered values; None: not given
    key: str = ""
    cacheable: bool = True
    outputs: dict[str, str] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    started: float = 0.0  # monotonic, current attempt
    retry_at: float = 0.0
    next_memory_check: float = 0.0
    kill_reason: str | None = None
    staging: Path | None = None
    staged: dict[str, Path] = field(default_factory=dict)
    held: tuple[list[str], list[int] | None] = ([], None)
