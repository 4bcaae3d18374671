"""API points on a fake clock: budgets per site in its own hours and days, the reserve kept for
leads, bulk spread over the hour, a refusal for points and its probe (pure, no I/O)."""

from __future__ import annotations

import math
from datetime import datetime
from zoneinfo import ZoneInfo

import orjson
import pytest

from gateway.calltouch.answers import (
    Convert,
    Defer,
    Delivered,
    Permanent,
    Retry,
    Verdict,
    http_failure,
)
from gateway.calltouch.client import Reply
from gateway.config import ConfigError, from_env
from gateway.config_points import parse_costs, parse_reserve
from gateway.relay.ledger import DAY, HOUR, windows
from gateway.relay.points import REFUSED, Budget, Points, Spend
from gateway.sites import Site, Sites
from gateway.upstream_gates import site_budgets

MOSCOW = ZoneInfo("Europe/Moscow")
LEAD, DEAL = "lead", "deal.create"
REGISTER, CREATE = "register", "client-order/create"
OK: list[Verdict] = [Delivered("1")]
ANSWERED = Reply(200, b"{}", None)
DOWN = Reply(503, b"", Retry("server_error", "HTTP 503"))


class Clock:
    def __init__(self, at: datetime) -> None:
        self.now = at.timestamp()

    def __call__(self) -> float:
        return self.now


def moscow(hour: int, minute: int = 0, second: int = 0, day: int = 2) -> datetime:
    return datetime(2026, 12, day, hour, minute, second, tzinfo=MOSCOW)


def points(clock: Clock, **budget: int | float | str) -> tuple[Points, list[tuple[str, bool]]]:
    changes: list[tuple[str, bool]] = []
    ledger = Points({"shop": Budget(**budget)}, {CREATE: 5}, probe_every=300.0, clock=clock,  # type: ignore[arg-type]
                    on_refused=lambda site, refused: changes.append((site, refused)))
    return ledger, changes


def spend(ledger: Points, kind: str, method: str, times: int) -> int:
    """Calls of ``kind`` while the ledger lets them go (at most ``times``); how many went."""
    sent = 0
    while sent < times and (call := ledger.take("shop", kind, method)):
        ledger.heard(call, ANSWERED, OK)
        sent += 1
    return sent


def taken(ledger: Points, kind: str, method: str, site: str = "shop") -> Spend:
    spent = ledger.take(site, kind, method)
    assert spent is not None
    return spent


def refusal(status: int = 403, text: str = "Недостаточно баллов API") -> Reply:
    body = orjson.dumps({"message": text})
    return Reply(status, body, http_failure(status, {}, body))


def test_bulk_stops_at_the_reserve_and_leads_spend_it() -> None:
    clock = Clock(moscow(10, 59, 59))  # the hour's end: its whole bulk share is due
    ledger, _ = points(clock, per_hour=50)
    assert spend(ledger, DEAL, CREATE, 100) == 9  # 45 of 50 at 5 a call; 5 kept for leads
    assert ledger.until("shop", DEAL, CREATE) == moscow(11).timestamp()
    assert spend(ledger, LEAD, REGISTER, 100) == 5
    assert ledger.until("shop", LEAD, REGISTER) == moscow(11).timestamp()
    assert ledger.remaining("shop", HOUR) == 0


def test_the_next_hour_gives_the_points_back() -> None:
    clock = Clock(moscow(10, 59, 59))
    ledger, _ = points(clock, per_hour=50)
    spend(ledger, DEAL, CREATE, 100)
    clock.now = moscow(11, 59, 59).timestamp()
    assert ledger.remaining("shop", HOUR) == 50
    assert spend(ledger, DEAL, CREATE, 100) == 9


def test_bulk_is_spread_over_the_hour() -> None:
    clock = Clock(moscow(11))
    ledger, _ = points(clock, per_hour=9000)  # 8,100 for bulk: 2.25 a second, 405 at once
    assert spend(ledger, DEAL, REGISTER, 10_000) == 405
    due = ledger.until("shop", DEAL, REGISTER)
    assert due == pytest.approx(moscow(11).timestamp() + 1 / 2.25 * 1)
    clock.now = moscow(11, 30).timestamp()
    assert spend(ledger, DEAL, REGISTER, 10_000) == 4050 + 405 - 405
    assert spend(ledger, LEAD, REGISTER, 3) == 3  # leads are never spread


def test_the_day_budget_keeps_the_reserve_too() -> None:
    clock = Clock(moscow(23, 59, 59))
    ledger, _ = points(clock, per_hour=100, per_day=30)
    assert spend(ledger, DEAL, REGISTER, 100) == 20  # 30 less the hour's reserve of 10
    assert ledger.until("shop", DEAL, REGISTER) == moscow(0, day=3).timestamp()
    assert spend(ledger, LEAD, REGISTER, 100) == 10
    assert ledger.remaining("shop", DAY) == 0


def test_hours_and_days_are_the_sites_own() -> None:
    at = datetime(2026, 12, 2, 13, 40, tzinfo=ZoneInfo("Asia/Kolkata"))  # UTC+05:30
    start, end, day_end = windows(at.timestamp(), ZoneInfo("Asia/Kolkata"))
    assert datetime.fromtimestamp(start, ZoneInfo("Asia/Kolkata")).strftime("%H:%M") == "13:00"
    assert end - start == 3600
    assert datetime.fromtimestamp(day_end, ZoneInfo("Asia/Kolkata")).strftime("%d %H:%M") == \
        "03 00:00"


def test_calls_in_flight_count_and_a_failed_one_gives_its_points_back() -> None:
    clock = Clock(moscow(10, 59, 59))
    ledger, _ = points(clock, per_hour=50)
    calls = [ledger.take("shop", DEAL, CREATE) for _ in range(12)]  # none answered yet
    assert [c is not None for c in calls] == [True] * 9 + [False] * 3
    assert calls[0] is not None
    ledger.heard(calls[0], DOWN, [Retry("server_error", "HTTP 503")])
    assert ledger.remaining("shop", HOUR) == 10
    assert ledger.take("shop", DEAL, CREATE)


def test_a_call_calltouch_answered_stays_spent_whatever_its_items_say() -> None:
    # An ERP re-sync: every deal of the create call already exists, and is sent as an update.
    clock = Clock(moscow(10, 59, 59))
    ledger, _ = points(clock, per_hour=1000)
    ledger.heard(taken(ledger, DEAL, CREATE), ANSWERED, [Convert("deal.update")] * 100)
    assert ledger.remaining("shop", HOUR) == 995


def test_a_call_that_fails_after_its_hour_takes_nothing_from_the_new_one() -> None:
    clock = Clock(moscow(10, 59, 59))
    ledger, _ = points(clock, per_hour=1000, per_day=5000)
    late = taken(ledger, DEAL, CREATE)  # in flight over the hour
    clock.now = moscow(11, 0, 1).timestamp()
    ledger.heard(taken(ledger, LEAD, REGISTER), ANSWERED, OK)
    ledger.heard(late, DOWN, [Retry("server_error", "HTTP 503")])
    assert ledger.remaining("shop", HOUR) == 999
    assert ledger.remaining("shop", DAY) == 5000 - 1  # the day's call given back


def test_a_daily_budget_alone_keeps_its_reserve_for_leads() -> None:
    clock = Clock(moscow(23, 59, 59))
    ledger, _ = points(clock, per_day=100, reserve=0.1)
    assert spend(ledger, DEAL, REGISTER, 1000) == 90
    assert spend(ledger, LEAD, REGISTER, 1000) == 10


def test_a_site_without_budgets_is_never_held() -> None:
    ledger = Points({}, clock=Clock(moscow(10)))
    assert ledger.until("blog", DEAL, CREATE) is None
    ledger.heard(taken(ledger, DEAL, CREATE, "blog"), ANSWERED, OK)
    assert math.isnan(ledger.remaining("blog", HOUR))


def test_a_refusal_holds_the_site_with_one_probe_every_interval() -> None:
    clock = Clock(moscow(10, 20))
    ledger, changes = points(clock, per_hour=9000)
    verdict = ledger.refused(refusal())
    assert isinstance(verdict, Defer) and verdict.code == REFUSED and verdict.delay == 300
    ledger.heard(taken(ledger, LEAD, REGISTER), refusal(), [verdict])
    assert changes == [("shop", True)]
    assert ledger.until("shop", LEAD, REGISTER) == moscow(10, 25).timestamp()
    clock.now = moscow(10, 25).timestamp()
    probe = taken(ledger, LEAD, REGISTER)
    assert not ledger.take("shop", DEAL, CREATE)  # only one
    assert ledger.until("shop", DEAL, CREATE) == moscow(10, 30).timestamp()
    ledger.heard(probe, refusal(), [verdict])  # refused again
    clock.now = moscow(10, 30).timestamp()
    ledger.heard(taken(ledger, LEAD, REGISTER), ANSWERED, OK)  # the probe passed
    assert changes == [("shop", True), ("shop", False)]
    assert ledger.until("shop", DEAL, REGISTER) is None


def test_a_refusal_ends_with_the_hour() -> None:
    clock = Clock(moscow(10, 58))
    ledger, changes = points(clock, per_hour=9000)
    verdict = ledger.refused(refusal())
    assert verdict is not None
    ledger.heard(taken(ledger, LEAD, REGISTER), refusal(), [verdict])
    assert ledger.until("shop", LEAD, REGISTER) == moscow(11).timestamp()  # not 11:03
    clock.now = moscow(11).timestamp()
    assert ledger.until("shop", LEAD, REGISTER) is None
    assert changes == [("shop", True), ("shop", False)]


@pytest.mark.parametrize("reply", [
    Reply(200, b'{"requestId": 1}', None),
    Reply(429, b'{"message": "points"}', Retry("rate_limited", "HTTP 429")),
    Reply(503, b"points", Retry("server_error", "HTTP 503")),
    refusal(400, "Не указан телефон"),  # noqa: RUF001 -- Calltouch's wording is Russian
    refusal(401, "invalid token"),
])
def test_only_a_refusal_that_says_points_is_one(reply: Reply) -> None:
    ledger, _ = points(Clock(moscow(10)), per_hour=10)
    assert ledger.refused(reply) is None


@pytest.mark.parametrize("text", ["Недостаточно баллов API", "Hourly API points exhausted",
                                  "limit of points reached"])
def test_the_refusal_pattern_matches_both_languages(text: str) -> None:
    ledger, _ = points(Clock(moscow(10)), per_hour=10)
    verdict = ledger.refused(refusal(403, text))
    assert isinstance(verdict, Defer) and verdict.code == REFUSED


def test_the_refusal_pattern_is_a_setting() -> None:
    ledger = Points({}, refusal=r"LIMIT_\d+", clock=Clock(moscow(10)))
    assert ledger.refused(refusal(403, "LIMIT_7")) is not None
    assert ledger.refused(refusal(403, "Недостаточно баллов API")) is None


def test_permanent_is_not_deferred_without_the_pattern() -> None:
    reply = refusal(403, "forbidden")
    assert isinstance(reply.failure, Permanent)
    assert Points({}).refused(reply) is None


def test_settings() -> None:
    env = {"CTGW_SITE_ID": "1", "CTGW_POINTS_PER_HOUR": "9000", "CTGW_POINTS_PER_DAY": "216000",
           "CTGW_POINTS_RESERVE": "15%", "CTGW_POINT_COSTS": "client-order/create=2, register=1",
           "CTGW_POINTS_PROBE": "1m"}
    config = from_env(env).points
    assert (config.per_hour, config.per_day, config.reserve) == (9000, 216000, 0.15)
    assert config.costs == {"client-order/create": 2, "register": 1}
    assert config.probe_every == 60
    assert Budget(9000, reserve=0.15).reserved == 1350


@pytest.mark.parametrize(("name", "value"), [
    ("CTGW_POINTS_PER_HOUR", "0"), ("CTGW_POINTS_RESERVE", "100%"),
    ("CTGW_POINTS_RESERVE", "-1"), ("CTGW_POINT_COSTS", "register"),
    ("CTGW_POINTS_REFUSAL", "(unclosed"), ("CTGW_POINTS_REFUSAL", "a{99999999999}"),
    ("CTGW_POINTS_REFUSAL", "(" * 5000 + ")" * 5000), ("CTGW_POINTS_PROBE", "soon"),
])
def test_bad_settings_name_the_variable(name: str, value: str) -> None:
    with pytest.raises(ConfigError) as info:
        from_env({"CTGW_SITE_ID": "1", name: value})
    assert info.value.variable == name


def test_env_budgets_and_a_sites_file_are_not_both_allowed() -> None:
    with pytest.raises(ConfigError) as info:
        from_env({"CTGW_SITES": "/etc/sites.toml", "CTGW_POINTS_PER_HOUR": "10"})
    assert info.value.variable == "CTGW_SITES"


def test_parsers() -> None:
    assert parse_reserve("0") == 0 and parse_reserve("0.25") == 0.25
    assert parse_costs("") == {}


def test_a_sites_own_reserve_overrides_the_gateways() -> None:
    sites = Sites({
        "shop": Site("shop", "1", hosts=("shop.ru",), points_per_hour=1000, points_reserve=0.3),
        "blog": Site("blog", "2", hosts=("blog.ru",), points_per_hour=1000),
        "free": Site("free", "3", hosts=("free.ru",)),  # no budget: nothing to count
    })
    budgets = site_budgets(sites, reserve=0.1)
    assert {name: budget.reserved for name, budget in budgets.items()} == {"shop": 300, "blog": 100}
