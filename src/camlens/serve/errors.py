"""The server's errors: every one a JSON ``{detail, parameter}`` (:class:`ErrorBody`), the
parameter at fault named apart from the one-line message."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from camlens.errors import CamlensError, ClassError, LayerError, MethodError
from camlens.serve.schemas import ErrorBody


class ApiError(Exception):
    """An error response: ``status``, a one-line ``detail`` and the ``parameter`` at fault."""

    def __init__(
        self,
        status: int,
        detail: str,
        parameter: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.detail = detail
        self.parameter = parameter
        self.headers = headers


def error_response(
    status: int, detail: str, parameter: str | None = None, **headers: str
) -> JSONResponse:
    body = ErrorBody(detail=detail, parameter=parameter).model_dump()
    return JSONResponse(body, status_code=status, headers=headers or None)


def bad_option(exc: CamlensError, parameter: str | None = None) -> ApiError:
    """A 422 for what camlens refused, naming the option at fault: the one the error names
    (:attr:`CamlensError.option`), else ``parameter``, else the one its kind points at."""
    return ApiError(422, str(exc), exc.option or parameter or parameter_of(exc))


def parameter_of(exc: CamlensError) -> str | None:
    """The request parameter an error of this kind is about, if it says."""
    if exc.option is not None:
        return exc.option
    if isinstance(exc, LayerError):
        return "layers"
    if isinstance(exc, MethodError):
        return "methods"
    if isinstance(exc, ClassError):
        return "classes"
    return None


FIELD_BYTES = 4096
"""The largest form field of ``POST /api/explain`` but the image (a method's, layer's or
class's name; a longer one is a 400 that says so)."""

ERRORS: dict[int | str, dict[str, Any]] = {
    408: {"model": ErrorBody, "description": "the upload stalled: no data for 30 s"},
    413: {
        "model": ErrorBody,
        "description": "upload over the size limit, or image over the pixel limit",
    },
    415: {"model": ErrorBody, "description": "the upload is not an image"},
    422: {"model": ErrorBody, "description": "a bad or unknown parameter, named in `parameter`"},
    503: {
        "model": ErrorBody,
        "description": "the queue is full: retry after `Retry-After` seconds",
    },
}
"""The error responses of POST /api/explain, for the OpenAPI page."""


def install(app: FastAPI) -> None:
    """Every error of ``app`` as an :class:`ErrorBody`: :class:`ApiError`, FastAPI's own
    validation (the first problem, naming its parameter) and Starlette's HTTP errors."""

    @app.exception_handler(ApiError)
    async def api_error(request: Request, exc: ApiError) -> JSONResponse:
        return error_response(exc.status, exc.detail, exc.parameter, **(exc.headers or {}))

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0]
        where = [str(p) for p in first.get("loc", ()) if p not in ("body", "query", "path")]
        parameter = where[0] if where else None
        message = str(first.get("msg", "invalid"))
        return error_response(422, f"{parameter}: {message}" if parameter else message, parameter)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        detail = str(exc.detail)
        if detail.startswith(("Part exceeded maximum size", "Field exceeded maximum size")):
            detail = (
                f"a form field is over {FIELD_BYTES // 1024} kB, the limit of every field but "
                "image: give each value in a field of its own (-F methods=gradcam -F "
                "methods=cam)"
            )
        return error_response(exc.status_code, detail, None, **(exc.headers or {}))
