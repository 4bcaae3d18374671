"""Property tests of the back office's bodies on a real gateway: deals, comments, NDJSON and
Calltouch's 1.0 paths. Whatever arrives: never a 5xx, always JSON, the error shape or the
answer's own."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any
from urllib.parse import urlencode

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from gateway.config import Settings
from gateway.config_values import ClientRate, HostPort
from tests.support import TOKEN
from tests.test_fuzz_intake import FUZZ, Answer, GatewayThread, send
from tests.test_fuzz_intake import check as check_one

DEAL_FIELDS = ("orderNumber", "orderDate", "status", "statusDate", "revenue", "funnel",
               "currency", "manager", "orderName", "orderLink", "tags", "comment",
               "customFields", "matching", "phones", "emails", "lead")
COMMENT_FIELDS = ("comment", "lead", "requestId", "callId", "matching", "key")
LEGACY_PARAMS = ("orderNumber", "orderId", "orderSum", "orderStatus", "status", "orderDate",
                 "service", "manager", "tags", "comment", "callId", "requestId", "phoneNumber",
                 "email", "custom[x]")
NDJSON = "application/x-ndjson"
CLIENT_API_ID = "fuzz-client-api-id"

json_leaf = st.one_of(st.none(), st.booleans(), st.integers(-(2**63), 2**63 - 1), st.floats(),
                      st.text(max_size=40))
json_value = st.recursive(
    json_leaf,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner,
                                                               max_size=4),
    max_leaves=12,
)


def item(fields: tuple[str, ...]) -> st.SearchStrategy[dict[str, Any]]:
    return st.dictionaries(st.sampled_from(fields) | st.text(max_size=12), json_value,
                           max_size=8)


@pytest.fixture(scope="module")
def office(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayThread]:
    """A gateway like the intake's fuzz one, with the back office on."""
    queue = tmp_path_factory.mktemp("fuzz-office") / "queue.db"
    gw = GatewayThread(Settings(
        site_id="18990", listen=HostPort("127.0.0.1", 0), ops_listen=HostPort("127.0.0.1", 0),
        queue_url=f"sqlite:///{queue}", api_tokens=(TOKEN,), upstream_timeout=2.0,
        shutdown_grace=1.0, client_rate=ClientRate(1e6, 1_000_000),
        access_token="fuzz-token", client_api_id=CLIENT_API_ID,
    ))
    gw.start()
    yield gw
    gw.stop()


def check(answer: Answer) -> None:
    """One item's answer as the lead's; many items' as the tally, with bounded errors."""
    data = orjson.loads(answer.body) if answer.content_type.startswith("application/json") else None
    if answer.status == 202 and isinstance(data, dict) and "accepted" in data:
        assert data.keys() == {"accepted", "merged", "rejected", "errors"}, data
        assert all(isinstance(data[k], int) and data[k] >= 0
                   for k in ("accepted", "merged", "rejected"))
        assert len(data["errors"]) <= 100
        for error in data["errors"]:
            assert error.keys() - {"line", "index"} == {"field", "code", "message"}, error
        return
    check_one(answer)


@FUZZ
@given(st.one_of(item(DEAL_FIELDS), st.lists(item(DEAL_FIELDS), max_size=5), json_value))
def test_any_deal_body(office: GatewayThread, body: object) -> None:
    check(send(office, "/api/v1/deals", orjson.dumps(body), {"Content-Type": "application/json"}))


@FUZZ
@given(st.one_of(item(COMMENT_FIELDS), st.lists(item(COMMENT_FIELDS), max_size=5), json_value))
def test_any_comment_body(office: GatewayThread, body: object) -> None:
    check(send(office, "/api/v1/comments", orjson.dumps(body),
               {"Content-Type": "application/json"}))


@FUZZ
@given(st.lists(st.one_of(item(DEAL_FIELDS).map(lambda d: orjson.dumps(d)), st.binary(max_size=60)),
                max_size=8),
       st.sampled_from(["\n", "\r\n"]), st.sampled_from(["/api/v1/deals", "/api/v1/comments"]))
def test_any_ndjson(office: GatewayThread, lines: list[bytes], end: str, path: str) -> None:
    body = end.encode().join(line.replace(b"\n", b" ") for line in lines)
    check(send(office, path, body, {"Content-Type": NDJSON}))


@FUZZ
@given(st.dictionaries(st.sampled_from(LEGACY_PARAMS) | st.text(max_size=10),
                       st.text(max_size=30), max_size=8),
       st.sampled_from(["register/", "update-by-id/", "delete-by-id/"]))
def test_any_legacy_call(office: GatewayThread, params: dict[str, str], path: str) -> None:
    query = urlencode({"clientApiId": CLIENT_API_ID})
    body = urlencode(params).encode()
    answer = send(office, f"/calls-service/RestAPI/orders/{path}?{query}", body,
                  {"Content-Type": "application/x-www-form-urlencoded"})
    if path != "register/":  # update and delete are GET only: 405, in the error shape
        assert answer.status == 405
    check(answer)
