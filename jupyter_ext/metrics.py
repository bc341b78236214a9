"""Prometheus metrics of the runs this server started, folded from their event streams.

Each server extension owns its own registry (not prometheus_client's global one) so that several
servers in one process, as in tests, do not collide, and `/cellpipe/api/metrics` shows only
cellpipe's series.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from converter.events import Event

# Steps run from seconds (a cached load) to hours (training).
STEP_DURATION_BUCKETS = (0.1, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 7200, 14400)


class RunMetrics:
    """Counters, gauges and histograms; `observe` is called on engine threads (prometheus_client locks)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.runs_started = Counter(
            "cellpipe_runs_started", "Runs started through this server.", ["engine"], registry=self.registry
        )
        self.runs_finished = Counter(
            "cellpipe_runs_finished",
            "Runs started through this server that ended, by final state.",
            ["engine", "state"],
            registry=self.registry,
        )
        self.active_runs = Gauge(
            "cellpipe_active_runs", "Runs started through this server still running.", registry=self.registry
        )
        self.step_duration = Histogram(
            "cellpipe_step_duration_seconds",
            "Duration of finished step attempts (succeeded or failed), in seconds.",
            ["engine", "state"],
            buckets=STEP_DURATION_BUCKETS,
            registry=self.registry,
        )
        self.stream_clients = Gauge(
            "cellpipe_event_stream_clients", "Open event-stream connections.", registry=self.registry
        )

    def observe(self, engine: str, event: Event) -> None:
        if event.type == "run_started":
            self.runs_started.labels(engine).inc()
            self.active_runs.inc()
        elif event.type == "run_finished":
            self.runs_finished.labels(engine, event.state or "failed").inc()
            self.active_runs.dec()
        elif event.type in ("step_succeeded", "step_failed", "step_retrying") and event.duration is not None:
            state = "succeeded" if event.type == "step_succeeded" else "failed"
            self.step_duration.labels(engine, state).observe(event.duration)

    def exposition(self) -> bytes:
        """The Prometheus text format of every series."""
        return generate_latest(self.registry)
