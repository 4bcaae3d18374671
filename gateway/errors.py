"""Domain errors, translated to HTTP only at the edge (``intake``/``app``).

    GatewayError
    ├── BadRequest          the body cannot be read as a lead at all (400, 413, 415)
    └── InvalidLead         the body reads, but fields break the rules (422)
"""

from __future__ import annotations

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


class InvalidLead(GatewayError):
    status = 422
    error = "invalid_lead"

    def __init__(self, errors: list[FieldError]) -> None:
        super().__init__(f"{len(errors)} invalid field(s)")
        self._errors = errors

    @property
    def errors(self) -> list[FieldError]:
        return self._errors
