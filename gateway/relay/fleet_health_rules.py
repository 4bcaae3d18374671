"""The fleet health's state and rules: what one row holds, and how news steps it; no I/O.

The rules are :class:`~gateway.relay.health.Health`'s, on a value instead of an object: after
``threshold`` outage failures in a row, wherever they were seen, the upstream is down; then
one probe at a time, at ``first_probe`` doubling up to ``max_probe``; any answer that is not
an outage brings it up. A probe slot held a ``probe_deadline`` is free again.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

News = tuple[bool, str | None]  # (an outage, the probe's token or None), one a call answered


@dataclass(frozen=True, slots=True)
class State:
    """The shared health of one egress, as its row holds it."""

    healthy: bool = True
    failures: int = 0
    interval: float = 0.0
    next_probe: float = 0.0
    holder: str | None = None
    since: float | None = None
    version: int = 0

    def news(self, egress: str) -> str:
        return f"{self.version} {int(self.healthy)} {egress}"


@dataclass(frozen=True, slots=True)
class Rules:
    """Health's rules, as steps from one state of the row to the next."""

    threshold: int = 3
    first_probe: float = 1.0
    max_probe: float = 8.0
    probe_deadline: float = 30.0

    def told(self, news: Sequence[News], state: State, now: float) -> State:
        for outage, probe in news:
            state = self._failed(state, now, probe) if outage else self._succeeded(state)
        return state

    def _failed(self, state: State, now: float, probe: str | None) -> State:
        failures = state.failures + 1
        if state.healthy and failures >= self.threshold:
            return replace(state, healthy=False, failures=failures, interval=self.first_probe,
                           next_probe=now + self.first_probe, holder=None, since=None,
                           version=state.version + 1)
        if not state.healthy and probe is not None and probe == state.holder:
            interval = min(self.max_probe, state.interval * 2)
            return replace(state, failures=failures, interval=interval,
                           next_probe=now + interval, holder=None, since=None)
        return replace(state, failures=failures)

    @staticmethod
    def _succeeded(state: State) -> State:
        if state.healthy:
            return replace(state, failures=0)
        return replace(state, healthy=True, failures=0, holder=None, since=None,
                       version=state.version + 1)

    def free_at(self, state: State) -> float:
        """When the probe slot may next be taken."""
        if state.holder is None or state.since is None:
            return state.next_probe
        return max(state.next_probe, state.since + self.probe_deadline)

    def take(self, token: str, state: State, now: float) -> State:
        if state.healthy or now < self.free_at(state):
            return state
        return replace(state, holder=token, since=now)

    def release(self, holder: str, state: State, now: float) -> State:
        if state.holder is None or not state.holder.startswith(holder):
            return state
        return replace(state, holder=None, since=None)


DEFAULTS = Rules()  # Health's own defaults
