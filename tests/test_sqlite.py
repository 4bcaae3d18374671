"""SQLite-only behaviour, beyond the queue contract: locks held by other processes."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from pathlib import Path

import pytest

from gateway.queue import Put
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
