"""HTTP glue around the endpoints: a request id on every request and response, the body size limit,
BentoML's validation errors rewritten in this service's shape, JSON and error responses, and the
checks of a request's lists and texts against ``limits``."""

import logging
import re
import uuid
from collections.abc import Callable
from typing import Any

import orjson
from starlette.responses import Response

from core.errors import InvalidArgument, PayloadTooLarge, ToolkitError, Unavailable
from core.tasks import ROUTES
from serving.observability import REQUEST_ID
from serving.settings import Limits, load_settings

log = logging.getLogger(__name__)

REQUEST_ID_PATTERN = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")


class RequestContextMiddleware:
    """ASGI middleware: a request id for every request (the client's ``X-Request-ID`` when it is sane),
    returned in the response header; bodies over ``limits.max_body_bytes`` refused with 413 before
    they are parsed."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or ())
        given = headers.get(b"x-request-id", b"").decode("latin-1")
        request_id = given if REQUEST_ID_PATTERN.fullmatch(given) else uuid.uuid4().hex
        token = REQUEST_ID.set(request_id)
        id_header = (b"x-request-id", request_id.encode())
        errors = error_style(scope.get("path", ""))

        held: dict | None = None  # a 400's start message, while its body is rewritten
        held_body = bytearray()

        async def send_with_id(message: dict) -> None:
            nonlocal held
            if message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", []), id_header]}
                if message["status"] == 400:  # maybe BentoML's pydantic error: hold it, see below
                    held = message
                    return
            elif held is not None and message["type"] == "http.response.body":
                held_body.extend(message.get("body", b""))
                if message.get("more_body", False):
                    return
                body = uniform_validation_error(bytes(held_body), errors) or bytes(held_body)
                headers = [(k, v) for k, v in held["headers"] if k.lower() != b"content-length"]
                await send({**held, "headers": [*headers, (b"content-length", str(len(body)).encode())]})
                message, held = {"type": "http.response.body", "body": body}, None
            await send(message)

        try:
            limit = load_settings().limits.max_body_bytes
            length = headers.get(b"content-length")
            if length is not None:
                if length.isdigit() and int(length) > limit:
                    await self._too_large(send_with_id, int(length), limit, errors)
                    return
                await self.app(scope, receive, send_with_id)
                return
            # No Content-Length (chunked): read the body here, counting, then hand it on in one piece.
            body, more = bytearray(), True
            while more:
                message = await receive()
                if message["type"] != "http.request":
                    await self.app(scope, receive, send_with_id)
                    return
                body += message.get("body", b"")
                more = message.get("more_body", False)
                if len(body) > limit:
                    await self._too_large(send_with_id, len(body), limit, errors)
                    return
            replayed = False

            async def replay() -> dict:
                nonlocal replayed
                if not replayed:
                    replayed = True
                    return {"type": "http.request", "body": bytes(body), "more_body": False}
                return await receive()

            await self.app(scope, replay, send_with_id)
        finally:
            REQUEST_ID.reset(token)

    @staticmethod
    async def _too_large(send: Callable, size: int, limit: int, errors: str) -> None:
        err = PayloadTooLarge(
            f"body: {size} bytes is over the limit of {limit} bytes (limits.max_body_bytes); "
            "send fewer or smaller items per request",
            field="body",
        )
        log.warning("refused: %s", err, extra={"fields": {"status": 413}})
        response = error_response(err, errors)
        await response({"type": "http"}, _no_receive, send)


def error_style(path: str) -> str:
    """The error shape of a route (``Route.errors`` in the task registry); "service" elsewhere."""
    route = ROUTES.get(path)
    return route[1].errors if route else "service"


def uniform_validation_error(body: bytes, errors: str = "service") -> bytes | None:
    """BentoML answers a body that fails its pydantic model with ``{"error": "1 validation error for
    Input", "detail": [{"loc": [...], "msg": ...}]}``; rewrite it as this service's errors are
    (``error`` naming the field and the problem, ``field``, ``request_id``; or OpenAI's shape on its
    route). None: not such a body."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    problems = data.get("detail") if isinstance(data, dict) else None
    if not isinstance(problems, list) or not problems or not all(isinstance(p, dict) for p in problems):
        return None
    fields, lines = [], []
    for problem in problems:
        where = ""
        for part in problem.get("loc") or []:
            where += f"[{part}]" if isinstance(part, int) else (f".{part}" if where else str(part))
        fields.append(where or "body")
        lines.append(f"{where or 'body'}: {problem.get('msg', 'invalid')}")
    message = "; ".join(lines) + " (the endpoints' schemas: GET /docs.json)"
    field = fields[0]
    if errors == "openai":  # OpenAI's `param` is the request's field itself (`input`, not `input.str`)
        field = re.split(r"[.\[]", field, maxsplit=1)[0]
    return orjson.dumps(ERROR_BODIES[errors](message, field, 400))


async def _no_receive() -> dict:
    return {"type": "http.disconnect"}


def json_response(body: dict, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    """orjson, numpy arrays included: a 384-float embedding encodes ~10x faster than with json.dumps."""
    content = orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY)
    return Response(content, status_code=status, headers=headers, media_type="application/json")


def service_error(message: str, field: str | None, status: int) -> dict:
    """This service's error body: the request id is in it, beside the X-Request-ID header."""
    return {"error": message, "field": field, "request_id": REQUEST_ID.get()}


# OpenAI's error ``type`` per status class, and the ``code`` of the statuses its clients tell apart.
OPENAI_TYPES = {4: "invalid_request_error", 5: "server_error"}
OPENAI_CODES = {413: "request_too_large", 503: "service_unavailable"}


def openai_error(message: str, field: str | None, status: int) -> dict:
    """OpenAI's error body, ``{"error": {"message", "type", "param", "code"}}``, as its clients parse it
    (the ``openai`` package raises BadRequestError, NotFoundError, ... with ``.param`` and ``.code``
    from it); the request id is in the X-Request-ID header."""
    code = "model_not_found" if status == 404 and field == "model" else OPENAI_CODES.get(status)
    return {
        "error": {
            "message": message,
            "type": OPENAI_TYPES.get(status // 100, "server_error"),
            "param": field,
            "code": code,
        }
    }


ERROR_BODIES: dict[str, Callable[[str, str | None, int], dict]] = {
    "service": service_error,
    "openai": openai_error,
}


def error_response(err: ToolkitError, errors: str = "service") -> Response:
    body = ERROR_BODIES[errors](str(err), getattr(err, "field", None), err.http_status)
    headers = {}
    if isinstance(err, Unavailable):
        headers["Retry-After"] = str(err.retry_after_s)
    return json_response(body, err.http_status, headers)


# ---- request checks -------------------------------------------------------------------------------


def check_items(items: list, field_name: str, limits: Limits) -> None:
    if not items:
        raise InvalidArgument(f"{field_name}: the list is empty; send at least one item", field=field_name)
    if len(items) > limits.max_items:
        raise PayloadTooLarge(
            f"{field_name}: {len(items)} items is over the limit of {limits.max_items} per request "
            "(limits.max_items); split them over several requests",
            field=field_name,
        )


def check_texts(texts: list[str], field_name: str, limits: Limits) -> None:
    for i, text in enumerate(texts):
        if len(text) > limits.max_text_chars:
            where = f"{field_name}[{i}]" if field_name.endswith("s") else field_name
            raise PayloadTooLarge(
                f"{where}: {len(text)} characters is over the limit of {limits.max_text_chars} "
                "(limits.max_text_chars); shorten the text",
                field=where,
            )
