"""Gates: what a call passes before it may leave, and hears of once it is answered.

The relay asks each gate in turn for a :class:`Ticket` before it leases jobs for a call; a gate
may make it wait (the pacer waits for room in the window). A ticket then hears when the call's
bytes were written and, once per call, what came back: a 429 on a batch of 100 is one 429.
Today the one gate is the pacer (:class:`~gateway.relay.pacing.Pacer`); budgets, upstream health
and a fleet's shared pace are gates too.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from gateway.calltouch.client import Reply


class Ticket(Protocol):
    def written(self, at: float) -> None:
        """The call's bytes left at monotonic ``at`` (or the call will never be made).

        Called at least once for every ticket; only the first call counts.
        """

    def answered(self, reply: Reply) -> None:
        """What the call got back; not called for a call that was never made."""


class Gate(Protocol):
    async def admit(self, kind: str) -> Ticket:
        """Wait until a call of ``kind`` may go; the ticket follows that call."""


async def admit_all(gates: Sequence[Gate], kind: str) -> list[Ticket]:
    """A ticket from every gate, in order; the ones taken are given back if one fails."""
    tickets: list[Ticket] = []
    try:
        for gate in gates:
            tickets.append(await gate.admit(kind))
    except BaseException:
        abandon(tickets, 0.0)
        raise
    return tickets


def abandon(tickets: Sequence[Ticket], at: float) -> None:
    """No call will be made on these tickets: they must hold nothing back."""
    for ticket in tickets:
        ticket.written(at)
