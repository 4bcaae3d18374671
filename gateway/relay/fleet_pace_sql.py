"""The fleet pace's tables and statements; every value is a bound parameter.

Times are seconds since the epoch on the database's clock (``clock_timestamp()``, which moves
within a transaction, unlike ``now()``): the hosts of a fleet have clocks of their own, and one
window needs one clock. Parameters are cast where PostgreSQL would otherwise guess an integer.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

# What a ticket has the database record, with its value: the slot's number, the pause, none.
STAMPED, LIMITED, SUCCEEDED = "stamped", "limited", "succeeded"


class News(NamedTuple):
    """One thing to record; ``at`` is a stamp's moment, on the database's clock."""

    what: str
    value: float
    at: float = 0.0

# Gateways starting together each run the CREATEs; without the lock, two CREATE TABLE IF NOT
# EXISTS racing can still fail on the catalogue's unique index.
_SCHEMA_LOCK = "SELECT pg_advisory_xact_lock(hashtext('ctgw-pace-schema'))"

# One row an egress: the fleet's current rate (halved on a 429 anywhere), the pause after a
# 429, the last grant (the spacing while the rate is below the limit), and the slot counter.
# pace_slots: the grants that may still be in a window; a grant has no written_at until the
# call's bytes have left.
_TABLES = """
CREATE TABLE IF NOT EXISTS pace_egress (
    egress       text PRIMARY KEY,
    rate         double precision NOT NULL,
    paused_until double precision NOT NULL DEFAULT 0,
    last_grant   double precision NOT NULL DEFAULT 0,
    next_n       bigint NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS pace_slots (
    egress     text NOT NULL,
    n          bigint NOT NULL,
    granted_at double precision NOT NULL,
    written_at double precision,
    PRIMARY KEY (egress, n)
);
"""

_ADD_EGRESS = (
    "INSERT INTO pace_egress (egress, rate) VALUES ($1, $2::float8)"
    " ON CONFLICT (egress) DO NOTHING"
)

# Every grant of an egress passes through this row lock, on whichever gateway it runs.
LOCK = (
    "SELECT rate, paused_until, last_grant FROM pace_egress WHERE egress = $1 FOR UPDATE"
)

# Read after the lock is held, so that "now" is not a moment spent waiting for it. The join
# gives one row even when no slot is left.
SLOTS = """
SELECT t.now, s.granted_at, s.written_at
FROM (SELECT extract(epoch FROM clock_timestamp())::float8 AS now) AS t
LEFT JOIN pace_slots AS s ON s.egress = $1
"""

# $2 the grant's moment (now, or a little later), $3 now, $4 the bound, $5 the window. A slot
# whose stamp (or grant + bound, unstamped) is a window old now can hold back no later grant:
# it goes.
GRANT = """
WITH e AS (
    UPDATE pace_egress SET next_n = next_n + 1, last_grant = $2::float8
    WHERE egress = $1
    RETURNING next_n - 1 AS n
), gone AS (
    DELETE FROM pace_slots
    WHERE egress = $1
      AND coalesce(written_at, granted_at + $4::float8) <= $3::float8 - $5::float8
)
INSERT INTO pace_slots (egress, n, granted_at) SELECT $1, n, $2::float8 FROM e RETURNING n
"""

# $2 the slots, $3 their stamps. No call leaves before its grant's moment: a stamp before it
# is a slot given back unused, which may then hold the window from its grant only.
_STAMP = """
UPDATE pace_slots AS p SET written_at = greatest(s.at, p.granted_at)
FROM unnest($2::bigint[], $3::float8[]) AS s(n, at)
WHERE p.egress = $1 AND p.n = s.n AND p.written_at IS NULL
"""

# $2 the limit, $3 the pause. Pause everyone, halve the rate, never below an eighth.
_LIMITED = """
UPDATE pace_egress SET
    rate = greatest($2::float8 / 8, rate / 2),
    paused_until = greatest(paused_until,
                            extract(epoch FROM clock_timestamp())::float8 + $3::float8)
WHERE egress = $1
RETURNING rate
"""

# $2 the limit, $3 the step: climb back additively, once the pause is over.
_SUCCEEDED = """
UPDATE pace_egress SET rate = least($2::float8, rate + $3::float8)
WHERE egress = $1 AND rate < $2::float8
  AND paused_until <= extract(epoch FROM clock_timestamp())::float8
RETURNING rate
"""


async def prepare(conn: Any, egress: str, rate: float) -> None:
    """The tables, if missing, and the egress's row, at ``rate`` if it is new."""
    async with conn.transaction():
        await conn.execute(_SCHEMA_LOCK)
        await conn.execute(_TABLES)  # no arguments: the simple protocol, two statements
        await conn.execute(_ADD_EGRESS, egress, rate)


async def record(
    conn: Any, egress: str, batch: Sequence[News], limit: float, step: float
) -> float | None:
    """The stamps of ``batch`` in one statement, then its answers in order; the rate they
    left, or None when none of them changed it (at the limit, or still paused)."""
    stamps = [news for news in batch if news.what == STAMPED]
    if stamps:
        await conn.execute(_STAMP, egress, [int(news.value) for news in stamps],
                           [news.at for news in stamps])
    rate: float | None = None
    for what, value, _ in batch:
        if what == LIMITED:
            changed = await conn.fetchval(_LIMITED, egress, limit, value)
        elif what == SUCCEEDED:
            changed = await conn.fetchval(_SUCCEEDED, egress, limit, step)
        else:
            continue
        rate = rate if changed is None else float(changed)
    return rate
