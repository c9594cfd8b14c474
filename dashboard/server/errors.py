"""Domain errors raised by services, and the ONE place that maps them (and framework errors) to HTTP answers.

Every error answer is JSON `{"error": "<short message>", "detail": <anything or null>}`. A client mistake never
becomes a 500; an unexpected exception is logged with its traceback and answered with a generic 500.
"""
from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from core.paths import PathRejected

log = logging.getLogger("tidal.dashboard")


class DomainError(Exception):
    status_code = 400
    error = "bad request"

    def __init__(self, message: str | None = None, detail=None, headers: dict | None = None):
        super().__init__(message or self.error)
        self.message = message or self.error
        self.detail = detail
        self.headers = headers or {}


class BadRequest(DomainError):
    status_code, error = 400, "bad request"


class Unauthorized(DomainError):
    status_code, error = 401, "unauthorized"


class NotFound(DomainError):
    status_code, error = 404, "not found"


class Conflict(DomainError):
    status_code, error = 409, "conflict"


class FieldError(DomainError):
    """A request field that passed its type check but breaks a rule known only at run time (manifest ranges)."""
    status_code, error = 422, "invalid request"

    def __init__(self, field: str, message: str):
        super().__init__("invalid request", detail=[{"field": field, "message": message}])


class RateLimited(DomainError):
    status_code, error = 429, "rate limited"


class Unavailable(DomainError):
    status_code, error = 503, "service unavailable"


def error_body(error: str, detail=None) -> dict:
    return {"error": error, "detail": detail}


def _field_name(loc) -> str:
    # a JSON decode error carries the byte position as the second element: report just "body"
    if len(loc) == 2 and loc[0] == "body" and isinstance(loc[1], int):
        return "body"
    return ".".join(str(p) for p in loc) or "request"


async def domain_error_handler(request: Request, exc: DomainError) -> JSONResponse:
    return JSONResponse(error_body(exc.message, exc.detail), status_code=exc.status_code, headers=exc.headers)


async def path_rejected_handler(request: Request, exc: PathRejected) -> JSONResponse:
    """A path that confinement (`core.paths`) refused: 400 naming the field, like any bad request."""
    return JSONResponse(error_body(str(exc), {"field": exc.field, "reason": exc.reason}),
                        status_code=BadRequest.status_code)


async def validation_error_handler(request: Request, exc: RequestValidationError) -> JSONResponse:
    detail = []
    for err in exc.errors():
        loc = tuple(err.get("loc", ()))
        message = err.get("msg", "invalid value")
        if err.get("type") == "json_invalid":
            message = f"invalid JSON: {err.get('ctx', {}).get('error', 'cannot parse')}"
        detail.append({"field": _field_name(loc), "message": message})
    return JSONResponse(error_body("invalid request", detail), status_code=422)


async def http_error_handler(request: Request, exc: StarletteHTTPException) -> JSONResponse:
    error = {404: "not found", 405: "method not allowed"}.get(exc.status_code, str(exc.detail))
    detail = None if exc.detail == error or exc.status_code in (404, 405) else exc.detail
    return JSONResponse(error_body(error, detail), status_code=exc.status_code, headers=exc.headers)


async def unexpected_error_handler(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    return JSONResponse(error_body("internal server error"), status_code=500)


def install_error_handlers(app: FastAPI) -> None:
    # Starlette types a handler as taking any Exception, so one that takes the subclass it is registered for fails
    # mypy although Starlette only ever calls it with that subclass (Kludex/starlette#2417): hence the ignores.
    app.add_exception_handler(DomainError, domain_error_handler)  # type: ignore[arg-type]
    app.add_exception_handler(PathRejected, path_rejected_handler)  # type: ignore[arg-type]
    app.add_exception_handler(RequestValidationError, validation_error_handler)  # type: ignore[arg-type]
    app.add_exception_handler(StarletteHTTPException, http_error_handler)  # type: ignore[arg-type]
    app.add_exception_handler(Exception, unexpected_error_handler)
    _document_error_answers(app)


_ERROR_REF = {"$ref": "#/components/schemas/ErrorResponse"}
_FASTAPI_422_REF = "#/components/schemas/HTTPValidationError"


def _document_error_answers(app: FastAPI) -> None:
    """Make /openapi.json describe the error answers the handlers above really send (clients and schemathesis
    trust it): FastAPI documents its own 422 body (HTTPValidationError), but ours is ErrorResponse; and every
    non-GET route may answer 413 (the body limit runs before routing)."""
    from .models import ErrorResponse

    generate = app.openapi

    def openapi() -> dict:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = generate()
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        components.setdefault("ErrorResponse", ErrorResponse.model_json_schema(
            ref_template="#/components/schemas/{model}"))
        error_content = {"application/json": {"schema": _ERROR_REF}}
        for operations in schema.get("paths", {}).values():
            for method, operation in operations.items():
                responses = operation.setdefault("responses", {})
                for answer in responses.values():
                    json_schema = answer.get("content", {}).get("application/json", {}).get("schema", {})
                    if json_schema.get("$ref") == _FASTAPI_422_REF:
                        answer["content"] = error_content
                if method not in ("get", "head", "options"):
                    responses.setdefault("413", {"description": "Request body too large", "content": error_content})
        for name in ("HTTPValidationError", "ValidationError"):
            components.pop(name, None)
        return schema

    app.openapi = openapi  # type: ignore[method-assign]  # FastAPI's documented way to extend the OpenAPI schema
