"""SQLite-only behaviour beyond the queue contract: shared inserts, failures, others' locks."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import pytest

from gateway.queue import Put, QueueError
from gateway.queue import sqlite as backend
from gateway.queue.sqlite import SQLiteQueue


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

    def counted(conn: sqlite3.Connection, ids: Sequence[str], items: Sequence[Put],
                now: float) -> int:
        sizes.append(len(items))
        return insert(conn, ids, items, now)

    monkeypatch.setattr(backend, "_insert_rows", counted)
    queue = await SQLiteQueue.open(f"sqlite:///{tmp_path / 'q.db'}")
    try:
        await asyncio.gather(*(queue.put(Put("lead", b"{}", f"k{i}")) for i in range(300)))
    finally:
        await queue.close()
    assert sum(sizes) == 300 and len(sizes) < 300 / 4, sizes


async def test_a_failed_commit_is_a_queue_error_for_each_put(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    queue = await SQLiteQueue.open(f"sqlite:///{tmp_path / 'q.db'}")
    insert = backend._insert_rows
    try:
        def full(*args: object) -> int:
            raise sqlite3.OperationalError("database or disk is full")

        monkeypatch.setattr(backend, "_insert_rows", full)
        outcomes = await asyncio.gather(*(queue.put(Put("lead", b"{}")) for _ in range(5)),
                                        return_exceptions=True)
        assert all(isinstance(o, QueueError) for o in outcomes), outcomes
        monkeypatch.setattr(backend, "_insert_rows", insert)
        assert (await queue.put(Put("lead", b"{}"))).created
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
    assert max(sizes) < (backend.CHECKPOINT_PAGES + 1_100) * frame
