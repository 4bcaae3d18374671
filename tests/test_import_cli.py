"""``ct-gateway deals import``: a real CLI process posting a file to a real gateway, on each
queue backend."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import socket
import subprocess
from collections.abc import Awaitable, Callable
from pathlib import Path

import orjson
import pytest

from gateway.config import Settings
from gateway.queue import State, open_queue
from tests.conftest import TOKEN
from tests.support import QUEUE_BACKENDS, Gateway, queue_url_of
from tests.test_cli import cli

DEALS = 2_500  # three requests of 1,000 lines, the last one short


def deal(n: int) -> dict[str, object]:
    return {"orderNumber": f"erp-{n}", "status": "new", "statusDate": "01-02-2026 10:00:00",
            "revenue": 100 + n, "phones": [f"7900{n:07d}"]}


def write_file(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


@pytest.fixture(params=QUEUE_BACKENDS)
def queue_settings(settings: Settings, request: pytest.FixtureRequest, tmp_path: Path
                   ) -> Settings:
    return dataclasses.replace(settings, queue_url=queue_url_of(request, tmp_path))


async def held_jobs(settings: Settings) -> int:
    queue = await open_queue(settings.queue_url)
    try:
        stats = await queue.stats()
        return sum(stats.counts[s] for s in State if s not in (State.SPAM,))
    finally:
        await queue.close()


async def test_an_import_queues_every_deal_once_and_again_adds_nothing(
    start_gateway: Callable[[Settings], Awaitable[Gateway]], queue_settings: Settings,
    tmp_path: Path,
) -> None:
    # The sandbox gets none of it: the point is the intake, not the relay.
    quiet = dataclasses.replace(queue_settings, access_token="sandbox-token", batch_linger=60.0,
                                calltouch_url="http://127.0.0.1:9")
    gw = await start_gateway(quiet)
    lines = [orjson.dumps(deal(n)).decode() for n in range(DEALS)]
    file = write_file(tmp_path / "deals.ndjson", lines)

    def run() -> str:
        done = cli("deals", "import", str(file), "--url", gw.url, "--ops-url", gw.ops_url,
                   cwd=tmp_path, CTGW_IMPORT_TOKEN=TOKEN)
        assert done.returncode == 0, done
        return done.stdout

    first = await asyncio.to_thread(run)
    assert f"sent {DEALS}/{DEALS}, accepted {DEALS}, merged 0, rejected 0" in first, first
    assert await held_jobs(quiet) == DEALS
    again = await asyncio.to_thread(run)
    assert f"accepted 0, merged {DEALS}, rejected 0" in again, again
    assert await held_jobs(quiet) == DEALS  # nothing new queued


async def test_an_import_reads_a_pipe_once(
    start_gateway: Callable[[Settings], Awaitable[Gateway]], queue_settings: Settings,
    tmp_path: Path,
) -> None:
    # `deals import <(zcat deals.ndjson.gz)`: the count of lines read the pipe to its end.
    gw = await start_gateway(dataclasses.replace(queue_settings, access_token="sandbox-token",
                                                 calltouch_url="http://127.0.0.1:9"))
    fifo = tmp_path / "deals.pipe"
    os.mkfifo(fifo)

    def feed() -> None:
        with open(fifo, "w", encoding="utf-8") as pipe:  # opens once the CLI reads it
            pipe.writelines(orjson.dumps(deal(n)).decode() + "\n" for n in range(30))

    feeding = asyncio.create_task(asyncio.to_thread(feed))
    done = await asyncio.to_thread(cli, "deals", "import", str(fifo), "--url", gw.url,
                                   cwd=tmp_path, CTGW_IMPORT_TOKEN=TOKEN)
    await feeding
    assert done.returncode == 0, done
    assert "sent 30, accepted 30, merged 0, rejected 0" in done.stdout, done.stdout


async def test_an_import_lists_the_bad_lines_by_their_line_in_the_file(
    start_gateway: Callable[[Settings], Awaitable[Gateway]], queue_settings: Settings,
    tmp_path: Path,
) -> None:
    gw = await start_gateway(dataclasses.replace(queue_settings, access_token="sandbox-token"))
    lines = [orjson.dumps(deal(n)).decode() for n in range(1500)]
    lines[1200] = '{"orderNumber": ""}'
    lines[3] = "not json"
    file = write_file(tmp_path / "deals.ndjson", lines)
    done = await asyncio.to_thread(
        cli, "deals", "import", str(file), "--url", gw.url, cwd=tmp_path,
        CTGW_IMPORT_TOKEN=TOKEN,
    )
    assert done.returncode == 1, done  # something was rejected
    assert "line 4: None: " in done.stdout and "line 1201: orderNumber: " in done.stdout
    assert "accepted 1498, merged 0, rejected 2" in done.stdout


def test_an_import_without_a_token_names_the_variable(tmp_path: Path) -> None:
    file = write_file(tmp_path / "deals.ndjson", ["{}"])
    done = cli("deals", "import", str(file), cwd=tmp_path)
    assert done.returncode == 2 and "CTGW_IMPORT_TOKEN" in done.stderr, done


async def test_blank_lines_do_not_shift_the_line_numbers_of_errors(
    start_gateway: Callable[[Settings], Awaitable[Gateway]], settings: Settings,
    tmp_path: Path,
) -> None:
    gw = await start_gateway(dataclasses.replace(settings, access_token="sandbox-token"))
    lines = ["", orjson.dumps(deal(1)).decode(), "   ", "", '{"orderNumber": ""}',
             orjson.dumps(deal(2)).decode()]
    file = write_file(tmp_path / "deals.ndjson", lines)
    done = await asyncio.to_thread(
        cli, "deals", "import", str(file), "--url", gw.url, cwd=tmp_path,
        CTGW_IMPORT_TOKEN=TOKEN,
    )
    assert done.returncode == 1, done
    assert "line 5: orderNumber: " in done.stdout, done.stdout
    assert "accepted 2, merged 0, rejected 1" in done.stdout, done.stdout


def stopped_with_one_line(done: subprocess.CompletedProcess[str]) -> str:
    """An import that stops early says why in one line (no traceback) and exits 2."""
    assert done.returncode == 2, done
    [line] = done.stderr.strip().splitlines()
    assert line.startswith("ct-gateway: "), line
    return line


def test_an_import_of_a_missing_file_says_so_in_one_line(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere.ndjson"
    line = stopped_with_one_line(cli("deals", "import", str(missing), cwd=tmp_path,
                                     CTGW_IMPORT_TOKEN=TOKEN))
    assert str(missing) in line and "cannot read it" in line, line


def test_an_import_to_no_gateway_says_so_in_one_line(tmp_path: Path) -> None:
    file = write_file(tmp_path / "deals.ndjson", [orjson.dumps(deal(1)).decode()])
    with socket.socket() as unused:  # a port nobody listens on
        unused.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{unused.getsockname()[1]}"
    line = stopped_with_one_line(cli("deals", "import", str(file), "--url", url,
                                     cwd=tmp_path, CTGW_IMPORT_TOKEN=TOKEN))
    assert "cannot reach the gateway" in line and "lines posted before it: 0" in line, line


async def test_a_line_that_is_not_utf8_stops_the_import_naming_it(
    start_gateway: Callable[[Settings], Awaitable[Gateway]], settings: Settings,
    tmp_path: Path,
) -> None:
    gw = await start_gateway(dataclasses.replace(settings, access_token="sandbox-token"))
    file = tmp_path / "deals.ndjson"
    file.write_bytes(orjson.dumps(deal(1)) + b"\n\n" + b'{"orderNumber": "\xff"}\n')
    done = await asyncio.to_thread(
        cli, "deals", "import", str(file), "--url", gw.url, cwd=tmp_path,
        CTGW_IMPORT_TOKEN=TOKEN,
    )
    line = stopped_with_one_line(done)
    assert "line 3 is not UTF-8" in line and str(file) in line, line
