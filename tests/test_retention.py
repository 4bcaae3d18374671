"""Retention: after the purge no personal field of a settled lead is left in the store's files.

The files are read as raw bytes (the database, its -wal and -shm): what a purge leaves in free
space, in a freed overflow page or in an old WAL frame counts as a leak, though SQLite would
no longer show it.
"""

from __future__ import annotations

import logging
import sqlite3
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest

from gateway.kinds import lead as leads
from gateway.ops.metrics import Metrics
from gateway.ops.retention import Retention, interval
from gateway.queue import Put, State
from gateway.queue.sqlite import SQLiteQueue
from tests.support import TOKEN, Process, child_env, eventually, spawn_gateway, spawn_sandbox

T0 = 1_700_000_000.0
AUTH = {"Authorization": f"Bearer {TOKEN}"}
TAGS = "dxpqe"  # one letter per group of leads; each picks its own phone and session digits


def personal_lead(tag: str, n: int) -> dict[str, Any]:
    """A lead whose every personal value is unique to ``(tag, n)``; ``tag`` is one of TAGS."""
    code = TAGS.index(tag)
    return {
        "fio": f"Ретенция {tag.upper()}-{n} Стираемая",
        "phoneNumber": f"8 (93{code}) {n:03d}-44-{n % 100:02d}",
        "email": f"purge.{tag}.{n}@retention.example",
        "sessionId": f"77{code}{n:07d}",
        "requestNumber": f"rn-{tag}-{n}",
        # A long comment spills into overflow pages, which a purge frees rather than rewrites.
        "comment": "ж" * 3000 + f" хвост-{tag}-{n}",
        "customFields": {"passport": f"паспорт {tag} {n:06d}", "city": f"Город-{tag}-{n}"},
    }


def personal_values(tag: str, n: int) -> list[str]:
    """The stored (normalised) form of every personal value of :func:`personal_lead`."""
    fields = leads.validate(personal_lead(tag, n), "api").fields
    return [
        fields["fio"], fields["phoneNumber"], fields["email"], fields["sessionId"],
        f"хвост-{tag}-{n}", *fields["customFields"].values(),
    ]


def payload(tag: str, n: int) -> Put:
    fields = leads.validate(personal_lead(tag, n), "api").fields
    return Put("lead", orjson.dumps(fields), fields["requestNumber"])


def left_in_files(db: Path, values: list[str]) -> list[str]:
    data = b"".join(f.read_bytes() for f in sorted(db.parent.glob(db.name + "*")))
    return [v for v in values if v.encode() in data]


def values_of(tag: str, count: int) -> list[str]:
    return [v for n in range(count) for v in personal_values(tag, n)]


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "store.db"


@pytest.fixture
async def queue(db: Path) -> AsyncIterator[SQLiteQueue]:
    q = await SQLiteQueue.open(f"sqlite:///{db}")
    yield q
    await q.close()


async def fill(queue: SQLiteQueue, delivered: int, dead: int, pending: int) -> dict[str, str]:
    """Leads tagged d (delivered at T0 + 10), x (dead at T0 + 10) and p (pending); ids by tag."""
    ids: dict[str, str] = {}
    for tag, count in (("d", delivered), ("x", dead), ("p", pending)):
        for start in range(0, count, 16):  # batches, as group commit writes them
            puts = [payload(tag, n) for n in range(start, min(count, start + 16))]
            for n, result in enumerate(await queue.put_many(puts, T0), start):
                ids[f"{tag}{n}"] = result.status.id
        if tag == "p":
            continue
        for job in await queue.lease("lead", count, T0 + 1, 30):
            settled = (
                await queue.ack(job, "5222102", T0 + 10) if tag == "d"
                else await queue.bury(job, "HTTP 400: bad", T0 + 10)
            )
            assert settled
    return ids


async def test_no_personal_field_of_a_settled_lead_is_left_in_the_files(
    queue: SQLiteQueue, db: Path
) -> None:
    ids = await fill(queue, delivered=40, dead=10, pending=5)
    delivered, dead, pending = values_of("d", 40), values_of("x", 10), values_of("p", 5)
    assert await queue.status(ids["d0"]) is not None  # the reader has a connection open
    # The scan can see them: every value is on disk before the purge.
    assert left_in_files(db, delivered + dead + pending) == delivered + dead + pending

    first = await queue.purge(delivered_before=T0 + 11, dead_before=T0 + 5, limit=16)

    assert (first.delivered, first.dead, first.flushed) == (40, 0, True)
    assert left_in_files(db, delivered) == []
    assert left_in_files(db, dead + pending) == dead + pending

    second = await queue.purge(delivered_before=T0 + 11, dead_before=T0 + 11, limit=16)

    assert (second.delivered, second.dead, second.flushed) == (0, 10, True)
    assert left_in_files(db, delivered + dead) == []
    assert left_in_files(db, pending) == pending
    status = await queue.status(ids["d7"])
    assert status is not None and status.state == State.DELIVERED and status.purged
    again = await queue.put_many([payload("d", 7)], T0 + 20)
    assert not again[0].created and again[0].status.id == ids["d7"]


async def test_a_purged_store_stays_clean_after_more_traffic_and_a_reopen(db: Path) -> None:
    queue = await SQLiteQueue.open(f"sqlite:///{db}")
    await fill(queue, delivered=20, dead=0, pending=0)
    await queue.purge(T0 + 11, T0 + 11, 16)
    # Later leads reuse the freed pages; closing checkpoints whatever the WAL holds.
    await queue.put_many([payload("q", n) for n in range(20)], T0 + 30)
    await queue.close()
    assert left_in_files(db, values_of("d", 20)) == []
    reopened = await SQLiteQueue.open(f"sqlite:///{db}")
    try:
        assert len(await reopened.lease("lead", 50, T0 + 31, 30)) == 20
    finally:
        await reopened.close()
    assert left_in_files(db, values_of("d", 20)) == []


async def test_a_reader_holding_the_wal_delays_the_flush_to_the_next_purge(
    queue: SQLiteQueue, db: Path
) -> None:
    await fill(queue, delivered=10, dead=0, pending=0)
    reader = sqlite3.connect(db, isolation_level=None)
    try:
        reader.execute("BEGIN")
        reader.execute("SELECT count(*) FROM jobs").fetchone()  # holds its snapshot open
        blocked = await queue.purge(T0 + 11, T0 + 11, 16)
        assert (blocked.delivered, blocked.flushed) == (10, False)
        reader.execute("COMMIT")
    finally:
        reader.close()
    later = await queue.purge(T0 + 11, T0 + 11, 16)
    assert (later.delivered, later.flushed) == (0, True)
    assert left_in_files(db, values_of("d", 10)) == []


async def test_the_cli_says_why_a_purged_dead_letter_is_not_replayed(
    queue: SQLiteQueue, db: Path
) -> None:
    ids = await fill(queue, delivered=0, dead=3, pending=0)
    # x0-x2 died before the cutoff, x3 after it: only x3 can still be replayed.
    await queue.put_many([payload("x", 3)], T0)
    [late] = await queue.lease("lead", 1, T0 + 1, 30)
    assert await queue.bury(late, "HTTP 400: bad", T0 + 20)
    assert (await queue.purge(T0 + 11, T0 + 11, 16)).dead == 3
    env = child_env(CTGW_QUEUE=f"sqlite:///{db}", CTGW_SITE_ID="18990")

    def replay(*args: str) -> str:
        done = subprocess.run([sys.executable, "-m", "gateway", "dead", "replay", *args],
                              env=env, capture_output=True, text=True, timeout=30)
        assert done.returncode == 0, done.stderr
        return done.stdout

    one = replay("--id", ids["x0"])
    assert one.splitlines() == [
        f"queue: {db.resolve()}",
        "replayed 0", "not replayed 1: lead data purged after CTGW_DEAD_RETENTION",
    ]
    every = replay("--all")
    assert every.splitlines() == [
        f"queue: {db.resolve()}",
        "replayed 1", "not replayed 3: lead data purged after CTGW_DEAD_RETENTION",
    ]


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


async def test_retention_purges_each_state_after_its_own_period(
    queue: SQLiteQueue, db: Path, caplog: pytest.LogCaptureFixture
) -> None:
    await fill(queue, delivered=3, dead=2, pending=1)
    metrics, clock = Metrics(), Clock(T0 + 10 + 59)
    retention = Retention(queue, metrics, 60.0, 600.0, batch=2, clock=clock)

    def purged(state: str) -> float | None:
        return metrics.registry.get_sample_value("ctgw_retention_purged_total", {"state": state})

    assert (purged("delivered"), purged("dead")) == (0.0, 0.0)
    await retention.purge()
    assert left_in_files(db, values_of("d", 3)) == values_of("d", 3)
    clock.now = T0 + 10 + 61
    await retention.purge()
    assert (purged("delivered"), purged("dead")) == (3.0, 0.0)
    assert left_in_files(db, values_of("d", 3)) == []
    assert left_in_files(db, values_of("x", 2)) == values_of("x", 2)
    clock.now = T0 + 10 + 601
    await retention.purge()
    assert (purged("delivered"), purged("dead")) == (3.0, 2.0)
    assert left_in_files(db, values_of("x", 2)) == []
    assert left_in_files(db, values_of("p", 1)) == values_of("p", 1)
    logged = [r.getMessage() for r in caplog.records if r.name == "gateway.ops.retention"]
    assert logged == ["retention purged delivered=3 dead=0", "retention purged delivered=0 dead=2"]


def test_the_interval_follows_the_shorter_retention_within_bounds() -> None:
    assert interval(2.0, 30 * 86400.0) == 1.0
    assert interval(40.0, 100.0) == 10.0
    assert interval(7 * 86400.0, 30 * 86400.0) == 600.0


async def test_a_store_error_is_logged_and_retried_not_fatal(
    db: Path, caplog: pytest.LogCaptureFixture
) -> None:
    queue = await SQLiteQueue.open(f"sqlite:///{db}")
    await queue.close()  # every purge now fails
    retention = Retention(queue, Metrics(), 1.0, 1.0)
    retention.start()

    def failures() -> list[str]:
        return [r.getMessage() for r in caplog.records
                if r.name == "gateway.ops.retention" and r.levelno == logging.ERROR]

    async def failed_twice() -> bool:
        return len(failures()) >= 2

    try:
        await eventually(failed_twice, timeout=10)
    finally:
        await retention.stop()
    assert failures()[0].startswith("retention purge failed error=")


@pytest.fixture
def sandbox_url() -> Iterator[str]:
    proc, url = spawn_sandbox("0.01,0.05")
    yield url
    proc.kill()


async def test_a_running_gateway_purges_delivered_leads_from_its_file(
    tmp_path: Path, sandbox_url: str, processes: list[Process], http: aiohttp.ClientSession
) -> None:
    db = tmp_path / "gateway.db"
    proc, url, ops = spawn_gateway({
        "CTGW_SITE_ID": "18990",
        "CTGW_CALLTOUCH_URL": sandbox_url,
        "CTGW_QUEUE": f"sqlite:///{db}",
        "CTGW_LISTEN": "127.0.0.1:0",
        "CTGW_OPS_LISTEN": "127.0.0.1:0",
        "CTGW_API_TOKENS": TOKEN,
        "CTGW_RETENTION": "2s",
    })
    processes.append(proc)
    ids = []
    for n in range(5):
        async with http.post(f"{url}/api/v1/leads", json=personal_lead("e", n),
                             headers=AUTH) as resp:
            assert resp.status == 202, await resp.text()
            ids.append((await resp.json())["id"])
    values = values_of("e", 5)
    # Acknowledged means on disk; the purge comes 2 s after delivery at the earliest.
    assert left_in_files(db, values) == values

    async def statuses() -> list[dict[str, Any]]:
        answers = []
        for job_id in ids:
            async with http.get(f"{url}/api/v1/leads/{job_id}", headers=AUTH) as resp:
                assert resp.status == 200
                answers.append(await resp.json())
        return answers

    async def delivered() -> bool:
        return all(s["status"] == "delivered" for s in await statuses())

    async def purged() -> bool:
        async with http.get(f"{ops}/metrics") as resp:
            text = await resp.text()
        return 'ctgw_retention_purged_total{state="delivered"} 5.0' in text

    async def gone_from_files() -> bool:
        return left_in_files(db, values) == []

    await eventually(delivered, timeout=20)
    await eventually(purged, timeout=20)
    await eventually(gone_from_files, timeout=10)
    after = await statuses()
    assert all(s["status"] == "delivered" and s["request_id"] for s in after), after
    async with http.post(f"{url}/api/v1/leads", json=personal_lead("e", 0), headers=AUTH) as resp:
        assert resp.status == 200 and (await resp.json())["id"] == ids[0]
    assert any("retention purged delivered=" in line for line in proc.lines)
    assert not [line for line in proc.lines if any(v in line for v in values)]
