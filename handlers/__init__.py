"""HTTP endpoints, thin: parse, verify, call the service layer, answer."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse

from service.context import Services


def services(request: Request) -> Services:
    """The process's shared objects, put on the app by `service.app.create_app`."""
    found: Services = request.app.state.services
    return found


def error_response(status: int, code: str, message: str, **headers: str) -> JSONResponse:
    """The admin and service error envelope: `{"error": {"code", "message"}}`."""
    return JSONResponse(
        {"error": {"code": code, "message": message}}, status_code=status, headers=headers or None
    )


#: The largest id a database integer column holds (BIGINT); anything above is no id of ours.
MAX_ID = 2**63 - 1


def as_id(value: Any) -> int:
    """A positive whole number that fits the database, from JSON or a path; ValueError for
    anything else (floats, infinities, booleans, huge numbers), so that bad input is a 4xx
    and never reaches a query that would fail on it."""
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ValueError(f"{value!r} is not an id")
    if isinstance(value, str) and not (value.isascii() and value.strip().isdigit()):
        raise ValueError(f"{value[:40]!r} is not an id")
    number = int(value)
    if not 0 < number <= MAX_ID:
        raise ValueError(f"{number} is out of range")
    return number


def data_response(data: Any, status: int = 200) -> JSONResponse:
    return JSONResponse({"data": data}, status_code=status)
