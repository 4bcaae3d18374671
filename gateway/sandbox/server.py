"""A Calltouch simulator: its methods as documented, their shared limit, and fault knobs.

* ``…/requests/{site_id}/register/`` (GET or POST form): the documented success JSON; HTTP 200
  with the documented error text when no parameter is given. The deal, comment and 1.0 methods
  are :mod:`gateway.sandbox.backoffice`'s. Every method answers 429 when a client IP has had 5
  requests executed within the last second, whatever their methods (as Calltouch counts:
  executed ones only); latency and faults apply to every method alike.
* ``GET /sandbox/requests`` — everything received: ``at`` (monotonic seconds, for window
  counts), ``time`` (the same moment as UTC wall time), status, ``method``, ``items``, ``site``,
  ``form`` (``{}`` for a JSON call; never a token) and ``json`` (the JSON posted, else null);
  ``GET /sandbox/stats`` — counts by status and by method, and the most arrivals seen in any
  sliding 1 s window; ``POST /sandbox/config`` — ``{"latency": [lo, hi], "fault": "503"|"hang"|
  "429"|"error200"|"points"|null, "fault_rate": 0..1, "access_token": str|null, "client_api_id":
  str|null}`` (a token set is the only one accepted; null: any non-empty one);
  ``POST /sandbox/reset`` — forgets what was received and applied, keeps the configuration.

It runs as its own process (``python -m gateway.sandbox``) or on a thread with its own event
loop (``ct-gateway serve --sandbox``): :mod:`gateway.sandbox.run`. Either way a request is dated
by the kernel's stamp of its arrival on the socket (:mod:`gateway.sandbox.arrivals`), not by
when the handler got a CPU.
"""

from __future__ import annotations

import asyncio
import random
import time
from bisect import bisect_left, bisect_right, insort
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson
from aiohttp import web

from gateway.sandbox import arrivals, backoffice
from gateway.sandbox.office import OFFICE, SESSION, BackOffice, Endpoint, Received

REGISTER = "/calls-service/RestAPI/requests/{site_id}/register/"
NO_PARAMS = "Не возможно создать заявку - не указано ни одного входного параметра"
FAULTS = ("503", "hang", "429", "error200", "points")
# Calltouch does not publish its text for a call refused for API points; this one is ours, and
# the gateway recognises it by CTGW_POINTS_REFUSAL, a pattern an operator can change.
POINTS_REFUSED = "Недостаточно баллов API: часовой лимит исчерпан (API points limit exceeded)"
_FAULT_STATUS = {"503": 503, "hang": 599, "429": 429, "points": 403}
LIMIT, WINDOW = 5, 1.0


@dataclass
class Arrival:
    at: float
    ip: str
    status: int
    form: dict[str, str]
    method: str = "register"
    items: int = 1
    body: Any = None
    site: str = ""


@dataclass
class SandboxState:
    latency: tuple[float, float] = (0.0, 0.0)
    fault: str | None = None
    fault_rate: float = 1.0
    arrivals: list[Arrival] = field(default_factory=list)
    executed: dict[str, list[float]] = field(default_factory=dict)
    next_id: int = 5222102

    def over_limit(self, ip: str, at: float) -> bool:
        """Whether one more request at ``at`` would put over LIMIT in some window holding it.

        Arrival times are the kernel's, and two connections may reach their handlers in the
        other order, so ``at`` may be older than the last time kept: the times stay sorted and
        every window ``(end - WINDOW, end]`` with ``end`` in ``[at, at + WINDOW)`` counts. Times
        are kept for two windows, so an arrival handled up to a window late is judged exactly."""
        times = self.executed.setdefault(ip, [])
        del times[: bisect_right(times, at - 2 * WINDOW)]
        ends = [at, *times[bisect_left(times, at): bisect_left(times, at + WINDOW)]]
        if max(bisect_right(times, e) - bisect_right(times, e - WINDOW) for e in ends) >= LIMIT:
            return True
        insort(times, at)
        return False


STATE = web.AppKey("sandbox_state", SandboxState)


def max_in_window(times: list[float], window: float = WINDOW) -> int:
    """The most arrivals in any half-open sliding window ``(t - window, t]``."""
    ordered, best, lo = sorted(times), 0, 0
    for hi, t in enumerate(ordered):
        while ordered[lo] <= t - window:
            lo += 1
        best = max(best, hi - lo + 1)
    return best


def _success(state: SandboxState, form: dict[str, str]) -> dict[str, Any]:
    state.next_id += 1
    now = time.time()
    phone = "".join(ch for ch in form.get("phoneNumber", "") if ch.isdigit())
    session = form.get("sessionId", "").strip()
    return {
        "date": int(now * 1000),
        "requestType": "CLIENT_ORDER",
        "dateStr": time.strftime("%d/%m/%Y %H:%M:%S", time.localtime(now)),
        "session": {"sessionId": int(session) if session.isdigit() else session, **SESSION}
        if session else None,
        "subject": form.get("subject", ""),
        "requestNumber": form.get("requestNumber", str(state.next_id)),
        "requestId": state.next_id,
        "client": {"fio": form.get("fio"), "phones": [{"phoneNumber": phone}] if phone else []},
        "orders": [],
        "status": "NOT_SET",
    }


async def _read_form(request: web.Request) -> Received:
    form = {k: v for k, v in (await request.post()).items() if isinstance(v, str)}
    form.update(request.query)
    return Received(form=form, site=request.match_info["site_id"])


def _register(request: web.Request, received: Received) -> web.Response:
    if not received.form:
        return _no_params()
    answer = _success(request.app[STATE], received.form)
    request.app[OFFICE].add_lead(answer["requestId"], answer["requestNumber"], received.form,
                                 answer["session"])
    return web.Response(body=orjson.dumps(answer), content_type="application/json")


def _no_params() -> web.Response:
    return web.Response(text=NO_PARAMS, content_type="text/plain")


LEAD_REGISTER = Endpoint("register", (REGISTER,), ("*",), _read_form, _register, _no_params)


def _handler(endpoint: Endpoint) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    async def handle(request: web.Request) -> web.StreamResponse:
        return await _serve_call(request, endpoint)
    return handle


async def _serve_call(request: web.Request, endpoint: Endpoint) -> web.StreamResponse:
    """Every method alike: one window per client IP, the latency knob, the faults, the log."""
    arrived = _arrival(request)
    state = request.app[STATE]
    received = await endpoint.receive(request)
    status = _decide(state, request.remote or "?", arrived)
    row = Arrival(arrived, request.remote or "?", status, received.form, endpoint.method,
                  received.items, received.body, received.site)
    state.arrivals.append(row)
    lo, hi = state.latency
    await asyncio.sleep(random.uniform(lo, hi))
    if status == 599:  # a hang: answer nothing until the client gives up
        await asyncio.Event().wait()
    if status == 429:
        return web.json_response({"message": "Too Many Requests"}, status=429)
    if status == 403:
        return web.json_response({"message": POINTS_REFUSED}, status=403)
    if status != 200:
        return web.Response(status=status, text="Service Unavailable")
    faulty = state.fault == "error200" and _faulty(state)
    response = endpoint.error200() if faulty else endpoint.answer(request, received)
    row.status = response.status  # what was answered: a 401 or a 400 is executed too
    return response


def _arrival(request: web.Request) -> float:
    """When the request reached the socket: the kernel's stamp, else the handler's clock."""
    sock = request.transport.get_extra_info("socket") if request.transport else None
    at = arrivals.arrived(sock.fileno()) if sock is not None else None
    return time.monotonic() if at is None else at


def _faulty(state: SandboxState) -> bool:
    return random.random() < state.fault_rate


def _decide(state: SandboxState, ip: str, now: float) -> int:
    if state.fault in _FAULT_STATUS and _faulty(state):
        return _FAULT_STATUS[state.fault]
    return 429 if state.over_limit(ip, now) else 200


async def requests_log(request: web.Request) -> web.Response:
    arrivals = request.app[STATE].arrivals
    to_wall = time.time() - time.monotonic()  # "at" is monotonic, for the window counts
    rows = [{"at": a.at, "time": _iso(a.at + to_wall), "ip": a.ip, "status": a.status,
             "method": a.method, "items": a.items, "site": a.site, "form": a.form,
             "json": a.body} for a in arrivals]
    return web.Response(body=orjson.dumps(rows), content_type="application/json")


def _iso(wall: float) -> str:
    return datetime.fromtimestamp(wall, UTC).isoformat(timespec="milliseconds")


async def stats(request: web.Request) -> web.Response:
    arrivals = request.app[STATE].arrivals
    counts: dict[str, int] = {}
    methods: dict[str, int] = {}
    for a in arrivals:
        counts[str(a.status)] = counts.get(str(a.status), 0) + 1
        methods[a.method] = methods.get(a.method, 0) + 1
    body = {"received": len(arrivals), "by_status": counts, "by_method": methods,
            "max_in_window": max_in_window([a.at for a in arrivals])}
    return web.json_response(body)


async def configure(request: web.Request) -> web.Response:
    state = request.app[STATE]
    data = await request.json(loads=orjson.loads)
    try:
        request.app[OFFICE].configure(data)
    except ValueError as error:
        raise web.HTTPBadRequest(text=str(error)) from None
    if "latency" in data:
        lo, hi = (float(x) for x in data["latency"])
        state.latency = (lo, max(lo, hi))
    if "fault" in data:
        if data["fault"] not in (*FAULTS, None):
            raise web.HTTPBadRequest(text=f"fault must be one of {FAULTS} or null")
        state.fault = data["fault"]
    state.fault_rate = float(data.get("fault_rate", state.fault_rate))
    return web.json_response({"latency": state.latency, "fault": state.fault})


async def reset(request: web.Request) -> web.Response:
    state = request.app[STATE]
    state.arrivals.clear()
    state.executed.clear()
    request.app[OFFICE].clear()
    return web.json_response({"ok": True})


def create_sandbox(latency: tuple[float, float] = (0.0, 0.0)) -> web.Application:
    app = web.Application()
    app[STATE] = SandboxState(latency=latency)
    app[OFFICE] = BackOffice()
    for endpoint in (LEAD_REGISTER, *backoffice.ENDPOINTS):
        for path in endpoint.paths:
            for verb in endpoint.verbs:
                app.router.add_route(verb, path, _handler(endpoint))
    for path, view in backoffice.VIEWS:
        app.router.add_get(path, view)
    app.router.add_get("/sandbox/requests", requests_log)
    app.router.add_get("/sandbox/stats", stats)
    app.router.add_post("/sandbox/config", configure)
    app.router.add_post("/sandbox/reset", reset)
    return app
