"""Group commit on the event loop: puts that wait together share one statement and commit.

One batch commits at a time. The puts that arrive meanwhile wait for the next, so under load
each commit carries all that came during the one before, and a put made alone waits for none.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")


class Batcher(Generic[Item, Result]):
    """Runs ``commit(items)`` for every put waiting; it must take effect for all or none."""

    def __init__(self, commit: Callable[[list[Item]], Awaitable[list[Result]]]) -> None:
        self._commit = commit
        self._waiting: list[tuple[Item, asyncio.Future[Result]]] = []
        self._task: asyncio.Task[None] | None = None
        self._closed = False

    def put(self, item: Item) -> asyncio.Future[Result]:
        """The item's result once the commit it shares with the other waiting puts is done."""
        if self._closed:
            raise ConnectionError("the queue is closed")
        future: asyncio.Future[Result] = asyncio.get_running_loop().create_future()
        self._waiting.append((item, future))
        if self._task is None:
            self._task = asyncio.create_task(self._serve())
        return future

    async def close(self) -> None:
        """Commit what was put before; a put after this fails."""
        self._closed = True
        if self._task is not None:
            await asyncio.shield(self._task)

    async def _serve(self) -> None:
        try:
            while self._waiting:
                batch, self._waiting = self._waiting, []
                await self._settle(batch)
        finally:
            self._task = None
            for _, future in self._waiting:  # left only when cancelled: the loop is closing
                future.cancel()

    async def _settle(self, batch: list[tuple[Item, asyncio.Future[Result]]]) -> None:
        try:
            results = await self._commit([item for item, _ in batch])
        except Exception as exc:  # every waiter hears of it; the next batch goes on
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        except BaseException:
            for _, future in batch:
                future.cancel()
            raise
        for (_, future), result in zip(batch, results, strict=True):
            if not future.done():  # its waiter was cancelled: the put is committed all the same
                future.set_result(result)
