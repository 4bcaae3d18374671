"""Runs last (by name): no log line of the whole run holds personal data or a token."""

from __future__ import annotations

import re
from dataclasses import replace
from typing import Any

import aiohttp
import orjson

from gateway.config import Settings
from tests.support import LOG_LINES, PII_SAMPLES, TOKEN, eventually, lead, post_lead, sandbox_config

_EMAIL = re.compile(r"[\w.+-]+@[\w-]+\.[\w.]+")
_PHONE = re.compile(r"(?<!\d)[78]\d{10}(?!\d)")


async def test_no_personal_data_in_any_log_line(
    start_gateway: Any, settings: Settings, sandbox: Any, http: aiohttp.ClientSession
) -> None:
    # Make sure the run has logged every path a lead takes: accepted, retried, dead.
    gw = await start_gateway(replace(settings, max_age=0.0))
    await sandbox_config(http, sandbox.url, fault="503")
    assert (await post_lead(http, gw.url, lead(1)))[0] == 202
    await post_lead(http, gw.url, {"phoneNumber": "+7 920 555-00-55 ext", "email": "ivan@"})

    async def logged_dead() -> bool:
        return any("dead job=" in line for line in LOG_LINES)

    await eventually(logged_dead, timeout=10)
    leaks = [
        line for line in LOG_LINES
        if any(s in line for s in (*PII_SAMPLES, TOKEN)) or _EMAIL.search(line)
        or _PHONE.search(line)
    ]
    assert leaks == []


def test_every_gateway_log_line_is_a_json_object() -> None:
    assert LOG_LINES, "no log line was kept"
    # Not log lines: the sandbox (a stand-in for Calltouch) announcing its port, and the CLI's
    # one-line "ct-gateway: VARIABLE: problem" answer to a bad setting; test_uploads' own server.
    plain = ("sandbox listening", "uploads listening", "ct-gateway: ")
    ours = [line for line in LOG_LINES if not line.startswith(plain)]
    bad = [line for line in ours if not _is_event(line)]
    assert bad == []


def _is_event(line: str) -> bool:
    try:
        entry = orjson.loads(line)
    except orjson.JSONDecodeError:
        return False
    return isinstance(entry, dict) and {"ts", "level", "logger", "event"} <= entry.keys()
