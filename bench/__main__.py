"""``python -m bench {intake,relay,memory,all,flood,pg,fleet,deals,recovery}``: run, print a
summary, save JSON.

Progress goes to stderr, the table to stdout, the full results (every round) to
``bench/results/<time>-<command>.json``.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import (
    deals,
    fleet,
    flood,
    intake,
    memory,
    pg,
    recovery,
    relay,
    report,
    scrape,
    summary,
)

# The options' own defaults are the CLI's: one place to change them.
_INTAKE, _RELAY = intake.IntakeOptions(), relay.RelayOptions()
_MEMORY, _FLOOD = memory.MemoryOptions(), flood.FloodOptions()
_SCRAPE = scrape.ScrapeOptions()
_PG, _FLEET = pg.PgOptions(), fleet.FleetOptions()
_DEALS = deals.DealsOptions()
_RECOVERY = recovery.RecoveryOptions()


def _intake_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("intake")
    group.add_argument("--rounds", type=int, default=_INTAKE.rounds,
                       help="throughput rounds per server")
    group.add_argument("--seconds", type=float, default=_INTAKE.seconds, help="seconds per round")
    group.add_argument("--connections", type=int, default=_INTAKE.connections)
    group.add_argument("--threads", type=int, default=_INTAKE.threads, help="wrk threads")
    group.add_argument("--tool", choices=["auto", "wrk", "python"], default=_INTAKE.tool)
    group.add_argument("--latency-rounds", type=int, default=_INTAKE.latency_rounds)
    group.add_argument("--latency-rate", type=float, default=_INTAKE.latency_rate,
                       help="offered leads/s")
    group.add_argument("--latency-seconds", type=float, default=_INTAKE.latency_seconds)


def _relay_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("relay")
    group.add_argument("--leads", type=int, default=_RELAY.leads, help="leads to drain")
    group.add_argument("--relay-rounds", type=int, default=_RELAY.rounds)


def _memory_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("memory")
    group.add_argument("--memory-leads", type=int, default=_MEMORY.leads, help="leads to pre-fill")
    group.add_argument("--batch", type=int, default=_MEMORY.batch, help="leads per put_many")
    group.add_argument("--scrape-rounds", type=int, default=_SCRAPE.rounds,
                       help="latency rounds per condition, with and without /metrics scrapes"
                            " (0: none)")
    group.add_argument("--scrape-rate", type=float, default=_SCRAPE.rate,
                       help="offered leads/s in those rounds")
    group.add_argument("--scrape-seconds", type=float, default=_SCRAPE.seconds)


def _flood_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("flood")
    group.add_argument("--flood-leads", type=int, default=_FLOOD.leads, help="real leads per phase")
    group.add_argument("--flood-rate", type=float, default=_FLOOD.rate,
                       help="real leads per second")
    group.add_argument("--junk-connections", type=int, default=_FLOOD.connections)
    group.add_argument("--loris", type=int, default=_FLOOD.loris, help="slow-loris connections")


def _pg_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("pg")
    group.add_argument("--pg-rounds", type=int, default=_PG.rounds,
                       help="intake rounds per server (bare, SQLite, PostgreSQL)")
    group.add_argument("--pg-seconds", type=float, default=_PG.seconds, help="seconds per round")
    group.add_argument("--pg-connections", type=int, default=_PG.connections)
    group.add_argument("--pg-leads", type=int, default=_PG.leads,
                       help="leads queued for the size and the scrape (0: skip them)")


def _fleet_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("fleet")
    group.add_argument("--fleet-leads", type=int, default=_FLEET.leads, help="leads per point")
    group.add_argument("--fleet-sizes", default=",".join(map(str, _FLEET.sizes)),
                       help="gateway counts, comma-separated")
    group.add_argument("--fleet-db-rtt", type=float, default=_FLEET.db_rtt * 1000,
                       help="milliseconds added to each round trip to the database")


def _deals_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("deals")
    group.add_argument("--deals", type=int, default=_DEALS.deals, help="deals to drain")
    group.add_argument("--deal-request-lines", type=int, default=_DEALS.request_lines,
                       help="NDJSON lines per request of the drain")
    group.add_argument("--deal-leads", type=int, default=_DEALS.leads,
                       help="leads before the drain, and as many during it")
    group.add_argument("--deal-lead-interval", type=float, default=_DEALS.lead_interval,
                       help="seconds between those leads")
    group.add_argument("--deal-rounds", type=int, default=_DEALS.rounds,
                       help="drain rounds (0: none)")
    group.add_argument("--deal-faults", type=float, default=_DEALS.faults,
                       help="share of calls the sandbox answers 503 to during the drain")
    group.add_argument("--ndjson-lines", type=int, default=_DEALS.ndjson_lines,
                       help="lines of the streamed intake upload")
    group.add_argument("--ndjson-baseline-lines", type=int, default=_DEALS.ndjson_baseline_lines,
                       help="lines of the upload it is compared with")
    group.add_argument("--ndjson-rounds", type=int, default=_DEALS.ndjson_rounds,
                       help="intake rounds (0: none)")


def _recovery_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("recovery")
    group.add_argument("--outages", default=",".join(f"{s:g}" for s in _RECOVERY.outages),
                       help="outage lengths in seconds, comma-separated")
    group.add_argument("--leads", type=int, default=_RECOVERY.leads,
                       help="leads queued during each outage")
    group.add_argument("--probe-max", type=float, default=_RECOVERY.probe_max,
                       help="CTGW_PROBE_MAX in seconds: the longest gap between two probes")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    commands = {"intake": [_intake_args], "relay": [_relay_args], "memory": [_memory_args],
                "all": [_intake_args, _relay_args, _memory_args], "flood": [_flood_args],
                "pg": [_pg_args], "fleet": [_fleet_args], "deals": [_deals_args],
                "recovery": [_recovery_args]}
    for name, adders in commands.items():
        command = sub.add_parser(name)
        command.add_argument("--dir", type=Path, default=None,
                             help="where to put queues and logs (default: a temp dir)")
        command.add_argument("--keep", action="store_true", help="keep that directory")
        for add in adders:
            add(command)
    return parser


def _run(name: str, args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    if name == "intake":
        return intake.run(intake.IntakeOptions(
            rounds=args.rounds, seconds=args.seconds, connections=args.connections,
            threads=args.threads, tool=args.tool, latency_rounds=args.latency_rounds,
            latency_rate=args.latency_rate, latency_seconds=args.latency_seconds,
        ), workdir / "intake")
    if name == "relay":
        return relay.run(relay.RelayOptions(leads=args.leads, rounds=args.relay_rounds),
                         workdir / "relay")
    if name == "pg":
        return pg.run(pg.PgOptions(rounds=args.pg_rounds, seconds=args.pg_seconds,
                                   connections=args.pg_connections, leads=args.pg_leads),
                      workdir / "pg")
    if name == "fleet":
        sizes = tuple(int(size) for size in args.fleet_sizes.split(","))
        return fleet.run(fleet.FleetOptions(leads=args.fleet_leads, sizes=sizes,
                                            db_rtt=args.fleet_db_rtt / 1000),
                         workdir / "fleet")
    if name == "deals":
        return deals.run(deals.DealsOptions(
            deals=args.deals, request_lines=args.deal_request_lines, leads=args.deal_leads,
            lead_interval=args.deal_lead_interval, rounds=args.deal_rounds, faults=args.deal_faults,
            ndjson_lines=args.ndjson_lines, ndjson_baseline_lines=args.ndjson_baseline_lines,
            ndjson_rounds=args.ndjson_rounds,
        ), workdir / "deals")
    if name == "recovery":
        outages = tuple(float(s) for s in args.outages.split(","))
        opts = recovery.RecoveryOptions(outages=outages, leads=args.leads,
                                        probe_max=args.probe_max)
        return recovery.run(opts, workdir / "recovery")
    if name == "flood":
        return flood.run(flood.FloodOptions(
            leads=args.flood_leads, rate=args.flood_rate, connections=args.junk_connections,
            loris=args.loris,
        ), workdir / "flood")
    scrapes = scrape.ScrapeOptions(rounds=args.scrape_rounds, rate=args.scrape_rate,
                                   seconds=args.scrape_seconds)
    return memory.run(memory.MemoryOptions(leads=args.memory_leads, batch=args.batch,
                                           scrape=scrapes), workdir / "memory")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    names = ["intake", "relay", "memory"] if args.command == "all" else [args.command]
    base = args.dir.resolve() if args.dir else None
    workdir = Path(tempfile.mkdtemp(prefix="ctgw-bench-", dir=base))
    results: dict[str, Any] = {"environment": report.environment(workdir)}
    timings: dict[str, float] = {}
    try:
        for name in names:
            started = time.monotonic()
            results[name] = _run(name, args, workdir)
            timings[name] = round(time.monotonic() - started, 1)
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    results["seconds"] = timings
    rows = summary.rows(results) + (flood.rows(results["flood"]) if "flood" in results else [])
    rows += deals.rows(results["deals"]) if "deals" in results else []
    rows += recovery.rows(results["recovery"]) if "recovery" in results else []
    results["summary"] = [{**row.__dict__, "verdict": row.verdict} for row in rows]
    path = report.save(args.command, results)
    print(report.table(rows))
    print(f"\ntook {', '.join(f'{k} {v:.0f} s' for k, v in timings.items())}; "
          f"results: {path}")
    return 0 if all(row.ok is not False for row in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
