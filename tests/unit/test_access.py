"""API keys and rate limits (serving/access.py): the keys file and variable, the constant-time lookup, the
token bucket on a controlled clock, the settings around them, and the middleware in front of a real
Starlette app over real HTTP semantics (httpx's ASGI transport): 401/429 in the service's error shape,
open probe paths, Retry-After."""

from __future__ import annotations

import hashlib

import httpx
import pytest
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route

from core.errors import InvalidArgument, NotFound, RateLimited, Unauthorized
from serving.access import AccessMiddleware, AccessPolicy, TokenBucket, main, parse_keys, presented_key
from serving.http import RequestContextMiddleware
from serving.settings import AccessSettings, read_settings

KEY = "k3y-for-the-unit-tests-0001"
OTHER = "another-key-for-the-tests-2"


def sha(key: str) -> str:
    return "sha256:" + hashlib.sha256(key.encode()).hexdigest()


def test_keys_file_takes_plain_keys_hashes_names_and_comments():
    text = f"# clients\n{KEY} billing\n\n{sha(OTHER)}   # reports, by hash\n"
    keys = parse_keys(text, "keys.txt")
    assert [k.name for k in keys] == ["billing", sha(OTHER)[:19]]
    assert keys[0].digest == hashlib.sha256(KEY.encode()).digest()
    assert keys[1].digest.hex() == sha(OTHER).removeprefix("sha256:")
    from_env = parse_keys(f"{KEY},{sha(OTHER)} reports", "$MODELPACK_API_KEYS", separators="\n,")
    assert [k.name for k in from_env] == [sha(KEY)[:19], "reports"]


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("short-key", "entry 1: a key of 9 characters is too short"),
        ("sha256:abcd", "entry 1: a hash is `sha256:` and 64 hex digits"),
        (f"{KEY} two names", "entry 1 has 3 words"),
        ("# none\n" + "sha256:" + "g" * 64, "entry 2: a hash is"),
    ],
)
def test_a_bad_keys_entry_is_named(text, says):
    with pytest.raises(InvalidArgument, match=says) as caught:
        parse_keys(text, "keys.txt")
    assert caught.value.field == "access.keys"


def test_identify_finds_the_key_or_refuses_without_naming_any():
    policy = AccessPolicy(True, parse_keys(f"{KEY} billing\n{sha(OTHER)} reports", "t"))
    assert policy.identify(KEY).name == "billing"
    assert policy.identify(OTHER).name == "reports"
    for presented, says in ((None, "needs an API key"), ("", "needs an API key"), ("wrong" * 5, "not valid")):
        with pytest.raises(Unauthorized, match=says) as caught:
            policy.identify(presented)
        message = str(caught.value)
        assert KEY not in message and OTHER not in message and "billing" not in message
        assert caught.value.http_status == 401 and caught.value.field == "authorization"


def test_presented_key_from_bearer_or_x_api_key():
    assert presented_key([(b"authorization", b"Bearer abc")]) == "abc"
    assert presented_key([(b"Authorization", b"bearer  abc ")]) == "abc"
    assert presented_key([(b"x-api-key", b"xyz")]) == "xyz"
    assert presented_key([(b"authorization", b"Basic dXNlcjpwYXNz"), (b"x-api-key", b"xyz")]) == "xyz"
    assert presented_key([(b"authorization", b"Bearer ")]) is None
    assert presented_key([]) is None


def test_token_bucket_allows_a_burst_then_refills_at_the_rate():
    bucket = TokenBucket(rate=2.0, burst=3, now=100.0)
    assert [bucket.take(100.0) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert bucket.take(100.0) == pytest.approx(0.5)  # one token comes back in 1/rate seconds
    assert bucket.take(100.25) == pytest.approx(0.25)
    assert bucket.take(100.5) == 0.0
    assert bucket.take(110.0) == 0.0 and bucket.tokens == pytest.approx(2.0)  # never above the burst


def test_rate_limit_is_per_key_with_whole_second_retry_after():
    now = [0.0]
    policy = AccessPolicy(
        True, parse_keys(f"{KEY} a\n{OTHER} b", "t"), rate=0.1, burst=2, clock=lambda: now[0]
    )
    a, b = policy.keys
    policy.admit(a)
    policy.admit(a)
    with pytest.raises(RateLimited) as caught:
        policy.admit(a)
    assert caught.value.http_status == 429 and caught.value.retry_after_s == 10
    assert "0.1 requests/s (bursts of 2)" in str(caught.value)
    policy.admit(b)  # another key has its own bucket
    now[0] = 10.0
    policy.admit(a)


def test_policy_reads_the_file_and_the_variable(tmp_path):
    keys = tmp_path / "keys"
    keys.write_text(f"{sha(KEY)} billing\n", encoding="utf-8")
    settings = AccessSettings(require_keys=True, keys_file=keys)
    policy = AccessPolicy.from_settings(settings, environ={"MODELPACK_API_KEYS": f"{OTHER} env"})
    assert [k.name for k in policy.keys] == ["billing", "env"]
    with pytest.raises(InvalidArgument, match="no API key was found in .*keys nor \\$MODELPACK_API_KEYS"):
        keys.write_text("# nobody yet\n", encoding="utf-8")
        AccessPolicy.from_settings(settings, environ={})
    with pytest.raises(NotFound, match="access.keys_file: .*missing does not exist"):
        AccessPolicy.from_settings(AccessSettings(keys_file=tmp_path / "missing"), environ={})
    off = AccessPolicy.from_settings(AccessSettings(), environ={})
    assert not off.require_keys and off.keys == []


def test_settings_access_and_cache_sections(tmp_path):
    path = tmp_path / "service.yaml"
    path.write_text(
        "models: [{name: minilm, task: feature-extraction}]\n"
        "cache: {enabled: true, redis_url: 'redis://cache:6379/1', ttl_s: 60}\n"
        "access: {require_keys: true, keys_file: keys.txt, rate_limit: {requests_per_s: 5, burst: 10}}\n",
        encoding="utf-8",
    )
    settings = read_settings(path, environ={})
    assert settings.cache.enabled and settings.cache.redis_url == "redis://cache:6379/1"
    assert settings.access.keys_file == tmp_path / "keys.txt"  # relative to the settings file
    assert settings.access.rate_limit.burst == 10
    plain = tmp_path / "plain.yaml"
    plain.write_text("models: [{name: minilm, task: feature-extraction}]\n", encoding="utf-8")
    default = read_settings(plain, environ={})
    assert not default.cache.enabled and not default.access.require_keys  # both off unless asked for
    env = {"MODELPACK_ACCESS": '{"require_keys": false}'}
    assert not read_settings(path, environ=env).access.require_keys


@pytest.mark.parametrize(
    ("section", "says"),
    [
        ("access: {rate_limit: {requests_per_s: 5}}", "rate_limit is per API key: set require_keys: true"),
        ("access: {require_key: true}", "access.require_key: Extra inputs are not permitted"),
        ("cache: {enabled: true, redis_url: 'cache:6379'}", "is not a Redis URL; write redis://host:6379/0"),
        ("cache: {timeout_s: 0}", "cache.timeout_s: Input should be greater than 0"),
    ],
)
def test_bad_access_or_cache_settings_are_named(tmp_path, section, says):
    path = tmp_path / "service.yaml"
    path.write_text(f"models: [{{name: minilm, task: feature-extraction}}]\n{section}\n", encoding="utf-8")
    with pytest.raises(InvalidArgument, match=says):
        read_settings(path, environ={})


def test_access_variable_that_is_not_a_mapping_is_named(tmp_path):
    path = tmp_path / "service.yaml"
    path.write_text("models: [{name: minilm, task: feature-extraction}]\n", encoding="utf-8")
    with pytest.raises(InvalidArgument, match=r"\$MODELPACK_ACCESS: expected a mapping"):
        read_settings(path, environ={"MODELPACK_ACCESS": "true"})


# ---- the middleware in front of a real Starlette app -------------------------------------------------


async def _ok(request):
    return JSONResponse({"ok": True})


def _client(policy: AccessPolicy) -> httpx.Client:
    import asyncio

    routes = [
        Route(path, _ok, methods=["GET", "POST"]) for path in ("/embed", "/models", "/healthz", "/metrics")
    ]
    app = RequestContextMiddleware(AccessMiddleware(Starlette(routes=routes), policy))

    class Sync(httpx.BaseTransport):
        def __init__(self) -> None:
            self.inner = httpx.ASGITransport(app=app)

        def handle_request(self, request):
            async def run():
                response = await self.inner.handle_async_request(request)
                await response.aread()
                return response

            response = asyncio.run(run())
            return httpx.Response(response.status_code, headers=response.headers, content=response.content)

    return httpx.Client(transport=Sync(), base_url="http://service")


@pytest.fixture
def limits_settings(monkeypatch, tmp_path):
    """RequestContextMiddleware reads limits from the process's settings: give it a file."""
    from serving import settings as settings_module

    path = tmp_path / "service.yaml"
    path.write_text("models: [{name: minilm, task: feature-extraction}]\n", encoding="utf-8")
    monkeypatch.setenv("MODELPACK_SERVICE_CONFIG", str(path))
    settings_module.load_settings.cache_clear()
    yield
    settings_module.load_settings.cache_clear()


def test_middleware_refuses_without_a_key_and_keeps_probes_open(limits_settings):
    policy = AccessPolicy(True, parse_keys(f"{KEY} billing", "t"), rate=0.01, burst=2)
    client = _client(policy)
    for path in ("/healthz", "/metrics"):
        assert client.get(path).status_code == 200
    refused = client.post("/embed", headers={"X-Request-ID": "req-1"})
    assert refused.status_code == 401 and refused.headers["www-authenticate"].startswith("Bearer")
    assert refused.headers["x-request-id"] == "req-1"
    body = refused.json()
    assert set(body) == {"error", "field", "request_id"} and body["request_id"] == "req-1"
    assert body["field"] == "authorization" and KEY not in body["error"]
    wrong = client.get("/models", headers={"Authorization": "Bearer " + "x" * 30})
    assert wrong.status_code == 401 and "not valid" in wrong.json()["error"]

    assert client.post("/embed", headers={"Authorization": f"Bearer {KEY}"}).json() == {"ok": True}
    assert client.get("/models", headers={"X-API-Key": KEY}).status_code == 200
    limited = client.get("/models", headers={"X-API-Key": KEY})
    assert limited.status_code == 429 and limited.headers["retry-after"] == "100"
    assert limited.json()["field"] == "authorization" and "retry after 100 s" in limited.json()["error"]


def test_middleware_off_lets_everything_through(limits_settings):
    client = _client(AccessPolicy(False, []))
    assert client.post("/embed").status_code == 200


def test_new_key_prints_a_key_and_the_line_that_accepts_it(capsys):
    assert main(["new-key", "billing"]) == 0
    out = capsys.readouterr().out.splitlines()
    key = out[0].removeprefix("key:  ")
    line = out[1].removeprefix("line: ")
    assert len(key) >= 40 and line == f"{sha(key)} billing"
    assert AccessPolicy(True, parse_keys(line, "t")).identify(key).name == "billing"
    assert main(["new-key", "two words"]) == 2
