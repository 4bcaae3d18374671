"""An outage seen by a fleet: two gateway processes on one PostgreSQL share the upstream's
health, so the fleet sends one probe at a time, not one each, and both drain at once when a
probe passes (issue 16)."""

from __future__ import annotations

import asyncio
import itertools
import time

import aiohttp
import pytest

from gateway.sandbox.server import max_in_window
from tests.support import Process, eventually, lead, sandbox_config
from tests.test_fleet import all_rows, fleet_env, spawn_fleet

OUTAGE = 40.0
LEADS = 40
RATE = 5
MAX_PROBE = 8.0  # the health gate's probe interval cap
# One gate's probes in a 40 s outage, once it is down: 1, 2, 4, 8, 8, 8, 8 s apart. Before,
# the calls of the outage's first window, sent before their answers were heard.
PROBES = 7


@pytest.mark.slow
@pytest.mark.timeout(180)
async def test_a_fleet_probes_an_outage_once_and_every_gateway_drains_when_it_ends(
    postgres_url: str, two_sandboxes: list[str], processes: list[Process],
    http: aiohttp.ClientSession, capsys: pytest.CaptureFixture[str],
) -> None:
    fleet = await spawn_fleet([fleet_env(postgres_url, url) for url in two_sandboxes], processes)
    for url in two_sandboxes:
        await sandbox_config(http, url, fault="503", fault_rate=1.0)
    started = time.monotonic()
    for n in range(LEADS):
        async with http.post(f"{fleet[n % 2][1]}/leads", json=lead(n)) as resp:
            assert resp.status == 202
    await asyncio.sleep(max(0.0, started + OUTAGE - time.monotonic()))
    for url in two_sandboxes:
        await sandbox_config(http, url, fault=None)
    ended = time.monotonic()  # the sandboxes' "at" is this host's monotonic clock

    async def all_delivered() -> bool:
        rows = await all_rows(http, two_sandboxes)
        return len({r["form"]["requestNumber"] for r in rows if r["status"] == 200}) == LEADS

    await eventually(all_delivered, timeout=60, interval=0.5)
    rows = await all_rows(http, two_sandboxes)
    failed = [r["at"] for r in rows if r["status"] == 503]
    first_window = [at for at in failed if at < failed[0] + 1.0]
    probes = failed[len(first_window):]
    gaps = [b - a for a, b in itertools.pairwise(probes)]
    by_gateway = [[r for r in await all_rows(http, [url]) if r["status"] == 200]
                  for url in two_sandboxes]
    delivered = sorted(r["form"]["requestNumber"] for r in rows if r["status"] == 200)
    drain = max(r["at"] for r in rows if r["status"] == 200) - ended
    with capsys.disabled():
        print(f"\n[fleet outage] {OUTAGE:.0f}s: calls during it {len(failed)}, at"
              f" {[round(t - failed[0], 2) for t in failed]} (one gate's probes: {PROBES});"
              f" delivered by"
              f" {[len(part) for part in by_gateway]} {drain:.1f}s after it ended")
    assert {r["status"] for r in rows} <= {200, 503}  # zero 429s
    assert max_in_window([r["at"] for r in rows], 1.0) <= RATE
    assert delivered == sorted(f"req-{n}" for n in range(LEADS))  # each exactly once
    # One probe for the fleet: one gate's probes, where two gates of their own would send
    # twice as many; never two at once, whichever gateway sends them; and no call let through
    # before the outage was known goes into it after.
    assert len(first_window) <= RATE, failed
    assert len(probes) <= PROBES + 1, failed
    assert min(gaps) >= 0.9, gaps
    # The probe that passed is one gateway's; the other heard of it and drained too.
    assert all(by_gateway), [len(part) for part in by_gateway]
    assert drain <= 1.2 * LEADS / RATE + MAX_PROBE, drain
