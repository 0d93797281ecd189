"""The app's OpenAPI schema: every route's errors in the one OpenAI error body, and the request
bodies the routes read and bound themselves (serve/errors.py), named in the schema all the same."""

from __future__ import annotations

import functools
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from serve import protocol

# Every route answers errors in one body; the schema says so, and names the request bodies.
ERRORS = {status: {"model": protocol.ErrorResponse, "description": why} for status, why in {
    400: "invalid request (the field is in `param`)", 401: "missing or wrong bearer key",
    404: "unknown model or route", 405: "method not allowed (see Allow)", 413: "body or text too large",
    429: "too many requests in flight (see Retry-After)", 500: "internal error (details in the server log)",
    503: "every candidate failed, or the ranker-fuser is unavailable"}.items()}
STREAMED = {200: {"description": "a chat.completion; with `stream: true`, server-sent chat.completion.chunk events",
                  "content": {"text/event-stream": {"schema": {"type": "string"}}}}}
BODY_MODELS = (protocol.ChatRequest, protocol.RankAndFuseRequest, protocol.RerankRequest, protocol.ScoreRequest)


def json_body(model: type[BaseModel]) -> dict[str, Any]:
    """openapi_extra declaring `model` as the body: the routes read and bound the body themselves."""
    schema = {"$ref": f"#/components/schemas/{model.__name__}"}
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": schema}}}}


def openapi_schema(app: FastAPI) -> dict[str, Any]:
    """`app`'s schema with BODY_MODELS and the bearer scheme added, built once."""
    if app.openapi_schema is None:
        schema = get_openapi(title=app.title, version=app.version, routes=app.routes)
        _, defs = models_json_schema([(m, "validation") for m in BODY_MODELS],
                                     ref_template="#/components/schemas/{model}")
        schema.setdefault("components", {}).setdefault("schemas", {}).update(defs["$defs"])
        schema["components"]["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
        app.openapi_schema = schema
    return app.openapi_schema


def install_openapi(app: FastAPI) -> None:
    """`app.openapi()` answers `openapi_schema(app)`. A partial of a module-level function, not a
    closure: `@serve.ingress` copies the app with cloudpickle, which then pickles it by name."""
    app.openapi = functools.partial(openapi_schema, app)
