"""Spam is kept, not thrown away: a lead scored a bot's waits here, then goes to the store.

The browser's answer never waits for it. Spam is written every tenth of a second in one
transaction, after the real leads' commits of that moment, so a flood of it costs no commit
each. Not once a second: a real lead's commit waited behind that second's spam, and a second
of spam held in memory spread the heap (docs/performance.md, "Spam written in tenths"). What
waits is bounded (the oldest goes first, as in the store), and what could not be written is
kept for the next round.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque

from gateway.queue import Quarantined, Queue

log = logging.getLogger(__name__)

FLUSH_SECONDS = 0.1
WAITING_MAX = 10_000


class Quarantine:
    def __init__(
        self, queue: Queue, keep: int, *, every: float = FLUSH_SECONDS,
        waiting_max: int = WAITING_MAX,
    ) -> None:
        self._queue = queue
        self._keep = keep
        self._every = every
        self._waiting: deque[Quarantined] = deque(maxlen=min(waiting_max, keep))
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()

    def add(self, item: Quarantined) -> None:
        self._waiting.append(item)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="ctgw-quarantine")

    async def stop(self) -> None:
        """Write what is waiting, then stop. A write under way is finished, not cancelled: on
        PostgreSQL a cancelled one is rolled back, and its spam was gone."""
        self._stopping.set()
        if self._task is not None:
            await self._task
        with contextlib.suppress(Exception):
            await self.flush()

    async def flush(self) -> int:
        """Write every waiting item; how many."""
        items = list(self._waiting)
        if not items:
            return 0
        self._waiting.clear()
        try:
            await self._queue.quarantine(items, self._keep)
        except Exception:
            # Back in front of what came meanwhile; past the bound the oldest go, as in the store.
            self._waiting = deque([*items, *self._waiting], maxlen=self._waiting.maxlen)
            raise
        return len(items)

    async def _run(self) -> None:
        while not self._stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), self._every)
            try:
                await self.flush()
            except Exception as exc:  # the store is locked or gone: the next round tries
                log.error("quarantine write failed error=%s", type(exc).__name__)
