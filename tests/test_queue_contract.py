"""The queue contract: every backend must pass this whole suite (``BACKENDS``)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from gateway.queue import Back, Put, PutResult, Quarantined, Queue, State, Tally, open_queue

T0 = 1_700_000_000.0


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'q.db'}"


# Each backend's fixture giving the URL of a new, empty store (postgres_url: tests/postgres.py).
# The opener opens that URL: called again, it opens another connection to the same store (as
# a second gateway would).
BACKENDS: dict[str, str] = {"sqlite": "sqlite_url", "postgresql": "postgres_url"}


@pytest.fixture(params=list(BACKENDS))
def opener(request: pytest.FixtureRequest) -> Callable[[], Awaitable[Queue]]:
    url: str = request.getfixturevalue(BACKENDS[request.param])
    return lambda: open_queue(url)


@pytest.fixture
async def queue(opener: Callable[[], Awaitable[Queue]]) -> AsyncIterator[Queue]:
    q = await opener()
    yield q
    await q.close()


async def put(q: Queue, payload: bytes = b"{}", key: str | None = None,
              kind: str = "lead", now: float = T0, site: str = "default") -> PutResult:
    [result] = await q.put_many([Put(kind, payload, key, site)], now)
    return result


async def test_put_then_lease_returns_the_payload(queue: Queue) -> None:
    created = await put(queue, b'{"fio": "x"}')
    assert created.created and created.status.public_status == "queued"
    [job] = await queue.lease("lead", 10, T0, 30)
    assert (job.id, job.payload, job.attempts) == (created.status.id, b'{"fio": "x"}', 0)


async def test_dedup_returns_the_first_job(queue: Queue) -> None:
    first = await put(queue, key="n-1")
    again = await put(queue, b'{"other": 1}', key="n-1")
    other_kind = await put(queue, key="n-1", kind="comment")
    assert not again.created and again.status.id == first.status.id
    assert other_kind.created and other_kind.status.id != first.status.id
    assert len(await queue.lease("lead", 10, T0, 30)) == 1


async def test_dedup_inside_one_batch(queue: Queue) -> None:
    results = await queue.put_many([Put("lead", b"1", "k"), Put("lead", b"2", "k")], T0)
    assert [r.created for r in results] == [True, False]
    assert results[0].status.id == results[1].status.id


async def test_a_batch_of_any_size_answers_each_put_and_keeps_the_first_of_a_key(
    queue: Queue,
) -> None:
    held = await put(queue, key="k-held")
    # 1,023 puts are five statements (512, 256, 128, 64, 63 rows); each repeat is in the last.
    puts = [Put("lead", b"%d" % n, f"k-{n}") for n in range(1021)]
    puts += [Put("lead", b"again", "k-3"), Put("lead", b"again", "k-held")]
    results = await queue.put_many(puts, T0)
    assert [r.created for r in results] == [True] * 1021 + [False, False]
    assert results[1021].status.id == results[3].status.id
    assert results[1022].status.id == held.status.id
    leased = await queue.lease("lead", 2000, T0, 30)
    assert sorted(j.payload for j in leased) == sorted([b"{}"] + [p.payload for p in puts[:1021]])


async def test_a_key_no_job_can_hold_finds_nothing(queue: Queue) -> None:
    # A NUL from a URL's %00: PostgreSQL text cannot hold one, and asking it was an error.
    await put(queue, key="k")
    assert await queue.status("x\x00") is None
    assert await queue.find("default", "lead", "k\x00") is None
    assert await queue.chain("default", "d\x00") == []


async def test_lease_hides_the_job_until_it_expires(queue: Queue) -> None:
    await put(queue)
    [job] = await queue.lease("lead", 10, T0, 30)
    assert await queue.lease("lead", 10, T0 + 29, 30) == []
    [again] = await queue.lease("lead", 10, T0 + 31, 30)
    assert again.id == job.id and again.lease != job.lease


async def test_an_expired_lease_cannot_settle_the_job(queue: Queue) -> None:
    await put(queue)
    [old] = await queue.lease("lead", 10, T0, 30)
    [new] = await queue.lease("lead", 10, T0 + 31, 30)
    assert not await queue.ack(old, "1", T0 + 32)
    assert await queue.put_back([Back(old, T0 + 99, "late")]) == 0
    assert await queue.ack(new, "2", T0 + 33)
    status = await queue.status(new.id)
    assert status is not None and status.upstream_id == "2"


async def test_lease_is_oldest_first_and_by_kind(queue: Queue) -> None:
    ids = [(await put(queue, now=T0 + i)).status.id for i in (3, 1, 2)]
    await put(queue, kind="comment", now=T0)
    jobs = await queue.lease("lead", 10, T0 + 10, 30)
    assert [j.id for j in jobs] == [ids[1], ids[2], ids[0]]


async def test_ack_marks_delivered(queue: Queue) -> None:
    await put(queue)
    [job] = await queue.lease("lead", 1, T0, 30)
    assert await queue.ack(job, "5222102", T0 + 1)
    status = await queue.status(job.id)
    assert status is not None
    assert status.as_dict()["status"] == "delivered" and status.upstream_id == "5222102"
    assert await queue.lease("lead", 1, T0 + 100, 30) == []


async def test_retry_delays_and_counts_attempts(queue: Queue) -> None:
    await put(queue)
    [job] = await queue.lease("lead", 1, T0, 30)
    assert await queue.put_back([Back(job, T0 + 10, "HTTP 503")]) == 1
    status = await queue.status(job.id)
    assert status is not None
    assert (status.state, status.public_status, status.attempts, status.last_error) == (
        State.DELAYED, "retrying", 1, "HTTP 503",
    )
    assert await queue.lease("lead", 1, T0 + 9, 30) == []
    assert await queue.wait_for_work("lead", 0.5)  # T0 + 10 is long past by the wall clock
    [again] = await queue.lease("lead", 1, T0 + 10, 30)
    assert again.attempts == 1


async def test_release_gives_the_job_back_without_an_attempt(queue: Queue) -> None:
    await put(queue)
    [job] = await queue.lease("lead", 1, T0, 30)
    assert await queue.release(job)
    [again] = await queue.lease("lead", 1, T0, 30)
    assert again.id == job.id and again.attempts == 0


async def test_bury_list_and_replay(queue: Queue) -> None:
    for _ in range(3):
        await put(queue)
    jobs = await queue.lease("lead", 3, T0, 30)
    for job in jobs:
        assert await queue.bury(job, "HTTP 400: bad", T0 + 1)
    dead = await queue.dead(10)
    assert {d.id for d in dead} == {j.id for j in jobs}
    assert all(d.public_status == "dead" and d.last_error == "HTTP 400: bad" for d in dead)
    assert await queue.replay([jobs[0].id, "no-such-id"], T0 + 2) == 1
    assert [j.id for j in await queue.lease("lead", 3, T0 + 2, 30)] == [jobs[0].id]
    assert await queue.replay(None, T0 + 3) == 2
    assert len(await queue.lease("lead", 3, T0 + 3, 30)) == 2


async def test_stats_count_states_and_the_oldest(queue: Queue) -> None:
    empty = await queue.stats()
    assert sum(empty.counts.values()) == 0 and empty.oldest_pending_at is None
    for i in range(4):
        await put(queue, now=T0 + i)
    a, b = await queue.lease("lead", 2, T0 + 5, 30)
    await queue.ack(a, "1", T0 + 6)
    await queue.bury(b, "x", T0 + 6)
    [c] = await queue.lease("lead", 1, T0 + 7, 30)
    await queue.put_back([Back(c, T0 + 100, "HTTP 503")])
    stats = await queue.stats()
    assert stats.counts == {
        State.READY: 1, State.LEASED: 0, State.DELAYED: 1, State.DELIVERED: 1, State.DEAD: 1,
        State.SPAM: 0, State.HELD: 0,
    }
    assert stats.oldest_pending_at == T0 + 2


async def test_status_of_an_unknown_id_is_none(queue: Queue) -> None:
    assert await queue.status("nope") is None


async def test_puts_made_together_share_commits(queue: Queue) -> None:
    before = await queue.stats()
    results = await asyncio.gather(
        *(queue.put(Put("lead", b"{}", f"k{i}"), T0) for i in range(300))
    )
    assert len({r.status.id for r in results}) == 300 and all(r.created for r in results)
    again = await asyncio.gather(
        queue.put(Put("lead", b"{}", "k7"), T0), queue.put(Put("lead", b"{}"), T0)
    )
    assert (again[0].created, again[0].status.id) == (False, results[7].status.id)
    assert again[1].created
    after = await queue.stats()
    assert after.counts[State.READY] - before.counts[State.READY] == 301


async def settle(q: Queue, outcome: str, at: float, key: str | None = None) -> str:
    """A job delivered (``"ack"``) or dead (``"bury"``) at ``at``; its id."""
    created = await put(q, b'{"fio": "' + outcome.encode() + b'"}', key=key)
    [job] = await q.lease("lead", 1, T0, 30)
    assert job.id == created.status.id
    if outcome == "ack":
        assert await q.ack(job, "5222102", at)
    else:
        assert await q.bury(job, "HTTP 400: bad", at)
    return job.id


async def test_purge_takes_only_settled_jobs_past_their_cutoff(queue: Queue) -> None:
    old_done, new_done = await settle(queue, "ack", T0 + 1), await settle(queue, "ack", T0 + 50)
    old_dead, new_dead = await settle(queue, "bury", T0 + 1), await settle(queue, "bury", T0 + 20)
    await put(queue, b'{"fio": "leased"}')
    [leased] = await queue.lease("lead", 1, T0, 30)
    await put(queue, b'{"fio": "delayed"}')
    [delayed] = await queue.lease("lead", 1, T0, 30)
    assert await queue.put_back([Back(delayed, T0 + 5, "HTTP 503")]) == 1
    ready = await put(queue, b'{"fio": "ready"}')

    purged = await queue.purge(delivered_before=T0 + 10, dead_before=T0 + 10, limit=10)

    assert (purged.delivered, purged.dead) == (1, 1)
    for job_id, state, gone in [
        (old_done, State.DELIVERED, True), (new_done, State.DELIVERED, False),
        (old_dead, State.DEAD, True), (new_dead, State.DEAD, False),
        (ready.status.id, State.READY, False), (leased.id, State.LEASED, False),
        (delayed.id, State.DELAYED, False),
    ]:
        status = await queue.status(job_id)
        assert status is not None and (status.state, status.purged) == (state, gone), job_id
    # The pending ones keep every byte: they still have to be sent.
    again = await queue.lease("lead", 10, T0 + 100, 30)
    assert sorted(j.payload for j in again) == [
        b'{"fio": "delayed"}', b'{"fio": "leased"}', b'{"fio": "ready"}',
    ]


async def test_purge_keeps_a_readable_status(queue: Queue) -> None:
    done = await settle(queue, "ack", T0 + 1)
    dead = await settle(queue, "bury", T0 + 1)
    before = [await queue.status(done), await queue.status(dead)]
    await queue.purge(T0 + 2, T0 + 2, 10)
    after = [await queue.status(done), await queue.status(dead)]
    assert [s.as_dict() for s in after if s] == [s.as_dict() for s in before if s]
    assert [s.public_status for s in after if s] == ["delivered", "dead"]
    assert after[0] is not None and after[0].upstream_id == "5222102"
    assert after[1] is not None and after[1].last_error == "HTTP 400: bad"
    [listed] = await queue.dead(10)
    assert listed.id == dead and listed.purged


async def test_dedup_still_answers_for_a_purged_job(queue: Queue) -> None:
    done = await settle(queue, "ack", T0 + 1, key="req-1")
    await queue.purge(T0 + 2, T0 + 2, 10)
    again = await put(queue, b'{"fio": "again"}', key="req-1")
    assert not again.created and again.status.id == done
    assert again.status.public_status == "delivered"
    assert await queue.lease("lead", 10, T0 + 100, 30) == []


async def test_replay_skips_purged_dead_letters(queue: Queue) -> None:
    purged = await settle(queue, "bury", T0 + 1)
    kept = await settle(queue, "bury", T0 + 20)
    await queue.purge(T0 + 10, T0 + 10, 10)
    assert await queue.replay([purged], T0 + 30) == 0
    assert await queue.replay(None, T0 + 30) == 1
    [job] = await queue.lease("lead", 10, T0 + 30, 30)
    assert job.id == kept and job.payload == b'{"fio": "bury"}'
    status = await queue.status(purged)
    assert status is not None and status.state == State.DEAD and status.purged


async def test_purge_works_in_batches_until_done(queue: Queue) -> None:
    ids = [await settle(queue, "ack", T0 + i) for i in range(7)]
    dead = [await settle(queue, "bury", T0 + i) for i in range(3)]
    purged = await queue.purge(T0 + 100, T0 + 100, limit=2)
    assert (purged.delivered, purged.dead, purged.flushed) == (7, 3, True)
    statuses = [await queue.status(i) for i in ids + dead]
    assert all(s is not None and s.purged for s in statuses)
    again = await queue.purge(T0 + 100, T0 + 100, limit=2)
    assert (again.delivered, again.dead) == (0, 0)
    with pytest.raises(ValueError):
        await queue.purge(T0, T0, limit=0)


async def test_a_job_settled_at_the_cutoff_is_kept(queue: Queue) -> None:
    done = await settle(queue, "ack", T0 + 10)
    assert (await queue.purge(T0 + 10, T0 + 10, 10)).delivered == 0
    status = await queue.status(done)
    assert status is not None and not status.purged


async def test_one_batch_settled_three_ways(queue: Queue) -> None:
    for n in range(3):
        await put(queue, b'{"n": %d}' % n, key=f"k{n}", now=T0 + n)
    delivered, retried, dead = await queue.lease("lead", 3, T0 + 5, 30)
    assert await queue.ack(delivered, "7001", T0 + 6)
    assert await queue.put_back([Back(retried, T0 + 60, "item refused for now")]) == 1
    assert await queue.bury(dead, "item invalid", T0 + 6)
    states = [await queue.status(job.id) for job in (delivered, retried, dead)]
    assert [(s.state, s.attempts) for s in states if s] == [
        (State.DELIVERED, 1), (State.DELAYED, 1), (State.DEAD, 1),
    ]
    stats = await queue.stats()
    assert (stats.counts[State.DELIVERED], stats.counts[State.DELAYED],
            stats.counts[State.DEAD], stats.counts[State.LEASED]) == (1, 1, 1, 0)
    [again] = await queue.lease("lead", 3, T0 + 60, 30)
    assert again.id == retried.id


async def test_defer_counts_no_attempt(queue: Queue) -> None:
    await put(queue)
    [job] = await queue.lease("lead", 1, T0, 30)
    assert await queue.put_back([Back(job, T0 + 3600)]) == 1
    status = await queue.status(job.id)
    assert status is not None
    assert (status.state, status.attempts, status.public_status) == (State.DELAYED, 0, "queued")
    assert await queue.lease("lead", 1, T0 + 3599, 30) == []
    [again] = await queue.lease("lead", 1, T0 + 3600, 30)
    assert again.id == job.id and again.attempts == 0
    assert await queue.put_back([Back(job, T0 + 7200)]) == 0  # the older lease no longer holds it


async def test_the_same_dedup_key_on_two_sites_is_two_jobs(queue: Queue) -> None:
    a = await put(queue, b'{"site": "a"}', key="req-1", site="a")
    b = await put(queue, b'{"site": "b"}', key="req-1", site="b")
    again = await put(queue, b"{}", key="req-1", site="a")
    assert a.created and b.created and a.status.id != b.status.id
    assert not again.created and again.status.id == a.status.id
    [job_b] = await queue.lease("lead", 10, T0, 30, site="b")
    assert (job_b.id, job_b.site, job_b.payload) == (b.status.id, "b", b'{"site": "b"}')
    [job_a] = await queue.lease("lead", 10, T0, 30)
    assert (job_a.id, job_a.site) == (a.status.id, "a")


async def test_wait_for_work_times_out_without_work(queue: Queue) -> None:
    assert not await queue.wait_for_work("lead", 0.2)
    await put(queue, kind="comment")
    assert not await queue.wait_for_work("lead", 0.2)  # another kind's work is not this one's
    assert await queue.wait_for_work("comment", 0.2)


async def test_wait_for_work_wakes_on_a_put_made_through_another_connection(
    queue: Queue, opener: Callable[[], Awaitable[Queue]]
) -> None:
    other = await opener()
    try:
        waiting = asyncio.create_task(queue.wait_for_work("lead", 30))
        await asyncio.sleep(0.05)
        assert not waiting.done()
        await other.put(Put("lead", b"{}", "from-afar"), time.time())
        assert await asyncio.wait_for(waiting, 5)  # long before the 30 s timeout
    finally:
        await other.close()


async def test_wait_for_work_wakes_on_a_put_made_here_at_once(queue: Queue) -> None:
    waiting = asyncio.create_task(queue.wait_for_work("lead", 30))
    await asyncio.sleep(0.05)
    started = time.monotonic()
    await queue.put(Put("lead", b"{}"), time.time())
    assert await asyncio.wait_for(waiting, 5)
    assert time.monotonic() - started < 0.5  # woken, not found by a poll


async def test_ping_answers_while_open(queue: Queue) -> None:
    await queue.ping()


def spam_of(n: int, at: float = T0, site: str = "default") -> Quarantined:
    return Quarantined(f"spam-{n:04d}", Put("lead", b'{"n": %d}' % n, f"req-{n}", site),
                       "score=4 signals=fast,agent", at)


async def test_quarantined_spam_is_kept_apart_and_takes_no_dedup_key(queue: Queue) -> None:
    assert await queue.quarantine([spam_of(1), spam_of(2, T0 + 1)], keep=100) == 0
    assert await queue.lease("lead", 10, T0 + 100, 30) == []  # never relayed
    stats = await queue.stats()
    assert stats.counts[State.SPAM] == 2 and stats.oldest_pending_at is None  # not pending
    status = await queue.status("spam-0001")
    assert status is not None and status.public_status == "spam"
    assert status.last_error == "score=4 signals=fast,agent"
    real = await put(queue, key="req-1")  # a person's lead with the same number is taken
    assert real.created
    listed = await queue.spam(10)
    assert [s.id for s in listed] == ["spam-0001", "spam-0002"]
    assert [s.id for s in await queue.spam(10, since=T0 + 1)] == ["spam-0002"]


async def test_released_spam_is_queued_as_if_accepted_then(queue: Queue) -> None:
    await queue.quarantine([spam_of(n, T0 + n) for n in range(4)], keep=100)
    assert await queue.release_spam(["spam-0001", "nope"], None, T0 + 50) == 1
    [job] = await queue.lease("lead", 10, T0 + 50, 30)
    assert (job.id, job.created_at, job.attempts, job.payload) == (
        "spam-0001", T0 + 1, 0, b'{"n": 1}')
    assert await queue.release_spam(None, T0 + 3, T0 + 60) == 1  # since a time
    assert await queue.release_spam(None, None, T0 + 70) == 2  # all the rest
    assert (await queue.stats()).counts[State.SPAM] == 0
    assert len(await queue.lease("lead", 10, T0 + 70, 30)) == 3


async def test_the_quarantine_is_capped_oldest_first(queue: Queue) -> None:
    assert await queue.quarantine([spam_of(n, T0 + n) for n in range(5)], keep=3) == 2
    assert await queue.quarantine([spam_of(n, T0 + n) for n in range(5, 7)], keep=3) == 2
    assert [s.id for s in await queue.spam(10)] == ["spam-0004", "spam-0005", "spam-0006"]
    assert (await queue.stats()).counts[State.SPAM] == 3


@pytest.mark.parametrize("count", [1, 1023, 1537])  # one statement, and runs of every size
async def test_a_write_of_any_size_stores_every_quarantined_lead_once(
    queue: Queue, count: int
) -> None:
    items = [spam_of(n, T0 + n) for n in range(count)]
    assert await queue.quarantine(items, keep=10_000) == 0
    listed = await queue.spam(10_000)
    assert [s.id for s in listed] == [q.id for q in items]
    assert (await queue.stats()).counts[State.SPAM] == count
    assert await queue.release_spam(None, None, T0 + count) == count
    leased = await queue.lease("lead", 10_000, T0 + count, 30)
    assert sorted(j.payload for j in leased) == sorted(q.put.payload for q in items)


async def test_old_spam_is_purged_in_batches(queue: Queue) -> None:
    await queue.quarantine([spam_of(n, T0 + n) for n in range(5)], keep=100)
    assert await queue.purge_spam(T0 + 3, limit=2) == 2
    assert await queue.purge_spam(T0 + 3, limit=2) == 1
    assert await queue.purge_spam(T0 + 3, limit=2) == 0
    assert [s.id for s in await queue.spam(10)] == ["spam-0003", "spam-0004"]
    assert await queue.status("spam-0000") is None


# API points: a tally adds to its window's row and reads back every process's total.

HOUR_ENDS = T0 + 600


async def test_tallies_add_up_across_stores_and_read_back_the_total(
    opener: Callable[[], Awaitable[Queue]], queue: Queue,
) -> None:
    other = await opener()  # a second gateway on the same store
    try:
        first = await queue.tally([Tally("a", "hour", HOUR_ENDS, 3, 2),
                                   Tally("a", "day", HOUR_ENDS + 3600, 3, 0)], T0)
        second = await other.tally([Tally("a", "hour", HOUR_ENDS, 4, 0),
                                    Tally("b", "hour", HOUR_ENDS, 1, 1)], T0)
        again = await queue.tally([Tally("a", "hour", HOUR_ENDS, 0, 0)], T0)
    finally:
        await other.close()
    assert sorted(first) == [Tally("a", "day", HOUR_ENDS + 3600, 3, 0),
                             Tally("a", "hour", HOUR_ENDS, 3, 2)]
    assert sorted(second) == [Tally("a", "hour", HOUR_ENDS, 7, 2),
                              Tally("b", "hour", HOUR_ENDS, 1, 1)]
    assert again == [Tally("a", "hour", HOUR_ENDS, 7, 2)]


async def test_a_tally_given_back_below_zero_reads_as_zero_and_still_counts(queue: Queue) -> None:
    # One gateway gives a call back before another's spending reached the row.
    assert await queue.tally([Tally("a", "hour", HOUR_ENDS, -2, -2)], T0) == [
        Tally("a", "hour", HOUR_ENDS, 0, 0)]
    assert await queue.tally([Tally("a", "hour", HOUR_ENDS, 5, 3)], T0) == [
        Tally("a", "hour", HOUR_ENDS, 3, 1)]


async def test_an_hours_refusal_and_resumption_keep_the_latest_of_every_process(
    opener: Callable[[], Awaitable[Queue]], queue: Queue,
) -> None:
    other = await opener()
    try:
        first = await queue.tally([Tally("a", "hour", HOUR_ENDS, 1, 0, T0 + 5, 0.0)], T0)
        second = await other.tally([Tally("a", "hour", HOUR_ENDS, 0, 0, T0 + 3, T0 + 4)], T0)
        again = await queue.tally([Tally("a", "hour", HOUR_ENDS, 0, 0)], T0)
    finally:
        await other.close()
    assert first == [Tally("a", "hour", HOUR_ENDS, 1, 0, T0 + 5, 0.0)]
    assert second == again == [Tally("a", "hour", HOUR_ENDS, 1, 0, T0 + 5, T0 + 4)]


async def test_a_window_over_for_a_day_is_dropped(queue: Queue) -> None:
    await queue.tally([Tally("a", "hour", HOUR_ENDS, 9, 0)], T0)
    later = HOUR_ENDS + 86_400 + 1
    assert await queue.tally([Tally("a", "hour", HOUR_ENDS, 0, 0)], later - 2) == [
        Tally("a", "hour", HOUR_ENDS, 9, 0)]
    assert await queue.tally([Tally("a", "hour", HOUR_ENDS, 0, 0)], later) == [
        Tally("a", "hour", HOUR_ENDS, 0, 0)]


async def test_put_back_retries_and_defers_and_skips_a_lost_lease(queue: Queue) -> None:
    for n in range(3):
        await put(queue, key=f"n-{n}")
    first, second = await queue.lease("lead", 2, T0, 60)
    [lost] = await queue.lease("lead", 1, T0, 30)
    [taken] = await queue.lease("lead", 1, T0 + 31, 30)  # the third's lease ran out: retaken
    assert taken.id == lost.id
    backs = [Back(first, T0 + 40), Back(second, T0 + 40, "HTTP 503"), Back(lost, T0 + 40)]
    assert await queue.put_back(backs) == 2
    assert await queue.lease("lead", 3, T0 + 39, 30) == []
    again = {job.id: job for job in await queue.lease("lead", 3, T0 + 40, 30)}
    assert sorted(again) == sorted([first.id, second.id])
    assert (again[first.id].attempts, again[second.id].attempts) == (0, 1)
    status = await queue.status(second.id)
    assert status is not None and status.last_error == "HTTP 503"


async def test_jobs_put_back_together_are_leased_together(
    opener: Callable[[], Awaitable[Queue]], queue: Queue,
) -> None:
    """A lease from another gateway while a call's jobs go back sees none of them or all."""
    await queue.put_many([Put("lead", b"{}", f"n-{n}") for n in range(100)], T0)
    jobs = await queue.lease("lead", 100, T0, 30)
    other = await opener()
    try:
        going = asyncio.ensure_future(queue.put_back([Back(job, T0 + 1) for job in jobs]))
        seen = []
        while not going.done():
            seen.append(len(await other.lease("lead", 100, T0 + 1, 30)))
        seen.append(len(await other.lease("lead", 100, T0 + 1, 30)))
        assert await going == 100
    finally:
        await other.close()
    assert set(seen) <= {0, 100} and seen.count(100) == 1, seen
