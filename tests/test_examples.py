"""Every configuration example the project ships passes the settings' own validation.

Examples are read where a user meets them: ``CTGW_NAME=value`` on any line of README.md,
docs/*.md and the deploy files (compose, the systemd unit and its env.example, the Dockerfile,
the nginx snippet), commented or not; ``CTGW_NAME: value`` in compose's environment, in its
commented entries and in the YAML blocks of the docs. Each goes through
``gateway.config.from_env`` as the gateway would take it: the assignments of one line together,
in sandbox mode unless they name a site id (a site id is required without ``--sandbox``, and
refused with it).
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest

from gateway.config import ConfigError, from_env

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = [README, *sorted((ROOT / "docs").glob("*.md"))]
COMPOSE = ROOT / "deploy" / "compose.yml"
DOCKERFILE = ROOT / "deploy" / "Dockerfile"
UNIT = ROOT / "deploy" / "systemd" / "ct-gateway.service"
ENV_EXAMPLE = ROOT / "deploy" / "systemd" / "env.example"
NGINX = ROOT / "deploy" / "nginx" / "ct-gateway.conf"
TEXTS = [*DOCS, COMPOSE, DOCKERFILE, UNIT, ENV_EXAMPLE, NGINX]

# NAME=value: quoted, or up to a space, a backtick or a quote. Not $CTGW_… (a shell's expansion).
ASSIGNMENT = re.compile(r"(?<![\w$])(CTGW_[A-Z0-9_]+)=(\"[^\"]*\"|'[^']*'|[^\s`'\"]*)")
YAML_ENTRY = re.compile(r"^\s*(#\s*)?(CTGW_[A-Z0-9_]+):\s*(.*?)\s*$")
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.M | re.S)
# Compose's interpolation: $$, ${VAR}, ${VAR:-default}, ${VAR-default}, $VAR.
INTERPOLATION = re.compile(r"\$\$|\$\{(\w+)(?::?-([^}]*))?\}|\$(\w+)")
TABLE_DEFAULT = re.compile(r"^\| `(CTGW_[A-Z0-9_]+)` \| `([^`]*)` \|", re.M)


@dataclass(frozen=True)
class Example:
    where: str
    env: Mapping[str, str]
    sandbox: bool


def mode(env: Mapping[str, str], line: str = "") -> bool:
    """Sandbox, as the example would run: with ``--sandbox``, or with no site id (nor sites
    file) to use."""
    named = env.get("CTGW_SITE_ID", "").strip() or env.get("CTGW_SITES", "").strip()
    return "--sandbox" in line or not named


def unquote(value: str) -> str:
    if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
        return value[1:-1]
    return value.rstrip(".,;:")  # the end of a sentence, not of the value


def assignments(line: str) -> dict[str, str]:
    return {name: unquote(value) for name, value in ASSIGNMENT.findall(line)}


def yaml_value(raw: str) -> str:
    yaml = pytest.importorskip("yaml")
    value = yaml.safe_load(raw) if raw else ""
    return "" if value is None else str(value)


def relative(path: Path) -> str:
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


def line_examples(path: Path) -> Iterator[Example]:
    for number, line in enumerate(path.read_text().splitlines(), 1):
        env = assignments(line)
        if env:
            yield Example(f"{relative(path)}:{number}", env, mode(env, line))


def yaml_block_examples(path: Path) -> Iterator[Example]:
    text = path.read_text()
    for match in FENCE.finditer(text):
        if match[1] not in ("yaml", "yml"):
            continue
        env = {m[2]: yaml_value(m[3]) for m in map(YAML_ENTRY.match, match[2].splitlines()) if m}
        if env:
            line = text.count("\n", 0, match.start()) + 1
            yield Example(f"{relative(path)}:{line} (yaml)", env, mode(env))


def commented_entries(text: str) -> dict[str, str]:
    """``# CTGW_NAME: value`` lines: the examples a compose file offers to uncomment."""
    entries = (YAML_ENTRY.match(line) for line in text.splitlines())
    return {m[2]: yaml_value(m[3]) for m in entries if m and m[1]}


def interpolate(value: str, host: Mapping[str, str]) -> str:
    def one(match: re.Match[str]) -> str:
        if match[0] == "$$":
            return "$"
        name = match[1] or match[3]
        return host.get(name) or (match[2] or "")

    return INTERPOLATION.sub(one, value)


def dockerfile_env() -> dict[str, str]:
    """The image's own ``ENV CTGW_…``: the base every container starts from."""
    instructions = re.sub(r"\\\n", " ", DOCKERFILE.read_text()).splitlines()
    return {
        name: value
        for line in instructions
        if line.startswith("ENV ")
        for name, value in assignments(line).items()
    }


def compose_examples(compose: Path = COMPOSE) -> Iterator[Example]:
    yaml = pytest.importorskip("yaml")
    text = compose.read_text()
    environment = yaml.safe_load(text)["services"]["gateway"]["environment"]
    commented = commented_entries(text)
    # The host's environment, as the examples of compose's own comments and the README set it.
    hosts: list[tuple[str, dict[str, str]]] = [("no CTGW_* in the host's environment", {})]
    for path in (compose, *DOCS):
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if "docker compose" in line and assignments(line):
                hosts.append((f"host as in {relative(path)}:{number}", assignments(line)))
    for label, host in hosts:
        env = {
            **dockerfile_env(),
            **{k: interpolate(str(v), host) for k, v in environment.items()},
        }
        yield Example(f"{relative(compose)} environment, {label}", env, mode(env))
        # Each commented entry uncommented, then all of them (the gateway stops at the first).
        for name, value in commented.items():
            one = {**env, name: value}
            yield Example(f"{relative(compose)} with {name} uncommented, {label}", one,
                          mode(one))
        every = {**env, **commented}
        yield Example(f"{relative(compose)} with its commented entries, {label}", every,
                      mode(every))


def env_file(text: str, *, commented: bool) -> dict[str, str]:
    """A systemd EnvironmentFile's ``NAME=value`` lines; ``commented``: the offered ones too."""
    prefix = r"#?\s*" if commented else ""
    pattern = re.compile(rf"^{prefix}(CTGW_[A-Z0-9_]+)=(.*)$", re.M)
    return {name: value.strip() for name, value in pattern.findall(text)}


def unit_environment() -> dict[str, str]:
    lines = re.findall(r"^Environment=(.*)$", UNIT.read_text(), re.M)
    return {k: v for line in lines for k, v in assignments(line).items()}


def systemd_examples() -> Iterator[Example]:
    env = {**unit_environment(), **env_file(ENV_EXAMPLE.read_text(), commented=True)}
    yield Example("deploy/systemd/env.example filled in, with the unit's Environment=", env,
                  sandbox=False)


def all_examples() -> list[Example]:
    return [
        *(e for path in TEXTS for e in line_examples(path)),
        *(e for path in DOCS for e in yaml_block_examples(path)),
        *compose_examples(),
        *systemd_examples(),
    ]


def problem(example: Example) -> str | None:
    try:
        from_env(example.env, sandbox=example.sandbox)
    except ConfigError as exc:
        shown = "sandbox" if example.sandbox else "real"
        return f"{example.where} ({shown}): {exc}"
    return None


def line_example(line: str) -> Example:
    env = assignments(line)
    return Example("a line", env, mode(env, line))


def test_every_shipped_configuration_example_is_valid() -> None:
    examples = all_examples()
    problems = [p for p in map(problem, examples) if p]
    assert not problems, "\n".join(problems)


def test_the_examples_are_found_where_they_are_shipped() -> None:
    """The check above proves nothing if the extraction misses a file."""
    examples = all_examples()
    found = {e.where.split(":")[0].split(" ")[0] for e in examples}
    shipping = [README, ROOT / "docs" / "snippet.md", COMPOSE, DOCKERFILE, UNIT, ENV_EXAMPLE, NGINX]
    assert {relative(p) for p in shipping} <= found, sorted(found)
    names = {name for e in examples for name in e.env}
    for name in ("CTGW_SITE_ID", "CTGW_MOD_ID", "CTGW_API_TOKENS", "CTGW_TRUSTED_PROXIES",
                 "CTGW_QUEUE", "CTGW_LISTEN"):
        assert name in names, name
    # Both modes are exercised: the sandbox and a real site.
    assert {e.sandbox for e in examples} == {True, False}
    real_compose = [e for e in examples if e.where.startswith("deploy/compose.yml") and
                    not e.sandbox]
    assert real_compose, "no example starts compose with a site id"
    filled = env_file(ENV_EXAMPLE.read_text(), commented=True)
    assert {"CTGW_SITE_ID", "CTGW_MOD_ID", "CTGW_API_TOKENS"} <= set(filled)


def test_the_old_compose_examples_are_caught(tmp_path: Path) -> None:
    """What the compose file once offered: a counter id of 6 characters, a token of 9."""
    old = tmp_path / "compose.yml"
    old.write_text(
        "services:\n"
        "  gateway:\n"
        '    command: ["ct-gateway", "serve", "--sandbox"]\n'
        "    environment:\n"
        '      CTGW_RATE: "5"\n'
        '      # CTGW_SITE_ID: "12345"\n'
        '      # CTGW_MOD_ID: "abcdef"\n'
        '      # CTGW_API_TOKENS: "change-me"\n'
    )
    problems = "\n".join(p for p in map(problem, compose_examples(old)) if p)
    assert "CTGW_MOD_ID: expected the 8-character Calltouch counter id" in problems, problems
    assert "CTGW_API_TOKENS: each token must be at least 16 characters" in problems, problems
    # A placeholder is no example either, and a site id with --sandbox is refused.
    assert problem(line_example("put `CTGW_SITE_ID=…` in /etc/ct-gateway/env"))
    assert problem(line_example("CTGW_SITE_ID=12345 ct-gateway serve --sandbox"))
    assert problem(line_example("set CTGW_TRUSTED_PROXIES=127.0.0.1/33."))
    assert not problem(line_example("set CTGW_TRUSTED_PROXIES=127.0.0.1."))


def test_compose_interpolation() -> None:
    assert interpolate("${CTGW_SITE_ID:-}", {}) == ""
    assert interpolate("${CTGW_SITE_ID:-}", {"CTGW_SITE_ID": "12345"}) == "12345"
    assert interpolate("${X:-5}", {}) == "5"
    assert interpolate("$$HOME", {"HOME": "/root"}) == "$HOME"


def test_documented_defaults_are_the_defaults() -> None:
    """Setting a variable to the default the README's table gives changes nothing."""
    rows = TABLE_DEFAULT.findall(README.read_text())
    assert len(rows) >= 15, rows
    default = from_env({}, sandbox=True)
    wrong = []
    for name, value in rows:
        if "…" in value:  # an abbreviated list
            continue
        value = value.replace("\\|", "|")  # a table cell escapes its pipes
        if from_env({name: value}, sandbox=True) != default:
            wrong.append(f"{name}: the README says {value!r}")
    assert not wrong, "\n".join(wrong)
