"""Hostile requests by kind, as raw bytes: what each one is, and the answer it should get.

:mod:`bench.junk` floods a gateway with them. Bodies that would make a valid lead carry a
``junk-`` request number and are a bot's or a honeypot's (a quiet 202, never relayed), or are
refused: none may ever reach Calltouch.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

import orjson

from bench.payload import USER_AGENT as BROWSER

Head = list[tuple[str, bytes | str]]


@dataclass(frozen=True)
class Target:
    host: str
    port: int
    token: str

    @property
    def origin(self) -> str:
        return f"http://{self.host}:{self.port}"


def _lead(n: int, **extra: object) -> bytes:
    return orjson.dumps({"fio": "Junk Bot", "phoneNumber": "+7 920 000-00-00",
                         "requestNumber": f"junk-{n}", **extra})


def request(t: Target, method: str, path: str, head: Head, body: bytes | None = None) -> bytes:
    lines = [f"{method} {path} HTTP/1.1".encode(), f"Host: {t.host}:{t.port}".encode()]
    lines += [k.encode("latin-1") + b": " + (v if isinstance(v, bytes) else v.encode())
              for k, v in head]
    if body is not None:
        lines.append(b"Content-Length: " + str(len(body)).encode())
    return b"\r\n".join(lines) + b"\r\n\r\n" + (body or b"")


def browser(t: Target, content_type: str = "text/plain;charset=UTF-8") -> Head:
    return [("Origin", t.origin), ("User-Agent", BROWSER), ("Content-Type", content_type)]


def api(t: Target, content_type: str = "application/json") -> Head:
    return [("Authorization", f"Bearer {t.token}"), ("Content-Type", content_type)]


def _chunked(t: Target, size: int) -> bytes:
    head = request(t, "POST", "/leads", [*browser(t), ("Transfer-Encoding", "chunked")])
    chunk = b"x" * 8192
    chunks = b"".join(b"2000\r\n" + chunk + b"\r\n" for _ in range(size // len(chunk)))
    return head + chunks + b"0\r\n\r\n"


Build = Callable[[Target, int], bytes]
# Kind → (weight, request), with the answer it should get where the name does not say. Kinds
# that post to /leads from a browser's Origin (or none) get 429 once their address has used up
# its burst: the per-client limit comes before the body is read.
KINDS: dict[str, tuple[int, Build]] = {
    "malformed_json": (4, lambda t, n: request(t, "POST", "/leads", browser(t),
                                               b'{"fio": "x", "phoneNumber": ')),  # 400
    "bad_utf8": (4, lambda t, n: request(t, "POST", "/leads", browser(t, "application/json"),
                                         b'{"fio": "\xff\xfe\xfd", "phoneNumber": "89205550000"}')),
    "invalid_lead": (4, lambda t, n: request(t, "POST", "/leads", browser(t), orjson.dumps(
        {"fio": "", "phoneNumber": "call me", "email": "nope", "requestNumber": f"junk-{n}"}))),
    "deep_json": (2, lambda t, n: request(t, "POST", "/leads", browser(t),
                                          b'{"fio": [[[[[[["x"]]]]]]]}')),  # 400
    "not_object": (2, lambda t, n: request(t, "POST", "/leads", browser(t), b"[1, 2, 3]")),
    "form_fields": (2, lambda t, n: request(
        t, "POST", "/leads", browser(t, "application/x-www-form-urlencoded"),
        "&".join(f"f{i}=v" for i in range(100)).encode())),  # 400: over 64 fields
    "oversize": (1, lambda t, n: request(t, "POST", "/leads", browser(t),
                                         b" " * (80 * 1024))),  # 413 on Content-Length
    "oversize_chunked": (1, lambda t, n: _chunked(t, 80 * 1024)),  # 413 while reading
    "wrong_type": (3, lambda t, n: request(t, "POST", "/leads", browser(t, "image/png"),
                                           _lead(n))),  # 415
    "multipart": (2, lambda t, n: request(
        t, "POST", "/leads", browser(t, "multipart/form-data; boundary=x"),
        b"--x\r\nContent-Disposition: form-data; name=fio\r\n\r\nx\r\n--x--\r\n")),  # 415
    "foreign_origin": (3, lambda t, n: request(
        t, "POST", "/leads", [("Origin", "https://evil.example"), ("User-Agent", BROWSER),
                              ("Content-Type", "text/plain")], _lead(n))),  # 403
    "bot_curl": (4, lambda t, n: request(
        t, "POST", "/leads", [("User-Agent", "curl/8.5.0"), ("Content-Type", "application/json")],
        _lead(n))),  # quiet 202
    "bot_python": (3, lambda t, n: request(
        t, "POST", "/leads", [("User-Agent", "python-requests/2.31.0"),
                              ("Content-Type", "application/json"),
                              ("X-Forwarded-For", f"198.51.100.{n % 250}")], _lead(n))),
    "bot_no_agent": (2, lambda t, n: request(
        t, "POST", "/leads", [("Content-Type", "text/plain")], _lead(n))),  # quiet 202
    "bot_fast": (3, lambda t, n: request(t, "POST", "/leads", browser(t),
                                         _lead(n, _elapsed=120))),  # quiet 202
    "honeypot": (4, lambda t, n: request(t, "POST", "/leads", browser(t),
                                         _lead(n, _honeypot="http://spam.example"))),  # 202
    "api_no_token": (2, lambda t, n: request(t, "POST", "/api/v1/leads",
                                             [("Content-Type", "application/json")], _lead(n))),
    "api_bad_token": (2, lambda t, n: request(
        t, "POST", "/api/v1/leads", [("Authorization", "Bearer not-the-token-0000000000"),
                                     ("Content-Type", "application/json")], _lead(n))),  # 401
    "api_malformed": (3, lambda t, n: request(t, "POST", "/api/v1/leads", api(t), b"{oops")),
    "api_invalid": (3, lambda t, n: request(t, "POST", "/api/v1/leads", api(t),
                                            b'{"phoneNumber": "12"}')),  # 422
    "api_honeypot": (3, lambda t, n: request(t, "POST", "/api/v1/leads", api(t),
                                             _lead(n, _honeypot="1"))),  # quiet 202
    "api_oversize": (1, lambda t, n: request(t, "POST", "/api/v1/leads", api(t),
                                             b"[" + b"1," * 40_000 + b"1]")),  # 413
    "api_status_probe": (2, lambda t, n: request(t, "GET", f"/api/v1/leads/{n:x}%27%20OR%201=1",
                                                 [("Authorization", "Bearer x")])),  # 401
    "scanner": (3, lambda t, n: request(t, "GET", random.choice(
        ["/wp-login.php", "/.env", "/admin/", "/../../etc/passwd", "/cgi-bin/sh"]), [])),  # 404
    "wrong_method": (2, lambda t, n: request(t, random.choice(["PUT", "DELETE", "PATCH"]),
                                             "/leads", browser(t), b"{}")),  # 405
    "preflight": (1, lambda t, n: request(t, "OPTIONS", "/leads",
                                          [("Origin", "https://evil.example")])),  # 403
    "header_garbage": (2, lambda t, n: request(t, "POST", "/leads",
                                               [("X-\x01Bad\x7f", b"\x00\x1b[31m")], b"{}")),
    "long_header": (1, lambda t, n: request(t, "POST", "/leads", [("X-Long", "a" * 9000)], b"{}")),
    "many_headers": (1, lambda t, n: request(
        t, "POST", "/leads", [(f"X-H{i}", "v") for i in range(200)], b"{}")),  # 400
    "huge_headers": (1, lambda t, n: request(  # every header within the limits: ~0.9 MB
        t, "POST", "/leads", [("User-Agent", "curl/8"), ("Content-Type", "application/json"),
                              *((f"X-Big-{i}", "b" * 8000) for i in range(110))], _lead(n))),
    "smuggle": (1, lambda t, n: request(t, "POST", "/leads", [("Transfer-Encoding", "chunked"),
                                                               *browser(t)], b"0\r\n\r\n")),
    "not_http": (2, lambda t, n: b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03"
                 + random.randbytes(40) + b"\r\n\r\n"),  # a TLS hello: 400
    "bad_host": (1, lambda t, n: b"POST /leads HTTP/1.1\r\nHost: \xff\xfe:99999\r\n"
                 b"Content-Type: text/plain\r\nContent-Length: 2\r\n\r\n{}"),  # 400 or 422
}
MIX = [name for name, (weight, _) in KINDS.items() for _ in range(weight)]
# The HTTP parser refuses these and closes the connection, without saying so in the answer.
PARSE_ERRORS = frozenset({"header_garbage", "long_header", "many_headers", "smuggle",
                          "not_http"})
