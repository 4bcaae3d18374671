"""SQLite backend: WAL, ``synchronous=FULL`` (fsync on commit), one writer thread.

Every write runs on the writer thread (:mod:`gateway.queue.writer`), which owns its
connection, so the event loop never blocks on disk; puts waiting together share one INSERT and
one fsync. Reads use a second connection and thread, so a scrape never holds up a commit.
Another process may write the same file (the CLI's replay): :meth:`SQLiteQueue.wait_for_work`
polls for that, and is woken at once by what this process writes.
"""

from __future__ import annotations

import asyncio
import functools
import sqlite3
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

from gateway.ids import new_ids
from gateway.queue import points_sql
from gateway.queue import sqlite_links as links
from gateway.queue import sqlite_sql as sql
from gateway.queue.base import (
    Job,
    Link,
    Purged,
    Put,
    PutResult,
    Quarantined,
    QueueError,
    State,
    Stats,
    Status,
    Tally,
)
from gateway.queue.settling import Settling, Statements, Update
from gateway.queue.sqlite_schema import connect, migrate, path_from_url
from gateway.queue.waiting import wait_until_due
from gateway.queue.writer import Writer

T = TypeVar("T")

# How often a waiting relay looks for work that another process queued.
POLL_SECONDS = 1.0
_RETRY = (
    "UPDATE jobs SET state = 'delayed', visible_at = ?, attempts = attempts + 1, last_error = ?"
)
_DEFER = "UPDATE jobs SET state = 'delayed', visible_at = ?"
_RELEASE = "UPDATE jobs SET state = 'ready', visible_at = created_at"
_BURY = "UPDATE jobs SET state = 'dead', last_error = ?, done_at = ?, attempts = attempts + 1"


def guarded(fn: Callable[[], T]) -> T:
    """``fn()``, with SQLite's errors as :class:`QueueError`: the contract's one failure type."""
    try:
        return fn()
    except sqlite3.Error as exc:
        raise QueueError(f"sqlite: {exc}") from exc


class SQLiteQueue(Settling):
    """The :class:`~gateway.queue.base.Queue` contract on one SQLite file."""

    statements = Statements(_BURY, _RETRY, _DEFER, _RELEASE)

    def __init__(self, path: Path) -> None:
        self.path = path
        self._writer: Writer[tuple[Put, float], PutResult] = Writer(
            self._commit_puts, "ctgw-sqlite-w"
        )
        self._reader = ThreadPoolExecutor(1, thread_name_prefix="ctgw-sqlite-r")
        self._w: sqlite3.Connection | None = None
        self._r: sqlite3.Connection | None = None
        self._work: dict[str, asyncio.Event] = {}  # per kind: set when this process adds some
        # Purged payloads may sit in the WAL until a truncating checkpoint succeeds; true at
        # open too, since an earlier process may have purged and stopped before its own.
        self._unflushed = True

    @classmethod
    async def open(cls, url: str) -> SQLiteQueue:
        queue = cls(path_from_url(url))
        loop = asyncio.get_running_loop()
        try:
            await queue._writer.call(functools.partial(guarded, queue._open_writer))
            queue._r = await loop.run_in_executor(
                queue._reader, guarded, lambda: connect(queue.path, 64)
            )
        except BaseException:
            await queue.close()  # no thread outlives a store that could not be opened
            raise
        return queue

    def _open_writer(self) -> None:
        # Room for the puts' and the quarantine's INSERTs of each run size besides the rest.
        self._w = connect(self.path, 2 * sql.STATEMENT_SIZES + 64)
        migrate(self._w)

    async def _write(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``fn`` on the writer thread: one thread, so writes never interleave."""
        return await self._writer.call(lambda: guarded(lambda: fn(self._conn(self._w))))

    async def _tx(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        return await self._write(lambda conn: sql.transaction(conn, fn))

    async def _read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        run = functools.partial(guarded, lambda: fn(self._conn(self._r)))
        return await asyncio.get_running_loop().run_in_executor(self._reader, run)

    @staticmethod
    def _conn(conn: sqlite3.Connection | None) -> sqlite3.Connection:
        if conn is None:
            raise sqlite3.OperationalError("the store is not open")
        return conn

    def _wake(self, kind: str) -> None:
        event = self._work.pop(kind, None)
        if event is not None:
            event.set()

    async def put(self, item: Put, now: float) -> PutResult:
        if item.after is not None:  # it looks at another job: a transaction of its own
            job_id = new_ids(1)[0]
            result = await self._tx(lambda conn: links.put_linked(conn, job_id, item, now))
        else:
            result = await self._writer.put((item, now))
        if result.created:
            self._wake(item.kind)
        return result

    async def append(self, link: Link, now: float) -> PutResult:
        [result] = await self.append_many([link], now)
        return result

    async def append_many(self, items: Sequence[Link], now: float) -> list[PutResult]:
        ids = new_ids(len(items))
        results = await self._tx(lambda conn: [
            links.append(conn, job_id, link, now) for job_id, link in zip(ids, items, strict=True)
        ])
        for kind in {r.status.kind for r in results if r.created}:
            self._wake(kind)
        return results

    async def ack(
        self, job: Job, upstream_id: str, now: float,
        details: Mapping[str, object] | None = None,
    ) -> bool:
        released = await self._tx(lambda conn: links.ack(conn, job, upstream_id, now, details))
        for kind in released or ():
            self._wake(kind)
        return released is not None

    async def convert(self, job: Job, kind: str, now: float) -> bool:
        done = await self._tx(lambda conn: links.convert(conn, job, kind, now))
        self._wake(kind)
        return done

    async def hasten(self, now: float) -> int:
        hastened = await self._tx(lambda conn: links.hasten(conn, now))
        for kind in list(self._work):
            self._wake(kind)
        return hastened

    async def backlog(
        self, kind: str, now: float, limit: int, sites: Sequence[str] | None = None
    ) -> tuple[int, float | None]:
        return await self._read(lambda conn: links.backlog(conn, kind, now, limit, sites))

    async def find(self, site: str, kind: str, dedup_key: str) -> Status | None:
        return await self._read(lambda conn: links.find(conn, site, kind, dedup_key))

    async def chain(self, site: str, chain: str) -> list[Status]:
        return await self._read(lambda conn: links.chain(conn, site, chain))

    def _commit_puts(self, puts: list[tuple[Put, float]]) -> list[PutResult]:
        """On the writer thread: every put that was waiting, in one commit (their ids are
        drawn here too, in one call, off the event loop)."""
        rows = [(i, item, now) for i, (item, now) in zip(new_ids(len(puts)), puts, strict=True)]
        return guarded(lambda: sql.insert(self._conn(self._w), rows))

    async def put_many(self, items: Sequence[Put], now: float) -> list[PutResult]:
        if not items:
            return []
        rows = [(i, item, now) for i, item in zip(new_ids(len(items)), items, strict=True)]
        results = await self._write(lambda conn: sql.insert(conn, rows))
        for kind in {item.kind for item in items}:
            self._wake(kind)
        return results

    async def lease(
        self, kind: str, limit: int, now: float, visibility: float, site: str | None = None
    ) -> list[Job]:
        return await self._tx(lambda c: sql.lease(c, kind, limit, now + visibility, now, site))

    async def _finish(self, job: Job, update: str, *args: object) -> bool:
        return await self._tx(lambda conn: sql.finish(conn, job, update, args))

    async def _finish_many(self, updates: Sequence[Update]) -> int:
        return await self._tx(
            lambda conn: sum(sql.finish(conn, job, update, args) for job, update, args in updates)
        )


    async def status(self, job_id: str) -> Status | None:
        return await self._read(lambda conn: sql.status(conn, job_id))

    async def dead(self, limit: int) -> list[Status]:
        return await self._read(lambda conn: sql.dead(conn, limit))

    async def replay(self, job_ids: Sequence[str] | None, now: float) -> int:
        replayed = await self._tx(lambda conn: sql.replay(conn, job_ids, now))
        for kind in list(self._work):
            self._wake(kind)
        return replayed

    async def purge(self, delivered_before: float, dead_before: float, limit: int) -> Purged:
        if limit < 1:
            raise ValueError("limit must be at least 1")
        delivered = await self._purge_state(State.DELIVERED, delivered_before, limit)
        dead = await self._purge_state(State.DEAD, dead_before, limit)
        if self._unflushed:
            self._unflushed = not await self._write(sql.flush)
        return Purged(delivered, dead, flushed=not self._unflushed)

    async def _purge_state(self, state: State, before: float, limit: int) -> int:
        total = 0
        while True:
            # One transaction per batch, each taking the lock anew: intake waits for one
            # batch at most, not for the whole purge.
            count, buried = await self._tx(lambda conn: sql.purge(conn, state, before, limit))
            total += count + buried
            self._unflushed = self._unflushed or count + buried > 0
            if count < limit:
                return total

    async def quarantine(self, items: Sequence[Quarantined], keep: int) -> int:
        if not items:
            return 0
        dropped = await self._tx(lambda conn: sql.quarantine(conn, items, keep))
        self._unflushed = self._unflushed or dropped > 0  # deleted spam may sit in the WAL
        return dropped

    async def spam(self, limit: int, since: float | None = None) -> list[Status]:
        return await self._read(lambda conn: sql.spam(conn, limit, since))

    async def release_spam(
        self, job_ids: Sequence[str] | None, since: float | None, now: float
    ) -> int:
        released = await self._tx(lambda conn: sql.release_spam(conn, job_ids, since, now))
        for kind in list(self._work):
            self._wake(kind)
        return released

    async def purge_spam(self, before: float, limit: int) -> int:
        purged = await self._tx(lambda conn: sql.purge_spam(conn, before, limit))
        self._unflushed = self._unflushed or purged > 0
        return purged

    async def tally(self, spent: Sequence[Tally], now: float) -> list[Tally]:
        return await self._tx(lambda conn: points_sql.sqlite_tally(conn, spent, now))

    async def wait_for_work(
        self, kind: str, timeout: float, sites: Sequence[str] | None = None
    ) -> bool:
        return await wait_until_due(
            lambda: self._read(lambda conn: sql.next_visible(conn, kind, sites)),
            lambda: self._work.setdefault(kind, asyncio.Event()), timeout, POLL_SECONDS,
        )

    async def pending_by_site(self) -> dict[str, int]:
        return await self._read(sql.pending_by_site)

    async def stats(self) -> Stats:
        return await self._read(sql.stats)

    async def ping(self) -> None:
        if self._writer.closed:
            raise QueueError("the queue is closed")
        await self._read(lambda conn: conn.execute("SELECT 1").fetchall())

    async def close(self) -> None:
        """Commit what was put before, then close; a put after this fails."""
        if self._writer.closed:
            return
        if self._r is not None:
            await self._read(lambda conn: conn.close())
        self._reader.shutdown(wait=True)
        await self._writer.close(self._close_writer)

    def _close_writer(self) -> None:
        if self._w is not None:
            self._w.close()
