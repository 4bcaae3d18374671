"""A store as a purge of version 6 (SQLite) or 5 (PostgreSQL) and before left it: dead jobs'
payloads purged, what was held behind them still held. Its upgrade buries those, and only
those: a job held behind a dead job whose payload is kept (a replay can still revive it), or
behind a live one, stays held."""

from __future__ import annotations

from gateway.queue import Queue, State
from gateway.queue.base import PARENT_DEAD

# Valid SQL for both backends: '{}' is text in SQLite, bytea in PostgreSQL.
ROWS = """
INSERT INTO jobs (id, kind, state, payload, created_at, visible_at, done_at, after) VALUES
    ('purged', 'deal.create', 'dead', NULL, 1.0, 1.0, 5.0, NULL),
    ('behind-purged', 'deal.update', 'held', '{}', 3.0, 3.0, NULL, 'purged'),
    ('behind-that', 'deal.update', 'held', '{}', 7.0, 7.0, NULL, 'behind-purged'),
    ('kept', 'deal.create', 'dead', '{}', 1.0, 1.0, 5.0, NULL),
    ('behind-kept', 'deal.update', 'held', '{}', 3.0, 3.0, NULL, 'kept'),
    ('live', 'deal.create', 'ready', '{}', 1.0, 1.0, NULL, NULL),
    ('behind-live', 'deal.update', 'held', '{}', 3.0, 3.0, NULL, 'live')
"""
BURIED = ("behind-purged", "behind-that")
STILL_HELD = ("behind-kept", "behind-live")


async def assert_buried(queue: Queue) -> None:
    for job_id in BURIED:
        found = await queue.status(job_id)
        assert found is not None
        assert (found.state, found.purged, found.last_error) == (State.DEAD, True, PARENT_DEAD)
    for job_id in STILL_HELD:
        found = await queue.status(job_id)
        assert found is not None
        assert (found.state, found.purged) == (State.HELD, False)
    assert (await queue.stats()).counts[State.DEAD] == 2 + len(BURIED)
