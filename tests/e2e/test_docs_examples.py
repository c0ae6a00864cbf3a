"""The documentation's examples, run against the real service: docs and code cannot disagree again.

- docs/service.md: every request/response example, a fenced ``http`` block with the request (method,
  path, headers, JSON body) followed by an ``http`` block with the response (status line, headers,
  body). Response bodies may use the placeholders that page documents (``"<number>"``, ``"<int>"``,
  ``"<string>"``, ``"<bool>"``, ``"..."``); keys, types, status codes and every literal must match.
  The examples run in the order written, as a reader would send them: ``bento_server`` (minilm and
  image_classifier) answers them, except those of the routes of other tasks (``/classify``,
  ``/entities``, ``/classify/features``, ``/tensors``) and the protocol route of other models, which
  ``any_model_server`` answers (``classifier``: MiniLM with a random two-label head; ``ner``,
  ``tabular``, ``tuplenet``, ``dictnet``, ...: see tests/conftest.py), and the examples that send an
  API key (``Authorization`` or ``X-API-Key``), which a Bento requiring keys answers (``keyed_server``).
- every route in the service's OpenAPI schema has at least one example there (a route's {parameters}
  filled in);
- every ``curl`` line in README.md and docs/*.md is sent to the running service (``localhost:3000``)
  or Triton (``localhost:8000``) and must answer 200;
- every ``python`` block in README.md and docs/*.md runs against the session's Triton (and Bento, for
  ``http://127.0.0.1:3000``), and each ``print(...)  # OUTPUT`` line must print OUTPUT.

The matcher itself is tested on a known answer first (``test_matcher_rejects_...``), so a broken
example cannot pass by a matcher that accepts everything.
"""

from __future__ import annotations

import http
import json
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[2]
SERVICE_PAGE = ROOT / "docs" / "service.md"
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

METHODS = ("GET", "POST", "PUT", "DELETE", "PATCH", "HEAD")
TYPES: dict[str, tuple[type, ...]] = {
    "<number>": (int, float),
    "<int>": (int,),
    "<string>": (str,),
    "<bool>": (bool,),
}
ANY = "..."
# In header values and text bodies: the same placeholders inside a line.
TEXT_TOKENS = {
    "...": ".*?",
    "<number>": r"[-+]?(?:\d+(?:\.\d*)?(?:[eE][-+]?\d+)?|NaN|Inf)",
    "<int>": r"[-+]?\d+",
    "<string>": r".+?",
    "<bool>": r"(?:true|false)",
}


# ---- reading the pages ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Block:
    line: int  # 1-based line of the opening fence
    lang: str
    text: str


def fenced_blocks(path: Path) -> list[Block]:
    blocks, lang, start, body = [], None, 0, []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        fence = line.strip().startswith("```")
        if lang is None and fence:
            lang, start, body = line.strip()[3:].strip(), number, []
        elif lang is not None and fence:
            blocks.append(Block(start, lang, "\n".join(body)))
            lang = None
        elif lang is not None:
            body.append(line)
    if lang is not None:
        raise ValueError(f"{path.name}:{start}: a fenced block is never closed")
    return blocks


@dataclass(frozen=True)
class Example:
    where: str  # "service.md:123", the request block's line
    method: str
    path: str
    headers: dict[str, str]
    body: str | None  # the request body exactly as written (JSON)
    status: int
    reason: str
    expected_headers: dict[str, str]
    expected_body: str | None

    @property
    def id(self) -> str:
        return f"{self.where} {self.method} {self.path}"


def _head_and_body(text: str) -> tuple[list[str], str | None]:
    head, _, body = text.strip("\n").partition("\n\n")
    return head.splitlines(), (body.strip() or None)


def _headers(lines: list[str], where: str) -> dict[str, str]:
    headers = {}
    for line in lines:
        name, sep, value = line.partition(":")
        if not sep or not name.strip():
            raise ValueError(f"{where}: {line!r} is not a `Name: value` header line")
        headers[name.strip()] = value.strip()
    return headers


def parse_examples(path: Path) -> list[Example]:
    """The page's request/response pairs; ValueError naming the line for a block out of place."""
    examples, pending = [], None
    for block in fenced_blocks(path):
        where = f"{path.name}:{block.line}"
        first = block.text.strip("\n").split("\n", 1)[0]
        if block.lang != "http":
            if pending is not None:
                raise ValueError(f"{pending[0]}: a request with no ```http response block right after it")
            continue
        if first.split(" ", 1)[0] in METHODS:
            if pending is not None:
                raise ValueError(f"{pending[0]}: a request with no ```http response block right after it")
            pending = (where, block)
            continue
        status = re.fullmatch(r"HTTP/[0-9.]+ (\d{3})(?: (.*))?", first)
        if status is None:
            raise ValueError(
                f"{where}: an http block starts with {first!r}: neither `METHOD /path` nor `HTTP/1.1 200 OK`"
            )
        if pending is None:
            raise ValueError(f"{where}: a response with no request block before it")
        request_where, request = pending
        pending = None
        lines, body = _head_and_body(request.text)
        method, target, *_ = lines[0].split()
        if body is not None:
            json.loads(body)  # a request body must be real JSON, as a reader would send it
        response_lines, expected_body = _head_and_body(block.text)
        examples.append(
            Example(
                where=request_where,
                method=method,
                path=target,
                headers=_headers(lines[1:], request_where),
                body=body,
                status=int(status.group(1)),
                reason=(status.group(2) or "").strip(),
                expected_headers=_headers(response_lines[1:], where),
                expected_body=expected_body,
            )
        )
    if pending is not None:
        raise ValueError(f"{pending[0]}: a request with no ```http response block right after it")
    return examples


# ---- matching an answer against an example ---------------------------------------------------------


def _text_pattern(expected: str) -> re.Pattern:
    parts = re.split("(" + "|".join(re.escape(t) for t in TEXT_TOKENS) + ")", expected)
    return re.compile("".join(TEXT_TOKENS.get(p, re.escape(p)) for p in parts), re.DOTALL)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 200 else text[:200] + f"... ({len(text)} characters)"


def json_mismatches(expected: Any, actual: Any, where: str = "body") -> list[str]:
    """Every place where ``actual`` differs from ``expected`` (with the page's placeholders)."""
    if isinstance(expected, str) and expected == ANY:
        return []
    if isinstance(expected, str) and expected in TYPES:
        kinds = TYPES[expected]
        ok = isinstance(actual, kinds) and (expected == "<bool>" or not isinstance(actual, bool))
        return [] if ok else [f"{where}: expected {expected}, got {_short(actual)}"]
    if isinstance(expected, str) and ANY in expected:
        if isinstance(actual, str) and _text_pattern(expected).fullmatch(actual):
            return []
        return [f"{where}: expected text like {expected!r}, got {_short(actual)}"]
    if isinstance(expected, dict):
        if not isinstance(actual, dict):
            return [f"{where}: expected an object, got {_short(actual)}"]
        keys = [k for k in expected if k != ANY]
        problems = [f"{where}: key {k!r} is missing" for k in keys if k not in actual]
        if expected.get(ANY) != ANY:
            problems += [
                f"{where}: unexpected key {k!r} (value {_short(actual[k])})"
                for k in actual
                if k not in expected
            ]
        for key in keys:
            if key in actual:
                problems += json_mismatches(expected[key], actual[key], f"{where}.{key}")
        return problems
    if isinstance(expected, list):
        if not isinstance(actual, list):
            return [f"{where}: expected a list, got {_short(actual)}"]
        if expected and expected[-1] == ANY:
            head = expected[:-1]
            if len(actual) < len(head):
                return [f"{where}: expected at least {len(head)} items, got {len(actual)}"]
            problems = []
            for i, item in enumerate(actual):
                if not head:
                    break
                problems += json_mismatches(head[min(i, len(head) - 1)], item, f"{where}[{i}]")
            return problems[:5]
        if len(actual) != len(expected):
            return [f"{where}: expected {len(expected)} items, got {len(actual)}: {_short(actual)}"]
        problems = []
        for i, (item_expected, item) in enumerate(zip(expected, actual, strict=True)):
            problems += json_mismatches(item_expected, item, f"{where}[{i}]")
        return problems
    # A literal: the same JSON type and value (1 is not 1.0, true is not 1).
    if type(expected) is not type(actual) or expected != actual:
        return [f"{where}: expected {expected!r}, got {_short(actual)}"]
    return []


def answer_mismatches(example: Example, status: int, headers: httpx.Headers, text: str) -> list[str]:
    problems = []
    if status != example.status:
        problems.append(f"status: expected {example.status}, got {status}: {text[:300]}")
    if example.reason and example.reason != http.HTTPStatus(example.status).phrase:
        problems.append(
            f"status line: {example.status} is {http.HTTPStatus(example.status).phrase!r}, "
            f"not {example.reason!r}"
        )
    for name, value in example.expected_headers.items():
        if name not in headers:
            problems.append(f"header {name}: missing")
        elif not _text_pattern(value).fullmatch(headers[name]):
            problems.append(f"header {name}: expected {value!r}, got {headers[name]!r}")
    if example.expected_body is None:
        return problems
    if example.expected_body[0] in "[{":
        try:
            actual = json.loads(text)
        except json.JSONDecodeError:
            return [*problems, f"body: not JSON: {text[:300]!r}"]
        return problems + json_mismatches(json.loads(example.expected_body), actual)
    lines = text.splitlines()
    for line in example.expected_body.splitlines():
        if line.strip() and not any(_text_pattern(line.strip()).fullmatch(a) for a in lines):
            problems.append(f"body: no line like {line.strip()!r}")
    return problems


# ---- the examples, read at collection ---------------------------------------------------------------

EXAMPLES = parse_examples(SERVICE_PAGE)


def test_matcher_rejects_a_wrong_route_status_key_or_value():
    """The matcher on a known answer: it passes the right example and fails each kind of wrong one."""
    body = {"model": "minilm", "version": 1, "embedding": [0.5, -0.25, 0.125]}
    text, headers = (
        json.dumps(body),
        httpx.Headers({"X-Request-ID": "abc", "Content-Type": "application/json"}),
    )

    def example(
        status: int = 200, expected: str | None = None, reason: str = "OK", **expected_headers: str
    ) -> Example:
        expected = expected or '{"model": "minilm", "version": 1, "embedding": ["<number>", "..."]}'
        return Example("t", "POST", "/embed", {}, None, status, reason, expected_headers, expected)

    assert answer_mismatches(example(**{"X-Request-ID": "<string>"}), 200, headers, text) == []
    wrong = {
        "status": example(status=404, reason="Not Found"),
        "status line": example(reason="Not Found"),
        "key": example(expected='{"model": "minilm", "version": 1, "embeddings": ["<number>", "..."]}'),
        "extra key": example(expected='{"model": "minilm", "version": 1}'),
        "fixed value": example(expected='{"model": "other", "version": 1, "embedding": ["..."]}'),
        "type of a fixed value": example(
            expected='{"model": "minilm", "version": 1.0, "embedding": ["..."]}'
        ),
        "placeholder type": example(
            expected='{"model": "minilm", "version": 1, "embedding": ["<string>", "..."]}'
        ),
        "list length": example(expected='{"model": "minilm", "version": 1, "embedding": ["<number>"]}'),
        "header": example(**{"X-Request-ID": "xyz"}),
        "missing header": example(**{"Retry-After": "<int>"}),
    }
    for what, bad in wrong.items():
        assert answer_mismatches(bad, 200, headers, text), f"a wrong {what} passed"
    metrics = 'modelpack_requests_total{endpoint="/embed",status="200"} 3.0\n'
    assert answer_mismatches(
        example(expected='x_total{endpoint="/embed",...} <number>'), 200, headers, metrics
    )
    assert not answer_mismatches(
        example(expected='modelpack_requests_total{endpoint="/embed",...} <number>'), 200, headers, metrics
    )


def test_service_page_has_examples():
    assert len(EXAMPLES) >= 10, f"{SERVICE_PAGE.name} has only {len(EXAMPLES)} request/response examples"


# ---- the servers that answer them -------------------------------------------------------------------


# The session's stack serves these models; the routes of the tasks it does not serve go elsewhere.
SESSION_MODELS = ("minilm", "image_classifier")
OTHER_STACK_ROUTES = ("/classify", "/entities", "/tensors")


# The key of the page's Access examples, and that section's service: keys required, one key, a rate of
# one request per 100 s in bursts of 2 (so its examples show a 200, a 401 and a 429).
DOCS_KEY = "docs-example-key-0000000001"
KEY_HEADERS = ("authorization", "x-api-key")


@pytest.fixture(scope="module")
def keyed_server(model_repo, triton_server, service_config, tmp_path_factory):
    import hashlib

    from serving.launcher import BentoServer

    folder = tmp_path_factory.mktemp("docs_keyed")
    keys = folder / "api-keys"
    keys.write_text(f"sha256:{hashlib.sha256(DOCS_KEY.encode()).hexdigest()} docs\n", encoding="utf-8")
    config = service_config(
        folder / "service.yaml",
        model_repo,
        triton_server.grpc_url,
        [{"name": "minilm", "task": "feature-extraction"}],
        access={
            "require_keys": True,
            "keys_file": str(keys),
            "rate_limit": {"requests_per_s": 0.01, "burst": 2},
        },
    )
    server = BentoServer(config, folder / "home", folder / "bento.log", die_with_parent=True).start()
    yield server
    server.stop()


def server_for(path: str, bento_server, any_model_server, keyed_server=None, headers=None):
    """``keyed_server`` for the examples that send an API key; ``any_model_server`` (classifier, ner,
    tabular, tuplenet, dictnet, ...) for the routes of the tasks it serves and the protocol route of its
    models; ``bento_server`` for the rest."""
    if keyed_server is not None and any(name.lower() in KEY_HEADERS for name in headers or {}):
        return keyed_server
    protocol = re.fullmatch(r"/v2/models/([^/]+)/.*", path)
    if path.startswith(OTHER_STACK_ROUTES) or (protocol and protocol[1] not in SESSION_MODELS):
        return any_model_server
    return bento_server


@pytest.fixture(scope="module")
def answers(bento_server, any_model_server, keyed_server) -> dict[str, httpx.Response]:
    """Every example of the page sent in the order written (a later one, /metrics, sees the earlier)."""
    result = {}
    for example in EXAMPLES:
        server = server_for(example.path, bento_server, any_model_server, keyed_server, example.headers)
        result[example.id] = server.client.request(
            example.method,
            example.path,
            headers=example.headers,
            content=None if example.body is None else example.body.encode(),
            timeout=30,
        )
    return result


# ---- the checks ---------------------------------------------------------------------------------------


@pytest.mark.triton
@pytest.mark.bento
@pytest.mark.slow
@pytest.mark.parametrize("example", EXAMPLES, ids=[e.id for e in EXAMPLES])
def test_service_page_example(example: Example, answers):
    response = answers[example.id]
    problems = answer_mismatches(example, response.status_code, response.headers, response.text)
    assert not problems, f"{example.id}: the service answers otherwise:\n- " + "\n- ".join(problems)


@pytest.mark.triton
@pytest.mark.bento
@pytest.mark.slow
def test_every_route_has_an_example(bento_server):
    """Each route of the service's OpenAPI schema (its own list of endpoints) is shown on the page."""
    schema = bento_server.client.get("/docs.json", timeout=10).json()
    routes = {(method.upper(), path) for path, methods in schema["paths"].items() for method in methods}
    shown = {(e.method, e.path) for e in EXAMPLES}

    def fits(route: tuple[str, str], example: tuple[str, str]) -> bool:
        """An example of the route: its method, and its path with each {parameter} of the route
        filled in (a route without parameters: the very path)."""
        pattern = "/".join("[^/]+" if p.startswith("{") else re.escape(p) for p in route[1].split("/"))
        return route[0] == example[0] and re.fullmatch(pattern, example[1]) is not None

    missing = sorted(r for r in routes if not any(fits(r, e) for e in shown))
    assert not missing, f"routes with no example in {SERVICE_PAGE.name}: {missing}"
    unknown = sorted(
        e for e in shown - {("GET", "/docs.json")} if not any(fits(r, e) for r in routes)
    )  # the schema itself is not among its paths
    assert not unknown, f"examples in {SERVICE_PAGE.name} for routes the service does not have: {unknown}"


# ---- curl lines and python blocks in README.md and docs/ ----------------------------------------------


@dataclass(frozen=True)
class Curl:
    where: str
    method: str
    port: int
    path: str
    headers: dict[str, str]
    body: str | None


def parse_curl(command: str, where: str) -> Curl:
    """``curl [-s] [-X M] [-H 'k: v'] [-d BODY] HOST:PORT/PATH``; anything else is refused, so that every
    curl a reader may copy is one this test can send."""
    if "$" in command or "`" in command:
        raise ValueError(f"{where}: {command!r} uses shell substitution; write the literal request")
    words = shlex.split(command)
    method, headers, body, url = None, {}, None, None
    i = 1
    while i < len(words):
        word = words[i]
        if word in ("-s", "-S", "-sS", "--silent", "-i", "-f", "--fail"):
            pass
        elif word in ("-X", "--request"):
            i += 1
            method = words[i]
        elif word in ("-H", "--header"):
            i += 1
            name, _, value = words[i].partition(":")
            headers[name.strip()] = value.strip()
        elif word in ("-d", "--data", "--data-raw"):
            i += 1
            body = words[i]
        elif word.startswith("-"):
            raise ValueError(f"{where}: curl option {word} is not one this test knows; keep examples plain")
        else:
            url = word
        i += 1
    match = re.fullmatch(r"(?:https?://)?(?:localhost|127\.0\.0\.1):(\d+)(/\S*)", url or "")
    if match is None:
        raise ValueError(f"{where}: {url!r}: a curl example's URL must be localhost:PORT/PATH")
    return Curl(
        where, method or ("POST" if body is not None else "GET"), int(match[1]), match[2], headers, body
    )


def curl_examples() -> list[Curl]:
    found = []
    for page in PAGES:
        for block in fenced_blocks(page):
            if block.lang not in ("bash", "sh", "shell", "console"):
                continue
            logical, first = "", 0
            for offset, line in enumerate(block.text.splitlines()):
                if not logical:
                    first = block.line + 1 + offset
                logical += line.rstrip().removesuffix("\\") + " "
                if line.rstrip().endswith("\\"):
                    continue
                if logical.strip().startswith("curl "):
                    command = shlex.join(shlex.split(logical.strip(), comments=True))
                    found.append(parse_curl(command, f"{page.relative_to(ROOT)}:{first}"))
                logical = ""
    return found


CURLS = curl_examples()
# The ports the pages use: the Bento's (README, service.md) and Triton's HTTP port (local-triton.md).
BENTO_PORT, TRITON_HTTP_PORT = 3000, 8000


def test_readme_has_a_curl():
    assert any(c.where.startswith("README.md") for c in CURLS), "README.md shows no curl"


@pytest.mark.triton
@pytest.mark.bento
@pytest.mark.slow
@pytest.mark.parametrize("curl", CURLS, ids=[f"{c.where} {c.method} {c.path}" for c in CURLS])
def test_curl_example_hits_a_real_route(curl: Curl, bento_server, any_model_server, triton_server):
    if curl.port == BENTO_PORT:
        client = server_for(curl.path, bento_server, any_model_server).client
    elif curl.port == TRITON_HTTP_PORT:
        client = httpx.Client(base_url=f"http://{triton_server.http_url}", timeout=30)
    else:
        pytest.fail(f"{curl.where}: port {curl.port} is neither the Bento's (3000) nor Triton's HTTP (8000)")
    if curl.body is not None and "json" in curl.headers.get("content-type", "").lower():
        json.loads(curl.body)
    response = client.request(
        curl.method,
        curl.path,
        headers=curl.headers,
        content=None if curl.body is None else curl.body.encode(),
    )
    assert response.status_code == 200, (
        f"{curl.where}: {curl.method} {curl.path}: {response.status_code} {response.text[:300]}"
    )
    if curl.port == BENTO_PORT and response.headers.get("content-type", "").startswith("application/json"):
        response.json()


def python_examples() -> list[tuple[str, str]]:
    return [
        (f"{page.relative_to(ROOT)}:{block.line}", block.text)
        for page in PAGES
        for block in fenced_blocks(page)
        if block.lang == "python"
    ]


PYTHON = python_examples()


@pytest.mark.triton
@pytest.mark.bento
@pytest.mark.slow
@pytest.mark.parametrize(("where", "code"), PYTHON, ids=[w for w, _ in PYTHON])
def test_python_example_runs(where: str, code: str, triton_server, bento_server, model_repo, tmp_path):
    """Run as written, with the session's addresses and repository in place of the defaults (Triton's,
    and the Bento's for ``http://127.0.0.1:3000``); each ``print(...)  # OUTPUT`` line must print OUTPUT."""
    code = (
        code.replace('"model_repository/', f'"{model_repo}/')
        .replace("127.0.0.1:8001", triton_server.grpc_url)
        .replace("127.0.0.1:8000", triton_server.http_url)
        .replace("http://127.0.0.1:3000", bento_server.url)
    )
    expected = [m[1].strip() for m in re.finditer(r"^\s*print\(.*\)\s+# (.*)$", code, re.MULTILINE)]
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 0, f"{where} failed:\n{done.stderr[-3000:]}"
    assert done.stdout.splitlines() == expected, f"{where} printed {done.stdout!r}, the page says {expected}"
