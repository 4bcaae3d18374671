"""One thread for a store's writes: waiting puts share a commit, other calls run in order.

The event loop hands work over through a :class:`queue.SimpleQueue` and goes on. The thread
takes everything that is waiting, commits all the waiting puts together (one statement, one
fsync: group commit) and hands their results to the loop at once, then runs the other calls
one by one and hands theirs over in a second call into the loop. No task on the loop gathers
batches or relays results: a put costs the loop one append and its answer one wake-up.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import Callable
from typing import Any, Generic, NamedTuple, TypeVar

Item = TypeVar("Item")
Result = TypeVar("Result")
T = TypeVar("T")


class _Put(NamedTuple):
    future: asyncio.Future[Any]
    item: Any


class _Call(NamedTuple):
    future: asyncio.Future[Any]
    fn: Callable[[], Any]


_Settled = tuple[asyncio.Future[Any], BaseException | None, Any]


def _settle(settled: list[_Settled]) -> None:
    for future, error, value in settled:
        if future.done():  # its waiter was cancelled: the work is done all the same
            continue
        if error is None:
            future.set_result(value)
        else:
            future.set_exception(error)


class Writer(Generic[Item, Result]):
    """Runs ``commit(items)`` for puts and ``fn()`` for calls on its own thread.

    ``commit`` must take effect for all its items or for none, and return one result each.
    """

    def __init__(self, commit: Callable[[list[Item]], list[Result]], name: str) -> None:
        self._commit = commit
        self._loop = asyncio.get_running_loop()
        self._inbox: queue.SimpleQueue[_Put | _Call | None] = queue.SimpleQueue()
        self._closed = False
        self._thread = threading.Thread(target=self._serve, name=name, daemon=True)
        self._thread.start()

    def put(self, item: Item) -> asyncio.Future[Result]:
        """The item's result once the commit it shares with other waiting puts is done."""
        future: asyncio.Future[Result] = self._loop.create_future()
        self._submit(_Put(future, item))
        return future

    def call(self, fn: Callable[[], T]) -> asyncio.Future[T]:
        """``fn()``'s result, run after every put and call submitted before it."""
        future: asyncio.Future[T] = self._loop.create_future()
        self._submit(_Call(future, fn))
        return future

    @property
    def closed(self) -> bool:
        return self._closed

    async def close(self, last: Callable[[], T]) -> T:
        """Finish what was submitted, run ``last`` and stop; later submissions fail."""
        future = self.call(last)
        self._closed = True
        self._inbox.put(None)
        try:
            return await future
        finally:
            await asyncio.to_thread(self._thread.join)

    def _submit(self, work: _Put | _Call) -> None:
        if self._closed:
            raise ConnectionError("the queue is closed")
        self._inbox.put(work)

    def _serve(self) -> None:
        while True:
            work = [self._inbox.get()]
            while not self._inbox.empty():
                work.append(self._inbox.get_nowait())
            puts = [w for w in work if isinstance(w, _Put)]
            calls = [w for w in work if isinstance(w, _Call)]
            # A lead's answer does not wait for the calls of its round (the relay's leases
            # and acks, each a transaction with its own fsync): puts are settled first.
            done = self._hand_over(self._commit_puts(puts)) if puts else True
            if done and calls:
                done = self._hand_over([_run(c.future, c.fn) for c in calls])
            if not done or work[-1] is None:  # close() puts None last, and nothing after it
                return

    def _hand_over(self, settled: list[_Settled]) -> bool:
        """Settle ``settled`` on the loop; False once the loop is closed and nobody waits."""
        try:
            self._loop.call_soon_threadsafe(_settle, settled)
        except RuntimeError:
            return False
        return True

    def _commit_puts(self, puts: list[_Put]) -> list[_Settled]:
        try:
            results = self._commit([put.item for put in puts])
        except Exception as exc:  # every waiter hears of it; the thread goes on
            return [(put.future, exc, None) for put in puts]
        return [(put.future, None, r) for put, r in zip(puts, results, strict=True)]


def _run(future: asyncio.Future[Any], fn: Callable[[], Any]) -> _Settled:
    try:
        return future, None, fn()
    except Exception as exc:
        return future, exc, None
