"""Several Calltouch sites in one gateway (``CTGW_SITES``): real gateways, the sandbox, files."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from gateway import app
from gateway.config import Settings
from gateway.config_values import BotWeights
from gateway.ops.metrics import Metrics
from gateway.sandbox.run import SandboxThread
from gateway.sites import Sites
from gateway.sites_file import load_sites
from tests.support import Gateway, eventually, lead, sandbox_requests
from tests.test_cli import cli

SHOP_TOKEN = "shop-token-0123456789"
BOTH_TOKEN = "both-token-0123456789"
SITES = ("shop", "blog")
SITES_TOML = """
[sites.shop]
site_id = "1001"
mod_id = "shop0001"
hosts = ["shop.test"]
allowed_origins = ["https://promo.shop.test"]
access_token = "env:SHOP_CT_TOKEN"
client_api_id = "file:shop-api-id"

[sites.blog]
site_id = "2002"
mod_id = "blog0002"
hosts = ["blog.test"]
access_token = "blog-access-token"
client_api_id = "blog-client-api-id"

[tokens]
shop = {token = "SHOP_TOKEN_HERE", sites = ["shop"]}
both = {token = "env:BOTH_TOKEN", sites = ["shop", "blog"]}
"""


def sites_file(tmp_path: Path) -> Path:
    (tmp_path / "shop-api-id").write_text("shop-client-api-id\n")
    path = tmp_path / "sites.toml"
    path.write_text(SITES_TOML.replace("SHOP_TOKEN_HERE", SHOP_TOKEN))
    return path


async def start_two_sites(settings: Settings, tmp_path: Path) -> tuple[Gateway, Sites]:
    sites = load_sites(str(sites_file(tmp_path)),
                       {"SHOP_CT_TOKEN": "shop-access-token", "BOTH_TOKEN": BOTH_TOKEN})
    multi = dataclasses.replace(settings, site_id="", sites_file=str(tmp_path / "sites.toml"))
    running = await app.start(multi, Metrics(), sites=sites)
    return Gateway(running.url, running.ops_url, running.runner, running.metrics), sites


@pytest.fixture
async def two_sites(
    settings: Settings, sandbox: SandboxThread, tmp_path: Path
) -> AsyncIterator[tuple[Gateway, Sites]]:
    gw, sites = await start_two_sites(settings, tmp_path)
    yield gw, sites
    await gw.runner.cleanup()


async def post(http: aiohttp.ClientSession, url: str, body: object, **kwargs: object
               ) -> tuple[int, dict[str, object]]:
    async with http.post(url, json=body, **kwargs) as resp:  # type: ignore[arg-type]
        return resp.status, await resp.json()


async def test_browser_leads_go_to_the_site_their_host_names(
    two_sites: tuple[Gateway, Sites], http: aiohttp.ClientSession, sandbox: SandboxThread,
) -> None:
    gw, _ = two_sites
    for host in ("shop.test", "blog.test"):
        status, _ = await post(http, f"{gw.url}/leads", lead(7), headers={"Host": host})
        assert status == 202  # the same requestNumber on both sites: two leads
    status, answer = await post(http, f"{gw.url}/leads", lead(8), headers={"Host": "other.test"})
    assert status == 404 and answer["error"] == "unknown_site"

    async def both() -> bool:
        rows = await sandbox_requests(http, sandbox.url)
        return sorted(r["site"] for r in rows if r["status"] == 200) == ["1001", "2002"]

    await eventually(both, timeout=10)
    rows = await sandbox_requests(http, sandbox.url)
    assert {r["form"]["requestNumber"] for r in rows} == {"req-7"}


async def test_a_token_posts_only_for_its_sites_and_names_one_when_it_has_several(
    two_sites: tuple[Gateway, Sites], http: aiohttp.ClientSession,
) -> None:
    gw, _ = two_sites
    shop = {"Authorization": f"Bearer {SHOP_TOKEN}"}
    both = {"Authorization": f"Bearer {BOTH_TOKEN}"}
    api = f"{gw.url}/api/v1/leads"
    assert (await post(http, api, lead(1), headers=shop))[0] == 202  # its one site
    status, answer = await post(http, api + "?site=blog", lead(2), headers=shop)
    assert (status, answer["error"]) == (403, "forbidden_site")
    status, answer = await post(http, api, lead(3), headers=both)
    assert (status, answer["error"]) == (400, "site_required")
    status, answer = await post(http, api + "?site=nope", lead(3), headers=both)
    assert (status, answer["error"]) == (404, "unknown_site")
    status, answer = await post(http, api + "?site=blog", lead(3), headers=both)
    assert status == 202
    # A lead of blog is not shop's to read.
    async with http.get(f"{api}/{answer['id']}", headers=shop) as resp:
        assert resp.status == 404
    async with http.get(f"{api}/{answer['id']}?site=blog", headers=both) as resp:
        assert resp.status == 200


async def test_a_referer_of_the_sites_own_allowed_origin_names_it(
    settings: Settings, sandbox: SandboxThread, tmp_path: Path, http: aiohttp.ClientSession,
) -> None:
    """The bot score's ``origin`` signal reads the site's allowed origins, not the gateway's."""
    gw, _ = await start_two_sites(dataclasses.replace(settings, bot_weights=BotWeights()),
                                  tmp_path)
    try:
        await _post_with_referers(gw, http)
    finally:
        await gw.runner.cleanup()


async def _post_with_referers(gw: Gateway, http: aiohttp.ClientSession) -> None:

    def origin_signals() -> float | None:
        return gw.metrics.registry.get_sample_value("ctgw_bot_signals_total",
                                                    {"signal": "origin"})

    browser = {"Host": "shop.test", "Origin": "null", "User-Agent": "Mozilla/5.0"}
    promo = {**browser, "Referer": "https://promo.shop.test/landing"}
    assert (await post(http, f"{gw.url}/leads", lead(1), headers=promo))[0] == 202
    assert origin_signals() == 0
    foreign = {**browser, "Referer": "https://elsewhere.test/landing"}
    assert (await post(http, f"{gw.url}/leads", lead(2), headers=foreign))[0] == 202
    assert origin_signals() == 1


async def test_each_site_counts_its_leads_under_its_own_site_label(
    two_sites: tuple[Gateway, Sites], http: aiohttp.ClientSession,
) -> None:
    gw, _ = two_sites
    sample = gw.metrics.registry.get_sample_value

    def received(outcome: str, site: str, channel: str = "browser") -> float | None:
        labels = {"channel": channel, "outcome": outcome, "site": site}
        return sample("ctgw_leads_received_total", labels)

    assert (received("accepted", "shop"), received("accepted", "blog", "api")) == (0, 0)
    for host, n in (("shop.test", 1), ("shop.test", 2), ("blog.test", 3)):
        status, _ = await post(http, f"{gw.url}/leads", lead(n), headers={"Host": host})
        assert status == 202
    assert (await post(http, f"{gw.url}/leads", lead(4), headers={"Host": "other.test"}))[0] \
        == 404
    both = {"Authorization": f"Bearer {BOTH_TOKEN}"}
    status, _ = await post(http, f"{gw.url}/api/v1/leads?site=nope", lead(5), headers=both)
    assert status == 404

    async def settled() -> bool:
        return [sample("ctgw_leads_delivered_total", {"site": s}) for s in SITES] == [2, 1]

    await eventually(settled, timeout=10)
    assert [received("accepted", s) for s in SITES] == [2, 1]
    # Routed to no site: counted under site="", never under a name the caller sent.
    assert (received("rejected", ""), received("rejected", "", "api")) == (1, 1)
    assert received("rejected", "nope", "api") is None
    assert received("accepted", "default") is None  # no site of that name here
    counts = [sample("ctgw_lead_delivery_seconds_count", {"site": s}) for s in SITES]
    assert counts == [2, 1]
    async with http.get(f"{gw.ops_url}/metrics") as resp:
        text = await resp.text()
    assert 'ctgw_leads_delivered_total{site="shop"} 2.0' in text
    assert 'ctgw_leads_received_total{channel="browser",outcome="accepted",site="blog"} 1.0' \
        in text


async def test_the_snippet_carries_the_mod_id_of_its_host(
    two_sites: tuple[Gateway, Sites], http: aiohttp.ClientSession,
) -> None:
    gw, _ = two_sites
    for host, mod_id in (("shop.test", "shop0001"), ("blog.test", "blog0002")):
        async with http.get(f"{gw.url}/snippet.js", headers={"Host": host}) as resp:
            text = await resp.text()
        [other] = {"shop0001", "blog0002"} - {mod_id}
        assert resp.status == 200 and mod_id in text and other not in text
    async with http.get(f"{gw.url}/snippet.js", headers={"Host": "other.test"}) as resp:
        assert resp.status == 404


async def test_deals_and_legacy_calls_go_to_their_site(
    two_sites: tuple[Gateway, Sites], http: aiohttp.ClientSession, sandbox: SandboxThread,
) -> None:
    gw, _ = two_sites
    both = {"Authorization": f"Bearer {BOTH_TOKEN}"}
    deal = {"orderNumber": "o-1", "status": "new", "statusDate": "01-02-2026 10:00:00"}
    assert (await post(http, f"{gw.url}/api/v1/deals?site=shop", deal, headers=both))[0] == 202
    assert (await post(http, f"{gw.url}/api/v1/deals?site=blog", deal, headers=both))[0] == 202
    legacy = f"{gw.url}/calls-service/RestAPI/orders/register/"
    params = {"orderNumber": "L-1", "orderSum": "100", "orderStatus": "new",
              "orderDate": "01.02.2026 10:00:00", "service": "erp", "phoneNumber": "79001234567"}
    async with http.get(legacy, params={**params, "clientApiId": "shop-client-api-id"}) as resp:
        assert resp.status == 202
    async with http.get(legacy, params={**params, "clientApiId": "wrong"}) as resp:
        assert resp.status == 401

    async def arrived() -> bool:
        rows = await sandbox_requests(http, sandbox.url)
        deals = sorted(r["site"] for r in rows if r.get("method") == "client-order/create"
                       and r["status"] == 200)
        orders = [r for r in rows if r.get("method") == "orders/register" and r["status"] == 200]
        return deals == ["1001", "2002"] and len(orders) == 1

    await eventually(arrived, timeout=15)


def test_a_bad_sites_file_stops_serve_naming_file_site_and_key(tmp_path: Path) -> None:
    path = sites_file(tmp_path)
    path.write_text(path.read_text().replace('hosts = ["blog.test"]\n', ""))
    done = cli("serve", cwd=tmp_path, CTGW_SITES=str(path), SHOP_CT_TOKEN="x" * 20,
               BOTH_TOKEN=BOTH_TOKEN)
    assert done.returncode == 2, done
    [line] = done.stderr.splitlines()
    assert str(path) in line and "[sites.blog]" in line and "hosts" in line, line
    assert "blog-access-token" not in line and SHOP_TOKEN not in line


def test_sites_and_a_site_id_together_are_refused(tmp_path: Path) -> None:
    done = cli("serve", cwd=tmp_path, CTGW_SITES=str(sites_file(tmp_path)), CTGW_SITE_ID="1")
    assert done.returncode == 2 and "CTGW_SITES" in done.stderr, done



async def test_one_sites_bulk_upload_does_not_starve_anothers_deals(
    two_sites: tuple[Gateway, Sites], http: aiohttp.ClientSession, sandbox: SandboxThread,
    capsys: pytest.CaptureFixture[str],
) -> None:
    gw, _ = two_sites
    both = {"Authorization": f"Bearer {BOTH_TOKEN}", "Content-Type": "application/x-ndjson"}

    def ndjson(prefix: str, count: int) -> str:
        return "".join(f'{{"orderNumber": "{prefix}-{n}", "status": "new"}}\n'
                       for n in range(count))

    for site, count in (("shop", 2000), ("blog", 1000)):  # shop's upload is first and larger
        async with http.post(f"{gw.url}/api/v1/deals?site={site}", data=ndjson(site, count),
                             headers=both) as resp:
            assert resp.status == 202 and (await resp.json())["accepted"] == count

    async def blog_done() -> bool:
        rows = await sandbox_requests(http, sandbox.url)
        return sum(r["items"] for r in rows if r.get("site") == "2002"
                   and r.get("method") == "client-order/create" and r["status"] == 200) == 1000

    await eventually(blog_done, timeout=30)
    calls = [r for r in await sandbox_requests(http, sandbox.url)
             if r.get("method") == "client-order/create" and r["status"] == 200]
    last_blog = max(i for i, r in enumerate(calls) if r["site"] == "2002")
    window = calls[: last_blog + 1]
    share = sum(r["site"] == "2002" for r in window) / len(window)
    with capsys.disabled():
        print(f"\n[fairness] blog's share of the calls until its deals were done: {share:.2f}"
              f" ({len(window)} calls)")
    assert share >= 0.4
