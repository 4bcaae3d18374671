"""SQLite-only behaviour beyond the queue contract: shared inserts, failures, others' locks."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import stat
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import pytest

from gateway.queue import Put, QueueError, State, open_queue
from gateway.queue import sqlite_sql as backend
from gateway.queue.base import Tally
from gateway.queue.sqlite import SQLiteQueue
from gateway.queue.sqlite_schema import CHECKPOINT_PAGES, VERSION
from tests import purged_orphans

T0 = 1_700_000_000.0


async def test_a_write_lock_held_elsewhere_is_waited_for_off_the_loop(tmp_path: Path) -> None:
    queue = await SQLiteQueue.open(f"sqlite:///{tmp_path / 'q.db'}")
    other = sqlite3.connect(tmp_path / "q.db", isolation_level=None)  # e.g. `dead replay`
    try:
        other.execute("BEGIN IMMEDIATE")
        put = asyncio.create_task(queue.put_many([Put("lead", b"{}", "n-1")], time.time()))
        loop = asyncio.get_running_loop()
        started = loop.time()
        # A loop stuck in SQLite's busy wait could not fire this timer until the lock went.
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(asyncio.shield(put), timeout=0.3)
        assert loop.time() - started < 1.0
        assert not put.done()
        other.execute("COMMIT")
        [result] = await asyncio.wait_for(put, timeout=5)
        assert result.created
    finally:
        with contextlib.suppress(sqlite3.Error):
            other.execute("ROLLBACK")
        other.close()
        await queue.close()


async def test_concurrent_puts_share_inserts(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sizes: list[int] = []
    insert = backend._insert_rows

    def counted(conn: sqlite3.Connection, rows: Sequence[backend.Row]) -> int:
        sizes.append(len(rows))
        return insert(conn, rows)

    monkeypatch.setattr(backend, "_insert_rows", counted)
    queue = await SQLiteQueue.open(f"sqlite:///{tmp_path / 'q.db'}")
    try:
        await asyncio.gather(
            *(queue.put(Put("lead", b"{}", f"k{i}"), time.time()) for i in range(300))
        )
    finally:
        await queue.close()
    assert sum(sizes) == 300 and len(sizes) < 300 / 4, sizes


def test_rows_of_any_count_are_written_in_few_statement_sizes() -> None:
    # One cached statement per count took 84 MiB for counts up to 512 (docs/performance.md).
    sizes = set()
    for count in range(1, 1600):
        runs = list(backend._runs(range(count)))
        assert [n for run in runs for n in run] == list(range(count))
        assert len(runs) == 1 or count > backend.EXACT_ROWS
        sizes.update(len(run) for run in runs)
    assert sizes == set(range(1, backend.EXACT_ROWS + 1)) | {128, 256, backend.ROWS_PER_INSERT}
    assert len(sizes) == backend.STATEMENT_SIZES


async def test_a_failed_commit_is_a_queue_error_for_each_put(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    queue = await SQLiteQueue.open(f"sqlite:///{tmp_path / 'q.db'}")
    insert = backend._insert_rows
    try:
        def full(*args: object) -> int:
            raise sqlite3.OperationalError("database or disk is full")

        monkeypatch.setattr(backend, "_insert_rows", full)
        outcomes = await asyncio.gather(
            *(queue.put(Put("lead", b"{}"), time.time()) for _ in range(5)),
            return_exceptions=True,
        )
        assert all(isinstance(o, QueueError) for o in outcomes), outcomes
        monkeypatch.setattr(backend, "_insert_rows", insert)
        assert (await queue.put(Put("lead", b"{}"), time.time())).created
    finally:
        await queue.close()


async def test_a_store_that_cannot_be_opened_leaves_no_thread(tmp_path: Path) -> None:
    (tmp_path / "q.db").mkdir()  # a directory where the file should be
    with pytest.raises(QueueError):
        await SQLiteQueue.open(f"sqlite:///{tmp_path / 'q.db'}")
    assert not [t for t in threading.enumerate() if t.name.startswith("ctgw-sqlite")]


async def test_the_wal_is_checkpointed_at_its_size_and_then_reused(tmp_path: Path) -> None:
    queue = await SQLiteQueue.open(f"sqlite:///{tmp_path}/q.db")
    wal = tmp_path / "q.db-wal"
    frame = 24 + 4096  # header and page
    sizes = []
    try:
        for batch in range(30):  # ~16,000 pages in all: 3 KB payloads overflow to a page each
            items = [Put("lead", bytes([batch]) * 3000, None) for _ in range(512)]
            await queue.put_many(items, time.time())
            sizes.append(wal.stat().st_size)
    finally:
        await queue.close()
    assert max(sizes) > 2_000 * frame  # not checkpointed at SQLite's default of 1,000 pages
    # ...but once past the limit, and the file reused from its start: no unbounded growth
    assert max(sizes) < (CHECKPOINT_PAGES + 1_100) * frame


async def test_close_commits_what_was_put_and_refuses_the_rest(tmp_path: Path) -> None:
    q = await open_queue(f"sqlite:///{tmp_path / 'q.db'}")
    pending = [asyncio.create_task(q.put(Put("lead", b"{}", f"k{i}"), T0)) for i in range(20)]
    await asyncio.sleep(0)  # every put handed to the writer, none committed yet
    await q.close()
    assert all(r.created for r in await asyncio.gather(*pending))
    with pytest.raises(ConnectionError):
        await q.put(Put("lead", b"{}"), T0)
    reopened = await open_queue(f"sqlite:///{tmp_path / 'q.db'}")
    assert len(await reopened.lease("lead", 100, T0 + 1e9, 30)) == 20
    await reopened.close()


async def test_sqlite_survives_reopen_and_is_private(tmp_path: Path) -> None:
    q = await SQLiteQueue.open(f"sqlite:///{tmp_path / 'q.db'}")
    [created] = await q.put_many([Put("lead", b'{"a": 1}')], T0)
    await q.close()
    assert stat.S_IMODE((tmp_path / "q.db").stat().st_mode) == 0o600
    reopened = await SQLiteQueue.open(f"sqlite:///{tmp_path / 'q.db'}")
    [job] = await reopened.lease("lead", 1, T0, 30)
    await reopened.close()
    assert job.id == created.status.id and job.payload == b'{"a": 1}'


# The schema of the release before sites and kept counts: user_version 0, no site column.
_SCHEMA_V1 = """
CREATE TABLE jobs (
    id TEXT PRIMARY KEY, kind TEXT NOT NULL, state TEXT NOT NULL, payload BLOB,
    dedup_key TEXT, created_at REAL NOT NULL, visible_at REAL NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0, lease INTEGER NOT NULL DEFAULT 0, last_error TEXT,
    upstream_id TEXT, done_at REAL
);
CREATE UNIQUE INDEX jobs_dedup ON jobs (kind, dedup_key) WHERE dedup_key IS NOT NULL;
INSERT INTO jobs (id, kind, state, payload, dedup_key, created_at, visible_at)
    VALUES ('a', 'lead', 'ready', x'7b7d', 'req-1', 1.0, 1.0),
           ('b', 'lead', 'dead', x'7b7d', 'req-2', 1.0, 1.0),
           ('c', 'lead', 'delivered', NULL, 'req-3', 1.0, 1.0);
"""


async def test_a_store_of_the_release_before_is_upgraded_in_place(tmp_path: Path) -> None:
    db = tmp_path / "q.db"
    old = sqlite3.connect(db)
    old.executescript(_SCHEMA_V1)
    old.close()
    queue = await SQLiteQueue.open(f"sqlite:///{db}")
    try:
        stats = await queue.stats()
        assert (stats.counts[State.READY], stats.counts[State.DEAD],
                stats.counts[State.DELIVERED]) == (1, 1, 1)
        again = await queue.put(Put("lead", b"{}", "req-1"), T0)
        assert not again.created and again.status.id == "a"  # its dedup key kept, as 'default'
        [job] = await queue.lease("lead", 5, T0, 30)
        assert (job.id, job.site) == ("a", "default")
    finally:
        await queue.close()
    check = sqlite3.connect(db)
    assert check.execute("PRAGMA user_version").fetchone()[0] == VERSION
    check.close()


async def test_a_store_of_version_5_keeps_its_points_and_gains_refusals(tmp_path: Path) -> None:
    db = tmp_path / "q.db"
    await (await SQLiteQueue.open(f"sqlite:///{db}")).close()
    old = sqlite3.connect(db)  # as version 5 made it: no refusals in points_spent
    old.executescript("""
        DROP TABLE points_spent;
        CREATE TABLE points_spent (site TEXT NOT NULL, span TEXT NOT NULL, ends REAL NOT NULL,
            points INTEGER NOT NULL, bulk INTEGER NOT NULL,
            PRIMARY KEY (site, span, ends)) WITHOUT ROWID;
        INSERT INTO points_spent VALUES ('a', 'hour', 1e10, 7, 2);
        PRAGMA user_version=5;
    """)
    old.close()
    queue = await SQLiteQueue.open(f"sqlite:///{db}")
    try:
        totals = await queue.tally([Tally("a", "hour", 1e10, 1, 0, T0, 0.0)], T0)
    finally:
        await queue.close()
    assert totals == [Tally("a", "hour", 1e10, 8, 2, T0, 0.0)]


async def test_a_store_of_version_6_buries_what_its_purges_left_held(tmp_path: Path) -> None:
    db = tmp_path / "q.db"
    await (await SQLiteQueue.open(f"sqlite:///{db}")).close()
    old = sqlite3.connect(db)
    old.executescript(purged_orphans.ROWS + "; PRAGMA user_version=6;")
    old.close()
    queue = await SQLiteQueue.open(f"sqlite:///{db}")
    try:
        await purged_orphans.assert_buried(queue)
    finally:
        await queue.close()


async def test_a_store_of_a_newer_release_is_refused(tmp_path: Path) -> None:
    db = tmp_path / "q.db"
    newer = sqlite3.connect(db)
    newer.execute(f"PRAGMA user_version={VERSION + 1}")
    newer.close()
    with pytest.raises(QueueError, match="newer"):
        await SQLiteQueue.open(f"sqlite:///{db}")


async def test_stats_read_kept_counts_not_the_table(tmp_path: Path) -> None:
    """The counts come from job_counts: a row changed behind the triggers' back shows it."""
    queue = await SQLiteQueue.open(f"sqlite:///{tmp_path / 'q.db'}")
    try:
        await queue.put_many([Put("lead", b"{}", f"k{i}") for i in range(5)], T0)
        [job] = await queue.lease("lead", 1, T0, 30)
        await queue.ack(job, "1", T0)
        counts = (await queue.stats()).counts
        assert (counts[State.READY], counts[State.DELIVERED]) == (4, 1)
        raw = sqlite3.connect(tmp_path / "q.db", isolation_level=None)
        raw.execute("UPDATE job_counts SET n = 1000 WHERE state = 'ready'")
        raw.close()
        assert (await queue.stats()).counts[State.READY] == 1000
    finally:
        await queue.close()
