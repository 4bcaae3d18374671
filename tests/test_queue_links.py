"""Links between jobs: held jobs (``Put.after``), chains (``append``), and what goes with them
(``ack(details=)``, ``convert``, ``backlog``, ``find``, ``chain``, lease's one-site rule).

Every test runs on every backend, as ``test_queue_contract.py``'s do, but the last two: they
need several gateways on one store, which only PostgreSQL serves.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import asyncpg  # type: ignore[import-untyped]
import orjson
import pytest

from gateway.kinds import deal as deals
from gateway.kinds import deal_merge
from gateway.kinds.deal_fields import LEAD_FIRST
from gateway.queue import (
    Back,
    Job,
    Put,
    PutResult,
    Queue,
    State,
    Status,
    open_queue,
    postgres_links,
)
from gateway.queue.base import PARENT_DEAD, Link, Quarantined
from gateway.queue.sqlite_schema import path_from_url
from tests.support import eventually

T0 = 1_700_000_000.0


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'q.db'}"


# As in test_queue_contract.py: each backend's fixture giving the URL of a new, empty store.
BACKENDS: dict[str, str] = {"sqlite": "sqlite_url", "postgresql": "postgres_url"}


@pytest.fixture(params=list(BACKENDS))
def url(request: pytest.FixtureRequest) -> str:
    found: str = request.getfixturevalue(BACKENDS[request.param])
    return found


@pytest.fixture
def opener(url: str) -> Callable[[], Awaitable[Queue]]:
    return lambda: open_queue(url)


@pytest.fixture
async def queue(opener: Callable[[], Awaitable[Queue]]) -> AsyncIterator[Queue]:
    q = await opener()
    yield q
    await q.close()


async def rows(url: str, query: str) -> list[tuple[object, ...]]:
    """``query`` run on the store behind the queue's back (what the contract does not show)."""
    if url.startswith("sqlite"):
        with contextlib.closing(sqlite3.connect(path_from_url(url))) as conn:
            return [tuple(row) for row in conn.execute(query).fetchall()]
    conn = await asyncpg.connect(url)
    try:
        return [tuple(row) for row in await conn.fetch(query)]
    finally:
        await conn.close()


async def put(q: Queue, payload: bytes = b"{}", key: str | None = None, kind: str = "lead",
              now: float = T0, site: str = "default", after: str | None = None) -> PutResult:
    return await q.put(Put(kind, payload, key, site, after), now)


async def lease_one(q: Queue, kind: str, now: float, visibility: float = 30) -> Job:
    jobs = await q.lease(kind, 10, now, visibility)
    assert len(jobs) == 1, jobs
    return jobs[0]


async def state_of(q: Queue, job_id: str) -> State:
    status = await q.status(job_id)
    assert status is not None
    return status.state


async def held_child(q: Queue) -> tuple[str, str]:
    """A lead and a comment held for it: their ids."""
    parent = await put(q, b'{"lead": 1}')
    child = await put(q, b'{"comment": 1}', kind="comment", after=parent.status.id)
    assert child.created and child.status.state == State.HELD
    return parent.status.id, child.status.id


def deal(chain: str, body: bytes, site: str = "default", key: str | None = None,
         merge: Callable[[bytes, bytes], bytes] | None = None,
         follow: Callable[[bytes | None, bytes], bytes | None] | None = None) -> Link:
    """A post to a deal's chain: its create when the chain is new, else an update."""
    return Link(chain, Put("create", body, key, site), Put("update", body, None, site),
                merge, follow)


# Held jobs (Put.after)


async def test_a_job_put_after_an_undelivered_one_is_held(queue: Queue) -> None:
    _, child = await held_child(queue)
    assert await state_of(queue, child) == State.HELD
    assert await queue.lease("comment", 10, T0 + 100, 30) == []
    assert not await queue.wait_for_work("comment", 0.2)
    assert await queue.backlog("comment", T0 + 100, 10) == (0, None)
    stats = await queue.stats()
    assert (stats.counts[State.HELD], stats.counts[State.READY]) == (1, 1)
    assert sum(stats.counts.values()) == 2
    assert stats.oldest_pending_at == T0  # the parent's: a held job is not pending


async def test_an_ack_releases_the_held_job_with_its_upstream_id(queue: Queue) -> None:
    parent, child = await held_child(queue)
    job = await lease_one(queue, "lead", T0 + 1)
    assert job.id == parent and job.after_upstream is None
    assert await queue.ack(job, "R1", T0 + 2)
    assert await state_of(queue, child) == State.READY
    released = await lease_one(queue, "comment", T0 + 2)
    assert (released.id, released.after_upstream, released.payload, released.attempts) == (
        child, "R1", b'{"comment": 1}', 0)
    stats = await queue.stats()
    assert (stats.counts[State.HELD], stats.counts[State.LEASED],
            stats.counts[State.DELIVERED]) == (0, 1, 1)


async def test_wait_for_work_wakes_on_the_ack_that_releases_a_held_job(queue: Queue) -> None:
    _, child = await held_child(queue)
    job = await lease_one(queue, "lead", T0 + 1)
    waiting = asyncio.create_task(queue.wait_for_work("comment", 30))
    assert await state_of(queue, child) == State.HELD  # the waiter has had its turn meanwhile
    assert not waiting.done()  # nothing of its kind is visible: it cannot have ended
    started = time.monotonic()
    assert await queue.ack(job, "R1", T0 + 2)
    assert await asyncio.wait_for(waiting, 5)
    assert time.monotonic() - started < 0.5  # woken by the ack, not found by a poll


async def test_a_job_put_after_a_delivered_one_is_ready_at_once(queue: Queue) -> None:
    parent = await put(queue)
    job = await lease_one(queue, "lead", T0)
    assert await queue.ack(job, "R7", T0 + 1)
    child = await put(queue, b'{"c": 1}', kind="comment", now=T0 + 2, after=parent.status.id)
    assert child.created and child.status.state == State.READY
    released = await lease_one(queue, "comment", T0 + 2)
    assert (released.id, released.after_upstream) == (child.status.id, "R7")


async def test_a_job_put_after_an_unknown_one_is_ready_without_an_upstream(queue: Queue) -> None:
    child = await put(queue, kind="comment", after="no-such-job")
    assert child.created and child.status.state == State.READY
    released = await lease_one(queue, "comment", T0)
    assert (released.id, released.after_upstream) == (child.status.id, None)


async def test_a_job_held_for_a_dead_one_waits_for_its_replay(queue: Queue) -> None:
    parent, child = await held_child(queue)
    job = await lease_one(queue, "lead", T0)
    assert await queue.bury(job, "HTTP 400: bad", T0 + 1)
    assert await state_of(queue, child) == State.HELD
    assert await queue.lease("comment", 10, T0 + 100, 30) == []
    assert await queue.replay([parent], T0 + 2) == 1
    assert await state_of(queue, child) == State.HELD  # ready again is not delivered
    again = await lease_one(queue, "lead", T0 + 2)
    assert again.id == parent
    assert await queue.lease("comment", 10, T0 + 3, 30) == []
    assert await queue.ack(again, "R2", T0 + 3)
    released = await lease_one(queue, "comment", T0 + 3)
    assert (released.id, released.after_upstream) == (child, "R2")


async def dead_lead(q: Queue, at: float = T0 + 1) -> str:
    """A lead put at T0, leased and dead-lettered at ``at``: its id."""
    lead = await put(q, b'{"lead": 1}')
    job = await lease_one(q, "lead", T0)
    assert job.id == lead.status.id and await q.bury(job, "HTTP 400: bad", at)
    return job.id


async def assert_dead_for_its_parent(q: Queue, url: str, job_id: str) -> None:
    """Dead with PARENT_DEAD, never tried, its payload gone, and no replay can queue it."""
    status = await q.status(job_id)
    assert status is not None
    assert (status.state, status.attempts, status.purged) == (State.DEAD, 0, True)
    assert status.last_error == PARENT_DEAD and status.public_status == "dead"
    assert await rows(url, f"SELECT payload FROM jobs WHERE id = '{job_id}'") == [(None,)]
    assert await q.replay([job_id], T0 + 1000) == 0


async def test_a_job_held_for_a_dead_one_dies_when_that_ones_payload_is_purged(
    queue: Queue, url: str
) -> None:
    parent, child = await held_child(queue)
    job = await lease_one(queue, "lead", T0)
    assert await queue.bury(job, "HTTP 400: bad", T0 + 5)
    # Within the dead retention the child keeps waiting for a replay.
    assert (await queue.purge(T0 + 100, T0 + 5, 10)).dead == 0
    assert await state_of(queue, child) == State.HELD
    purged = await queue.purge(T0 + 100, T0 + 6, 10)
    assert purged.dead == 2  # the parent's payload, and the child buried with its own
    assert await queue.replay([parent], T0 + 7) == 0
    await assert_dead_for_its_parent(queue, url, child)
    # Dead since its wait became hopeless: when its parent died.
    assert await rows(url, f"SELECT done_at FROM jobs WHERE id = '{child}'") == [(T0 + 5,)]
    stats = await queue.stats()
    assert (stats.counts[State.HELD], stats.counts[State.DEAD]) == (0, 2)
    assert await queue.lease("comment", 10, T0 + 1000, 30) == []
    assert (await queue.purge(T0 + 1000, T0 + 1000, 10)).dead == 0  # counted once


@pytest.mark.parametrize("drop", ["retention", "cap"])
async def test_what_waits_for_spam_dies_when_that_spam_is_purged(
    queue: Queue, url: str, drop: str
) -> None:
    # A CRM names a lead the gateway scored spam: its deal waits for a release that may come.
    lead = Quarantined("spam-1", Put("lead", b'{"lead": 1}', "rn-1"), "score=4", T0)
    assert await queue.quarantine([lead], keep=100) == 0
    create = await queue.append(Link("d-1", Put("create", b"c", "d-1", after="spam-1"),
                                     deal("d-1", b"c").next), T0 + 2)
    update = await queue.append(deal("d-1", b"u1"), T0 + 3)
    assert (create.status.state, update.status.state) == (State.HELD, State.HELD)
    if drop == "retention":
        assert await queue.purge_spam(T0 + 1, 10) == 1
    else:  # the quarantine's cap drops the oldest spam
        later = Quarantined("spam-2", Put("lead", b'{"lead": 2}', "rn-2"), "score=4", T0 + 4)
        assert await queue.quarantine([later], keep=1) == 1
    assert await queue.status("spam-1") is None
    for job_id in (create.status.id, update.status.id):
        await assert_dead_for_its_parent(queue, url, job_id)
    assert (await queue.stats()).counts[State.HELD] == 0


async def test_what_waits_down_a_chain_for_a_purged_dead_job_is_dead_too(
    queue: Queue, url: str
) -> None:
    lead = await dead_lead(queue)
    link = deal("d-1", b"c")
    create = await queue.append(Link("d-1", Put("create", b"c", "d-1", after=lead), link.next),
                                T0 + 2)
    update = await queue.append(deal("d-1", b"u1"), T0 + 3)
    other = await put(queue, b'{"lead": 2}', key="rn-2")  # pending: its comment keeps waiting
    waits = await put(queue, b"w", kind="comment", after=other.status.id)
    assert (create.status.state, update.status.state) == (State.HELD, State.HELD)
    purged = await queue.purge(T0 + 100, T0 + 100, 10)
    assert purged.dead == 3
    for job_id in (create.status.id, update.status.id):
        await assert_dead_for_its_parent(queue, url, job_id)
    assert await state_of(queue, waits.status.id) == State.HELD
    assert await state_of(queue, other.status.id) == State.READY


async def test_a_purge_in_batches_buries_the_children_of_each_batch(
    queue: Queue, url: str
) -> None:
    children = []
    for n in range(3):
        lead = await put(queue, b"{}", key=f"rn-{n}")
        children.append((await put(queue, b"c", kind="comment", after=lead.status.id)).status.id)
    for job in await queue.lease("lead", 10, T0, 30):
        assert await queue.bury(job, "HTTP 400: bad", T0 + 1)
    assert (await queue.purge(T0 + 100, T0 + 100, limit=2)).dead == 6
    for job_id in children:
        await assert_dead_for_its_parent(queue, url, job_id)


async def test_a_job_put_after_a_dead_and_purged_one_is_dead_at_once(
    queue: Queue, url: str
) -> None:
    lead = await dead_lead(queue)
    assert (await queue.purge(T0 + 100, T0 + 100, 10)).dead == 1
    result = await put(queue, b"secret", key="c-1", kind="comment", now=T0 + 200, after=lead)
    assert result.created
    assert (result.status.state, result.status.last_error) == (State.DEAD, PARENT_DEAD)
    assert result.status.purged
    await assert_dead_for_its_parent(queue, url, result.status.id)
    again = await put(queue, b"secret", key="c-1", kind="comment", now=T0 + 201, after=lead)
    assert (again.created, again.status.id) == (False, result.status.id)
    # A chain whose tail died and was purged: what is posted after it is dead at once too.
    first = await queue.append(Link("d-1", Put("create", b"c", "d-1", after=lead),
                                    deal("d-1", b"c").next), T0 + 202)
    assert first.status.state == State.DEAD
    update = await queue.append(deal("d-1", b"u1"), T0 + 203)
    assert (update.created, update.status.state) == (True, State.DEAD)
    await assert_dead_for_its_parent(queue, url, update.status.id)
    assert (await queue.stats()).counts[State.HELD] == 0


def joined(queued: bytes, new: bytes) -> bytes:
    return queued + b"+" + new


async def test_a_post_to_a_deal_whose_create_died_is_that_create_again(
    queue: Queue, url: str
) -> None:
    """The CRM posts again the deal Calltouch refused, mended: it goes, as a create."""
    create = await queue.append(deal("d-1", b"bad", key="d-1", merge=joined), T0)
    job = await lease_one(queue, "create", T0)
    assert await queue.bury(job, "HTTP 400: orders[0].orderDate", T0 + 1)
    again = await queue.append(deal("d-1", b"mended", key="d-1", merge=joined), T0 + 50)
    assert (again.created, again.merged, again.status.id) == (False, True, create.status.id)
    assert (again.status.state, again.status.attempts, again.status.last_error) == (
        State.READY, 0, None)
    assert [s.id for s in await queue.chain("default", "d-1")] == [create.status.id]
    leased = await lease_one(queue, "create", T0 + 50)
    assert (leased.payload, leased.created_at) == (b"bad+mended", T0 + 50)  # a new max age
    stats = await queue.stats()
    assert (stats.counts[State.DEAD], stats.counts[State.LEASED]) == (0, 1)


async def test_a_create_that_died_and_was_purged_is_put_again_as_posted(
    queue: Queue, url: str
) -> None:
    create = await queue.append(deal("d-1", b"bad", merge=joined), T0)
    assert await queue.bury(await lease_one(queue, "create", T0), "HTTP 400: bad", T0 + 1)
    assert (await queue.purge(T0 + 100, T0 + 100, 10)).dead == 1
    again = await queue.append(deal("d-1", b"new", merge=joined), T0 + 200)
    assert (again.merged, again.status.id, again.status.state) == (True, create.status.id,
                                                                   State.READY)
    assert (await lease_one(queue, "create", T0 + 200)).payload == b"new"


async def test_a_revived_create_keeps_its_leads_id_and_events_are_not_revived(
    queue: Queue
) -> None:
    lead = await put(queue, b'{"lead": 1}', key="rn-1")
    create = await queue.append(Link("d-1", Put("create", b"c", "d-1", after=lead.status.id),
                                     Put("update", b"u", None), joined), T0)
    assert await queue.ack(await lease_one(queue, "lead", T0), "R1", T0 + 1)
    assert await queue.bury(await lease_one(queue, "create", T0 + 1), "HTTP 400", T0 + 2)
    again = await queue.append(deal("d-1", b"u2", merge=joined), T0 + 3)
    assert (again.status.id, again.status.state) == (create.status.id, State.READY)
    revived = await lease_one(queue, "create", T0 + 3)
    assert (revived.payload, revived.after_upstream) == (b"c+u2", "R1")
    # A chain without merge holds events (1.0 calls): a dead one is not made another.
    event = await queue.append(deal("o-1", b"register"), T0)
    assert await queue.bury(await lease_one(queue, "create", T0 + 4), "HTTP 400", T0 + 5)
    then = await queue.append(deal("o-1", b"update-by-id"), T0 + 6)
    assert then.created and then.status.id != event.status.id
    assert await state_of(queue, event.status.id) == State.DEAD


async def test_a_create_dead_for_its_purged_lead_is_revived_by_a_post_naming_no_lead(
    queue: Queue
) -> None:
    """Its lead can never come, so the CRM's mended post, which names none, goes without it
    (before, it stayed dead: the revived create waited for that lead again)."""
    lead = await put(queue, b'{"lead": 1}', key="rn-1")
    assert await queue.bury(await lease_one(queue, "lead", T0), "HTTP 400", T0 + 1)
    assert (await queue.purge(T0 + 100, T0 + 100, 10)).dead == 1
    named = Link("d-1", Put("create", b"c", "d-1", after=lead.status.id), Put("update", b"u"),
                 joined)
    create = await queue.append(named, T0 + 200)
    assert (create.status.state, create.status.last_error) == (State.DEAD, PARENT_DEAD)
    mended = await queue.append(deal("d-1", b"m", merge=joined), T0 + 300)
    assert (mended.merged, mended.status.id, mended.status.state) == (
        True, create.status.id, State.READY)
    revived = await lease_one(queue, "create", T0 + 300)
    assert (revived.payload, revived.after_upstream) == (b"m", None)


@pytest.mark.parametrize("purged", [False, True], ids=["create-kept", "create-purged"])
async def test_a_post_naming_a_purged_lead_leaves_the_dead_create_to_revive(
    queue: Queue, purged: bool
) -> None:
    """The post cannot revive the create (the lead it names can never come): it is kept in
    the dead create, not queued behind it, so the next post still revives the create. Before,
    an update queued behind the dead create took the chain's tail, and stayed held for ever
    (or was dead at once, and every later post with it)."""
    lead = await put(queue, b'{"lead": 1}', key="rn-1")
    assert await queue.bury(await lease_one(queue, "lead", T0), "HTTP 400", T0 + 1)
    assert (await queue.purge(T0 + 100, T0 + 100, 10)).dead == 1
    create = await queue.append(deal("d-1", b"c", merge=joined), T0 + 200)
    assert await queue.bury(await lease_one(queue, "create", T0 + 200), "HTTP 400", T0 + 201)
    if purged:
        assert (await queue.purge(T0 + 300, T0 + 300, 10)).dead == 1
    naming = Link("d-1", Put("create", b"x", after=lead.status.id), Put("update", b"x"), joined)
    kept = await queue.append(naming, T0 + 400)
    assert (kept.created, kept.status.id, kept.status.state) == (
        False, create.status.id, State.DEAD)
    assert [s.id for s in await queue.chain("default", "d-1")] == [create.status.id]
    # The dead letter holding the post is kept from the post's time, not from its death.
    assert (await queue.purge(T0 + 350, T0 + 350, 10)).dead == 0
    mended = await queue.append(deal("d-1", b"m", merge=joined), T0 + 500)
    assert (mended.status.id, mended.status.state) == (create.status.id, State.READY)
    revived = await lease_one(queue, "create", T0 + 500)
    assert revived.payload == (b"m" if purged else b"c+x+m")


@pytest.mark.parametrize("purged", [False, True], ids=["kept", "purged"])
async def test_what_was_queued_behind_a_create_that_died_is_folded_into_its_revival(
    queue: Queue, purged: bool
) -> None:
    """An update posted while the create was in flight waited behind it; Calltouch refused
    the create. The mended post revives the create with the update in it, and the update is
    gone. Before, the post merged into the held update, which waited for ever (for a replay
    of the old, refused create), and once the create was purged every post was dead at once."""
    create = await queue.append(deal("d-1", b"c", merge=joined), T0)
    in_flight = await lease_one(queue, "create", T0)
    held = await queue.append(deal("d-1", b"u", merge=joined), T0 + 1)
    assert (held.created, held.status.state) == (True, State.HELD)
    assert await queue.bury(in_flight, "HTTP 400", T0 + 2)
    if purged:  # the create, and the update buried with it
        assert (await queue.purge(T0 + 100, T0 + 100, 10)).dead == 2
    mended = await queue.append(deal("d-1", b"m", merge=joined), T0 + 200)
    assert (mended.status.id, mended.status.state) == (create.status.id, State.READY)
    assert [s.id for s in await queue.chain("default", "d-1")] == [create.status.id]
    assert (await queue.stats()).counts[State.HELD] == 0
    assert (await lease_one(queue, "create", T0 + 200)).payload == (
        b"m" if purged else b"c+u+m")


@pytest.mark.parametrize("purged", [False, True], ids=["kept", "purged"])
async def test_a_post_to_a_deal_whose_update_died_is_that_update_again(
    queue: Queue, purged: bool
) -> None:
    """Before, the post waited behind the dead update for ever, and once that was purged
    every post of the deal was dead at once."""
    create = await queue.append(deal("d-1", b"c", merge=joined), T0)
    assert await queue.ack(await lease_one(queue, "create", T0), "R1", T0 + 1)
    update = await queue.append(deal("d-1", b"u", merge=joined), T0 + 2)
    assert await queue.bury(await lease_one(queue, "update", T0 + 2), "HTTP 400", T0 + 3)
    if purged:
        assert (await queue.purge(T0 + 100, T0 + 100, 10)).dead == 1
    mended = await queue.append(deal("d-1", b"m", merge=joined), T0 + 200)
    assert (mended.status.id, mended.status.state) == (update.status.id, State.READY)
    chain = await queue.chain("default", "d-1")
    assert [s.id for s in chain] == [create.status.id, update.status.id]
    revived = await lease_one(queue, "update", T0 + 200)
    assert (revived.payload, revived.after_upstream) == (b"m" if purged else b"u+m", "R1")


async def test_a_create_that_became_an_update_and_died_is_revived_as_that_update(
    queue: Queue
) -> None:
    """Calltouch held the deal already (the create became an update), then refused it."""
    create = await queue.append(deal("d-1", b"c", merge=joined), T0)
    assert await queue.convert(await lease_one(queue, "create", T0), "update", T0 + 1)
    assert await queue.bury(await lease_one(queue, "update", T0 + 1), "HTTP 400", T0 + 2)
    mended = await queue.append(deal("d-1", b"m", merge=joined), T0 + 3)
    assert (mended.status.id, mended.status.state) == (create.status.id, State.READY)
    assert (await lease_one(queue, "update", T0 + 3)).payload == b"c+m"


async def test_a_revived_create_is_matched_by_the_lead_the_new_post_names(
    queue: Queue
) -> None:
    """With the deal kind's own merge: the lead marker of the post comes with its lead."""
    def create_post(after: str | None = None, **fields: object) -> Link:
        body = orjson.dumps({"orderNumber": "d-1", "status": "new", **fields})
        return Link("d-1", Put(deals.KIND_CREATE, body, "d-1", after=after),
                    Put(deals.KIND_UPDATE, body), deal_merge.merge, deal_merge.follow)

    await queue.append(create_post(), T0)
    assert await queue.bury(await lease_one(queue, deals.KIND_CREATE, T0), "HTTP 400", T0 + 1)
    lead = await put(queue, b'{"lead": 1}', key="rn-1", now=T0 + 2)
    await queue.append(create_post(lead.status.id, **{LEAD_FIRST: True}), T0 + 3)
    assert await queue.ack(await lease_one(queue, "lead", T0 + 4), "R-LEAD", T0 + 5)
    job = await lease_one(queue, deals.KIND_CREATE, T0 + 6)
    order = deals.create_order(orjson.loads(job.payload), job.after_upstream)
    assert order["matching"][0] == {"type": "request",
                                    "requestParams": {"requestId": "R-LEAD"}}


async def test_dedup_applies_to_puts_made_after_another(queue: Queue) -> None:
    parent = await put(queue)
    first = await put(queue, b"1", key="c-1", kind="comment", after=parent.status.id)
    again = await put(queue, b"2", key="c-1", kind="comment", after=parent.status.id)
    elsewhere = await put(queue, b"3", key="c-1", kind="comment", after="no-such-job")
    assert first.created and not again.created and not elsewhere.created
    assert again.status.id == first.status.id == elsewhere.status.id
    assert again.status.state == State.HELD
    other_site = await put(queue, b"4", key="c-1", kind="comment", site="b",
                           after=parent.status.id)
    assert other_site.created and other_site.status.id != first.status.id
    assert (await queue.stats()).counts[State.HELD] == 2
    job = await lease_one(queue, "lead", T0)
    assert await queue.ack(job, "R1", T0 + 1)
    released = await queue.lease("comment", 10, T0 + 1, 30, site="default")
    assert [(j.id, j.payload) for j in released] == [(first.status.id, b"1")]


async def test_ack_keeps_the_answer_details(queue: Queue) -> None:
    done = await put(queue)
    plain = await put(queue, key="plain")
    job, other = await queue.lease("lead", 10, T0, 30)
    assert {job.id, other.id} == {done.status.id, plain.status.id}
    assert await queue.ack(job, "5222102", T0 + 1, details={"source": "yandex"})
    assert await queue.ack(other, "5222103", T0 + 1)
    status = await queue.status(job.id)
    assert status is not None and status.details == {"source": "yandex"}
    assert status.upstream_id == "5222102" and status.state == State.DELIVERED
    without = await queue.status(other.id)
    assert without is not None and without.details is None


async def test_an_ack_from_a_lost_lease_releases_nothing(queue: Queue) -> None:
    parent, child = await held_child(queue)
    old = await lease_one(queue, "lead", T0, 30)
    new = await lease_one(queue, "lead", T0 + 31, 30)
    assert not await queue.ack(old, "R-old", T0 + 32, details={"source": "yandex"})
    assert await state_of(queue, parent) == State.LEASED
    assert await state_of(queue, child) == State.HELD
    assert await queue.lease("comment", 10, T0 + 100, 30) == []
    assert await queue.ack(new, "R-new", T0 + 33)
    status = await queue.status(parent)
    assert status is not None and (status.upstream_id, status.details) == ("R-new", None)
    released = await lease_one(queue, "comment", T0 + 33)
    assert released.after_upstream == "R-new"


# Chains (append)


async def test_a_new_chain_queues_its_first_put(queue: Queue) -> None:
    result = await queue.append(deal("d-1", b"c"), T0)
    assert (result.created, result.merged) == (True, False)
    assert (result.status.kind, result.status.state) == ("create", State.READY)
    [listed] = await queue.chain("default", "d-1")
    assert (listed.id, listed.kind, listed.state) == (result.status.id, "create", State.READY)
    job = await lease_one(queue, "create", T0)
    assert (job.id, job.payload, job.after_upstream) == (result.status.id, b"c", None)


async def test_the_next_post_is_held_after_the_chain_tail(queue: Queue) -> None:
    first = await queue.append(deal("d-1", b"c"), T0)
    second = await queue.append(deal("d-1", b"u1"), T0 + 1)
    assert (second.created, second.merged) == (True, False)
    assert (second.status.kind, second.status.state) == ("update", State.HELD)
    assert await queue.lease("update", 10, T0 + 100, 30) == []
    assert [s.id for s in await queue.chain("default", "d-1")] == [
        first.status.id, second.status.id]
    job = await lease_one(queue, "create", T0 + 2)
    assert await queue.ack(job, "C1", T0 + 3)
    update = await lease_one(queue, "update", T0 + 3)
    assert (update.id, update.payload, update.after_upstream) == (second.status.id, b"u1", "C1")


async def test_a_post_merges_into_the_queued_tail(queue: Queue) -> None:
    calls: list[tuple[bytes, bytes]] = []

    def merge(queued: bytes, new: bytes) -> bytes:
        calls.append((queued, new))
        return queued + b"+" + new

    create = await queue.append(deal("d-1", b"c", merge=merge), T0)
    # The create not sent yet takes the post: it is the chain's first kind.
    into_create = await queue.append(deal("d-1", b"u0", merge=merge), T0 + 1)
    assert calls == [(b"c", b"u0")]
    assert (into_create.created, into_create.merged) == (False, True)
    assert into_create.status.id == create.status.id
    sending = await lease_one(queue, "create", T0 + 1)
    assert sending.payload == b"c+u0"
    update = await queue.append(deal("d-1", b"u1", merge=merge), T0 + 1)
    assert len(calls) == 1 and update.created  # the create is leased: this one follows it
    merged = await queue.append(deal("d-1", b"u2", merge=merge), T0 + 2)
    assert calls[-1] == (b"u1", b"u2")
    assert (merged.created, merged.merged) == (False, True)
    assert (merged.status.id, merged.status.state) == (update.status.id, State.HELD)
    assert len(await queue.chain("default", "d-1")) == 2
    assert await queue.ack(sending, "C1", T0 + 4)
    # Ready but not leased yet: still queued, still merged into.
    again = await queue.append(deal("d-1", b"u3", merge=merge), T0 + 5)
    assert (again.created, again.merged, again.status.id) == (False, True, update.status.id)
    assert calls[-1] == (b"u1+u2", b"u3")
    leased = await lease_one(queue, "update", T0 + 6)
    assert (leased.id, leased.payload) == (update.status.id, b"u1+u2+u3")
    assert sum((await queue.stats()).counts.values()) == 2


async def test_a_post_after_a_leased_tail_follows_it(queue: Queue) -> None:
    calls: list[tuple[bytes | None, bytes]] = []

    def merge(queued: bytes, new: bytes) -> bytes:
        raise AssertionError("a leased tail is not merged into")

    def follow(previous: bytes | None, new: bytes) -> bytes:
        calls.append((previous, new))
        return b"%s>%s" % (previous, new)

    await queue.append(deal("d-1", b"c"), T0)
    update = await queue.append(deal("d-1", b"u1"), T0 + 1)
    job = await lease_one(queue, "create", T0 + 2)
    assert await queue.ack(job, "C1", T0 + 3)
    sending = await lease_one(queue, "update", T0 + 4)
    assert sending.id == update.status.id
    after = await queue.append(deal("d-1", b"u2", merge=merge, follow=follow), T0 + 5)
    assert calls == [(b"u1", b"u2")]
    assert (after.created, after.merged) == (True, False)
    assert (after.status.kind, after.status.state) == ("update", State.HELD)
    assert await queue.lease("update", 10, T0 + 10, 30) == []  # held, and the other leased
    assert await queue.ack(sending, "U1", T0 + 6)
    then = await lease_one(queue, "update", T0 + 6)
    assert (then.id, then.payload, then.after_upstream) == (after.status.id, b"u1>u2", "U1")
    assert [s.id for s in await queue.chain("default", "d-1")][-1] == after.status.id


async def test_follow_returning_none_queues_nothing(queue: Queue) -> None:
    first = await queue.append(deal("d-1", b"c"), T0)
    await lease_one(queue, "create", T0)
    nothing = await queue.append(deal("d-1", b"u1", follow=lambda previous, new: None), T0 + 1)
    assert (nothing.created, nothing.merged) == (False, False)
    assert nothing.status.id == first.status.id
    assert [s.id for s in await queue.chain("default", "d-1")] == [first.status.id]
    assert sum((await queue.stats()).counts.values()) == 1


async def test_chain_lists_the_statuses_oldest_first(queue: Queue) -> None:
    ids = [(await queue.append(deal("d-1", body), T0 + n)).status.id
           for n, body in enumerate([b"c", b"u1", b"u2"])]
    await queue.append(deal("d-2", b"other"), T0)
    listed = await queue.chain("default", "d-1")
    assert [s.id for s in listed] == ids
    assert [(s.kind, s.state) for s in listed] == [
        ("create", State.READY), ("update", State.HELD), ("update", State.HELD)]
    assert [s.created_at for s in listed] == [T0, T0 + 1, T0 + 2]
    assert await queue.chain("default", "no-such-chain") == []


async def test_chains_are_per_site(queue: Queue) -> None:
    a = await queue.append(deal("d-1", b"a", site="a"), T0)
    b = await queue.append(deal("d-1", b"b", site="b"), T0)
    assert a.created and b.created and a.status.id != b.status.id
    assert (a.status.kind, b.status.kind) == ("create", "create")
    assert [s.id for s in await queue.chain("a", "d-1")] == [a.status.id]
    assert [(s.id, s.site) for s in await queue.chain("b", "d-1")] == [(b.status.id, "b")]
    assert await queue.chain("default", "d-1") == []
    [job_b] = await queue.lease("create", 10, T0, 30, site="b")
    assert job_b.payload == b"b"


async def test_the_first_puts_dedup_key_dedups(queue: Queue) -> None:
    first = await queue.append(deal("order-1", b"c", key="ord-1"), T0)
    again = await queue.append(deal("order-1-again", b"c2", key="ord-1"), T0 + 1)
    assert first.created
    assert (again.created, again.merged, again.status.id) == (False, False, first.status.id)
    assert await queue.chain("default", "order-1-again") == []
    assert sum((await queue.stats()).counts.values()) == 1
    other_site = await queue.append(deal("order-1", b"c", site="b", key="ord-1"), T0)
    assert other_site.created and other_site.status.id != first.status.id


async def test_a_chains_first_put_may_wait_for_another_job(queue: Queue) -> None:
    lead = await put(queue)
    link = deal("d-1", b"c")
    waiting = Link("d-1", Put("create", b"c", "d-1", after=lead.status.id), link.next)
    first = await queue.append(waiting, T0 + 1)
    assert first.created and first.status.state == State.HELD
    update = await queue.append(deal("d-1", b"u1"), T0 + 2)
    assert update.status.state == State.HELD
    assert await queue.lease("create", 10, T0 + 10, 30) == []
    job = await lease_one(queue, "lead", T0 + 10)
    assert await queue.ack(job, "L1", T0 + 11)
    create = await lease_one(queue, "create", T0 + 11)
    assert (create.id, create.after_upstream) == (first.status.id, "L1")
    assert await queue.lease("update", 10, T0 + 11, 30) == []


async def test_a_chain_runs_in_order_end_to_end(queue: Queue) -> None:
    create, update1, update2 = [
        (await queue.append(deal("d-1", body), T0 + n)).status.id
        for n, body in enumerate([b"c", b"u1", b"u2"])
    ]
    assert await queue.lease("update", 10, T0 + 10, 30) == []
    job = await lease_one(queue, "create", T0 + 10)
    assert (job.id, job.after_upstream) == (create, None)
    assert await queue.lease("update", 10, T0 + 10, 30) == []  # leased is not delivered
    assert await queue.ack(job, "C1", T0 + 11)

    job = await lease_one(queue, "update", T0 + 11)  # one: the next is still held
    assert (job.id, job.payload, job.after_upstream) == (update1, b"u1", "C1")
    assert await queue.ack(job, "U1", T0 + 12)

    job = await lease_one(queue, "update", T0 + 12)
    assert (job.id, job.payload, job.after_upstream) == (update2, b"u2", "U1")
    assert await queue.ack(job, "U2", T0 + 13)
    listed = await queue.chain("default", "d-1")
    assert [(s.state, s.upstream_id) for s in listed] == [
        (State.DELIVERED, "C1"), (State.DELIVERED, "U1"), (State.DELIVERED, "U2")]


async def test_append_many_posts_each_in_order(queue: Queue) -> None:
    def merge(queued: bytes, new: bytes) -> bytes:
        return queued + b"+" + new

    assert await queue.append_many([], T0) == []
    results = await queue.append_many([
        deal("d-1", b"c1"), deal("d-2", b"c2"), deal("d-1", b"u1"),
        deal("d-1", b"u2", merge=merge),
    ], T0)
    assert [(r.created, r.merged, r.status.kind, r.status.state) for r in results] == [
        (True, False, "create", State.READY), (True, False, "create", State.READY),
        (True, False, "update", State.HELD), (False, True, "update", State.HELD)]
    assert results[3].status.id == results[2].status.id
    assert [s.id for s in await queue.chain("default", "d-1")] == [
        results[0].status.id, results[2].status.id]
    assert [s.id for s in await queue.chain("default", "d-2")] == [results[1].status.id]
    creates = await queue.lease("create", 10, T0, 30)
    assert {j.id for j in creates} == {results[0].status.id, results[1].status.id}
    for leased in creates:
        assert await queue.ack(leased, leased.id, T0 + 1)
    update = await lease_one(queue, "update", T0 + 1)
    assert (update.payload, update.after_upstream) == (b"u1+u2", results[0].status.id)


# convert, backlog, find, and lease's one-site rule


async def test_convert_makes_a_leased_job_another_kind(queue: Queue) -> None:
    created = await put(queue, b'{"fio": "x"}')
    job = await lease_one(queue, "lead", T0)
    assert await queue.put_back([Back(job, T0 + 1, "HTTP 503")]) == 1
    job = await lease_one(queue, "lead", T0 + 1)
    assert job.attempts == 1
    assert await queue.convert(job, "comment", T0 + 2)
    assert await queue.lease("lead", 10, T0 + 100, 30) == []
    assert await queue.wait_for_work("comment", 0.2)
    converted = await lease_one(queue, "comment", T0 + 2)
    assert (converted.id, converted.kind, converted.payload, converted.attempts) == (
        created.status.id, "comment", b'{"fio": "x"}', 1)
    status = await queue.status(created.status.id)
    assert status is not None and (status.kind, status.attempts) == ("comment", 1)


async def test_a_stale_lease_cannot_convert(queue: Queue) -> None:
    await put(queue)
    old = await lease_one(queue, "lead", T0, 30)
    new = await lease_one(queue, "lead", T0 + 31, 30)
    assert not await queue.convert(old, "comment", T0 + 32)
    status = await queue.status(old.id)
    assert status is not None and (status.kind, status.state) == ("lead", State.LEASED)
    assert await queue.lease("comment", 10, T0 + 32, 30) == []
    assert await queue.convert(new, "comment", T0 + 33)
    assert not await queue.convert(new, "other", T0 + 34)  # converted: no longer leased
    assert (await lease_one(queue, "comment", T0 + 34)).id == new.id


async def test_convert_moves_the_counts_between_kinds(queue: Queue, url: str) -> None:
    await put(queue, key="a")
    await put(queue, key="b", now=T0 + 1)
    [job] = await queue.lease("lead", 1, T0 + 1, 30)
    assert await queue.convert(job, "comment", T0 + 2)
    stats = await queue.stats()
    assert (stats.counts[State.READY], stats.counts[State.LEASED]) == (2, 0)
    assert sum(stats.counts.values()) == 2
    counted = await rows(
        url, "SELECT site, kind, state, sum(n) FROM job_counts GROUP BY site, kind, state")
    assert {row[:3]: int(str(row[3])) for row in counted if row[3]} == {
        ("default", "lead", "ready"): 1, ("default", "comment", "ready"): 1}
    converted = await lease_one(queue, "comment", T0 + 2)
    assert await queue.ack(converted, "R1", T0 + 3)
    stats = await queue.stats()
    assert (stats.counts[State.READY], stats.counts[State.DELIVERED]) == (1, 1)
    assert sum(stats.counts.values()) == 2


async def test_backlog_counts_the_visible_jobs_up_to_a_limit(queue: Queue) -> None:
    leased = await put(queue, now=T0 - 10)
    assert (await lease_one(queue, "lead", T0 - 10, 60)).id == leased.status.id  # to T0 + 50
    for n in (1, 2, 3):
        await put(queue, now=T0 + n)
    await put(queue, now=T0 + 100)  # visible later
    await put(queue, kind="lead", now=T0 + 4, after=leased.status.id)  # held
    await put(queue, now=T0 + 5)
    [delayed] = await queue.lease("lead", 1, T0 + 5, 30)  # the oldest visible: T0 + 1's
    assert await queue.put_back([Back(delayed, T0 + 200, "HTTP 503")]) == 1  # visible later too
    assert await queue.backlog("lead", T0 + 10, 10) == (3, T0 + 2)
    assert await queue.backlog("lead", T0 + 10, 2) == (2, T0 + 2)
    assert await queue.backlog("lead", T0 + 2.5, 10) == (1, T0 + 2)
    assert await queue.backlog("lead", T0, 10) == (0, None)
    assert await queue.backlog("comment", T0 + 10, 10) == (0, None)
    # Past the lease's end the leased job is visible again, with the time it became so.
    assert await queue.backlog("lead", T0 + 60, 10) == (4, T0 + 2)


async def test_lease_of_several_takes_one_site(queue: Queue) -> None:
    a1 = await put(queue, site="a", now=T0 + 1)
    b0 = await put(queue, site="b", now=T0)
    a2 = await put(queue, site="a", now=T0 + 2)
    b3 = await put(queue, site="b", now=T0 + 3)
    first = await queue.lease("lead", 10, T0 + 10, 30)
    assert [(j.id, j.site) for j in first] == [(b0.status.id, "b"), (b3.status.id, "b")]
    second = await queue.lease("lead", 10, T0 + 10, 30)
    assert [(j.id, j.site) for j in second] == [(a1.status.id, "a"), (a2.status.id, "a")]
    assert await queue.lease("lead", 10, T0 + 10, 30) == []


async def test_waits_and_backlogs_look_at_the_sites_asked_for_only(queue: Queue) -> None:
    """A relay asks for the jobs of the sites it serves: another site's are not its work."""
    gone = await put(queue, key="g-1", site="gone", now=T0)
    assert not await queue.wait_for_work("lead", 0.2, ["a", "b"])
    assert await queue.backlog("lead", T0 + 10, 10, ["a", "b"]) == (0, None)
    assert await queue.wait_for_work("lead", 0.2, ["a", "gone"])
    assert await queue.wait_for_work("lead", 0.2)  # any site's
    await put(queue, key="a-1", site="a", now=T0 + 1)
    await put(queue, key="a-2", site="a", now=T0 + 3)
    assert await queue.wait_for_work("lead", 0.2, ["a", "b"])
    assert await queue.backlog("lead", T0 + 10, 10, ["a", "b"]) == (2, T0 + 1)
    assert await queue.backlog("lead", T0 + 10, 10, ["gone"]) == (1, T0)
    assert await queue.backlog("lead", T0 + 10, 10) == (3, T0)
    job = await queue.lease("lead", 1, T0 + 10, 30, site="gone")
    assert [j.id for j in job] == [gone.status.id] and await queue.bury(job[0], "x", T0 + 11)
    await put(queue, b"c", kind="comment", site="b", after="no-such-job", now=T0 + 12)
    # Pending only (ready, leased, delayed): the dead one of "gone" is no one's work.
    assert await queue.pending_by_site() == {"a": 2, "b": 1}


async def test_find_returns_the_holder_of_a_dedup_key(queue: Queue) -> None:
    held = await put(queue, key="k-1")
    other = await put(queue, key="k-1", site="b", kind="comment", after=held.status.id)
    found = await queue.find("default", "lead", "k-1")
    assert found is not None
    assert (found.id, found.kind, found.state, found.site) == (
        held.status.id, "lead", State.READY, "default")
    in_b = await queue.find("b", "comment", "k-1")
    assert in_b is not None and (in_b.id, in_b.state) == (other.status.id, State.HELD)
    assert await queue.find("default", "lead", "k-2") is None
    assert await queue.find("default", "comment", "k-1") is None
    assert await queue.find("c", "lead", "k-1") is None
    job = await lease_one(queue, "lead", T0)
    assert await queue.ack(job, "R1", T0 + 1)
    done = await queue.find("default", "lead", "k-1")
    assert done is not None and (done.state, done.upstream_id) == (State.DELIVERED, "R1")


# Several gateways on one store: PostgreSQL only


async def test_two_gateways_appending_to_one_chain_keep_it_in_line(postgres_url: str) -> None:
    one, two = await open_queue(postgres_url), await open_queue(postgres_url)
    try:
        results = await asyncio.gather(*(
            q.append(deal("d-1", b"%s-%d" % (name, n)), T0)
            for n in range(20) for name, q in ((b"one", one), (b"two", two))
        ))
        assert all(r.created and not r.merged for r in results)
        assert len({r.status.id for r in results}) == 40
        assert [r.status.kind for r in results].count("create") == 1
        linked = await rows(
            postgres_url, "SELECT id, kind, chain_seq, after FROM jobs WHERE chain = 'd-1'"
            " ORDER BY chain_seq")
        assert [row[2] for row in linked] == list(range(1, 41))  # no gap, no repeat
        assert [row[1] for row in linked] == ["create"] + ["update"] * 39
        assert [row[3] for row in linked] == [None] + [row[0] for row in linked[:-1]]
        listed: list[Status] = await one.chain("default", "d-1")
        assert [s.id for s in listed] == [row[0] for row in linked]

        # Each is leasable only once the one before is delivered, by either gateway.
        job = await lease_one(two, "create", T0)
        previous, now = "C", T0
        for n, q in enumerate([one, two] * 20):
            assert await q.ack(job, previous, now)
            if n == 39:
                break
            now += 1
            job = await lease_one(q, "update", now)
            assert (job.id, job.after_upstream) == (linked[n + 1][0], previous)
            previous = f"U{n + 1}"
        assert await one.lease("update", 10, now + 100, 30) == []
    finally:
        await one.close()
        await two.close()


async def test_two_gateways_appending_to_two_chains_in_opposite_orders(postgres_url: str) -> None:
    one, two = await open_queue(postgres_url), await open_queue(postgres_url)
    try:
        for n in range(10):
            a, b = deal("d-a", b"a%d" % n), deal("d-b", b"b%d" % n)
            # Each batch locks both chains: in key order, or the two deadlock.
            await asyncio.gather(one.append_many([a, b], T0 + n), two.append_many([b, a], T0 + n))
        for name in ("d-a", "d-b"):
            linked = await rows(postgres_url, "SELECT chain_seq, kind FROM jobs WHERE chain ="
                                f" '{name}' ORDER BY chain_seq")
            assert linked == [(1, "create")] + [(i, "update") for i in range(2, 21)]
    finally:
        await one.close()
        await two.close()


async def test_a_job_queued_behind_one_a_purge_is_burying_is_buried_too(
    postgres_url: str
) -> None:
    """Another gateway's post queues a job behind held X while the purge's burial waits for
    X's lock: it commits after the burial's snapshot, and was held for ever behind a dead,
    purged job (a 1.0 chain, which does not merge)."""
    q = await open_queue(postgres_url)
    other = await asyncpg.connect(postgres_url)
    try:
        await q.append(deal("o-1", b"register"), T0)
        assert await q.bury(await lease_one(q, "create", T0), "HTTP 400", T0 + 1)
        held = await q.append(deal("o-1", b"update-by-id"), T0 + 2)
        assert held.status.state == State.HELD
        async with other.transaction():  # the other gateway's append, up to its insert
            await other.execute(postgres_links._CHAIN_LOCK, "default", "o-1")
            [tail] = await other.fetch(postgres_links._TAIL, "default", "o-1")
            purge = asyncio.create_task(q.purge(T0 + 100, T0 + 100, 10))

            async def burial_waits() -> bool:
                return bool(await other.fetchval(
                    "SELECT count(*) FROM pg_locks WHERE NOT granted AND pid <> pg_backend_pid()"))

            await eventually(burial_waits, timeout=10, interval=0.02)
            behind = await postgres_links._after_tail(
                other, "job-behind", deal("o-1", b"delete-by-id"), T0 + 3, tail)
            assert behind.status.state == State.HELD
        assert (await purge).dead == 3
        for job_id in (held.status.id, "job-behind"):
            status = await q.status(job_id)
            assert status is not None
            assert (status.state, status.last_error) == (State.DEAD, PARENT_DEAD)
        assert (await q.stats()).counts[State.HELD] == 0
    finally:
        await other.close()
        await q.close()


async def test_hasten_makes_every_delayed_job_due_now_and_nothing_else(queue: Queue) -> None:
    for n in range(3):
        await put(queue, now=T0 + n)
    later = await put(queue, now=T0 + 100)  # queued for later: not a delayed one
    jobs = await queue.lease("lead", 3, T0 + 5, 30)
    for job, at in zip(jobs, (T0 + 500, T0 + 900, T0 + 6), strict=True):
        assert await queue.put_back([Back(job, at, "HTTP 503")]) == 1
    assert await queue.hasten(T0 + 10) == 2  # the one due at T0 + 6 was already due
    due = await queue.lease("lead", 10, T0 + 10, 30)
    assert sorted(j.id for j in due) == sorted(j.id for j in jobs)
    assert all(j.attempts == 1 for j in due)  # no attempt spent by hastening
    assert (await queue.status(later.status.id)).state == State.READY  # type: ignore[union-attr]
