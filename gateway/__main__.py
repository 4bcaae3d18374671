"""The ``ct-gateway`` command: ``serve``, ``queue stats``, ``dead`` (:mod:`gateway.dead_cli`),
``spam`` (:mod:`gateway.spam_cli`), and ``deals import`` (a client of the gateway's own API,
:mod:`gateway.import_cli`).

``serve`` takes every setting; the store commands take only ``CTGW_QUEUE`` and
``CTGW_LOG_LEVEL``, so an operator can inspect a queue with no Calltouch account at hand.
"""

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
from urllib.parse import urlsplit

from aiohttp import web

from gateway import __version__, app, dead_cli, import_cli, serve_lock, spam_cli
from gateway.config import CALLTOUCH_RATE, ConfigError, Settings, from_env, store_from_env
from gateway.ops import logs
from gateway.queue import Queue, QueueError, State, open_queue
from gateway.queue.sqlite_schema import path_from_url
from gateway.sandbox.run import SandboxThread
from gateway.sites import Sites
from gateway.sites_file import sites_of

log = logging.getLogger("gateway")
Action = Callable[[Queue], Awaitable[None]]

# A lead allocates a few hundred objects, nearly all freed by reference counting; at the default
# of 700 the young generation was collected every ~70 leads, 3 % of intake CPU at full load.
_GC_YOUNG = 20_000
# After the grace for in-flight sends, the rest of a stop (leases given back, the last stamps
# recorded, the store closed) gets this long: with the default grace a stop then ends within
# systemd's TimeoutStopSec and compose's stop_grace_period (30 s), with a line saying why.
STOP_SECONDS = 15.0
EXIT_STOP_LATE = 1
# argparse prints these as they are: plain text, not the reStructuredText of the docstrings.
_DESCRIPTION = (
    "A durable, rate-limited gateway from website forms to the Calltouch API. "
    "'serve' runs it; 'queue stats', 'dead list', 'dead replay', 'spam list' and "
    "'spam release' look after its queue; 'deals import' posts an NDJSON file of deals."
)
_SERVE_EPILOG = """\
All configuration is from the environment (every variable is in README.md); the main ones:
  CTGW_SITE_ID      Calltouch site id (required, unless --sandbox)
  CTGW_QUEUE        queue store, sqlite:///relative.db or sqlite:////absolute.db
                    (default sqlite:///./ct-gateway.db; its directory must exist)
  CTGW_LISTEN       public listener (default 127.0.0.1:8080)
  CTGW_OPS_LISTEN   ops listener: /metrics, /healthz, /readyz (default 127.0.0.1:9464)
  CTGW_RATE         upstream requests per second (default 5, Calltouch's limit per IP)
  CTGW_API_TOKENS   comma-separated bearer tokens for /api/v1/...
  CTGW_ACCESS_TOKEN Calltouch lead-service token: turns on deals 2.0 and comments
  CTGW_CLIENT_API_ID Calltouch clientApiId: turns on the deals 1.0 paths
  CTGW_LOG_LEVEL    DEBUG, INFO, WARNING or ERROR (default INFO)
A wrong value stops it with exit code 2 and one line naming the variable."""
_STORE_EPILOG = (
    "Reads only CTGW_QUEUE (default sqlite:///./ct-gateway.db, relative to the current "
    "folder) and CTGW_LOG_LEVEL; the queue must exist. The first line names the queue's file."
)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ct-gateway", description=_DESCRIPTION)
    parser.add_argument("--version", action="version", version=f"ct-gateway {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the gateway", description="Run the gateway.",
                           epilog=_SERVE_EPILOG,
                           formatter_class=argparse.RawDescriptionHelpFormatter)
    serve.add_argument("--sandbox", action="store_true",
                       help="relay to a built-in Calltouch simulator (no account needed; "
                            "refused while CTGW_SITE_ID is set)")
    queue = sub.add_parser("queue", help="inspect the queue", epilog=_STORE_EPILOG)
    queue.add_argument("action", choices=["stats"], help="stats: jobs by state, oldest age")
    dead_cli.add_parsers(sub.add_parser("dead", help="dead letters", epilog=_STORE_EPILOG),
                         _STORE_EPILOG)
    import_cli.add_parser(sub)
    spam_cli.add_parsers(
        sub.add_parser("spam", help="leads scored as spam, kept apart", epilog=_STORE_EPILOG),
        _STORE_EPILOG,
    )
    return parser


def store_label(url: str, *, create: bool) -> str:
    """The store as the operator is shown it: its SQLite file, or a server without credentials.

    A file is checked here, before the store opens, since SQLite would create an empty one: the
    store commands need it to exist, ``serve`` only its directory.
    """
    parts = urlsplit(url)
    if parts.scheme != "sqlite":  # a server: nothing to check here, and no password shown
        return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}{parts.path}"
    path = path_from_url(url).resolve()
    if create:
        if not path.parent.exists():
            raise ConfigError("CTGW_QUEUE", f"the directory {path.parent} does not exist")
    elif not path.exists():
        raise ConfigError("CTGW_QUEUE", f"no queue at {path}")
    return str(path)


def _cannot_open(store: str, exc: QueueError) -> ConfigError:
    return ConfigError("CTGW_QUEUE", f"cannot open the queue at {store}: {exc}")


async def _serve(settings: Settings, store: str, sites: Sites) -> None:
    try:
        running = await app.start(settings, sites=sites)
    except QueueError as exc:  # a listener fails with an OSError, the store with this
        raise _cannot_open(store, exc) from exc
    tune_gc()
    stop = asyncio.Event()
    # Before "listening": whoever waits for that line may send SIGTERM the moment it shows.
    for sig in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    # Logged once started, so that a failure to start stays one line on stderr.
    if settings.sandbox:
        log.info("sandbox: relaying to the built-in Calltouch simulator at %s",
                 settings.calltouch_url)
    log.info("queue: %s", store)
    if settings.sites_file is not None:
        log.info("sites: %s", ", ".join(sorted(sites.sites)))
    _warn_above_calltouch(settings.rate)
    log.info("listening public=%s ops=%s", running.url, running.ops_url)
    await stop.wait()
    log.info("stopping: readiness off, intake closed, finishing in-flight sends")
    await _stop(running.runner, settings.shutdown_grace + STOP_SECONDS)
    log.info("stopped")


async def _stop(runner: web.AppRunner, seconds: float) -> None:
    """Stop the gateway; if a store gone silent holds the stop past ``seconds``, exit at once,
    as after a crash: what the store committed stays, and leased jobs go again when their
    leases end."""
    cleanup = asyncio.ensure_future(runner.cleanup())
    done, _ = await asyncio.wait([cleanup], timeout=seconds)
    if cleanup in done:
        cleanup.result()
        return
    log.error("stop did not finish in %.0fs (the store does not answer): exiting now;"
              " leased jobs go again when their leases end", seconds)
    logging.shutdown()
    # Not a return: asyncio.run would then wait for the tasks that wait on the store, the
    # very wait this bound ends.
    os._exit(EXIT_STOP_LATE)


def _warn_above_calltouch(rate: float) -> None:
    if rate > CALLTOUCH_RATE:
        log.warning("CTGW_RATE=%g is above Calltouch's limit of %g requests per second per IP:"
                    " expect 429 answers and slowed delivery", rate, CALLTOUCH_RATE)


def tune_gc() -> None:
    gc.freeze()  # what start-up built lives as long as the process: no collection walks it
    gc.set_threshold(_GC_YOUNG, *gc.get_threshold()[1:])


async def _with_queue(url: str, store: str, action: Action) -> None:
    try:
        queue = await open_queue(url)
    except QueueError as exc:
        raise _cannot_open(store, exc) from exc
    try:
        print(f"queue: {store}")
        await action(queue)
    finally:
        await queue.close()


async def _stats(queue: Queue) -> None:
    stats = await queue.stats()
    for state in State:
        print(f"{state.value:<10} {stats.counts[state]}")
    age = 0.0 if stats.oldest_pending_at is None else time.time() - stats.oldest_pending_at
    print(f"{'oldest':<10} {age:.0f}s")


def _store_action(args: argparse.Namespace) -> Action:
    if args.command == "queue":
        return _stats
    if args.command == "spam":
        return spam_cli.action(args)
    return dead_cli.action(args)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if args.command == "serve":
            return _run_serve(from_env(os.environ, sandbox=args.sandbox))
        if args.command == "deals":
            return import_cli.run(args)
        store = store_from_env(os.environ)
        label = store_label(store.queue_url, create=False)
        logs.setup(store.log_level)
        asyncio.run(_with_queue(store.queue_url, label, _store_action(args)))
    except ConfigError as exc:
        print(f"ct-gateway: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `ct-gateway dead list | head`: the reader has gone
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # and no error at exit
        return 1
    return 0


def _run_serve(settings: Settings) -> int:
    sites = sites_of(settings, os.environ)  # a bad sites file: exit 2, one line
    store = store_label(settings.queue_url, create=True)
    if urlsplit(settings.queue_url).scheme == "sqlite":
        serve_lock.hold(path_from_url(settings.queue_url).resolve())  # until the process ends
    logs.setup(settings.log_level)
    simulator = None
    if settings.sandbox:
        simulator = SandboxThread()
        settings = settings.with_calltouch(simulator.start())
    try:
        asyncio.run(_serve(settings, store, sites))
    except OSError as exc:
        print(f"ct-gateway: cannot listen: {exc}", file=sys.stderr)
        return 1
    finally:
        if simulator is not None:
            simulator.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
