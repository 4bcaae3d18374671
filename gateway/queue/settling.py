"""How a backend settles a leased job: one UPDATE each, fenced by the lease number.

Both backends settle the same way and differ only in their statements (placeholders, how the
lease is checked) and in how they run one; this holds what they share. An ack also releases
the jobs held for it, so each backend has its own (:mod:`.sqlite_links`, :mod:`.postgres_links`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

from gateway.queue.base import Back, Job

Update = tuple[Job, str, tuple[object, ...]]  # a job, the UPDATE to run on it, its arguments


@dataclass(frozen=True, slots=True)
class Statements:
    """A backend's UPDATE for each settlement, with the arguments named beside each."""

    bury: str  # reason, now
    retry: str  # at, error
    defer: str  # until
    release: str


class Settling(ABC):
    statements: ClassVar[Statements]

    @abstractmethod
    async def _finish(self, job: Job, update: str, *args: object) -> bool:
        """Run ``update`` on ``job`` if its lease still holds; whether it did."""

    @abstractmethod
    async def _finish_many(self, updates: Sequence[Update]) -> int:
        """:meth:`_finish` of each, in one transaction; how many held their lease."""

    @abstractmethod
    def _wake(self, kind: str) -> None:
        """Work of ``kind`` may be due sooner: wake this process's waiters."""

    async def bury(self, job: Job, reason: str, now: float) -> bool:
        return await self._finish(job, self.statements.bury, reason, now)

    async def put_back(self, backs: Sequence[Back]) -> int:
        done = await self._finish_many([self._back_update(back) for back in backs])
        for kind in {back.job.kind for back in backs}:
            self._wake(kind)
        return done

    def _back_update(self, back: Back) -> Update:
        if back.error is None:
            return back.job, self.statements.defer, (back.at,)
        return back.job, self.statements.retry, (back.at, back.error)

    async def release(self, job: Job) -> bool:
        return await self._back(job, self.statements.release)

    async def _back(self, job: Job, update: str, *args: object) -> bool:
        """A job goes back to wait: its dispatcher may sleep until a later one, so wake it."""
        done = await self._finish(job, update, *args)
        self._wake(job.kind)
        return done
