"""The one error type views and services raise, and the envelope every error response carries."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any


class ApiError(Exception):
    """An error with an HTTP status and a stable, machine-readable ``code``.

    Exception views turn it into ``{"ok": false, "error": {...}}``; nothing else builds error bodies.
    """

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        details: Mapping[str, Any] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.details = dict(details or {})
        self.headers = dict(headers or {})

    def __str__(self) -> str:
        return f"{self.status} {self.code}: {self.message}"


def error_body(code: str, message: str, details: Mapping[str, Any] | None, request_id: str) -> dict[str, Any]:
    return {
        "ok": False,
        "error": {"code": code, "message": message, "details": dict(details or {}), "request_id": request_id},
    }


def success_body(data: Any) -> dict[str, Any]:
    return {"ok": True, "data": data}
