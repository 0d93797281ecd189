"""HTTP errors in the OpenAI shape, and bounded, validated request bodies.

Every error the app returns reads ``{"error": {"message", "type", "param", "code"}}`` with the
matching status, so the official `openai` client raises its typed exceptions
(`BadRequestError` 400, `AuthenticationError` 401, `NotFoundError` 404, `RateLimitError` 429,
`InternalServerError` 5xx) and `param` names the offending field (dotted: ``messages.0.content``).
A bad body is a 400, as OpenAI and vLLM answer it. Messages end with the request id (Serve's
`x-request-id`, the client's own when it sent one); server-side details go to the log only.
"""

from __future__ import annotations

import hmac
import json
import logging
import re
from typing import Any, TypeVar

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

Body = TypeVar("Body", bound=BaseModel)
log = logging.getLogger("ray.serve")
MAX_JSON_DEPTH = 32  # nesting of objects and lists in a body; the API's own bodies need 5

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

    def response(self, request_id: str | None = None) -> JSONResponse:
        body = self.body()
        if request_id:
            body["error"]["message"] += f" (request id {request_id})"
        return JSONResponse(body, status_code=self.status, headers=self.headers)


def request_id(request: Request) -> str:
    """Serve's request id: the client's `x-request-id`, or the one Serve's proxy generated."""
    return request.headers.get("x-request-id", "")[:128]


def install_error_handlers(app: FastAPI) -> None:
    """Our APIError, unknown routes/methods and unexpected exceptions all answer in the OpenAI shape."""

    @app.exception_handler(APIError)
    async def _api_error(request: Request, err: APIError) -> JSONResponse:
        if err.status >= 500:
            log.warning("request %s: %s %s", request_id(request), err.status, err.message)
        return err.response(request_id(request))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, err: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(err.status_code)
        message = f"{request.method} {request.url.path}: {err.detail}"
        return APIError(err.status_code, message, code=code, headers=err.headers).response(request_id(request))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, err: Exception) -> JSONResponse:
        log.exception("request %s failed", request_id(request))  # the details stay in the server log
        return APIError(500, "internal error; the server log has the details", code="internal_error").response(
            request_id(request))


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
    against `schema` (else 400 naming the bad field), its text valid Unicode and its nesting bounded."""
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
    except RecursionError:
        raise APIError(400, f"request body nests deeper than {MAX_JSON_DEPTH} levels",
                       code="nesting_too_deep") from None
    if not isinstance(data, dict):
        raise APIError(400, f"request body must be a JSON object, got {type(data).__name__}", code="invalid_json")
    check_json_text(data)
    try:
        return schema.model_validate(data)
    except ValidationError as err:
        raise validation_error(err) from None


def check_json_text(data: Any, max_depth: int = MAX_JSON_DEPTH) -> None:
    """400 naming the field when parsed JSON nests deeper than `max_depth`, or holds a string
    (value or key) that is not valid Unicode text: a lone surrogate (``"\\ud800"``) is valid
    JSON, but tokenizers and UTF-8 encoders fail on it, and in a batch that would fail others."""
    stack: list[tuple[Any, tuple]] = [(data, ())]
    while stack:
        value, path = stack.pop()
        if len(path) > max_depth:
            raise APIError(400, f"request body nests deeper than {max_depth} levels", param=_dotted(path[:max_depth]),
                           code="nesting_too_deep")
        if isinstance(value, str):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                param = _dotted(path)
                raise APIError(400, f"{param}: not valid Unicode text (a lone surrogate escape such as \\ud800)",
                               param=param, code="invalid_unicode") from None
        elif isinstance(value, dict):
            for key, item in value.items():
                stack.append((key, path))
                stack.append((item, (*path, key)))
        elif isinstance(value, list):
            stack.extend((item, (*path, i)) for i, item in enumerate(value))


def validation_error(err: ValidationError) -> APIError:
    """A pydantic error as a 400: the first bad field's path in `param`; unknown fields all named."""
    errors = _matching_branches(err.errors())
    unknown = [_field_path(e) for e in errors if e["type"] == "extra_forbidden"]
    if len(unknown) == len(errors):
        return APIError(400, f"unsupported parameter{'s' * (len(unknown) > 1)}: {', '.join(unknown)}",
                        param=unknown[0], code="unsupported_parameter")
    first = next(e for e in errors if e["type"] != "extra_forbidden")
    param = _field_path(first) or None
    others = {_field_path(e) for e in errors} - {param or ""}  # a union's branches name one field
    more = f" (+{len(others)} more)" if others else ""
    text = first["msg"].removeprefix("Value error, ")  # our validators' own words, without pydantic's prefix
    message = f"{param}: {text}{more}" if param else f"{text}{more}"
    code = "missing_required_parameter" if first["type"] == "missing" else "invalid_value"
    return APIError(400, message, param=param, code=code)


# pydantic puts the union branch it tried into `loc` (documents.0.str, messages.0.content.list[TextPart],
# documents.0.RerankDocument.text): a type's name, never one of our (snake_case) fields.
_UNION_TAG = re.compile(r"(str|int|float|bool|bytes|none|[A-Z]\w*|[\w-]+\[.*\])", re.DOTALL)


def _matching_branches(errors: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Without the union branches whose type the input is not (`documents.0.str: Input should be a
    valid string` for an object) when another branch of that union took the input and failed inside."""
    def wrong_type(e: dict[str, Any]) -> bool:
        last = e["loc"][-1] if e["loc"] else None
        return e["type"].endswith("_type") and isinstance(last, str) and bool(_UNION_TAG.fullmatch(last))

    entered = {e["loc"][:i] for e in errors if not wrong_type(e)
               for i, part in enumerate(e["loc"]) if isinstance(part, str) and _UNION_TAG.fullmatch(part)}
    kept = [e for e in errors if not (wrong_type(e) and e["loc"][:-1] in entered)]
    return kept or errors


def _field_path(error: dict[str, Any]) -> str:
    """The error's field path (dotted), without union-branch tags; an unknown field keeps its own name."""
    loc = error["loc"]
    own_key = len(loc) - 1 if error["type"] == "extra_forbidden" else None  # the client's key, whatever it is
    return _dotted(part for i, part in enumerate(loc)
                   if i == own_key or not (isinstance(part, str) and _UNION_TAG.fullmatch(part)))


def _dotted(loc) -> str:
    return ".".join(str(part) for part in loc)
