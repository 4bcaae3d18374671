"""The ``ct-gateway`` command as an operator meets it: real ``python -m gateway`` processes, a
clean environment (no ``CTGW_*`` from outside), real SQLite files in ``tmp_path``."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Awaitable
from pathlib import Path

import orjson
import pytest

import gateway
from gateway.__main__ import store_label
from gateway.queue import Put, Queue, open_queue
from tests.support import LOG_LINES, PII_SAMPLES, Process, lead

STORE_COMMANDS = [("queue", "stats"), ("dead", "list"), ("dead", "replay", "--all")]
# Ports 0, so that a gateway started here never meets another test's.
FREE_PORTS = {"CTGW_LISTEN": "127.0.0.1:0", "CTGW_OPS_LISTEN": "127.0.0.1:0"}


def clean_env(**extra: str) -> dict[str, str]:
    return {**{k: v for k, v in os.environ.items() if not k.startswith("CTGW_")}, **extra}


def cli(*args: str, cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [sys.executable, "-m", "gateway", *args], env=clean_env(**env), cwd=cwd,
        capture_output=True, text=True, timeout=60, check=False,
    )
    LOG_LINES.extend(result.stderr.splitlines())  # the logs; stdout is the command's answer
    assert not [s for s in PII_SAMPLES if s in result.stdout], result.stdout
    return result


def config_error(result: subprocess.CompletedProcess[str]) -> str:
    """The one line a configuration error prints; exit code 2, nothing else on either stream."""
    assert result.returncode == 2, result
    assert result.stdout == ""
    [line] = result.stderr.splitlines()
    assert line.startswith("ct-gateway: CTGW_"), line
    return line


def url(path: Path) -> str:
    return f"sqlite:///{path}"


def make_store(path: Path, dead: int = 0) -> list[str]:
    """A queue file holding ``dead`` dead letters (with personal data); returns their ids."""

    async def fill() -> list[str]:
        queue = await open_queue(url(path))
        try:
            now = time.time()
            leads = [Put("lead", orjson.dumps(lead(i)), f"k{i}") for i in range(dead)]
            await queue.put_many(leads, now)
            jobs = await queue.lease("lead", dead, now + 1, 30) if dead else []
            for job in jobs:
                assert await queue.bury(job, "HTTP 400: bad", now + 2)
            return [job.id for job in jobs]
        finally:
            await queue.close()

    return asyncio.run(fill())


@pytest.mark.parametrize("command", STORE_COMMANDS)
def test_store_commands_take_only_the_store_settings(
    tmp_path: Path, command: tuple[str, ...]
) -> None:
    db = tmp_path / "q.db"
    make_store(db, dead=2)
    # No site id, and a Calltouch variable that serve would refuse: neither stops a store command.
    done = cli(*command, cwd=tmp_path, CTGW_QUEUE=url(db), CTGW_RATE="abc", CTGW_SITE_ID="x")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[0] == f"queue: {db.resolve()}"
    assert len(done.stdout.splitlines()) > 1  # and then what the command says


def test_dead_list_and_replay_name_the_dead_letters(tmp_path: Path) -> None:
    db = tmp_path / "q.db"
    ids = make_store(db, dead=2)
    listing = cli("dead", "list", cwd=tmp_path, CTGW_QUEUE=url(db))
    assert [line.split("\t")[0] for line in listing.stdout.splitlines()[1:]] == ids
    replay = cli("dead", "replay", "--id", ids[0], cwd=tmp_path, CTGW_QUEUE=url(db))
    assert replay.stdout.splitlines()[1:] == ["replayed 1"]


def test_dead_list_and_replay_take_a_kind_and_a_site(tmp_path: Path) -> None:
    db = tmp_path / "q.db"
    ids = make_store(db, dead=2)
    listing = cli("dead", "list", "--kind", "lead", "--site", "default", cwd=tmp_path,
                  CTGW_QUEUE=url(db))
    rows = [line.split("\t") for line in listing.stdout.splitlines()[1:]]
    assert [(row[0], row[1], row[2]) for row in rows] == [(i, "default", "lead") for i in ids]
    for other in (("--kind", "comment"), ("--site", "shop")):
        none = cli("dead", "list", *other, cwd=tmp_path, CTGW_QUEUE=url(db))
        assert none.stdout.splitlines()[1:] == ["no dead letters"], other
        nothing = cli("dead", "replay", *other, cwd=tmp_path, CTGW_QUEUE=url(db))
        assert nothing.stdout.splitlines()[1:] == ["replayed 0"], other
    replay = cli("dead", "replay", "--kind", "lead", cwd=tmp_path, CTGW_QUEUE=url(db))
    assert replay.stdout.splitlines()[1:] == ["replayed 2"]


def test_dead_list_says_when_there_are_none(tmp_path: Path) -> None:
    db = tmp_path / "q.db"
    make_store(db)
    done = cli("dead", "list", cwd=tmp_path, CTGW_QUEUE=url(db))
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [f"queue: {db.resolve()}", "no dead letters"]


@pytest.mark.parametrize("command", STORE_COMMANDS)
def test_store_commands_refuse_a_queue_that_does_not_exist(
    tmp_path: Path, command: tuple[str, ...]
) -> None:
    line = config_error(cli(*command, cwd=tmp_path))  # the default: ./ct-gateway.db
    assert line == f"ct-gateway: CTGW_QUEUE: no queue at {tmp_path.resolve() / 'ct-gateway.db'}"
    missing = tmp_path / "no" / "dir" / "q.db"
    line = config_error(cli(*command, cwd=tmp_path, CTGW_QUEUE=url(missing)))
    assert line == f"ct-gateway: CTGW_QUEUE: no queue at {missing.resolve()}"
    assert list(tmp_path.iterdir()) == []  # neither a file nor a directory was made


def test_serve_never_makes_a_missing_directory(tmp_path: Path) -> None:
    missing = tmp_path / "no" / "dir" / "q.db"
    line = config_error(cli("serve", "--sandbox", cwd=tmp_path, CTGW_QUEUE=url(missing),
                            **FREE_PORTS))
    directory = missing.parent.resolve()
    assert line == f"ct-gateway: CTGW_QUEUE: the directory {directory} does not exist"
    assert list(tmp_path.iterdir()) == []


def test_serve_names_the_store_it_cannot_open(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")  # a regular file where the queue's directory should be
    db = tmp_path / "file" / "q.db"
    line = config_error(cli("serve", "--sandbox", cwd=tmp_path, CTGW_QUEUE=url(db), **FREE_PORTS))
    assert re.fullmatch(
        rf"ct-gateway: CTGW_QUEUE: cannot open the queue at {re.escape(str(db.resolve()))}: \S.*",
        line,
    ), line


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a read-only directory")
def test_serve_in_a_read_only_directory_names_the_store(tmp_path: Path) -> None:
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(0o500)
    try:
        line = config_error(cli("serve", "--sandbox", cwd=tmp_path,
                                CTGW_QUEUE=url(folder / "q.db"), **FREE_PORTS))
    finally:
        folder.chmod(0o700)
    assert line.startswith(f"ct-gateway: CTGW_QUEUE: cannot open the queue at {folder.resolve()}")
    assert "cannot listen" not in line


def test_a_port_in_use_is_a_listener_error(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = cli("serve", "--sandbox", cwd=tmp_path, CTGW_QUEUE=url(tmp_path / "q.db"),
                   CTGW_LISTEN=f"127.0.0.1:{port}", CTGW_OPS_LISTEN="127.0.0.1:0")
    assert done.returncode == 1
    last = done.stderr.splitlines()[-1]
    assert last.startswith("ct-gateway: cannot listen: ") and str(port) in last
    assert "CTGW_QUEUE" not in done.stderr


@pytest.mark.parametrize("raw", ["abc", "10/s", "0"])
def test_a_bad_rate_says_the_expected_form(tmp_path: Path, raw: str) -> None:
    line = config_error(cli("serve", "--sandbox", cwd=tmp_path, CTGW_RATE=raw))
    assert line.startswith("ct-gateway: CTGW_RATE: expected requests per second, a number above 0"
                           " and at most 1000, e.g. 5")
    assert "could not convert" not in line


def _serve_lines(tmp_path: Path, processes: list[Process], **env: str) -> list[str]:
    """Start ``serve --sandbox`` on ``tmp_path/q.db``, stop it with SIGTERM; its output lines."""
    proc = Process([sys.executable, "-m", "gateway", "serve", "--sandbox"],
                   clean_env(CTGW_QUEUE=url(tmp_path / "q.db"), **FREE_PORTS, **env),
                   "listening public")
    processes.append(proc)
    proc.proc.send_signal(signal.SIGTERM)
    assert proc.proc.wait(20) == 0, proc.lines
    return proc.lines


def test_a_second_serve_on_one_sqlite_file_is_refused(
    tmp_path: Path, processes: list[Process]
) -> None:
    # Two gateways on one file would each relay at the whole pace: 10 a second at Calltouch.
    first = Process([sys.executable, "-m", "gateway", "serve", "--sandbox"],
                    clean_env(CTGW_QUEUE=url(tmp_path / "q.db"), **FREE_PORTS),
                    "listening public")
    processes.append(first)
    line = config_error(cli("serve", "--sandbox", cwd=tmp_path, CTGW_QUEUE=url(tmp_path / "q.db"),
                            **FREE_PORTS))
    assert line == (f"ct-gateway: CTGW_QUEUE: {tmp_path / 'q.db'} is served by another gateway"
                    f" (pid {first.proc.pid}); an SQLite queue has one, a fleet shares PostgreSQL")
    assert cli("dead", "list", cwd=tmp_path, CTGW_QUEUE=url(tmp_path / "q.db")).returncode == 0
    first.proc.kill()  # a crash leaves no lock behind
    first.proc.wait(20)
    _serve_lines(tmp_path, processes)  # starts, and stops cleanly


@pytest.mark.parametrize(("rate", "warned"), [("6", True), ("5", False), ("2.5", False)])
def test_serve_warns_of_a_rate_above_calltouchs_limit(
    tmp_path: Path, processes: list[Process], rate: str, warned: bool
) -> None:
    lines = _serve_lines(tmp_path, processes, CTGW_RATE=rate)
    warnings = [line for line in lines if '"level":"warning"' in line]
    assert bool(warnings) == warned, lines
    if warned:
        [warning] = warnings
        assert "CTGW_RATE" in warning and "5 requests per second per IP" in warning


def test_serve_creates_the_store_0600_and_names_it(
    tmp_path: Path, processes: list[Process]
) -> None:
    lines = _serve_lines(tmp_path, processes)
    db = tmp_path / "q.db"
    assert stat.S_IMODE(db.stat().st_mode) == 0o600
    assert any(f'"event":"queue: {db.resolve()}"' in line for line in lines), lines


def test_sandbox_with_a_site_id_refuses_to_start(tmp_path: Path) -> None:
    line = config_error(cli("serve", "--sandbox", cwd=tmp_path, CTGW_SITE_ID="12345",
                            **FREE_PORTS))
    assert line.startswith("ct-gateway: CTGW_SITE_ID: ") and "--sandbox" in line
    assert list(tmp_path.iterdir()) == []  # refused before the store was touched


def test_version() -> None:
    done = subprocess.run([sys.executable, "-m", "gateway", "--version"], env=clean_env(),
                          capture_output=True, text=True, timeout=30, check=True)
    assert done.stdout == f"ct-gateway {gateway.__version__}\n"
    assert gateway.__version__ == "0.1.0"


def _undocumented(help_text: str) -> list[str]:
    """Option lines of an argparse help that carry no help text of their own."""
    options = [line for line in help_text.splitlines() if re.match(r"^  -", line)]
    return [line for line in options if not re.match(r"^  -.*?\S {2,}\S", line)]


@pytest.mark.parametrize("command", [(), ("serve",), ("queue",), ("dead", "list"),
                                     ("dead", "replay")])
def test_help_is_plain_text_and_documents_every_option(
    tmp_path: Path, command: tuple[str, ...]
) -> None:
    done = cli(*command, "--help", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert "``" not in done.stdout and ":mod:" not in done.stdout
    assert _undocumented(done.stdout) == []
    if command[:1] == ("dead",):
        assert "CTGW_QUEUE" in done.stdout  # what a store command reads


def test_serve_help_names_the_environment(tmp_path: Path) -> None:
    text = cli("serve", "--help", cwd=tmp_path).stdout
    assert "from the environment" in text and "README" in text
    for variable in ("CTGW_SITE_ID", "CTGW_QUEUE", "CTGW_LISTEN", "CTGW_OPS_LISTEN", "CTGW_RATE",
                     "CTGW_LOG_LEVEL"):
        assert variable in text


def test_a_store_listing_cut_short_by_its_reader_is_no_traceback(tmp_path: Path) -> None:
    # `ct-gateway queue stats | head`: here the reader is gone before the first line is written.
    db = f"sqlite:///{tmp_path / 'q.db'}"
    asyncio.run(_closed(open_queue(db)))
    shell = f"{sys.executable} -m gateway queue stats | true"
    done = subprocess.run(["sh", "-c", shell], env=clean_env(CTGW_QUEUE=db), cwd=tmp_path,
                          capture_output=True, text=True, timeout=60, check=False)
    assert done.stderr == "", done.stderr


async def _closed(opening: Awaitable[Queue]) -> None:
    await (await opening).close()


def test_a_server_store_is_named_without_its_password() -> None:
    # No file to check on this machine for a server's store; its credentials are never shown.
    url = "postgresql://ctgw:s3cret-pass@db.internal:5432/ctgw"
    for create in (True, False):
        assert store_label(url, create=create) == "postgresql://db.internal:5432/ctgw"
