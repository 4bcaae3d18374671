"""``ct-gateway dead list`` and ``dead replay``: the dead letters, looked at and queued again.

A listing shows what became of a job, never what it holds: id, site, kind, attempts, last error.
A replay queues dead letters again; one whose data was purged after ``CTGW_DEAD_RETENTION`` has
nothing left to send, and stays dead.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Awaitable, Callable

from gateway.queue import Queue, State, Status

Action = Callable[[Queue], Awaitable[None]]


def add_parsers(dead: argparse.ArgumentParser, epilog: str) -> None:
    dead_sub = dead.add_subparsers(dest="action", required=True)
    listing = dead_sub.add_parser("list", help="list dead letters (no personal data)",
                                  epilog=epilog)
    listing.add_argument("--limit", type=int, default=100, metavar="N",
                         help="list at most N dead letters, the oldest first (default 100)")
    listing.add_argument("--kind", default=None, metavar="KIND",
                         help="only those of KIND: lead, deal.create, deal.update, comment,"
                         " order1")
    listing.add_argument("--site", default=None, metavar="NAME",
                         help="only those of the site NAME (CTGW_SITES; default: every site)")
    replay = dead_sub.add_parser("replay", help="queue dead letters again", epilog=epilog)
    which = replay.add_mutually_exclusive_group(required=True)
    which.add_argument("--id", action="append", dest="ids", metavar="ID",
                       help="the id of a dead letter to replay (repeat for several)")
    which.add_argument("--all", action="store_true", help="replay every dead letter")
    which.add_argument("--kind", default=None, metavar="KIND",
                       help="replay every dead letter of KIND (e.g. deal.create)")
    which.add_argument("--site", default=None, metavar="NAME",
                       help="replay every dead letter of the site NAME")


def action(args: argparse.Namespace) -> Action:
    if args.action == "list":
        return _dead_list(args.limit, args.kind, args.site)
    return _replay(None if args.all else args.ids, args.kind, args.site)


async def _dead_of(
    queue: Queue, limit: int, kind: str | None, site: str | None = None
) -> list[Status]:
    if kind is None and site is None:
        return await queue.dead(limit)
    everything = await queue.dead((await queue.stats()).counts[State.DEAD])
    return [s for s in everything
            if kind in (None, s.kind) and site in (None, s.site)][:limit]


def _dead_list(limit: int, kind: str | None, site: str | None) -> Action:
    async def run(queue: Queue) -> None:
        dead = await _dead_of(queue, limit, kind, site)
        if not dead:
            print("no dead letters")
        for status in dead:
            print(f"{status.id}\t{status.site}\t{status.kind}\tattempts={status.attempts}\t"
                  f"{status.last_error}")

    return run


def _replay(ids: list[str] | None, kind: str | None = None, site: str | None = None) -> Action:
    async def run(queue: Queue) -> None:
        nonlocal ids
        if kind is not None or site is not None:
            ids = [status.id for status in await _dead_of(queue, 10**9, kind, site)]
        print(f"replayed {await queue.replay(ids, time.time())}")
        purged = await _purged_dead(queue, ids)
        if purged:
            print(f"not replayed {purged}: lead data purged after CTGW_DEAD_RETENTION")

    return run


async def _purged_dead(queue: Queue, ids: list[str] | None) -> int:
    """Dead letters the replay had to leave dead: their payload is gone, nothing to send."""
    if ids is None:
        dead = await queue.dead((await queue.stats()).counts[State.DEAD])
    else:
        found = [await queue.status(job_id) for job_id in dict.fromkeys(ids)]
        dead = [s for s in found if s is not None and s.state == State.DEAD]
    return sum(s.purged for s in dead)
