"""GET /snippet.js over HTTP: headers, validators, gzip, the size budget; the sandbox demo page."""

from __future__ import annotations

import gzip
import json
import os
import re
import subprocess
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from gateway.config import Settings
from gateway.config_values import ClientRate
from gateway.intake.snippet import MOD_ID_SLOT, render, static_text
from tests.support import Gateway, eventually, lead, need_binary, post_lead, sandbox_requests

# Bytes, gzipped, as served. Issue 17 asks for 1,536; shadow roots, frames and multi-step
# forms took it from 2,037 to 2,194, and docs/performance.md says where the bytes go.
SIZE_BUDGET = 2240
ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT / "static" / "src" / "snippet.js"  # static/snippet.js is its esbuild build


async def get(
    http: aiohttp.ClientSession, url: str, **headers: str
) -> tuple[aiohttp.ClientResponse, bytes]:
    async with http.get(url, headers=headers, auto_decompress=False) as resp:
        return resp, await resp.read()


async def start(start_gateway: Any, settings: Settings) -> Gateway:
    gateway: Gateway = await start_gateway(settings)
    return gateway


async def test_served_with_type_validators_and_policy(
    gateway: Gateway, http: aiohttp.ClientSession
) -> None:
    resp, body = await get(http, f"{gateway.url}/snippet.js", **{"Accept-Encoding": "identity"})
    assert resp.status == 200
    assert resp.content_type == "application/javascript"
    assert resp.charset == "utf-8"
    assert "Content-Encoding" not in resp.headers
    assert re.fullmatch(r'"[0-9a-f]{20}"', resp.headers["ETag"])
    assert "max-age=" in resp.headers["Cache-Control"]
    assert resp.headers["Cache-Control"].startswith("public")
    assert resp.headers["Vary"] == "Accept-Encoding"
    assert resp.headers["Cross-Origin-Resource-Policy"] == "same-origin"
    assert resp.headers["X-Content-Type-Options"] == "nosniff"
    assert body == render(static_text("snippet.js"), None)


async def test_served_without_comment_lines_and_csp_friendly(
    gateway: Gateway, http: aiohttp.ClientSession
) -> None:
    _, body = await get(http, f"{gateway.url}/snippet.js", **{"Accept-Encoding": "identity"})
    text = body.decode()
    assert not any(line.lstrip().startswith("//") for line in text.splitlines())
    assert MOD_ID_SLOT not in text and '("mod-id")||""' in text  # no counter id configured
    for banned in ("eval(", "new Function", "innerHTML", ".style", "setAttribute(\"style"):
        assert banned not in text
    assert "preventDefault" not in text and "stopPropagation" not in text


async def test_gzip_within_budget(gateway: Gateway, http: aiohttp.ClientSession) -> None:
    resp, body = await get(http, f"{gateway.url}/snippet.js", **{"Accept-Encoding": "gzip, br"})
    plain, plain_body = await get(http, f"{gateway.url}/snippet.js", **{"Accept-Encoding": ""})
    assert resp.headers["Content-Encoding"] == "gzip"
    assert gzip.decompress(body) == plain_body
    assert int(resp.headers["Content-Length"]) == len(body)
    assert len(body) <= SIZE_BUDGET, f"snippet.js is {len(body)} bytes gzipped"
    assert resp.headers["ETag"] != plain.headers["ETag"]  # one tag per representation
    declined, _ = await get(http, f"{gateway.url}/snippet.js", **{"Accept-Encoding": "gzip;q=0"})
    assert "Content-Encoding" not in declined.headers


def test_built_file_is_one_line_with_the_slot() -> None:
    # The gateway drops whole-line // comments: the build's header goes, its one code line stays.
    built = static_text("snippet.js")
    header = [line for line in built.splitlines() if line.startswith("//")]
    code = [line for line in built.splitlines() if not line.startswith("//")]
    assert "static/src/snippet.js" in header[0] and len(code) == 1
    assert built.count(MOD_ID_SLOT) == 1 and SOURCE.read_text("utf-8").count(MOD_ID_SLOT) == 1


def test_esbuild_pinned_exactly() -> None:
    package = json.loads((ROOT / "package.json").read_text())
    lock = json.loads((ROOT / "package-lock.json").read_text())
    pinned = package["devDependencies"]["esbuild"]
    assert re.fullmatch(r"\d+\.\d+\.\d+", pinned), pinned
    assert lock["packages"]["node_modules/esbuild"]["version"] == pinned
    assert f"(esbuild {pinned})" in static_text("snippet.js").splitlines()[0]


def test_built_file_is_fresh(tmp_path: Path) -> None:
    """static/snippet.js is what ``npm run build`` makes of the source (.ci/run checks it too)."""
    node = need_binary("node")
    if not (ROOT / "node_modules" / "esbuild").is_dir():
        message = "esbuild is not installed (npm ci)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    out = tmp_path / "snippet.js"
    subprocess.run([node, str(ROOT / "scripts" / "build-snippet.mjs"), str(out)],
                   check=True, timeout=60)
    assert out.read_bytes() == (ROOT / "static" / "snippet.js").read_bytes(), (
        "static/snippet.js is stale: run npm run build")


@pytest.mark.parametrize("encoding", ["identity", "gzip"])
async def test_if_none_match_answers_304(
    gateway: Gateway, http: aiohttp.ClientSession, encoding: str
) -> None:
    url = f"{gateway.url}/snippet.js"
    first, _ = await get(http, url, **{"Accept-Encoding": encoding})
    etag = first.headers["ETag"]
    for given in (etag, f"W/{etag}", f'"other", {etag}', "*"):
        resp, body = await get(http, url, **{"Accept-Encoding": encoding, "If-None-Match": given})
        assert resp.status == 304, given
        assert body == b""
        assert resp.headers["ETag"] == etag
        assert "max-age=" in resp.headers["Cache-Control"]
    stale, body = await get(http, url, **{"Accept-Encoding": encoding, "If-None-Match": '"old"'})
    assert stale.status == 200 and body


async def test_head(gateway: Gateway, http: aiohttp.ClientSession) -> None:
    async with http.head(f"{gateway.url}/snippet.js") as resp:
        assert resp.status == 200
        assert resp.content_type == "application/javascript"
        assert "ETag" in resp.headers


async def test_mod_id_default_injected(
    start_gateway: Any, settings: Settings, http: aiohttp.ClientSession
) -> None:
    plain = await start(start_gateway, settings)
    with_id = await start(start_gateway, replace(settings, mod_id="abcd1234"))
    h = {"Accept-Encoding": "identity"}
    plain_resp, _ = await get(http, f"{plain.url}/snippet.js", **h)
    resp, body = await get(http, f"{with_id.url}/snippet.js", **h)
    assert '("mod-id")||"abcd1234"' in body.decode()
    assert resp.headers["ETag"] != plain_resp.headers["ETag"]  # the tag hashes what is served
    zipped, packed = await get(http, f"{with_id.url}/snippet.js", **{"Accept-Encoding": "gzip"})
    assert zipped.headers["Content-Encoding"] == "gzip"
    assert len(packed) <= SIZE_BUDGET, f"snippet.js is {len(packed)} bytes gzipped"


async def test_resource_policy_cross_origin_when_other_origins_are_allowed(
    start_gateway: Any, settings: Settings, http: aiohttp.ClientSession
) -> None:
    gw = await start(start_gateway, replace(
        settings, allowed_origins=frozenset({"https://shop.example.ru"})
    ))
    resp, _ = await get(http, f"{gw.url}/snippet.js")
    assert resp.headers["Cross-Origin-Resource-Policy"] == "cross-origin"


async def test_no_demo_outside_sandbox_mode(gateway: Gateway, http: aiohttp.ClientSession) -> None:
    for path in ("/", "/sandbox/leads"):
        resp, _ = await get(http, f"{gateway.url}{path}")
        assert resp.status == 404, path


async def test_demo_page_and_received_leads(
    start_gateway: Any, settings: Settings, http: aiohttp.ClientSession
) -> None:
    fast = ClientRate(100, 100)  # 22 leads from one address
    gw = await start(start_gateway, replace(settings, sandbox=True, client_rate=fast))
    resp, body = await get(http, f"{gw.url}/", **{"Accept-Encoding": "identity"})
    assert resp.status == 200 and resp.content_type == "text/html"
    assert b'<script src="snippet.js" async></script>' in body
    for n in range(22):
        status, _ = await post_lead(http, gw.url, lead(n))
        assert status == 202

    async def all_arrived() -> bool:
        rows = await sandbox_requests(http, settings.calltouch_url)
        return sum(row["status"] == 200 for row in rows) >= 22

    await eventually(all_arrived, timeout=30)
    # A back-office call the simulator got is no lead: the page does not list it.
    async with http.post(f"{settings.calltouch_url}/lead-service/v1/api/comment/lead/add",
                         json={"comments": []}) as r:
        assert r.status < 500
    arrivals = await sandbox_requests(http, settings.calltouch_url)
    assert arrivals[-1]["method"] != "register"
    async with http.get(f"{gw.url}/sandbox/leads") as r:
        assert r.headers["Cache-Control"] == "no-store"
        rows = await r.json()
    expected = [{"status": a["status"], "form": a["form"]} for a in arrivals[-21:-1]]
    assert rows == expected[::-1]  # the last 20, newest first
