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


def data_response(data: Any, status: int = 200) -> JSONResponse:
    return JSONResponse({"data": data}, status_code=status)
