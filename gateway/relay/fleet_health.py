"""One upstream health for a fleet: the :class:`~gateway.relay.health.Health` gate, in PostgreSQL.

Gateways with the same ``CTGW_EGRESS`` share one row: the failures in a row, up or down, the
probe interval and the next probe's time, and the probe slot (its holder, since when). Every
change is a transaction on that row's lock, so one probe at a time leaves the whole fleet; a
holder that died (or whose call never came) loses the slot a deadline after it took it.

A gateway keeps a copy of ``healthy``: while it is up, a call passes without a statement. A
change of the row is notified on ``ctgw_health``; each gateway keeps a connection listening,
so one that sees Calltouch go down stops the others, and a probe that succeeds anywhere lets
every gateway through at once and has each call its ``on_recovered``. While down, a waiting
gateway also reads the row every ``poll`` seconds: news sent while it was not listening is
lost. Tickets report answers without waiting; with the database away the gate waits and
tries again, and a gateway that is up stays up until the database says otherwise.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import logging
import os
import secrets
import socket
from collections.abc import Callable
from typing import Any

import asyncpg  # type: ignore[import-untyped]

from gateway.calltouch.answers import Retry
from gateway.calltouch.client import Reply
from gateway.queue.postgres import guarded
from gateway.queue.postgres_schema import SESSION_SETTINGS
from gateway.relay import fleet_health_sql as sql
from gateway.relay.fleet_health_rules import DEFAULTS, News, Rules, State
from gateway.relay.fleet_pace import CLOSE_SECONDS, COMMAND_SECONDS, CONNECT_SECONDS
from gateway.relay.gates import Turns, urgency
from gateway.relay.health import OUTAGE_CODES
from gateway.waits import wait_set

log = logging.getLogger(__name__)

Step = Callable[[State, float], State]
_ERRORS = (asyncpg.PostgresError, asyncpg.InterfaceError, asyncpg.InternalClientError,
           OSError, sql.Gone)


class FleetHealthTicket:
    """One call through the fleet's gate: it tells the fleet how the call went."""

    __slots__ = ("_health", "_token", "probe")

    def __init__(self, health: FleetHealth, token: str | None) -> None:
        self._health = health
        self._token = token
        self.probe = token is not None

    def written(self, at: float) -> None:
        pass  # health is told by answers, not by writes

    def answered(self, reply: Reply) -> None:
        failure = reply.failure
        outage = isinstance(failure, Retry) and failure.code in OUTAGE_CODES
        self._health.record(outage, self._token)

    def current(self) -> bool:
        return self.probe or self._health.healthy


class FleetHealth:
    """The health of Calltouch as every gateway of ``egress`` sees it."""

    def __init__(
        self,
        url: str,
        pool: Any,
        egress: str,
        *,
        rules: Rules = DEFAULTS,
        poll: float = 1.0,
        retry: float = 1.0,
        on_change: Callable[[bool], None] = lambda healthy: None,
        on_recovered: Callable[[], None] = lambda: None,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.healthy = True
        self.egress = egress
        self.rules = rules
        self._url, self._pool = url, pool
        self._poll, self._retry = poll, retry
        self._on_change, self._on_recovered = on_change, on_recovered
        self._clock = clock  # None: the database's, the one clock of the fleet
        # Who holds the probe slot, for the logs and to give it back at close.
        self.name = f"{socket.gethostname()}/{os.getpid()}/{secrets.token_hex(3)}"
        self._probes = itertools.count()
        self._seen = -1  # the version of the newest state heard of
        self._woken = asyncio.Event()
        self._turns = Turns()
        self._news: asyncio.Queue[News] = asyncio.Queue()
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._prepared = self._failing = self._closed = False

    @classmethod
    async def open(cls, url: str, egress: str, **options: Any) -> FleetHealth:
        """A gate on its own small pool (a probe never queues behind the queue's statements),
        listening for the fleet's news; it learns the fleet's state as it starts to listen."""
        with guarded():
            pool = await asyncpg.create_pool(url, min_size=1, max_size=2,
                                             timeout=CONNECT_SECONDS,
                                             command_timeout=COMMAND_SECONDS,
                                             server_settings=SESSION_SETTINGS)
        health = cls(url, pool, egress, **options)
        health.start()
        return health

    def start(self) -> None:
        """Listen for the fleet's news (:meth:`open` does)."""
        self._tasks["listen"] = asyncio.create_task(self._listen(), name="ctgw-health-listen")

    async def admit(self, kind: str) -> FleetHealthTicket:
        while not self.healthy:
            async with self._turns.turn(urgency(kind)):
                if self.healthy:
                    break
                self._woken.clear()
                token = f"{self.name}#{next(self._probes)}"
                got = await self._change(functools.partial(self.rules.take, token))
                if got is None:
                    await self._wait(self._retry)
                    continue
                state, now = got
                if state.holder == token:
                    log.info("calltouch probe egress=%s holder=%s", self.egress, self.name)
                    return FleetHealthTicket(self, token)
                # Up: the copy has turned and woken us, so this returns at once.
                free = self._poll if state.healthy else self.rules.free_at(state) - now
                await self._wait(min(self._poll, free))
        return FleetHealthTicket(self, None)

    async def _wait(self, seconds: float) -> None:
        await wait_set(self._woken, seconds)

    def record(self, outage: bool, token: str | None) -> None:
        """Have the database hear how a call went, in order, without making it wait."""
        if self._closed:
            return
        self._news.put_nowait((outage, token))
        if "tell" not in self._tasks or self._tasks["tell"].done():
            self._tasks["tell"] = asyncio.create_task(self._tell(), name="ctgw-health-tell")

    async def flush(self) -> None:
        """Wait until every answer so far is in the database."""
        await self._news.join()

    async def _tell(self) -> None:
        while True:
            news = [await self._news.get()]
            news += [self._news.get_nowait() for _ in range(self._news.qsize())]
            state, now = await self._change_until_done(functools.partial(self.rules.told, news))
            if not state.healthy and any(outage and probe for outage, probe in news):
                log.warning("calltouch probe failed egress=%s; next in %.0fs",
                            self.egress, state.next_probe - now)
            for _ in news:
                self._news.task_done()

    async def _change_until_done(self, step: Step) -> tuple[State, float]:
        while True:
            got = await self._change(step)
            if got is not None:
                return got
            await asyncio.sleep(self._retry)

    async def _change(self, step: Step) -> tuple[State, float] | None:
        """Apply ``step`` to the row (under its lock when it changes it); None: no database."""
        try:
            async with self._pool.acquire() as conn:
                if not self._prepared:
                    await self._prepare(conn)
                state, now = await sql.read(conn, self.egress, self._now())
                new = step(state, now)
                if new != state:  # looked at without the lock; now for real
                    async with conn.transaction():
                        state, now = await sql.read(conn, self.egress, self._now(), lock=True)
                        new = step(state, now)
                        await sql.write(conn, self.egress, state, new)
        except _ERRORS as exc:
            if not self._failing:
                log.error("fleet health cannot reach the database egress=%s error=%s;"
                          " trying again", self.egress, type(exc).__name__)
            self._failing, self._prepared = True, False
            return None
        if self._failing:
            log.info("fleet health reaches the database again egress=%s", self.egress)
            self._failing = False
        self._observe(new.healthy, new.version)
        return new, now

    def _observe(self, healthy: bool, version: int) -> None:
        """The fleet's state as of ``version``: news older than what is known changes nothing."""
        if version < self._seen:
            return
        self._seen = version
        if healthy == self.healthy:
            return
        self.healthy = healthy
        self._woken.set()
        if healthy:
            log.info("calltouch answers again egress=%s: what waited is due now", self.egress)
        else:
            log.error("calltouch is down egress=%s: one probe call at a time for the fleet",
                      self.egress)
        self._on_change(healthy)
        if healthy:
            self._on_recovered()

    async def _listen(self) -> None:
        """Keep a connection listening; on each (re)connection read the row, news sent while
        none listened being lost."""
        while True:
            try:
                await self._listen_once()
            except _ERRORS as exc:
                log.warning("fleet health cannot listen egress=%s error=%s",
                            self.egress, type(exc).__name__)
            await asyncio.sleep(self._retry)

    async def _listen_once(self) -> None:
        conn = await asyncpg.connect(self._url, timeout=CONNECT_SECONDS,
                                     server_settings=SESSION_SETTINGS)
        lost = asyncio.Event()
        try:
            conn.add_termination_listener(lambda _: lost.set())
            await conn.add_listener(sql.CHANNEL, self._notified)
            await self._prepare(conn)
            state, _ = await sql.read(conn, self.egress, self._now())
            self._observe(state.healthy, state.version)
            await lost.wait()
        finally:
            conn.terminate()

    def _notified(self, conn: object, pid: int, channel: str, payload: str) -> None:
        egress, healthy, version = sql.parse(payload)
        if egress == self.egress:
            self._observe(healthy, version)
            self._woken.set()  # the probe slot may be free: the waiter looks again

    def _now(self) -> float | None:
        return None if self._clock is None else self._clock()

    async def _prepare(self, conn: Any) -> None:
        await sql.prepare(conn, self.egress)
        self._prepared = True

    async def close(self) -> None:
        """Record the answers (for a little while at most), give back a probe slot held,
        then close the pool."""
        if self._closed:
            return
        self._closed = True
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._news.join(), CLOSE_SECONDS)
        for task in self._tasks.values():
            task.cancel()
        await asyncio.gather(*self._tasks.values(), return_exceptions=True)
        with contextlib.suppress(TimeoutError):
            # A call cut short by the stop leaves no answer: its slot would wait the deadline.
            await asyncio.wait_for(self._change(functools.partial(self.rules.release,
                                                                  f"{self.name}#")), CLOSE_SECONDS)
        try:
            await asyncio.wait_for(self._pool.close(), CLOSE_SECONDS)
        except _ERRORS:
            self._pool.terminate()
