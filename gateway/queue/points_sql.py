"""The API points each site spent, in both stores: a row per site and clock hour or day.

Each gateway adds what it spent since its last sync and reads the total back in the same
statement, so the row is every process's spending, a restarted one's included. The totals may
dip below zero for a moment (a call given back by one gateway before another's spending
reached the row): they are read as at least 0. An hour's row also keeps the latest refusal
for points and the latest call passed after one, each the later of the row's and the tally's.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence

from gateway.queue.base import Tally
from gateway.queue.postgres_schema import Conn

KEEP = 86_400.0  # a window's row outlives its end by a day, then is dropped
_SQLITE_ADD = (
    "INSERT INTO points_spent (site, span, ends, points, bulk, refused, resumed)"
    " VALUES (?, ?, ?, ?, ?, ?, ?)"
    " ON CONFLICT (site, span, ends) DO UPDATE"
    " SET points = points + excluded.points, bulk = bulk + excluded.bulk,"
    " refused = max(refused, excluded.refused), resumed = max(resumed, excluded.resumed)"
    " RETURNING max(points, 0), max(bulk, 0), refused, resumed"
)
_POSTGRES_ADD = """
INSERT INTO points_spent AS p (site, span, ends, points, bulk, refused, resumed)
SELECT * FROM unnest($1::text[], $2::text[], $3::float8[], $4::int[], $5::int[],
                     $6::float8[], $7::float8[])
ON CONFLICT (site, span, ends) DO UPDATE
    SET points = p.points + excluded.points, bulk = p.bulk + excluded.bulk,
        refused = greatest(p.refused, excluded.refused),
        resumed = greatest(p.resumed, excluded.resumed)
RETURNING site, span, ends, greatest(points, 0), greatest(bulk, 0), refused, resumed
"""
_DROP_ENDED = "DELETE FROM points_spent WHERE ends < {}"


def sqlite_tally(conn: sqlite3.Connection, spent: Sequence[Tally], now: float) -> list[Tally]:
    """In the caller's transaction."""
    conn.execute(_DROP_ENDED.format("?"), (now - KEEP,))
    totals = []
    for tally in spent:
        points, bulk, refused, resumed = conn.execute(_SQLITE_ADD, tally).fetchone()
        totals.append(tally._replace(points=points, bulk=bulk, refused=refused, resumed=resumed))
    return totals


async def postgres_tally(conn: Conn, spent: Sequence[Tally], now: float) -> list[Tally]:
    """In a transaction of its own; the rows come back in no particular order."""
    columns = [[tally[i] for tally in spent] for i in range(len(Tally._fields))]
    async with conn.transaction():
        await conn.execute(_DROP_ENDED.format("$1"), now - KEEP)
        rows = await conn.fetch(_POSTGRES_ADD, *columns)
    return [Tally(*row) for row in rows]
