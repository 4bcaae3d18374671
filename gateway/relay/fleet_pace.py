"""One pace for a fleet: the :class:`~gateway.relay.pacing.Pacer`'s window, kept in PostgreSQL.

Gateways with the same ``CTGW_EGRESS`` leave through one IP, so Calltouch counts their calls
together. Each grant, on whichever gateway, runs in one transaction holding the egress row's
lock: it reads the slots that may still be in a window and grants only if they are fewer than
``count``. A slot is in the window until a window after its stamp, and a slot granted but never
stamped (its gateway died) counts as written at its grant + ``bound``. At grant time every call
that could share a window with the new one is either unstamped or stamped within the last
window, so no sliding window, measured on one clock, holds more than ``count`` calls.

The one clock is the database's. A stamp is the write's moment on it, bounded from above: the
gateway's own clock at the write, plus the most the database's clock can be ahead of the
gateway's, which the grant measured (the database read its clock after the gateway sent the
statement). So a stamp is never earlier than its write, and no later for a report that is slow
to reach the database. (Two hosts' clocks drift apart by parts per million: over the moments
between a grant and its write, far less than the window's margin.) A grant may also be taken
up to ``ahead`` before its moment, while the window is still full: its statements and their
commit then run in time the slot would have waited anyway, and the gateway lets its call go at
that moment, by its own clock, reckoned so that the database's clock has passed the moment by
then.

A 429 anywhere pauses and halves the rate for the fleet; successes climb it back, as the Pacer
does. Tickets report writes and answers without waiting: one task applies them in order. With
the database away a gateway grants nothing: it waits and tries again, since a call it cannot
count could be one too many.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import time
from collections.abc import Sequence
from typing import Any

import asyncpg  # type: ignore[import-untyped]

from gateway.calltouch.answers import Retry
from gateway.calltouch.client import Reply
from gateway.queue.postgres import guarded
from gateway.queue.postgres_schema import SESSION_SETTINGS
from gateway.relay import fleet_pace_sql as sql
from gateway.relay.gates import Turns, urgency
from gateway.relay.pacing import window_of

log = logging.getLogger(__name__)

CONNECT_SECONDS = 10.0
# A statement that takes longer is a server in trouble: give up on it and try again.
COMMAND_SECONDS = 10.0
CLOSE_SECONDS = 5.0
# The bound is the upstream timeout plus this: between a grant and its write come the lease
# (a statement on the queue) and the connection; after the write, the stamp's own trip here.
BOUND_SLACK = 5.0
_ERRORS = (asyncpg.PostgresError, asyncpg.InterfaceError, asyncpg.InternalClientError, OSError)


class FleetSlot:
    """One granted call: a :class:`~gateway.relay.gates.Ticket` of the fleet pace.

    ``ready_at`` is when the call may go, and ``ahead_by`` the most the database's clock is
    ahead of this host's; both as measured by the grant, on this host's monotonic clock.
    """

    __slots__ = ("_pace", "_stamped", "ahead_by", "n", "ready_at")

    def __init__(self, pace: FleetPace, n: int, ready_at: float, ahead_by: float) -> None:
        self.n = n
        self.ready_at = ready_at
        self.ahead_by = ahead_by
        self._pace = pace
        self._stamped = False

    async def ready(self) -> None:
        """Wait for the slot's moment; a wait cut short gives the slot back."""
        try:
            await asyncio.sleep(self.ready_at - time.monotonic())
        except asyncio.CancelledError:
            self.written(time.monotonic())
            raise

    def written(self, at: float) -> None:
        if not self._stamped:
            self._stamped = True
            self._pace.record(sql.STAMPED, self.n, at + self.ahead_by)

    def answered(self, reply: Reply) -> None:
        failure = reply.failure
        if isinstance(failure, Retry) and failure.code == "rate_limited":
            self._pace.record(sql.LIMITED, failure.retry_after or 1.0)
        elif failure is None:  # a 2xx: Calltouch took the call, whatever its items say
            self._pace.record(sql.SUCCEEDED, 0.0)

    def current(self) -> bool:
        return True  # a pace's grant holds until it is used or given back


class FleetPace:
    """At most ``rate`` calls in every sliding second across the gateways of ``egress``."""

    def __init__(
        self,
        pool: Any,
        egress: str,
        rate: float,
        *,
        bound: float = 20.0,
        margin: float = 0.03,
        ahead: float = 0.1,
        recovery: float = 0.5,
        retry: float = 1.0,
    ) -> None:
        self.egress = egress
        self.limit = rate
        self.current = rate
        self.count, self.window = window_of(rate, margin)  # as the Pacer's
        self.bound = bound
        self.ahead = ahead
        self._recovery = recovery
        self._retry = retry
        self._pool = pool
        self._turns = Turns()
        self._todo: asyncio.Queue[sql.News] = asyncio.Queue()
        self._worker: asyncio.Task[None] | None = None
        self._prepared = False
        self._failing = False
        self._closed = False

    @classmethod
    async def open(cls, url: str, egress: str, rate: float, **options: float) -> FleetPace:
        """A pace on its own small pool: a grant never queues behind the queue's statements."""
        with guarded():
            pool = await asyncpg.create_pool(
                url, min_size=1, max_size=2, timeout=CONNECT_SECONDS,
                command_timeout=COMMAND_SECONDS, server_settings=SESSION_SETTINGS,
            )
        pace = cls(pool, egress, rate, **options)
        try:
            with guarded():
                async with pool.acquire() as conn:
                    await pace._prepare(conn)
        except BaseException:
            await pace.close()
            raise
        return pace

    async def admit(self, kind: str) -> FleetSlot:
        # One grant at a time from this gateway: more would only queue on the egress row.
        async with self._turns.turn(urgency(kind)):
            while True:
                got = await self._attempt()
                if isinstance(got, FleetSlot):
                    await got.ready()
                    return got
                await asyncio.sleep(got)

    async def _attempt(self) -> FleetSlot | float:
        """A grant, or how long to wait before the next try."""
        attempt = asyncio.ensure_future(self._grant())
        try:
            return await asyncio.shield(attempt)
        except asyncio.CancelledError:
            # The grant may still commit: its slot must not hold the window until the bound.
            attempt.add_done_callback(_give_back)
            raise
        except _ERRORS as exc:
            if not self._failing:
                log.error("fleet pace cannot reach the database egress=%s error=%s;"
                          " granting nothing until it can", self.egress, type(exc).__name__)
            self._failing = True
            self._prepared = False  # the tables may be what is missing
            return self._retry

    async def _grant(self) -> FleetSlot | float:
        async with self._pool.acquire() as conn:
            if not self._prepared:
                await self._prepare(conn)
            async with conn.transaction():
                egress = await conn.fetchrow(sql.LOCK, self.egress)
                if egress is None:  # the row was removed: make it again, then look
                    self._prepared = False
                    return 0.0
                sent = time.monotonic()
                slots = await conn.fetch(sql.SLOTS, self.egress)
                received = time.monotonic()
                now = float(slots[0]["now"])
                self.current = min(self.limit, float(egress["rate"]))
                delay = self._delay(egress, slots, now)
                if delay > self.ahead:
                    return delay - self.ahead
                at = now + max(0.0, delay)
                n = await conn.fetchval(sql.GRANT, self.egress, at, now, self.bound,
                                        self.window)
        if self._failing:
            log.info("fleet pace reaches the database again egress=%s", self.egress)
            self._failing = False
        # The database read ``now`` between ``sent`` and ``received``: by ``received`` + the
        # delay its clock has passed ``at``, and it is at most ``now - sent`` ahead of ours.
        return FleetSlot(self, int(n), received + (at - now), now - sent)

    def _delay(self, egress: Any, slots: Sequence[Any], now: float) -> float:
        if self.current < self.limit:  # below the limit, grants are also spaced
            spaced = float(egress["last_grant"]) + 1.0 / self.current
        else:
            spaced = -math.inf
        free = self._window_free(slots, now)
        return max(free, spaced, float(egress["paused_until"])) - now

    def _window_free(self, slots: Sequence[Any], now: float) -> float:
        """When one more grant would not make ``count + 1`` in a window, as far as is known."""
        leaving: list[float] = []
        unstamped = 0
        for slot in slots:
            granted, stamp = slot["granted_at"], slot["written_at"]
            if granted is None:  # the join's one row when no slot is left
                continue
            if stamp is None and now < granted + self.bound:
                unstamped += 1  # its call may leave any moment: in the window for now
                continue
            leaves = (granted + self.bound if stamp is None else stamp) + self.window
            if leaves > now:
                leaving.append(leaves)
        excess = len(leaving) + unstamped - self.count
        if excess < 0:
            return -math.inf
        leaving.sort()
        # The window is full of slots not yet stamped, whose calls may be in flight or about
        # to leave: look again a window from now.
        return leaving[excess] if excess < len(leaving) else now + self.window

    def record(self, what: str, value: float, at: float = 0.0) -> None:
        """Have the database record a ticket's news, in order, without making it wait."""
        if self._closed:  # too late: an unstamped slot counts as written at the bound
            return
        self._todo.put_nowait(sql.News(what, value, at))
        if self._worker is None:
            self._worker = asyncio.create_task(self._work(), name=f"ctgw-pace-{self.egress}")

    async def flush(self) -> None:
        """Wait until every ticket's news so far is in the database."""
        await self._todo.join()

    async def _work(self) -> None:
        while True:
            batch = [await self._todo.get()]
            while not self._todo.empty():
                batch.append(self._todo.get_nowait())
            try:
                await self._apply_until_done(batch)
            except Exception as exc:  # a fault of ours: this news is lost, not all that follows
                log.error("fleet pace dropped news egress=%s count=%d error=%s: their slots"
                          " count as written at the bound", self.egress, len(batch),
                          type(exc).__name__)
            finally:
                for _ in batch:  # flush() and close() wait for these
                    self._todo.task_done()

    async def _apply_until_done(self, batch: list[sql.News]) -> None:
        # A batch cut off after its commit is applied again; stamps are idempotent, a halving
        # is not, and one halving too many is the cautious way to be wrong.
        while True:
            try:
                async with self._pool.acquire() as conn:
                    if not self._prepared:
                        await self._prepare(conn)
                    await self._apply(conn, batch)
                return
            except _ERRORS as exc:
                log.warning("fleet pace cannot record egress=%s error=%s",
                            self.egress, type(exc).__name__)
                self._prepared = False
                await asyncio.sleep(self._retry)

    async def _apply(self, conn: Any, batch: list[sql.News]) -> None:
        rate = await sql.record(conn, self.egress, batch, self.limit, self._recovery)
        if rate is not None:
            self.current = min(self.limit, rate)

    async def _prepare(self, conn: Any) -> None:
        await sql.prepare(conn, self.egress, self.limit)
        self._prepared = True

    async def close(self) -> None:
        """Record the tickets' news (for a little while at most), then close the pool."""
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._todo.join(), CLOSE_SECONDS)
        if self._worker is not None:
            self._worker.cancel()
            await asyncio.gather(self._worker, return_exceptions=True)
        try:
            await asyncio.wait_for(self._pool.close(), CLOSE_SECONDS)
        except _ERRORS:  # the server is gone, or a connection was not given back in time
            self._pool.terminate()


def _give_back(attempt: asyncio.Future[FleetSlot | float]) -> None:
    """A grant that finished after its admit was cancelled: no call will use it."""
    if not attempt.cancelled() and attempt.exception() is None:
        got = attempt.result()
        if isinstance(got, FleetSlot):
            got.written(time.monotonic())
