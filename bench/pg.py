"""``python -m bench pg``: the PostgreSQL store against SQLite and bare aiohttp, same run.

* Intake durable acks/s on three servers in alternating rounds (bare, SQLite, PostgreSQL,
  then the reverse order, ...): each round a fresh process, the gateway in sandbox mode on a
  fresh SQLite file or a fresh PostgreSQL database, checked afterwards to hold at least as
  many leads as it acknowledged.
* Bytes per queued lead: N leads put through the gateway's own :class:`PostgresQueue`
  (``put_many``, payloads as intake stores them), then ``pg_total_relation_size('jobs')``
  (the table, its indexes and TOAST) divided by the count; and one ``/metrics`` scrape's time
  with them queued, against the same gateway on an empty database. The relay meets a sandbox
  answering 503, so nothing drains.

The server is a cluster of the benchmark's own (:class:`Cluster`), with fsync and
``synchronous_commit`` on, as the gateway demands, on the same file system as the SQLite file.
"""

from __future__ import annotations

import asyncio
import contextlib
import glob
import itertools
import os
import pwd
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import intake, memory, probe, procs
from bench.report import median, say

TARGETS = ("bare", "sqlite", "postgresql")
OWNER = "ctgw-test"  # PostgreSQL refuses root: as root, the cluster is this user's (the tests')
_databases = itertools.count()


class Cluster:
    """A PostgreSQL server in ``folder``, trusting loopback, on a free port."""

    def __init__(self, folder: Path) -> None:
        found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                       key=lambda path: int(Path(path).parts[4]))
        initdb = found[-1] if found else shutil.which("initdb")
        if initdb is None:
            raise RuntimeError("PostgreSQL is not installed (apt-get install postgresql)")
        self.bindir = Path(initdb).resolve().parent
        self.dir = folder
        self.dir.mkdir(parents=True)
        self.port = procs.free_port()
        self._owner = _owner()
        if self._owner is not None:
            # Its user must reach the folder: every parent up to an existing traversable one.
            for parent in self.dir.parents:
                mode = os.stat(parent).st_mode
                if not mode & 0o001:
                    say(f"pg: letting {OWNER} through {parent} (chmod o+x)")
                    os.chmod(parent, mode | 0o711)
            os.chown(self.dir, self._owner.pw_uid, self._owner.pw_gid)
        self._run("initdb", "-D", str(self.dir / "data"), "-U", "postgres", "--auth=trust",
                  "-E", "UTF8", "--locale=C", "--no-instructions")

    def _run(self, binary: str, *args: str) -> None:
        command = [str(self.bindir / binary), *args]
        if self._owner is not None:
            command = ["runuser", "-u", self._owner.pw_name, "--", *command]
        done = subprocess.run(command, cwd=self.dir, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"{binary} failed: {done.stdout}{done.stderr}")

    def start(self) -> None:
        options = [f"-p {self.port}", "-c listen_addresses=127.0.0.1",
                   f"-c unix_socket_directories={self.dir}", "-c max_connections=200",
                   "-c fsync=on", "-c synchronous_commit=on"]
        self._run("pg_ctl", "-D", str(self.dir / "data"), "-l", str(self.dir / "server.log"),
                  "-w", "-t", "60", "-o", " ".join(options), "start")

    def stop(self) -> None:
        if (self.dir / "data" / "postmaster.pid").exists():
            self._run("pg_ctl", "-D", str(self.dir / "data"), "-m", "fast", "-w", "stop")

    def url(self, database: str = "postgres") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def sql(self, statement: str, database: str = "postgres") -> str:
        done = subprocess.run(
            [str(self.bindir / "psql"), "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1",
             "-d", self.url(database), "-c", statement],
            capture_output=True, text=True, check=False,
        )
        if done.returncode != 0:
            raise RuntimeError(f"psql failed: {done.stderr}")
        return done.stdout.strip()

    def new_database(self) -> str:
        name = f"ctgw_bench_{next(_databases)}"
        self.sql(f"CREATE DATABASE {name}")
        return name

    def drop(self, name: str) -> None:
        self.sql(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")


def _owner() -> pwd.struct_passwd | None:
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam(OWNER)
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin",
                        OWNER], check=True)
        return pwd.getpwnam(OWNER)


@contextlib.contextmanager
def cluster(workdir: Path) -> Iterator[Cluster]:
    server = Cluster(workdir / "postgres")
    try:
        server.start()
        yield server
    finally:
        with contextlib.suppress(RuntimeError):
            server.stop()


@dataclass(frozen=True)
class PgOptions:
    rounds: int = 3
    seconds: float = 5.0
    warmup: float = 1.0
    connections: int = 64
    leads: int = 1_000_000  # queued for the size and the scrape
    batch: int = 10_000
    scrapes: int = 5

    @property
    def intake(self) -> intake.IntakeOptions:
        return intake.IntakeOptions(seconds=self.seconds, warmup=self.warmup,
                                    connections=self.connections)


def wait_public(proc: procs.Proc, timeout: float = 30.0) -> procs.Proc:
    """Until the public listener answers: ``/readyz`` says 200 a moment before it is open
    (the relay sets readiness while the app is set up; the listener opens after)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError):
            if procs.http("GET", f"{proc.url}/snippet.js", timeout=2)[0] == 200:
                return proc
        time.sleep(0.02)
    raise RuntimeError(f"{proc.name}'s public listener not open within {timeout}s")


@contextlib.contextmanager
def _server(name: str, workdir: Path, server: Cluster) -> Iterator[tuple[procs.Proc, Any]]:
    workdir.mkdir(parents=True)
    if name == "bare":
        with procs.bare(workdir) as proc:
            yield proc, lambda: None
    elif name == "sqlite":
        db = workdir / "queue.db"
        with procs.gateway(workdir, db, sandbox=True) as proc:
            yield wait_public(proc), lambda: intake._committed(db)
    else:
        database = server.new_database()
        extra = {"CTGW_QUEUE": server.url(database)}
        try:
            with procs.gateway(workdir, workdir / "unused.db", sandbox=True, extra=extra) as proc:
                yield wait_public(proc), lambda: int(server.sql("SELECT count(*) FROM jobs",
                                                                 database))
        finally:
            server.drop(database)


def _round(name: str, workdir: Path, server: Cluster, opts: PgOptions) -> dict[str, Any]:
    with _server(name, workdir, server) as (proc, committed):
        warm = intake._load(proc.url, opts.intake, workdir, opts.warmup)
        cpu, steal = proc.cpu_seconds(), probe.cpu_times()
        run = intake._load(proc.url, opts.intake, workdir, opts.seconds)
        cpu, steal_share = proc.cpu_seconds() - cpu, probe.steal_since(steal)
        count = committed()
    row: dict[str, Any] = {**run.as_dict(), "server_cpu_s": round(cpu, 2),
                           "cpu_ms_per_ok": round(1e3 * cpu / max(1, run.ok), 4),
                           "cpu_steal": round(steal_share, 4)}
    if count is not None:
        row["committed"] = count
        row["durable_ok"] = count >= warm.ok + run.ok
    return row


def throughput(opts: PgOptions, workdir: Path, server: Cluster) -> dict[str, Any]:
    rounds: dict[str, list[dict[str, Any]]] = {t: [] for t in TARGETS}
    for r in range(opts.rounds):
        for name in TARGETS if r % 2 == 0 else TARGETS[::-1]:
            row = _round(name, workdir / f"tput-{r}-{name}", server, opts)
            rounds[name].append(row)
            say(f"pg intake round {r + 1}/{opts.rounds} {name:<10} {row['rate']:8.0f} acks/s"
                f"  errors={row['errors'] or 0}  cpu={row['cpu_ms_per_ok']:.3f} ms/ack"
                f"  steal={row['cpu_steal']:.1%}")
    rate = {name: median([row["rate"] for row in rows]) for name, rows in rounds.items()}
    return {
        "tool": "wrk" if opts.intake.use_wrk else "python", "connections": opts.connections,
        "seconds": opts.seconds, "rate": rate,
        "postgresql_vs_bare": rate["postgresql"] / rate["bare"],
        "sqlite_vs_bare": rate["sqlite"] / rate["bare"],
        "postgresql_vs_sqlite": rate["postgresql"] / rate["sqlite"],
        "errors_total": sum(sum(row["errors"].values()) for name in TARGETS[1:]
                            for row in rounds[name]),
        "durable_ok": all(row["durable_ok"] for name in TARGETS[1:] for row in rounds[name]),
        "rounds": rounds,
    }


def _scrapes(workdir: Path, url: str, sandbox: procs.Proc, count: int) -> dict[str, Any]:
    extra = {"CTGW_CALLTOUCH_URL": sandbox.url, "CTGW_SITE_ID": procs.SITE_ID,
             "CTGW_QUEUE": url}
    workdir.mkdir(parents=True)
    with procs.gateway(workdir, workdir / "unused.db", extra=extra, ready_timeout=300) as gw:
        memory._scrape(gw)  # the first scrape of a process builds what later ones reuse
        scrapes = [memory._scrape(gw) for _ in range(count)]
    return {"ready_seconds": round(gw.ready_seconds, 2), "queued": scrapes[-1][1],
            "scrape_ms": [round(s * 1e3, 2) for s, _ in scrapes],
            "scrape_ms_median": round(median([s for s, _ in scrapes]) * 1e3, 2)}


def size(opts: PgOptions, workdir: Path, server: Cluster) -> dict[str, Any]:
    workdir.mkdir(parents=True)
    empty, full = server.new_database(), server.new_database()
    with procs.sandbox(workdir, (0.0, 0.0)) as sandbox:
        procs.http("POST", f"{sandbox.url}/sandbox/config", {"fault": "503"})
        baseline = _scrapes(workdir / "empty", server.url(empty), sandbox, opts.scrapes)
        say(f"pg size: /metrics {baseline['scrape_ms_median']} ms on an empty database;"
            f" filling {opts.leads:,} leads")
        fill = asyncio.run(memory.fill_queue(server.url(full), opts.leads, opts.batch, "pg size"))
        say(f"pg size: filled {opts.leads:,} in {fill['seconds']} s ({fill['rate']:,}/s)")
        server.sql("VACUUM ANALYZE jobs", full)  # as autovacuum would, before measuring
        total = int(server.sql("SELECT pg_total_relation_size('jobs')", full))
        heap = int(server.sql("SELECT pg_relation_size('jobs')", full))
        indexes = int(server.sql("SELECT pg_indexes_size('jobs')", full))
        count = int(server.sql("SELECT count(*) FROM jobs", full))
        loaded = _scrapes(workdir / "full", server.url(full), sandbox, opts.scrapes)
    result = {
        "leads": opts.leads, "fill": fill, "count": count,
        "total_bytes": total, "heap_bytes": heap, "index_bytes": indexes,
        "bytes_per_lead": round(total / max(1, count), 1),
        "heap_bytes_per_lead": round(heap / max(1, count), 1),
        "index_bytes_per_lead": round(indexes / max(1, count), 1),
        "scrape_ms": loaded["scrape_ms_median"], "baseline_scrape_ms": baseline["scrape_ms_median"],
        "all_queued": loaded["queued"] == opts.leads, "loaded": loaded, "baseline": baseline,
    }
    say(f"pg size: {result['bytes_per_lead']} B/lead ({count:,} rows), /metrics "
        f"{loaded['scrape_ms_median']} ms with {loaded['queued']:,} queued")
    return result


def run(opts: PgOptions, workdir: Path) -> dict[str, Any]:
    workdir.mkdir(parents=True)
    results: dict[str, Any] = {"fsync_ms_before": probe.fsync_ms(workdir)}
    with cluster(workdir) as server:
        say(f"pg: PostgreSQL {server.sql('SHOW server_version')} on port {server.port}; "
            f"intake {opts.rounds} rounds x {len(TARGETS)} servers x {opts.seconds:g}s")
        results["throughput"] = throughput(opts, workdir, server)
        if opts.leads > 0:
            results["size"] = size(opts, workdir / "size", server)
    results["fsync_ms_after"] = probe.fsync_ms(workdir)
    return results
