"""The PostgreSQL store's schema, its upgrades, and what every session must promise.

The schema lives in versioned files, ``sql/postgres_NNNN_*.sql``, applied in order; the
``schema_version`` table lists those a database has. :func:`migrate` runs the missing ones in
one transaction under an advisory lock, so that gateways starting together upgrade a database
once: the others wait for the lock, then find nothing left to do.
"""

from __future__ import annotations

import functools
import re
from importlib import resources
from typing import Any, Protocol

from gateway.queue.base import QueueError

# Every session commits only once its commit record is on disk (a standby's too, when the
# server has synchronous standbys): a lead is acknowledged only after that.
SESSION_SETTINGS = {"synchronous_commit": "on", "application_name": "ct-gateway"}
CHANNEL = "ctgw_work"  # the NOTIFY channel of new work; the payload is the job's kind
# pg_advisory_xact_lock's key for migrations: "ctgw" in ASCII. Advisory locks are per database.
_MIGRATION_LOCK = 0x63746777
_FILE = re.compile(r"postgres_(\d{4})_\w+\.sql")
_VERSIONS = """
CREATE TABLE IF NOT EXISTS schema_version (
    version    integer PRIMARY KEY,
    applied_at timestamptz NOT NULL DEFAULT now()
)
"""


class Conn(Protocol):
    """What the store uses of an ``asyncpg.Connection`` (asyncpg ships no type hints)."""

    async def execute(self, query: str, *args: object) -> str: ...

    async def fetch(self, query: str, *args: object) -> list[Any]: ...

    async def fetchval(self, query: str, *args: object) -> Any: ...

    def transaction(self) -> Any: ...


@functools.cache
def migrations() -> tuple[tuple[int, str], ...]:
    """``(version, script)`` of every schema file shipped with the package, in order."""
    found = []
    for entry in resources.files("gateway.queue").joinpath("sql").iterdir():
        match = _FILE.fullmatch(entry.name)
        if match:
            found.append((int(match[1]), entry.read_text(encoding="utf-8")))
    found.sort()
    if [version for version, _ in found] != list(range(1, len(found) + 1)):
        raise RuntimeError("the schema files are not numbered 1, 2, 3, …")
    return tuple(found)


VERSION = len(migrations())


async def check_durable(conn: Conn) -> None:
    """Refuse a server that could lose a commit it has acknowledged."""
    fsync, synchronous = await _settings(conn)
    if fsync != "on":
        raise QueueError(
            "postgresql: the server runs with fsync = off, so a crash could lose leads it has"
            " committed; turn fsync on"
        )
    if synchronous != "on":
        raise QueueError(f"postgresql: synchronous_commit is {synchronous!r}, not 'on'")


async def _settings(conn: Conn) -> tuple[str, str]:
    [row] = await conn.fetch(
        "SELECT current_setting('fsync'), current_setting('synchronous_commit')"
    )
    return str(row[0]), str(row[1])


async def migrate(conn: Conn) -> int:
    """Bring the database to :data:`VERSION`; the number of files applied (0: it was)."""
    async with conn.transaction():
        await conn.execute("SELECT pg_advisory_xact_lock($1)", _MIGRATION_LOCK)
        await conn.execute(_VERSIONS)
        current = int(await conn.fetchval("SELECT coalesce(max(version), 0) FROM schema_version"))
        if current > VERSION:
            raise QueueError(f"postgresql: schema version {current} is newer than this gateway")
        missing = [(v, script) for v, script in migrations() if v > current]
        for version, script in missing:
            await conn.execute(script)  # no arguments: the simple protocol, several statements
            await conn.execute("INSERT INTO schema_version (version) VALUES ($1)", version)
    return len(missing)
