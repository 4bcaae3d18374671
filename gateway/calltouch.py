"""Calltouch API client: builds register requests and classifies every answer.

Answers fall in three kinds (DESIGN.md, principle 5):

* :class:`Delivered` — 2xx with a ``requestId``;
* :class:`Retry` — 429, 408, 5xx, timeouts, connection errors;
* :class:`Permanent` — any other 4xx, and a 2xx without a ``requestId`` (Calltouch answers
  200 with an error text when no parameter was given).
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
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
    try:
        return min(max(float(headers.get("Retry-After", "")), 0.0), 3600.0)
    except ValueError:
        return None


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
    if isinstance(slot, Slot):
        slot.mark_sent(time.monotonic())  # the first chunk only: mark_sent keeps the first


def trace_config() -> aiohttp.TraceConfig:
    """Stamps each request's pacer slot when it is written to the socket.

    ``on_request_headers_sent`` fires when the headers are only buffered; they leave with the
    body, later (up to 11 ms under load, measured). Every register call has a body, so the
    first body chunk is the moment Calltouch's clock can start.
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
