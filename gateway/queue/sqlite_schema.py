"""The SQLite store's schema, its upgrades, and how a connection is opened.

``PRAGMA user_version`` names the schema: 0 is a new file, or one made before versions were
kept (no ``site`` column, no counts); 2 has no index of quarantined spam; 3 no links (held
jobs, chains, answer details); 4 no API points spent; 5 no refusals for points in them; 6
left what a purge orphaned held (see :data:`_BURY_PURGED_ORPHANS`). :func:`migrate` brings
any of them to :data:`VERSION` in one transaction (every step is idempotent). Counts by
state are kept in ``job_counts`` by triggers, so ``stats()`` reads a few rows instead of
scanning every job.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path
from urllib.parse import urlsplit

from gateway.queue.base import PARENT_DEAD, PENDING

VERSION = 7
PENDING_SQL = "(" + ", ".join(f"'{state.value}'" for state in PENDING) + ")"

_JOBS = """
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
    done_at     REAL,
    site        TEXT NOT NULL DEFAULT 'default'
);
"""
# Version 4: a job held for another (after), the upstream id it was released with, its place
# in a chain (one deal's calls, in order), and what its answer said.
_LINK_COLUMNS = {
    "after": "TEXT", "after_upstream": "TEXT", "chain": "TEXT", "chain_seq": "INTEGER",
    "details": "TEXT",
}
_INDEXES_AND_COUNTS = f"""
CREATE UNIQUE INDEX IF NOT EXISTS jobs_site_dedup ON jobs (site, kind, dedup_key)
    WHERE dedup_key IS NOT NULL;
CREATE INDEX IF NOT EXISTS jobs_visible ON jobs (kind, visible_at, state)
    WHERE state IN {PENDING_SQL};
CREATE INDEX IF NOT EXISTS jobs_age ON jobs (created_at) WHERE state IN {PENDING_SQL};
CREATE INDEX IF NOT EXISTS jobs_done ON jobs (state, done_at)
    WHERE state IN ('delivered', 'dead');
CREATE INDEX IF NOT EXISTS jobs_purge ON jobs (state, done_at)
    WHERE state IN ('delivered', 'dead') AND payload IS NOT NULL;
CREATE INDEX IF NOT EXISTS jobs_spam ON jobs (created_at) WHERE state = 'spam';
CREATE INDEX IF NOT EXISTS jobs_held ON jobs (after) WHERE state = 'held';
CREATE INDEX IF NOT EXISTS jobs_chain ON jobs (site, chain, chain_seq) WHERE chain IS NOT NULL;
CREATE TABLE IF NOT EXISTS job_counts (
    site  TEXT NOT NULL,
    kind  TEXT NOT NULL,
    state TEXT NOT NULL,
    n     INTEGER NOT NULL,
    PRIMARY KEY (site, kind, state)
) WITHOUT ROWID;
CREATE TRIGGER IF NOT EXISTS jobs_counted_in AFTER INSERT ON jobs BEGIN
    INSERT OR IGNORE INTO job_counts VALUES (new.site, new.kind, new.state, 0);
    UPDATE job_counts SET n = n + 1
        WHERE site = new.site AND kind = new.kind AND state = new.state;
END;
CREATE TRIGGER IF NOT EXISTS jobs_counted_move AFTER UPDATE OF state ON jobs
    WHEN old.state IS NOT new.state BEGIN
    UPDATE job_counts SET n = n - 1
        WHERE site = old.site AND kind = old.kind AND state = old.state;
    INSERT OR IGNORE INTO job_counts VALUES (new.site, new.kind, new.state, 0);
    UPDATE job_counts SET n = n + 1
        WHERE site = new.site AND kind = new.kind AND state = new.state;
END;
CREATE TRIGGER IF NOT EXISTS jobs_counted_out AFTER DELETE ON jobs BEGIN
    UPDATE job_counts SET n = n - 1
        WHERE site = old.site AND kind = old.kind AND state = old.state;
END;
"""
# Version 5: the API points each site spent in each of its hours and days (gateway.relay.points);
# version 6 adds the hour's latest refusal for points and latest call passed after one.
_POINTS = """
CREATE TABLE IF NOT EXISTS points_spent (
    site    TEXT NOT NULL,
    span    TEXT NOT NULL,
    ends    REAL NOT NULL,
    points  INTEGER NOT NULL,
    bulk    INTEGER NOT NULL,
    refused REAL NOT NULL DEFAULT 0,
    resumed REAL NOT NULL DEFAULT 0,
    PRIMARY KEY (site, span, ends)
) WITHOUT ROWID;
"""
_POINTS_COLUMNS = {"refused": "REAL NOT NULL DEFAULT 0", "resumed": "REAL NOT NULL DEFAULT 0"}
# Version 7: what a purge left held behind a dead job before purges buried it (version 6 and
# before) is buried now, as a purge does today (sqlite_sql._BURY_ORPHANS). Without it such a
# job, a deal's update behind a create that died, stays held for ever with its personal data.
_BURY_PURGED_ORPHANS = """
WITH RECURSIVE orphans (id, done_at) AS (
    SELECT h.id, max(h.created_at, p.done_at) FROM jobs AS p JOIN jobs AS h ON h.after = p.id
    WHERE p.state = 'dead' AND p.payload IS NULL AND h.state = 'held'
    UNION
    SELECT h.id, max(h.created_at, o.done_at) FROM orphans AS o JOIN jobs AS h ON h.after = o.id
    WHERE h.state = 'held'
)
UPDATE jobs SET state = 'dead', payload = NULL, last_error = ?, done_at = orphans.done_at
FROM orphans WHERE jobs.id = orphans.id AND jobs.state = 'held'
"""
_COUNT_ALL = (
    "INSERT INTO job_counts SELECT site, kind, state, count(*) FROM jobs GROUP BY 1, 2, 3"
)
BUSY_MS = 10_000
# Far above SQLite's default of 1,000 pages: a checkpoint then runs inside some lead's commit
# every few seconds, not several times a second (figures in docs/performance.md).
CHECKPOINT_PAGES = 10_000


def path_from_url(url: str) -> Path:
    """``sqlite:///./rel.db`` is relative, ``sqlite:////abs.db`` absolute (SQLAlchemy's form)."""
    path = urlsplit(url).path
    return Path(path[1:] if path.startswith("/") else path)


def connect(path: Path, statements: int) -> sqlite3.Connection:
    """A connection in WAL mode that fsyncs every commit; ``statements``: its cache size."""
    if not path.exists():
        # Created 0600 before SQLite touches it: the store holds personal data. A missing
        # directory is not made: it is a wrong CTGW_QUEUE more often than a new install.
        os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))
    conn = sqlite3.connect(
        path, isolation_level=None, check_same_thread=False, cached_statements=statements
    )
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    # A purge must leave no copy of a lead on disk: freed cells and pages are zeroed, also
    # the leftovers of page splits, so it is on from the first write.
    conn.execute("PRAGMA secure_delete=ON")
    conn.execute(f"PRAGMA busy_timeout={BUSY_MS}")
    conn.execute(f"PRAGMA wal_autocheckpoint={CHECKPOINT_PAGES}")
    return conn


def migrate(conn: sqlite3.Connection) -> None:
    """Create the schema, or bring an older one up to :data:`VERSION`, in one transaction."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version > VERSION:
            raise sqlite3.DatabaseError(f"schema version {version} is newer than this gateway")
        if version < VERSION:
            _upgrade(conn)
            conn.execute(f"PRAGMA user_version={VERSION}")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def _upgrade(conn: sqlite3.Connection) -> None:
    columns = {row[1] for row in conn.execute("PRAGMA table_info(jobs)")}
    if columns and "site" not in columns:  # made by a gateway of one site: it is 'default'
        conn.execute("ALTER TABLE jobs ADD COLUMN site TEXT NOT NULL DEFAULT 'default'")
        conn.execute("DROP INDEX IF EXISTS jobs_dedup")
    conn.execute(_JOBS)
    _add_columns(conn, "jobs", _LINK_COLUMNS)
    counted = conn.execute(
        "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'job_counts'"
    ).fetchone()
    for statement in _split(_INDEXES_AND_COUNTS):
        conn.execute(statement)
    if not counted:
        conn.execute(_COUNT_ALL)
    conn.execute(_POINTS)
    _add_columns(conn, "points_spent", _POINTS_COLUMNS)
    conn.execute(_BURY_PURGED_ORPHANS, (PARENT_DEAD,))


def _add_columns(conn: sqlite3.Connection, table: str, wanted: dict[str, str]) -> None:
    columns = {row[1] for row in conn.execute(f"PRAGMA table_info({table})")}
    for name, type_ in wanted.items():
        if name not in columns:
            conn.execute(f"ALTER TABLE {table} ADD COLUMN {name} {type_}")


def _split(script: str) -> list[str]:
    """The script's statements; a trigger's body keeps its own semicolons."""
    statements, current = [], ""
    for line in script.strip().splitlines(keepends=True):
        current += line
        if sqlite3.complete_statement(current):
            statements.append(current.strip())
            current = ""
    return statements
