"""The fleet health's table and statements; every value is a bound parameter.

One row an egress holds what :class:`~gateway.relay.health.Health` keeps in memory. Times are
seconds since the epoch on the database's clock, as the fleet pace's are, unless the gate was
given a clock of its own (tests): ``$2`` is then that clock's reading, else NULL.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from gateway.relay.fleet_health_rules import State

CHANNEL = "ctgw_health"  # payload: "<version> <1 or 0> <egress>", see :meth:`State.news`

_SCHEMA_LOCK = "SELECT pg_advisory_xact_lock(hashtext('ctgw-health-schema'))"

# version grows by one at each turn between up and down: news of a lower one is older than
# what a gateway knows. It starts at the microseconds of the row's making, so a row made
# again (removed by hand) is newer still. The probe slot is free when probe_holder is NULL or
# probe_since is a deadline old (its gateway died, or its call never came).
_TABLE = """
CREATE TABLE IF NOT EXISTS health_egress (
    egress         text PRIMARY KEY,
    healthy        boolean NOT NULL DEFAULT true,
    failures       integer NOT NULL DEFAULT 0,
    probe_interval double precision NOT NULL DEFAULT 0,
    next_probe     double precision NOT NULL DEFAULT 0,
    probe_holder   text,
    probe_since    double precision,
    version        bigint NOT NULL
                   DEFAULT (extract(epoch FROM clock_timestamp()) * 1000000)::bigint
)
"""

_ADD_EGRESS = "INSERT INTO health_egress (egress) VALUES ($1) ON CONFLICT (egress) DO NOTHING"

_READ = """
SELECT coalesce($2::float8, extract(epoch FROM clock_timestamp())::float8) AS now,
       healthy, failures, probe_interval, next_probe, probe_holder, probe_since, version
FROM health_egress WHERE egress = $1
"""
_LOCK = _READ + " FOR UPDATE"

# $10: the notification on channel $9, or NULL when only the count of failures moved (no one
# waits on that).
_WRITE = """
WITH written AS (
    UPDATE health_egress SET healthy = $2, failures = $3, probe_interval = $4::float8,
        next_probe = $5::float8, probe_holder = $6, probe_since = $7::float8, version = $8
    WHERE egress = $1
    RETURNING egress
)
SELECT pg_notify($9, $10) FROM written WHERE $10::text IS NOT NULL
"""


class Gone(LookupError):
    """The egress's row is not there (removed by hand): make it again, then look."""


def parse(payload: str) -> tuple[str, bool, int]:
    """``(egress, healthy, version)`` of a notification."""
    version, healthy, egress = payload.split(" ", 2)
    return egress, healthy == "1", int(version)


async def prepare(conn: Any, egress: str) -> None:
    """The table, if missing, and the egress's row, healthy if it is new."""
    async with conn.transaction():
        await conn.execute(_SCHEMA_LOCK)
        await conn.execute(_TABLE)
        await conn.execute(_ADD_EGRESS, egress)


async def read(conn: Any, egress: str, now: float | None, *, lock: bool = False) -> tuple[
    State, float
]:
    """The row (locked until the transaction ends, with ``lock``) and the clock's reading."""
    row = await conn.fetchrow(_LOCK if lock else _READ, egress, now)
    if row is None:
        raise Gone(egress)
    state = State(row["healthy"], row["failures"], row["probe_interval"], row["next_probe"],
                  row["probe_holder"], row["probe_since"], row["version"])
    return state, float(row["now"])


async def write(conn: Any, egress: str, old: State, new: State) -> None:
    """``new`` in the row; the fleet hears of it unless only the failures were counted."""
    quiet = replace(old, failures=new.failures) == new
    await conn.execute(_WRITE, egress, new.healthy, new.failures, new.interval, new.next_probe,
                       new.holder, new.since, new.version, CHANNEL,
                       None if quiet else new.news(egress))
