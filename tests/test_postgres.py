"""PostgreSQL-only behaviour beyond the queue contract: several gateways on one database."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator, Iterator, Sequence

import pytest

from gateway.queue import Back, Put, Queue, QueueError, State, open_queue
from gateway.queue import postgres_sql as backend
from gateway.queue.postgres import PostgresQueue
from gateway.queue.postgres_schema import VERSION, Conn
from tests import purged_orphans
from tests.postgres import Cluster, postgres_bin

T0 = 1_700_000_000.0


@pytest.fixture
async def gateways(postgres_url: str) -> AsyncIterator[list[Queue]]:
    """Two queues on one database, as two gateways of a fleet have."""
    queues = [await open_queue(postgres_url), await open_queue(postgres_url)]
    yield queues
    for queue in queues:
        await queue.close()


@pytest.fixture
def throwaway() -> Iterator[Cluster]:
    """A cluster of the test's own, to stop or to start with other settings."""
    cluster = Cluster(postgres_bin())
    yield cluster
    cluster.remove()


def database(url: str) -> str:
    return url.rsplit("/", 1)[-1]


async def test_three_gateways_opening_a_new_database_migrate_it_once(
    postgres: Cluster, postgres_url: str
) -> None:
    # Both spellings of the scheme name the same backend.
    urls = [postgres_url, postgres_url, postgres_url.replace("postgresql://", "postgres://")]
    queues = await asyncio.gather(*(open_queue(url) for url in urls))
    try:
        versions = postgres.sql("SELECT version FROM schema_version ORDER BY 1",
                                database(postgres_url))
        assert versions.split() == [str(v) for v in range(1, VERSION + 1)]
        for n, queue in enumerate(queues):
            await queue.put(Put("lead", b"{}", f"k{n}"), T0)
        assert (await queues[0].stats()).counts[State.READY] == 3
    finally:
        for queue in queues:
            await queue.close()


async def test_a_database_of_version_5_buries_what_its_purges_left_held(
    postgres: Cluster, postgres_url: str
) -> None:
    await (await open_queue(postgres_url)).close()
    postgres.sql(purged_orphans.ROWS + "; DELETE FROM schema_version WHERE version = 6",
                 database(postgres_url))
    queue = await open_queue(postgres_url)
    try:
        await purged_orphans.assert_buried(queue)
    finally:
        await queue.close()


async def test_a_schema_newer_than_the_gateway_is_refused(
    postgres: Cluster, postgres_url: str
) -> None:
    await (await open_queue(postgres_url)).close()
    postgres.sql(f"INSERT INTO schema_version (version) VALUES ({VERSION + 1})",
                 database(postgres_url))
    with pytest.raises(QueueError, match="newer than this gateway"):
        await open_queue(postgres_url)


async def test_a_lease_taken_over_by_another_gateway_fences_the_first(
    gateways: list[Queue],
) -> None:
    first, second = gateways
    await first.put(Put("lead", b"{}"), T0)
    [old] = await first.lease("lead", 10, T0, 30)
    [new] = await second.lease("lead", 10, T0 + 31, 30)  # the first one's lease expired
    assert new.id == old.id and new.lease == old.lease + 1
    assert not await first.ack(old, "1", T0 + 32)
    assert not await first.bury(old, "late", T0 + 32)
    assert await second.ack(new, "2", T0 + 33)
    status = await first.status(new.id)
    assert status is not None and (status.state, status.upstream_id) == (State.DELIVERED, "2")


async def test_gateways_leasing_at_once_never_get_the_same_job(gateways: list[Queue]) -> None:
    await gateways[0].put_many([Put("lead", b"{}", f"k{n}") for n in range(200)], T0)
    leases = await asyncio.gather(
        *(gateways[n % 2].lease("lead", 7, T0, 30) for n in range(40))
    )
    ids = [job.id for jobs in leases for job in jobs]
    assert len(ids) == len(set(ids)) == 200
    assert (await gateways[1].stats()).counts[State.LEASED] == 200


async def test_counts_agree_with_the_jobs_after_gateways_work_together(
    postgres: Cluster, postgres_url: str, gateways: list[Queue]
) -> None:
    async def work(queue: Queue, n: int) -> None:
        await asyncio.gather(*(queue.put(Put("lead", b"{}", f"{n}-{i}"), T0) for i in range(30)))
        for i, job in enumerate(await queue.lease("lead", 20, T0, 30)):
            if i % 4 == 0:
                await queue.ack(job, "1", T0)
            elif i % 4 == 1:
                await queue.bury(job, "x", T0)
            elif i % 4 == 2:
                await queue.put_back([Back(job, T0 + 60, "HTTP 503")])
            else:
                await queue.release(job)

    await asyncio.gather(*(work(gateways[n % 2], n) for n in range(6)))
    counted = postgres.sql("SELECT state, count(*) FROM jobs GROUP BY state",
                           database(postgres_url))
    expected = {State(line.split("|")[0]): int(line.split("|")[1]) for line in counted.split()}
    stats = await gateways[0].stats()
    assert {s: n for s, n in stats.counts.items() if n} == expected
    assert sum(stats.counts.values()) == 180


async def test_concurrent_puts_share_inserts(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    sizes: list[int] = []
    insert = backend.insert

    async def counted(conn: Conn, rows: Sequence[backend.Row]) -> list[backend.PutResult]:
        sizes.append(len(rows))
        return await insert(conn, rows)

    monkeypatch.setattr(backend, "insert", counted)
    queue = await open_queue(postgres_url)
    try:
        results = await asyncio.gather(*(queue.put(Put("lead", b"{}"), T0) for _ in range(300)))
    finally:
        await queue.close()
    assert all(r.created for r in results) and sum(sizes) == 300
    assert len(sizes) < 30, sizes


async def test_a_deferred_job_wakes_a_waiter_elsewhere_when_it_is_due(
    gateways: list[Queue],
) -> None:
    waiter, other = gateways
    await other.put(Put("lead", b"{}"), time.time())
    [job] = await other.lease("lead", 1, time.time(), 30)
    waiting = asyncio.create_task(waiter.wait_for_work("lead", 20))
    await asyncio.sleep(0.2)
    assert not waiting.done()
    started = time.monotonic()
    assert await other.put_back([Back(job, time.time() + 0.5)]) == 1
    assert await asyncio.wait_for(waiting, 5)
    assert 0.4 < time.monotonic() - started < 2.0  # the deferral woke it, then it slept on


async def test_every_session_commits_synchronously(postgres: Cluster, postgres_url: str) -> None:
    postgres.sql(f"ALTER DATABASE {database(postgres_url)} SET synchronous_commit = off")
    queue = await PostgresQueue.open(postgres_url)
    try:
        for _ in range(3):  # a connection given back to the pool is reset: still on
            assert await queue._pool.fetchval("SHOW synchronous_commit") == "on"
    finally:
        await queue.close()


async def test_a_server_without_fsync_is_refused(throwaway: Cluster) -> None:
    throwaway.start("fsync=off")
    with pytest.raises(QueueError, match="fsync = off"):
        await open_queue(throwaway.url())
    # Nothing was left connected.
    assert throwaway.sql("SELECT count(*) FROM pg_stat_activity WHERE backend_type ="
                         " 'client backend' AND pid <> pg_backend_pid()") == "0"


async def test_a_stopped_server_is_a_queue_error_until_it_is_back(throwaway: Cluster) -> None:
    throwaway.start()
    queue = await open_queue(throwaway.url())
    try:
        assert (await queue.put(Put("lead", b"{}", "before"), T0)).created
        throwaway.stop("immediate")
        with pytest.raises(QueueError):
            await queue.put(Put("lead", b"{}", "during"), T0)
        with pytest.raises(QueueError):
            await queue.put_many([Put("lead", b"{}")], T0)
        with pytest.raises(QueueError):
            await queue.ping()
        with pytest.raises(QueueError):
            await queue.wait_for_work("lead", 0.1)
        throwaway.start()
        await queue.ping()
        assert (await queue.put(Put("lead", b"{}", "after"), T0)).created
        assert await queue.wait_for_work("lead", 1)
    finally:
        await queue.close()
    with pytest.raises(ConnectionError):
        await queue.put(Put("lead", b"{}"), T0)


async def test_a_server_that_is_not_there_is_a_queue_error() -> None:
    with socket.socket() as sock:  # a port that was free a moment ago: nothing listens there
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(QueueError):
        await open_queue(f"postgres://postgres@127.0.0.1:{port}/postgres")
