# ruff: noqa: RUF001 -- the leads are Russian, as real ones are.
"""Realistic leads: what the snippet posts, and what the intake stores for it; and deals.

A lead is numbered, so every one carries its own ``requestNumber`` (the snippet makes one per
submission) and intake does its dedup look-up as it would in production. A deal is what a CRM
exports to ``POST /api/v1/deals``, one a line of NDJSON, each with its own ``orderNumber``.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import orjson

from gateway.kinds import lead as leads

CONTENT_TYPE = "text/plain;charset=UTF-8"  # the snippet's choice: no CORS preflight
USER_AGENT = ("Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko)"
              " Chrome/131.0.0.0 Safari/537.36")
ELAPSED_MS = 23_000  # what the snippet adds: the visitor took 23 s to fill the form in
NUMBER_MARK = "@@N@@"
_NAMES = ("Иван Петров", "Мария Смирнова", "Алексей Кузнецов", "Ольга Васильева")
_COMMENT = "Перезвоните, пожалуйста, после 18:00. Интересует доставка в пятницу."
_URL = "https://shop.example.ru/catalog/item-{}?utm_source=yandex&utm_medium=cpc&utm_campaign=sale"
_DEAL_STATUSES = ("Новая", "В работе", "Оплачена", "Отгружена")
_MANAGERS = ("Ирина Соколова", "Дмитрий Орлов", "Анна Лебедева")
DEAL_DATE_FORMAT = "%d-%m-%Y %H:%M:%S"  # lead-service's dd-mm-yyyy hh:mm:ss
NDJSON = "application/x-ndjson"


def _digits(n: int) -> str:
    return f"9{n % 10**9:09d}"


def browser_lead(n: int, number: str) -> dict[str, Any]:
    """The JSON body the snippet sends for submission ``n``."""
    d = _digits(n)
    return {
        "fio": _NAMES[n % len(_NAMES)],
        "phoneNumber": f"+7 ({d[0:3]}) {d[3:6]}-{d[6:8]}-{d[8:10]}",
        "email": f"client{n}@example.ru",
        "subject": "Заявка с сайта",
        "comment": _COMMENT,
        "requestUrl": _URL.format(n % 500),
        "sessionId": str(1_845_000_000 + n % 1_000_000),
        "requestNumber": number,
    }


def browser_headers(url: str) -> dict[str, str]:
    """The headers a visitor's browser sends with the snippet's post to the gateway at ``url``.

    With them a lead passes the bot score as a person's does, through the same code.
    """
    return {"Content-Type": CONTENT_TYPE, "Origin": url.rstrip("/"), "User-Agent": USER_AGENT}


def _posted(n: int, number: str) -> dict[str, Any]:
    return {**browser_lead(n, number), "_elapsed": ELAPSED_MS}


def body(n: int, prefix: str) -> bytes:
    return orjson.dumps(_posted(n, f"{prefix}-{n}"))


def body_template() -> tuple[str, str]:
    """The body split around its request number, for load generators that fill it in."""
    text = orjson.dumps(_posted(0, NUMBER_MARK)).decode()
    head, _, tail = text.partition(NUMBER_MARK)
    return head, tail


def stored_fields(n: int, number: str, accepted: datetime) -> dict[str, Any]:
    """What intake commits for ``browser_lead(n, number)``: normalised, dated and numbered."""
    fields = browser_lead(n, number)
    fields["phoneNumber"] = "7" + _digits(n)
    fields["requestDate"] = accepted.strftime(leads.DATE_FORMAT)
    return fields


def check_stored_fields(accepted: datetime) -> None:
    """Fail loudly if :func:`stored_fields` drifts from the gateway's own validation."""
    for n in (0, 7, 123_456):
        expected = dict(leads.validate(browser_lead(n, f"x-{n}"), "browser").fields)
        expected["requestDate"] = accepted.strftime(leads.DATE_FORMAT)
        if expected != stored_fields(n, f"x-{n}", accepted):
            raise AssertionError(f"stored_fields({n}) differs from gateway validation")


def deal(n: int, prefix: str, moment: datetime) -> dict[str, Any]:
    """Deal ``n`` as a CRM posts it: numbered, with a status dated ``moment``, and contacts."""
    d, date = _digits(n), moment.strftime(DEAL_DATE_FORMAT)
    return {
        "orderNumber": f"{prefix}-{n}",
        "orderName": f"Заказ №{n}",
        "orderDate": date,
        "status": _DEAL_STATUSES[n % len(_DEAL_STATUSES)],
        "statusDate": date,
        "revenue": 990 + n % 50_000 + 0.5,
        "funnel": "Интернет-магазин",
        "manager": _MANAGERS[n % len(_MANAGERS)],
        "phones": [f"+7 ({d[0:3]}) {d[3:6]}-{d[6:8]}-{d[8:10]}"],
        "emails": [f"client{n}@example.ru"],
    }


def deal_lines(first: int, count: int, prefix: str, moment: datetime) -> bytes:
    """Deals ``first .. first + count - 1`` as NDJSON, one a line."""
    return b"".join(orjson.dumps(deal(n, prefix, moment)) + b"\n"
                    for n in range(first, first + count))
