"""The PostgreSQL store's statements, as plain functions of a connection.

Each write is one statement, so one transaction in autocommit: it returns once committed,
and its triggers (counts, notifications) take their locks last, in key order.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import orjson

from gateway.queue.base import (
    PARENT_DEAD,
    Job,
    Put,
    PutResult,
    Quarantined,
    QueueError,
    State,
    Stats,
    Status,
)
from gateway.queue.postgres_schema import Conn

Row = tuple[str, Put, float]  # a new job's id, what it holds, when it was put

_PENDING = "state IN ('ready', 'leased', 'delayed')"
STATUS_COLS = (
    "id, kind, state, created_at, attempts, last_error, upstream_id, payload IS NULL, site,"
    " details"
)
# Inserted in key order, so that two batches holding the same dedup keys wait for each other
# instead of deadlocking; among equal keys the first of the batch stays first, and wins.
_INSERT = """
INSERT INTO jobs (id, kind, state, payload, dedup_key, created_at, visible_at, site)
SELECT id, kind, 'ready', payload, dedup_key, created_at, created_at, site
FROM unnest($1::text[], $2::text[], $3::bytea[], $4::text[], $5::float8[], $6::text[])
    WITH ORDINALITY AS input (id, kind, payload, dedup_key, created_at, site, n)
ORDER BY site, kind, dedup_key, n
ON CONFLICT (site, kind, dedup_key) WHERE dedup_key IS NOT NULL DO NOTHING
RETURNING id
"""
_HOLDERS = """
SELECT j.id, j.kind, j.state, j.created_at, j.attempts, j.last_error, j.upstream_id,
    j.payload IS NULL, j.site, j.details, j.dedup_key FROM jobs AS j
JOIN unnest($1::text[], $2::text[], $3::text[]) AS k (site, kind, dedup_key)
    ON j.site = k.site AND j.kind = k.kind AND j.dedup_key = k.dedup_key
"""
# SKIP LOCKED: another gateway's lease in progress is passed over, not waited for.
_PICK = f"""
WITH picked AS (
    SELECT id, visible_at FROM jobs WHERE kind = $1 AND {_PENDING} AND visible_at <= $2
"""
# The UPDATE finds the picked rows by their ids in an array: a join, planned for a LIMIT
# it cannot know in a generic plan, may hash the whole table instead.
_TAKE = """
    ORDER BY visible_at LIMIT $3 FOR UPDATE SKIP LOCKED
), leased AS (
    UPDATE jobs SET state = 'leased', visible_at = $4, lease = lease + 1
    WHERE id = ANY(ARRAY(SELECT id FROM picked))
    RETURNING id, kind, payload, created_at, attempts, lease, site, after_upstream
)
SELECT l.id, l.kind, l.payload, l.created_at, l.attempts, l.lease, l.site, l.after_upstream
FROM leased AS l JOIN picked AS p ON p.id = l.id ORDER BY p.visible_at
"""
_LEASE_ANY = _PICK + _TAKE
# One call carries the jobs of one site: a batch takes the oldest visible job's.
_OLDEST_SITE = (
    f"SELECT site FROM jobs WHERE kind = $1 AND {_PENDING} AND visible_at <= $2"
    " ORDER BY visible_at LIMIT 1"
)
_LEASE_SITE = _PICK + "    AND site = $5" + _TAKE
# The fence: a settlement counts only from the lease that still holds the job.
HELD = " WHERE id = $1 AND lease = $2 AND state = 'leased'"
_REPLAY = """
WITH replayed AS (
    UPDATE jobs SET state = 'ready', visible_at = $1, attempts = 0, created_at = $1,
        done_at = NULL
    WHERE state = 'dead' AND payload IS NOT NULL
"""
_REPLAY_ALL = _REPLAY + "RETURNING 1) SELECT count(*) FROM replayed"
_REPLAY_IDS = _REPLAY + "AND id = ANY($2::text[]) RETURNING 1) SELECT count(*) FROM replayed"
# jobs_purge's own terms first, so that the planner of a generic plan still sees the index.
# A CTE, run once: as an IN (subquery) the planner may run the LIMIT ... SKIP LOCKED again
# for each row, each time past the rows already locked. Its rows stay locked until the update.
_PURGE = """
WITH batch AS MATERIALIZED (
    SELECT id FROM jobs WHERE state IN ('delivered', 'dead') AND payload IS NOT NULL
        AND state = $1 AND done_at < $2
    LIMIT $3 FOR UPDATE SKIP LOCKED
)
UPDATE jobs SET payload = NULL FROM batch WHERE jobs.id = batch.id
"""
# What waited for the dead jobs just purged (or the spam about to be), and what waited for
# those, down the links: it
# is dead from when its wait became hopeless (the later of its put and its parent's death).
# ``state = 'held'`` is checked again on the row to update, should an ack have moved it.
_BURY_ORPHANS = """
WITH RECURSIVE orphans (id, done_at) AS (
    SELECT h.id, GREATEST(h.created_at, p.done_at) FROM jobs AS p
    JOIN jobs AS h ON h.after = p.id AND h.state = 'held'
    WHERE p.id = ANY($1::text[])
    UNION
    SELECT h.id, GREATEST(h.created_at, o.done_at) FROM orphans AS o
    JOIN jobs AS h ON h.after = o.id AND h.state = 'held'
)
UPDATE jobs SET state = 'dead', payload = NULL, last_error = $2, done_at = orphans.done_at
FROM orphans WHERE jobs.id = orphans.id AND jobs.state = 'held'
"""
_NEXT_ANY = f"SELECT min(visible_at) FROM jobs WHERE kind = $1 AND {_PENDING}"
# The first of the sites' in visible_at order, not min(): the index is walked in that order.
_NEXT_OF_SITES = (
    f"SELECT visible_at FROM jobs WHERE kind = $1 AND {_PENDING} AND site = ANY($2::text[])"
    " ORDER BY visible_at LIMIT 1"
)
_PENDING_BY_SITE = (
    "SELECT site, sum(n) FROM job_counts WHERE state IN ('ready', 'leased', 'delayed')"
    " GROUP BY site HAVING sum(n) > 0 ORDER BY site"
)
_COUNTS = "SELECT state, sum(n) FROM job_counts GROUP BY state"
_OLDEST = f"SELECT min(created_at) FROM jobs WHERE {_PENDING}"


def status_of(row: Any) -> Status:
    details = None if row[9] is None else orjson.loads(row[9])
    return Status(str(row[0]), str(row[1]), State(row[2]), float(row[3]), int(row[4]),
                  row[5], row[6], bool(row[7]), str(row[8]), details)


def _created(job_id: str, item: Put, now: float) -> PutResult:
    return PutResult(Status(job_id, item.kind, State.READY, now, 0, None, None), created=True)


async def insert(conn: Conn, rows: Sequence[Row]) -> list[PutResult]:
    """Insert new jobs in one statement, skipping repeated dedup keys."""
    items = [item for _, item, _ in rows]
    created = {record[0] for record in await conn.fetch(
        _INSERT, [i for i, _, _ in rows], [item.kind for item in items],
        [item.payload for item in items], [item.dedup_key for item in items],
        [now for _, _, now in rows], [item.site for item in items],
    )}
    if len(created) == len(rows):  # the common case: no repeated dedup key
        return [_created(i, item, now) for i, item, now in rows]
    repeats = [item for i, item, _ in rows if i not in created]
    holders = {(r[8], r[1], r[10]): status_of(r) for r in await conn.fetch(
        _HOLDERS, [item.site for item in repeats], [item.kind for item in repeats],
        [item.dedup_key for item in repeats],
    )}
    results = []
    for job_id, item, now in rows:
        if job_id in created:
            results.append(_created(job_id, item, now))
            continue
        holder = holders.get((item.site, item.kind, item.dedup_key))
        if holder is None:  # cannot be: a skipped insert means a committed holder
            raise QueueError("postgresql: a repeated dedup key has no job")
        results.append(PutResult(holder, created=False))
    return results


async def lease(
    conn: Conn, kind: str, limit: int, until: float, now: float, site: str | None
) -> list[Job]:
    if site is None and limit > 1:
        site = await conn.fetchval(_OLDEST_SITE, kind, now)
    if site is None:
        records = await conn.fetch(_LEASE_ANY, kind, now, limit, until)
    else:
        records = await conn.fetch(_LEASE_SITE, kind, now, limit, until, site)
    return [Job(str(r[0]), str(r[1]), bytes(r[2]), float(r[3]), int(r[4]), int(r[5]), str(r[6]),
                r[7]) for r in records]


async def finish(conn: Conn, job: Job, update: str, args: tuple[object, ...]) -> bool:
    """``update`` (an UPDATE ending in :data:`HELD`) on ``job``; False if the lease was lost."""
    return _count(await conn.execute(update, job.id, job.lease, *args)) == 1


async def finish_many(
    conn: Conn, updates: Sequence[tuple[Job, str, tuple[object, ...]]]
) -> int:
    """:func:`finish` of each, in one transaction (one commit, not one a job)."""
    async with conn.transaction():
        return sum([await finish(conn, job, update, args) for job, update, args in updates])


def _count(tag: str) -> int:
    """The number of rows in a command tag such as ``UPDATE 3``."""
    return int(tag.rsplit(" ", 1)[-1])


async def replay(conn: Conn, job_ids: Sequence[str] | None, now: float) -> int:
    if job_ids is None:
        return int(await conn.fetchval(_REPLAY_ALL, now))
    return int(await conn.fetchval(_REPLAY_IDS, now, list(job_ids)))


async def purge(conn: Conn, state: State, before: float, limit: int) -> tuple[int, int]:
    """Purge up to ``limit`` jobs of ``state``; how many, and how many held jobs that left
    waiting for nothing (buried in the same transaction: see :data:`_BURY_ORPHANS`)."""
    if state != State.DEAD:
        return _count(await conn.execute(_PURGE, state.value, before, limit)), 0
    async with conn.transaction():
        purged = [str(r[0]) for r in await conn.fetch(
            _PURGE + " RETURNING jobs.id", state.value, before, limit
        )]
        if not purged:
            return 0, 0
        return len(purged), await _bury_orphans(conn, purged)


async def _bury_orphans(conn: Conn, parents: list[str]) -> int:
    """Bury what waits for ``parents``, then what waits for those, until nothing is left: a
    post that queued a job behind one of them while the burial waited for that row's lock
    committed after the burial's snapshot, so only the next statement sees it."""
    buried = 0
    while parents:
        rows = await conn.fetch(_BURY_ORPHANS + " RETURNING jobs.id", parents, PARENT_DEAD)
        parents = [str(r[0]) for r in rows]
        buried += len(parents)
    return buried


async def status(conn: Conn, job_id: str) -> Status | None:
    rows = await conn.fetch(f"SELECT {STATUS_COLS} FROM jobs WHERE id = $1", job_id)
    return status_of(rows[0]) if rows else None


async def dead(conn: Conn, limit: int) -> list[Status]:
    rows = await conn.fetch(
        f"SELECT {STATUS_COLS} FROM jobs WHERE state = 'dead' ORDER BY done_at LIMIT $1", limit
    )
    return [status_of(r) for r in rows]


async def next_visible(conn: Conn, kind: str, sites: Sequence[str] | None) -> float | None:
    if sites is None:
        value = await conn.fetchval(_NEXT_ANY, kind)
    else:
        value = await conn.fetchval(_NEXT_OF_SITES, kind, list(sites))
    return None if value is None else float(value)


async def pending_by_site(conn: Conn) -> dict[str, int]:
    return {str(r[0]): int(r[1]) for r in await conn.fetch(_PENDING_BY_SITE)}


async def stats(conn: Conn) -> Stats:
    """From the counts the triggers keep and the age index: no scan of the jobs."""
    counts = {state: 0 for state in State}
    for state, count in await conn.fetch(_COUNTS):
        counts[State(state)] = int(count)
    oldest = await conn.fetchval(_OLDEST)
    return Stats(counts, None if oldest is None else float(oldest))


_QUARANTINE = """
INSERT INTO jobs (id, kind, state, payload, created_at, visible_at, site, last_error)
SELECT id, kind, 'spam', payload, at, at, site, reason
FROM unnest($1::text[], $2::text[], $3::bytea[], $4::float8[], $5::text[], $6::text[])
    AS input (id, kind, payload, at, site, reason)
ON CONFLICT (id) DO NOTHING
"""
_SPAM_HELD = "SELECT coalesce(sum(n), 0) FROM job_counts WHERE state = 'spam'"
# The oldest first, by jobs_spam; locked, so that two gateways' drops never meet.
_SPAM_OLDEST = """
SELECT id FROM jobs WHERE state = 'spam' AND created_at < $1
ORDER BY created_at LIMIT $2 FOR UPDATE SKIP LOCKED
"""
_SPAM_LIST = (
    f"SELECT {STATUS_COLS} FROM jobs WHERE state = 'spam' AND created_at >= $1"
    " ORDER BY created_at LIMIT $2"
)
_SPAM_RELEASE = (
    "UPDATE jobs SET state = 'ready', visible_at = $1, last_error = NULL"
    " WHERE state = 'spam' AND payload IS NOT NULL"
)


async def quarantine(conn: Conn, items: Sequence[Quarantined], keep: int) -> int:
    """Store spam, then cut the quarantine back to ``keep``, the oldest first."""
    async with conn.transaction():
        await conn.execute(
            _QUARANTINE, [q.id for q in items], [q.put.kind for q in items],
            [q.put.payload for q in items], [q.at for q in items],
            [q.put.site for q in items], [q.reason for q in items],
        )
        excess = int(await conn.fetchval(_SPAM_HELD)) - keep
        if excess <= 0:
            return 0
        return await _drop_spam(conn, math.inf, excess)


async def spam(conn: Conn, limit: int, since: float | None) -> list[Status]:
    rows = await conn.fetch(_SPAM_LIST, -1.0 if since is None else since, limit)
    return [status_of(r) for r in rows]


async def release_spam(
    conn: Conn, job_ids: Sequence[str] | None, since: float | None, now: float
) -> int:
    if job_ids is not None:
        tag = await conn.execute(_SPAM_RELEASE + " AND id = ANY($2::text[])", now, list(job_ids))
    elif since is not None:
        tag = await conn.execute(_SPAM_RELEASE + " AND created_at >= $2", now, since)
    else:
        tag = await conn.execute(_SPAM_RELEASE, now)
    return _count(tag)


async def purge_spam(conn: Conn, before: float, limit: int) -> int:
    async with conn.transaction():
        return await _drop_spam(conn, before, limit)


async def _drop_spam(conn: Conn, before: float, limit: int) -> int:
    """Delete up to ``limit`` spam put before ``before``, the oldest first. What was queued
    behind one (a deal naming a lead scored spam) is buried first: it waits for nothing now."""
    doomed = [str(r[0]) for r in await conn.fetch(_SPAM_OLDEST, before, limit)]
    if not doomed:
        return 0
    await _bury_orphans(conn, doomed)
    return _count(await conn.execute("DELETE FROM jobs WHERE id = ANY($1::text[])", doomed))
