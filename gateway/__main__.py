"""The ``ct-gateway`` command: ``serve``, ``queue stats``, ``dead list``, ``dead replay``."""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable

from gateway import app
from gateway.config import ConfigError, Settings, from_env
from gateway.ops import logs
from gateway.queue import Queue, State, open_queue
from gateway.sandbox.server import SandboxThread

log = logging.getLogger("gateway")

# A lead allocates a few hundred objects, nearly all freed by reference counting; at the default
# of 700 the young generation was collected every ~70 leads, 3 % of intake CPU at full load.
_GC_YOUNG = 20_000


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ct-gateway", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the gateway")
    serve.add_argument("--sandbox", action="store_true",
                       help="relay to a built-in Calltouch simulator (no account needed)")
    queue = sub.add_parser("queue", help="inspect the queue")
    queue.add_argument("action", choices=["stats"])
    dead = sub.add_parser("dead", help="dead letters")
    dead_sub = dead.add_subparsers(dest="action", required=True)
    listing = dead_sub.add_parser("list", help="list dead letters (no personal data)")
    listing.add_argument("--limit", type=int, default=100)
    replay = dead_sub.add_parser("replay", help="queue dead letters again")
    which = replay.add_mutually_exclusive_group(required=True)
    which.add_argument("--id", action="append", dest="ids", metavar="ID")
    which.add_argument("--all", action="store_true")
    return parser


async def _serve(settings: Settings) -> None:
    running = await app.start(settings)
    tune_gc()
    log.info("listening public=%s ops=%s", running.url, running.ops_url)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("stopping: readiness off, intake closed, finishing in-flight sends")
    await running.runner.cleanup()
    log.info("stopped")


def tune_gc() -> None:
    gc.freeze()  # what start-up built lives as long as the process: no collection walks it
    gc.set_threshold(_GC_YOUNG, *gc.get_threshold()[1:])


async def _with_queue(settings: Settings, action: Callable[[Queue], Awaitable[None]]) -> None:
    queue = await open_queue(settings.queue_url)
    try:
        await action(queue)
    finally:
        await queue.close()


async def _stats(queue: Queue) -> None:
    stats = await queue.stats()
    for state in State:
        print(f"{state.value:<10} {stats.counts[state]}")
    age = 0.0 if stats.oldest_pending_at is None else time.time() - stats.oldest_pending_at
    print(f"{'oldest':<10} {age:.0f}s")


def _dead_list(limit: int) -> Callable[[Queue], Awaitable[None]]:
    async def run(queue: Queue) -> None:
        for status in await queue.dead(limit):
            print(f"{status.id}\t{status.kind}\tattempts={status.attempts}\t{status.last_error}")

    return run


def _replay(ids: list[str] | None) -> Callable[[Queue], Awaitable[None]]:
    async def run(queue: Queue) -> None:
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


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    sandbox = args.command == "serve" and args.sandbox
    try:
        settings = from_env(os.environ, sandbox=sandbox)
    except ConfigError as exc:
        print(f"ct-gateway: {exc}", file=sys.stderr)
        return 2
    logs.setup(settings.log_level)
    if args.command == "serve":
        return _run_serve(settings)
    action: Callable[[Queue], Awaitable[None]]
    if args.command == "queue":
        action = _stats
    elif args.action == "list":
        action = _dead_list(args.limit)
    else:
        action = _replay(None if args.all else args.ids)
    asyncio.run(_with_queue(settings, action))
    return 0


def _run_serve(settings: Settings) -> int:
    simulator = None
    if settings.sandbox:
        simulator = SandboxThread()
        settings = settings.with_calltouch(simulator.start())
        log.info("sandbox: relaying to the built-in Calltouch simulator at %s", simulator.url)
    try:
        asyncio.run(_serve(settings))
    except OSError as exc:
        print(f"ct-gateway: cannot listen: {exc}", file=sys.stderr)
        return 1
    finally:
        if simulator is not None:
            simulator.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
