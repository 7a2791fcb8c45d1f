"""Errors as HTTP answers: every failure reaches the client as JSON `{"error": "<sentence>"}`.

`APIError` is what the app raises for a request it cannot answer, with its status chosen where the cause
is known (by the exception type caught there, never by the wording of a message). `add_error_handlers`
turns it, FastAPI's own errors and anything unexpected into that JSON, and counts each in the metrics.
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from serve import observability


class APIError(Exception):
    """A request the app cannot answer: an HTTP status and a sentence, sent as {"error": sentence}."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


async def _api_error(request: Request, err: APIError) -> JSONResponse:
    observability.count_error(request.url.path, err.status)
    return JSONResponse({"error": err.message}, status_code=err.status, headers=err.headers)


async def _http_error(request: Request, err: HTTPException) -> JSONResponse:
    observability.count_error(request.url.path, err.status_code)
    return JSONResponse({"error": str(err.detail)}, status_code=err.status_code, headers=err.headers)


async def _validation_error(request: Request, err: RequestValidationError) -> JSONResponse:
    observability.count_error(request.url.path, 422)
    return JSONResponse({"error": f"the request is malformed: {err.errors()}"}, status_code=422)


async def _server_error(request: Request, err: Exception) -> JSONResponse:
    observability.count_error(request.url.path, 500)
    # Whatever went wrong, the client gets the API's JSON with a sentence, not Starlette's plain text.
    return JSONResponse({"error": f"the server could not answer ({type(err).__name__}); retry the request, and "
                                  "if it keeps failing, the server's log has the details."}, status_code=500)


def add_error_handlers(api: FastAPI) -> None:
    """Answer every error of `api` as JSON with a sentence, and count it."""
    api.add_exception_handler(APIError, _api_error)
    api.add_exception_handler(HTTPException, _http_error)
    api.add_exception_handler(RequestValidationError, _validation_error)
    api.add_exception_handler(Exception, _server_error)
