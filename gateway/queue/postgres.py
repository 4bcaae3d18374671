"""PostgreSQL backend (asyncpg), for a fleet of gateways sharing one queue.

Every session commits with ``synchronous_commit = on``, on a server with fsync on (another is
refused), so a put's answer means its lead is on disk. Puts waiting together share one INSERT
and one commit (:mod:`.postgres_batch`). A lease takes jobs ``FOR UPDATE SKIP LOCKED``:
gateways leasing at once neither wait for each other nor get the same job, and the lease
number fences the answers of an expired lease. New work notifies ``ctgw_work`` from a
trigger, whoever wrote it; each queue keeps one connection listening (:mod:`.postgres_listen`).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from typing import Any, TypeVar

import asyncpg  # type: ignore[import-untyped]

from gateway.ids import new_ids
from gateway.queue import points_sql
from gateway.queue import postgres_links as links
from gateway.queue import postgres_sql as sql
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
from gateway.queue.postgres_batch import Batcher
from gateway.queue.postgres_listen import Listener
from gateway.queue.postgres_schema import SESSION_SETTINGS, Conn, check_durable, migrate
from gateway.queue.settling import Settling, Statements, Update
from gateway.queue.waiting import wait_until_due

T = TypeVar("T")

POOL_SIZE = 8
CONNECT_SECONDS = 10.0
# A statement that takes longer is a server in trouble: its caller hears of it, as of a loss.
COMMAND_SECONDS = 60.0
CLOSE_SECONDS = 10.0
# A waiter looks for work this often even without a notification: a connection that died
# without a word (a dropped NAT entry) may have missed some.
POLL_SECONDS = 5.0
_ERRORS = (asyncpg.PostgresError, asyncpg.InterfaceError, asyncpg.InternalClientError, OSError)
_RETRY = (
    "UPDATE jobs SET state = 'delayed', visible_at = $3, attempts = attempts + 1,"
    " last_error = $4" + sql.HELD
)
_DEFER = "UPDATE jobs SET state = 'delayed', visible_at = $3" + sql.HELD
_RELEASE = "UPDATE jobs SET state = 'ready', visible_at = created_at" + sql.HELD
_BURY = (
    "UPDATE jobs SET state = 'dead', last_error = $3, done_at = $4, attempts = attempts + 1"
    + sql.HELD
)


@contextlib.contextmanager
def guarded() -> Iterator[None]:
    """asyncpg's and the OS's errors as :class:`QueueError`: the contract's one failure type."""
    try:
        yield
    except _ERRORS as exc:
        raise QueueError(f"postgresql: {type(exc).__name__}: {exc}") from exc


_NUL = "\x00"


async def _connect(url: str) -> Any:
    return await asyncpg.connect(url, server_settings=SESSION_SETTINGS, timeout=CONNECT_SECONDS)


class PostgresQueue(Settling):
    """The :class:`~gateway.queue.base.Queue` contract on one PostgreSQL database."""

    statements = Statements(_BURY, _RETRY, _DEFER, _RELEASE)

    def __init__(self, url: str, pool: Any) -> None:
        self._pool = pool
        self._puts: Batcher[sql.Row, PutResult] = Batcher(self._commit_puts)
        self._listener = Listener(lambda: _connect(url))
        self._closed = False

    @classmethod
    async def open(cls, url: str) -> PostgresQueue:
        with guarded():
            pool = await asyncpg.create_pool(
                url, min_size=1, max_size=POOL_SIZE, init=check_durable, timeout=CONNECT_SECONDS,
                command_timeout=COMMAND_SECONDS, server_settings=SESSION_SETTINGS,
            )
        queue = cls(url, pool)
        try:
            await queue._run(migrate)
            with guarded():
                await queue._listener.connect()
        except BaseException:
            await queue.close()
            raise
        return queue

    def _check_open(self) -> None:
        if self._closed:
            raise ConnectionError("the queue is closed")

    async def _run(self, fn: Callable[[Conn], Awaitable[T]]) -> T:
        """``fn`` on a connection of the pool."""
        self._check_open()
        with guarded():
            async with self._pool.acquire() as conn:
                return await fn(conn)

    async def put(self, item: Put, now: float) -> PutResult:
        if item.after is not None:  # it looks at another job: a transaction of its own
            job_id = new_ids(1)[0]
            result = await self._run(lambda conn: links.put(conn, job_id, item, now))
        else:
            result = await self._puts.put((new_ids(1)[0], item, now))
        if result.created:  # at once: the notification takes a round trip through the server
            self._wake(item.kind)
        return result

    async def append(self, link: Link, now: float) -> PutResult:
        [result] = await self.append_many([link], now)
        return result

    async def append_many(self, items: Sequence[Link], now: float) -> list[PutResult]:
        ids = new_ids(len(items))
        results = await self._run(lambda conn: links.append_many(conn, ids, items, now))
        for kind in {r.status.kind for r in results if r.created}:
            self._wake(kind)
        return results

    async def ack(
        self, job: Job, upstream_id: str, now: float,
        details: Mapping[str, object] | None = None,
    ) -> bool:
        released = await self._run(lambda c: links.ack(c, job, upstream_id, now, details))
        for kind in released or ():
            self._wake(kind)
        return released is not None

    async def convert(self, job: Job, kind: str, now: float) -> bool:
        done = await self._run(lambda conn: links.convert(conn, job, kind, now))
        self._wake(kind)
        return done

    async def hasten(self, now: float) -> int:
        hastened = await self._run(lambda conn: links.hasten(conn, now))
        self._listener.wake()
        return hastened

    async def backlog(
        self, kind: str, now: float, limit: int, sites: Sequence[str] | None = None
    ) -> tuple[int, float | None]:
        return await self._run(lambda conn: links.backlog(conn, kind, now, limit, sites))

    async def find(self, site: str, kind: str, dedup_key: str) -> Status | None:
        if _NUL in dedup_key:  # PostgreSQL text cannot hold one: no job has it, and asking fails
            return None
        return await self._run(lambda conn: links.find(conn, site, kind, dedup_key))

    async def chain(self, site: str, chain: str) -> list[Status]:
        if _NUL in chain:
            return []
        return await self._run(lambda conn: links.chain(conn, site, chain))

    async def _commit_puts(self, rows: list[sql.Row]) -> list[PutResult]:
        return await self._run(lambda conn: sql.insert(conn, rows))

    async def put_many(self, items: Sequence[Put], now: float) -> list[PutResult]:
        if not items:
            return []
        rows = [(i, item, now) for i, item in zip(new_ids(len(items)), items, strict=True)]
        results = await self._run(lambda conn: sql.insert(conn, rows))
        for kind in {item.kind for item in items}:
            self._wake(kind)
        return results

    async def lease(
        self, kind: str, limit: int, now: float, visibility: float, site: str | None = None
    ) -> list[Job]:
        return await self._run(lambda c: sql.lease(c, kind, limit, now + visibility, now, site))

    def _wake(self, kind: str) -> None:
        self._listener.wake(kind)

    async def _finish(self, job: Job, update: str, *args: object) -> bool:
        return await self._run(lambda conn: sql.finish(conn, job, update, args))

    async def _finish_many(self, updates: Sequence[Update]) -> int:
        return await self._run(lambda conn: sql.finish_many(conn, updates))


    async def status(self, job_id: str) -> Status | None:
        if _NUL in job_id:
            return None
        return await self._run(lambda conn: sql.status(conn, job_id))

    async def dead(self, limit: int) -> list[Status]:
        return await self._run(lambda conn: sql.dead(conn, limit))

    async def replay(self, job_ids: Sequence[str] | None, now: float) -> int:
        replayed = await self._run(lambda conn: sql.replay(conn, job_ids, now))
        self._listener.wake()
        return replayed

    async def quarantine(self, items: Sequence[Quarantined], keep: int) -> int:
        if not items:
            return 0
        return await self._run(lambda conn: sql.quarantine(conn, items, keep))

    async def spam(self, limit: int, since: float | None = None) -> list[Status]:
        return await self._run(lambda conn: sql.spam(conn, limit, since))

    async def release_spam(
        self, job_ids: Sequence[str] | None, since: float | None, now: float
    ) -> int:
        released = await self._run(lambda conn: sql.release_spam(conn, job_ids, since, now))
        self._listener.wake()
        return released

    async def purge_spam(self, before: float, limit: int) -> int:
        return await self._run(lambda conn: sql.purge_spam(conn, before, limit))

    async def purge(self, delivered_before: float, dead_before: float, limit: int) -> Purged:
        if limit < 1:
            raise ValueError("limit must be at least 1")
        delivered = await self._purge_state(State.DELIVERED, delivered_before, limit)
        dead = await self._purge_state(State.DEAD, dead_before, limit)
        # The payloads are gone from every row the queries see. The old row versions that
        # still hold them go at the next VACUUM of the table, which autovacuum runs.
        return Purged(delivered, dead, flushed=True)

    async def _purge_state(self, state: State, before: float, limit: int) -> int:
        total = 0
        while True:
            # One transaction per batch: its row locks are held for one batch, not the purge.
            count, buried = await self._run(lambda conn: sql.purge(conn, state, before, limit))
            total += count + buried
            if count < limit:
                return total

    async def tally(self, spent: Sequence[Tally], now: float) -> list[Tally]:
        return await self._run(lambda conn: points_sql.postgres_tally(conn, spent, now))

    async def wait_for_work(
        self, kind: str, timeout: float, sites: Sequence[str] | None = None
    ) -> bool:
        return await wait_until_due(
            lambda: self._next_visible(kind, sites), lambda: self._listener.event(kind),
            timeout, POLL_SECONDS,
        )

    async def _next_visible(self, kind: str, sites: Sequence[str] | None) -> float | None:
        self._check_open()
        with guarded():
            await self._listener.connect()  # again after a server restart
        return await self._run(lambda conn: sql.next_visible(conn, kind, sites))

    async def pending_by_site(self) -> dict[str, int]:
        return await self._run(sql.pending_by_site)

    async def stats(self) -> Stats:
        return await self._run(sql.stats)

    async def ping(self) -> None:
        if self._closed:
            raise QueueError("the queue is closed")
        await self._run(lambda conn: conn.fetchval("SELECT 1"))

    async def close(self) -> None:
        """Commit what was put before, then close the pool and the listener."""
        if self._closed:
            return
        await self._puts.close()
        self._closed = True
        await self._listener.close()
        try:
            await asyncio.wait_for(self._pool.close(), CLOSE_SECONDS)
        except _ERRORS:  # the server is gone, or a connection was not given back in time
            self._pool.terminate()
