"""SQLite backend: WAL, ``synchronous=FULL`` (fsync on commit), one writer thread.

Every write runs on the writer thread (:mod:`gateway.queue.writer`), which owns its
connection, so the event loop never blocks on disk; puts waiting together share one INSERT and
one fsync. Reads that may scan (stats, listings) use a second connection and thread, so a
scrape never holds up a commit.

A purge must leave no copy of a lead on disk: ``secure_delete`` zeroes every freed cell and
page (also the leftovers of page splits, so it is on from the first write), and a truncating
checkpoint afterwards drops the WAL frames that still hold the old pages.
"""

from __future__ import annotations

import asyncio
import functools
import os
import sqlite3
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlsplit

from ..ids import new_ids
from .base import PENDING, Job, Purged, Put, PutResult, QueueError, State, Stats, Status
from .writer import Writer

T = TypeVar("T")

_PENDING_SQL = "(" + ", ".join(f"'{state.value}'" for state in PENDING) + ")"
_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS jobs (
    id          TEXT PRIMARY KEY,
    kind        TEXT NOT NULL,
    state       TEXT NOT NULL,
    payload     BLOB,
    dedup_key   TEXT,
    created_at  REAL NOT NULL,
    visible_at  REAL NOT NULL,
    attempts    INTEGER NOT NULL DEFAULT 0,
    lease       INTEGER NOT NULL DEFAULT 0,
    last_error  TEXT,
    upstream_id TEXT,
    done_at     REAL
);
CREATE UNIQUE INDEX IF NOT EXISTS jobs_dedup ON jobs (kind, dedup_key)
    WHERE dedup_key IS NOT NULL;
CREATE INDEX IF NOT EXISTS jobs_visible ON jobs (kind, visible_at, state)
    WHERE state IN {_PENDING_SQL};
CREATE INDEX IF NOT EXISTS jobs_age ON jobs (created_at) WHERE state IN {_PENDING_SQL};
CREATE INDEX IF NOT EXISTS jobs_done ON jobs (state, done_at)
    WHERE state IN ('delivered', 'dead');
CREATE INDEX IF NOT EXISTS jobs_purge ON jobs (state, done_at)
    WHERE state IN ('delivered', 'dead') AND payload IS NOT NULL;
"""
_STATUS_COLS = "id, kind, state, created_at, attempts, last_error, upstream_id, payload IS NULL"
# The same terms as jobs_purge's WHERE, so the planner may use it; purged rows leave that
# index, so a purge never walks over the (ever growing) history of earlier ones.
_PURGE_SQL = (
    "UPDATE jobs SET payload = NULL WHERE rowid IN (SELECT rowid FROM jobs"
    " WHERE state IN ('delivered', 'dead') AND payload IS NOT NULL"
    " AND state = ? AND done_at < ? LIMIT ?)"
)
_INSERT = (
    "INSERT OR IGNORE INTO jobs (id, kind, state, payload, dedup_key, created_at, visible_at)"
    " VALUES "
)
# Six variables a row, far under SQLite's 32,766; a group commit batch fits in one statement.
_ROWS_PER_INSERT = 512
_BUSY_MS = 10_000
# SQLite checkpoints inside the commit that fills the WAL to this many pages, and the puts
# arriving meanwhile wait for it. A single-lead commit writes ~6 pages, so SQLite's default
# of 1,000 meant a checkpoint every 0.3 s at 1,000 leads/s (5-7 ms each, 1.3-1.8 % of the
# writer's time). At 10,000 it is one every ~2.5 s, of 6-13 ms: most pages a checkpoint copies
# are the same few hot B-tree pages, rewritten many times over. The WAL is then ~40 MB.
CHECKPOINT_PAGES = 10_000
# A truncating checkpoint waits for readers with the writer lock held: wait briefly, and
# leave the rest to the next purge rather than stall intake.
_FLUSH_BUSY_MS = 1_000


def path_from_url(url: str) -> Path:
    """``sqlite:///./rel.db`` is relative, ``sqlite:////abs.db`` absolute (SQLAlchemy's form)."""
    path = urlsplit(url).path
    return Path(path[1:] if path.startswith("/") else path)


def _connect(path: Path) -> sqlite3.Connection:
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        # Created 0600 before SQLite touches it: the store holds personal data.
        os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))
    conn = sqlite3.connect(
        # Room for an INSERT of every batch size besides the other statements.
        path, isolation_level=None, check_same_thread=False,
        cached_statements=_ROWS_PER_INSERT + 64,
    )
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("PRAGMA secure_delete=ON")
    conn.execute(f"PRAGMA busy_timeout={_BUSY_MS}")
    conn.execute(f"PRAGMA wal_autocheckpoint={CHECKPOINT_PAGES}")
    return conn


def _status(row: tuple[object, ...]) -> Status:
    id_, kind, state, created, attempts, error, upstream, purged = row
    return Status(
        str(id_), str(kind), State(state), float(created),  # type: ignore[arg-type]
        int(attempts), error, upstream, bool(purged),  # type: ignore[call-overload, arg-type]
    )


def _guarded(fn: Callable[[], T]) -> T:
    """``fn()``, with SQLite's errors as :class:`QueueError`: the contract's one failure type."""
    try:
        return fn()
    except sqlite3.Error as exc:
        raise QueueError(f"sqlite: {exc}") from exc


@functools.cache
def _insert_sql(rows: int) -> str:
    return _INSERT + ", ".join(["(?, ?, 'ready', ?, ?, ?, ?)"] * rows)


def _insert_rows(
    conn: sqlite3.Connection, ids: Sequence[str], items: Sequence[Put], now: float
) -> int:
    """Insert new jobs, skipping repeated dedup keys; returns how many were inserted."""
    args: list[object] = []
    for job_id, item in zip(ids, items, strict=True):
        args += (job_id, item.kind, item.payload, item.dedup_key, now, now)
    return conn.execute(_insert_sql(len(ids)), args).rowcount


def _created(job_id: str, item: Put, now: float) -> PutResult:
    return PutResult(Status(job_id, item.kind, State.READY, now, 0, None, None), created=True)


def _resolve(conn: sqlite3.Connection, job_id: str, item: Put, now: float) -> PutResult:
    """After a batch with repeats: the job holding the item's dedup key says which it was.

    Within one batch too, the first of two equal keys is the one that holds it.
    """
    if item.dedup_key is None:
        return _created(job_id, item, now)
    row = conn.execute(
        f"SELECT {_STATUS_COLS} FROM jobs WHERE kind = ? AND dedup_key = ?",
        (item.kind, item.dedup_key),
    ).fetchone()
    if row[0] == job_id:
        return _created(job_id, item, now)
    return PutResult(_status(row), created=False)


class SQLiteQueue:
    """The :class:`~gateway.queue.base.Queue` contract on one SQLite file."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._writer: Writer[Put, PutResult] = Writer(self._commit_puts, "ctgw-sqlite-w")
        self._reader = ThreadPoolExecutor(1, thread_name_prefix="ctgw-sqlite-r")
        self._w: sqlite3.Connection | None = None
        self._r: sqlite3.Connection | None = None
        # Purged payloads may still sit in the WAL until a truncating checkpoint succeeds; true
        # at open too, since an earlier process may have purged and stopped before its own.
        self._unflushed = True

    @classmethod
    async def open(cls, url: str) -> SQLiteQueue:
        queue = cls(path_from_url(url))
        try:
            await queue._write(queue._open_writer)
            queue._r = await queue._read(lambda: _connect(queue.path))
        except BaseException:
            await queue.close()  # no thread outlives a store that could not be opened
            raise
        return queue

    def _open_writer(self) -> None:
        self._w = _connect(self.path)
        self._w.executescript(_SCHEMA)

    async def _write(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on the writer thread: one thread, so writes never interleave."""
        return await self._writer.call(functools.partial(_guarded, fn))

    async def _read(self, fn: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._reader, fn)

    def _tx(self, fn: Callable[[sqlite3.Connection], T]) -> Callable[[], T]:
        def run() -> T:
            assert self._w is not None
            self._w.execute("BEGIN IMMEDIATE")
            try:
                result = fn(self._w)
            except BaseException:
                self._w.execute("ROLLBACK")
                raise
            self._w.execute("COMMIT")
            return result

        return run

    def put(self, item: Put) -> asyncio.Future[PutResult]:
        return self._writer.put(item)

    def _commit_puts(self, items: list[Put]) -> list[PutResult]:
        """On the writer thread: every put that was waiting, in one commit.

        Up to 512 rows are one autocommit INSERT: SQLite inserts, commits and fsyncs within a
        single call that holds no GIL, while the event loop goes on serving.
        """
        return _guarded(lambda: self._insert(new_ids(len(items)), items, time.time()))

    async def put_many(self, items: Sequence[Put], now: float) -> list[PutResult]:
        if not items:
            return []
        ids = new_ids(len(items))
        return await self._write(lambda: self._insert(ids, items, now))

    def _insert(self, ids: list[str], items: Sequence[Put], now: float) -> list[PutResult]:
        conn = self._w
        assert conn is not None
        starts = range(0, len(items), _ROWS_PER_INSERT)
        if len(starts) == 1:
            inserted = _insert_rows(conn, ids, items, now)
        else:  # a bulk load: one transaction of several statements
            inserted = self._tx(lambda c: sum(
                _insert_rows(c, ids[i:i + _ROWS_PER_INSERT], items[i:i + _ROWS_PER_INSERT], now)
                for i in starts
            ))()
        if inserted == len(items):  # the common case: no repeated requestNumber
            return [_created(i, item, now) for i, item in zip(ids, items, strict=True)]
        return [_resolve(conn, i, item, now) for i, item in zip(ids, items, strict=True)]

    async def lease(self, kind: str, limit: int, now: float, visibility: float) -> list[Job]:
        def run(conn: sqlite3.Connection) -> list[Job]:
            rows = conn.execute(
                "SELECT id, kind, payload, created_at, attempts, lease FROM jobs"
                f" WHERE kind = ? AND state IN {_PENDING_SQL} AND visible_at <= ?"
                " ORDER BY visible_at LIMIT ?",
                (kind, now, limit),
            ).fetchall()
            conn.executemany(
                "UPDATE jobs SET state = 'leased', visible_at = ?, lease = lease + 1"
                " WHERE id = ?",
                [(now + visibility, row[0]) for row in rows],
            )
            return [Job(r[0], r[1], r[2], r[3], r[4], r[5] + 1) for r in rows]

        return await self._write(self._tx(run))

    async def _finish(self, job: Job, sql: str, args: tuple[object, ...]) -> bool:
        def run(conn: sqlite3.Connection) -> bool:
            cur = conn.execute(
                f"{sql} WHERE id = ? AND lease = ? AND state = 'leased'",
                (*args, job.id, job.lease),
            )
            return cur.rowcount == 1

        return await self._write(self._tx(run))

    async def ack(self, job: Job, upstream_id: str, now: float) -> bool:
        return await self._finish(
            job,
            "UPDATE jobs SET state = 'delivered', upstream_id = ?, done_at = ?,"
            " attempts = attempts + 1, last_error = NULL",
            (upstream_id, now),
        )

    async def retry(self, job: Job, at: float, error: str, now: float) -> bool:
        return await self._finish(
            job,
            "UPDATE jobs SET state = 'delayed', visible_at = ?, attempts = attempts + 1,"
            " last_error = ?",
            (at, error),
        )

    async def release(self, job: Job) -> bool:
        return await self._finish(
            job, "UPDATE jobs SET state = 'ready', visible_at = created_at", ()
        )

    async def bury(self, job: Job, reason: str, now: float) -> bool:
        return await self._finish(
            job,
            "UPDATE jobs SET state = 'dead', last_error = ?, done_at = ?,"
            " attempts = attempts + 1",
            (reason, now),
        )

    async def status(self, job_id: str) -> Status | None:
        def run() -> Status | None:
            assert self._r is not None
            sql = f"SELECT {_STATUS_COLS} FROM jobs WHERE id = ?"
            row = self._r.execute(sql, (job_id,)).fetchone()
            return None if row is None else _status(row)

        return await self._read(run)

    async def dead(self, limit: int) -> list[Status]:
        def run() -> list[Status]:
            assert self._r is not None
            rows = self._r.execute(
                # jobs_done's own terms first: the planner cannot see that state = 'dead'
                # implies them, and without them this scans the table and sorts.
                f"SELECT {_STATUS_COLS} FROM jobs WHERE state IN ('delivered', 'dead')"
                " AND state = 'dead' ORDER BY done_at LIMIT ?",
                (limit,),
            ).fetchall()
            return [_status(r) for r in rows]

        return await self._read(run)

    async def replay(self, job_ids: Sequence[str] | None, now: float) -> int:
        def run(conn: sqlite3.Connection) -> int:
            sql = (
                "UPDATE jobs SET state = 'ready', visible_at = ?, attempts = 0,"
                " created_at = ?, done_at = NULL WHERE state = 'dead' AND payload IS NOT NULL"
            )
            if job_ids is None:
                return conn.execute(sql, (now, now)).rowcount
            return sum(conn.execute(f"{sql} AND id = ?", (now, now, i)).rowcount for i in job_ids)

        return await self._write(self._tx(run))

    async def purge(self, delivered_before: float, dead_before: float, limit: int) -> Purged:
        if limit < 1:
            raise ValueError("limit must be at least 1")
        delivered = await self._purge_state(State.DELIVERED, delivered_before, limit)
        dead = await self._purge_state(State.DEAD, dead_before, limit)
        if self._unflushed:
            self._unflushed = not await self._write(self._flush)
        return Purged(delivered, dead, flushed=not self._unflushed)

    async def _purge_state(self, state: State, before: float, limit: int) -> int:
        def run(conn: sqlite3.Connection) -> int:
            return conn.execute(_PURGE_SQL, (state.value, before, limit)).rowcount

        total = 0
        while True:
            # One transaction per batch, each taking the lock anew: intake waits for one
            # batch at most, not for the whole purge.
            count = await self._write(self._tx(run))
            total += count
            self._unflushed = self._unflushed or count > 0
            if count < limit:
                return total

    def _flush(self) -> bool:
        assert self._w is not None
        self._w.execute(f"PRAGMA busy_timeout={_FLUSH_BUSY_MS}")
        try:
            busy, _, _ = self._w.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        finally:
            self._w.execute(f"PRAGMA busy_timeout={_BUSY_MS}")
        return bool(busy == 0)

    async def next_visible_at(self, kind: str) -> float | None:
        def run() -> float | None:
            assert self._r is not None
            row = self._r.execute(
                f"SELECT min(visible_at) FROM jobs WHERE kind = ? AND state IN {_PENDING_SQL}",
                (kind,),
            ).fetchone()
            return None if row[0] is None else float(row[0])

        return await self._read(run)

    async def stats(self) -> Stats:
        def run() -> Stats:
            assert self._r is not None
            counts = {state: 0 for state in State}
            for state, count in self._r.execute(
                "SELECT state, count(*) FROM jobs GROUP BY state"
            ).fetchall():
                counts[State(state)] = int(count)
            oldest = self._r.execute(
                f"SELECT min(created_at) FROM jobs WHERE state IN {_PENDING_SQL}"
            ).fetchone()[0]
            return Stats(counts, None if oldest is None else float(oldest))

        return await self._read(run)

    async def close(self) -> None:
        """Commit what was put before, then close; a put after this fails."""
        if self._writer.closed:
            return
        if self._r is not None:
            await self._read(self._r.close)
        self._reader.shutdown(wait=True)
        await self._writer.close(self._close_writer)

    def _close_writer(self) -> None:
        if self._w is not None:
            self._w.close()

