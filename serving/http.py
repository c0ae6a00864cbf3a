"""HTTP glue around the endpoints, for every route alike: a request id on every request and response,
JSON bodies only (415 otherwise), the body size limit, unknown paths answered 404 under one metrics
label, strict integers in every endpoint's body, BentoML's validation errors rewritten in this
service's shape, JSON and error responses, and the checks of a request's lists, texts and pixels
against ``limits``."""

import inspect
import logging
import re
import uuid
from collections.abc import Callable
from typing import Any

import attrs
import bentoml
import orjson
from starlette.responses import Response

from core.errors import (
    InvalidArgument,
    NotFound,
    PayloadTooLarge,
    RateLimited,
    ToolkitError,
    Unauthorized,
    Unavailable,
    UnsupportedMediaType,
)
from core.tasks import ROUTES
from serving.observability import REQUEST_ID
from serving.settings import Limits, load_settings

log = logging.getLogger(__name__)

REQUEST_ID_PATTERN = re.compile(r"^[A-Za-z0-9._:-]{1,64}$")
# The one path (and metrics label) every request for a path no route serves gets.
UNMATCHED = "/{unmatched}"
# Where RouteLabels keeps a request's real path while the metrics see its route's label.
REAL_PATH = "modelpack.path"
# Bodies the service takes: JSON (a missing Content-Type is taken as JSON, as BentoML does).
JSON_TYPES = ("application/json",)
BODY_METHODS = (b"POST", b"PUT", b"PATCH")


@attrs.define
class GuardedService(bentoml.Service):
    """``bentoml.Service`` with what applies to every route: each endpoint's body model is strict (a
    JSON ``true`` or ``1.0`` is not an integer, ``"1"`` not a number), and the served ASGI app is wrapped
    in ``RouteLabels``, outside BentoML's own middleware. Use: ``@bentoml.service(service_class=...)``."""

    def __attrs_post_init__(self) -> None:
        super().__attrs_post_init__()
        # bentoml finds the module that defines the service by walking up the stack from its own
        # module; from a subclass the first frame outside it is this module's: skip it too.
        frame = inspect.currentframe()
        while frame is not None and frame.f_globals.get("__name__") in (__name__, bentoml.Service.__module__):
            frame = frame.f_back
        if frame is not None:
            self._caller_module = frame.f_globals["__name__"]
        for api in self.apis.values():
            spec = api.input_spec
            spec.model_config = {**spec.model_config, "strict": True}
            spec.model_rebuild(force=True)

    def to_asgi(self, is_main: bool = True) -> Any:
        return RouteLabels(super().to_asgi(is_main))


class RouteLabels:
    """The outermost ASGI layer: BentoML labels its HTTP metrics with the raw URL path, so every unknown
    path would be a new series (1,200 paths: /metrics 166 kB -> 4.6 MB). Here each request's path is
    replaced by its route's label for the layers outside ``RequestContextMiddleware`` (which puts the
    real path back before routing): the route's template (``/models``, ``/v2/models/{name}/infer``), a
    static file that exists, or ``UNMATCHED``."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self._fixed: frozenset[str] | None = None  # the paths of routes without parameters

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] == "http":
            if self._fixed is None:
                self._fixed = fixed_paths(self.app.routes)
            # Every request passes here: a fixed route's path is its own label, found in a set (Starlette's
            # matching, below, costs ~70 us for /embed on this machine).
            label = scope["path"] if scope["path"] in self._fixed else route_label(self.app.routes, scope)
            if label != scope["path"]:
                scope = {**scope, REAL_PATH: (scope["path"], scope.get("raw_path")), "path": label}
                scope["raw_path"] = label.encode()
        await self.app(scope, receive, send)


def fixed_paths(routes: list, prefix: str = "") -> frozenset[str]:
    """The full paths of the routes that take no path parameters, mounted apps' routes included."""
    from starlette.routing import Mount
    from starlette.staticfiles import StaticFiles

    found = set()
    for route in routes:
        path = getattr(route, "path", None)
        if path is None or "{" in path:
            continue
        if isinstance(route, Mount):
            if not isinstance(route.app, StaticFiles):
                found |= fixed_paths(getattr(route.app, "routes", []), prefix + path)
        else:
            found.add(prefix + path)
    return frozenset(found)


def route_label(routes: list, scope: dict) -> str:
    """The label of the route that serves ``scope``'s path (any method), or ``UNMATCHED``."""
    from starlette.routing import Match, Mount
    from starlette.staticfiles import StaticFiles

    for route in routes:
        match, child = route.matches(scope)
        if match == Match.NONE:
            continue
        if not isinstance(route, Mount):
            return getattr(route, "path", scope["path"])
        inner = {**scope, **child}
        if isinstance(route.app, StaticFiles):
            if route.app.lookup_path(route.app.get_path(inner))[1] is not None:
                return scope["path"]  # one of the files BentoML ships for its docs page
            continue
        label = route_label(getattr(route.app, "routes", []), inner)
        if label != UNMATCHED:
            return route.path + label
    return UNMATCHED


class RequestContextMiddleware:
    """ASGI middleware, for every route: a request id for every request (the client's ``X-Request-ID``
    when it is sane), returned in the response header; an unknown path answered 404 (``RouteLabels``
    marked it); a body that is not JSON refused with 415, and one over ``limits.max_body_bytes`` or
    ``limits.max_json_values`` with 413, before anything parses it."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        unmatched = REAL_PATH in scope and scope["path"] == UNMATCHED
        if REAL_PATH in scope:  # RouteLabels gave the outer layers the route's label: route the real path
            path, raw_path = scope[REAL_PATH]
            scope = {**scope, "path": path, "raw_path": raw_path}
            if raw_path is None:
                del scope["raw_path"]
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
            refused = self._refusal(scope, headers, unmatched)
            if refused is not None:
                await self._refuse(send_with_id, refused, errors)
                return
            limits = load_settings().limits
            limit = limits.max_body_bytes
            length = headers.get(b"content-length")
            if length is not None and length.isdigit() and int(length) > limit:
                await self._too_large(send_with_id, int(length), limit, errors)
                return
            if scope.get("method", "GET").encode() not in BODY_METHODS:
                await self.app(scope, receive, send_with_id)
                return
            # Read the body here, then hand it on in one piece. BentoML parses it on the event loop, in
            # time that grows with its values (a 15.7 MB pixel array: seconds, /healthz included), so
            # its values are counted from their separators as it arrives, and the reading stops at the
            # first byte over either limit.
            body, more, values = bytearray(), True, 0
            while more:
                message = await receive()
                if message["type"] != "http.request":
                    await self.app(scope, receive, send_with_id)
                    return
                chunk = message.get("body", b"")
                body += chunk
                more = message.get("more_body", False)
                values += chunk.count(b",") + chunk.count(b"[") + chunk.count(b"{")
                if len(body) > limit:
                    await self._too_large(send_with_id, len(body), limit, errors)
                    return
                if values > limits.max_json_values:
                    err = PayloadTooLarge(
                        f"body: more than {limits.max_json_values} JSON values (limits.max_json_values); "
                        "send large images as PNG or JPEG files rather than pixel arrays, or fewer items "
                        "per request",
                        field="body",
                    )
                    await self._refuse(send_with_id, err, errors)
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
    def _refusal(scope: dict, headers: dict, unmatched: bool) -> ToolkitError | None:
        """An unknown path (404), or a body that is not JSON (415), before anything reads the body."""
        method = scope.get("method", "GET")
        if unmatched:
            return NotFound(
                f"path: {method} {scope['path'][:200]} is not a route of this service; GET /docs.json "
                "lists them",
                field="path",
            )
        content_type = headers.get(b"content-type")
        if method.encode() in BODY_METHODS and content_type is not None:
            media = content_type.decode("latin-1").split(";")[0].strip().lower()
            if media not in JSON_TYPES:
                return UnsupportedMediaType(
                    f"Content-Type: {media or '(empty)'!r} is not accepted; send the body as JSON with "
                    "Content-Type: application/json",
                    field="Content-Type",
                )
        return None

    @classmethod
    async def _too_large(cls, send: Callable, size: int, limit: int, errors: str) -> None:
        err = PayloadTooLarge(
            f"body: {size} bytes is over the limit of {limit} bytes (limits.max_body_bytes); "
            "send fewer or smaller items per request",
            field="body",
        )
        await cls._refuse(send, err, errors)

    @staticmethod
    async def _refuse(send: Callable, err: ToolkitError, errors: str = "service") -> None:
        log.warning("refused: %s", err, extra={"fields": {"status": err.http_status}})
        await error_response(err, errors)({"type": "http"}, _no_receive, send)


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
    if isinstance(err, Unavailable | RateLimited):
        headers["Retry-After"] = str(err.retry_after_s)
    if isinstance(err, Unauthorized):
        headers["WWW-Authenticate"] = 'Bearer realm="modelpack"'
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


def check_pixels(total: int, count: int, field_name: str, limits: Limits) -> None:
    if total > limits.max_request_pixels:
        what = f"the {count} images come to" if count > 1 else "the image is"
        raise PayloadTooLarge(
            f"{field_name}: {what} {total} pixels, over the limit of {limits.max_request_pixels} pixels "
            "per request (limits.max_request_pixels); send fewer or smaller images per request",
            field=field_name,
        )
