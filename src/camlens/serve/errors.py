"""The server's errors: every one a JSON ``{detail, parameter}`` (:class:`ErrorBody`), the
parameter at fault named apart from the one-line message."""

from __future__ import annotations

import re
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.formparsers import FormParser, MultiPartParser

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
"""The largest form field of ``POST /api/explain`` but the photos (a method's, layer's or
class's name; a longer one is a 400 naming it)."""


def documented_methods(request: Request) -> list[str]:
    """The methods the API's OpenAPI document gives the request's path (``/api/jobs/x``: GET
    and DELETE), for a 405's ``Allow``; none for a path it does not document."""
    path = request.url.path[len(request.scope.get("root_path", "")) :] or "/"
    for template, operations in request.app.openapi()["paths"].items():
        pattern = re.sub(r"\\\{[^/]+?\\\}", "[^/]+", re.escape(template))
        if re.fullmatch(pattern, path):
            return sorted(verb.upper() for verb in operations)
    return []


def upload_too_large(limit: int) -> str:
    """The 413's message for a request body over ``limit`` bytes."""
    return f"the upload is over this server's limit of {size_text(limit)}"


def size_text(n: float) -> str:
    """``n`` bytes for a message: in MB from 1 MB on (``20 MB``, ``1.5 MB``), else in bytes."""
    if n < 2**20:
        return f"{n:.0f} bytes"
    mb = n / 2**20
    return f"{mb:.0f} MB" if mb >= 100 else f"{mb:.3g} MB"


def upload_stalled(seconds: float) -> str:
    """The 408's message for an upload that sent nothing for ``seconds``."""
    return f"the upload stalled: no data for {seconds:g} s"


def busy(retry: int) -> str:
    """The 503's message when the queue is full."""
    return f"the server is busy: try again in {retry} s"


FILES = ("image", "like", "mask")
"""The form fields of ``POST /api/explain`` that are pictures, sent as files."""


def not_a_file(field: str) -> str:
    """The message for a photo field sent as a plain field (a part without a file name)."""
    return (
        f"{field} must be sent as a file: a part with a file name (curl -F {field}=@photo.jpg), "
        "not a plain form field"
    )


def field_too_long(field: str | None) -> str:
    """The 400's message for a form field over :data:`FIELD_BYTES`, naming it when known."""
    if field in FILES:
        return not_a_file(field)
    which = f"form field {field!r} is" if field else "a form field is"
    return (
        f"{which} over {FIELD_BYTES // 1024} kB, the limit of every field but image, like and "
        "mask: "
        "give each value in a field of its own (-F methods=gradcam -F methods=cam)"
    )


def oversized_field(exc: BaseException) -> str | None:
    """The name of the form field the multipart parser refused as too long: Starlette turns its
    parser's error into an HTTP 400 without the part's name, which the parser (found in the
    original error's traceback) still holds. None when it cannot be found."""
    cause = exc.__context__
    trace = cause.__traceback__ if cause is not None else None
    name = None
    while trace is not None:
        parser = trace.tb_frame.f_locals.get("self")
        if isinstance(parser, MultiPartParser | FormParser):
            part = getattr(parser, "_current_part", None)
            field = getattr(part, "field_name", None)
            if field is None and isinstance(parser, FormParser):
                field = bytes(getattr(parser, "_field_name", b"")).decode("latin-1")
            name = field or name
        trace = trace.tb_next
    return name[:100] if name else None


BAD_PARAMETER: dict[int | str, dict[str, Any]] = {
    422: {
        "model": ErrorBody,
        "description": "a bad parameter, or one the endpoint does not take, named in `parameter`",
    }
}
"""The 422 every endpoint answers (an unknown query parameter, at least), for the OpenAPI page."""

ERRORS: dict[int | str, dict[str, Any]] = {
    400: {
        "model": ErrorBody,
        "description": f"a form field (not image, like or mask) over {FIELD_BYTES // 1024} kB, named "
        "in `parameter`; or a form that cannot be read",
    },
    408: {
        "model": ErrorBody,
        "description": "the upload sent no data for --upload-stall seconds (30 by default)",
    },
    409: {"model": ErrorBody, "description": "the request's job was cancelled"},
    413: {
        "model": ErrorBody,
        "description": "upload over the size limit, image over the pixel limit, or an inline "
        "answer over its limit",
    },
    415: {"model": ErrorBody, "description": "the upload is not an image"},
    **BAD_PARAMETER,
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
        if parameter in FILES and "UploadFile" in message:  # a part without a file name
            return error_response(422, not_a_file(parameter), parameter)
        return error_response(422, f"{parameter}: {message}" if parameter else message, parameter)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        detail, parameter = str(exc.detail), None
        headers = dict(exc.headers or {})
        if exc.status_code == 405:
            allowed = documented_methods(request)
            if allowed:
                headers["Allow"] = ", ".join(allowed)
                detail = f"{request.method} is not allowed: {request.url.path} takes {', '.join(allowed)}"
        elif detail.startswith(("Part exceeded maximum size", "Field exceeded maximum size")):
            parameter = oversized_field(exc)
            detail = field_too_long(parameter)
        elif exc.status_code == 400:  # the multipart parser's words, said as a request's error
            detail = f"the form cannot be read: {detail.rstrip('.')}"
        return error_response(exc.status_code, detail, parameter, **headers)
