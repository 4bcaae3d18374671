"""Bot signals on browser leads: a small score from cheap facts about one request (pure).

Each signal that fires adds its weight (``CTGW_BOT_WEIGHTS``); a lead whose score reaches
``CTGW_BOT_THRESHOLD`` is taken for a bot's. A weight of 0 turns a signal off: it is not even
checked. The signals:

* ``fast`` — the snippet says the form was sent sooner than ``CTGW_BOT_MIN_ELAPSED`` after the
  page loaded. A lead without that figure (a site posting from its own code) never fires it.
* ``origin`` — neither ``Origin`` nor ``Referer`` names this site: its own host, or one of its
  allowed origins (``CTGW_ALLOWED_ORIGINS``, or ``allowed_origins`` in a sites file). Browsers
  send ``Origin`` with every POST; scripts rarely do.
* ``agent`` — no ``User-Agent``, or one containing a substring of ``CTGW_BOT_AGENTS``.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Collection
from dataclasses import dataclass

from gateway.config import Settings

FAST, ORIGIN, AGENT = "fast", "origin", "agent"
SIGNALS = (FAST, ORIGIN, AGENT)
# Every signal counted in ctgw_bot_signals_total: the honeypot is checked before the score.
BOT_SIGNALS = ("honeypot", *SIGNALS)


@dataclass(frozen=True, slots=True)
class Score:
    points: int
    signals: tuple[str, ...]  # the names that fired, in the order of SIGNALS
    bot: bool


CLEAN = Score(0, (), False)

# Scheme and authority of an Origin or Referer; on every lead, so one regex, not urlsplit().
_SITE = re.compile(r"([a-zA-Z][a-zA-Z0-9+.\-]*)://([^/?#]+)")


# A site's visitors send few distinct Origins and User-Agents, so verdicts on them are
# remembered: a hit is cheaper than the regex or the substring search. Bounded in count, and
# in the length of what is kept (a header may hold 8 KiB): past it, judged afresh.
_REMEMBERED = 512
_REMEMBERED_LENGTH = 512


def names_site(url: str | None, host: str, allowed_origins: Collection[str]) -> bool:
    """Does an ``Origin`` or ``Referer`` name this site: its ``Host``, or an allowed origin?"""
    match = _SITE.match(url) if url else None
    if match is None:  # absent, "null", "about:blank", a bare path
        return False
    netloc = match[2].lower()
    return netloc == host.lower() or f"{match[1].lower()}://{netloc}" in allowed_origins


_remembered_site = functools.lru_cache(maxsize=_REMEMBERED)(names_site)


def origin_names_site(origin: str | None, host: str, allowed_origins: frozenset[str]) -> bool:
    """:func:`names_site` for an ``Origin``: the same few on every lead, so remembered."""
    if origin is None or len(origin) + len(host) > _REMEMBERED_LENGTH:
        return names_site(origin, host, allowed_origins)
    return _remembered_site(origin, host, allowed_origins)


def _names_bot(agent: str, needles: tuple[str, ...]) -> bool:
    if not agent.strip():
        return True
    lowered = agent.lower()
    return any(needle in lowered for needle in needles)


_remembered_agent = functools.lru_cache(maxsize=_REMEMBERED)(_names_bot)


def _names(origin: str | None, known: bool | None, host: str, allowed: frozenset[str]) -> bool:
    return origin_names_site(origin, host, allowed) if known is None else known


@dataclass(frozen=True, slots=True)
class BotScorer:
    """Built once from the settings; :meth:`score` runs on every browser lead."""

    min_elapsed_ms: float
    weights: tuple[int, int, int]  # fast, origin, agent
    threshold: int
    agents: tuple[str, ...]  # lower case

    @classmethod
    def from_settings(cls, settings: Settings) -> BotScorer:
        w = settings.bot_weights
        # An empty substring would match every agent; settings built in code may use capitals.
        agents = tuple(a.lower() for a in settings.bot_agents if a)
        return cls(settings.bot_min_elapsed * 1000, (w.fast, w.origin, w.agent),
                   settings.bot_threshold, agents)

    def score(
        self, elapsed_ms: int | None, origin: str | None, referer: str | None,
        agent: str | None, host: str, *, allowed_origins: frozenset[str],
        origin_named: bool | None = None,
    ) -> Score:
        """Score one request: ``host`` is its ``Host``; headers it lacks are ``None``;
        ``allowed_origins`` those of the site it posts to (lower case, no trailing slash).

        ``origin_named`` is :func:`names_site` of ``origin``, when the caller has it already.
        """
        fast, by_origin, by_agent = self.weights
        fired = (
            fast > 0 and elapsed_ms is not None and elapsed_ms < self.min_elapsed_ms,
            by_origin > 0 and not _names(origin, origin_named, host, allowed_origins)
            and not names_site(referer, host, allowed_origins),
            by_agent > 0 and self._bot_agent(agent),
        )
        if not any(fired):
            return CLEAN  # a person, the common case: nothing to add up
        points = sum(w for w, hit in zip(self.weights, fired, strict=True) if hit)
        signals = tuple(name for name, hit in zip(SIGNALS, fired, strict=True) if hit)
        return Score(points, signals, points >= self.threshold)

    def _bot_agent(self, agent: str | None) -> bool:
        if agent is None:
            return True
        if len(agent) > _REMEMBERED_LENGTH:
            return _names_bot(agent, self.agents)
        return _remembered_agent(agent, self.agents)
