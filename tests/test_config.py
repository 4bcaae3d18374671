"""Settings from the ``CTGW_*`` environment, and how ``ct-gateway serve`` reports bad ones."""

from __future__ import annotations

import ipaddress
import os
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.config import ConfigError, Settings, StoreSettings, from_env, store_from_env
from gateway.config_values import ClientRate, HostPort
from tests.support import LOG_LINES

SITE = {"CTGW_SITE_ID": "18990"}
ROOT = Path(__file__).resolve().parents[1]


def test_defaults() -> None:
    settings = from_env(SITE)
    assert settings == Settings(site_id="18990")
    assert settings.rate == 5.0
    assert settings.listen == HostPort("127.0.0.1", 8080)
    assert settings.ops_listen == HostPort("127.0.0.1", 9464)
    assert settings.client_rate == ClientRate(10 / 60, 5)
    assert settings.retention == 7 * 86400
    assert settings.sandbox is False


@pytest.mark.parametrize(("variable", "raw", "attribute", "value"), [
    ("CTGW_SITE_ID", "12345", "site_id", "12345"),
    ("CTGW_MOD_ID", "ab12cd34", "mod_id", "ab12cd34"),
    ("CTGW_CALLTOUCH_URL", "http://127.0.0.1:9000/", "calltouch_url", "http://127.0.0.1:9000"),
    ("CTGW_LISTEN", "0.0.0.0:80", "listen", HostPort("0.0.0.0", 80)),
    ("CTGW_LISTEN", "[::1]:8080", "listen", HostPort("::1", 8080)),
    ("CTGW_LISTEN", ":8080", "listen", HostPort("0.0.0.0", 8080)),
    ("CTGW_OPS_LISTEN", "127.0.0.1:0", "ops_listen", HostPort("127.0.0.1", 0)),
    ("CTGW_QUEUE", "sqlite:////var/lib/ctgw/q.db", "queue_url", "sqlite:////var/lib/ctgw/q.db"),
    ("CTGW_QUEUE", "postgresql://gw:pw@db:5432/ctgw", "queue_url",
     "postgresql://gw:pw@db:5432/ctgw"),
    ("CTGW_QUEUE", "postgres://db/ctgw", "queue_url", "postgres://db/ctgw"),
    ("CTGW_RATE", "2.5", "rate", 2.5),
    ("CTGW_RATE", " 3 ", "rate", 3.0),
    ("CTGW_RATE", "", "rate", 5.0),
    ("CTGW_EGRESS", "dc1-nat_2", "egress", "dc1-nat_2"),
    ("CTGW_EGRESS", "", "egress", "default"),
    ("CTGW_API_TOKENS", f"{'a' * 16}, {'b' * 40},", "api_tokens", ("a" * 16, "b" * 40)),
    ("CTGW_ALLOWED_ORIGINS", "https://a.example, http://b.example:8080/", "allowed_origins",
     frozenset({"https://a.example", "http://b.example:8080"})),
    ("CTGW_TRUSTED_PROXIES", "10.0.0.0/8, ::1", "trusted_proxies",
     (ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("::1/128"))),
    ("CTGW_CLIENT_RATE", "10/min", "client_rate", ClientRate(10 / 60, 5)),
    ("CTGW_CLIENT_RATE", "2/s", "client_rate", ClientRate(2.0, 2)),
    ("CTGW_CLIENT_RATE", "100/hour", "client_rate", ClientRate(100 / 3600, 5)),
    ("CTGW_RETENTION", "36h", "retention", 36 * 3600.0),
    ("CTGW_RETENTION", "1.5d", "retention", 1.5 * 86400),
    ("CTGW_RETENTION", "90m", "retention", 5400.0),
    ("CTGW_MAX_AGE", "500ms", "max_age", 0.5),
    ("CTGW_MAX_AGE", "30s", "max_age", 30.0),
    ("CTGW_TIMEZONE", "UTC", "timezone", "UTC"),
    ("CTGW_LOG_LEVEL", "debug", "log_level", "DEBUG"),
    ("CTGW_PROBE_MAX", "4s", "probe_max", 4.0),
    ("CTGW_PROBE_MAX", "30s", "probe_max", 30.0),
    ("CTGW_PROBE_MAX", "", "probe_max", 8.0),
])
def test_good_values(variable: str, raw: str, attribute: str, value: object) -> None:
    assert getattr(from_env({**SITE, variable: raw}), attribute) == value


@pytest.mark.parametrize(("variable", "raw"), [
    ("CTGW_SITE_ID", "abc"),
    ("CTGW_SITE_ID", "-1"),
    ("CTGW_SITE_ID", "\u0661\u0662\u0663"),    # Arabic-Indic digits
    ("CTGW_MOD_ID", "short"),
    ("CTGW_MOD_ID", "ABCDEFGH"),
    ("CTGW_MOD_ID", "abc-1234"),
    ("CTGW_CALLTOUCH_URL", "ftp://api.calltouch.ru"),
    ("CTGW_CALLTOUCH_URL", "api.calltouch.ru"),
    ("CTGW_CALLTOUCH_URL", "http://"),
    ("CTGW_CALLTOUCH_URL", "http://[::1"),
    ("CTGW_CALLTOUCH_URL", "http://127.0.0.1:abc"),
    ("CTGW_CALLTOUCH_URL", "http://127.0.0.1:99999"),
    ("CTGW_CALLTOUCH_URL", "http://:80"),
    ("CTGW_LISTEN", "8080"),
    ("CTGW_LISTEN", "localhost:http"),
    ("CTGW_LISTEN", "127.0.0.1:70000"),
    ("CTGW_LISTEN", "127.0.0.1:"),
    ("CTGW_OPS_LISTEN", "ops"),
    ("CTGW_QUEUE", "postgres://db"),
    ("CTGW_QUEUE", "postgresql://user:pw@db:port/ctgw"),
    ("CTGW_QUEUE", "redis://db/0"),
    ("CTGW_QUEUE", "sqlite://"),
    ("CTGW_QUEUE", "/var/lib/ctgw.db"),
    ("CTGW_RATE", "fast"),
    ("CTGW_RATE", "10/s"),
    ("CTGW_RATE", "0"),
    ("CTGW_RATE", "-5"),
    ("CTGW_RATE", "nan"),
    ("CTGW_RATE", "inf"),
    ("CTGW_RATE", "1001"),
    ("CTGW_EGRESS", "DC1"),
    ("CTGW_EGRESS", "dc 1"),
    ("CTGW_EGRESS", "a" * 65),
    ("CTGW_API_TOKENS", "short"),
    ("CTGW_API_TOKENS", f"{'a' * 16},tiny"),
    ("CTGW_ALLOWED_ORIGINS", "shop.example.ru"),
    ("CTGW_ALLOWED_ORIGINS", "https://a.example,ftp://b.example"),
    ("CTGW_ALLOWED_ORIGINS", "https://shop.example.ru/contacts"),  # a page, not an origin
    ("CTGW_ALLOWED_ORIGINS", "https://shop.example.ru:abc"),
    ("CTGW_ALLOWED_ORIGINS", "https://user@shop.example.ru"),
    ("CTGW_TRUSTED_PROXIES", "nginx"),
    ("CTGW_TRUSTED_PROXIES", "10.0.0.0/33"),
    ("CTGW_CLIENT_RATE", "10"),
    ("CTGW_CLIENT_RATE", "0/min"),
    ("CTGW_CLIENT_RATE", "-1/min"),
    ("CTGW_CLIENT_RATE", "10/week"),
    ("CTGW_CLIENT_RATE", "many/min"),
    ("CTGW_RETENTION", "7"),
    ("CTGW_RETENTION", "7 days"),
    ("CTGW_RETENTION", "-1d"),
    ("CTGW_MAX_AGE", "forever"),
    ("CTGW_TIMEZONE", "Mars/Olympus_Mons"),
    ("CTGW_TIMEZONE", "Europe"),                # a directory of zones, not a zone
    ("CTGW_TIMEZONE", "../../etc/passwd"),
    ("CTGW_LOG_LEVEL", "verbose"),
    ("CTGW_PROBE_MAX", "500ms"),
    ("CTGW_PROBE_MAX", "1m"),
    ("CTGW_PROBE_MAX", "8"),
])
def test_bad_values_name_the_variable(variable: str, raw: str) -> None:
    with pytest.raises(ConfigError) as info:
        from_env({**SITE, variable: raw})
    assert info.value.variable == variable
    assert str(info.value).startswith(f"{variable}: ")
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("variable", [
    "CTGW_SITE_ID", "CTGW_MOD_ID", "CTGW_ALLOWED_ORIGINS", "CTGW_TIMEZONE", "CTGW_ACCESS_TOKEN",
    "CTGW_CLIENT_API_ID", "CTGW_POINTS_PER_HOUR", "CTGW_POINTS_PER_DAY", "CTGW_API_TOKENS",
])
def test_a_variable_of_one_site_is_refused_beside_a_sites_file(variable: str) -> None:
    """With ``CTGW_SITES`` no site would use it: an operator moving to a sites file who kept
    ``CTGW_API_TOKENS`` got a 401 on every call, with nothing said at the start."""
    with pytest.raises(ConfigError) as info:
        from_env({"CTGW_SITES": "/etc/ct-gateway/sites.toml", variable: "anything"})
    assert info.value.variable == "CTGW_SITES"
    assert f"unset {variable}" in str(info.value)
    assert "anything" not in str(info.value)  # the value may be a secret


@pytest.mark.parametrize("env", [{}, {"CTGW_SITE_ID": ""}, {"CTGW_SITE_ID": "  "}])
def test_site_id_is_required_without_the_sandbox(env: dict[str, str]) -> None:
    with pytest.raises(ConfigError) as info:
        from_env(env)
    assert info.value.variable == "CTGW_SITE_ID"


def test_the_sandbox_needs_no_site_id() -> None:
    settings = from_env({}, sandbox=True)
    assert settings.sandbox is True
    assert settings.site_id.isdigit()


def test_the_sandbox_refuses_a_site_id() -> None:
    """Both given, the operator meant one of them: a real site's leads must not go to the
    simulator."""
    with pytest.raises(ConfigError) as info:
        from_env({"CTGW_SITE_ID": "12345"}, sandbox=True)
    assert info.value.variable == "CTGW_SITE_ID"
    assert "--sandbox" in str(info.value)
    assert from_env({"CTGW_SITE_ID": " "}, sandbox=True).sandbox  # blank is unset


@pytest.mark.parametrize("raw", ["abc", "10/s", "0", "1001"])
def test_a_bad_rate_says_the_form_expected(raw: str) -> None:
    with pytest.raises(ConfigError) as info:
        from_env({**SITE, "CTGW_RATE": raw})
    assert str(info.value) == (
        "CTGW_RATE: expected requests per second, a number above 0 and at most 1000, e.g. 5"
        f" (got {raw!r})"
    )


def test_store_settings_read_only_the_store_variables() -> None:
    assert store_from_env({}) == StoreSettings("sqlite:///./ct-gateway.db", "INFO")
    env = {"CTGW_QUEUE": "sqlite:////var/q.db", "CTGW_LOG_LEVEL": "debug",
           "CTGW_SITE_ID": "not a number", "CTGW_RATE": "abc"}
    assert store_from_env(env) == StoreSettings("sqlite:////var/q.db", "DEBUG")
    assert from_env({**env, **SITE, "CTGW_RATE": "5"}).queue_url == "sqlite:////var/q.db"


@pytest.mark.parametrize(("variable", "raw"), [
    ("CTGW_QUEUE", "postgres://db"), ("CTGW_LOG_LEVEL", "verbose"),
])
def test_store_settings_name_a_bad_variable(variable: str, raw: str) -> None:
    with pytest.raises(ConfigError) as info:
        store_from_env({variable: raw})
    assert info.value.variable == variable


def test_a_bad_value_fails_even_with_the_sandbox() -> None:
    with pytest.raises(ConfigError) as info:
        from_env({"CTGW_RATE": "0"}, sandbox=True)
    assert info.value.variable == "CTGW_RATE"


def _serve(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("CTGW_")}
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "serve", *args], env={**clean, **env},
        cwd=ROOT, capture_output=True, text=True, timeout=60, check=False,
    )
    LOG_LINES.extend(result.stdout.splitlines() + result.stderr.splitlines())
    return result


@pytest.mark.parametrize(("env", "args", "variable"), [
    ({"CTGW_SITE_ID": "18990", "CTGW_RATE": "fast"}, (), "CTGW_RATE"),
    ({"CTGW_RATE": "0"}, ("--sandbox",), "CTGW_RATE"),
    ({"CTGW_SITE_ID": "12345"}, ("--sandbox",), "CTGW_SITE_ID"),
    ({}, (), "CTGW_SITE_ID"),
    ({"CTGW_SITE_ID": "18990", "CTGW_TIMEZONE": "Europe"}, (), "CTGW_TIMEZONE"),
])
def test_serve_stops_with_code_2_and_one_line(
    env: dict[str, str], args: tuple[str, ...], variable: str
) -> None:
    result = _serve(env, *args)
    assert result.returncode == 2
    assert result.stdout == ""
    [line] = result.stderr.splitlines()
    assert variable in line
    assert line.startswith("ct-gateway: ")


def test_a_bad_token_is_not_echoed() -> None:
    with pytest.raises(ConfigError) as caught:
        from_env({"CTGW_SITE_ID": "1", "CTGW_API_TOKENS": "short-secret-9"})
    assert caught.value.variable == "CTGW_API_TOKENS"
    assert "short-secret-9" not in str(caught.value)


def test_a_bad_queue_url_is_never_printed() -> None:
    with pytest.raises(ConfigError) as info:
        from_env({**SITE, "CTGW_QUEUE": "postgresql://gw:hunter2secret@db:port/ctgw"})
    assert "hunter2secret" not in str(info.value) and "value hidden" in str(info.value)
