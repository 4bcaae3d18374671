"""The queue contract every backend fulfils (see ``tests/test_queue_contract.py``).

A job moves ``ready → leased → delivered``; a failed send moves it to ``delayed`` (retry at a
time) or ``dead``; a lease that is not acked in time expires and the job is leased again. A
job's ``lease`` number changes with every lease, so an answer from an expired lease cannot
overwrite the settlement of a newer one. Jobs belong to a site: dedup keys are per site and
kind. A settled job's payload (the lead, with all its personal data) is purged after its
retention; its status stays.

A job may wait for another (``Put.after``): it is ``held``, never leased, until that one is
delivered, and then leased with that one's upstream id. A job held for a dead one waits for
its replay; once the dead one's payload is purged no replay can come, so what waits for it
(directly or down a chain) is dead too, purged with it (:data:`PARENT_DEAD`). Jobs of one
*chain* (one deal's create and updates, one 1.0 order's calls) each wait for the one before,
so they reach Calltouch in the order they were put; a post to a chain may merge into its
queued tail.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import NamedTuple, Protocol


class QueueError(Exception):
    """The store failed (locked, full, gone); the operation did not take effect."""


class State(StrEnum):
    READY = "ready"
    LEASED = "leased"
    DELAYED = "delayed"
    DELIVERED = "delivered"
    DEAD = "dead"
    SPAM = "spam"  # quarantined: never leased, not pending, releasable
    HELD = "held"  # waits for another job to be delivered (Put.after): never leased


PENDING = (State.READY, State.LEASED, State.DELAYED)
DEFAULT_SITE = "default"
# The last error of a job that waited for one whose payload was purged while dead.
PARENT_DEAD = "parent_dead: the job it waits for was dead and has been purged"


@dataclass(frozen=True, slots=True)
class Job:
    id: str
    kind: str
    payload: bytes
    created_at: float
    attempts: int
    lease: int
    site: str = DEFAULT_SITE
    # The upstream id of the job this one waited for (see Put.after): a comment's lead's
    # requestId, a deal update's calltouchOrderId.
    after_upstream: str | None = None


# Not frozen: a frozen dataclass sets each field through object.__setattr__, five times the
# cost, and these are made for every lead. Nothing changes them after construction.
@dataclass(slots=True)
class Put:
    """What to enqueue; ``dedup_key`` makes a repeat return the first job."""

    kind: str
    payload: bytes
    dedup_key: str | None = None
    site: str = DEFAULT_SITE
    # A job id: this one is held (never leased) until that one is delivered; dead at once
    # (PARENT_DEAD) when that one is dead and purged.
    after: str | None = None


@dataclass(slots=True)
class Status:
    """A job as the status API and the CLI show it: no payload, so no personal data."""

    id: str
    kind: str
    state: State
    created_at: float
    attempts: int
    last_error: str | None
    upstream_id: str | None
    purged: bool = False  # the payload is gone: nothing left to send, a dead one stays dead
    site: str = DEFAULT_SITE
    details: Mapping[str, object] | None = None  # what its answer said (Delivered.details)

    @property
    def public_status(self) -> str:
        if self.state in (State.DELIVERED, State.DEAD, State.SPAM):
            return self.state.value
        return "retrying" if self.attempts else "queued"

    def as_dict(self) -> dict[str, object]:
        return {
            "id": self.id,
            "kind": self.kind,
            "status": self.public_status,
            "attempts": self.attempts,
            "last_error": self.last_error,
            "request_id": self.upstream_id,
            "created_at": self.created_at,
        }


@dataclass(frozen=True, slots=True)
class Quarantined:
    """A lead scored as spam, kept to be looked at or released: ``reason`` names the signals
    and the score, never a value of the lead."""

    id: str
    put: Put
    reason: str
    at: float


@dataclass(slots=True)
class PutResult:
    status: Status
    created: bool
    merged: bool = False  # folded into the chain's queued tail (Link.merge)


@dataclass(frozen=True, slots=True)
class Link:
    """A post to the chain ``chain`` of its site: ``first`` when the chain is new, else
    ``next``, held until the chain's last job is delivered.

    When the chain's last job is still queued (not leased) and of ``first``'s or ``next``'s
    kind, ``merge(its payload, next's)`` replaces its payload instead: a deal's create not yet
    sent takes what a later post adds (its phones and matching among it, which no update can
    send). When the chain's first job not delivered is dead and ``merge`` is given (its jobs
    are states, not events), a post is that job again: the jobs queued behind it folded in
    (:meth:`folded`) and removed, then ``first``'s payload merged in; due now, no attempt
    counted (a CRM posts the deal Calltouch refused again, mended). A first job waits for
    :meth:`revived_after`, unless that is dead and purged: then it stays dead, with all that
    merged into it (unless purged too); a later one waits for the job before it, delivered.
    Otherwise ``follow(the last job's payload or None if purged, next's)`` is what is queued;
    ``None``: nothing is. Both run inside the store's transaction: they must be quick and pure.
    """

    chain: str
    first: Put
    next: Put
    merge: Callable[[bytes, bytes], bytes] | None = None
    follow: Callable[[bytes | None, bytes], bytes | None] | None = None

    def folded(self, first: bytes | None, behind: Sequence[bytes | None]) -> bytes | None:
        """The dead first job's payload with what was queued behind it merged in, in order
        (``None``: purged); the revived job carries the whole chain again."""
        if first is None or self.merge is None:
            return first
        for payload in behind:
            if payload is not None:
                first = self.merge(first, payload)
        return first

    def revived_after(self, had: str | None, had_purged_dead: bool) -> str | None:
        """What the dead first job, revived, waits for: what ``first`` names, else what it
        waited for (``had``), unless that is dead and purged (``had_purged_dead``): then
        nothing, or a post that names no lead would find it dead for ever."""
        if self.first.after is not None:
            return self.first.after
        return None if had_purged_dead else had


@dataclass(frozen=True, slots=True)
class Purged:
    """What a purge removed; ``flushed`` is ``False`` while the store's files may still hold
    copies of purged payloads (a later purge removes them)."""

    delivered: int = 0
    dead: int = 0
    flushed: bool = True


@dataclass(frozen=True, slots=True)
class Stats:
    counts: dict[State, int]
    oldest_pending_at: float | None


class Back(NamedTuple):
    """A leased job going back to wait until ``at``: a retry, counting an attempt and keeping
    ``error``, or, without one, a deferral (no attempt counted)."""

    job: Job
    at: float
    error: str | None = None


class Tally(NamedTuple):
    """Points of one site's hour or day (``span``), named by the moment it ends; ``bulk``:
    of those, what kinds other than leads spent (an hour's only). Sent to the store as what
    this process spent since it last told it (negative: given back); read back as the total.

    ``refused`` and ``resumed`` (an hour's only): when Calltouch last refused a call of the
    site for points, and when a call last passed after a refusal, as any process heard it;
    the store keeps the latest of each, so the site is refused while ``refused > resumed``."""

    site: str
    span: str
    ends: float
    points: int
    bulk: int
    refused: float = 0.0
    resumed: float = 0.0


class Queue(Protocol):
    async def put(self, item: Put, now: float) -> PutResult:
        """Commit durably before the result; dedup on ``(site, kind, dedup_key)``."""

    async def put_many(self, items: Sequence[Put], now: float) -> list[PutResult]:
        """Commit all durably before returning; dedup as :meth:`put`, within the batch too."""

    async def lease(
        self, kind: str, limit: int, now: float, visibility: float, site: str | None = None
    ) -> list[Job]:
        """Take up to ``limit`` visible jobs of one site (``site``, or the oldest visible
        job's), oldest first, invisible until ``now + visibility``."""

    async def ack(
        self, job: Job, upstream_id: str, now: float,
        details: Mapping[str, object] | None = None,
    ) -> bool:
        """Mark delivered (keeping ``details``) and release the jobs held for it, with
        ``upstream_id``; ``False`` when the lease was lost."""

    async def append(self, link: Link, now: float) -> PutResult:
        """Queue a post to a chain (see :class:`Link`), durably; ``merged`` when it went into
        the queued tail, ``created`` when a job was queued (neither: ``follow`` left nothing)."""

    async def append_many(self, links: Sequence[Link], now: float) -> list[PutResult]:
        """:meth:`append` of each, in order, in one transaction (a bulk upload's batch)."""

    async def convert(self, job: Job, kind: str, now: float) -> bool:
        """Make a leased job one of ``kind``, visible at once, no attempt counted."""

    async def hasten(self, now: float) -> int:
        """Make every delayed job due at ``now`` (the upstream they waited for is back); how
        many."""

    async def backlog(
        self, kind: str, now: float, limit: int, sites: Sequence[str] | None = None
    ) -> tuple[int, float | None]:
        """How many jobs of ``kind`` (of ``sites``, or any) are visible (up to ``limit``), and
        since when the oldest of them has been: a batch sender waits for a full call or its
        linger."""

    async def find(self, site: str, kind: str, dedup_key: str) -> Status | None:
        """The job holding ``dedup_key`` for ``(site, kind)``."""

    async def chain(self, site: str, chain: str) -> list[Status]:
        """The jobs of a chain, oldest first."""

    async def put_back(self, backs: Sequence[Back]) -> int:
        """Make each leased job visible again at its ``at``: counting the attempt and keeping
        its error (a retry), or without an error counting none (deferred: a budget or a pause
        held it back, or another item of its call failed). In one transaction, so that the
        jobs of one call come back together (a lease taken meanwhile sees all or none); how
        many still held their lease."""

    async def release(self, job: Job) -> bool:
        """Give a lease back unsent (shutdown): visible at once, no attempt counted."""

    async def bury(self, job: Job, reason: str, now: float) -> bool:
        """Dead-letter the job with its reason."""

    async def status(self, job_id: str) -> Status | None: ...

    async def dead(self, limit: int) -> list[Status]: ...

    async def replay(self, job_ids: Sequence[str] | None, now: float) -> int:
        """Make dead jobs ready again (all of them when ``job_ids`` is ``None``).

        A purged dead job has nothing to send: it stays dead and is not counted.
        """

    async def purge(self, delivered_before: float, dead_before: float, limit: int) -> Purged:
        """Drop the payload of delivered jobs settled before ``delivered_before`` and of dead
        jobs settled before ``dead_before``; status and dedup key stay. The jobs held for a
        dead job purged here, and those held for them, are dead too (:data:`PARENT_DEAD`),
        their payloads purged at once, in the same transaction; ``dead`` counts them.

        Works in transactions of at most ``limit`` jobs, letting other writes in between.
        """

    async def quarantine(self, items: Sequence[Quarantined], keep: int) -> int:
        """Store ``items`` as spam (no dedup key is taken), then drop the oldest spam beyond
        ``keep``; the number dropped."""

    async def spam(self, limit: int, since: float | None = None) -> list[Status]:
        """Quarantined jobs, oldest first (accepted at ``since`` or later)."""

    async def release_spam(
        self, job_ids: Sequence[str] | None, since: float | None, now: float
    ) -> int:
        """Queue quarantined jobs (those named, those since a time, or all) as if accepted
        then: ready at ``now``, their creation time kept."""

    async def purge_spam(self, before: float, limit: int) -> int:
        """Delete up to ``limit`` quarantined jobs accepted before ``before``."""

    async def tally(self, spent: Sequence[Tally], now: float) -> list[Tally]:
        """Add each tally's points to its window's (every process's spending of a site's API
        points), and return the windows' totals; windows that ended a day before ``now`` are
        dropped."""

    async def wait_for_work(
        self, kind: str, timeout: float, sites: Sequence[str] | None = None
    ) -> bool:
        """Wait until a job of ``kind`` (of one of ``sites``, or any) is visible; ``False``
        after ``timeout`` seconds without one. Work that other processes queue wakes it too."""

    async def pending_by_site(self) -> dict[str, int]:
        """The number of pending jobs of each site that has some, from the counts kept."""

    async def stats(self) -> Stats:
        """Jobs by state and the oldest pending one's age, at a cost that does not grow with
        the number of jobs."""

    async def ping(self) -> None:
        """Raise :class:`QueueError` unless the store answers now."""

    async def close(self) -> None: ...
