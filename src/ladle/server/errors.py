"""Errors in each API's own shape: OpenAI routes answer {"error": {"message", "type", "param", "code"}},
Ollama routes (/api/...) answer {"error": "..."}. Whatever a client sends is a 4xx, never a 5xx."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from ladle.engine.async_engine import EngineDeadError, QueueFullError
from ladle.models_hub.manager import ModelNotFoundError

logger = logging.getLogger(__name__)

# Seconds a client is told to wait after a 503 for a full queue.
RETRY_AFTER_SECONDS = 1

_OPENAI_TYPES = {
    400: "BadRequestError",
    401: "AuthenticationError",
    404: "NotFoundError",
    405: "MethodNotAllowed",
    413: "RequestTooLarge",
    422: "BadRequestError",
    499: "ClientClosedRequest",
    500: "InternalServerError",
    503: "ServiceUnavailableError",
}


class ApiError(Exception):
    """An error a route raises on purpose, with its HTTP status and (for OpenAI) the offending field."""

    def __init__(self, status: int, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param


def bad_request(message: str, param: str | None = None) -> ApiError:
    return ApiError(400, message, param)


def is_ollama_path(path: str) -> bool:
    return path.startswith("/api/")


def error_body(path: str, status: int, message: str, param: str | None = None) -> dict[str, Any]:
    if is_ollama_path(path):
        return {"error": message}
    return {
        "error": {
            "message": message,
            "type": _OPENAI_TYPES.get(status, "BadRequestError" if status < 500 else "InternalServerError"),
            "param": param,
            "code": status,
        }
    }


def error_response(
    path: str, status: int, message: str, param: str | None = None, headers: dict[str, str] | None = None
) -> JSONResponse:
    return JSONResponse(error_body(path, status, message, param), status_code=status, headers=headers)


def _field_name(loc: tuple[Any, ...]) -> str | None:
    parts = [str(p) for p in loc if p not in ("body", "query", "path")]
    return ".".join(parts) if parts else None


def validation_message(exc: RequestValidationError) -> tuple[str, str | None]:
    errors = exc.errors()
    messages, first_field = [], None
    for err in errors[:5]:
        name = _field_name(tuple(err.get("loc", ())))
        first_field = first_field or name
        msg = err.get("msg", "invalid value")
        if err.get("type") == "json_invalid":
            messages.append(f"the body is not valid JSON: {err.get('ctx', {}).get('error', msg)}")
        elif name is None and err.get("type") == "missing":
            messages.append("the body is empty (send a JSON object)")
        elif name is None and (err.get("type") == "model_attributes_type" or "dict" in msg):
            messages.append("the body must be a JSON object")
        else:
            messages.append(f"{name}: {msg}" if name else msg)
    if len(errors) > 5:
        messages.append(f"... and {len(errors) - 5} more")
    return "; ".join(messages), first_field


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError) -> JSONResponse:
        return error_response(request.url.path, exc.status, exc.message, exc.param)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        message, field = validation_message(exc)
        return error_response(request.url.path, 400, message, field)

    @app.exception_handler(ValueError)
    async def _value_error(request: Request, exc: ValueError) -> JSONResponse:
        message = str(exc)
        # SamplingParams errors read "SamplingParams.top_p must be ..."; the field is the word after the dot.
        field = None
        if message.startswith("SamplingParams."):
            field = message.split(".", 1)[1].split(" ", 1)[0].rstrip(":")
        elif ":" in message.split(" ", 1)[0]:
            field = message.split(":", 1)[0]
        return error_response(request.url.path, 400, message, field)

    @app.exception_handler(ModelNotFoundError)
    async def _not_found(request: Request, exc: ModelNotFoundError) -> JSONResponse:
        return error_response(request.url.path, 404, str(exc), "model")

    @app.exception_handler(QueueFullError)
    async def _queue_full(request: Request, exc: QueueFullError) -> JSONResponse:
        return error_response(
            request.url.path, 503, str(exc), headers={"Retry-After": str(RETRY_AFTER_SECONDS)}
        )

    @app.exception_handler(EngineDeadError)
    async def _dead(request: Request, exc: EngineDeadError) -> JSONResponse:
        return error_response(request.url.path, 503, str(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return error_response(request.url.path, exc.status_code, str(exc.detail), headers=exc.headers)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        logger.exception("unhandled error on %s", request.url.path)
        return error_response(request.url.path, 500, f"internal error: {exc!r}")
