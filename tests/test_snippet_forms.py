"""The snippet on the forms of today's sites, in real headless Chromium (issue 17, part 2).

React (controlled inputs, react-hook-form), Vue 3, jQuery, a Bitrix web form, a web component's
shadow root, a same-origin frame, steps, ``formnovalidate``, ``requestSubmit()``, the
back/forward cache, and browsers that block ``localStorage`` or ``keepalive``. The libraries are
the npm packages of ``package.json`` (``npm ci``), served from ``node_modules`` by the site.

Every case checks that the lead reaches Calltouch with ``sessionId`` (from a Calltouch script
that answers late, or from its cookie), ``requestUrl`` and the contact fields, that no
sensitive field left the page, and that the site's own handler ran with its usual result.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp
import orjson
import pytest
from aiohttp import web

from gateway.config import Settings
from gateway.config_values import ClientRate, parse_networks
from gateway.intake.listener import bound_address
from gateway.sandbox.run import SandboxThread
from tests.support import Gateway, eventually, need_binary, sandbox_requests
from tests.test_snippet_browser import CHROMIUM_ARGS, PHONE, SESSION, Proxy, Tab, loaded

if TYPE_CHECKING:
    from playwright.async_api import BrowserContext

ROOT = Path(__file__).resolve().parents[1]
PAGES = Path(__file__).parent / "pages"
NODE_MODULES = ROOT / "node_modules"
# /vendor/NAME on the test site: the browser builds of the packages in package.json.
VENDOR = {
    "react.js": "react/umd/react.production.min.js",
    "react-dom.js": "react-dom/umd/react-dom.production.min.js",
    "react-hook-form.js": "react-hook-form/dist/index.umd.js",
    "vue.js": "vue/dist/vue.global.prod.js",
    "jquery.js": "jquery/dist/jquery.min.js",
}
EMAIL = "ivan@example.com"


@dataclass
class Site(Proxy):
    """The site's web server: the pages, the libraries, its own handler, and /ct-gateway/."""

    async def handle(self, request: web.Request) -> web.StreamResponse:
        if request.path.startswith("/ct-gateway/"):
            return await self.forward(request, request.path_qs.removeprefix("/ct-gateway"))
        if request.path.startswith("/vendor/"):
            name = VENDOR.get(request.path.removeprefix("/vendor/"))
            if name is None:
                raise web.HTTPNotFound()
            return web.Response(body=(NODE_MODULES / name).read_bytes(),
                                content_type="application/javascript", charset="utf-8")
        if request.method == "POST":  # the site's own handlers: JSON, a form, or multipart
            if request.content_type == "application/json":
                posted = await request.json()
            else:
                posted = {k: v for k, v in (await request.post()).items() if isinstance(v, str)}
            self.site_posts.append(posted)
            if request.path == "/site-handler":
                return web.json_response({"ok": True, "n": len(self.site_posts)})
        page = PAGES / request.path.lstrip("/")
        if page.parent != PAGES or page.suffix != ".html" or not page.is_file():
            raise web.HTTPNotFound()
        return web.Response(body=page.read_bytes(), content_type="text/html", charset="utf-8")


@pytest.fixture
def vendor() -> None:
    """The npm packages are installed: skip without them, but fail in CI."""
    missing = [name for name in VENDOR.values() if not (NODE_MODULES / name).is_file()]
    if missing:
        message = f"node_modules lacks {', '.join(missing)} (run npm ci, or .ci/run)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)


@pytest.fixture
async def site(start_gateway: Any, settings: Settings, vendor: None) -> AsyncIterator[Site]:
    gw: Gateway = await start_gateway(replace(
        settings, client_rate=ClientRate(100, 100), mod_id="abcd1234",
        trusted_proxies=parse_networks("127.0.0.1")))
    async with aiohttp.ClientSession(auto_decompress=False) as session:
        proxy = Site(gw.url, session)
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", proxy.handle)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        proxy.url = bound_address(runner)
        yield proxy
        await runner.cleanup()


@pytest.fixture
async def context() -> AsyncIterator[BrowserContext]:
    from playwright.async_api import async_playwright

    chromium = need_binary("chromium")
    async with async_playwright() as pw:
        # Playwright turns the back/forward cache off by default; these pages need it on.
        browser = await pw.chromium.launch(
            executable_path=chromium, headless=True, args=CHROMIUM_ARGS,
            ignore_default_args=["--disable-back-forward-cache"],
        )
        ctx = await browser.new_context()
        yield ctx
        await ctx.close()
        await browser.close()


Opener = Callable[[str], Awaitable[Tab]]


@pytest.fixture
def open_page(context: BrowserContext, site: Site) -> Opener:
    async def open_(path: str) -> Tab:
        tab = Tab(await context.new_page())
        await tab.page.goto(site.url + path)
        await loaded(tab.page)
        return tab

    return open_


async def taken(http: aiohttp.ClientSession, sandbox: SandboxThread) -> list[dict[str, str]]:
    return [r["form"] for r in await sandbox_requests(http, sandbox.url) if r["status"] == 200]


async def received(http: aiohttp.ClientSession, sandbox: SandboxThread, count: int = 1
                   ) -> list[dict[str, str]]:
    """The leads Calltouch took, once there are ``count``; then a moment for any extra one."""

    async def arrived() -> bool:
        return len(await taken(http, sandbox)) >= count

    await eventually(arrived, timeout=15)
    await asyncio.sleep(0.5)
    return await taken(http, sandbox)


def check_lead(form: dict[str, str], site: Site, page: str, email: bool = True) -> None:
    """The lead's contact, session and page, and nothing secret in what the browser posted."""
    assert form["fio"] == "Иван Петров"
    assert form["phoneNumber"] == PHONE
    if email:
        assert form["email"] == EMAIL
    else:
        assert "email" not in form
    assert form["sessionId"] == SESSION
    assert form["requestUrl"] == site.url + page
    assert site.leads, "the browser posted nothing"
    for posted in site.leads:
        raw = orjson.dumps(posted.body).decode()
        assert "SECRET" not in raw, raw
        assert not {"password", "card_number", "sms_code", "captcha_word"} & set(
            posted.body.get("customFields", {})), raw


async def fill(tab: Tab, scope: str, name: str, phone: str, email: str | None = EMAIL) -> None:
    await tab.page.fill(f"{scope} {name}", "Иван Петров")
    await tab.page.fill(f"{scope} {phone}", "+7 (920) 555-00-55")
    if email is not None:
        await tab.page.fill(f"{scope} [type=email]", email)


async def test_react_controlled_inputs(
    open_page: Opener, site: Site, http: aiohttp.ClientSession, sandbox: SandboxThread
) -> None:
    tab = await open_page("/forms-react.html")
    await fill(tab, "#callback", "#callback-name", "#callback-phone")
    await tab.page.fill("#sms_code", "SECRET-sms-0001")
    await tab.page.click("#callback button")
    await tab.page.wait_for_selector("#callback-done:has-text('Заявка 1 принята')")

    [form] = await received(http, sandbox)
    check_lead(form, site, "/forms-react.html")
    assert site.site_posts == [{
        "fio": "Иван Петров", "tel": "+7 (920) 555-00-55", "mail": EMAIL, "sms": "SECRET-sms-0001"}]
    assert await tab.page.input_value("#callback-name") == ""  # the site's reset ran
    assert tab.errors == []


async def test_react_hook_form(
    open_page: Opener, site: Site, http: aiohttp.ClientSession, sandbox: SandboxThread
) -> None:
    tab = await open_page("/forms-react.html")
    await fill(tab, "#signup", "[name=fullName]", "[name=phone]")
    await tab.page.fill("#signup [name=password]", "SECRET-pass-0002")
    await tab.page.click("#signup button")
    await tab.page.wait_for_selector("#signup-done:has-text('Аккаунт 1 создан')")

    [form] = await received(http, sandbox)
    check_lead(form, site, "/forms-react.html")
    assert site.site_posts == [{"fullName": "Иван Петров", "phone": "+7 (920) 555-00-55",
                                "email": EMAIL, "password": "SECRET-pass-0002"}]
    assert tab.errors == []


async def test_vue_v_model_and_submit_prevent(
    open_page: Opener, site: Site, http: aiohttp.ClientSession, sandbox: SandboxThread
) -> None:
    tab = await open_page("/forms-vue.html")
    await fill(tab, "#order", "[name=name]", "[name=phone]")
    await tab.page.fill("[name=card_number]", "SECRET-card-4111")
    await tab.page.click("#order button")
    await tab.page.wait_for_selector("#done:has-text('Заказ 1 оформлен')")

    [form] = await received(http, sandbox)
    check_lead(form, site, "/forms-vue.html")  # the session from the cookie
    assert site.site_posts == [{"name": "Иван Петров", "phone": "+7 (920) 555-00-55",
                                "email": EMAIL}]
    assert tab.errors == []


async def test_jquery_ajax_return_false(
    open_page: Opener, site: Site, http: aiohttp.ClientSession, sandbox: SandboxThread
) -> None:
    tab = await open_page("/forms-jquery.html")
    await fill(tab, "#measure", "[name=name]", "[name=phone]")
    await tab.page.click("#measure button")
    await tab.page.wait_for_selector("#result:has-text('Заявка 1 принята')")

    [form] = await received(http, sandbox)
    check_lead(form, site, "/forms-jquery.html")
    assert site.site_posts == [{
        "_token": "SECRET-token-0001", "name": "Иван Петров", "phone": "+7 (920) 555-00-55",
        "email": EMAIL, "sms_code": "SECRET-code-0002"}]
    assert tab.page.url == site.url + "/forms-jquery.html"  # return false kept the page
    assert tab.errors == []


async def test_bitrix_form_told_apart_by_labels(
    open_page: Opener, site: Site, http: aiohttp.ClientSession, sandbox: SandboxThread
) -> None:
    tab = await open_page("/forms-bitrix.html")
    await tab.page.fill("[name=form_text_1]", "Иван Петров")
    await tab.page.fill("[name=form_text_2]", "+7 (920) 555-00-55")
    await tab.page.fill("[name=form_email_3]", EMAIL)
    await tab.page.fill("[name=form_textarea_4]", "Перезвоните вечером")
    await tab.page.fill("[name=captcha_word]", "SECRET-word-0003")
    async with tab.page.expect_navigation():
        await tab.page.click("[name=web_form_submit]")
    await tab.page.wait_for_selector("#thanks")

    [form] = await received(http, sandbox)
    check_lead(form, site, "/forms-bitrix.html")
    assert form["comment"] == "Перезвоните вечером"
    assert site.site_posts[0]["form_text_2"] == "+7 (920) 555-00-55"  # the site got its POST
    assert site.site_posts[0]["captcha_word"] == "SECRET-word-0003"
    assert tab.errors == []


async def test_form_in_open_shadow_root(
    open_page: Opener, site: Site, http: aiohttp.ClientSession, sandbox: SandboxThread
) -> None:
    tab = await open_page("/forms-shadow.html")
    # Playwright's CSS selectors go into open shadow roots.
    await fill(tab, "callback-widget", "[name=name]", "[name=phone]")
    await tab.page.fill("callback-widget [name=password]", "SECRET-pass-0004")
    await tab.page.click("callback-widget button")
    await tab.page.wait_for_selector("callback-widget #status:has-text('Звонок 1')")

    [form] = await received(http, sandbox)
    check_lead(form, site, "/forms-shadow.html")
    assert site.site_posts[0]["phone"] == "+7 (920) 555-00-55"
    assert tab.errors == []


async def test_form_in_same_origin_frame_without_the_snippet(
    open_page: Opener, site: Site, http: aiohttp.ClientSession, sandbox: SandboxThread
) -> None:
    tab = await open_page("/forms-iframe.html?frame=forms-frame.html")
    frame = tab.page.frame_locator("#calc")
    await frame.locator("[name=name]").fill("Иван Петров")
    await frame.locator("[name=phone]").fill("+7 (920) 555-00-55")
    await frame.locator("[name=email]").fill(EMAIL)
    await frame.locator("button").click()
    await frame.locator("#status:has-text('Расчёт 1')").wait_for()

    [form] = await received(http, sandbox)
    check_lead(form, site, "/forms-iframe.html?frame=forms-frame.html")  # the visitor's page
    assert form["customField[area]"] == "42"
    assert site.site_posts[0]["pin"] == "SECRET-pin-0002"
    assert tab.errors == []


async def test_form_in_same_origin_frame_with_its_own_snippet(
    context: BrowserContext, open_page: Opener, site: Site,
    http: aiohttp.ClientSession, sandbox: SandboxThread,
) -> None:
    # Calltouch's script is the parent page's: the frame's snippet finds the session in the
    # cookie Calltouch keeps on the site's origin.
    await context.add_cookies([{"name": "_ct_session_id", "value": SESSION, "url": site.url}])
    tab = await open_page("/forms-iframe.html?frame=forms-frame-tagged.html")
    frame = tab.page.frame_locator("#calc")
    await frame.locator("[name=name]").fill("Иван Петров")
    await frame.locator("[name=phone]").fill("+7 (920) 555-00-55")
    await frame.locator("[name=email]").fill(EMAIL)
    await frame.locator("button").click()
    await frame.locator("#status:has-text('Расчёт 1')").wait_for()

    [form] = await received(http, sandbox)
    check_lead(form, site, "/forms-frame-tagged.html")  # the page the form is on
    assert form["customField[area]"] == "42"
    assert len(site.leads) == 1
    assert site.site_posts[0]["pin"] == "SECRET-pin-0002"
    assert tab.errors == []


async def test_multi_step_form_with_plain_step_buttons(
    open_page: Opener, site: Site, http: aiohttp.ClientSession, sandbox: SandboxThread
) -> None:
    tab = await open_page("/forms-submits.html")
    await fill(tab, "#steps", "[name=name]", "[name=phone]", email=None)
    await tab.page.click("#steps-next")
    await tab.page.fill("#steps [name=email]", EMAIL)
    await tab.page.click("#steps-send")
    await tab.page.wait_for_selector("#status:has-text('steps 1')")

    [form] = await received(http, sandbox)
    check_lead(form, site, "/forms-submits.html")
    assert form["customField[style]"] == "Модерн"
    assert len(site.leads) == 1
    assert tab.errors == []


async def test_multi_step_form_with_submit_step_buttons(
    open_page: Opener, site: Site, http: aiohttp.ClientSession, sandbox: SandboxThread
) -> None:
    tab = await open_page("/forms-submits.html")
    await fill(tab, "#stepped", "[name=name]", "[name=phone]", email=None)
    await tab.page.click("#stepped-next")
    await tab.page.fill("#stepped [name=email]", EMAIL)
    await tab.page.click("#stepped-send")
    await tab.page.wait_for_selector("#status:has-text('stepped 1')")

    [form] = await received(http, sandbox)  # one lead, with the later step's e-mail
    check_lead(form, site, "/forms-submits.html")
    assert tab.errors == []


async def test_formnovalidate_submit_button(
    open_page: Opener, site: Site, http: aiohttp.ClientSession, sandbox: SandboxThread
) -> None:
    tab = await open_page("/forms-submits.html")
    await fill(tab, "#novalidate", "[name=name]", "[name=phone]", email=None)
    await tab.page.click("#novalidate-send")  # the browser refuses: the e-mail is required
    await tab.page.click("#novalidate-call")  # formnovalidate: sent as it is
    await tab.page.wait_for_selector("#status:has-text('novalidate 1')")

    [form] = await received(http, sandbox)
    check_lead(form, site, "/forms-submits.html", email=False)
    assert len(site.leads) == 1
    assert tab.errors == []


async def test_request_submit(
    open_page: Opener, site: Site, http: aiohttp.ClientSession, sandbox: SandboxThread
) -> None:
    tab = await open_page("/forms-submits.html")
    await fill(tab, "#scripted", "[name=name]", "[name=phone]")
    await tab.page.click("#scripted-send")
    await tab.page.wait_for_selector("#status:has-text('scripted 1')")

    [form] = await received(http, sandbox)
    check_lead(form, site, "/forms-submits.html")
    assert tab.errors == []


async def go_back_restored(tab: Tab, times: int) -> None:
    """Back to the form page, which must come from the back/forward cache."""
    await tab.page.go_back(wait_until="commit")  # a restored page fires no load event
    await tab.page.wait_for_function(f"window.restored == {times}")


async def test_back_forward_cache_then_submitted_again(
    context: BrowserContext, open_page: Opener, site: Site,
    http: aiohttp.ClientSession, sandbox: SandboxThread,
) -> None:
    await context.add_cookies([{"name": "_ct_session_id", "value": SESSION, "url": site.url}])
    tab = await open_page("/forms-bfcache.html")
    await fill(tab, "#plain", "[name=name]", "[name=phone]", email=None)
    async with tab.page.expect_navigation():
        await tab.page.click("#plain-send")
    await tab.page.wait_for_selector("#thanks")
    await go_back_restored(tab, 1)
    async with tab.page.expect_navigation():  # the same data once more, from the restored page
        await tab.page.click("#plain-send")
    await tab.page.wait_for_selector("#thanks")

    async def both_posted() -> bool:
        return len(site.site_posts) == 2 and len(site.leads) >= 2

    await eventually(both_posted, timeout=10)
    [form] = await received(http, sandbox)  # one lead, not two, not zero
    check_lead(form, site, "/forms-bfcache.html", email=False)
    assert {p.body["requestNumber"] for p in site.leads} == {form["requestNumber"]}
    assert tab.errors == []


async def test_back_forward_cache_then_first_submit(
    open_page: Opener, site: Site, http: aiohttp.ClientSession, sandbox: SandboxThread
) -> None:
    tab = await open_page("/forms-bfcache.html")
    async with tab.page.expect_navigation():
        await tab.page.click("#away")
    await go_back_restored(tab, 1)
    await fill(tab, "#ajax", "[name=name]", "[name=phone]")
    await tab.page.click("#ajax-send")
    await tab.page.wait_for_selector("#status:has-text('Запись 1')")

    [form] = await received(http, sandbox)  # with the session of the late Calltouch script
    check_lead(form, site, "/forms-bfcache.html")
    assert len(site.leads) == 1
    assert tab.errors == []


@pytest.mark.parametrize("block", ["storage", "keepalive", "storage,keepalive"])
async def test_blocked_local_storage_or_keepalive(
    block: str, open_page: Opener, site: Site,
    http: aiohttp.ClientSession, sandbox: SandboxThread,
) -> None:
    page = f"/forms-blocked.html?block={block}"
    tab = await open_page(page)
    blocked = await tab.page.evaluate("""() => {
        let storage = false, keepalive = false;
        try { localStorage.getItem("x"); } catch { storage = true; }
        return fetch("/site-check", {method: "HEAD", keepalive: true})
            .catch(() => { keepalive = true; })
            .then(() => [storage, keepalive].map(String).join());
    }""")
    assert blocked == ",".join(str(b in block).lower() for b in ("storage", "keepalive"))
    await fill(tab, "#callback", "[name=name]", "[name=phone]")
    await tab.page.click("#callback button")
    await tab.page.wait_for_selector("#status:has-text('Заявка 1')")

    [form] = await received(http, sandbox)
    check_lead(form, site, page)
    assert tab.errors == []
