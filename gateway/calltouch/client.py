"""One HTTP layer for every Calltouch method: send a :class:`Call`, get a :class:`Reply`.

The client knows HTTP, not the relay: it reports the moment a call's bytes were written through
the ``on_written`` callback it is given, and classifies statuses, timeouts and ``Retry-After``
generically (:func:`~gateway.calltouch.answers.http_failure`). What a 2xx body means is each
kind's to read.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import SimpleNamespace

import aiohttp

from gateway.calltouch.answers import Permanent, Retry, http_failure

OnWritten = Callable[[float], None]
_MAX_ANSWER = 1 << 20


@dataclass(frozen=True, slots=True)
class Call:
    """One request: ``form`` goes as a urlencoded body, ``json`` as a JSON one, else none."""

    method: str
    path: str
    query: Mapping[str, str] = field(default_factory=dict)
    form: Mapping[str, str] | None = None
    json: object = None
    headers: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Reply:
    """What came back: ``failure`` is set when HTTP alone decides every job's verdict."""

    status: int | None  # None: no answer at all (timeout, connection error)
    body: bytes
    failure: Retry | Permanent | None


async def _on_body_sent(
    session: aiohttp.ClientSession, ctx: SimpleNamespace, params: object
) -> None:
    on_written = (ctx.trace_request_ctx or {}).get("on_written")
    if on_written is not None:
        asyncio.get_running_loop().call_soon(_stamp, on_written)


async def _on_headers_sent(
    session: aiohttp.ClientSession, ctx: SimpleNamespace, params: object
) -> None:
    # A request without a body (a deals 1.0 GET) has no chunk: its headers are written just
    # after this hook, in the same step of the task, so the next turn's stamp follows them.
    if (ctx.trace_request_ctx or {}).get("bodyless"):
        await _on_body_sent(session, ctx, params)


def _stamp(on_written: OnWritten) -> None:
    on_written(time.monotonic())


def trace_config() -> aiohttp.TraceConfig:
    """Reports each request's write to its ``on_written`` callback, just after the write.

    ``on_request_headers_sent`` fires when the headers are only buffered; they leave with the
    body. So the first body chunk is the moment Calltouch's clock can start. The hook runs just
    before that write, in the same step of the task; the stamp is taken on the loop's next
    turn, after it, so a stamp is never earlier than the write it stands for. A request without
    a body is stamped the same way from its headers' hook, which it leaves right after.
    """
    config = aiohttp.TraceConfig()
    config.on_request_chunk_sent.append(_on_body_sent)
    config.on_request_headers_sent.append(_on_headers_sent)
    return config


def upstream_session(
    connector: aiohttp.BaseConnector, traces: Sequence[aiohttp.TraceConfig] = ()
) -> aiohttp.ClientSession:
    """The session every call to Calltouch goes on, :func:`trace_config` among its traces."""
    session = aiohttp.ClientSession(
        connector=connector, trace_configs=[trace_config(), *traces], raise_for_status=False
    )
    # aiohttp sends a GET again, once, when a kept-alive connection drops after the request
    # (deals 1.0 updates are GETs): a request the pacer never counted. The relay retries
    # itself. aiohttp has no public switch for this yet.
    session._retry_connection = False
    return session


class CalltouchClient:
    """Sends calls on a session made with :func:`trace_config` among its traces."""

    def __init__(self, session: aiohttp.ClientSession, base_url: str, timeout: float) -> None:
        self._session = session
        self._base = base_url.rstrip("/")
        self._timeout = aiohttp.ClientTimeout(total=timeout, sock_connect=min(timeout, 5.0))

    async def send(self, call: Call, on_written: OnWritten) -> Reply:
        """Send ``call``; ``on_written`` may be called several times (a body of many chunks)."""
        try:
            async with self._session.request(
                call.method, self._base + call.path,
                params=call.query or None, data=call.form, json=call.json,
                headers=call.headers or None, timeout=self._timeout,
                trace_request_ctx={
                    "on_written": on_written, "bodyless": call.form is None and call.json is None,
                },
                allow_redirects=False,  # a redirect followed would be a call never paced
            ) as resp:
                body = await _read_answer(resp.content)
                return Reply(resp.status, body, http_failure(resp.status, resp.headers, body))
        except TimeoutError:
            return Reply(None, b"", Retry("timeout", "timed out"))
        except (aiohttp.ClientError, OSError, asyncio.IncompleteReadError) as exc:
            return Reply(None, b"", Retry("network_error", type(exc).__name__))


async def _read_answer(content: aiohttp.StreamReader) -> bytes:
    """The answer, up to 1 MiB. ``read(n)`` gives what has arrived so far, not ``n`` bytes: an
    answer in several segments was cut at the first, and a delivered lead read as invalid."""
    chunks: list[bytes] = []
    size = 0
    while size < _MAX_ANSWER and (chunk := await content.read(_MAX_ANSWER - size)):
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)
