"""API points kept in the store: a restarted gateway goes on from the hour's real spending, and
gateways on one store spend one budget (real SQLite files, the session's real PostgreSQL)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import aiohttp
import pytest

from gateway.config import Settings
from gateway.queue import Queue, State, open_queue
from gateway.queue.base import QueueError, Tally
from gateway.relay.ledger import HOUR
from gateway.relay.points import FOLLOW, Budget, Points
from gateway.sandbox.run import SandboxThread
from tests.conftest import Gateway
from tests.support import (
    QUEUE_BACKENDS,
    eventually,
    lead,
    post_lead,
    queue_url_of,
    sandbox_config,
    sandbox_requests,
)
from tests.test_points import (
    ANSWERED,
    CREATE,
    DEAL,
    LEAD,
    OK,
    REGISTER,
    Clock,
    moscow,
    refusal,
    spend,
)

MOSCOW = ZoneInfo("Europe/Moscow")


@pytest.fixture(params=QUEUE_BACKENDS)
def queue_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    return queue_url_of(request, tmp_path)


def ledger(clock: Clock) -> Points:
    return Points({"shop": Budget(per_hour=50)}, {CREATE: 5}, clock=clock)


async def test_a_restarted_gateway_goes_on_from_the_hours_spending(queue_url: str) -> None:
    clock = Clock(moscow(10, 59, 59))  # the hour's end: its whole bulk share is due
    store = await open_queue(queue_url)
    before = ledger(clock)
    await before.sync(store)
    assert spend(before, DEAL, CREATE, 4) == 4  # 20 of 50
    await before.sync(store)
    await store.close()

    store = await open_queue(queue_url)
    after = ledger(clock)
    try:
        await after.sync(store)
    finally:
        await store.close()
    assert after.remaining("shop", HOUR) == 30
    assert spend(after, DEAL, CREATE, 100) == 5  # to the reserve: 45 of 50
    assert spend(after, LEAD, REGISTER, 100) == 5


async def test_gateways_on_one_store_spend_one_budget(queue_url: str) -> None:
    clock = Clock(moscow(10, 59, 59))
    stores = [await open_queue(queue_url), await open_queue(queue_url)]
    first, second = ledger(clock), ledger(clock)
    try:
        assert spend(first, DEAL, CREATE, 5) == 5  # 25
        await first.sync(stores[0])
        await second.sync(stores[1])
        assert second.remaining("shop", HOUR) == 25
        assert spend(second, DEAL, CREATE, 100) == 4  # the fleet's 45: the reserve
        await second.sync(stores[1])
        await first.sync(stores[0])
    finally:
        for store in stores:
            await store.close()
    assert first.remaining("shop", HOUR) == 5
    assert spend(first, DEAL, CREATE, 1) == 0
    assert spend(first, LEAD, REGISTER, 100) == 5


class Failing:
    """A store that is down: every tally fails."""

    async def tally(self, spent: Sequence[Tally], now: float) -> list[Tally]:
        raise QueueError("the store is down")


async def test_a_failed_sync_keeps_the_spending_for_the_next(tmp_path: Path) -> None:
    clock = Clock(moscow(10, 59, 59))
    store = await open_queue(f"sqlite:///{tmp_path / 'q.db'}")
    points = ledger(clock)
    try:
        spend(points, DEAL, CREATE, 3)
        with pytest.raises(QueueError):
            await points.sync(Failing())
        spend(points, DEAL, CREATE, 1)
        await points.sync(store)
        fresh = ledger(clock)
        await fresh.sync(store)
    finally:
        await store.close()
    assert points.remaining("shop", HOUR) == fresh.remaining("shop", HOUR) == 30


class Busy:
    """The store, with a call of the gateway's taking its points while a sync is under way."""

    def __init__(self, store: Queue, points: Points) -> None:
        self._store, self._points = store, points

    async def tally(self, spent: Sequence[Tally], now: float) -> list[Tally]:
        assert spend(self._points, DEAL, CREATE, 1) == 1
        return await self._store.tally(spent, now)


async def test_points_taken_while_a_sync_runs_count_now_and_in_the_next(tmp_path: Path) -> None:
    clock = Clock(moscow(10, 59, 59))
    store = await open_queue(f"sqlite:///{tmp_path / 'q.db'}")
    points = ledger(clock)
    try:
        spend(points, DEAL, CREATE, 2)
        await points.sync(Busy(store, points))
        assert points.remaining("shop", HOUR) == 35  # the store's 10, and the 5 taken since
        await points.sync(store)
        fresh = ledger(clock)
        await fresh.sync(store)
    finally:
        await store.close()
    assert points.remaining("shop", HOUR) == fresh.remaining("shop", HOUR) == 35


async def test_an_hour_that_ends_during_a_sync_starts_empty(tmp_path: Path) -> None:
    clock = Clock(moscow(10, 59, 59))
    store = await open_queue(f"sqlite:///{tmp_path / 'q.db'}")
    points = ledger(clock)

    class Late:
        async def tally(self, spent: Sequence[Tally], now: float) -> list[Tally]:
            totals = await store.tally(spent, now)
            clock.now = moscow(11).timestamp()  # the answer comes in the next hour
            return totals

    try:
        spend(points, DEAL, CREATE, 2)
        await points.sync(Late())
    finally:
        await store.close()
    assert points.remaining("shop", HOUR) == 50


# A refusal for points, heard by one gateway of a fleet, holds them all; one probe resumes them.


def refusable(clock: Clock) -> tuple[Points, list[bool]]:
    changes: list[bool] = []
    ledger = Points({"shop": Budget(per_hour=9000)}, probe_every=300.0, clock=clock,
                    on_refused=lambda site, refused: changes.append(refused))
    return ledger, changes


def refuse(ledger: Points) -> None:
    """A lead's call, refused by Calltouch for the site's points."""
    verdict = ledger.refused(refusal())
    spent = ledger.take("shop", LEAD, REGISTER)
    assert verdict is not None and spent is not None
    ledger.heard(spent, refusal(), [verdict])


async def sync_all(pairs: Sequence[tuple[Points, Queue]]) -> None:
    for ledger, store in pairs:
        await ledger.sync(store)


@pytest.fixture
async def stores(queue_url: str) -> AsyncIterator[list[Queue]]:
    """Two gateways' stores: two connections to one file or database."""
    opened = [await open_queue(queue_url), await open_queue(queue_url)]
    yield opened
    for store in opened:
        await store.close()


async def test_a_refusal_one_gateway_hears_holds_the_fleet_until_its_probe_passes(
    stores: list[Queue],
) -> None:
    clock = Clock(moscow(10, 20))
    (prober, heard), (other, told) = refusable(clock), refusable(clock)
    pairs = list(zip((prober, other), stores, strict=True))
    await sync_all(pairs)
    refuse(prober)
    await sync_all(pairs)
    assert heard == told == [True]
    # The other waits for the prober's probe, and a while after it before its own.
    assert prober.until("shop", LEAD, REGISTER) == moscow(10, 25).timestamp()
    assert other.until("shop", LEAD, REGISTER) == moscow(10, 25).timestamp() + FOLLOW
    clock.now = moscow(10, 25).timestamp()
    probe = prober.take("shop", LEAD, REGISTER)
    assert probe is not None and not other.take("shop", LEAD, REGISTER)
    prober.heard(probe, ANSWERED, OK)  # it passed
    await sync_all(pairs)
    restarted, learned = refusable(clock)
    await restarted.sync(stores[1])
    assert heard == told == [True, False]
    assert other.until("shop", DEAL, REGISTER) is None
    assert learned == [] and restarted.until("shop", LEAD, REGISTER) is None


async def test_the_gateway_that_heard_the_latest_refusal_is_the_one_that_probes(
    stores: list[Queue],
) -> None:
    clock = Clock(moscow(10, 20))
    (first, _), (second, _) = refusable(clock), refusable(clock)
    pairs = list(zip((first, second), stores, strict=True))
    refuse(first)  # both heard a refusal before either had synced
    clock.now += 1
    refuse(second)
    await sync_all(pairs)  # the first synced before the second's refusal was in the store
    await sync_all(pairs)
    restarted, learned = refusable(clock)  # a gateway that heard none: it waits as well
    await restarted.sync(stores[0])
    latest = moscow(10, 20, 1).timestamp()
    assert second.until("shop", LEAD, REGISTER) == latest + 300
    assert first.until("shop", LEAD, REGISTER) == latest + 300 + FOLLOW
    assert learned == [True] and restarted.until("shop", LEAD, REGISTER) == latest + 300 + FOLLOW


async def test_a_refusal_of_the_hour_before_does_not_hold_the_next(stores: list[Queue]) -> None:
    clock = Clock(moscow(10, 58))
    (first, _), (second, told) = refusable(clock), refusable(clock)
    pairs = list(zip((first, second), stores, strict=True))
    refuse(first)
    await sync_all(pairs)
    clock.now = moscow(11).timestamp()
    await sync_all(pairs)
    assert told == [True, False]
    assert first.until("shop", LEAD, REGISTER) is second.until("shop", LEAD, REGISTER) is None


# The whole gateway: its spending reaches the store before it stops, and a new one reads it
# before its relay starts.

BUDGET = 4


async def seconds_left_in_the_hour(at_least: float) -> None:
    """Wait, if need be, until the Moscow hour has ``at_least`` seconds left: the test's
    budget is the hour's, and a new hour would give it back halfway."""
    now = datetime.now(MOSCOW)
    left = 3600 - (now.minute * 60 + now.second + now.microsecond / 1e6)
    if left < at_least:
        await asyncio.sleep(left + 0.1)  # a wall-clock moment, not an event to wait for


async def test_a_gateway_restarted_on_its_store_spends_no_more_than_the_hour_has(
    start_gateway: Callable[[Settings], Awaitable[Gateway]], settings: Settings,
    queue_url: str, http: aiohttp.ClientSession,
) -> None:
    await seconds_left_in_the_hour(60)
    settings = replace(settings, queue_url=queue_url,
                       points=replace(settings.points, per_hour=BUDGET))
    gw = await start_gateway(settings)
    for n in range(BUDGET + 2):
        assert (await post_lead(http, gw.url, lead(n)))[0] == 202
    sample = gw.metrics.registry.get_sample_value
    site, hour = {"site": "default"}, {"site": "default", "window": "hour"}

    async def budget_spent() -> bool:
        return sample("ctgw_leads_delivered_total", site) == BUDGET
    await eventually(budget_spent, timeout=30)
    assert sample("ctgw_points_remaining", hour) == 0
    await gw.runner.cleanup()  # a stop: its last sync is the store's

    again = await start_gateway(settings)
    assert again.metrics.registry.get_sample_value("ctgw_points_remaining", hour) == 0
    store = await open_queue(queue_url)
    try:
        counts = (await store.stats()).counts
    finally:
        await store.close()
    assert counts.get(State.DELIVERED) == BUDGET, counts


async def test_two_gateways_on_one_postgresql_spend_one_hour(
    start_gateway: Callable[[Settings], Awaitable[Gateway]], settings: Settings,
    postgres_url: str, sandbox: SandboxThread, http: aiohttp.ClientSession,
) -> None:
    """Each alone would spend the whole hour; together they spend it once, and past it by at
    most a second of the fleet's calls (the pace's ``CTGW_RATE``), seen before a sync."""
    await seconds_left_in_the_hour(60)
    budget = 10
    settings = replace(settings, queue_url=postgres_url,
                       points=replace(settings.points, per_hour=budget))
    fleet = [await start_gateway(settings), await start_gateway(settings)]
    for n in range(3 * budget):
        assert (await post_lead(http, fleet[n % 2].url, lead(n)))[0] == 202
    hour = {"site": "default", "window": "hour"}

    def spent() -> float:
        return sum(gw.metrics.registry.get_sample_value(
            "ctgw_points_spent_total", {"site": "default"}) or 0 for gw in fleet)

    async def hour_spent() -> bool:  # neither may spend more, and no call is still out
        left = [gw.metrics.registry.get_sample_value("ctgw_points_remaining", hour)
                for gw in fleet]
        taken = [row for row in await sandbox_requests(http, sandbox.url) if row["status"] == 200]
        return left == [0, 0] and len(taken) == spent()
    await eventually(hour_spent, timeout=30)
    assert budget <= spent() <= budget + settings.rate, spent()


async def test_one_gateway_of_a_fleet_hears_the_refusal_and_probes_for_all(
    start_gateway: Callable[[Settings], Awaitable[Gateway]], settings: Settings,
    postgres_url: str, sandbox: SandboxThread, http: aiohttp.ClientSession,
) -> None:
    """Only one gateway of the two makes refused calls; the other sends nothing until that
    one's probe passes, then both deliver. (The probes are 5 s apart, not 5 min: still far
    more than the second a refusal takes to reach the other through the store, or the other
    could take the refused job when it is due again, before it has heard.)"""
    await seconds_left_in_the_hour(90)
    settings = replace(settings, queue_url=postgres_url,
                       points=replace(settings.points, per_hour=1000, probe_every=5.0))
    fleet = [await start_gateway(settings), await start_gateway(settings)]

    def sample(gw: Gateway, name: str, **labels: str) -> float:
        return gw.metrics.registry.get_sample_value(name, labels) or 0.0

    def calls(gw: Gateway, outcome: str) -> float:
        return sample(gw, "ctgw_upstream_requests_total", method="register", outcome=outcome)

    async def both_refused() -> bool:
        return all(sample(gw, "ctgw_points_refused", site="default") == 1 for gw in fleet)

    await sandbox_config(http, sandbox.url, fault="points")
    assert (await post_lead(http, fleet[0].url, lead(0)))[0] == 202
    await eventually(both_refused, timeout=15)
    for n in range(1, 6):
        assert (await post_lead(http, fleet[n % 2].url, lead(n)))[0] == 202
    prober, other = sorted(fleet, key=lambda gw: -calls(gw, "points_exhausted"))

    async def probed_twice_more() -> bool:  # two probes' time: the other stays quiet
        return calls(prober, "points_exhausted") >= 3
    await eventually(probed_twice_more, timeout=30)
    assert calls(other, "points_exhausted") == 0 and calls(other, "ok") == 0
    await sandbox_config(http, sandbox.url, fault=None)

    async def all_delivered() -> bool:
        return sum(sample(gw, "ctgw_leads_delivered_total", site="default")
                   for gw in fleet) == 6
    await eventually(all_delivered, timeout=30)

    async def both_resumed() -> bool:  # the other at its next sync, if the prober sent all
        return all(sample(gw, "ctgw_points_refused", site="default") == 0 for gw in fleet)
    await eventually(both_resumed, timeout=5)
    assert calls(other, "points_exhausted") == 0
