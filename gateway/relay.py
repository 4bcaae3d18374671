"""The relay: wait for work → pace → lease → send → ack, retry or bury.

One dispatcher per job kind; sends run as tasks, at most ``concurrency`` at once, so the rate
holds while Calltouch takes seconds to answer. A job is leased only once its pacer slot is
granted, so a crash leaves few leases to expire. Senders map a kind to one upstream call; a
sender may take several jobs per call (batch APIs), so nothing here assumes one job per call.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import orjson

from .calltouch import CalltouchClient, Delivered, Outcome, Retry
from .metrics import Metrics
from .pacing import Pacer, Slot, backoff
from .queue import Job, Queue

log = logging.getLogger(__name__)


class Sender(Protocol):
    kind: str
    method: str
    batch: int

    async def send(self, jobs: Sequence[Job], slot: Slot) -> Outcome: ...


class LeadSender:
    """Leads go one per call to ``requests/{site_id}/register/``."""

    kind = "lead"
    method = "register"
    batch = 1

    def __init__(self, client: CalltouchClient) -> None:
        self._client = client

    async def send(self, jobs: Sequence[Job], slot: Slot) -> Outcome:
        fields: dict[str, Any] = orjson.loads(jobs[0].payload)
        return await self._client.register(fields, slot)


class Relay:
    def __init__(
        self,
        queue: Queue,
        pacer: Pacer,
        senders: Sequence[Sender],
        metrics: Metrics,
        *,
        concurrency: int = 16,
        lease_timeout: float = 60.0,
        max_age: float = 72 * 3600.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._queue = queue
        self._pacer = pacer
        self._senders = senders
        self._metrics = metrics
        self._sem = asyncio.Semaphore(concurrency)
        self._lease_timeout = lease_timeout
        self._max_age = max_age
        self._clock = clock
        self._wakeups = {s.kind: asyncio.Event() for s in senders}
        self._dispatchers: list[asyncio.Task[None]] = []
        self._inflight: dict[asyncio.Task[None], list[Job]] = {}

    def wake(self, kind: str) -> None:
        """New work of ``kind`` was queued here: skip the poll interval."""
        if kind in self._wakeups:
            self._wakeups[kind].set()

    def start(self) -> None:
        for sender in self._senders:
            task = asyncio.create_task(self._dispatch(sender), name=f"ctgw-relay-{sender.kind}")
            self._dispatchers.append(task)

    async def stop(self, grace: float) -> int:
        """Stop leasing, give in-flight sends ``grace`` seconds, give back the rest's leases."""
        for task in self._dispatchers:
            task.cancel()
        await asyncio.gather(*self._dispatchers, return_exceptions=True)
        if self._inflight:
            await asyncio.wait(list(self._inflight), timeout=grace)
        late = {task: jobs for task, jobs in self._inflight.items() if not task.done()}
        for task in late:
            task.cancel()
        await asyncio.gather(*late, return_exceptions=True)
        for job in (job for jobs in late.values() for job in jobs):
            with contextlib.suppress(Exception):
                await self._queue.release(job)
        return len(late)

    async def _dispatch(self, sender: Sender) -> None:
        failures = 0
        while True:
            await self._sem.acquire()
            try:
                jobs, slot = await self._next(sender)
            except Exception as exc:  # the store is locked or gone: wait, then try again
                self._sem.release()
                failures += 1
                log.error("relay cannot lease kind=%s error=%s", sender.kind, type(exc).__name__)
                await asyncio.sleep(min(30.0, 0.5 * 2**min(failures, 6)))
                continue
            except BaseException:
                self._sem.release()
                raise
            failures = 0
            task = asyncio.create_task(self._deliver(sender, jobs, slot))
            self._inflight[task] = jobs
            task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._inflight.pop(task, None)
        self._sem.release()
        if not task.cancelled() and task.exception() is not None:
            log.error("relay send failed", exc_info=task.exception())

    async def _next(self, sender: Sender) -> tuple[list[Job], Slot]:
        while True:
            await self._wait_for_work(sender.kind)
            started = time.monotonic()
            slot = await self._pacer.acquire()
            self._metrics.pacer_wait.observe(time.monotonic() - started)
            lease = asyncio.ensure_future(self._queue.lease(
                sender.kind, sender.batch, self._clock(), self._lease_timeout
            ))
            try:
                # Shielded: a store may commit a lease it can no longer report, so a stop
                # lets it finish and gives its jobs back rather than leave them leased.
                jobs = await asyncio.shield(lease)
            except BaseException:
                slot.mark_sent(time.monotonic())  # an unused slot must not block the window
                await self._give_back(lease)  # nothing, when the lease itself failed
                raise
            if jobs:
                return jobs, slot
            slot.mark_sent(time.monotonic())  # another worker took them: an unused slot

    async def _give_back(self, lease: asyncio.Future[list[Job]]) -> None:
        with contextlib.suppress(Exception):
            for job in await lease:
                await self._queue.release(job)

    async def _wait_for_work(self, kind: str) -> None:
        wakeup = self._wakeups[kind]
        while True:
            wakeup.clear()
            at = await self._queue.next_visible_at(kind)
            now = self._clock()
            if at is not None and at <= now:
                return
            # Poll now and then for work queued by other processes (the CLI's replay).
            timeout = 1.0 if at is None else min(1.0, at - now)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wakeup.wait(), timeout)

    async def _deliver(self, sender: Sender, jobs: list[Job], slot: Slot) -> None:
        started = time.monotonic()
        try:
            outcome = await sender.send(jobs, slot)
        finally:
            slot.mark_sent(time.monotonic())
        self._metrics.upstream.labels(sender.method, outcome.outcome).inc()
        self._metrics.upstream_seconds.labels(sender.method).observe(time.monotonic() - started)
        for job in jobs:
            await self._settle(job, outcome)

    async def _settle(self, job: Job, outcome: Outcome) -> None:
        now = self._clock()
        if isinstance(outcome, Delivered):
            self._pacer.succeeded()
            if await self._queue.ack(job, outcome.upstream_id, now):
                self._metrics.delivered.inc()
                self._metrics.delivery_seconds.observe(max(0.0, now - job.created_at))
                log.info("delivered job=%s attempts=%d", job.id, job.attempts + 1)
        elif isinstance(outcome, Retry):
            await self._retry(job, outcome, now)
        else:
            await self._bury(job, outcome.outcome, outcome.reason, now)

    async def _retry(self, job: Job, outcome: Retry, now: float) -> None:
        if outcome.outcome == "rate_limited":
            self._pacer.rate_limited(outcome.retry_after)
        if now - job.created_at > self._max_age:
            await self._bury(job, "expired", f"expired after retries; last: {outcome.reason}", now)
            return
        delay = max(backoff(job.attempts + 1, rand=random.random()), outcome.retry_after or 0.0)
        await self._queue.retry(job, now + delay, outcome.reason, now)
        log.warning(
            "retry job=%s outcome=%s attempts=%d in=%.1fs",
            job.id, outcome.outcome, job.attempts + 1, delay,
        )

    async def _bury(self, job: Job, reason: str, detail: str, now: float) -> None:
        if await self._queue.bury(job, detail, now):
            self._metrics.dead.labels(reason).inc()
            log.error("dead job=%s reason=%s", job.id, reason)


__all__ = ["LeadSender", "Relay", "Sender"]
