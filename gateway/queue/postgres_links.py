"""The PostgreSQL store's links between jobs: held jobs, chains, and what an ack releases.

A put that waits for another job locks that job's row ``FOR SHARE``: an ack of it in
progress finishes first, and the put then sees it delivered, so no job is held for one that
is already delivered. Posts to one chain take a transaction-scoped advisory lock on the
chain, so that gateways posting the same deal at once queue its calls one after another.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import orjson

from gateway.queue.base import PARENT_DEAD, Job, Link, Put, PutResult, State, Status
from gateway.queue.postgres_schema import Conn
from gateway.queue.postgres_sql import STATUS_COLS, status_of

_INSERT = """
INSERT INTO jobs (id, kind, state, payload, dedup_key, created_at, visible_at, site,
    after, after_upstream, chain, chain_seq, last_error, done_at)
VALUES ($1, $2, $3, $4, $5, $6, $6, $7, $8, $9, $10, $11, $12, $13)
ON CONFLICT (site, kind, dedup_key) WHERE dedup_key IS NOT NULL DO NOTHING
RETURNING id
"""
_HOLDER = f"SELECT {STATUS_COLS} FROM jobs WHERE site = $1 AND kind = $2 AND dedup_key = $3"
# FOR SHARE also waits for a purge of the parent in progress (it locks FOR UPDATE), and a
# purge skips a parent locked here: a purge never misses a child put meanwhile.
_PARENT = "SELECT state, upstream_id, payload IS NULL FROM jobs WHERE id = $1 FOR SHARE"
_CHAIN_LOCK = "SELECT pg_advisory_xact_lock(hashtext($1 || chr(31) || $2))"
_TAIL = """
SELECT id, kind, state, payload, chain_seq FROM jobs
WHERE site = $1 AND chain = $2 AND chain IS NOT NULL ORDER BY chain_seq DESC LIMIT 1
FOR UPDATE
"""
_BY_ID = f"SELECT {STATUS_COLS} FROM jobs WHERE id = $1"
_UNDELIVERED = """
SELECT id, kind, state, payload, chain_seq FROM jobs WHERE site = $1 AND chain = $2
    AND chain IS NOT NULL AND state <> 'delivered' ORDER BY chain_seq LIMIT 1
FOR UPDATE
"""
_BEHIND = """
SELECT state, payload FROM jobs
WHERE site = $1 AND chain = $2 AND chain IS NOT NULL AND chain_seq > $3 ORDER BY chain_seq
FOR UPDATE
"""
_FOLD = "DELETE FROM jobs WHERE site = $1 AND chain = $2 AND chain IS NOT NULL AND chain_seq > $3"
# Behind a dead job nothing was sent: jobs wait (held), or died with it (buried at its purge).
_UNSENT = (State.HELD.value, State.DEAD.value)
_REVIVE = """
UPDATE jobs SET payload = $2, state = $3, visible_at = $4, created_at = $4, after = $5,
    after_upstream = $6, attempts = 0, done_at = NULL, last_error = NULL
WHERE id = $1
"""
_DELIVERED = """
UPDATE jobs SET state = 'delivered', upstream_id = $3, done_at = $4, details = $5,
    attempts = attempts + 1, last_error = NULL
WHERE id = $1 AND lease = $2 AND state = 'leased'
"""
_RELEASE_HELD = """
UPDATE jobs SET state = 'ready', visible_at = $2, after_upstream = $3
WHERE after = $1 AND state = 'held' RETURNING kind
"""
_CONVERT = """
UPDATE jobs SET kind = $3, state = 'ready', visible_at = $4
WHERE id = $1 AND lease = $2 AND state = 'leased'
"""
_BACKLOG = """
SELECT count(*), min(visible_at) FROM (SELECT visible_at FROM jobs
    WHERE kind = $1 AND state IN ('ready', 'leased', 'delayed') AND visible_at <= $2
    ORDER BY visible_at LIMIT $3) AS due
"""
_BACKLOG_OF_SITES = """
SELECT count(*), min(visible_at) FROM (SELECT visible_at FROM jobs
    WHERE kind = $1 AND state IN ('ready', 'leased', 'delayed') AND visible_at <= $2
    AND site = ANY($4::text[]) ORDER BY visible_at LIMIT $3) AS due
"""
_CHAIN = (
    f"SELECT {STATUS_COLS} FROM jobs WHERE site = $1 AND chain = $2 AND chain IS NOT NULL"
    " ORDER BY chain_seq"
)
_QUEUED = (State.READY.value, State.DELAYED.value, State.HELD.value)


async def put_linked(
    conn: Conn, job_id: str, item: Put, now: float,
    chain: str | None = None, seq: int | None = None,
) -> PutResult:
    """Insert ``item`` (in the caller's transaction): held while its ``after`` is undelivered,
    dead at once (and purged) when that one is dead and purged, since it can never be."""
    state, upstream = await _waiting(conn, item.after)
    dead = state == State.DEAD
    error = PARENT_DEAD if dead else None
    inserted = await conn.fetch(
        _INSERT, job_id, item.kind, state.value, None if dead else item.payload, item.dedup_key,
        now, item.site, item.after, upstream, chain, seq, error, now if dead else None,
    )
    if inserted:
        return PutResult(Status(job_id, item.kind, state, now, 0, error, None, purged=dead,
                                site=item.site), True)
    [holder] = await conn.fetch(_HOLDER, item.site, item.kind, item.dedup_key)
    return PutResult(status_of(holder), created=False)


async def _waiting(conn: Conn, after: str | None) -> tuple[State, str | None]:
    """The state of a job that waits for ``after``, and that one's upstream id once delivered:
    held while it is pending, dead when it is dead and purged (no replay can come)."""
    rows = [] if after is None else await conn.fetch(_PARENT, after)
    if not rows:
        return State.READY, None
    parent_state, upstream, purged = rows[0]
    if parent_state == State.DEAD.value and purged:
        return State.DEAD, None
    if parent_state != State.DELIVERED.value:
        return State.HELD, None
    return State.READY, upstream


async def put(conn: Conn, job_id: str, item: Put, now: float) -> PutResult:
    async with conn.transaction():
        return await put_linked(conn, job_id, item, now)


async def append_many(
    conn: Conn, ids: Sequence[str], links: Sequence[Link], now: float
) -> list[PutResult]:
    """Posts to chains in one transaction. The chains' locks are taken first, in key order,
    so that two uploads naming the same deals wait for each other instead of deadlocking."""
    async with conn.transaction():
        for site, chain in sorted({(link.first.site, link.chain) for link in links}):
            await conn.execute(_CHAIN_LOCK, site, chain)
        return [await _append(conn, job_id, link, now)
                for job_id, link in zip(ids, links, strict=True)]


async def _append(conn: Conn, job_id: str, link: Link, now: float) -> PutResult:
    """A post to a chain: the first job, a merge into the queued tail, or a job after it."""
    rows = await conn.fetch(_TAIL, link.first.site, link.chain)
    if not rows:
        return await put_linked(conn, job_id, link.first, now, link.chain, 1)
    revived = await _revive_dead(conn, link, now) if link.merge is not None else None
    if revived is not None:
        return revived
    return await _after_tail(conn, job_id, link, now, rows[0])


async def _after_tail(conn: Conn, job_id: str, link: Link, now: float, tail: Any) -> PutResult:
    tail_id, kind, state, payload, seq = tail
    payload = None if payload is None else bytes(payload)
    item = link.next
    if link.merge is not None and kind in (item.kind, link.first.kind) and state in _QUEUED \
            and payload:
        merged = link.merge(payload, item.payload)
        await conn.execute("UPDATE jobs SET payload = $2 WHERE id = $1", tail_id, merged)
        [row] = await conn.fetch(_BY_ID, tail_id)
        return PutResult(status_of(row), created=False, merged=True)
    body = item.payload if link.follow is None else link.follow(payload, item.payload)
    if body is None:
        [row] = await conn.fetch(_BY_ID, tail_id)
        return PutResult(status_of(row), created=False)
    after = Put(item.kind, body, item.dedup_key, item.site, after=tail_id)
    return await put_linked(conn, job_id, after, now, link.chain, int(seq) + 1)


async def _revive_dead(conn: Conn, link: Link, now: float) -> PutResult | None:
    """When the chain's first job not delivered is dead: the post revives it, with what was
    queued behind it folded in (see :class:`Link`); else ``None``."""
    where = (link.first.site, link.chain)
    found = await conn.fetch(_UNDELIVERED, *where)
    if not found or found[0][2] != State.DEAD.value:
        return None
    job_id, kind, _, payload, seq = found[0]
    if kind not in ((link.first.kind, link.next.kind) if seq == 1 else (link.next.kind,)):
        return None
    behind = await conn.fetch(_BEHIND, *where, seq)
    if any(row[0] not in _UNSENT for row in behind):
        return None
    await conn.execute(_FOLD, *where, seq)
    folded = link.folded(_bytes(payload), [_bytes(row[1]) for row in behind])
    return await _revive(conn, job_id, link, folded, now, first=seq == 1)


def _bytes(payload: Any) -> bytes | None:
    return None if payload is None else bytes(payload)


async def _revive(
    conn: Conn, job_id: str, link: Link, payload: bytes | None, now: float, first: bool
) -> PutResult:
    """The chain's dead job (refused, or out of time), nothing sent after it: a post to the
    chain is that job again, with what the post brings, as if first put now. When what it
    would wait for is dead and purged, it stays dead and keeps the post for a later one or a
    replay to send (a purged one stays purged): nothing is queued behind a dead job."""
    body = link.first.payload
    if payload and link.merge is not None:
        body = link.merge(payload, body)
    had = await conn.fetchval("SELECT after FROM jobs WHERE id = $1", job_id)
    dead = (await _waiting(conn, had))[0] == State.DEAD
    after = link.revived_after(had, dead) if first else had
    state, upstream = await _waiting(conn, after)
    if state == State.DEAD:
        if payload:
            # Kept as long as a dead letter put now: the post is as new as its arrival.
            await conn.execute("UPDATE jobs SET payload = $2, done_at = $3 WHERE id = $1",
                               job_id, body, now)
    else:
        await conn.execute(_REVIVE, job_id, body, state.value, now, after, upstream)
    [row] = await conn.fetch(_BY_ID, job_id)
    return PutResult(status_of(row), created=False, merged=True)


async def ack(
    conn: Conn, job: Job, upstream_id: str, now: float, details: Mapping[str, object] | None
) -> set[str] | None:
    """Deliver ``job`` and release what waited for it, in one transaction: the kinds released,
    or None when the lease was lost."""
    text = None if details is None else orjson.dumps(details).decode()
    async with conn.transaction():
        tag = await conn.execute(_DELIVERED, job.id, job.lease, upstream_id, now, text)
        if tag != "UPDATE 1":
            return None
        return {str(r[0]) for r in await conn.fetch(_RELEASE_HELD, job.id, now, upstream_id)}


async def convert(conn: Conn, job: Job, kind: str, now: float) -> bool:
    return await conn.execute(_CONVERT, job.id, job.lease, kind, now) == "UPDATE 1"


async def hasten(conn: Conn, now: float) -> int:
    tag = await conn.execute(
        "UPDATE jobs SET visible_at = $1 WHERE state = 'delayed' AND visible_at > $1", now
    )
    return int(tag.rsplit(" ", 1)[-1])


async def backlog(
    conn: Conn, kind: str, now: float, limit: int, sites: Sequence[str] | None
) -> tuple[int, float | None]:
    if sites is None:
        [row] = await conn.fetch(_BACKLOG, kind, now, limit)
    else:
        [row] = await conn.fetch(_BACKLOG_OF_SITES, kind, now, limit, list(sites))
    return int(row[0]), None if row[1] is None else float(row[1])


async def find(conn: Conn, site: str, kind: str, key: str) -> Status | None:
    rows = await conn.fetch(_HOLDER, site, kind, key)
    return status_of(rows[0]) if rows else None


async def chain(conn: Conn, site: str, name: str) -> list[Status]:
    return [status_of(r) for r in await conn.fetch(_CHAIN, site, name)]
