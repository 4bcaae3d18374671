"""The SQLite store's statements, as plain functions of a connection (no threads, no loop).

:class:`~gateway.queue.sqlite.SQLiteQueue` runs the writing ones on its writer thread, inside a
transaction where they need one, and the reading ones on its reader thread.
"""

from __future__ import annotations

import functools
import math
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from typing import TypeVar

import orjson

from gateway.queue.base import (
    PARENT_DEAD,
    Job,
    Put,
    PutResult,
    Quarantined,
    State,
    Stats,
    Status,
)
from gateway.queue.sqlite_schema import BUSY_MS, PENDING_SQL

T = TypeVar("T")
Row = tuple[str, Put, float]  # a new job's id, what it holds, when it was put

STATUS_COLS = (
    "id, kind, state, created_at, attempts, last_error, upstream_id, payload IS NULL, site,"
    " details"
)
_INSERT = (
    "INSERT OR IGNORE INTO jobs"
    " (id, kind, state, payload, dedup_key, created_at, visible_at, site) VALUES "
)
_INSERT_ROW = "(?, ?, 'ready', ?, ?, ?, ?, ?)"
# Seven variables a row, far under SQLite's 32,766.
ROWS_PER_INSERT = 512
# A write of up to 64 rows is one statement, since each more takes the GIL back from the busy
# loop once more; a larger one is a few (_runs). So the writer caches 67 sizes of an INSERT,
# where one for every count up to 512 took 84 MiB.
EXACT_ROWS = 64
STATEMENT_SIZES = EXACT_ROWS + (ROWS_PER_INSERT // EXACT_ROWS).bit_length() - 1
_VISIBLE = f" WHERE kind = ? AND state IN {PENDING_SQL} AND visible_at <= ?"
_LEASE = (
    "SELECT id, kind, payload, created_at, attempts, lease, site, after_upstream FROM jobs"
    + _VISIBLE
)
_OLDEST_SITE = "SELECT site FROM jobs" + _VISIBLE + " ORDER BY visible_at LIMIT 1"
# The same terms as jobs_purge's WHERE, so the planner may use it; purged rows leave that
# index, so a purge never walks over the (ever growing) history of earlier ones.
_PURGE = (
    "UPDATE jobs SET payload = NULL WHERE rowid IN (SELECT rowid FROM jobs"
    " WHERE state IN ('delivered', 'dead') AND payload IS NOT NULL"
    " AND state = ? AND done_at < ? LIMIT ?)"
)
# What waited for the dead jobs just purged (or the spam about to be), and what waited for
# those, down the links: it is dead from when its wait became hopeless (the later of its put
# and its parent's death; spam never died, and SQLite's max() of a NULL is NULL).
# The anchor and the step name jobs_held's terms, so each walks that index, not the table.
_BURY_ORPHANS = """
WITH RECURSIVE orphans (id, done_at) AS (
    SELECT h.id, max(h.created_at, coalesce(p.done_at, 0)) FROM jobs AS p
    JOIN jobs AS h ON h.after = p.id
    WHERE p.id IN (SELECT value FROM json_each(?)) AND h.state = 'held'
    UNION
    SELECT h.id, max(h.created_at, o.done_at) FROM orphans AS o JOIN jobs AS h ON h.after = o.id
    WHERE h.state = 'held'
)
UPDATE jobs SET state = 'dead', payload = NULL, last_error = ?, done_at = orphans.done_at
FROM orphans WHERE jobs.id = orphans.id AND jobs.state = 'held' RETURNING 1
"""
_REPLAY = (
    "UPDATE jobs SET state = 'ready', visible_at = ?, attempts = 0, created_at = ?,"
    " done_at = NULL WHERE state = 'dead' AND payload IS NOT NULL"
)
_NEXT_ANY = f"SELECT min(visible_at) FROM jobs WHERE kind = ? AND state IN {PENDING_SQL}"
_NEXT_OF_SITES = (
    f"SELECT visible_at FROM jobs WHERE kind = ? AND state IN {PENDING_SQL}"
    " AND site IN (SELECT value FROM json_each(?)) ORDER BY visible_at LIMIT 1"
)
_PENDING_BY_SITE = (
    f"SELECT site, sum(n) FROM job_counts WHERE state IN {PENDING_SQL}"
    " GROUP BY site HAVING sum(n) > 0 ORDER BY site"
)
# A truncating checkpoint waits for readers with the writer lock held: wait briefly, and
# leave the rest to the next purge rather than stall intake.
_FLUSH_BUSY_MS = 1_000


def transaction(conn: sqlite3.Connection, fn: Callable[[sqlite3.Connection], T]) -> T:
    conn.execute("BEGIN IMMEDIATE")
    try:
        result = fn(conn)
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
    return result


def status_of(row: tuple[object, ...]) -> Status:
    id_, kind, state, created, attempts, error, upstream, purged, site, details = row
    return Status(
        str(id_), str(kind), State(state), float(created),  # type: ignore[arg-type]
        int(attempts), error, upstream, bool(purged),  # type: ignore[call-overload, arg-type]
        str(site), None if details is None else orjson.loads(details),  # type: ignore[arg-type]
    )


@functools.cache
def _rows_sql(head: str, row: str, rows: int) -> str:
    """A multi-row ``INSERT``: ``head``, then ``rows`` copies of ``row``."""
    return head + ", ".join([row] * rows)


def _insert_rows(conn: sqlite3.Connection, rows: Sequence[Row]) -> int:
    args: list[object] = []
    for job_id, item, now in rows:
        args += (job_id, item.kind, item.payload, item.dedup_key, now, now, item.site)
    return conn.execute(_rows_sql(_INSERT, _INSERT_ROW, len(rows)), args).rowcount


def _created(job_id: str, item: Put, now: float) -> PutResult:
    return PutResult(Status(job_id, item.kind, State.READY, now, 0, None, None), created=True)


def _resolve(conn: sqlite3.Connection, job_id: str, item: Put, now: float) -> PutResult:
    """After a batch with repeats: the job holding the item's dedup key says which it was.

    Within one batch too, the first of two equal keys is the one that holds it.
    """
    if item.dedup_key is None:
        return _created(job_id, item, now)
    row = conn.execute(
        f"SELECT {STATUS_COLS} FROM jobs WHERE site = ? AND kind = ? AND dedup_key = ?",
        (item.site, item.kind, item.dedup_key),
    ).fetchone()
    if row[0] == job_id:
        return _created(job_id, item, now)
    return PutResult(status_of(row), created=False)


def insert(conn: sqlite3.Connection, rows: list[Row]) -> list[PutResult]:
    """Insert new jobs, skipping repeated dedup keys; up to 64 rows are one autocommit
    statement, in which SQLite inserts, commits and fsyncs without holding the GIL."""
    runs = list(_runs(rows))
    if len(runs) == 1:
        inserted = _insert_rows(conn, rows)
    else:
        inserted = transaction(conn, lambda c: sum(_insert_rows(c, run) for run in runs))
    if inserted == len(rows):  # the common case: no repeated dedup key
        return [_created(i, item, now) for i, item, now in rows]
    return [_resolve(conn, i, item, now) for i, item, now in rows]


def lease(
    conn: sqlite3.Connection, kind: str, limit: int, until: float, now: float, site: str | None
) -> list[Job]:
    if site is None and limit > 1:  # one call carries the jobs of one site
        oldest = conn.execute(_OLDEST_SITE, (kind, now)).fetchone()
        site = None if oldest is None else str(oldest[0])
    if site is None:
        rows = conn.execute(_LEASE + " ORDER BY visible_at LIMIT ?", (kind, now, limit))
    else:
        rows = conn.execute(_LEASE + " AND site = ? ORDER BY visible_at LIMIT ?",
                            (kind, now, site, limit))
    jobs = [Job(r[0], r[1], r[2], r[3], r[4], r[5] + 1, r[6], r[7]) for r in rows.fetchall()]
    conn.executemany(
        "UPDATE jobs SET state = 'leased', visible_at = ?, lease = lease + 1 WHERE id = ?",
        [(until, job.id) for job in jobs],
    )
    return jobs


def finish(conn: sqlite3.Connection, job: Job, sql: str, args: tuple[object, ...]) -> bool:
    """``sql`` (an UPDATE's SET) on ``job`` if its lease is still the one held."""
    cur = conn.execute(
        f"{sql} WHERE id = ? AND lease = ? AND state = 'leased'", (*args, job.id, job.lease)
    )
    return cur.rowcount == 1


def replay(conn: sqlite3.Connection, job_ids: Sequence[str] | None, now: float) -> int:
    if job_ids is None:
        return conn.execute(_REPLAY, (now, now)).rowcount
    return sum(conn.execute(f"{_REPLAY} AND id = ?", (now, now, i)).rowcount for i in job_ids)


def purge(conn: sqlite3.Connection, state: State, before: float, limit: int) -> tuple[int, int]:
    """Purge up to ``limit`` jobs of ``state``; how many, and how many held jobs that left
    waiting for nothing (buried: see :data:`_BURY_ORPHANS`)."""
    purged = [str(row[0]) for row in conn.execute(
        _PURGE + " RETURNING id", (state.value, before, limit)
    ).fetchall()]
    if state != State.DEAD or not purged:
        return len(purged), 0
    # Counted from what it returns: sqlite3 gives no rowcount for a statement that starts WITH.
    buried = conn.execute(_BURY_ORPHANS, (orjson.dumps(purged).decode(), PARENT_DEAD))
    return len(purged), len(buried.fetchall())


def flush(conn: sqlite3.Connection) -> bool:
    """Truncate the WAL, whose frames may still hold purged pages; False if readers held it."""
    conn.execute(f"PRAGMA busy_timeout={_FLUSH_BUSY_MS}")
    try:
        busy, _, _ = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
    finally:
        conn.execute(f"PRAGMA busy_timeout={BUSY_MS}")
    return bool(busy == 0)


def status(conn: sqlite3.Connection, job_id: str) -> Status | None:
    row = conn.execute(f"SELECT {STATUS_COLS} FROM jobs WHERE id = ?", (job_id,)).fetchone()
    return None if row is None else status_of(row)


def dead(conn: sqlite3.Connection, limit: int) -> list[Status]:
    rows = conn.execute(
        # jobs_done's own terms first: the planner cannot see that state = 'dead' implies
        # them, and without them this scans the table and sorts.
        f"SELECT {STATUS_COLS} FROM jobs WHERE state IN ('delivered', 'dead')"
        " AND state = 'dead' ORDER BY done_at LIMIT ?",
        (limit,),
    ).fetchall()
    return [status_of(r) for r in rows]


def next_visible(
    conn: sqlite3.Connection, kind: str, sites: Sequence[str] | None
) -> float | None:
    if sites is None:
        row = conn.execute(_NEXT_ANY, (kind,)).fetchone()
    else:  # the first in visible_at order of jobs_visible that is of one of the sites
        row = conn.execute(_NEXT_OF_SITES, (kind, orjson.dumps(list(sites)).decode())).fetchone()
    return None if row is None or row[0] is None else float(row[0])


def pending_by_site(conn: sqlite3.Connection) -> dict[str, int]:
    rows = conn.execute(_PENDING_BY_SITE).fetchall()
    return {str(site): int(count) for site, count in rows}


def stats(conn: sqlite3.Connection) -> Stats:
    """From the counts the triggers keep, and the age index: no scan of the jobs."""
    counts = {state: 0 for state in State}
    for state, count in conn.execute("SELECT state, sum(n) FROM job_counts GROUP BY state"):
        counts[State(state)] = int(count)
    oldest = conn.execute(
        f"SELECT min(created_at) FROM jobs WHERE state IN {PENDING_SQL}"
    ).fetchone()[0]
    return Stats(counts, None if oldest is None else float(oldest))


_QUARANTINE = (
    "INSERT OR IGNORE INTO jobs"
    " (id, kind, state, payload, created_at, visible_at, site, last_error) VALUES "
)
_QUARANTINE_ROW = "(?, ?, 'spam', ?, ?, ?, ?, ?)"


def _runs(items: Sequence[T]) -> Iterator[Sequence[T]]:
    """``items`` in order, in runs that each make one statement: up to ``EXACT_ROWS`` in one
    run, more in runs of 512, 256, 128 or 64 and one of the rest (docs/performance.md)."""
    start = 0
    while (left := len(items) - start) > 0:
        size = left if left <= EXACT_ROWS else min(ROWS_PER_INSERT, 1 << (left.bit_length() - 1))
        yield items[start:start + size]
        start += size


# Each of these names the terms of jobs_spam's WHERE, so the planner walks that index.
_SPAM_OLDEST = (
    "SELECT id FROM jobs WHERE state = 'spam' AND created_at < ? ORDER BY created_at LIMIT ?"
)
_SPAM_LIST = f"SELECT {STATUS_COLS} FROM jobs WHERE state = 'spam' AND created_at >= ?"
_SPAM_RELEASE = (
    "UPDATE jobs SET state = 'ready', visible_at = ?, last_error = NULL"
    " WHERE state = 'spam' AND payload IS NOT NULL"
)


def quarantine(conn: sqlite3.Connection, items: Sequence[Quarantined], keep: int) -> int:
    """Store spam, then cut the quarantine back to ``keep``, the oldest first.

    Multi-row statements, not ``executemany``: that takes the GIL back from the busy event loop
    after every row, and real leads' commits waited behind it (docs/performance.md)."""
    for chunk in _runs(items):
        args: list[object] = []
        for q in chunk:
            args += (q.id, q.put.kind, q.put.payload, q.at, q.at, q.put.site, q.reason)
        conn.execute(_rows_sql(_QUARANTINE, _QUARANTINE_ROW, len(chunk)), args)
    held = conn.execute("SELECT coalesce(sum(n), 0) FROM job_counts WHERE state = 'spam'")
    excess = int(held.fetchone()[0]) - keep
    if excess <= 0:
        return 0
    return _drop_spam(conn, math.inf, excess)


def spam(conn: sqlite3.Connection, limit: int, since: float | None) -> list[Status]:
    rows = conn.execute(_SPAM_LIST + " ORDER BY created_at LIMIT ?",
                        (-1.0 if since is None else since, limit)).fetchall()
    return [status_of(r) for r in rows]


def release_spam(
    conn: sqlite3.Connection, job_ids: Sequence[str] | None, since: float | None, now: float
) -> int:
    if job_ids is not None:
        return sum(conn.execute(f"{_SPAM_RELEASE} AND id = ?", (now, i)).rowcount
                   for i in job_ids)
    if since is not None:
        return conn.execute(f"{_SPAM_RELEASE} AND created_at >= ?", (now, since)).rowcount
    return conn.execute(_SPAM_RELEASE, (now,)).rowcount


def purge_spam(conn: sqlite3.Connection, before: float, limit: int) -> int:
    return _drop_spam(conn, before, limit)


def _drop_spam(conn: sqlite3.Connection, before: float, limit: int) -> int:
    """Delete up to ``limit`` spam put before ``before``, the oldest first. What was queued
    behind one (a deal naming a lead scored spam) is buried first: it waits for nothing now."""
    doomed = orjson.dumps([row[0] for row in conn.execute(_SPAM_OLDEST, (before, limit))])
    conn.execute(_BURY_ORPHANS, (doomed.decode(), PARENT_DEAD)).fetchall()
    return conn.execute(
        "DELETE FROM jobs WHERE id IN (SELECT value FROM json_each(?))", (doomed.decode(),)
    ).rowcount
