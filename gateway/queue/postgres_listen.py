"""One connection per queue that LISTENs for new work and wakes the waiters of its kind."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from gateway.queue.postgres_schema import CHANNEL


class Listener:
    """Holds the events that :meth:`PostgresQueue.wait_for_work` waits on, one per kind."""

    def __init__(self, connect: Callable[[], Awaitable[Any]]) -> None:
        self._connect = connect
        self._conn: Any = None
        self._events: dict[str, asyncio.Event] = {}
        self._lock = asyncio.Lock()  # waiters of several kinds reconnect once, not each
        self._closed = False

    async def connect(self) -> None:
        """Listen, on a new connection if the last one is gone (the server restarted).

        A notification sent while none listened is lost; a waiter looks for work after this,
        so it finds that work all the same.
        """
        async with self._lock:
            if self._closed:
                raise ConnectionError("the queue is closed")
            if self._conn is not None and not self._conn.is_closed():
                return
            conn = await self._connect()
            try:
                await conn.add_listener(CHANNEL, self._notified)
            except BaseException:
                conn.terminate()
                raise
            self._conn = conn

    def event(self, kind: str) -> asyncio.Event:
        """The event set at the next work of ``kind``; take it before looking for work."""
        return self._events.setdefault(kind, asyncio.Event())

    def wake(self, kind: str | None = None) -> None:
        """Wake the waiters of ``kind`` (of every kind when ``None``)."""
        kinds = list(self._events) if kind is None else [kind]
        for name in kinds:
            event = self._events.pop(name, None)
            if event is not None:
                event.set()

    def _notified(self, conn: object, pid: int, channel: str, kind: str) -> None:
        self.wake(kind)

    async def close(self) -> None:
        self._closed = True
        async with self._lock:
            conn, self._conn = self._conn, None
        if conn is not None and not conn.is_closed():
            try:
                await asyncio.wait_for(conn.close(), 5)
            except Exception:  # gone with its server: nothing left to say goodbye to
                conn.terminate()
        self.wake()  # a waiter then looks again, and finds the queue closed
