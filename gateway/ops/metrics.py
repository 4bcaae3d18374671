"""Every metric of the gateway, on an injected registry (a fresh one per test).

Labels carry only bounded, non-personal values: channels, outcomes, codes, routes, states,
and a configured site's name (``site``; ``""`` for a post no site took).
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable, Sequence
from importlib import metadata

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

CHANNELS = ("browser", "api")
RECEIVED_OUTCOMES = ("accepted", "duplicate", "invalid", "rejected", "spam", "throttled")
UPSTREAM_OUTCOMES = (
    "ok", "rate_limited", "server_error", "client_error", "timeout", "network_error",
    "invalid_answer",
)
DEAD_REASONS = ("client_error", "invalid_answer", "expired")
# The site label of a lead no configured site took (a browser's Host, an API token or a
# ?site= that names none): no site's name is empty, and a caller's text never becomes a label.
NO_SITE = ""
RETENTION_STATES = ("delivered", "dead")

_FAST = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
_UPSTREAM = (0.05, 0.1, 0.25, 0.5, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 15.0)
_DELIVERY = (0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, 4 * 3600, 24 * 3600)
_WAIT = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0)


def _version() -> str:
    try:
        return metadata.version("ct-gateway")
    except metadata.PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown"


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        ProcessCollector(registry=r)
        Info("ctgw_build", "Version of the running gateway.", registry=r).info(
            {"version": _version()}
        )
        self._declare_intake(r)
        self._declare_lead_delivery(r)
        self._declare_jobs(r)
        self._declare_upstream(r)
        self._declare_points(r)
        self._declare_pacer(r)
        self._declare_listener(r)
        self._declare_queue(r)
        self._zero()

    def _declare_intake(self, r: CollectorRegistry) -> None:
        self.received = LoopCounter(
            "ctgw_leads_received", "Leads posted to the gateway, by channel, outcome and site.",
            ("channel", "outcome", "site"),
        )
        r.register(self.received)
        self.validation_errors = Counter(
            "ctgw_validation_errors", "Field errors in rejected leads, by code.",
            ["code"], registry=r,
        )
        self.bot_signals = Counter(
            "ctgw_bot_signals", "Bot signals that fired on leads, by signal; one lead may fire "
            "several.",
            ["signal"], registry=r,
        )
        self.quarantined = Counter(
            "ctgw_leads_quarantined", "Leads scored as spam and quarantined, by the signals that "
            "fired and site; one lead may count under several.",
            ["signal", "site"], registry=r,
        )

    def _declare_lead_delivery(self, r: CollectorRegistry) -> None:
        self.delivered = Counter(
            "ctgw_leads_delivered", "Leads Calltouch accepted, by site.", ["site"], registry=r
        )
        self.dead = Counter(
            "ctgw_leads_dead", "Leads dead-lettered, by reason and site.", ["reason", "site"],
            registry=r,
        )
        self.delivery_seconds = Histogram(
            "ctgw_lead_delivery_seconds", "Time from acceptance to delivery, by site.",
            ["site"], buckets=_DELIVERY, registry=r,
        )

    def _declare_jobs(self, r: CollectorRegistry) -> None:
        # Every kind (lead, deal.create, deal.update, comment, order1): the lead series above
        # stay beside them, for the dashboards and alerts built on them.
        self.jobs_received = Counter(
            "ctgw_jobs_received", "Jobs posted to the gateway, by kind, outcome and site.",
            ["kind", "outcome", "site"], registry=r,
        )
        self.jobs_delivered = Counter(
            "ctgw_jobs_delivered", "Jobs Calltouch accepted, by kind and site.", ["kind", "site"],
            registry=r,
        )
        self.jobs_dead = Counter(
            "ctgw_jobs_dead", "Jobs dead-lettered, by kind, reason and site.",
            ["kind", "reason", "site"], registry=r,
        )
        self.job_delivery_seconds = Histogram(
            "ctgw_job_delivery_seconds", "Time from acceptance to delivery, by kind and site.",
            ["kind", "site"], buckets=_DELIVERY, registry=r,
        )

    def _declare_upstream(self, r: CollectorRegistry) -> None:
        self.upstream = Counter(
            "ctgw_upstream_requests", "Requests to Calltouch, by method and outcome.",
            ["method", "outcome"], registry=r,
        )
        self.upstream_seconds = Histogram(
            "ctgw_upstream_request_duration_seconds", "Calltouch answer time.",
            ["method"], buckets=_UPSTREAM, registry=r,
        )
        self.auth_failures = Counter(
            "ctgw_upstream_auth_failures", "Calls Calltouch refused for their credentials, by"
            " method: that kind waits for the right token, without spending attempts.",
            ["method"], registry=r,
        )
        self.upstream_healthy = Gauge(
            "ctgw_upstream_healthy", "1 while Calltouch answers; 0 while it is down and only"
            " one probe call at a time goes.", ["site"], registry=r,
        )

    def _declare_points(self, r: CollectorRegistry) -> None:
        self.points_spent = Counter(
            "ctgw_points_spent", "API points spent by the calls Calltouch took, by site.",
            ["site"], registry=r,
        )
        self.points_remaining = Gauge(
            "ctgw_points_remaining", "API points left in the site's current clock hour or day"
            " (window), for the budgets that are set.", ["site", "window"], registry=r,
        )
        self.points_refused = Gauge(
            "ctgw_points_refused", "1 while Calltouch refuses the site's calls for API points:"
            " its jobs wait for the next hour, one probe call every 5 minutes.", ["site"],
            registry=r,
        )

    def _declare_pacer(self, r: CollectorRegistry) -> None:
        self.rate_limit = Gauge(
            "ctgw_upstream_rate_limit", "The pacer's current requests per second.", registry=r
        )
        self.rate_limit_max = Gauge(
            "ctgw_upstream_rate_limit_max", "The configured requests per second.", registry=r
        )
        self.pacer_wait = Histogram(
            "ctgw_pacer_wait_seconds", "Time a send waited for the pacer.",
            buckets=_WAIT, registry=r,
        )

    def _declare_listener(self, r: CollectorRegistry) -> None:
        self.http = RequestStats(_FAST)
        r.register(self.http)
        self.ready = Gauge("ctgw_ready", "1 while the gateway takes leads.", registry=r)
        self.connections = Gauge(
            "ctgw_http_connections", "Open connections on the public listener.", registry=r
        )
        self.connections_refused = Counter(
            "ctgw_http_connections_refused",
            "Connections turned away with 503 because CTGW_MAX_CONNECTIONS were open.", registry=r,
        )

    def _declare_queue(self, r: CollectorRegistry) -> None:
        self.queue = QueueCollector()
        r.register(self.queue)
        self.retention_purged = Counter(
            "ctgw_retention_purged", "Settled leads whose personal data was purged, by state.",
            ["state"], registry=r,
        )

    def count_received(self, channel: str, outcome: str, site: str) -> None:
        self.received.inc(channel, outcome, site)

    def add_sites(self, sites: Iterable[str]) -> None:
        """Start every lead series of these sites at 0 (the app factory names its sites)."""
        for site in sites:
            self.received.seed((c, o, site) for c in CHANNELS for o in RECEIVED_OUTCOMES)
            self.delivered.labels(site)
            self.delivery_seconds.labels(site)
            for reason in DEAD_REASONS:
                self.dead.labels(reason, site)

    def _zero(self) -> None:
        # Series that exist from the start let increase() see the first event.
        for outcome in UPSTREAM_OUTCOMES:
            self.upstream.labels("register", outcome)
        for state in RETENTION_STATES:
            self.retention_purged.labels(state)


class QueueCollector(Collector):
    """Queue gauges from the last stats read (refreshed by the ``/metrics`` handler)."""

    def __init__(self) -> None:
        self.jobs: dict[str, int] = {
            "ready": 0, "leased": 0, "delayed": 0, "held": 0, "dead": 0, "spam": 0,
        }
        self.oldest_age = 0.0

    def collect(self) -> list[GaugeMetricFamily]:
        jobs = GaugeMetricFamily("ctgw_queue_jobs", "Jobs in the queue, by state.",
                                 labels=["state"])
        for state, count in self.jobs.items():
            jobs.add_metric([state], count)
        oldest = GaugeMetricFamily(
            "ctgw_queue_oldest_age_seconds", "Age of the oldest undelivered job.",
            value=self.oldest_age,
        )
        return [jobs, oldest]


class LoopCounter(Collector):
    """A labelled counter in plain ints, for what the event loop counts on every request.

    prometheus_client's children take a lock and check their state on each update: at full
    load that measured a few per cent of a lead's CPU. Only the loop updates these; a scrape
    reads a copy, made whole under the GIL.
    """

    def __init__(self, name: str, documentation: str, labels: Sequence[str]) -> None:
        self._name, self._documentation, self._labels = name, documentation, list(labels)
        self._counts: dict[tuple[object, ...], int] = {}

    def inc(self, *labels: object) -> None:
        self._counts[labels] = self._counts.get(labels, 0) + 1

    def seed(self, keys: Iterable[tuple[object, ...]]) -> None:
        """Show these label values at 0 until they are counted."""
        for key in keys:
            self._counts.setdefault(key, 0)

    def collect(self) -> list[Metric]:
        family = CounterMetricFamily(self._name, self._documentation, labels=self._labels)
        for labels, count in list(self._counts.items()):
            family.add_metric([str(label) for label in labels], count)
        return [family]


class RequestStats(Collector):
    """``ctgw_http_requests_total`` (a :class:`LoopCounter`) and
    ``ctgw_http_request_duration_seconds``: both plain numbers, updated by the loop alone."""

    def __init__(self, buckets: tuple[float, ...]) -> None:
        self._bounds = buckets
        self._requests = LoopCounter("ctgw_http_requests", "Requests to the public listener.",
                                     ("route", "method", "status"))
        self._seconds: dict[str, list[float]] = {}  # per route: a count per bucket, +Inf, sum

    def observe(self, route: str, method: str, status: int, seconds: float) -> None:
        self._requests.inc(route, method, status)
        counts = self._seconds.get(route)
        if counts is None:
            counts = self._seconds[route] = [0.0] * (len(self._bounds) + 2)
        counts[bisect_left(self._bounds, seconds)] += 1  # le: the first bound >= seconds
        counts[-1] += seconds

    def collect(self) -> list[Metric]:
        seconds = HistogramMetricFamily(
            "ctgw_http_request_duration_seconds", "Public listener answer time.",
            labels=["route"],
        )
        bounds = (*map(str, self._bounds), "+Inf")
        for route, counts in list(self._seconds.items()):
            snapshot = list(counts)  # one consistent copy: the loop may add to it meanwhile
            cumulative, buckets = 0.0, []
            for bound, in_bucket in zip(bounds, snapshot, strict=False):  # the sum stays out
                cumulative += in_bucket
                buckets.append((bound, cumulative))
            seconds.add_metric([route], buckets, sum_value=snapshot[-1])
        return [*self._requests.collect(), seconds]
