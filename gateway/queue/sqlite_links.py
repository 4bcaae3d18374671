"""The SQLite store's links between jobs: held jobs, chains, and what an ack releases.

Plain functions of a connection, run by :class:`~gateway.queue.sqlite.SQLiteQueue` on its
writer thread inside one transaction each, so that a put and the ack it waits for never
interleave: a job is held only while the job it names is not delivered.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Mapping, Sequence

import orjson

from gateway.queue.base import PARENT_DEAD, Job, Link, Put, PutResult, State, Status
from gateway.queue.sqlite_schema import PENDING_SQL
from gateway.queue.sqlite_sql import STATUS_COLS, status_of

_INSERT = (
    "INSERT INTO jobs (id, kind, state, payload, dedup_key, created_at, visible_at, site,"
    " after, after_upstream, chain, chain_seq, last_error, done_at)"
    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_PARENT = "SELECT state, upstream_id, payload IS NULL FROM jobs WHERE id = ?"
_TAIL = (
    "SELECT id, kind, state, payload, chain_seq FROM jobs"
    " WHERE site = ? AND chain = ? AND chain IS NOT NULL ORDER BY chain_seq DESC LIMIT 1"
)
_DELIVERED = (
    "UPDATE jobs SET state = 'delivered', upstream_id = ?, done_at = ?, details = ?,"
    " attempts = attempts + 1, last_error = NULL"
    " WHERE id = ? AND lease = ? AND state = 'leased'"
)
_RELEASE_HELD = (
    "UPDATE jobs SET state = 'ready', visible_at = ?, after_upstream = ?"
    " WHERE after = ? AND state = 'held' RETURNING kind"
)
_CONVERT = (
    "UPDATE jobs SET kind = ?, state = 'ready', visible_at = ?"
    " WHERE id = ? AND lease = ? AND state = 'leased'"
)
_BACKLOG = (
    "SELECT count(*), min(visible_at) FROM (SELECT visible_at FROM jobs"
    f" WHERE kind = ? AND state IN {PENDING_SQL} AND visible_at <= ? ORDER BY visible_at LIMIT ?)"
)
_BACKLOG_OF_SITES = (
    "SELECT count(*), min(visible_at) FROM (SELECT visible_at FROM jobs"
    f" WHERE kind = ? AND state IN {PENDING_SQL} AND visible_at <= ?"
    " AND site IN (SELECT value FROM json_each(?)) ORDER BY visible_at LIMIT ?)"
)
_UNDELIVERED = (
    "SELECT id, kind, state, payload, chain_seq FROM jobs WHERE site = ? AND chain = ?"
    " AND chain IS NOT NULL AND state != 'delivered' ORDER BY chain_seq LIMIT 1"
)
_BEHIND = (
    "SELECT state, payload FROM jobs"
    " WHERE site = ? AND chain = ? AND chain IS NOT NULL AND chain_seq > ? ORDER BY chain_seq"
)
_FOLD = "DELETE FROM jobs WHERE site = ? AND chain = ? AND chain IS NOT NULL AND chain_seq > ?"
_QUEUED = (State.READY.value, State.DELAYED.value, State.HELD.value)
# Behind a dead job nothing was sent: jobs wait (held), or died with it (buried at its purge).
_UNSENT = (State.HELD.value, State.DEAD.value)
_REVIVE = (
    "UPDATE jobs SET payload = ?, state = ?, visible_at = ?, created_at = ?, after = ?,"
    " after_upstream = ?, attempts = 0, done_at = NULL, last_error = NULL WHERE id = ?"
)


def _holder(conn: sqlite3.Connection, item: Put) -> Status | None:
    if item.dedup_key is None:
        return None
    row = conn.execute(
        f"SELECT {STATUS_COLS} FROM jobs WHERE site = ? AND kind = ? AND dedup_key = ?",
        (item.site, item.kind, item.dedup_key),
    ).fetchone()
    return None if row is None else status_of(row)


def put_linked(
    conn: sqlite3.Connection, job_id: str, item: Put, now: float,
    chain: str | None = None, seq: int | None = None,
) -> PutResult:
    """Insert ``item``: held while the job it waits for (``item.after``) is not delivered, dead
    at once (and purged) when that one is dead and purged, since it can never be."""
    holder = _holder(conn, item)
    if holder is not None:
        return PutResult(holder, created=False)
    state, upstream = _waiting(conn, item.after)
    dead = state == State.DEAD
    conn.execute(_INSERT, (
        job_id, item.kind, state.value, None if dead else item.payload, item.dedup_key, now, now,
        item.site, item.after, upstream, chain, seq, PARENT_DEAD if dead else None,
        now if dead else None,
    ))
    return PutResult(Status(job_id, item.kind, state, now, 0, PARENT_DEAD if dead else None,
                            None, purged=dead, site=item.site), True)


def _waiting(conn: sqlite3.Connection, after: str | None) -> tuple[State, str | None]:
    """The state of a job that waits for ``after``, and that one's upstream id once delivered:
    held while it is pending, dead when it is dead and purged (no replay can come)."""
    parent = None if after is None else conn.execute(_PARENT, (after,)).fetchone()
    if parent is None:
        return State.READY, None
    if parent[0] == State.DEAD.value and parent[2]:
        return State.DEAD, None
    if parent[0] != State.DELIVERED.value:
        return State.HELD, None
    return State.READY, parent[1]


def append(conn: sqlite3.Connection, job_id: str, link: Link, now: float) -> PutResult:
    """A post to a chain: the first job, a merge into the queued tail, or a job after it."""
    tail = conn.execute(_TAIL, (link.first.site, link.chain)).fetchone()
    if tail is None:
        return put_linked(conn, job_id, link.first, now, link.chain, 1)
    revived = _revive_dead(conn, link, now) if link.merge is not None else None
    if revived is not None:
        return revived
    tail_id, kind, state, payload, seq = tail
    item = link.next
    if link.merge is not None and kind in (item.kind, link.first.kind) and state in _QUEUED \
            and payload:
        merged = link.merge(payload, item.payload)
        conn.execute("UPDATE jobs SET payload = ? WHERE id = ?", (merged, tail_id))
        row = conn.execute(f"SELECT {STATUS_COLS} FROM jobs WHERE id = ?", (tail_id,))
        return PutResult(status_of(row.fetchone()), created=False, merged=True)
    body = item.payload if link.follow is None else link.follow(payload, item.payload)
    if body is None:
        row = conn.execute(f"SELECT {STATUS_COLS} FROM jobs WHERE id = ?", (tail_id,))
        return PutResult(status_of(row.fetchone()), created=False)
    after = Put(item.kind, body, item.dedup_key, item.site, after=tail_id)
    return put_linked(conn, job_id, after, now, link.chain, int(seq) + 1)


def _revive_dead(conn: sqlite3.Connection, link: Link, now: float) -> PutResult | None:
    """When the chain's first job not delivered is dead: the post revives it, with what was
    queued behind it folded in (see :class:`Link`); else ``None``."""
    where = (link.first.site, link.chain)
    found = conn.execute(_UNDELIVERED, where).fetchone()
    if found is None or found[2] != State.DEAD.value:
        return None
    job_id, kind, _, payload, seq = found
    if kind not in ((link.first.kind, link.next.kind) if seq == 1 else (link.next.kind,)):
        return None
    behind = conn.execute(_BEHIND, (*where, seq)).fetchall()
    if any(row[0] not in _UNSENT for row in behind):
        return None
    conn.execute(_FOLD, (*where, seq))
    folded = link.folded(payload, [row[1] for row in behind])
    return _revive(conn, job_id, link, folded, now, first=seq == 1)


def _revive(
    conn: sqlite3.Connection, job_id: str, link: Link, payload: bytes | None, now: float,
    first: bool,
) -> PutResult:
    """The chain's dead job (refused, or out of time), nothing sent after it: a post to the
    chain is that job again, with what the post brings, as if first put now. When what it
    would wait for is dead and purged, it stays dead and keeps the post for a later one or a
    replay to send (a purged one stays purged): nothing is queued behind a dead job."""
    body = link.first.payload
    if payload and link.merge is not None:
        body = link.merge(payload, body)
    (had,) = conn.execute("SELECT after FROM jobs WHERE id = ?", (job_id,)).fetchone()
    after = link.revived_after(had, _waiting(conn, had)[0] == State.DEAD) if first else had
    state, upstream = _waiting(conn, after)
    if state == State.DEAD:
        if payload:
            # Kept as long as a dead letter put now: the post is as new as its arrival.
            conn.execute("UPDATE jobs SET payload = ?, done_at = ? WHERE id = ?",
                         (body, now, job_id))
    else:
        conn.execute(_REVIVE, (body, state.value, now, now, after, upstream, job_id))
    row = conn.execute(f"SELECT {STATUS_COLS} FROM jobs WHERE id = ?", (job_id,))
    return PutResult(status_of(row.fetchone()), created=False, merged=True)


def ack(
    conn: sqlite3.Connection, job: Job, upstream_id: str, now: float,
    details: Mapping[str, object] | None,
) -> set[str] | None:
    """Deliver ``job`` and release what waited for it: the kinds released, or None when the
    lease was lost."""
    text = None if details is None else orjson.dumps(details).decode()
    done = conn.execute(_DELIVERED, (upstream_id, now, text, job.id, job.lease)).rowcount
    if done != 1:
        return None
    return {row[0] for row in conn.execute(_RELEASE_HELD, (now, upstream_id, job.id))}


def convert(conn: sqlite3.Connection, job: Job, kind: str, now: float) -> bool:
    return conn.execute(_CONVERT, (kind, now, job.id, job.lease)).rowcount == 1


def hasten(conn: sqlite3.Connection, now: float) -> int:
    return conn.execute(
        "UPDATE jobs SET visible_at = ? WHERE state = 'delayed' AND visible_at > ?", (now, now)
    ).rowcount


def backlog(
    conn: sqlite3.Connection, kind: str, now: float, limit: int, sites: Sequence[str] | None
) -> tuple[int, float | None]:
    if sites is None:
        count, oldest = conn.execute(_BACKLOG, (kind, now, limit)).fetchone()
    else:
        names = orjson.dumps(list(sites)).decode()
        count, oldest = conn.execute(_BACKLOG_OF_SITES, (kind, now, names, limit)).fetchone()
    return int(count), None if oldest is None else float(oldest)


def find(conn: sqlite3.Connection, site: str, kind: str, key: str) -> Status | None:
    return _holder(conn, Put(kind, b"", key, site))


def chain(conn: sqlite3.Connection, site: str, name: str) -> list[Status]:
    rows = conn.execute(
        f"SELECT {STATUS_COLS} FROM jobs WHERE site = ? AND chain = ? AND chain IS NOT NULL"
        " ORDER BY chain_seq", (site, name),
    ).fetchall()
    return [status_of(row) for row in rows]
