"""Group commit: concurrent puts share one transaction and one fsync.

While one batch is being committed, new puts gather; the next batch takes them all. Under
load this turns N fsyncs into about one per commit time, and costs nothing when idle.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from .base import Put, PutResult, Queue


class GroupCommit:
    def __init__(
        self, queue: Queue, max_batch: int = 512, clock: Callable[[], float] = time.time
    ) -> None:
        self._queue = queue
        self._max_batch = max_batch
        self._clock = clock
        self._pending: list[tuple[Put, asyncio.Future[PutResult]]] = []
        self._wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="ctgw-group-commit")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        for _, future in self._pending:
            if not future.done():
                future.set_exception(ConnectionError("queue closed"))

    def put(self, item: Put) -> asyncio.Future[PutResult]:
        """The item's result once its batch is committed (a future: no coroutine to resume)."""
        if self._task is None or self._task.done():
            raise ConnectionError("queue writer is not running")
        future: asyncio.Future[PutResult] = asyncio.get_running_loop().create_future()
        self._pending.append((item, future))
        self._wakeup.set()
        return future

    async def _run(self) -> None:
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            while self._pending:
                batch = self._pending[: self._max_batch]
                del self._pending[: self._max_batch]
                await self._commit(batch)

    async def _commit(self, batch: list[tuple[Put, asyncio.Future[PutResult]]]) -> None:
        try:
            results = await self._queue.put_many([item for item, _ in batch], self._clock())
        except Exception as exc:  # every waiter must hear of the failure, then we go on
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        for (_, future), result in zip(batch, results, strict=True):
            if not future.done():
                future.set_result(result)
