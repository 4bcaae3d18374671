"""The form-capture snippet (``GET /snippet.js``) and the sandbox demo page (``GET /``).

The snippet is served as ``static/snippet.js`` without its whole-line ``//`` comments and with
``CTGW_MOD_ID`` filled in as the default ``data-mod-id``; the bytes, their gzip and the ETag are
computed once, at startup.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
from dataclasses import dataclass
from importlib import resources

import aiohttp
import orjson
from aiohttp import web

from gateway.errors import BadRequest
from gateway.sites import Sites

MOD_ID_SLOT = '/*CTGW_MOD_ID*/""'
CACHE_CONTROL = "public, max-age=600, stale-while-revalidate=86400"
DEMO_LEADS = 20


@functools.cache
def static_text(name: str) -> str:
    return resources.files("gateway.static").joinpath(name).read_text("utf-8")


def render(source: str, mod_id: str | None) -> bytes:
    """The bytes served: comment lines dropped, the counter id filled in (config validates it)."""
    if MOD_ID_SLOT not in source:
        raise ValueError(f"snippet.js lacks the {MOD_ID_SLOT} slot")
    lines = [line for line in source.splitlines() if not line.lstrip().startswith("//")]
    text = "\n".join(lines).replace(MOD_ID_SLOT, orjson.dumps(mod_id or "").decode())
    return (text + "\n").encode()


def _accepts_gzip(header: str) -> bool:
    for item in header.lower().split(","):
        coding, _, params = item.strip().partition(";")
        if coding.strip() in ("gzip", "*"):
            q = params.strip().removeprefix("q=").strip()
            return q == "" or _quality(q) > 0
    return False


def _quality(raw: str) -> float:
    try:
        return float(raw)
    except ValueError:
        return 0.0


@dataclass(frozen=True, slots=True)
class Snippet:
    """The snippet's two representations and their validators, fixed at startup."""

    body: bytes
    gzipped: bytes
    tag: str
    resource_policy: str

    @classmethod
    def load(cls, mod_id: str | None, cross_origin: bool = False) -> Snippet:
        """``cross_origin``: other sites load the script too (``CTGW_ALLOWED_ORIGINS`` is set)."""
        body = render(static_text("snippet.js"), mod_id)
        digest = hashlib.sha256(body).hexdigest()[:20]
        gzipped = gzip.compress(body, compresslevel=9, mtime=0)
        return cls(body, gzipped, digest, "cross-origin" if cross_origin else "same-origin")

    def etag(self, gzipped: bool) -> str:
        return f'"{self.tag}-gz"' if gzipped else f'"{self.tag}"'

    def _fresh(self, if_none_match: str | None) -> bool:
        if if_none_match is None:
            return False
        tags = {t.strip().removeprefix("W/") for t in if_none_match.split(",")}
        return bool(tags & {"*", self.etag(False), self.etag(True)})

    async def serve(self, request: web.Request) -> web.Response:
        zipped = _accepts_gzip(request.headers.get("Accept-Encoding", ""))
        headers = {
            "ETag": self.etag(zipped),
            "Cache-Control": CACHE_CONTROL,
            "Vary": "Accept-Encoding",
            "Cross-Origin-Resource-Policy": self.resource_policy,
        }
        if self._fresh(request.headers.get("If-None-Match")):
            return web.Response(status=304, headers=headers)
        if zipped:
            headers["Content-Encoding"] = "gzip"
        return web.Response(
            body=self.gzipped if zipped else self.body, headers=headers,
            content_type="application/javascript", charset="utf-8",
        )


@dataclass(frozen=True, slots=True)
class BySite:
    """``/snippet.js`` with the ``mod_id`` of the site its ``Host`` names."""

    snippets: dict[str, Snippet]
    sites: Sites

    @classmethod
    def load(cls, sites: Sites) -> BySite:
        return cls({name: Snippet.load(site.mod_id, cross_origin=bool(site.allowed_origins))
                    for name, site in sites.sites.items()}, sites)

    async def serve(self, request: web.Request) -> web.Response:
        site = self.sites.for_host(request.host)
        if site is None:
            raise BadRequest("unknown_site", "no site is served at this host", status=404)
        return await self.snippets[site.name].serve(request)


async def demo(request: web.Request) -> web.Response:
    """The sandbox's front page: a form using the snippet, and what the simulator received."""
    return web.Response(
        text=static_text("demo.html"), content_type="text/html",
        headers={"Cache-Control": "no-store"},
    )


async def sandbox_leads(session: aiohttp.ClientSession, calltouch_url: str) -> web.Response:
    """The last leads the sandbox received, newest first (sandbox mode only: test data)."""
    async with session.get(f"{calltouch_url}/sandbox/requests") as resp:
        rows = await resp.json(loads=orjson.loads) if resp.status == 200 else []
    leads = [r for r in rows if r.get("method") == "register"]  # not the back office's calls
    recent = [{"status": r["status"], "form": r["form"]} for r in leads[-DEMO_LEADS:]]
    return web.Response(
        body=orjson.dumps(recent[::-1]), content_type="application/json",
        headers={"Cache-Control": "no-store"},
    )
