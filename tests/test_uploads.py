"""The back-office bodies: one object, an array, or NDJSON read as a stream.

A tiny app answers what :func:`open_upload` gave it (the items, or the error shape with the
items read before the error); the edge's wrapper turns anything unexpected into a 500, which
the fuzz tests look for. The memory test streams 64 MiB through a server in a subprocess.
"""

from __future__ import annotations

import asyncio
import gzip
import http.client
import itertools
import sys
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from gateway.errors import GatewayError
from gateway.intake.edge import edge, error_body
from gateway.intake.uploads import MAX_DEPTH, Item, LineSplitter, open_upload
from gateway.ops.metrics import RequestStats
from tests.support import PII_SAMPLES, Process, child_env

NDJSON = "application/x-ndjson"
NDJSON_TYPES = (NDJSON, "application/jsonl", "application/x-jsonlines; charset=utf-8")
DEAL = {"orderNumber": "d-1", "status": "Визит", "revenue": "1000.00"}
PERSONAL = {"fio": PII_SAMPLES[0], "phones": [PII_SAMPLES[2]], "email": PII_SAMPLES[3]}


@dataclass(frozen=True)
class Limits:
    max_json: int = 4096
    max_ndjson: int = 4096
    max_line: int = 256
    idle: float | None = None


def _item(item: Item) -> dict[str, Any]:
    return {"position": list(item.position), "value": item.value,
            "error": None if item.error is None else item.error.as_dict()}


def make_app(routes: dict[str, Limits] | None = None) -> web.Application:
    """An app whose routes answer the items of their body, each route with its limits."""
    app = web.Application()
    for path, limits in (routes or {"/upload": Limits()}).items():
        app.router.add_post(path, edge(path, _handler(limits), RequestStats((1.0,))))
    return app


def _handler(limits: Limits) -> Any:
    async def answer(request: web.Request) -> web.Response:
        upload = await open_upload(request, limits.max_json, limits.max_ndjson, limits.max_line,
                                   idle=limits.idle)
        items: list[dict[str, Any]] = []
        try:
            async for item in upload:
                items.append(_item(item))
        except GatewayError as exc:  # midway: the error shape, and what came before it
            shape = orjson.loads(error_body(exc.error, [e.as_dict() for e in exc.errors]))
            return web.json_response({**shape, "items": items}, status=exc.status)
        return web.json_response({"single": upload.single, "items": items})

    return answer


@pytest.fixture
def serve(aiohttp_client: Any) -> Callable[..., Awaitable[Any]]:
    """``await serve(limits)``: a test client of an app with those limits, on port 0."""

    async def start(limits: Limits = Limits()) -> Any:
        return await aiohttp_client(make_app({"/upload": limits}))

    return start


@pytest.fixture
async def client(serve: Callable[..., Awaitable[Any]]) -> Any:
    return await serve()


async def post(
    client: Any, body: bytes, content_type: str | None, chunk: int | None = None
) -> tuple[int, dict[str, Any]]:
    """Post ``body``; in ``chunk``-byte pieces (chunked, no Content-Length) when given."""
    data: Any = body if chunk is None else pieces(body, chunk)
    if content_type is None:
        resp = await client.post("/upload", data=data, skip_auto_headers=["Content-Type"])
    else:
        resp = await client.post("/upload", data=data, headers={"Content-Type": content_type})
    return resp.status, await resp.json()


async def pieces(body: bytes, size: int) -> AsyncIterator[bytes]:
    for start in range(0, len(body), size):
        yield body[start:start + size]
        await asyncio.sleep(0)  # each its own write, so that the server gets them apart


def codes(answer: dict[str, Any]) -> list[tuple[int, str | None]]:
    return [(i["position"][1], i["error"] and i["error"]["code"]) for i in answer["items"]]


def error_code(status: int, answer: dict[str, Any]) -> tuple[int, str]:
    assert answer["errors"][0]["code"] == answer["error"]
    return status, answer["error"]


def nested(depth: int) -> dict[str, Any]:
    """An object of ``depth`` levels."""
    value: dict[str, Any] = {"leaf": 1}
    for _ in range(depth - 1):
        value = {"a": value}
    return value


async def test_a_single_object(client: Any) -> None:
    status, answer = await post(client, orjson.dumps(DEAL), "application/json; charset=utf-8")
    assert status == 200
    assert answer == {"single": True,
                      "items": [{"position": ["index", 0], "value": DEAL, "error": None}]}


async def test_no_content_type_is_json(client: Any) -> None:
    status, answer = await post(client, orjson.dumps(DEAL), None)
    assert (status, answer["single"], answer["items"][0]["value"]) == (200, True, DEAL)


async def test_a_single_object_too_deep_is_a_bad_item(client: Any) -> None:
    status, answer = await post(client, orjson.dumps(nested(MAX_DEPTH + 1)), "application/json")
    assert (status, answer["single"], codes(answer)) == (200, True, [(0, "too_deep")])


async def test_an_array_holds_items_and_bad_ones_by_index(client: Any) -> None:
    body = orjson.dumps([DEAL, 5, "x", [DEAL], nested(MAX_DEPTH), nested(MAX_DEPTH + 1)])
    status, answer = await post(client, body, "application/json")
    assert status == 200 and answer["single"] is False
    assert codes(answer) == [(0, None), (1, "not_an_object"), (2, "not_an_object"),
                             (3, "not_an_object"), (4, None), (5, "too_deep")]
    assert answer["items"][0]["value"] == DEAL
    assert answer["items"][1]["error"]["message"] == "item 1 is not a JSON object"


@pytest.mark.parametrize("content_type", NDJSON_TYPES)
async def test_ndjson_lines_good_bad_blank_and_crlf(client: Any, content_type: str) -> None:
    body = b"".join([
        orjson.dumps(DEAL) + b"\n",                   # 1
        b"\n",                                        # 2 blank
        b'{"orderNumber": "d-2"}\r\n',                # 3 CRLF
        b"  \t \r\n",                                 # 4 blank
        b'{"fio": "\xd0\x98\xd0\xb2\xd0"}\n',         # 5 a character cut short: not UTF-8
        b"[1, 2]\n",                                  # 6
        b"not json\n",                                # 7
        b"\xff\xfe{}\n",                              # 8
        orjson.dumps(nested(MAX_DEPTH + 1)) + b"\n",  # 9
        b"[" * 200 + b"]" * 200 + b"\n",              # 10 over max_line (256)
        b'{"orderNumber": "d-3"}',                    # 11, no newline at the end
    ])
    status, answer = await post(client, body, content_type)
    assert status == 200 and answer["single"] is False
    assert codes(answer) == [(1, None), (3, None), (5, "invalid_json"), (6, "not_an_object"),
                             (7, "invalid_json"), (8, "invalid_json"), (9, "too_deep"),
                             (10, "line_too_long"), (11, None)]
    values = [i["value"] for i in answer["items"] if i["value"] is not None]
    assert values == [DEAL, {"orderNumber": "d-2"}, {"orderNumber": "d-3"}]
    assert {i["position"][0] for i in answer["items"]} == {"line"}
    assert answer["items"][2]["error"]["message"] == "line 5 is not valid UTF-8 JSON"


async def test_a_line_nested_past_orjsons_limit_is_invalid_json(
    serve: Callable[..., Awaitable[Any]],
) -> None:
    client = await serve(Limits(max_line=1 << 20, max_ndjson=1 << 20))
    body = b"[" * 2000 + b"]" * 2000 + b"\n" + b'{"a": ' * 2000 + b"1" + b"}" * 2000 + b"\n{}"
    status, answer = await post(client, body, NDJSON)
    assert (status, codes(answer)) == (200, [(1, "invalid_json"), (2, "invalid_json"), (3, None)])


async def test_a_long_line_midway_is_skipped_and_the_rest_read(
    serve: Callable[..., Awaitable[Any]],
) -> None:
    at_limit = b'{"pad": "' + b"x" * (256 - 11) + b'"}'  # Limits().max_line: 256
    body = b"".join([
        b'{"n": 1}\n', b'{"pad": "' + b"y" * 100_000 + b'"}\n', b'{"n": 3}\n',
        at_limit + b"\r\n",  # 256 bytes, and a CRLF's \r besides: still a line
        at_limit + b" \n", b'{"n": 6}\n', b"z" * 5000,
    ])
    assert len(at_limit) == 256
    client = await serve(Limits(max_ndjson=1 << 20))
    for chunk in (7, 4096, None):
        status, answer = await post(client, body, NDJSON, chunk)
        assert status == 200, answer
        assert codes(answer) == [(1, None), (2, "line_too_long"), (3, None), (4, None),
                                 (5, "line_too_long"), (6, None), (7, "line_too_long")]
        assert answer["items"][1]["error"]["message"] == "line 2 is over 256 bytes"


async def test_json_over_the_limit_is_413_by_length_and_while_read(client: Any) -> None:
    body = orjson.dumps([DEAL] * 100)
    assert len(body) > Limits().max_json
    for chunk in (None, 512):
        status, answer = await post(client, body, "application/json", chunk)
        assert error_code(status, answer) == (413, "body_too_large")
        assert "items" not in answer  # refused before any item
    exact = b" " * (Limits().max_json - 2) + b"{}"
    assert (await post(client, exact, "application/json", 100))[0] == 200


async def test_ndjson_over_the_limit_is_413_after_the_lines_within_it(client: Any) -> None:
    line = orjson.dumps({"pad": "p" * 89}) + b"\n"
    assert len(line) == 100
    body = line * 60  # 6000 bytes; Limits().max_ndjson: 4096
    status, answer = await post(client, body, NDJSON)  # by its Content-Length: unread
    assert error_code(status, answer) == (413, "body_too_large") and "items" not in answer
    for chunk in (1, 33, 4096, 6000):  # the same lines, however the chunks fell
        status, answer = await post(client, body, NDJSON, chunk)
        assert error_code(status, answer) == (413, "body_too_large")
        assert codes(answer) == [(n, None) for n in range(1, 41)], chunk
    status, answer = await post(client, line * 40 + b" " * 96, NDJSON, 50)  # exactly at it
    assert (status, len(answer["items"])) == (200, 40)


@pytest.mark.parametrize("content_type", [
    "text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x",
    "application/octet-stream", "application/ndjson-ish",
])
async def test_other_media_types_are_415(client: Any, content_type: str) -> None:
    status, answer = await post(client, orjson.dumps(DEAL), content_type)
    assert error_code(status, answer) == (415, "unsupported_media_type")


@pytest.mark.parametrize(("body", "content_type", "code"), [
    (b"not json", "application/json", "invalid_json"),
    (b'{"a": 1', "application/json", "invalid_json"),
    (b"\xff{}", "application/json", "invalid_json"),
    (b"[" * 2000 + b"]" * 2000, "application/json", "invalid_json"),
    (b"5", "application/json", "not_an_object"),
    (b'"a deal"', None, "not_an_object"),
    (b"null", "application/json", "not_an_object"),
    (b"", "application/json", "empty_body"),
    (b" \r\n ", None, "empty_body"),
    (b"[]", "application/json", "empty_body"),
    (b"", NDJSON, "empty_body"),
    (b"\n\r\n  \n\t", "application/jsonl", "empty_body"),
])
async def test_bodies_that_cannot_be_read_are_400(
    client: Any, body: bytes, content_type: str | None, code: str
) -> None:
    status, answer = await post(client, body, content_type)
    assert error_code(status, answer) == (400, code)


async def test_a_body_of_bad_lines_only_is_per_line_errors(client: Any) -> None:
    status, answer = await post(client, b"junk\n\n{\n", NDJSON)
    assert (status, codes(answer)) == (200, [(1, "invalid_json"), (3, "invalid_json")])


async def test_lines_and_characters_cut_by_chunks(client: Any) -> None:
    deals = [{"orderNumber": f"d-{n}", "status": "Визит ✓ 🚀", "n": n} for n in range(12)]
    body = b"\r\n".join(orjson.dumps(d) for d in deals) + b"\r\n"
    for chunk in (1, 2, 3, 5, 64):
        status, answer = await post(client, body, NDJSON, chunk)
        assert status == 200
        assert [i["value"] for i in answer["items"]] == deals, chunk
        assert codes(answer) == [(n, None) for n in range(1, 13)]


async def test_a_stalled_body_is_408_after_the_lines_before(
    serve: Callable[..., Awaitable[Any]],
) -> None:
    client = await serve(Limits(idle=0.2))
    gate = asyncio.Event()

    async def stalls() -> AsyncIterator[bytes]:
        yield b'{"n": 1}\n{"n": 2}\n{"n": '
        await gate.wait()  # until the answer came: the server must not wait for it
        yield b"3}\n"

    resp = await client.post("/upload", data=stalls(), headers={"Content-Type": NDJSON})
    answer = await resp.json()
    gate.set()
    assert error_code(resp.status, answer) == (408, "body_timeout")
    assert codes(answer) == [(1, None), (2, None)]


async def test_gzip_bodies_are_read_and_broken_gzip_is_400(client: Any) -> None:
    body = b'{"n": 1}\n{"n": 2}\n'
    resp = await client.post("/upload", data=gzip.compress(body),
                             headers={"Content-Type": NDJSON, "Content-Encoding": "gzip"})
    assert (resp.status, codes(await resp.json())) == (200, [(1, None), (2, None)])
    for content_type in (NDJSON, "application/json"):
        resp = await client.post("/upload", data=b"not gzip at all",
                                 headers={"Content-Type": content_type, "Content-Encoding": "gzip"})
        assert error_code(resp.status, await resp.json()) == (400, "malformed_body")


def _split(body: bytes, cuts: tuple[int, ...], max_line: int) -> list[Item]:
    lines = LineSplitter(max_line)
    bounds = (0, *cuts, len(body))
    items = [i for a, b in itertools.pairwise(bounds)
             for i in lines.feed(body[a:b])]
    return [*items, *lines.close()]


def test_the_splitter_gives_the_same_items_wherever_the_chunks_fall() -> None:
    body = '{"a": "Ив"}\r\n\n{"b": 1}\n{"long": "ёёёёё"}\r\n[]\n  \n{"x"'.encode()
    whole = _split(body, (), 16)
    assert [(i.position[1], i.error and i.error.code) for i in whole] == [
        (1, None), (3, None), (4, "line_too_long"), (5, "not_an_object"), (7, "invalid_json")]
    for first in range(len(body) + 1):
        for second in range(first, len(body) + 1):
            assert _split(body, (first, second), 16) == whole, (first, second)
    assert _split(body, tuple(range(1, len(body))), 16) == whole  # a byte at a time


async def test_no_error_message_holds_a_value_of_the_body(client: Any) -> None:
    personal = orjson.dumps(PERSONAL)
    bodies = [
        (personal[:-1] + b"\n" + personal + b"x\n" + b'{"p": "' + personal * 20 + b'"}\n'
         + b"[" + personal + b"]\n", NDJSON),
        (personal[:-1], "application/json"),
        (b"[" + personal + b"]", "application/json"),
        (orjson.dumps([PII_SAMPLES[3]]), "application/json"),
        (orjson.dumps(PII_SAMPLES[0]), "application/json"),
    ]
    messages: list[str] = []
    for body, content_type in bodies:
        _, answer = await post(client, body, content_type)
        messages += [e["message"] for e in answer.get("errors", [])]
        messages += [i["error"]["message"] for i in answer.get("items", []) if i["error"]]
    assert len(messages) >= 7
    for sample in PII_SAMPLES:
        assert not any(sample in m for m in messages), sample


# Property tests: one server on a thread with its own loop, sent to with the standard
# library's blocking client (hypothesis' examples are plain functions).

class ServerThread:
    def __init__(self, app: web.Application) -> None:
        self.address = ("", 0)
        self._app = app
        self._runner: web.AppRunner | None = None
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="uploads-fuzz")

    def __enter__(self) -> ServerThread:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._listen(), self._loop).result(10)
        return self

    async def _listen(self) -> None:
        self._runner = web.AppRunner(self._app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self.address = self._runner.addresses[0][:2]

    def __exit__(self, *_: object) -> None:
        assert self._runner is not None
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(30)
        asyncio.run_coroutine_threadsafe(asyncio.sleep(0.01), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()


@pytest.fixture(scope="module")
def fuzz_server() -> Iterator[tuple[str, int]]:
    app = make_app({"/small": Limits(), "/big": Limits(1 << 20, 1 << 20, 1 << 20)})
    with ServerThread(app) as server:
        yield server.address


def send(address: tuple[str, int], path: str, body: bytes, content_type: str | None
         ) -> tuple[int, dict[str, Any]]:
    """Post; the answer checked against the contract: no 5xx, JSON, the error shape."""
    conn = http.client.HTTPConnection(*address, timeout=10)
    try:
        conn.putrequest("POST", path, skip_accept_encoding=True)
        if content_type is not None:
            conn.putheader("Content-Type", content_type)
        conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body)
        resp = conn.getresponse()
        status, kind, data = resp.status, resp.getheader("Content-Type", ""), resp.read()
    finally:
        conn.close()
    assert status < 500, (status, data)
    assert kind.startswith("application/json")
    answer = orjson.loads(data)
    if status >= 400:
        assert isinstance(answer["error"], str) and answer["errors"]
        for error in answer["errors"]:
            assert error.keys() == {"field", "code", "message"}
            assert isinstance(error["code"], str) and isinstance(error["message"], str)
    for item in answer.get("items", []):
        assert (item["value"] is None) != (item["error"] is None), item
    return status, answer


FUZZ = settings(
    max_examples=250, deadline=None, database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
CONTENT_TYPES = st.sampled_from([
    "application/json", None, NDJSON, "application/jsonl", "application/x-jsonlines",
    "text/plain",
])
TOKENS = st.sampled_from([
    b"{", b"}", b"[", b"]", b"\n", b"\r", b'"', b":", b",", b" ", b"1", b"\xd0", b"\x98",
    b"\xff", b'"a"', b"{}", b'{"a": 1}', b"null", b"\\", b"\x00",
])
RAW = (
    st.binary(max_size=600)
    | st.lists(TOKENS, max_size=200).map(b"".join)
    | st.tuples(TOKENS, st.integers(0, 5000)).map(lambda t: t[0] * t[1])
)


@FUZZ
@example(path="/small", body=b'{"a": 1}\n' * 600, content_type=NDJSON)
@example(path="/small", body=b"x" * 300 + b"\n{}", content_type=NDJSON)
@example(path="/big", body=b"[" * 1500, content_type="application/json")
@given(path=st.sampled_from(["/small", "/big"]), body=RAW, content_type=CONTENT_TYPES)
def test_any_bytes(
    fuzz_server: tuple[str, int], path: str, body: bytes, content_type: str | None
) -> None:
    send(fuzz_server, path, body, content_type)


SCALARS = (
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(st.characters(exclude_categories=["Cs"]), max_size=20)
)
VALUES = st.recursive(
    SCALARS, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8),
                                                                        inner, max_size=4),
    max_leaves=16,
)


def _wrap(value: Any, levels: int) -> Any:
    for _ in range(levels):
        value = {"w": value}
    return value


# Values, some wrapped in objects to around the depth limit.
JSON_VALUES = VALUES | st.builds(_wrap, VALUES, st.integers(1, MAX_DEPTH + 3))


def depth(value: Any) -> int:
    if isinstance(value, dict):
        return 1 + max(map(depth, value.values()), default=0)
    if isinstance(value, list):
        return 1 + max(map(depth, value), default=0)
    return 0


def expected(value: Any) -> str | None:
    if not isinstance(value, dict):
        return "not_an_object"
    return "too_deep" if depth(value) > MAX_DEPTH else None


def _same(item: dict[str, Any], value: Any) -> None:
    code = expected(value)
    assert (item["error"] and item["error"]["code"]) == code, (item, value)
    if code is None:
        assert item["value"] == value


@FUZZ
@given(value=JSON_VALUES, content_type=st.sampled_from(["application/json", None]))
def test_any_json_value_as_json(
    fuzz_server: tuple[str, int], value: Any, content_type: str | None
) -> None:
    status, answer = send(fuzz_server, "/big", orjson.dumps(value), content_type)
    if isinstance(value, dict):
        assert status == 200 and answer["single"] is True
        _same(answer["items"][0], value)
    elif isinstance(value, list) and value:
        assert status == 200 and answer["single"] is False
        assert [i["position"] for i in answer["items"]] == [["index", n]
                                                            for n in range(len(value))]
        for item, element in zip(answer["items"], value, strict=True):
            _same(item, element)
    else:
        assert error_code(status, answer) == (400, "empty_body" if value == [] else
                                              "not_an_object")


@FUZZ
@given(lines=st.lists(st.tuples(JSON_VALUES, st.sampled_from([b"\n", b"\r\n", b"\n \n"])),
                      min_size=1, max_size=8),
       content_type=st.sampled_from(NDJSON_TYPES))
def test_any_json_values_as_ndjson(
    fuzz_server: tuple[str, int], lines: list[tuple[Any, bytes]], content_type: str
) -> None:
    body, numbers, number = b"", [], 1
    for value, end in lines:
        body += orjson.dumps(value) + end
        numbers.append(number)
        number += end.count(b"\n")
    status, answer = send(fuzz_server, "/big", body, content_type)
    assert status == 200 and answer["single"] is False
    assert [i["position"] for i in answer["items"]] == [["line", n] for n in numbers]
    for item, (value, _) in zip(answer["items"], lines, strict=True):
        _same(item, value)


# Memory: 100,000 lines, 64 MiB, through a server in its own process, whose RSS is its own.

SERVER = """
import asyncio
import gzip
from aiohttp import web
from gateway.intake.uploads import open_upload

async def upload(request):
    good = bad = 0
    async for item in await open_upload(request, 1 << 20, 64 << 20):
        good, bad = (good + 1, bad) if item.error is None else (good, bad + 1)
    return web.json_response({"good": good, "bad": bad})

async def main():
    app = web.Application()  # the default client_max_size (1 MiB): NDJSON is not bound by it
    app.router.add_post("/upload", upload)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    print("uploads listening", runner.addresses[0][1], flush=True)
    await asyncio.Event().wait()

asyncio.run(main())
"""
LINE_BYTES, LINES = 671, 100_000  # 67,100,000 bytes: just under 64 MiB
RSS_GROWTH_KIB = 30 * 1024


def _deal_line(n: int) -> bytes:
    line = orjson.dumps({"orderNumber": f"d-{n:06d}", "status": "Визит", "revenue": "1000.00",
                         "pad": ""})
    return line[:-2] + b"x" * (LINE_BYTES - len(line) - 1) + b'"}\n'


async def _ndjson(lines: int) -> AsyncIterator[bytes]:
    """``lines`` deal lines, 100 (67 KB) a chunk: the test never holds the body either."""
    for start in range(0, lines, 100):
        yield b"".join(_deal_line(n) for n in range(start, min(start + 100, lines)))


def _status_kib(pid: int, field: str) -> int:
    for row in Path(f"/proc/{pid}/status").read_text().splitlines():
        if row.startswith(f"{field}:"):
            return int(row.split()[1])
    raise AssertionError(field)


@pytest.fixture
def upload_server() -> Iterator[Process]:
    server = Process([sys.executable, "-c", SERVER], child_env(), "uploads listening")
    yield server
    server.kill()


async def test_a_64_mib_upload_streams_in_bounded_memory(
    upload_server: Process, record_property: Any
) -> None:
    assert len(_deal_line(7)) == LINE_BYTES and orjson.loads(_deal_line(7))["pad"]
    server = upload_server
    pid, port = server.proc.pid, server.line_with("uploads listening").split()[-1]
    url = f"http://127.0.0.1:{port}/upload"
    async with aiohttp.ClientSession() as http:

        async def upload(lines: int) -> dict[str, int]:
            async with http.post(url, data=_ndjson(lines), headers={"Content-Type": NDJSON},
                                 timeout=aiohttp.ClientTimeout(total=100)) as resp:
                assert resp.status == 200, await resp.text()
                counts: dict[str, int] = await resp.json()
                return counts

        assert await upload(5000) == {"good": 5000, "bad": 0}  # the allocator's pools, once
        before = _status_kib(pid, "VmRSS")
        Path(f"/proc/{pid}/clear_refs").write_text("5")  # VmHWM from here on
        assert await upload(LINES) == {"good": LINES, "bad": 0}
        peak, after = _status_kib(pid, "VmHWM"), _status_kib(pid, "VmRSS")
    record_property("rss_kib", {"before": before, "peak": peak, "after": after})
    print(f"server RSS before={before} KiB peak={peak} KiB after={after} KiB")
    assert peak - before <= RSS_GROWTH_KIB, (before, peak, after)
