"""Calltouch API client: builds register requests and classifies every answer.

Answers fall in three kinds (DESIGN.md, principle 5):

* :class:`Delivered` — 2xx with a ``requestId``;
* :class:`Retry` — 429, 408, 5xx, timeouts, connection errors;
* :class:`Permanent` — any other 4xx, and a 2xx without a ``requestId`` (Calltouch answers
  200 with an error text when no parameter was given).
"""

from __future__ import annotations

import asyncio
import math
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC
from email.utils import parsedate_to_datetime
from types import SimpleNamespace
from typing import Any

import aiohttp
import orjson

from .pacing import Slot

REGISTER_PATH = "/calls-service/RestAPI/requests/{site_id}/register/"
_PII = re.compile(r"[^\s@]+@[^\s@]+|\+?\d[\d\s()\-]{4,}\d")


@dataclass(frozen=True, slots=True)
class Delivered:
    upstream_id: str
    outcome: str = "ok"


@dataclass(frozen=True, slots=True)
class Retry:
    outcome: str
    reason: str
    retry_after: float | None = None


@dataclass(frozen=True, slots=True)
class Permanent:
    outcome: str
    reason: str


Outcome = Delivered | Retry | Permanent


def redact(text: str, limit: int = 160) -> str:
    """Keep an upstream message readable but free of e-mails and phone-like digit runs."""
    return _PII.sub("***", " ".join(text.split()))[:limit]


def register_form(fields: Mapping[str, Any]) -> dict[str, str]:
    """Calltouch's form encoding: ``customField[NAME]``, tags comma-joined."""
    form: dict[str, str] = {}
    for name, value in fields.items():
        if name == "customFields":
            form.update({f"customField[{k}]": str(v) for k, v in value.items()})
        elif name == "tags":
            form["tags"] = ",".join(value)
        else:
            form[name] = str(value)
    return form


def _retry_after(headers: Mapping[str, str]) -> float | None:
    """Seconds to wait, from delay-seconds or an HTTP-date (RFC 9110), within [0, 1 h]."""
    value = headers.get("Retry-After", "").strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = parsedate_to_datetime(value)
        except (TypeError, ValueError, OverflowError):
            return None
        if when.tzinfo is None:  # an HTTP-date is always GMT
            when = when.replace(tzinfo=UTC)
        seconds = when.timestamp() - time.time()
    return min(max(seconds, 0.0), 3600.0) if math.isfinite(seconds) else None


def _error_text(body: bytes) -> str:
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return body.decode("utf-8", "replace")
    if not isinstance(data, dict):
        return str(data)
    inner = data.get("data") if isinstance(data.get("data"), dict) else {}
    for key in ("message", "error", "errorMessage"):
        if isinstance(data.get(key), str):
            return str(data[key])
    return orjson.dumps(inner or data).decode()


def classify(status: int, headers: Mapping[str, str], body: bytes) -> Outcome:
    if 200 <= status < 300:
        try:
            data = orjson.loads(body)
        except orjson.JSONDecodeError:
            data = None
        if isinstance(data, dict) and data.get("requestId") not in (None, ""):
            return Delivered(str(data["requestId"]))
        return Permanent("invalid_answer", f"HTTP {status} without requestId: "
                         + redact(_error_text(body)))
    if status == 429:
        return Retry("rate_limited", "HTTP 429", _retry_after(headers))
    if status == 408 or status >= 500:
        return Retry("server_error", f"HTTP {status}", _retry_after(headers))
    return Permanent("client_error", f"HTTP {status}: " + redact(_error_text(body)))


async def _on_body_sent(
    session: aiohttp.ClientSession, ctx: SimpleNamespace, params: object
) -> None:
    slot = (ctx.trace_request_ctx or {}).get("slot")
    if isinstance(slot, Slot) and slot.sent_at is None:
        asyncio.get_running_loop().call_soon(_stamp, slot)


def _stamp(slot: Slot) -> None:
    slot.mark_sent(time.monotonic())


def trace_config() -> aiohttp.TraceConfig:
    """Stamps each request's pacer slot just after it is written to the socket.

    ``on_request_headers_sent`` fires when the headers are only buffered; they leave with the
    body, later (up to 11 ms under load, measured). Every register call has a body, so the
    first body chunk is the moment Calltouch's clock can start. The hook runs just *before*
    that write, in the same step of the task; the stamp is taken on the loop's next turn, just
    after it. The pacer needs that side: a stamp no earlier than the write keeps request *k*
    at least a window after request *k - n* even if the thread is preempted in between. (The
    transport hands a small request to the kernel at once unless its buffer already holds
    unsent bytes, which a fresh request on an idle keep-alive connection never finds.)
    """
    config = aiohttp.TraceConfig()
    config.on_request_chunk_sent.append(_on_body_sent)
    return config


class CalltouchClient:
    def __init__(
        self, session: aiohttp.ClientSession, base_url: str, site_id: str, timeout: float
    ) -> None:
        self._session = session
        self._url = base_url.rstrip("/") + REGISTER_PATH.format(site_id=site_id)
        self._timeout = aiohttp.ClientTimeout(total=timeout, sock_connect=min(timeout, 5.0))

    async def register(self, fields: Mapping[str, Any], slot: Slot) -> Outcome:
        try:
            async with self._session.post(
                self._url,
                data=register_form(fields),
                timeout=self._timeout,
                trace_request_ctx={"slot": slot},
            ) as resp:
                body = await resp.content.read(1 << 20)
                return classify(resp.status, resp.headers, body)
        except TimeoutError:
            return Retry("timeout", "timed out")
        except (aiohttp.ClientError, OSError, asyncio.IncompleteReadError) as exc:
            return Retry("network_error", type(exc).__name__)
