"""Gates: what a call passes before it may leave, and hears of once it is answered.

The relay asks each gate in turn for a :class:`Ticket` before it leases jobs for a call; a gate
may make it wait (the pacer waits for room in the window). A ticket then hears when the call's
bytes were written and, once per call, what came back: a 429 on a batch of 100 is one 429.
Today the one gate is the pacer (:class:`~gateway.relay.pacing.Pacer`, or the fleet's shared
one); budgets and upstream health are gates too. A gate that makes calls wait serves them by
:class:`Turns`: a lead waiting takes the next slot before any batch of the back office.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import time
from collections.abc import AsyncIterator, Sequence
from typing import Protocol

from gateway.calltouch.client import Reply


class Ticket(Protocol):
    def written(self, at: float) -> None:
        """The call's bytes left at monotonic ``at`` (or the call will never be made).

        Called at least once for every ticket; only the first call counts.
        """

    def answered(self, reply: Reply) -> None:
        """What the call got back; not called for a call that was never made."""

    def current(self) -> bool:
        """Whether the call may still go as admitted. False when its gate changed its mind
        while later gates made the call wait: Calltouch went down meanwhile."""


class Gate(Protocol):
    async def admit(self, kind: str) -> Ticket:
        """Wait until a call of ``kind`` may go; the ticket follows that call."""


async def admit_all(gates: Sequence[Gate], kind: str) -> list[Ticket]:
    """A ticket from every gate, in order, each still current once the last is taken; the
    ones taken are given back if one fails."""
    while True:
        tickets = await _admit_each(gates, kind)
        if all(ticket.current() for ticket in tickets):
            return tickets
        # A call the health gate let through before Calltouch went down, then held by the
        # pacer for up to a window, would be one more call into the outage: start over.
        abandon(tickets, time.monotonic())


async def _admit_each(gates: Sequence[Gate], kind: str) -> list[Ticket]:
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


# Leads come first: a visitor's lead is worth seconds, a batch of deals is not.
URGENT_KINDS = frozenset({"lead"})


def urgency(kind: str) -> int:
    """Lower goes first: 0 for leads, 1 for everything else."""
    return 0 if kind in URGENT_KINDS else 1


class Turns:
    """A lock served by urgency, then in arrival order (asyncio.Lock is arrival order only)."""

    def __init__(self) -> None:
        self._busy = False
        self._waiting: list[tuple[int, int, asyncio.Future[None]]] = []
        self._order = itertools.count()

    @contextlib.asynccontextmanager
    async def turn(self, priority: int) -> AsyncIterator[None]:
        if self._busy or self._waiting:
            await self._wait(priority)
        self._busy = True
        try:
            yield
        finally:
            self._busy = False
            self._pass_on()

    async def _wait(self, priority: int) -> None:
        waiter = asyncio.get_running_loop().create_future()
        heapq.heappush(self._waiting, (priority, next(self._order), waiter))
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self._busy = False  # handed the turn as it was cancelled: hand it on
                self._pass_on()
            else:
                self._waiting = [w for w in self._waiting if w[2] is not waiter]
                heapq.heapify(self._waiting)
            raise

    def _pass_on(self) -> None:
        while self._waiting and not self._busy:
            _, _, waiter = heapq.heappop(self._waiting)
            if not waiter.done():
                self._busy = True  # reserved for the waiter, which sets it again
                waiter.set_result(None)
