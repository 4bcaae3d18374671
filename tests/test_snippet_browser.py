"""The snippet in real headless Chromium, with the test pages and the gateway on one origin.

A small aiohttp proxy plays the site's web server, as nginx does in production: it serves
``tests/pages/*.html`` at ``/``, takes the pages' own form posts, and passes ``/ct-gateway/*`` to
the gateway (prefix stripped, ``Host`` kept, ``X-Forwarded-For`` added). Each test checks what the
Calltouch simulator received and that the page saw no JavaScript error.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import aiohttp
import orjson
import pytest
from aiohttp import web

from gateway.app import SETTINGS
from gateway.config import Settings
from gateway.config_values import BotWeights, ClientRate, parse_networks
from gateway.intake.listener import bound_address
from gateway.sandbox.run import SandboxThread
from tests.support import Gateway, eventually, need_binary, sandbox_requests

if TYPE_CHECKING:
    from playwright.async_api import BrowserContext, ConsoleMessage, Page

PAGES = Path(__file__).parent / "pages"
SESSION = "1845461367"
PHONE = "79205550055"
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
    "--disable-component-update", "--no-first-run", "--disable-sync",
]
HOP_BY_HOP = frozenset({
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer",
    "transfer-encoding", "upgrade", "content-length",
})
QUEUED = "JSON.parse(localStorage.ctgw_q || '[]')"
CHROME = ("Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
          "Chrome/124.0.0.0 Safari/537.36")


@dataclass
class Posted:
    """A lead the browser posted to /ct-gateway/leads, and the answer it got."""

    body: dict[str, Any]
    content_type: str
    status: int
    path: str = "/leads"


@dataclass
class Proxy:
    gateway: str
    session: aiohttp.ClientSession
    url: str = ""
    down: bool = False  # the gateway unreachable: /ct-gateway/leads answers 502
    leads: list[Posted] = field(default_factory=list)
    site_posts: list[dict[str, str]] = field(default_factory=list)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        if request.path.startswith("/ct-gateway/"):
            return await self.forward(request, request.path_qs.removeprefix("/ct-gateway"))
        if request.method == "POST":  # the site's own handlers: the XHR endpoint, /thanks.html
            form = await request.post()
            self.site_posts.append({k: v for k, v in form.items() if isinstance(v, str)})
            if request.path == "/site-handler":
                return web.json_response({"ok": True})
        page = PAGES / request.path.lstrip("/")
        if page.parent != PAGES or page.suffix != ".html" or not page.is_file():
            raise web.HTTPNotFound()
        return web.Response(body=page.read_bytes(), content_type="text/html", charset="utf-8")

    async def forward(self, request: web.Request, path: str) -> web.StreamResponse:
        body = await request.read()
        is_lead = request.method == "POST" and path.split("?")[0] == "/leads"
        if is_lead and self.down:
            self.leads.append(Posted(orjson.loads(body), request.content_type, 502))
            return web.Response(status=502, text="Bad Gateway")
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP}
        headers["X-Forwarded-For"] = request.remote or "127.0.0.1"
        async with self.session.request(
            request.method, self.gateway + path, headers=headers, data=body or None
        ) as resp:
            answer = await resp.read()
            out = {k: v for k, v in resp.headers.items() if k.lower() not in HOP_BY_HOP}
        if is_lead:
            self.leads.append(
                Posted(orjson.loads(body), request.content_type, resp.status, path)
            )
        return web.Response(status=resp.status, body=answer, headers=out)


class Tab:
    """A page and every JavaScript error it reports."""

    def __init__(self, page: Page) -> None:
        self.page = page
        self.errors: list[str] = []
        page.on("pageerror", lambda exc: self.errors.append(f"pageerror: {exc}"))
        page.on("console", self._console)

    def _console(self, message: ConsoleMessage) -> None:
        # A refused request (the 502, offline) is the network's report, not a script error.
        if message.type == "error" and not message.text.startswith("Failed to load resource"):
            self.errors.append(f"console: {message.text}")

    async def queued(self) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = await self.page.evaluate(QUEUED)
        return rows


@pytest.fixture
def chromium() -> str:
    return need_binary("chromium")


@pytest.fixture
def browser_settings(settings: Settings) -> Settings:
    # Every lead comes through the proxy, which names the browser in X-Forwarded-For.
    return replace(settings, client_rate=ClientRate(100, 100), mod_id="abcd1234",
                   trusted_proxies=parse_networks("127.0.0.1"))


@pytest.fixture
async def gw(start_gateway: Any, browser_settings: Settings) -> Gateway:
    # The counter id configured on the gateway is the snippet's default (pages name their own).
    gateway: Gateway = await start_gateway(browser_settings)
    return gateway


@contextlib.asynccontextmanager
async def site(gateway: Gateway) -> AsyncIterator[Proxy]:
    """The site's web server in front of ``gateway``."""
    async with aiohttp.ClientSession(auto_decompress=False) as session:
        proxy = Proxy(gateway.url, session)
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", proxy.handle)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        proxy.url = bound_address(runner)
        yield proxy
        await runner.cleanup()


@pytest.fixture
async def proxy(gw: Gateway) -> AsyncIterator[Proxy]:
    async with site(gw) as proxy:
        yield proxy


@pytest.fixture
async def context(chromium: str) -> AsyncIterator[BrowserContext]:
    from playwright.async_api import async_playwright

    async with async_playwright() as pw:
        browser = await pw.chromium.launch(
            executable_path=chromium, headless=True, args=CHROMIUM_ARGS
        )
        ctx = await browser.new_context()
        yield ctx
        await ctx.close()
        await browser.close()


Opener = Callable[[str], Awaitable[Tab]]


@pytest.fixture
def open_page(context: BrowserContext, proxy: Proxy) -> Opener:
    async def open_(path: str) -> Tab:
        tab = Tab(await context.new_page())
        await tab.page.goto(proxy.url + path)
        await loaded(tab.page)
        return tab

    return open_


async def loaded(page: Page) -> None:
    """The snippet has run: it replaced the stub (if any) with the real ``ctLeads``."""
    await page.wait_for_function("window.ctLeads && !window.ctLeads.q")


async def received(http: aiohttp.ClientSession, sandbox: SandboxThread, count: int
                   ) -> list[dict[str, str]]:
    """The forms of the leads the simulator took, once there are ``count`` of them."""

    async def arrived() -> bool:
        return len(await _taken(http, sandbox)) >= count

    await eventually(arrived, timeout=15)
    return await _taken(http, sandbox)


async def _taken(http: aiohttp.ClientSession, sandbox: SandboxThread) -> list[dict[str, str]]:
    return [r["form"] for r in await sandbox_requests(http, sandbox.url) if r["status"] == 200]


def custom(form: dict[str, str]) -> dict[str, str]:
    return {k[12:-1]: v for k, v in form.items() if k.startswith("customField[")}


async def test_site_builder_ajax_form(
    open_page: Opener, proxy: Proxy, http: aiohttp.ClientSession, sandbox: SandboxThread
) -> None:
    tab = await open_page("/ajax.html")
    await tab.page.fill("[name=Name]", "Иван Петров")
    await tab.page.fill("[name=Phone]", "+7 (920) 555-00-55")
    await tab.page.fill("[name=Email]", "ivan@example.com")
    await tab.page.fill("[name=Textarea]", "Перезвоните после 18:00")
    await tab.page.click(".t-submit")
    await tab.page.wait_for_selector("#success", state="visible")  # the site's handler ran

    [form] = await received(http, sandbox, 1)
    assert form["fio"] == "Иван Петров"
    assert form["phoneNumber"] == PHONE
    assert form["email"] == "ivan@example.com"
    assert form["comment"] == "Перезвоните после 18:00"
    assert form["sessionId"] == SESSION
    assert form["requestUrl"] == f"{proxy.url}/ajax.html"
    assert form["subject"] == "callback"
    assert form["requestNumber"].startswith("ctgw-")
    assert custom(form) == {}  # the builder's hidden field stays home
    assert proxy.site_posts == [{
        "tildaspec-formname": "Callback", "Name": "Иван Петров", "Phone": "+7 (920) 555-00-55",
        "Email": "ivan@example.com", "Textarea": "Перезвоните после 18:00",
    }]
    [posted] = proxy.leads
    assert posted.content_type == "text/plain" and posted.status == 202
    assert await tab.queued() == []
    assert tab.errors == []


async def test_plain_form_that_navigates_away(
    open_page: Opener, proxy: Proxy, http: aiohttp.ClientSession, sandbox: SandboxThread
) -> None:
    tab = await open_page("/plain.html")
    await tab.page.fill("[placeholder='Ваше имя']", "Иван Петров")
    await tab.page.fill("[placeholder=Телефон]", "8 920 555 00 55")
    await tab.page.fill("[placeholder='Ваша почта']", "ivan@example.com")
    await tab.page.fill("[placeholder=Сообщение]", "Нужен замер")
    async with tab.page.expect_navigation():
        await tab.page.click("[type=submit]")
    await tab.page.wait_for_selector("#thanks")

    [form] = await received(http, sandbox, 1)
    assert (form["fio"], form["phoneNumber"], form["email"]) == (
        "Иван Петров", PHONE, "ivan@example.com")
    assert form["comment"] == "Нужен замер"
    assert form["sessionId"] == SESSION  # from the _ct_session_id cookie
    assert form["requestUrl"] == f"{proxy.url}/plain.html"
    assert form["subject"] == "contacts"
    assert proxy.site_posts[0]["field1"] == "Иван Петров"  # the site got its POST too
    # The next page may send it again (the answer came after the page was left): same number.
    await loaded(tab.page)
    await tab.page.wait_for_function(f"{QUEUED}.length == 0")
    assert {p.body["requestNumber"] for p in proxy.leads} == {form["requestNumber"]}
    assert sorted(p.status for p in proxy.leads)[-1] == 202
    assert len(await _taken(http, sandbox)) == 1
    assert tab.errors == []


async def test_form_inserted_after_load(
    open_page: Opener, http: aiohttp.ClientSession, sandbox: SandboxThread
) -> None:
    tab = await open_page("/later.html")
    await tab.page.wait_for_selector("#order")
    await tab.page.fill("[name=customer_name]", "Ivan Petrov")
    await tab.page.fill("[name=contact]", "+7 920 555-00-55")
    await tab.page.click("#order button")
    await tab.page.wait_for_selector("text=Thank you")

    [form] = await received(http, sandbox, 1)
    assert (form["fio"], form["phoneNumber"]) == ("Ivan Petrov", PHONE)
    assert form["subject"] == "Order call-back"  # data-ct-subject
    assert "sessionId" not in form  # neither Calltouch's script nor its cookie on this page
    assert tab.errors == []


@pytest.mark.parametrize("contact", ["тел. 8 920 555 00 55", "8\u2013920\u2013555\u201300\u201355"])
async def test_a_phone_the_gateway_would_refuse_goes_as_a_custom_field(
    open_page: Opener, http: aiohttp.ClientSession, sandbox: SandboxThread, contact: str
) -> None:
    # Sent as the phone, it was answered 422 and the name went with it.
    tab = await open_page("/later.html")
    await tab.page.wait_for_selector("#order")
    await tab.page.fill("[name=customer_name]", "Ivan Petrov")
    await tab.page.fill("[name=contact]", contact)
    await tab.page.click("#order button")
    await tab.page.wait_for_selector("text=Thank you")

    [form] = await received(http, sandbox, 1)
    assert form["fio"] == "Ivan Petrov" and "phoneNumber" not in form
    assert custom(form) == {"contact": contact}
    assert tab.errors == []


async def fill_delayed(tab: Tab, form: str) -> None:
    await tab.page.fill(f"#{form} [name=name]", "Ivan Petrov")
    await tab.page.fill(f"#{form} [name=phone]", "+7 920 555-00-55")


async def test_waits_for_calltouch_session(
    open_page: Opener, proxy: Proxy, http: aiohttp.ClientSession, sandbox: SandboxThread
) -> None:
    tab = await open_page("/delayed-ct.html?delay=1000")
    await fill_delayed(tab, "ajax")
    started = await tab.page.evaluate("Date.now() < readyAt")
    await tab.page.click("#send-ajax")
    await tab.page.wait_for_selector("#done:has-text('ok')")  # the site's handler is not delayed

    [form] = await received(http, sandbox, 1)
    assert form["sessionId"] == SESSION
    assert started, "the form was sent after ct() answered: the test proves nothing"
    assert tab.errors == []


async def test_falls_back_to_cookie_when_calltouch_never_answers(
    context: BrowserContext, open_page: Opener, proxy: Proxy,
    http: aiohttp.ClientSession, sandbox: SandboxThread,
) -> None:
    await context.add_cookies([{"name": "_ct_session_id", "value": SESSION, "url": proxy.url}])
    tab = await open_page("/delayed-ct.html?delay=600000")
    await fill_delayed(tab, "ajax")
    await tab.page.click("#send-ajax")

    [form] = await received(http, sandbox, 1)
    assert form["sessionId"] == SESSION
    assert form["phoneNumber"] == PHONE
    assert tab.errors == []


async def test_lead_not_lost_when_page_is_left_while_waiting(
    open_page: Opener, proxy: Proxy, http: aiohttp.ClientSession, sandbox: SandboxThread
) -> None:
    tab = await open_page("/delayed-ct.html?delay=600000")
    await fill_delayed(tab, "leave")
    async with tab.page.expect_navigation():
        await tab.page.click("#send-leave")

    [form] = await received(http, sandbox, 1)
    assert (form["fio"], form["phoneNumber"]) == ("Ivan Petrov", PHONE)
    assert "sessionId" not in form
    assert form["requestUrl"].endswith("/delayed-ct.html?delay=600000")
    assert tab.errors == []


async def test_never_sends_passwords_cards_or_tokens(
    open_page: Opener, proxy: Proxy, http: aiohttp.ClientSession, sandbox: SandboxThread
) -> None:
    tab = await open_page("/secrets.html")
    await tab.page.set_input_files("[name=attachment]", files=[{
        "name": "scan.txt", "mimeType": "text/plain", "buffer": b"SECRET-file-0010"}])
    await tab.page.click("#checkout button")

    [form] = await received(http, sandbox, 1)
    assert (form["fio"], form["email"], form["phoneNumber"]) == (
        "Ivan Petrov", "ivan@example.com", PHONE)
    # Nor PINs, secrets, one-time codes, passports, SNILS or INNs, whatever their case or spelling.
    assert custom(form) == {
        "delivery_note": "Leave at the door", "shipping": "Courier", "postcode": "420000"}
    [posted] = proxy.leads
    raw = orjson.dumps(posted.body).decode()
    assert "SECRET" not in raw and "4111" not in raw, raw
    assert set(posted.body) == {
        "fio", "email", "phoneNumber", "customFields", "subject", "requestUrl",
        "requestNumber", "_honeypot", "_elapsed",
    }
    assert posted.body["_honeypot"] == ""  # a person left the trap empty
    assert tab.errors == []


async def test_honeypot_filled_by_a_bot(
    open_page: Opener, proxy: Proxy
) -> None:
    tab = await open_page("/secrets.html")
    await tab.page.fill("[name=website]", "http://spam.example")
    await tab.page.click("#checkout button")

    async def answered() -> bool:
        return bool(proxy.leads)

    await eventually(answered, timeout=10)
    assert proxy.leads[0].body["_honeypot"] == "http://spam.example"
    assert proxy.leads[0].status == 202  # answered like a person; the gateway never relays it
    assert tab.errors == []


async def test_invalid_ignored_and_contactless_forms_send_nothing(
    open_page: Opener, proxy: Proxy, http: aiohttp.ClientSession, sandbox: SandboxThread
) -> None:
    tab = await open_page("/invalid.html")
    await tab.page.click("#send-invalid")  # the browser refuses: required e-mail is empty
    # A script submitting around the browser's validation still meets the snippet's check.
    await tab.page.evaluate(
        "document.getElementById('invalid')"
        ".dispatchEvent(new Event('submit', {bubbles: true, cancelable: true}))"
    )
    await tab.page.click("#send-ignored")  # data-ct-ignore
    await tab.page.click("#send-search")  # a search form: no contact field
    await tab.page.click("#send-valid")  # the marker: everything before it is done

    [form] = await received(http, sandbox, 1)
    assert form["fio"] == "Marker"
    assert [p.body["fio"] for p in proxy.leads] == ["Marker"]
    assert tab.errors == []


async def test_double_click_makes_one_lead(
    open_page: Opener, proxy: Proxy, http: aiohttp.ClientSession, sandbox: SandboxThread
) -> None:
    tab = await open_page("/double.html")
    await tab.page.fill("[name=your-name]", "Ivan Petrov")
    await tab.page.fill("[name=your-phone]", "+7 920 555-00-55")
    await tab.page.fill("[name=your-message]", "Windows for a dacha")
    await tab.page.dblclick(".wpcf7-submit")
    await tab.page.wait_for_selector("#status:has-text('sent 2')")  # two real submits

    async def both_answered() -> bool:
        return len(proxy.leads) == 2

    await eventually(both_answered, timeout=10)
    assert len({p.body["requestNumber"] for p in proxy.leads}) == 1
    assert sorted(p.status for p in proxy.leads) == [200, 202]  # the gateway's dedup
    [form] = await received(http, sandbox, 1)
    assert form["comment"] == "Windows for a dacha"

    await tab.page.fill("[name=your-message]", "And a door")  # new data: a new lead
    await tab.page.click(".wpcf7-submit")
    first, second = await received(http, sandbox, 2)
    assert second["comment"] == "And a door"
    assert second["requestNumber"] != first["requestNumber"]
    assert tab.errors == []


async def test_gateway_unreachable_then_sent_on_next_load(
    open_page: Opener, proxy: Proxy, http: aiohttp.ClientSession, sandbox: SandboxThread
) -> None:
    proxy.down = True
    tab = await open_page("/double.html")
    await tab.page.fill("[name=your-name]", "Ivan Petrov")
    await tab.page.fill("[name=your-phone]", "+7 920 555-00-55")
    await tab.page.click(".wpcf7-submit")
    await tab.page.wait_for_selector("#status:has-text('sent 1')")

    async def refused() -> bool:
        return len(proxy.leads) == 1

    await eventually(refused, timeout=10)
    number = proxy.leads[0].body["requestNumber"]
    [kept] = await tab.queued()
    assert kept["l"]["requestNumber"] == number
    assert await _taken(http, sandbox) == []

    proxy.down = False
    await tab.page.reload()
    await loaded(tab.page)
    await tab.page.wait_for_function(f"{QUEUED}.length == 0")
    [form] = await received(http, sandbox, 1)
    assert form["requestNumber"] == number
    # The bot score judges the moment of submission, not of the retry.
    assert proxy.leads[-1].body["_elapsed"] == proxy.leads[0].body["_elapsed"]
    assert (form["fio"], form["phoneNumber"], form["sessionId"]) == ("Ivan Petrov", PHONE, SESSION)
    assert tab.errors == []


async def test_offline_then_sent_on_online_event(
    context: BrowserContext, open_page: Opener, proxy: Proxy,
    http: aiohttp.ClientSession, sandbox: SandboxThread,
) -> None:
    tab = await open_page("/double.html")
    await tab.page.fill("[name=your-name]", "Ivan Petrov")
    await tab.page.fill("[name=your-phone]", "+7 920 555-00-55")
    await context.set_offline(True)
    await tab.page.click(".wpcf7-submit")
    await tab.page.wait_for_function(f"{QUEUED}.length == 1")
    assert proxy.leads == []

    await context.set_offline(False)  # fires `online`
    await tab.page.wait_for_function(f"{QUEUED}.length == 0")
    [form] = await received(http, sandbox, 1)
    assert form["phoneNumber"] == PHONE
    assert tab.errors == []


async def test_25_extra_fields_20_sent(
    open_page: Opener, http: aiohttp.ClientSession, sandbox: SandboxThread
) -> None:
    tab = await open_page("/extra.html")
    await tab.page.click("#long button")

    [form] = await received(http, sandbox, 1)
    assert form["phoneNumber"] == PHONE
    assert custom(form) == {f"extra{i:02d}": f"value {i}" for i in range(1, 21)}
    assert tab.errors == []


async def test_checkboxes_radios_selects_and_explicit_fields(
    open_page: Opener, http: aiohttp.ClientSession, sandbox: SandboxThread
) -> None:
    tab = await open_page("/kinds.html")
    await tab.page.click("#tour button")

    [form] = await received(http, sandbox, 1)
    assert (form["fio"], form["phoneNumber"]) == ("Иван Петров", PHONE)
    assert form["subject"] == "Подбор тура"
    assert custom(form) == {
        "Город": "Казань", "utm_source": "yandex", "services": "flight, insurance",
        "when": "evening", "countries": "TR, AE", "adults": "2",
    }
    assert tab.errors == []


async def test_manual_api_and_stub_replay(
    open_page: Opener, proxy: Proxy, http: aiohttp.ClientSession, sandbox: SandboxThread
) -> None:
    tab = await open_page("/manual.html")
    early = await tab.page.evaluate("window.early")  # called before the snippet loaded
    assert early["status"] == "queued" and early["id"]
    later = await tab.page.evaluate(
        "ctLeads.send({fio: 'Иван Петров', email: 'ivan@example.com', tags: ['quiz']})"
    )
    assert later["status"] == "queued" and later["id"] != early["id"]
    refused = await tab.page.evaluate("ctLeads.send({phoneNumber: '123'})")
    assert refused["error"] == "invalid_lead"  # a 4xx is the answer, and is not kept
    assert await tab.queued() == []

    forms = sorted(await received(http, sandbox, 2), key=lambda f: "email" in f)
    assert forms[0]["comment"] == "quiz: 3 rooms" and forms[0]["phoneNumber"] == PHONE
    assert forms[1]["email"] == "ivan@example.com" and forms[1]["tags"] == "quiz"
    for form in forms:
        assert form["sessionId"] == SESSION
        assert form["subject"] == "Quiz"  # the script tag's data-subject
        assert form["requestUrl"] == f"{proxy.url}/manual.html"
    assert tab.errors == []


async def test_sandbox_demo_page(
    context: BrowserContext, start_gateway: Any, browser_settings: Settings,
    http: aiohttp.ClientSession, sandbox: SandboxThread,
) -> None:
    demo: Gateway = await start_gateway(replace(browser_settings, sandbox=True))
    tab = Tab(await context.new_page())
    await tab.page.goto(f"{demo.url}/")
    await loaded(tab.page)
    await tab.page.fill("[name=name]", "Ivan Petrov")
    await tab.page.fill("[name=phone]", "+7 920 555-00-55")
    await tab.page.fill("[name=password]", "SECRET-demo")
    await tab.page.click("#callback button")
    await tab.page.wait_for_selector("#leads td:has-text('79205550055')", timeout=15000)
    [form] = await received(http, sandbox, 1)
    assert "SECRET-demo" not in orjson.dumps(form).decode()
    assert form["subject"] == "Demo callback form"
    assert tab.errors == []


async def test_script_tag_configuration_and_mod_id_default(
    open_page: Opener, proxy: Proxy, http: aiohttp.ClientSession, sandbox: SandboxThread
) -> None:
    tab = await open_page("/config.html")
    await tab.page.click("#send-newsletter")  # not matched by data-forms
    await tab.page.click("#send-callback")

    [form] = await received(http, sandbox, 1)
    assert (form["fio"], form["phoneNumber"]) == ("Ivan Petrov", PHONE)
    assert form["sessionId"] == SESSION  # asked with the gateway's CTGW_MOD_ID
    assert form["subject"] == "callback"
    assert [p.path for p in proxy.leads] == ["/leads?from=config"]  # data-endpoint
    assert tab.errors == []


async def test_bot_score_drops_a_form_sent_at_once_and_relays_one_sent_later(
    context: BrowserContext, start_gateway: Any, browser_settings: Settings,
    http: aiohttp.ClientSession, sandbox: SandboxThread,
) -> None:
    # Production's bot settings. Only the user agent is a person's browser's: headless
    # Chromium calls itself HeadlessChrome, a listed bot.
    gw: Gateway = await start_gateway(replace(browser_settings, bot_weights=BotWeights()))
    min_ms = gw.runner.app[SETTINGS].bot_min_elapsed * 1000
    assert context.browser is not None
    person = await context.browser.new_context(user_agent=CHROME)
    try:
        async with site(gw) as proxy:
            tab = Tab(await person.new_page())
            await tab.page.goto(proxy.url + "/double.html")
            await loaded(tab.page)
            await tab.page.fill("[name=your-name]", "Ivan Petrov")
            await tab.page.fill("[name=your-phone]", "+7 920 555-00-55")
            await tab.page.fill("[name=your-message]", "At once")
            await tab.page.click(".wpcf7-submit")

            async def answered() -> bool:
                return len(proxy.leads) == 1

            await eventually(answered, timeout=10)
            [hasty] = proxy.leads
            assert hasty.body["_elapsed"] < min_ms, "sent late: the test proves nothing"
            assert hasty.status == 202  # what a person would get

            await tab.page.wait_for_function(f"performance.now() > {min_ms}")
            await tab.page.fill("[name=your-message]", "After reading the page")
            await tab.page.click(".wpcf7-submit")
            [form] = await received(http, sandbox, 1)
            assert form["comment"] == "After reading the page"
            assert proxy.leads[1].body["_elapsed"] >= min_ms
            assert tab.errors == []
    finally:
        await person.close()
    value = gw.metrics.registry.get_sample_value
    for outcome in ("spam", "accepted"):
        labels = {"channel": "browser", "outcome": outcome, "site": "default"}
        assert value("ctgw_leads_received_total", labels) == 1, outcome
    fired = {s: value("ctgw_bot_signals_total", {"signal": s}) for s in ("fast", "origin", "agent")}
    assert fired == {"fast": 1, "origin": 0, "agent": 0}
