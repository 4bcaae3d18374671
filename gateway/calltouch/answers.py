"""What an upstream answer means for the jobs it carried (DESIGN.md, principle 5).

Every job of a call ends its attempt with one :data:`Verdict`:

* :class:`Delivered` — Calltouch took it (and named it: ``upstream_id``);
* :class:`Retry` — 429, 408, 5xx, a timeout, a connection error, or an item error that may pass
  later: send it again after a backoff;
* :class:`Permanent` — any other 4xx, or an answer that says the item is wrong: dead-letter it;
* :class:`Defer` — the item was not applied, through no fault of its own (a wrong token, a
  neighbour's validation error in its batch): visible again after ``delay``, no attempt counted;
* :class:`Convert` — send it again at once as another kind (a create Calltouch already holds
  becomes an update), no attempt counted.

:func:`http_failure` reads what the HTTP layer alone can tell; a 2xx body is each kind's to read.
A verdict's ``code`` is a stable, bounded name: it is the metric label of the answer.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC
from email.utils import parsedate_to_datetime

import orjson

_PII = re.compile(r"[^\s@]+@[^\s@]+|\+?\d[\d\s()\-]{4,}\d")


@dataclass(frozen=True, slots=True)
class Delivered:
    upstream_id: str
    code: str = "ok"
    # What the answer says of the item that is not personal (a lead's traffic source): kept
    # with the job and shown by its status.
    details: dict[str, object] | None = None


@dataclass(frozen=True, slots=True)
class Retry:
    code: str
    detail: str
    retry_after: float | None = None


@dataclass(frozen=True, slots=True)
class Permanent:
    code: str
    detail: str


@dataclass(frozen=True, slots=True)
class Defer:
    code: str
    detail: str
    delay: float = 0.0


@dataclass(frozen=True, slots=True)
class Convert:
    kind: str
    code: str = "converted"
    detail: str = ""


Verdict = Delivered | Retry | Permanent | Defer | Convert


def redact(text: str, limit: int = 160) -> str:
    """Keep an upstream message readable but free of e-mails and phone-like digit runs."""
    return _PII.sub("***", " ".join(text.split()))[:limit]


SCRUB_MIN = 4  # shorter values ("new", "2") would blank out the words of every message


def scrub(text: str, payload: bytes) -> str:
    """``text`` without any value of ``payload`` that Calltouch may quote back in a message:
    :func:`redact` knows phones and e-mails by their shape, not a name or a comment."""
    try:
        strings = _strings(orjson.loads(payload))
    except orjson.JSONDecodeError:
        return text
    # Compared as redact() leaves them: whitespace runs as one space.
    values = sorted({" ".join(v.split()) for v in strings} - {""}, key=len, reverse=True)
    text = " ".join(text.split())
    for value in (v for v in values if len(v) >= SCRUB_MIN):
        text = text.replace(value, "***")
        # A value cut off at the end of the text (redact() keeps the first 160 characters).
        cut = next((n for n in range(len(value) - 1, SCRUB_MIN - 1, -1)
                    if text.endswith(value[:n])), 0)
        if cut:
            text = text[:-cut] + "***"
    return text


def _strings(data: object) -> list[str]:
    if isinstance(data, str):
        return [data]
    if isinstance(data, dict):
        return [s for value in data.values() for s in _strings(value)]
    if isinstance(data, list):
        return [s for value in data for s in _strings(value)]
    return []


def retry_after(headers: Mapping[str, str]) -> float | None:
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


def error_text(body: bytes) -> str:
    """The message of an error body: JSON's ``message``/``error``/``errorMessage``, or the text."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return body.decode("utf-8", "replace")
    if not isinstance(data, dict):
        return str(data)
    for key in ("message", "error", "errorMessage"):
        if isinstance(data.get(key), str):
            return str(data[key])
    inner = data.get("data") if isinstance(data.get("data"), dict) else {}
    return orjson.dumps(inner or data).decode()


def http_failure(status: int, headers: Mapping[str, str], body: bytes) -> Retry | Permanent | None:
    """The verdict for every job of a call that HTTP alone decides; ``None`` for a 2xx."""
    if 200 <= status < 300:
        return None
    if status == 429:
        return Retry("rate_limited", "HTTP 429", retry_after(headers))
    if status == 408 or status >= 500:
        return Retry("server_error", f"HTTP {status}", retry_after(headers))
    return Permanent("client_error", f"HTTP {status}: " + redact(error_text(body)))
