"""The bot score of a browser lead (pure): which signals fire, the points, the verdict."""

from __future__ import annotations

from dataclasses import replace
from typing import Any, cast

import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.config import Settings
from gateway.config_values import BotWeights
from gateway.intake import bots
from gateway.intake.bots import BotScorer, Score
from gateway.intake.handlers import Intake
from gateway.intake.quarantine import Quarantine
from gateway.ops.metrics import Metrics
from gateway.queue import Queue
from gateway.queue.base import DEFAULT_SITE
from gateway.sites import single_site

HOST = "shop.example.ru"
SITE = f"https://{HOST}"
PARTNER = "https://partner.example.com"
CHROME = ("Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
          "Chrome/124.0.0.0 Safari/537.36")
DEFAULTS = Settings(site_id="1", allowed_origins=frozenset({PARTNER}))
PERSON: dict[str, Any] = {  # what a person's browser sends, through the snippet
    "elapsed_ms": 5000, "origin": SITE, "referer": f"{SITE}/contacts", "agent": CHROME,
    "host": HOST,
}


def score(settings: Settings = DEFAULTS, **request: Any) -> Score:
    args: dict[str, Any] = {**PERSON, **request}
    return BotScorer.from_settings(settings).score(
        **args, allowed_origins=settings.allowed_origins)


# With the default settings: min 1.5 s, fast=2, origin=1, agent=2, threshold 2.
DEFAULT_CASES = [
    # the request's difference from a person's, points, signals, a bot
    ({}, 0, (), False),
    ({"elapsed_ms": None}, 0, (), False),  # a site's own code: no figure, no signal
    ({"elapsed_ms": 1500}, 0, (), False),
    ({"elapsed_ms": 1499}, 2, ("fast",), True),
    ({"elapsed_ms": 0}, 2, ("fast",), True),
    ({"origin": None}, 0, (), False),  # the Referer names the site
    ({"referer": None}, 0, (), False),
    ({"origin": None, "referer": None}, 1, ("origin",), False),
    ({"origin": "", "referer": ""}, 1, ("origin",), False),
    ({"origin": None, "referer": "https://search.example/?q=shop"}, 1, ("origin",), False),
    ({"origin": None, "referer": f"https://{HOST}.evil.example/"}, 1, ("origin",), False),
    ({"origin": None, "referer": f"https://{HOST}:8443/"}, 1, ("origin",), False),
    ({"origin": "null", "referer": None}, 1, ("origin",), False),
    ({"origin": "http://[::1", "referer": "http://[::1/x"}, 1, ("origin",), False),
    ({"origin": None, "referer": "/contacts"}, 1, ("origin",), False),
    ({"origin": "HTTPS://SHOP.EXAMPLE.RU", "referer": None}, 0, (), False),
    ({"origin": PARTNER, "referer": None}, 0, (), False),  # CTGW_ALLOWED_ORIGINS
    ({"origin": None, "referer": f"{PARTNER}/landing?utm=1"}, 0, (), False),
    ({"origin": "http://127.0.0.1:8080", "host": "127.0.0.1:8080", "referer": None}, 0, (), False),
    ({"agent": None}, 2, ("agent",), True),
    ({"agent": ""}, 2, ("agent",), True),
    ({"agent": "   "}, 2, ("agent",), True),
    ({"agent": "curl/8.5.0"}, 2, ("agent",), True),
    ({"agent": "Python/3.11 aiohttp/3.9.5"}, 2, ("agent",), True),
    ({"agent": "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)"},
     2, ("agent",), True),
    ({"agent": CHROME.replace("Chrome/", "HeadlessChrome/")}, 2, ("agent",), True),
    ({"elapsed_ms": 10, "origin": None, "referer": None, "agent": "python-requests/2.31"},
     5, ("fast", "origin", "agent"), True),
]


@pytest.mark.parametrize(("request_", "points", "signals", "bot"), DEFAULT_CASES)
def test_default_settings(
    request_: dict[str, Any], points: int, signals: tuple[str, ...], bot: bool
) -> None:
    assert score(**request_) == Score(points, signals, bot)


LOUD: dict[str, Any] = {"elapsed_ms": 10, "origin": None, "referer": None, "agent": "curl/8.5.0"}
SETTINGS_CASES = [
    # settings changed from the defaults, the request's difference, points, signals, a bot
    ({"bot_weights": BotWeights(fast=0)}, {"elapsed_ms": 10}, 0, (), False),
    ({"bot_weights": BotWeights(origin=0)}, {"origin": None, "referer": None}, 0, (), False),
    ({"bot_weights": BotWeights(agent=0)}, {"agent": None}, 0, (), False),
    ({"bot_weights": BotWeights(0, 0, 0)}, LOUD, 0, (), False),
    ({"bot_weights": BotWeights(fast=1, origin=1, agent=1)}, LOUD,
     3, ("fast", "origin", "agent"), True),
    ({"bot_weights": BotWeights(fast=1)}, {"elapsed_ms": 10}, 1, ("fast",), False),
    ({"bot_min_elapsed": 0.0}, {"elapsed_ms": 0}, 0, (), False),  # 0 turns it off
    ({"bot_min_elapsed": 0.3}, {"elapsed_ms": 299}, 2, ("fast",), True),
    ({"bot_min_elapsed": 0.3}, {"elapsed_ms": 300}, 0, (), False),
    ({"bot_threshold": 1}, {"origin": None, "referer": None}, 1, ("origin",), True),
    ({"bot_threshold": 5}, {**LOUD, "origin": SITE}, 4, ("fast", "agent"), False),
    ({"bot_threshold": 5}, LOUD, 5, ("fast", "origin", "agent"), True),
    ({"bot_agents": ("MyScanner",)}, {"agent": "myscanner/1.0"}, 2, ("agent",), True),
    ({"bot_agents": ("myscanner",)}, {"agent": "curl/8.5.0"}, 0, (), False),
    ({"bot_agents": ("myscanner",)}, {"agent": None}, 2, ("agent",), True),
    ({"bot_agents": ("",)}, {}, 0, (), False),  # an empty substring must not match everyone
    ({"bot_agents": ()}, {"agent": "curl/8.5.0"}, 0, (), False),
    ({"allowed_origins": frozenset()}, {"origin": PARTNER, "referer": None},
     1, ("origin",), False),
]


@pytest.mark.parametrize(("changes", "request_", "points", "signals", "bot"), SETTINGS_CASES)
def test_each_signal_is_configurable(
    changes: dict[str, Any], request_: dict[str, Any], points: int,
    signals: tuple[str, ...], bot: bool,
) -> None:
    assert score(replace(DEFAULTS, **changes), **request_) == Score(points, signals, bot)


async def test_every_signal_has_its_series_from_the_start() -> None:
    """increase() sees the first firing only of a series that existed before it."""
    registry = Metrics()
    queue = cast(Queue, None)
    settings = Settings(site_id="1")
    Intake(settings, queue, registry, Quarantine(queue, 10), single_site(settings))
    assert ("honeypot", *bots.SIGNALS) == bots.BOT_SIGNALS
    sample = registry.registry.get_sample_value
    for signal in bots.BOT_SIGNALS:
        assert sample("ctgw_bot_signals_total", {"signal": signal}) == 0.0, signal
        quarantined = {"signal": signal, "site": DEFAULT_SITE}
        assert sample("ctgw_leads_quarantined_total", quarantined) == 0.0, signal


HEADERS = st.none() | st.text(max_size=60) | st.sampled_from([SITE, f"{SITE}/x", "null", "//x"])


@given(elapsed=st.none() | st.integers(0, 10**6), origin=HEADERS, referer=HEADERS,
       agent=HEADERS, host=st.text(max_size=30) | st.just(HOST),
       weights=st.tuples(*[st.integers(0, 3)] * 3), threshold=st.integers(1, 9))
def test_any_request_gets_a_consistent_score(
    elapsed: int | None, origin: str | None, referer: str | None, agent: str | None,
    host: str, weights: tuple[int, int, int], threshold: int,
) -> None:
    settings = replace(DEFAULTS, bot_weights=BotWeights(*weights), bot_threshold=threshold)
    result = BotScorer.from_settings(settings).score(
        elapsed, origin, referer, agent, host, allowed_origins=settings.allowed_origins)
    by_name = dict(zip(bots.SIGNALS, weights, strict=True))
    assert result.points == sum(by_name[s] for s in result.signals)
    assert all(by_name[s] > 0 for s in result.signals)  # a signal with weight 0 never fires
    assert result.bot is (bool(result.signals) and result.points >= threshold)


@pytest.mark.parametrize("pad", [0, 600])  # under and over the length that is remembered
def test_remembered_verdicts_are_the_verdicts(pad: int) -> None:
    agent, origin = CHROME + " " * pad + " curl/8.5.0", SITE + "/" * pad
    for _ in range(2):  # the second time from memory, when short enough
        assert score(agent=agent).signals == ("agent",)
        assert score(agent=agent, settings=replace(DEFAULTS, bot_agents=("wget",))).signals == ()
        assert bots.origin_names_site(origin, HOST, frozenset()) is True
        assert bots.origin_names_site(origin, "other.example", frozenset()) is False
