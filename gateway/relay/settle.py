"""What becomes of each job of a call: delivered, back to wait, converted, or dead.

Each job is settled by its own verdict (a batch API answers per item). A deferred job waits
without an attempt spent; a retried one waits out its backoff, or is dead once older than
``max_age``; a delivered or dead one is counted in the job and lead metrics.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable

from gateway.calltouch.answers import Convert, Defer, Delivered, Retry, Verdict, scrub
from gateway.ops.metrics import Metrics
from gateway.queue import Back, Job, Queue
from gateway.relay.pacing import backoff

log = logging.getLogger(__name__)

LEAD = "lead"  # the kind whose series the lead metrics are (gateway.kinds.lead.KIND)


class Settler:
    def __init__(self, queue: Queue, metrics: Metrics, *, max_age: float,
                 clock: Callable[[], float] = time.time) -> None:
        self._queue = queue
        self._metrics = metrics
        self._max_age = max_age
        self._clock = clock
        # Its own generator: a draw must not move the process's global ``random`` state, which
        # other code (a sandbox, a property test's generator) may be reading on another thread.
        self._jitter = random.Random()

    async def settle(self, jobs: list[Job], verdicts: list[Verdict]) -> None:
        """Each job by its verdict; those that go back to wait go back together, in one
        transaction: a lease taken meanwhile would send part of them in a call of its own."""
        now = self._clock()
        # One draw of the backoff's jitter a call, not a job: jobs that failed together come
        # back at one moment and go in one call again.
        rand = self._jitter.random()
        backs = []
        for job, verdict in zip(jobs, verdicts, strict=True):
            back = self._back(job, verdict, now, rand)
            if back is None:
                await self._settle_one(job, verdict)
            else:
                backs.append(back)
        if backs:
            await self._queue.put_back(backs)

    def _back(self, job: Job, verdict: Verdict, now: float, rand: float) -> Back | None:
        """How ``job`` waits for another try; ``None``: it does not (delivered, dead)."""
        if isinstance(verdict, Defer):  # not applied, not its fault: no attempt spent
            return Back(job, now + verdict.delay)
        if not isinstance(verdict, Retry) or now - job.created_at > self._max_age:
            return None
        delay = max(backoff(job.attempts + 1, rand=rand), verdict.retry_after or 0.0)
        log.warning(
            "retry job=%s code=%s attempts=%d in=%.1fs",
            job.id, verdict.code, job.attempts + 1, delay,
        )
        return Back(job, now + delay, scrub(verdict.detail, job.payload))

    async def _settle_one(self, job: Job, verdict: Verdict) -> None:
        now = self._clock()
        if isinstance(verdict, Delivered):
            if await self._queue.ack(job, verdict.upstream_id, now, verdict.details):
                self._count_delivered(job, now)
        elif isinstance(verdict, Retry):  # too old for another try
            await self._bury(job, "expired", f"expired after retries; last: {verdict.detail}", now)
        elif isinstance(verdict, Convert):
            await self._queue.convert(job, verdict.kind, now)
            log.info("converted job=%s kind=%s to=%s", job.id, job.kind, verdict.kind)
        else:
            await self._bury(job, verdict.code, verdict.detail, now)

    def _count_delivered(self, job: Job, now: float) -> None:
        seconds = max(0.0, now - job.created_at)
        self._metrics.jobs_delivered.labels(job.kind, job.site).inc()
        self._metrics.job_delivery_seconds.labels(job.kind, job.site).observe(seconds)
        if job.kind == LEAD:
            self._metrics.delivered.labels(job.site).inc()
            self._metrics.delivery_seconds.labels(job.site).observe(seconds)
        log.info("delivered job=%s kind=%s attempts=%d", job.id, job.kind, job.attempts + 1)

    async def _bury(self, job: Job, reason: str, detail: str, now: float) -> None:
        # Shown by `ct-gateway dead list`, and kept after the payload is purged.
        if await self._queue.bury(job, scrub(detail, job.payload), now):
            self._metrics.jobs_dead.labels(job.kind, reason, job.site).inc()
            if job.kind == LEAD:
                self._metrics.dead.labels(reason, job.site).inc()
            log.error("dead job=%s kind=%s reason=%s", job.id, job.kind, reason)
