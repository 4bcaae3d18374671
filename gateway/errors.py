"""Domain errors, translated to HTTP only at the edge (``intake``/``app``).

    GatewayError
    ├── BadRequest          the request cannot be taken at all (400, 403, 408, 413, 415, 503)
    │   ├── Throttled       the client posts too fast (429 with Retry-After)
    │   ├── SlowClient      the body did not arrive in time (408, connection closed)
    │   ├── MalformedBody   the body cannot be decoded, e.g. gzip that is not (400, closed)
    │   └── ClientGone      the client hung up mid-body (counted; nobody reads the answer)
    └── Invalid             the body reads, but fields break the rules (422)
        └── InvalidLead     … of a lead
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class FieldError:
    """One problem with one field; ``field`` is ``None`` for a whole-lead problem."""

    field: str | None
    code: str
    message: str

    def as_dict(self) -> dict[str, str | None]:
        return {"field": self.field, "code": self.code, "message": self.message}


class GatewayError(Exception):
    status = 400
    error = "bad_request"
    outcome = "rejected"  # the label of ctgw_leads_received_total
    close_connection = False

    @property
    def headers(self) -> dict[str, str]:
        return {}

    @property
    def errors(self) -> list[FieldError]:
        return []


class BadRequest(GatewayError):
    def __init__(self, code: str, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.error = code

    @property
    def errors(self) -> list[FieldError]:
        return [FieldError(None, self.code, str(self))]


class Throttled(BadRequest):
    outcome = "throttled"

    def __init__(self, retry_after: float) -> None:
        super().__init__("too_many_requests", "too many leads from this address", status=429)
        self.retry_after = retry_after

    @property
    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(max(1, math.ceil(self.retry_after)))}


class SlowClient(BadRequest):
    close_connection = True  # the rest of the body may never come; do not wait for it

    def __init__(self) -> None:
        super().__init__("body_timeout", "the body took too long to arrive", status=408)


class MalformedBody(BadRequest):
    # The rest of the stream cannot be decoded either: aiohttp's lingering read of it would
    # raise again, outside any handler, as an ERROR with a traceback.
    close_connection = True

    def __init__(self) -> None:
        super().__init__("malformed_body", "the body cannot be decoded", status=400)


class ClientGone(BadRequest):
    close_connection = True

    def __init__(self) -> None:
        super().__init__("client_closed", "the connection closed before the body came", 400)


class Invalid(GatewayError):
    """An item (a deal, a comment, a 1.0 order) whose fields break the rules: ``error`` names
    its kind, e.g. ``invalid_deal``."""

    status = 422
    error = "invalid_item"
    outcome = "invalid"

    def __init__(self, errors: list[FieldError], error: str | None = None) -> None:
        super().__init__(f"{len(errors)} invalid field(s)")
        self._errors = errors
        if error is not None:
            self.error = error

    @property
    def errors(self) -> list[FieldError]:
        return self._errors


class InvalidLead(Invalid):
    error = "invalid_lead"
