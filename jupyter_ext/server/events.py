"""``GET runs/ID/events``: a run's events as Server-Sent Events, resumable after the last seq a client
saw, for live runs (from memory, log lines included) and runs in the store (polled)."""

from __future__ import annotations

import asyncio

from jupyter_server.auth.decorator import authorized
from tornado import web
from tornado.iostream import StreamClosedError

from converter.events import Event
from jupyter_ext.runs import LiveRun
from jupyter_ext.server.base import CellpipeHandler
from jupyter_ext.server.paths import ApiError
from jupyter_ext.server.service import sse_frame

HEARTBEAT_SECONDS = 15.0  # an SSE comment line keeps proxies from closing an idle stream
STORE_POLL_SECONDS = 0.5  # following a run another process is running
EVENT_STREAM = "text/event-stream; charset=utf-8"


class EventsHandler(CellpipeHandler):
    """Server-sent events: ``id:`` the event's sequence number, ``event:`` its type, ``data:`` its JSON.

    Resumes after ``Last-Event-ID`` (sent by a reconnecting EventSource) or ``?after=N``;
    replays what was missed, then streams live, and ends after ``run_finished``.
    """

    _closed = False
    _wake: asyncio.Event | None = None

    def on_connection_close(self) -> None:
        self._closed = True
        if self._wake is not None:
            self._wake.set()

    def _after(self) -> int:
        text = self.request.headers.get("Last-Event-ID") or self.get_query_argument("after", "0")
        if not text.strip().isdigit():
            raise ApiError(400, f"the event id to resume after must be a whole number, not {text!r}")
        return int(text)

    @web.authenticated
    @authorized(action="read")
    async def get(self, run_id: str) -> None:
        after = self._after()
        record = self.run_record(run_id)
        full_id = record.id if record else run_id
        run = self.service.runs.get(full_id)
        if run is None and record is None:
            raise ApiError(404, f"no run {run_id!r}")
        self.set_header("Content-Type", EVENT_STREAM)
        self.set_header("Cache-Control", "no-cache")
        self.set_header("X-Accel-Buffering", "no")  # nginx: do not buffer the stream
        clients = self.service.metrics.stream_clients
        clients.inc()
        try:
            self.write(b"retry: 2000\n\n")
            await self.flush()
            if run is not None:
                await self._stream_live(run, after)
            else:
                await self._stream_stored(full_id, after)
        except StreamClosedError:
            pass
        finally:
            clients.dec()
        if not self._closed:
            self.finish(set_content_type=EVENT_STREAM)

    async def _send(self, events: list[Event]) -> None:
        self.write(b"".join(map(sse_frame, events)))
        await self.flush()

    async def _idle(self, wake: asyncio.Event) -> None:
        try:
            await asyncio.wait_for(wake.wait(), HEARTBEAT_SECONDS)
        except TimeoutError:
            self.write(b": keep-alive\n\n")
            await self.flush()

    async def _stream_live(self, run: LiveRun, after: int) -> None:
        feed = self.service.feed(run)
        wake = self._wake = feed.join()
        try:
            while not self._closed:
                wake.clear()
                frames, last_seq, ended = feed.frames_after(after)
                if frames:
                    self.write(frames)
                    await self.flush()
                    after = last_seq
                if ended:
                    return
                if not frames:
                    await self._idle(wake)
        finally:
            self.service.leave(feed, wake)

    async def _stream_stored(self, run_id: str, after: int) -> None:
        """A run this server did not start: the store's events (no log lines), polled while it runs."""
        store = self.service.store
        quiet = 0.0
        while not self._closed:
            events = store.events(run_id, after)
            if events:
                await self._send(events)
                after = events[-1].seq
                if events[-1].type == "run_finished":
                    return
                quiet = 0.0
            elif store.get_run(run_id).state != "running":
                return  # ended without a run_finished event (an old store): nothing more will come
            await asyncio.sleep(STORE_POLL_SECONDS)
            quiet += STORE_POLL_SECONDS
            if quiet >= HEARTBEAT_SECONDS:
                quiet = 0.0
                self.write(b": keep-alive\n\n")
                await self.flush()
