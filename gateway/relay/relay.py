"""The relay: wait for work → gates → lease → send → settle each job by its own verdict.

One dispatcher per job kind. A dispatcher takes a concurrency permit only once it sees work,
so an idle kind holds none; sends run as tasks, at most ``concurrency`` at once, so the rate
holds while Calltouch takes seconds to answer. Jobs are leased only once every gate has let
the call through, so a crash leaves few leases to expire. A sender may take several jobs per
call (batch APIs answer per item): each job is settled by its own verdict
(:mod:`gateway.relay.settle`), while the gates hear of the call once.

A relay given its sites waits for, and leases, the jobs of those sites only. Jobs of a site it
does not serve (removed from the sites, or not yet added here in a fleet's rolling deploy) are
left in the store, untouched, for a gateway that serves it; the relay names them at start.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Sequence
from typing import Protocol

from gateway.calltouch.answers import Defer, Delivered, Permanent, Verdict
from gateway.calltouch.client import Call, CalltouchClient, Reply
from gateway.ops.metrics import Metrics
from gateway.queue import Back, Job, Queue
from gateway.relay.gates import Gate, Ticket, abandon, admit_all, urgency
from gateway.relay.pacing import backoff
from gateway.relay.points import Points, Spend
from gateway.relay.settle import Settler

log = logging.getLogger(__name__)

# A dispatcher looks again after this long without work; work queued here wakes it at once.
IDLE_SECONDS = 60.0
AUTH_FAILED = "auth_failed"  # the Defer code of a call refused for its credentials
# While every site with work of a kind waits for its API points, look again this often.
POINTS_LOOK = 1.0
# After its grace, a stop gives the sends it cut short this long to give their leases back. A
# store that cannot answer by then (a network partition) is not waited for: the leases end
# after ``lease_timeout`` and their jobs go again, so the stop fits a service manager's limit.
GIVE_BACK_SECONDS = 5.0


class Sender(Protocol):
    """What the relay needs of a kind (see :mod:`gateway.kinds`)."""

    @property
    def kind(self) -> str: ...
    @property
    def method(self) -> str: ...  # Calltouch's method: the metric label of its calls
    @property
    def batch(self) -> int: ...  # the most jobs one call may carry
    @property
    def linger(self) -> float: ...  # how long a partial batch may wait to fill up
    @property
    def reads_errors(self) -> bool: ...  # read() also decides 4xx answers (their bodies say)

    def call(self, jobs: Sequence[Job]) -> Call: ...

    def read(self, reply: Reply, jobs: Sequence[Job]) -> list[Verdict]:
        """One verdict per job, in order, from a 2xx ``reply`` (or a 4xx, if it reads errors)."""


class Relay:
    def __init__(
        self,
        queue: Queue,
        client: CalltouchClient,
        senders: Sequence[Sender],
        gates: Sequence[Gate],
        metrics: Metrics,
        *,
        concurrency: int = 16,
        lease_timeout: float = 60.0,
        max_age: float = 72 * 3600.0,
        clock: Callable[[], float] = time.time,
        sites: Sequence[str] = (),
        points: Points | None = None,
    ) -> None:
        self._queue = queue
        # Sites take turns per kind, so that one site's bulk upload does not starve another's.
        self._sites = list(sites)
        # What the store is asked for: the jobs of these sites only (None: sites not known).
        self._served: list[str] | None = self._sites or None
        # Per kind and site, calls in a row that could not be built: their jobs' backoff. Per
        # site, since one site's lost token says nothing of another's.
        self._unbuilt: dict[tuple[str, str], int] = {}
        self._warning: asyncio.Task[None] | None = None
        self._turns: dict[str, int] = {}
        self._points = points
        self._client = client
        self._senders = senders
        self._gates = gates
        self._metrics = metrics
        self._permits = asyncio.Semaphore(concurrency)
        self._lease_timeout = lease_timeout
        self._clock = clock
        self._settler = Settler(queue, metrics, max_age=max_age, clock=clock)
        self._dispatchers: list[asyncio.Task[None]] = []
        self._inflight: dict[asyncio.Task[None], list[Job]] = {}
        # Urgent kinds (leads) with visible work. The gates serve a lead before a batch only
        # while the lead waits in them, and a lead dispatcher is out of them between two calls
        # (leasing, looking for the next): so the other kinds ask for a call one at a time and
        # only while no lead is left waiting, or they take the slots of a burst of leads.
        self._urgent_busy: set[str] = set()
        self._urgent_idle = asyncio.Event()
        self._urgent_idle.set()
        self._batch_turn = asyncio.Lock()

    def start(self) -> None:
        if self._served is not None:
            self._warning = asyncio.create_task(self._warn_unserved(), name="ctgw-relay-sites")
        for sender in self._senders:
            task = asyncio.create_task(self._dispatch(sender), name=f"ctgw-relay-{sender.kind}")
            self._dispatchers.append(task)

    async def stop(self, grace: float) -> int:
        """Stop leasing, give in-flight sends ``grace`` seconds, then cancel the rest and give
        their leases back, for ``GIVE_BACK_SECONDS`` at most; how many sends were cut short."""
        if self._warning is not None:
            self._warning.cancel()
        for task in self._dispatchers:
            task.cancel()
        if running := [*self._dispatchers, *self._inflight]:
            await asyncio.wait(running, timeout=grace)
        late = {task: jobs for task, jobs in self._inflight.items() if not task.done()}
        for task in late:
            task.cancel()
        # Waited for with a bound, not gathered: a task cut off in the middle of a statement
        # to a store that has gone silent finishes only when the store's pool is closed.
        give_back = asyncio.ensure_future(self._give_back_late(late))
        _, pending = await asyncio.wait([give_back, *self._dispatchers], timeout=GIVE_BACK_SECONDS)
        if pending:
            give_back.cancel()
            log.error("relay stop: the store did not answer in %.0fs; the leases of %d jobs"
                      " end by themselves", GIVE_BACK_SECONDS, sum(map(len, late.values())))
        return len(late)

    async def _give_back_late(self, late: dict[asyncio.Task[None], list[Job]]) -> None:
        await asyncio.gather(*late, return_exceptions=True)
        for job in (job for jobs in late.values() for job in jobs):
            with contextlib.suppress(Exception):
                await self._queue.release(job)

    async def _warn_unserved(self) -> None:
        """One line per site not served here that has pending jobs: they wait, untouched, for
        a gateway that serves it (a fleet's other gateways, or this one once configured)."""
        try:
            pending = await self._queue.pending_by_site()
        except Exception as exc:  # the store is not answering: the dispatchers will say so
            log.error("relay cannot count pending jobs by site error=%s", type(exc).__name__)
            return
        for site, count in pending.items():
            if site not in self._sites:
                log.warning("site=%s is not configured here: its %d pending jobs wait for a"
                            " gateway that serves it", site, count)

    async def _dispatch(self, sender: Sender) -> None:
        failures = 0
        while True:
            try:
                await self._next_call(sender)
            except Exception as exc:  # the store is locked or gone: wait, then try again
                self._set_urgent(sender.kind, busy=False)
                failures += 1
                log.error("relay cannot lease kind=%s error=%s", sender.kind, type(exc).__name__)
                await asyncio.sleep(min(30.0, 0.5 * 2**min(failures, 6)))
                continue
            except BaseException:
                self._set_urgent(sender.kind, busy=False)
                raise
            failures = 0

    async def _next_call(self, sender: Sender) -> None:
        """Wait for work of the sender's kind that may go now, and start a call of it."""
        urgent = urgency(sender.kind) == 0
        busy = sender.kind in self._urgent_busy
        if busy and not await self._queue.wait_for_work(sender.kind, 0, self._served):
            # What was visible went to another gateway of the fleet: the batch kinds need
            # not wait for this one's next lead.
            self._set_urgent(sender.kind, busy=False)
        if not await self._queue.wait_for_work(sender.kind, IDLE_SECONDS, self._served):
            return
        sites = await self._open_sites(sender)
        if sites == []:  # every site with work waits for its API points
            self._set_urgent(sender.kind, busy=False)
            await asyncio.sleep(POINTS_LOOK)
            return
        if urgent:
            self._set_urgent(sender.kind, busy=True)
        if sender.linger > 0 and not await self._filled(sender):
            return
        await self._permits.acquire()
        started = False
        try:
            started = await self._start_call(sender, sites)
        finally:
            if not started:  # a started call's task gives the permit back
                self._permits.release()
        if urgent:  # busy while more of its kind are visible
            count, _ = await self._queue.backlog(sender.kind, self._clock(), 1, self._served)
            self._set_urgent(sender.kind, busy=started and count > 0)

    def _set_urgent(self, kind: str, *, busy: bool) -> None:
        if busy:
            self._urgent_busy.add(kind)
            self._urgent_idle.clear()
        else:
            self._urgent_busy.discard(kind)
            if not self._urgent_busy:
                self._urgent_idle.set()

    async def _filled(self, sender: Sender) -> bool:
        """Whether a call would go full, or its oldest job has waited its linger; if neither,
        wait until that linger is over (a bulk upload fills the batch sooner, a lone deal is
        held only that long)."""
        now = self._clock()
        count, oldest = await self._queue.backlog(sender.kind, now, sender.batch, self._served)
        if count == 0 or oldest is None:
            return False
        wait = oldest + sender.linger - now
        if count >= sender.batch or wait <= 0:
            return True
        await asyncio.sleep(min(wait, sender.linger))
        return False

    async def _open_sites(self, sender: Sender) -> list[str] | None:
        """The sites a call of ``sender`` may lease from, in their turn: all but those waiting
        for API points (and then only those with work); ``None``: any (sites not known)."""
        if not self._sites:
            return None
        first = self._turns.get(sender.kind, 0)
        turn = [self._sites[(first + step) % len(self._sites)] for step in range(len(self._sites))]
        if self._points is None:
            return turn
        points = self._points
        open_ = [site for site in turn if points.until(site, sender.kind, sender.method) is None]
        if len(open_) == len(turn):
            return open_
        # Some site's work must wait: the call goes only if an open site has some.
        return [site for site in open_
                if await self._queue.wait_for_work(sender.kind, 0, [site])]

    async def _start_call(self, sender: Sender, sites: list[str] | None) -> bool:
        """Pass the gates, lease, and start the send; False when no job was left to lease."""
        waited = time.monotonic()
        tickets = await self._admit(sender.kind)
        self._metrics.pacer_wait.observe(time.monotonic() - waited)
        lease = asyncio.ensure_future(self._lease(sender, sites))
        try:
            # Shielded: a store may commit a lease it can no longer report, so a stop lets
            # it finish and gives its jobs back rather than leave them leased.
            jobs = await asyncio.shield(lease)
        except BaseException:
            abandon(tickets, time.monotonic())
            await self._give_back(lease)  # nothing, when the lease itself failed
            raise
        if not jobs:  # another worker took them
            abandon(tickets, time.monotonic())
            return False
        call = None
        try:
            call = await self._build(sender, jobs)
        finally:
            if call is None:  # nothing was sent: the pace slot goes back unused
                abandon(tickets, time.monotonic())
        if call is None:
            return False
        spend = None
        if self._points is not None:
            spend = self._points.take(jobs[0].site, sender.kind, sender.method)
            if spend is None:
                abandon(tickets, time.monotonic())  # another call took the site's last points
                for job in jobs:
                    await self._queue.release(job)
                return False
        task = asyncio.create_task(self._deliver(sender, jobs, call, tickets, spend))
        self._inflight[task] = jobs
        task.add_done_callback(self._done)
        return True

    async def _admit(self, kind: str) -> list[Ticket]:
        if urgency(kind) == 0:
            return await admit_all(self._gates, kind)
        async with self._batch_turn:
            await self._urgent_idle.wait()
            return await admit_all(self._gates, kind)

    async def _build(self, sender: Sender, jobs: list[Job]) -> Call | None:
        """The call of ``jobs``; ``None`` when the sender fails to build it (a credential of
        the site gone from the configuration, a payload it cannot read): the jobs then wait,
        no attempt counted, longer each time in a row, instead of coming straight back."""
        key = (sender.kind, jobs[0].site)
        try:
            call = sender.call(jobs)
        except Exception as exc:
            failures = self._unbuilt[key] = self._unbuilt.get(key, 0) + 1
            delay = backoff(failures)
            log.error("relay cannot build a call kind=%s site=%s jobs=%d error=%s: they wait"
                      " %.0fs", sender.kind, jobs[0].site, len(jobs), type(exc).__name__, delay)
            await self._queue.put_back([Back(job, self._clock() + delay) for job in jobs])
            return None
        self._unbuilt.pop(key, None)
        return call

    async def _lease(self, sender: Sender, sites: list[str] | None) -> list[Job]:
        """Jobs for one call: of the first of ``sites`` that has some (of any site: None)."""
        now = self._clock()
        if sites is None:
            return await self._queue.lease(sender.kind, sender.batch, now, self._lease_timeout)
        for site in sites:
            jobs = await self._queue.lease(sender.kind, sender.batch, now, self._lease_timeout,
                                           site)
            if jobs:
                self._turns[sender.kind] = self._sites.index(site) + 1
                return jobs
        return []

    def _done(self, task: asyncio.Task[None]) -> None:
        self._inflight.pop(task, None)
        self._permits.release()
        if not task.cancelled() and task.exception() is not None:
            log.error("relay send failed", exc_info=task.exception())

    async def _give_back(self, lease: asyncio.Future[list[Job]]) -> None:
        with contextlib.suppress(Exception):
            for job in await lease:
                await self._queue.release(job)

    async def _deliver(
        self, sender: Sender, jobs: list[Job], call: Call, tickets: list[Ticket],
        spend: Spend | None,
    ) -> None:
        started = time.monotonic()

        def written(at: float) -> None:
            for ticket in tickets:
                ticket.written(at)

        try:
            reply = await self._client.send(call, written)
        finally:
            written(time.monotonic())  # a call cut short must not hold the window
        for ticket in tickets:
            ticket.answered(reply)
        verdicts = self._verdicts(sender, reply, jobs)
        if self._points is not None and spend is not None:
            self._points.heard(spend, reply, verdicts)
        self._count_call(sender.method, verdicts, time.monotonic() - started)
        await self._settler.settle(jobs, verdicts)

    def _verdicts(self, sender: Sender, reply: Reply, jobs: list[Job]) -> list[Verdict]:
        refused = None if self._points is None else self._points.refused(reply)
        if refused is not None:  # before the kind reads it: no item was looked at
            return [refused] * len(jobs)
        failure = reply.failure
        if failure is None or (sender.reads_errors and isinstance(failure, Permanent)):
            return sender.read(reply, jobs)
        return [failure] * len(jobs)

    def _count_call(self, method: str, verdicts: list[Verdict], seconds: float) -> None:
        # One label a call: "ok" when Calltouch took any of its jobs, else the first's code.
        delivered = any(isinstance(v, Delivered) for v in verdicts)
        self._metrics.upstream.labels(method, "ok" if delivered else verdicts[0].code).inc()
        self._metrics.upstream_seconds.labels(method).observe(seconds)
        if any(isinstance(v, Defer) and v.code == AUTH_FAILED for v in verdicts):
            self._metrics.auth_failures.labels(method).inc()
            log.error("calltouch refused the credentials method=%s: its jobs wait", method)
