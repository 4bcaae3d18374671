"""``ct-gateway spam list`` and ``spam release``: the quarantine, looked at and let out.

A listing shows what a lead was scored, never what it holds: id, time, site, signals, score.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

from gateway.config_values import parse_duration
from gateway.queue import Queue

Action = Callable[[Queue], Awaitable[None]]


def parse_since(raw: str) -> float:
    """A moment: ISO 8601 (UTC when it names no offset), or a duration back from now (2h)."""
    try:
        return time.time() - parse_duration(raw)
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(raw)
    except ValueError:
        raise argparse.ArgumentTypeError(
            "expected an ISO 8601 time like 2026-12-01T09:00 or a duration like 2h"
        ) from None
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()


def add_parsers(spam: argparse.ArgumentParser, epilog: str) -> None:
    sub = spam.add_subparsers(dest="action", required=True)
    listing = sub.add_parser("list", help="quarantined leads: id, time, site, signals, score",
                             epilog=epilog)
    listing.add_argument("--limit", type=int, default=100, metavar="N",
                         help="list at most N, the oldest first (default 100)")
    listing.add_argument("--since", type=parse_since, metavar="TIME",
                         help="only those since TIME (ISO 8601, or a duration back: 2h)")
    release = sub.add_parser("release", help="queue quarantined leads as if accepted then",
                             epilog=epilog)
    which = release.add_mutually_exclusive_group(required=True)
    which.add_argument("--id", action="append", dest="ids", metavar="ID",
                       help="the id of a quarantined lead (repeat for several)")
    which.add_argument("--since", type=parse_since, metavar="TIME",
                       help="every one since TIME (ISO 8601, or a duration back: 2h)")
    which.add_argument("--all", action="store_true", help="every quarantined lead")


def action(args: argparse.Namespace) -> Action:
    if args.action == "list":
        return _listing(args.limit, args.since)
    return _release(args.ids, args.since)


def _listing(limit: int, since: float | None) -> Action:
    async def run(queue: Queue) -> None:
        held = await queue.spam(limit, since)
        if not held:
            print("no quarantined leads")
        for status in held:
            moment = datetime.fromtimestamp(status.created_at, UTC).isoformat(timespec="seconds")
            print(f"{status.id}\t{moment}\t{status.site}\t{status.last_error}")

    return run


def _release(ids: list[str] | None, since: float | None) -> Action:
    async def run(queue: Queue) -> None:
        print(f"released {await queue.release_spam(ids, since, time.time())}")

    return run
