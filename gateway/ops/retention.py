"""Retention: a settled lead's personal data leaves the store once it is old enough.

A delivered lead keeps its fields for ``CTGW_RETENTION`` after delivery, a dead letter for
``CTGW_DEAD_RETENTION`` (time to replay it); then the queue drops the payload and keeps the
status, so ``GET /api/v1/leads/{id}`` and dedup on ``requestNumber`` still answer.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from gateway.ops.metrics import Metrics
from gateway.queue import Purged, Queue

log = logging.getLogger(__name__)

# Small enough that one transaction holds the writer lock for milliseconds, not seconds.
BATCH = 200
MIN_INTERVAL = 1.0
MAX_INTERVAL = 600.0


def interval(retention: float, dead_retention: float) -> float:
    """Seconds between purges: data outlives its retention by at most a quarter of it."""
    return min(MAX_INTERVAL, max(MIN_INTERVAL, min(retention, dead_retention) / 4))


class Retention:
    """Purges at start and then every :attr:`interval`; a failed purge is retried next time."""

    def __init__(
        self,
        queue: Queue,
        metrics: Metrics,
        retention: float,
        dead_retention: float,
        *,
        spam_retention: float = 7 * 86400.0,
        batch: int = BATCH,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._queue = queue
        self._metrics = metrics
        self._retention = retention
        self._dead_retention = dead_retention
        self._spam_retention = spam_retention
        self._batch = batch
        self._clock = clock
        self.interval = interval(retention, dead_retention)
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="ctgw-retention")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def purge(self) -> Purged:
        """Purge what is past its retention now; count it, log counts only."""
        now = self._clock()
        purged = await self._queue.purge(
            now - self._retention, now - self._dead_retention, self._batch
        )
        counter = self._metrics.retention_purged
        counter.labels("delivered").inc(purged.delivered)
        counter.labels("dead").inc(purged.dead)
        if purged.delivered or purged.dead:
            log.info("retention purged delivered=%d dead=%d", purged.delivered, purged.dead)
        spam = await self._purge_spam(now - self._spam_retention)
        if spam:
            log.info("retention purged spam=%d", spam)
        if not purged.flushed:
            log.warning("retention: a reader held the WAL; purged bytes go at the next purge")
        return purged

    async def _purge_spam(self, before: float) -> int:
        """Quarantined spam past its retention goes whole: nothing of it is ever needed."""
        total = 0
        while (count := await self._queue.purge_spam(before, self._batch)) == self._batch:
            total += count
        return total + count

    async def _run(self) -> None:
        while True:
            try:
                await self.purge()
            except Exception as exc:  # the store is locked or gone: try again next time
                log.error("retention purge failed error=%s", type(exc).__name__)
            await asyncio.sleep(self.interval)
