"""Read the back-office API's bodies: one item, a JSON array of items, or NDJSON as a stream.

``application/json`` (or no content type) is read whole, up to ``max_json`` bytes: one object
is a single item, an array holds items. NDJSON (``application/x-ndjson``, ``application/jsonl``,
``application/x-jsonlines``) is one item a line and is never held whole: it is read chunk by
chunk and cut into lines here, so that a 64 MiB upload costs one line of memory at a time.

A bad item does not fail the body: it comes as an :class:`Item` with an ``error``, for the
caller to count and report. Only a body that cannot be read at all raises :class:`BadRequest`.
No message holds a value of the body, so none can carry personal data.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Literal

import orjson
from aiohttp import StreamReader, web
from aiohttp.http_exceptions import HttpProcessingError

from gateway.errors import BadRequest, ClientGone, FieldError, SlowClient
from gateway.intake.bodies import media_type

JSON_TYPES = frozenset({"", "application/json"})
NDJSON_TYPES = frozenset({"application/x-ndjson", "application/jsonl", "application/x-jsonlines"})
# A deal nests five levels (order → matching[] → {} → callContactParams{} → phones[]).
MAX_DEPTH = 8

Position = tuple[Literal["index", "line"], int]


@dataclass(frozen=True, slots=True)
class Item:
    """One item of a body: ``("index", i)`` of an array (0 for a single object) or
    ``("line", n)`` of NDJSON (1-based); ``value`` is ``None`` exactly when ``error`` is set."""

    position: Position
    value: dict[str, Any] | None
    error: FieldError | None


class Upload:
    """The items of a body, to be iterated once. ``single``: the body was one JSON object.

    Iterating an NDJSON upload reads the body, and may raise :class:`BadRequest` midway (413
    past ``max_ndjson``, 408, a broken connection): the items yielded before stay valid, and a
    caller that has committed them keeps them.
    """

    __slots__ = ("_items", "single")

    def __init__(self, single: bool, items: AsyncIterator[Item]) -> None:
        self.single = single
        self._items = items

    def __aiter__(self) -> AsyncIterator[Item]:
        return self._items


async def open_upload(
    request: web.Request, max_json: int, max_ndjson: int, max_line: int = 1 << 20,
    *, idle: float | None = None,
) -> Upload:
    """The items of ``request``'s body; ``idle``: seconds each chunk may take (408 beyond).

    Raises :class:`BadRequest` for a body that is not one of ours: 415 for another media type,
    413 past the limit, 400 for an empty body or (JSON) one that does not parse.
    """
    kind = media_type(request.headers.get("Content-Type", ""))
    if kind in JSON_TYPES:
        return _from_json(await _read_whole(request, max_json, idle))
    if kind in NDJSON_TYPES:
        return await _open_ndjson(request, max_ndjson, max_line, idle)
    raise BadRequest(
        "unsupported_media_type", "send application/json or application/x-ndjson", status=415
    )


def _too_large(limit: int) -> BadRequest:
    return BadRequest("body_too_large", f"the body is over {limit} bytes", status=413)


def _bad(position: Position, code: str, what: str) -> Item:
    where = "line" if position[0] == "line" else "item"
    return Item(position, None, FieldError(None, code, f"{where} {position[1]} {what}"))


async def _next_chunk(content: StreamReader, idle: float | None) -> bytes:
    """What has arrived of the body (``b""`` at its end), as :func:`listener.read_body` maps
    its failures. Straight from ``request.content``: aiohttp's ``client_max_size`` bounds only
    ``request.read()``, so the limits here are this module's own."""
    try:
        async with asyncio.timeout(idle):
            return await content.readany()
    except TimeoutError:
        raise SlowClient from None
    except (HttpProcessingError, web.RequestPayloadError):  # e.g. gzip that is not
        error = BadRequest("malformed_body", "the body cannot be decoded", status=400)
        error.close_connection = True  # the rest of the stream cannot be read either
        raise error from None
    except ConnectionError:
        raise ClientGone from None


async def _read_whole(request: web.Request, limit: int, idle: float | None) -> bytearray:
    if (request.content_length or 0) > limit:
        raise _too_large(limit)
    body = bytearray()
    while chunk := await _next_chunk(request.content, idle):
        if len(body) + len(chunk) > limit:  # a chunked body, or gzip, has no honest length
            raise _too_large(limit)
        body += chunk
    return body


def _too_deep(value: object, room: int) -> bool:
    """Does ``value`` nest more than ``room`` containers? Stops at the limit, so the walk's
    own recursion is bounded (orjson's is, at 1024, and raises)."""
    if isinstance(value, dict):
        children: Iterable[object] = value.values()
    elif isinstance(value, list):
        children = value
    else:
        return False
    return room == 0 or any(_too_deep(child, room - 1) for child in children)


def _checked(position: Position, value: object) -> Item:
    if not isinstance(value, dict):
        return _bad(position, "not_an_object", "is not a JSON object")
    if _too_deep(value, MAX_DEPTH):
        return _bad(position, "too_deep", f"nests deeper than {MAX_DEPTH} levels")
    return Item(position, value, None)


def _from_json(body: bytearray) -> Upload:
    if not body.strip():
        raise BadRequest("empty_body", "the body is empty")
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise BadRequest("invalid_json", "the body is not valid UTF-8 JSON") from None
    if isinstance(data, dict):
        return Upload(True, _each([_checked(("index", 0), data)]))
    if isinstance(data, list):
        if not data:  # as an NDJSON body without a line: nothing was sent
            raise BadRequest("empty_body", "the array holds no items")
        return Upload(False, _each(_checked(("index", i), v) for i, v in enumerate(data)))
    raise BadRequest("not_an_object", "the body must be a JSON object or an array of objects")


async def _each(items: Iterable[Item]) -> AsyncIterator[Item]:
    for item in items:
        yield item


class LineSplitter:
    """Cuts NDJSON bytes, fed in chunks cut anywhere, into items. Holds at most one line of
    ``max_line`` bytes: of a longer line it keeps only the count until its newline.

    Not aiohttp's ``readline``: past its limit it raises and the rest of the body is lost.
    """

    def __init__(self, max_line: int) -> None:
        self._max = max_line
        self._parts: list[bytes] = []
        self._size = 0
        self._long = False
        self._line = 0

    def feed(self, chunk: bytes) -> Iterator[Item]:
        *ends, rest = chunk.split(b"\n")
        for piece in ends:
            self._add(piece)
            if (item := self._end()) is not None:
                yield item
        self._add(rest)

    def close(self) -> Iterator[Item]:
        """The last line, when the body does not end with a newline."""
        if (self._parts or self._long) and (item := self._end()) is not None:
            yield item

    def _add(self, piece: bytes) -> None:
        if self._long or not piece:
            return
        self._size += len(piece)
        if self._size > self._max + 1:  # one byte of room for the \r of a CRLF
            self._long = True
            self._parts.clear()
        else:
            self._parts.append(piece)

    def _end(self) -> Item | None:
        self._line += 1
        parts, long = self._parts, self._long
        self._parts, self._size, self._long = [], 0, False
        line = parts[0] if len(parts) == 1 else b"".join(parts)
        if long or len(line) - line.endswith(b"\r") > self._max:
            return _bad(("line", self._line), "line_too_long", f"is over {self._max} bytes")
        if not line or line.isspace():
            return None  # a blank line is no item, though it is counted
        return _decode(("line", self._line), line)


def _decode(position: Position, line: bytes) -> Item:
    try:
        value = orjson.loads(line)  # JSON's whitespace takes a CRLF's \r
    except orjson.JSONDecodeError:
        return _bad(position, "invalid_json", "is not valid UTF-8 JSON")
    # Nesting needs an opening bracket a level: with few in the line, skip the walk.
    if isinstance(value, dict) and line.count(b"{") + line.count(b"[") <= MAX_DEPTH:
        return Item(position, value, None)
    return _checked(position, value)


async def _open_ndjson(
    request: web.Request, limit: int, max_line: int, idle: float | None
) -> Upload:
    if (request.content_length or 0) > limit:
        raise _too_large(limit)
    items = _stream(request.content, LineSplitter(max_line), limit, idle)
    try:  # the first item, or the end of a body with none, before the caller answers
        first = await anext(items)
    except StopAsyncIteration:
        raise BadRequest("empty_body", "the body holds no line") from None
    return Upload(False, _prepend(first, items))


async def _stream(
    content: StreamReader, lines: LineSplitter, limit: int, idle: float | None
) -> AsyncIterator[Item]:
    received = 0
    while chunk := await _next_chunk(content, idle):
        room = limit - received
        received += len(chunk)
        # The lines that end within the limit are items, however the chunks fell.
        for item in lines.feed(chunk[:room] if len(chunk) > room else chunk):
            yield item
        if received > limit:
            raise _too_large(limit)
    for item in lines.close():
        yield item


async def _prepend(first: Item, rest: AsyncIterator[Item]) -> AsyncIterator[Item]:
    yield first
    async for item in rest:
        yield item
