"""The ``CTGW_SITES`` file: sites, their hosts and secrets, and the API tokens bound to them."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.config import ConfigError
from gateway.sites import Site, Sites
from gateway.sites_file import load_sites
from gateway.sites_keys import SitesError

SHOP_TOKEN = "shop-access-token-0123456789"
CRM_TOKEN = "crm-bearer-token-0123456789"
ERP_TOKEN = "erp-bearer-token-from-a-file"
API_ID = "shop-client-api-id-secret"
BLOG_API_ID = "blog-client-api-id-secret"

TWO_SITES = f"""
[sites.shop]
site_id = "12345"
mod_id = "abcd1234"
hosts = ["Shop.ru", "www.shop.ru.", "магазин.рф"]
allowed_origins = ["https://Promo.Shop.ru/", "http://localhost:3000"]
access_token = "env:SHOP_CT_TOKEN"
client_api_id = "{API_ID}"
timezone = "Asia/Yekaterinburg"
points_per_hour = 500
points_per_day = 5000
points_reserve = "20%"
deal_fallback_source = "оффлайн"

[sites.blog-2]
site_id = 67890
hosts = ["blog.example.com"]
client_api_id = "file:blog-api-id"

[tokens]
crm = {{token = "env:CRM_TOKEN", sites = ["shop"]}}

[tokens.erp]
token = "file:/SECRETS/erp-token"
sites = ["shop", "blog-2"]
"""

ENV = {"SHOP_CT_TOKEN": f"  {SHOP_TOKEN}\n", "CRM_TOKEN": CRM_TOKEN}


def write(tmp_path: Path, text: str, name: str = "sites.toml") -> str:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return str(path)


def two_sites(tmp_path: Path) -> Sites:
    (tmp_path / "blog-api-id").write_text(f"{BLOG_API_ID}\n")
    (tmp_path / "erp-token").write_text(f"{ERP_TOKEN}\r\n")
    return load_sites(write(tmp_path, TWO_SITES.replace("/SECRETS", str(tmp_path))), ENV)


def error_of(tmp_path: Path, text: str, env: dict[str, str] | None = None) -> SitesError:
    path = write(tmp_path, text)
    with pytest.raises(SitesError) as caught:
        load_sites(path, env or {})
    error = caught.value
    message = str(error)
    assert message.startswith(f"CTGW_SITES: {path}: ")
    assert "\n" not in message
    return error


# -- a valid file ---------------------------------------------------------------------------


def test_two_sites(tmp_path: Path) -> None:
    sites = two_sites(tmp_path)
    assert sites.sites["shop"] == Site(
        name="shop",
        site_id="12345",
        mod_id="abcd1234",
        hosts=("shop.ru", "www.shop.ru", "xn--80aairftm.xn--p1ai"),
        allowed_origins=frozenset({"https://promo.shop.ru", "http://localhost:3000"}),
        access_token=SHOP_TOKEN,  # from the environment, blanks stripped
        client_api_id=API_ID,
        timezone="Asia/Yekaterinburg",
        points_per_hour=500,
        points_per_day=5000,
        points_reserve=0.2,
        deal_fallback_source="оффлайн",
    )
    assert sites.sites["blog-2"] == Site(
        name="blog-2", site_id="67890", hosts=("blog.example.com",),
        client_api_id=BLOG_API_ID,  # from a file beside sites.toml, its newline stripped
    )
    assert sites.sites["blog-2"].timezone == "Europe/Moscow"
    assert list(sites.sites) == ["shop", "blog-2"]
    assert sites.tokens == {
        CRM_TOKEN: frozenset({"shop"}),
        ERP_TOKEN: frozenset({"shop", "blog-2"}),  # an absolute file:, its \r\n stripped
    }


def test_secrets_are_not_in_repr(tmp_path: Path) -> None:
    sites = two_sites(tmp_path)
    shown = repr(sites)
    assert "shop.ru" in shown
    for secret in (SHOP_TOKEN, CRM_TOKEN, ERP_TOKEN, API_ID, BLOG_API_ID):
        assert secret not in shown


def test_minimal_file(tmp_path: Path) -> None:
    sites = load_sites(write(tmp_path, '[sites.a]\nsite_id = "1"\nhosts = ["a.ru"]\n'), {})
    assert sites.sites == {"a": Site(name="a", site_id="1", hosts=("a.ru",))}
    assert sites.tokens == {}
    assert sites.for_token(CRM_TOKEN) == frozenset()


def test_a_host_named_twice_in_one_site_is_kept_once(tmp_path: Path) -> None:
    text = '[sites.a]\nsite_id = "1"\nhosts = ["a.ru", "A.RU", "b.ru", "a.ru."]\n'
    assert load_sites(write(tmp_path, text), {}).sites["a"].hosts == ("a.ru", "b.ru")


def test_ip_hosts(tmp_path: Path) -> None:
    text = '[sites.a]\nsite_id = "1"\nhosts = ["127.0.0.1", "::1", "[2001:DB8::0:1]"]\n'
    sites = load_sites(write(tmp_path, text), {})
    assert sites.sites["a"].hosts == ("127.0.0.1", "[::1]", "[2001:db8::1]")
    assert sites.for_host("127.0.0.1:8080") is sites.sites["a"]
    assert sites.for_host("[::1]:8080") is sites.sites["a"]
    assert sites.for_host("[2001:db8:0::1]") is sites.sites["a"]


# -- lookups --------------------------------------------------------------------------------


@pytest.mark.parametrize(("header", "name"), [
    ("shop.ru", "shop"),
    ("SHOP.RU", "shop"),
    ("Shop.Ru:8080", "shop"),
    ("www.shop.ru.:443", "shop"),
    (" www.shop.ru ", "shop"),
    ("xn--80aairftm.xn--p1ai", "shop"),
    ("МАГАЗИН.РФ:80", "shop"),
    ("blog.example.com:80", "blog-2"),
    ("BLOG.example.com", "blog-2"),
    ("example.com", None),
    ("promo.shop.ru", None),  # an allowed origin, not a host of the site
    ("shop.ru:http", None),
    ("shop.ru:", None),
    ("", None),
    ("[::1", None),
    ("shop.ru/path", None),
])
def test_for_host(tmp_path: Path, header: str, name: str | None) -> None:
    site = two_sites(tmp_path).for_host(header)
    assert (site.name if site else None) == name


def test_for_token(tmp_path: Path) -> None:
    sites = two_sites(tmp_path)
    assert sites.for_token(CRM_TOKEN) == frozenset({"shop"})
    assert sites.for_token(ERP_TOKEN) == frozenset({"shop", "blog-2"})
    assert sites.for_token(CRM_TOKEN[:-1]) == frozenset()
    assert sites.for_token(CRM_TOKEN + "x") == frozenset()
    assert sites.for_token("") == frozenset()
    assert sites.for_token("токен-не-ascii-0123456789") == frozenset()
    assert sites.for_token("\udcff" * 20) == frozenset()  # a header's undecodable bytes
    assert sites.for_token(SHOP_TOKEN) == frozenset()  # a back-office token is no API token


def test_by_client_api_id(tmp_path: Path) -> None:
    sites = two_sites(tmp_path)
    assert sites.by_client_api_id(API_ID) is sites.sites["shop"]
    assert sites.by_client_api_id(BLOG_API_ID) is sites.sites["blog-2"]
    assert sites.by_client_api_id(API_ID[:-1]) is None
    assert sites.by_client_api_id("") is None
    assert sites.by_client_api_id("ключ") is None


def test_sites_built_directly_are_indexed() -> None:
    site = Site(name="a", site_id="1", hosts=("a.ru",), client_api_id="id")
    sites = Sites({"a": site}, {"t" * 16: frozenset({"a"})})
    assert sites.for_host("A.ru:1") is site
    assert sites.by_client_api_id("id") is site
    assert sites.for_token("t" * 16) == frozenset({"a"})


# -- errors: one line naming the file, the table and the key ---------------------------------

SITE = '[sites.shop]\nsite_id = "1"\nhosts = ["shop.ru"]\n'


@pytest.mark.parametrize(("text", "where", "problem"), [
    ('[sites.shop]\nsite_id = "1"\n', "[sites.shop] hosts", "required"),
    ('[sites.shop]\nhosts = ["shop.ru"]\n', "[sites.shop] site_id", "required"),
    (SITE.replace('"1"', '"12a"'), "[sites.shop] site_id", "numeric Calltouch site id (got '12a')"),
    (SITE.replace('"1"', "-1"), "[sites.shop] site_id", "numeric"),
    (SITE.replace('"1"', "true"), "[sites.shop] site_id", "expected a string, not a boolean"),
    (SITE + 'mod_id = "ABCD1234"\n', "[sites.shop] mod_id", "8-character"),
    (SITE + "mod_id = 12345678\n", "[sites.shop] mod_id", "expected a string, not an integer"),
    (SITE.replace('["shop.ru"]', "[]"), "[sites.shop] hosts", "non-empty array"),
    (SITE.replace('["shop.ru"]', '"shop.ru"'), "[sites.shop] hosts", "non-empty array"),
    (SITE.replace('["shop.ru"]', '["shop.ru", 1]'), "[sites.shop] hosts", "array of strings"),
    (SITE.replace("shop.ru", "shop.ru:8080"), "[sites.shop] hosts", "without scheme, port"),
    (SITE.replace("shop.ru", "https://shop.ru"), "[sites.shop] hosts", "without scheme"),
    (SITE.replace("shop.ru", "shop.ru/leads"), "[sites.shop] hosts", "'shop.ru/leads'"),
    (SITE.replace("shop.ru", "-shop.ru"), "[sites.shop] hosts", "host name"),
    (SITE.replace("shop.ru", ""), "[sites.shop] hosts", "host name"),
    (SITE + 'allowed_origins = ["promo.shop.ru"]\n', "[sites.shop] allowed_origins", "http(s)"),
    (SITE + 'allowed_origins = ["ftp://shop.ru"]\n', "[sites.shop] allowed_origins", "http(s)"),
    (SITE + 'allowed_origins = ["https://shop.ru/page"]\n', "[sites.shop] allowed_origins",
     "an origin"),
    (SITE + 'allowed_origins = ["https://shop.ru:x"]\n', "[sites.shop] allowed_origins",
     "an origin"),
    (SITE + 'allowed_origins = "https://shop.ru"\n', "[sites.shop] allowed_origins", "array"),
    (SITE + 'timezone = "Mars/Olympus"\n', "[sites.shop] timezone", "unknown time zone"),
    (SITE + "points_per_hour = 0\n", "[sites.shop] points_per_hour", "above 0 (got 0)"),
    (SITE + 'points_per_day = "100"\n', "[sites.shop] points_per_day", "above 0 (got '100')"),
    (SITE + "points_per_day = 1.5\n", "[sites.shop] points_per_day", "above 0 (got 1.5)"),
    (SITE + "points_per_day = true\n", "[sites.shop] points_per_day", "above 0"),
    (SITE + "points_reserve = 1\n", "[sites.shop] points_reserve", "or 0.1 (got '1')"),
    (SITE + 'points_reserve = "-5%"\n', "[sites.shop] points_reserve", "e.g. 10% or 0.1"),
    (SITE + "points_reserve = true\n", "[sites.shop] points_reserve", "a string, not"),
    (SITE + 'deal_fallback_source = " "\n', "[sites.shop] deal_fallback_source", "some text"),
    (SITE + f'deal_fallback_source = "{"x" * 300}"\n', "[sites.shop] deal_fallback_source",
     "at most 256"),
    (SITE + 'acess_token = "x"\n', "[sites.shop] acess_token", "unknown key (expected site_id"),
    (SITE + '"odd key" = "x"\n', "[sites.shop] 'odd key'", "unknown key"),
    (SITE + "[sites.shop.extra]\nx = 1\n", "[sites.shop] extra", "unknown key"),
    ("[sites]\nshop = 1\n", "[sites.shop]", "expected a table of the site's keys, not an integer"),
    (SITE.replace("[sites.shop]", "[sites.Shop]"), "[sites] Shop", "a site name must be"),
    (SITE.replace("[sites.shop]", '[sites."a b"]'), "[sites] 'a b'", "a site name must be"),
    (SITE.replace("[sites.shop]", f"[sites.{'a' * 33}]"), f"[sites] {'a' * 33}",
     "a site name must be"),
    ('tokens = {}\n', "[sites]", "required: at least one"),
    ("sites = {}\n", "[sites]", "at least one"),
    ('sites = ["shop"]\n', "[sites]", "expected [sites.NAME] tables"),
    (SITE + "[site.blog]\n", "site", "unknown key (expected sites, tokens)"),
    ('tokens = ["x"]\n' + SITE, "[tokens]", "entries, not an array"),
])
def test_errors(tmp_path: Path, text: str, where: str, problem: str) -> None:
    message = str(error_of(tmp_path, text))
    assert f": {where}: " in message
    assert problem in message


def test_error_attributes(tmp_path: Path) -> None:
    path = write(tmp_path, '[sites.shop]\nsite_id = "1"\n')
    with pytest.raises(ConfigError) as caught:
        load_sites(path, {})
    error = caught.value
    assert isinstance(error, SitesError)
    assert str(error) == f"CTGW_SITES: {path}: [sites.shop] hosts: required"
    assert (error.variable, error.path, error.where, error.key) == (
        "CTGW_SITES", path, "[sites.shop]", "hosts")


def test_duplicate_host_across_sites(tmp_path: Path) -> None:
    text = SITE + '[sites.blog]\nsite_id = "2"\nhosts = ["blog.ru", "SHOP.RU."]\n'
    message = str(error_of(tmp_path, text))
    assert message.endswith(": [sites.blog] hosts: 'shop.ru' is already a host of [sites.shop]")


def test_duplicate_client_api_id(tmp_path: Path) -> None:
    text = (SITE + f'client_api_id = "{API_ID}"\n'
            + f'[sites.blog]\nsite_id = "2"\nhosts = ["blog.ru"]\nclient_api_id = "{API_ID}"\n')
    message = str(error_of(tmp_path, text))
    assert ": [sites.blog] client_api_id: the same as [sites.shop]'s" in message
    assert API_ID not in message


# -- tokens ---------------------------------------------------------------------------------


@pytest.mark.parametrize(("tokens", "where", "problem"), [
    (f'crm = {{token = "{CRM_TOKEN}", sites = ["blog"]}}', "[tokens.crm] sites",
     "unknown site 'blog' (sites: shop)"),
    (f'crm = {{token = "{CRM_TOKEN}", sites = []}}', "[tokens.crm] sites", "non-empty array"),
    (f'crm = {{token = "{CRM_TOKEN}", sites = "shop"}}', "[tokens.crm] sites", "non-empty array"),
    (f'crm = {{token = "{CRM_TOKEN}"}}', "[tokens.crm] sites", "required"),
    (f'crm = {{token = "{CRM_TOKEN}", sites = ["shop"], site = ["shop"]}}', "[tokens.crm] site",
     "unknown key (expected token, sites)"),
    (f'crm = {{token = "{CRM_TOKEN[:15]}", sites = ["shop"]}}', "[tokens.crm] token",
     "at least 16 characters"),
    ('crm = {token = 1234567890123456789, sites = ["shop"]}', "[tokens.crm] token",
     "not an integer (value hidden)"),
    (f'crm = {{token = "{CRM_TOKEN}\\t", sites = ["shop"]}}', "[tokens.crm] token",
     "the value: expected printable text"),
    (f'crm = {{token = "{CRM_TOKEN}", sites = ["shop"]}}\n'
     f'erp = {{token = "{CRM_TOKEN}", sites = ["shop"]}}', "[tokens.erp] token",
     "the same token as [tokens.crm]"),
    # The mistake of writing the token as the key: the key is never shown.
    (f'"{CRM_TOKEN}" = ["shop"]', "[tokens] entry #1 (name hidden)", "expected NAME = {token"),
    (f'ok = {{token = "{"z" * 16}", sites = ["shop"]}}\n"{CRM_TOKEN.upper()}" = '
     '{token = "x", sites = ["shop"]}', "[tokens] entry #2 (name hidden)", "a token name must be"),
    (f'"{CRM_TOKEN[:20]}" = {{sites = ["shop"]}}', "[tokens] entry #1 (name hidden) token",
     "required"),
])
def test_token_errors(tmp_path: Path, tokens: str, where: str, problem: str) -> None:
    message = str(error_of(tmp_path, f"{SITE}[tokens]\n{tokens}\n"))
    assert f": {where}: " in message
    assert problem in message
    for secret in (CRM_TOKEN, CRM_TOKEN[:15], CRM_TOKEN[:20], CRM_TOKEN.upper(), "1234567890"):
        assert secret not in message


def test_tokens_as_tables(tmp_path: Path) -> None:
    text = f'{SITE}[tokens.crm]\ntoken = "{CRM_TOKEN}"\nsites = ["shop", "shop"]\n'
    sites = load_sites(write(tmp_path, text), {})
    assert sites.tokens == {CRM_TOKEN: frozenset({"shop"})}


# -- secrets: env: and file:, never shown ---------------------------------------------------


@pytest.mark.parametrize("key", ["access_token", "client_api_id"])
def test_secret_from_env(tmp_path: Path, key: str) -> None:
    path = write(tmp_path, f'{SITE}{key} = "env:SHOP_SECRET"\n')
    site = load_sites(path, {"SHOP_SECRET": SHOP_TOKEN}).sites["shop"]
    assert getattr(site, key) == SHOP_TOKEN


@pytest.mark.parametrize(("content", "value"), [
    (f"{SHOP_TOKEN}\n", SHOP_TOKEN),
    (f"{SHOP_TOKEN}\r\n", SHOP_TOKEN),
    (SHOP_TOKEN, SHOP_TOKEN),
    (f" {SHOP_TOKEN} \n", f" {SHOP_TOKEN} "),  # only the newline goes
])
def test_secret_from_file(tmp_path: Path, content: str, value: str) -> None:
    secret = tmp_path / "credentials" / "shop-token"
    secret.parent.mkdir()
    secret.write_bytes(content.encode())
    for reference in (f"file:{secret}", "file:credentials/shop-token"):
        path = write(tmp_path, f'{SITE}access_token = "{reference}"\n')
        assert load_sites(path, {}).sites["shop"].access_token == value


def test_literal_secret(tmp_path: Path) -> None:
    path = write(tmp_path, f'{SITE}access_token = "{SHOP_TOKEN}"\n')
    assert load_sites(path, {}).sites["shop"].access_token == SHOP_TOKEN


def test_token_from_env_and_file(tmp_path: Path) -> None:
    (tmp_path / "erp").write_text(f"{ERP_TOKEN}\n")
    text = (f'{SITE}[tokens]\ncrm = {{token = "env:CRM", sites = ["shop"]}}\n'
            'erp = {token = "file:erp", sites = ["shop"]}\n')
    sites = load_sites(write(tmp_path, text), {"CRM": CRM_TOKEN})
    assert sites.for_token(CRM_TOKEN) == sites.for_token(ERP_TOKEN) == frozenset({"shop"})


SECRET = "do-not-show-this-secret-0123"


@pytest.mark.parametrize(("value", "env", "content", "problem"), [
    ("env:SHOP_SECRET", {}, None, "the environment variable SHOP_SECRET is not set"),
    ("env:SHOP_SECRET", {"SHOP_SECRET": "  \n"}, None,
     "the environment variable SHOP_SECRET is empty"),
    ("env:SHOP_SECRET", {"SHOP_SECRET": f"{SECRET}\n{SECRET}"}, None,
     "the environment variable SHOP_SECRET: expected printable text"),
    ("env:SHOP_SECRET", {"SHOP_SECRET": SECRET * 30}, None,
     "the environment variable SHOP_SECRET: expected printable text of at most 512 characters"),
    ("env:", {}, None, "env: names no variable"),
    ("file:", {}, None, "file: names no file"),
    ("file:missing", {}, None, "cannot read the file {dir}/missing: No such file or directory"),
    ("file:{dir}", {}, None, "cannot read the file {dir}: Is a directory"),
    ("file:secret", {}, b"\n", "the file {dir}/secret is empty"),
    ("file:secret", {}, f"{SECRET}\n\n".encode(), "the file {dir}/secret: expected printable"),
    ("file:secret", {}, SECRET.encode() + b"\xff", "the file {dir}/secret is not UTF-8 text"),
    ("file:secret", {}, SECRET.encode() * 200, "the file {dir}/secret is longer than 4096 bytes"),
    ("", {}, None, "the value is empty"),
    (f"{SECRET}\\u0000", {}, None, "the value: expected printable text"),
])
@pytest.mark.parametrize("key", ["access_token", "client_api_id"])
def test_secret_errors(tmp_path: Path, key: str, value: str, env: dict[str, str],
                       content: bytes | None, problem: str) -> None:
    if content is not None:
        (tmp_path / "secret").write_bytes(content)
    text = f'{SITE}{key} = "{value.format(dir=tmp_path)}"\n'
    message = str(error_of(tmp_path, text, env))
    assert f": [sites.shop] {key}: {problem.format(dir=tmp_path)}" in message
    assert SECRET not in message
    assert SECRET[:8] not in message


def test_a_secret_of_the_wrong_type_is_not_shown(tmp_path: Path) -> None:
    message = str(error_of(tmp_path, f"{SITE}client_api_id = 918273645546372819\n"))
    assert ": [sites.shop] client_api_id: expected a string" in message
    assert "918273645546372819" not in message


def test_a_token_error_never_shows_it(tmp_path: Path) -> None:
    text = f'{SITE}[tokens]\ncrm = {{token = "env:CRM", sites = ["blog"]}}\n'
    message = str(error_of(tmp_path, text, {"CRM": SECRET}))
    assert message.endswith(": [tokens.crm] sites: unknown site 'blog' (sites: shop)")
    assert SECRET not in message


# -- the file itself ------------------------------------------------------------------------


def test_bad_toml_names_the_line(tmp_path: Path) -> None:
    message = str(error_of(tmp_path, f'{SITE}access_token = "{SECRET}\n'))
    assert ": line 4, column " in message
    assert "invalid TOML: " in message
    assert SECRET not in message


def test_bad_toml_hides_an_illegal_character(tmp_path: Path) -> None:
    message = str(error_of(tmp_path, f'{SITE}\naccess_token = "{SECRET}\x7f"\n'))
    assert ": line 5, column " in message
    assert message.endswith(": invalid TOML: Illegal character")
    assert SECRET not in message


def test_bad_toml_at_the_end(tmp_path: Path) -> None:
    message = str(error_of(tmp_path, f"{SITE}hosts2 = ["))
    assert message.endswith(": end of document: invalid TOML: Invalid value")


def test_toml_duplicate_table(tmp_path: Path) -> None:
    message = str(error_of(tmp_path, SITE + SITE))
    assert ": line 4, column " in message and "invalid TOML" in message


def test_missing_file(tmp_path: Path) -> None:
    path = str(tmp_path / "nope.toml")
    with pytest.raises(SitesError) as caught:
        load_sites(path, {})
    assert str(caught.value) == f"CTGW_SITES: {path}: cannot read: No such file or directory"


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "sites.toml"
    path.write_bytes(SITE.encode() + b'access_token = "\xff\xfe"\n')
    with pytest.raises(SitesError) as caught:
        load_sites(str(path), {})
    assert str(caught.value) == f"CTGW_SITES: {path}: not UTF-8 text (byte {len(SITE) + 16})"


def test_nested_too_deep(tmp_path: Path) -> None:
    path = tmp_path / "sites.toml"
    path.write_text(SITE + "deep = " + "[" * 5000 + "]" * 5000 + "\n", encoding="utf-8")
    with pytest.raises(SitesError) as caught:
        load_sites(str(path), {})
    assert str(caught.value) == f"CTGW_SITES: {path}: nested too deep to be a sites file"


def test_without_a_sites_file_one_default_site_serves_every_host_and_token() -> None:
    from gateway.config import Settings
    from gateway.sites import single_site
    from gateway.sites_file import sites_of

    settings = Settings(site_id="18990", mod_id="abcd1234", api_tokens=("t" * 16,),
                        access_token="secret-token")
    sites = sites_of(settings, {})
    assert sites == single_site(settings)
    [site] = sites.sites.values()
    assert (site.name, site.site_id, site.mod_id, site.access_token) == (
        "default", "18990", "abcd1234", "secret-token")
    assert sites.for_host("anything.example:8080") is site
    assert sites.for_token("t" * 16) == {"default"}
    assert sites.for_token("u" * 16) == frozenset()
