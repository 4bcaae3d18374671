"""The relay's watch on Calltouch, wired to the metrics and the queue: its health (one gate
for the egress) and each site's API points."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from typing import TYPE_CHECKING

from gateway.config import Settings
from gateway.ops.metrics import Metrics
from gateway.queue import DEFAULT_SITE, Queue
from gateway.relay.health import Health
from gateway.relay.ledger import DAY, HOUR
from gateway.relay.points import Budget, Points
from gateway.sites import Sites

if TYPE_CHECKING:
    from gateway.relay.fleet_health import FleetHealth

log = logging.getLogger(__name__)
SYNC_EVERY = 1.0  # seconds between two points syncs: at most a second of others' calls unseen


class Hastener:
    """Makes every delayed job due now, on a task of its own (a gate's callback cannot wait).

    Tried again while the store fails (it may be failing just as Calltouch comes back): a job
    left delayed would wait out its own backoff, the slow drain this is here to prevent.
    """

    def __init__(self, queue: Queue, pause: float = 1.0, tries: int = 30) -> None:
        self._queue = queue
        self._pause, self._tries = pause, tries
        self._tasks: set[asyncio.Task[None]] = set()  # held, so that a task is not collected

    def __call__(self) -> None:
        task = asyncio.create_task(self._hasten(), name="ctgw-hasten")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _hasten(self) -> None:
        for _ in range(self._tries):
            try:
                await self._queue.hasten(time.time())
                return
            except Exception as exc:  # the store's trouble; the relay reports it as well
                log.warning("cannot make delayed jobs due after recovery error=%s: trying"
                            " again in %.0fs", type(exc).__name__, self._pause)
            await asyncio.sleep(self._pause)
        log.error("delayed jobs were not made due after recovery: they wait out their backoff")


def health_gate(queue: Queue, metrics: Metrics, settings: Settings) -> Health:
    """While Calltouch is down one probe goes at a time; once it answers, what backed off
    meanwhile is due at once."""
    healthy = metrics.upstream_healthy.labels(DEFAULT_SITE)
    healthy.set(1)
    return Health(on_change=lambda up: healthy.set(1 if up else 0), on_recovered=Hastener(queue),
                  max_probe=settings.probe_max, probe_deadline=settings.upstream_timeout + 5.0)


async def fleet_health_gate(queue: Queue, metrics: Metrics, settings: Settings) -> FleetHealth:
    """The same gate for gateways on one PostgreSQL queue, its state kept in that database:
    what one gateway of an egress sees, all see, and one probe goes for the whole fleet."""
    from gateway.relay.fleet_health import FleetHealth  # asyncpg: only for those who use it
    from gateway.relay.fleet_health_rules import Rules

    healthy = metrics.upstream_healthy.labels(DEFAULT_SITE)
    healthy.set(1)
    return await FleetHealth.open(
        settings.queue_url, settings.egress,
        rules=Rules(max_probe=settings.probe_max, probe_deadline=settings.upstream_timeout + 5.0),
        on_change=lambda up: healthy.set(1 if up else 0), on_recovered=Hastener(queue),
    )


def site_budgets(sites: Sites, reserve: float) -> dict[str, Budget]:
    """The budget of every site that has one; a site's own ``points_reserve`` overrides the
    gateway's ``reserve``."""
    return {
        name: Budget(site.points_per_hour, site.points_per_day,
                     reserve if site.points_reserve is None else site.points_reserve,
                     site.timezone)
        for name, site in sites.sites.items()
        if site.points_per_hour is not None or site.points_per_day is not None
    }


def site_points(queue: Queue, metrics: Metrics, settings: Settings, sites: Sites) -> Points:
    """Each site's budgets and spending, shown by ``ctgw_points_*``; a site Calltouch refused
    for points has its waiting jobs made due once it may spend again."""
    config = settings.points
    budgets = site_budgets(sites, config.reserve)
    hasten = Hastener(queue)

    def refused(site: str, now_refused: bool) -> None:
        metrics.points_refused.labels(site).set(1 if now_refused else 0)
        if not now_refused:
            hasten()

    points = Points(budgets, config.costs, refusal=config.refusal,
                    probe_every=config.probe_every, on_refused=refused,
                    on_spent=lambda site, cost: metrics.points_spent.labels(site).inc(cost))
    for name in sites.sites:
        metrics.points_spent.labels(name)
        metrics.points_refused.labels(name).set(0)
    for name, budget in budgets.items():
        for window, limit in ((HOUR, budget.per_hour), (DAY, budget.per_day)):
            if limit is not None:
                metrics.points_remaining.labels(name, window).set_function(
                    functools.partial(points.remaining, name, window))
    return points


class PointsSync:
    """Keeps the sites' spending in the store: once before the relay starts (a restarted
    gateway goes on from the hour's real spending), then every ``every`` seconds, and once
    more when it stops."""

    def __init__(self, points: Points, queue: Queue, every: float = SYNC_EVERY) -> None:
        self._points, self._queue, self._every = points, queue, every
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self._points.sync(self._queue)
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self._sync()

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._every)
            await self._sync()

    async def _sync(self) -> None:
        try:
            await self._points.sync(self._queue)
        except Exception as error:  # the store is down: the spending waits for the next sync
            log.warning("api points sync failed, kept for the next: %s", error)
