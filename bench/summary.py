"""The summary table's rows, one group per benchmark, each with its target and verdict."""

from __future__ import annotations

from typing import Any

from bench.report import Row, median

RSS_LIMIT_BYTES = 150_000_000  # the target's "150 MB"
P99_LIMIT_MS = 10.0
SCRAPE_LIMIT_MS = 20.0  # one /metrics scrape with 1,000,000 queued
SCRAPED_P99_LIMIT = 1.5  # intake p99 while scraped, against the same without scrapes


def _x(ratio: float) -> str:
    return f"{ratio:.2f}x"


def intake_rows(result: dict[str, Any]) -> list[Row]:
    tput, lat = result["throughput"], result["latency"]
    gw, bare, offered = lat["gateway"], lat["bare"], lat["offered_rate"]
    tput_ok = tput["ratio"] >= 0.5 and tput["errors_total"] == 0 and tput["durable_ok"]
    lat_ok = gw["p99"] <= P99_LIMIT_MS and gw["all_202"] and gw["achieved_rate"] >= 0.95 * offered
    return [
        Row(f"intake acks/s ({tput['tool']}, {tput['connections']} conn)",
            f"{tput['gateway_rate']:.0f}", f"{tput['bare_rate']:.0f} bare",
            _x(tput["ratio"]), ">= 0.50x bare", tput_ok),
        Row(f"intake p50 at {offered:g}/s open loop", f"{gw['p50']:.2f} ms",
            f"{bare['p50']:.2f} ms bare", _x(gw["p50"] / bare["p50"]), "-", None),
        Row(f"intake p99 at {offered:g}/s open loop", f"{gw['p99']:.2f} ms",
            f"{bare['p99']:.2f} ms bare", _x(gw["p99"] / bare["p99"]),
            f"<= {P99_LIMIT_MS:g} ms, all 202", lat_ok),
        Row("  achieved offered rate", f"{gw['achieved_rate']:.0f}/s", f"{offered:g}/s",
            _x(gw["achieved_rate"] / offered), ">= 0.95x offered",
            gw["achieved_rate"] >= 0.95 * offered),
        *_machine_rows(result),
    ]


def _machine_rows(result: dict[str, Any]) -> list[Row]:
    """What the machine did meanwhile: the latency tail follows both, the code does not."""
    steal = [row["cpu_steal"] for row in result["latency"]["rounds"]["gateway"]]
    before, after = result["fsync_ms_before"]["p99"], result["fsync_ms_after"]["p99"]
    return [
        Row("  CPU steal in gateway latency rounds", f"{median(steal):.1%}",
            f"max {max(steal, default=float('nan')):.1%}", "-", "-", None),
        Row("  disk fsync p99 before / after", f"{before:.2f} ms", f"{after:.2f} ms after",
            "-", "-", None),
    ]


def relay_rows(result: dict[str, Any]) -> list[Row]:
    n, rate = result["leads"], result["rate"]
    return [
        Row(f"relay drain of {n} leads", f"{result['drain_seconds']:.1f} s",
            f"{result['ideal_seconds']:.1f} s ideal", f"{result['fraction_of_ideal']:.1%}",
            ">= 95% of ideal", result["fraction_of_ideal"] >= 0.95 and result["complete"]),
        Row("  upstream 429s", str(result["rate_limited_429"]), "-", "-", "0",
            result["rate_limited_429"] == 0),
        Row("  max requests in a 1 s window", str(result["max_in_window"]), "-", "-",
            f"<= {rate:g}", result["max_in_window"] <= rate),
        Row(f"  tightest {int(rate) + 1} arrivals span", f"{result['tightest_span_s']:.3f} s",
            "-", "-", "> 1 s", result["tightest_span_s"] > 1.0),
        Row("  duplicates delivered", str(result["duplicates"]), "-", "-", "0",
            result["duplicates"] == 0),
    ]


def memory_rows(result: dict[str, Any]) -> list[Row]:
    n = result["leads"]
    rss, base = result["rss_mib"], result["baseline_rss_mib"]
    scrape, base_scrape = result["scrape_ms"], result["baseline_scrape_ms"]
    return [
        Row(f"RSS with {n:,} queued", f"{rss:.1f} MiB", f"{base:.1f} MiB empty",
            _x(rss / base), "<= 150 MB",
            rss * 1024 * 1024 <= RSS_LIMIT_BYTES and result["all_queued"]),
        Row("  disk per lead (db + wal)", f"{result['bytes_per_lead']:.0f} B",
            f"{result['fill']['mean_payload_bytes']:.0f} B payload",
            _x(result["bytes_per_lead"] / result["fill"]["mean_payload_bytes"]), "-", None),
        Row(f"  /metrics scrape, {n:,} queued", f"{scrape:.1f} ms",
            f"{base_scrape:.1f} ms empty", _x(scrape / base_scrape),
            f"<= {SCRAPE_LIMIT_MS:g} ms", scrape <= SCRAPE_LIMIT_MS),
        *(_scraped_rows(n, result["scrapes"]) if result.get("scrapes") else []),
    ]


def _scraped_rows(n: int, result: dict[str, Any]) -> list[Row]:
    """Intake latency with ``/metrics`` scraped meanwhile, against the same without scrapes."""
    quiet, scraped, offered = result["quiet"], result["scraped"], result["offered_rate"]
    every, times = f"/metrics every {result['interval']:g} s", result["scrape_ms"]
    nan = float("nan")
    achieved = min(quiet["achieved_rate"], scraped["achieved_rate"])
    ok = (result["ratio"] <= SCRAPED_P99_LIMIT and quiet["all_202"] and scraped["all_202"]
          and result["scrapes_failed"] == 0 and achieved >= 0.95 * offered)
    return [
        Row(f"intake p99 at {offered:g}/s, {n:,} queued, {every}", f"{scraped['p99']:.2f} ms",
            f"{quiet['p99']:.2f} ms unscraped", _x(result["ratio"]),
            f"<= {SCRAPED_P99_LIMIT:.2f}x, all 202", ok),
        Row("  intake p50 in the same rounds", f"{scraped['p50']:.2f} ms",
            f"{quiet['p50']:.2f} ms unscraped", _x(scraped["p50"] / quiet["p50"]), "-", None),
        Row("  achieved offered rate, scraped / not", f"{scraped['achieved_rate']:.0f}/s",
            f"{quiet['achieved_rate']:.0f}/s", _x(achieved / offered), ">= 0.95x offered",
            achieved >= 0.95 * offered),
        Row(f"  {result['scrapes']} Prometheus-style scrapes under load, p50",
            f"{times.get('p50', nan):.1f} ms", f"max {times.get('max', nan):.1f} ms", "-",
            "0 failed", result["scrapes_failed"] == 0),
        *_scrape_machine_rows(result),
    ]


def _scrape_machine_rows(result: dict[str, Any]) -> list[Row]:
    """The machine's noise in the scrape rounds, as :func:`_machine_rows` for intake's."""
    return [
        Row("  CPU steal in scraped / unscraped rounds", f"{result['scraped']['cpu_steal']:.1%}",
            f"{result['quiet']['cpu_steal']:.1%}", "-", "-", None),
        Row("  disk fsync p99 before / after", f"{result['fsync_ms_before']['p99']:.2f} ms",
            f"{result['fsync_ms_after']['p99']:.2f} ms after", "-", "-", None),
    ]


def pg_rows(result: dict[str, Any]) -> list[Row]:
    tput = result["throughput"]
    rate = tput["rate"]
    ok = tput["errors_total"] == 0 and tput["durable_ok"]
    rows = [
        Row(f"intake acks/s on PostgreSQL ({tput['tool']}, {tput['connections']} conn)",
            f"{rate['postgresql']:.0f}", f"{rate['bare']:.0f} bare",
            _x(tput["postgresql_vs_bare"]), "durable, no errors", ok),
        Row("  the same on SQLite", f"{rate['sqlite']:.0f}", f"{rate['bare']:.0f} bare",
            _x(tput["sqlite_vs_bare"]), "-", None),
        Row("  PostgreSQL against SQLite", f"{rate['postgresql']:.0f}",
            f"{rate['sqlite']:.0f} SQLite", _x(tput["postgresql_vs_sqlite"]), "-", None),
    ]
    if "size" in result:
        size = result["size"]
        n = size["leads"]
        rows += [
            Row(f"  PostgreSQL bytes per queued lead ({n:,})", f"{size['bytes_per_lead']:.0f} B",
                f"{size['fill']['mean_payload_bytes']:.0f} B payload",
                _x(size["bytes_per_lead"] / size["fill"]["mean_payload_bytes"]), "-", None),
            Row(f"  /metrics scrape on PostgreSQL, {n:,} queued", f"{size['scrape_ms']:.1f} ms",
                f"{size['baseline_scrape_ms']:.1f} ms empty",
                _x(size["scrape_ms"] / size["baseline_scrape_ms"]),
                f"<= {SCRAPE_LIMIT_MS:g} ms", size["scrape_ms"] <= SCRAPE_LIMIT_MS
                and size["all_queued"]),
        ]
    return rows


def fleet_rows(result: dict[str, Any]) -> list[Row]:
    rate, rows = result["rate"], []
    for point in result["points"]:
        ok = (point["rate_vs_limit"] >= 0.95 and point["rate_limited_429"] == 0
              and point["max_in_window"] <= rate and point["unique_delivered"] == result["leads"]
              and not point["timed_out"])
        rows.append(Row(
            f"fleet drain, {point['gateways']} gateway(s), {result['leads']} leads",
            f"{point['steady_rate']:.2f}/s", f"limit {rate:g}/s", _x(point["rate_vs_limit"]),
            ">= 0.95x, 0 429s, <= 5 a second", ok))
        rows.append(Row(
            "  drain against ideal; 429s; max in 1 s; duplicates",
            f"{point['drain_seconds']:.1f} s", f"{point['ideal_seconds']:.0f} s ideal",
            f"{point['fraction_of_ideal']:.1%}",
            f"{point['rate_limited_429']}; {point['max_in_window']}; {point['duplicates']}", None))
    return rows


ROWS = {"intake": intake_rows, "relay": relay_rows, "memory": memory_rows,
        "pg": pg_rows, "fleet": fleet_rows}


def rows(results: dict[str, Any]) -> list[Row]:
    return [row for name, build in ROWS.items() if name in results for row in build(results[name])]
