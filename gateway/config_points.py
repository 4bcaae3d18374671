"""The API points settings (``CTGW_POINTS_*``): budgets of the default site, the reserve kept
for leads, what each method costs, and how a refusal for points is recognised."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

# Calltouch's text for a refusal for points is not published: Russian "баллы" or "points".
DEFAULT_REFUSAL = r"(?i)балл|\bpoints?\b"
DEFAULT_RESERVE = 0.10  # of each hour's points, kept for leads
_COST = re.compile(r"^([a-z0-9_./-]{1,64})=(\d{1,6})$")


@dataclass(frozen=True, slots=True)
class PointsSettings:
    # The default site's budgets; with CTGW_SITES each site's are in its file.
    per_hour: int | None = None
    per_day: int | None = None
    reserve: float = DEFAULT_RESERVE
    costs: Mapping[str, int] = field(default_factory=dict)  # method -> points per call
    refusal: str = DEFAULT_REFUSAL
    probe_every: float = 300.0  # while refused for points, one call this often


def parse_reserve(raw: str) -> float:
    """A share of the hour: ``10%`` or ``0.1``, at least 0 and below 1."""
    text = raw.strip()
    try:
        share = float(text[:-1]) / 100 if text.endswith("%") else float(text)
    except ValueError:
        share = -1.0
    if not 0 <= share < 1:
        raise ValueError("expected a share of the hour below all of it, e.g. 10% or 0.1")
    return share


def parse_costs(raw: str) -> dict[str, int]:
    """``METHOD=POINTS`` pairs, comma-separated, e.g. ``deal.create=2,register=1``."""
    costs: dict[str, int] = {}
    for pair in (p.strip() for p in raw.split(",") if p.strip()):
        match = _COST.match(pair)
        if match is None:
            raise ValueError("expected METHOD=POINTS pairs, e.g. deal.create=2,register=1")
        costs[match[1]] = int(match[2])
    return costs


def parse_pattern(raw: str) -> str:
    """A regular expression (Python's), checked here so a bad one stops the start."""
    try:
        re.compile(raw)
    except (re.error, OverflowError, RecursionError) as exc:  # a{99999999999}, ((((…
        raise ValueError(f"not a regular expression: {exc}") from None
    return raw
