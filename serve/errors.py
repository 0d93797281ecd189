"""HTTP errors in the OpenAI shape, and bounded, validated request bodies.

Every error the app returns reads ``{"error": {"message", "type", "param", "code"}}`` with the
matching status, so the official `openai` client raises its typed exceptions
(`BadRequestError` 400, `AuthenticationError` 401, `NotFoundError` 404,
`UnprocessableEntityError` 422, `RateLimitError` 429, `InternalServerError` 5xx) and `param`
names the offending field (dotted: ``messages.0.content``).
"""

from __future__ import annotations

import hmac
import json
from typing import Any, TypeVar

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

Body = TypeVar("Body", bound=BaseModel)

_TYPES = {400: "invalid_request_error", 401: "authentication_error", 404: "invalid_request_error",
          405: "invalid_request_error", 413: "invalid_request_error", 422: "invalid_request_error",
          429: "rate_limit_error", 500: "server_error", 503: "service_unavailable_error"}


class APIError(Exception):
    """An error answered with `status` and the OpenAI error body."""

    def __init__(self, status: int, message: str, *, param: str | None = None, code: str | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code, self.headers = status, message, param, code, headers

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": _TYPES.get(self.status, "server_error"),
                          "param": self.param, "code": self.code}}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status, headers=self.headers)


def install_error_handlers(app: FastAPI) -> None:
    """Our APIError, unknown routes/methods and unexpected exceptions all answer in the OpenAI shape."""

    @app.exception_handler(APIError)
    async def _api_error(_: Request, err: APIError) -> JSONResponse:
        return err.response()

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, err: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(err.status_code)
        message = f"{request.method} {request.url.path}: {err.detail}"
        return APIError(err.status_code, message, code=code).response()

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, err: Exception) -> JSONResponse:
        return APIError(500, f"internal error: {type(err).__name__}: {err}", code="internal_error").response()


def check_bearer(request: Request, token: str | None) -> None:
    """401 unless `Authorization: Bearer <token>` matches (no-op when auth is off: token None)."""
    if not token:
        return
    scheme, _, given = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), token.encode()):
        raise APIError(401, "missing or invalid bearer token: send 'Authorization: Bearer <key>'",
                       code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})


async def read_body(request: Request, schema: type[Body], max_bytes: int) -> Body:
    """The request body, at most `max_bytes` (else 413), parsed as JSON (else 400) and validated
    against `schema` (else 422 naming the first bad field)."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > max_bytes:
        raise APIError(413, f"request body of {declared} bytes exceeds the limit of {max_bytes} bytes",
                       code="request_too_large")
    chunks, size = [], 0
    async for chunk in request.stream():  # also bounds bodies sent without Content-Length
        size += len(chunk)
        if size > max_bytes:
            raise APIError(413, f"request body exceeds the limit of {max_bytes} bytes", code="request_too_large")
        chunks.append(chunk)
    try:
        data = json.loads(b"".join(chunks) or b"null")
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise APIError(400, f"request body is not valid JSON: {err}", code="invalid_json") from None
    if not isinstance(data, dict):
        raise APIError(400, f"request body must be a JSON object, got {type(data).__name__}", code="invalid_json")
    try:
        return schema.model_validate(data)
    except ValidationError as err:
        first = err.errors()[0]
        param = ".".join(str(part) for part in first["loc"]) or None
        more = f" (+{err.error_count() - 1} more)" if err.error_count() > 1 else ""
        message = f"{param}: {first['msg']}{more}" if param else f"{first['msg']}{more}"
        code = "missing_required_parameter" if first["type"] == "missing" else "invalid_value"
        raise APIError(422, message, param=param, code=code) from None
