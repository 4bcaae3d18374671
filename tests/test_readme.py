"""The README as a new user follows it.

The *Trying it* walkthrough is read from the README itself and run for real: its first ``sh``
block starts ``ct-gateway serve --sandbox`` (on free ports: the README's ``localhost:8080`` and
``localhost:9464`` are replaced by the addresses the gateway logs), and every command of the
blocks after it runs in order, in the same folder, with the gateway's production bot score. A
comment right under a command is what the README says it prints (``…`` matches anything): the
output must be exactly those lines. ``ID`` is the id the lead was given, ``127.0.0.1:PORT`` the
simulator's address from the gateway's first log line. A command that only reads may take a
few seconds to show what the README shows (a lead is delivered within a second or so).

Also: the two set-up commands at the top, the prerequisites, the links, and docs/snippet.md
against the attributes the served snippet reads.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import time
import tomllib
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support import Process, need_binary

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
SNIPPET_DOC = ROOT / "docs" / "snippet.md"
SNIPPET = ROOT / "static" / "snippet.js"  # what the gateway serves
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.M | re.S)
SIMULATOR_LINE = "sandbox: relaying to the built-in Calltouch simulator at "
RETRY_FOR = 10.0  # seconds a read-only command may take to show what the README shows


@dataclass
class Step:
    command: str
    shown: list[str]  # what the README says it prints

    @property
    def read_only(self) -> bool:
        return not re.search(r"(^|\s)(-d|--data\S*|-X\s*POST)\s", self.command)


def section(text: str, title: str) -> str:
    """A ``## `` section with its ``###`` subsections, up to the next ``## ``."""
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", text, re.M | re.S)
    assert match, f"no section {title!r}"
    return match[1]


def sh_blocks(text: str) -> list[str]:
    return [m[2] for m in FENCE.finditer(text) if m[1] == "sh"]


def steps(block: str) -> list[Step]:
    """Commands (with their continuation lines) and the comment lines right under each."""
    lines = block.splitlines()
    found: list[Step] = []
    i = 0
    while i < len(lines):
        if not lines[i].strip() or lines[i].lstrip().startswith("#"):
            i += 1  # a blank line, or a comment that introduces the next command
            continue
        command = [lines[i]]
        while command[-1].endswith("\\"):
            i += 1
            command.append(lines[i])
        i += 1
        shown = []
        while i < len(lines) and lines[i].startswith("# "):
            shown.append(lines[i][2:])
            i += 1
        found.append(Step("\n".join(command), shown))
    return found


def matches(pattern: str, line: str) -> bool:
    regex = ".*".join(re.escape(part) for part in " ".join(pattern.split()).split("…"))
    return re.fullmatch(regex, " ".join(line.split())) is not None


def shows(shown: list[str], output: str) -> bool:
    lines = output.splitlines()
    return len(lines) == len(shown) and all(map(matches, shown, lines))


def clean_env(**extra: str) -> dict[str, str]:
    """The user's shell: no CTGW_* from outside (the tests' own settings stay out)."""
    return {**{k: v for k, v in os.environ.items() if not k.startswith("CTGW_")}, **extra}


def walkthrough() -> tuple[str, list[Step]]:
    blocks = sh_blocks(section(README.read_text(), "Trying it"))
    assert len(blocks) >= 2, "Trying it: a block that starts the gateway, then its commands"
    [start] = steps(blocks[0])
    return start.command, [step for block in blocks[1:] for step in steps(block)]


def test_the_walkthrough_covers_the_interface() -> None:
    """What the walkthrough must show a new user; the run below proves each does it."""
    start, commands = walkthrough()
    assert "CTGW_API_TOKENS=" in start and start.endswith("ct-gateway serve --sandbox")
    text = "\n".join(step.command for step in commands)
    for needle in ("localhost:8080/leads", "localhost:9464/metrics", "ct-gateway queue stats",
                   "localhost:8080/api/v1/leads/ID", "Authorization: Bearer",
                   "localhost:8080/sandbox/leads", "127.0.0.1:PORT/sandbox/stats",
                   "127.0.0.1:PORT/sandbox/requests", "127.0.0.1:PORT/sandbox/config",
                   "127.0.0.1:PORT/sandbox/reset"):
        assert needle in text, needle
    [post] = [s for s in commands if "localhost:8080/leads " in s.command]
    assert post.shown == ['{"id":"…","status":"queued"}']
    readme = README.read_text()
    assert SIMULATOR_LINE.strip() in " ".join(readme.split())
    assert "http://localhost:8080/" in readme  # the demo page


def run_step(step: Step, command: str, cwd: Path) -> str:
    deadline = time.monotonic() + (RETRY_FOR if step.read_only else 0)
    while True:
        result = subprocess.run(["sh", "-c", command], cwd=cwd, env=clean_env(),
                                capture_output=True, text=True, timeout=30, check=False)
        assert result.returncode == 0, (command, result.stdout, result.stderr)
        if not step.shown or shows(step.shown, result.stdout):
            return result.stdout
        if time.monotonic() > deadline:
            raise AssertionError(
                f"{command}\nprinted:\n{result.stdout}\nthe README shows:\n"
                + "\n".join(step.shown)
            )
        time.sleep(0.25)


def test_trying_it_walkthrough(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                               processes: list[Process]) -> None:
    need_binary("curl")
    gateway_command = need_binary("ct-gateway")
    start, commands = walkthrough()
    *assignments, program, serve, sandbox = shlex.split(start)
    assert (program, serve, sandbox) == ("ct-gateway", "serve", "--sandbox")
    env = dict(a.split("=", 1) for a in assignments)
    monkeypatch.chdir(tmp_path)  # "in a folder of your own": the gateway's store goes here
    # Free ports instead of 8080 and 9464; the bot score as in production.
    proc = Process([gateway_command, "serve", "--sandbox"],
                   clean_env(**env, CTGW_LISTEN="127.0.0.1:0", CTGW_OPS_LISTEN="127.0.0.1:0"),
                   "listening public")
    processes.append(proc)
    assert SIMULATOR_LINE in proc.lines[0], proc.lines  # "its first log line"
    simulator = re.search(r"at http://(127\.0\.0\.1:\d+)", proc.lines[0])
    listening = re.search(r"public=http://(\S+) ops=http://(\S+?)\"",
                          proc.line_with("listening public"))
    assert simulator and listening, proc.lines
    places = {"localhost:8080": listening[1], "localhost:9464": listening[2],
              "127.0.0.1:PORT": simulator[1]}

    with urllib.request.urlopen(f"http://{listening[1]}/") as page:  # the demo page
        assert b"<form" in page.read()

    lead_id = None
    for step in commands:
        command = step.command
        for readme_address, real in places.items():
            command = command.replace(readme_address, real)
        if re.search(r"\bID\b", command):
            assert lead_id, f"{step.command}: no lead id yet"
            command = re.sub(r"\bID\b", lead_id, command)
        output = run_step(step, command, tmp_path)
        if lead_id is None and (found := re.search(r'"id":"([^"]+)","status":"queued"', output)):
            lead_id = found[1]
    assert lead_id, "no command posted a lead"
    assert (tmp_path / "ct-gateway.db").exists()  # the store queue stats read is serve's
    assert proc.proc.poll() is None, proc.lines


def test_readme_opens_with_the_two_set_up_commands_then_the_prerequisites() -> None:
    text = README.read_text()
    first = FENCE.search(text)
    assert first and first[1] == "sh" and text[: first.start()].strip() == "# ct-gateway"
    commands = [line.split("#")[0].strip() for line in first[2].splitlines() if line.strip()]
    assert commands == ["pip install -e . && ct-gateway serve --sandbox",
                        "pip install -e '.[test]' && python -m pytest"]
    # Right after them: the Python version the package requires, and a virtual environment.
    after = text[first.end():].split("## ")[0]
    required = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    assert required == ">=3.11"
    assert "Python 3.11 or newer" in after
    assert "python3 -m venv .venv && . .venv/bin/activate" in after


def slug(heading: str) -> str:
    """GitHub's anchor of a heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_links_between_the_docs_resolve() -> None:
    docs = [README, *sorted((ROOT / "docs").glob("*.md"))]
    broken = []
    for doc in docs:
        for target in re.findall(r"\]\(([^)\s]+)\)", doc.read_text()):
            if re.match(r"https?:", target):
                continue
            path, _, anchor = target.partition("#")
            file = (doc.parent / path).resolve() if path else doc
            if not file.exists():
                broken.append(f"{doc.name}: {target}")
            elif anchor and anchor not in {
                slug(h) for h in re.findall(r"^#+ (.+)$", file.read_text(), re.M)
            }:
                broken.append(f"{doc.name}: {target} (no such heading)")
    assert not broken, broken
    assert "](docs/snippet.md)" in README.read_text()


def snippet_attributes() -> set[str]:
    """The ``data-*`` attributes the served snippet reads, from its script tag and the page."""
    source = SNIPPET.read_text()
    getter = re.search(r"(\w+)\s*=\s*\(?\w+\)?\s*=>\s*\w+\.getAttribute\(\s*\"data-\"\s*\+", source)
    assert getter, "the snippet's data-* getter moved"
    on_tag = re.findall(rf"\b{re.escape(getter[1])}\(\s*\"([a-z-]+)\"\s*\)", source)
    # The build may keep a field's dataset in a variable of one letter: read its property names.
    on_page = re.findall(r"\b\w+\.ct([A-Z]\w*)\b(?!\()|\"ct([A-Z]\w*)\"\s*in\s+[\w.]+", source)
    names = {a or b for a, b in on_page} - {"Leads"}  # window.ctLeads: the API, not markup
    kebab = {re.sub(r"(?<!^)([A-Z])", r"-\1", name).lower() for name in names}
    return {f"data-{name}" for name in on_tag} | {f"data-ct-{name}" for name in kebab}


def test_snippet_doc_documents_exactly_the_attributes_the_snippet_reads() -> None:
    read = snippet_attributes()
    assert {"data-mod-id", "data-endpoint", "data-forms", "data-subject", "data-ct-field",
            "data-ct-skip", "data-ct-subject", "data-ct-ignore", "data-ct-honeypot"} <= read
    doc = SNIPPET_DOC.read_text()
    in_tables = set(re.findall(r"^\| `(data-[a-z-]+)", doc, re.M))
    assert in_tables == read, (sorted(in_tables ^ read))
    named = set(re.findall(r"`(data-[a-z-]+)", doc))
    assert named <= read, sorted(named - read)
    for needle in ("ctLeads.send(", "CTGW_MOD_ID", "sessionId", "ID личного кабинета",
                   "ID счетчика (mod_id)"):
        assert needle in doc, needle
