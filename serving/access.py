"""API keys and rate limits: ASGI middleware in front of every route of the service.

With ``access.require_keys`` (off by default; the deploy overlays turn it on) every request but
``/healthz``, ``/livez``, ``/readyz`` and ``/metrics`` (probes and the scraper stay open) must carry a
valid key, as ``Authorization: Bearer KEY`` (what OpenAI-style clients send) or ``X-API-Key: KEY``;
otherwise 401 with the service's error body, the same for a missing and a wrong key apart from the
message, and nothing about which keys exist. The middleware sits in front of every route, so routes
added later are covered without a line of their own.

Keys come from ``access.keys_file`` and from the environment variable ``access.keys_env``
(``MODELPACK_API_KEYS``): one key per line (or per comma in the variable), either the key itself or
its hash ``sha256:<64 hex>``, optionally followed by a name for the logs. Only hashes are kept in
memory: a presented key is hashed and compared with every known hash by ``hmac.compare_digest``,
all of them every time, so the time taken says nothing about how close a guess came or which key
matched. Keys are read when the service starts.

``access.rate_limit``: a token bucket per key (``requests_per_s`` refill, ``burst`` size); a request
that finds its bucket empty gets 429 with ``Retry-After`` (whole seconds until a token is back). The
buckets live in the worker process: with several replicas (or workers) a key gets the limit once per
worker.

    python -m serving.access new-key [NAME]   # a new random key, and the line to put in the keys file
    python -m serving.access hash < keys.txt  # the sha256: line of each key read from stdin
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import math
import os
import secrets
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from core.errors import InvalidArgument, NotFound, RateLimited, ToolkitError, Unauthorized
from serving.settings import AccessSettings

log = logging.getLogger(__name__)

# Probes and the metrics scraper never need a key.
OPEN_PATHS = frozenset({"/healthz", "/livez", "/readyz", "/metrics"})
HASH_PREFIX = "sha256:"
MIN_KEY_CHARS = 16  # a plain key shorter than this is refused (new-key makes 43-character keys)
HOW_TO_SEND = "send it as `Authorization: Bearer KEY` or `X-API-Key: KEY`"


def key_hash(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8")).digest()


@dataclass(frozen=True)
class ApiKey:
    """One accepted key: its SHA-256 and the name logs and rate-limit buckets know it by."""

    digest: bytes
    name: str


def parse_keys(text: str, source: str, *, separators: str = "\n") -> list[ApiKey]:
    """Keys from a keys file (one per line) or the environment variable (lines or commas): ``KEY [NAME]``
    or ``sha256:<hex> [NAME]``; blank lines and ``#`` comments are skipped. InvalidArgument naming the
    entry and the fix for anything else."""
    entries = [text]
    for separator in separators:
        entries = [part for entry in entries for part in entry.split(separator)]
    keys = []
    for number, raw in enumerate(entries, start=1):
        entry = raw.split("#", 1)[0].strip()
        if not entry:
            continue
        words = entry.split()
        if len(words) > 2:
            raise InvalidArgument(
                f"{source}: entry {number} has {len(words)} words; write `KEY [NAME]` or `sha256:HEX [NAME]`",
                field="access.keys",
            )
        value, name = words[0], (words[1] if len(words) == 2 else None)
        if value.startswith(HASH_PREFIX):
            hexdigest = value.removeprefix(HASH_PREFIX)
            if len(hexdigest) != 64 or any(c not in "0123456789abcdef" for c in hexdigest.lower()):
                raise InvalidArgument(
                    f"{source}: entry {number}: a hash is `sha256:` and 64 hex digits "
                    "(python -m serving.access hash < keys.txt prints them)",
                    field="access.keys",
                )
            digest = bytes.fromhex(hexdigest)
        else:
            if len(value) < MIN_KEY_CHARS:
                raise InvalidArgument(
                    f"{source}: entry {number}: a key of {len(value)} characters is too short to be "
                    f"secret (at least {MIN_KEY_CHARS}); make one with `python -m serving.access new-key`",
                    field="access.keys",
                )
            digest = key_hash(value)
        keys.append(ApiKey(digest, name or HASH_PREFIX + digest.hex()[:12]))
    return keys


class TokenBucket:
    """``burst`` tokens, refilled at ``rate`` per second; a request takes one."""

    def __init__(self, rate: float, burst: int, now: float) -> None:
        self.rate = rate
        self.burst = burst
        self.tokens = float(burst)
        self.updated = now

    def take(self, now: float) -> float:
        """0 when a token was taken, else the seconds until one is back (nothing taken)."""
        self.tokens = min(self.burst, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        if self.tokens >= 1:
            self.tokens -= 1
            return 0.0
        return (1 - self.tokens) / self.rate


@dataclass
class AccessPolicy:
    """Who may call the service, and how often."""

    require_keys: bool
    keys: list[ApiKey]
    rate: float = 0.0  # requests per second per key; 0: no limit
    burst: int = 1
    clock: Callable[[], float] = time.monotonic
    buckets: dict[str, TokenBucket] = field(default_factory=dict)

    @classmethod
    def from_settings(cls, settings: AccessSettings, environ: dict[str, str] | None = None) -> AccessPolicy:
        """Read the keys the settings point at; with ``require_keys`` and no key anywhere, refuse to
        start (a service that requires keys nobody has is a misconfiguration, not a locked door)."""
        environ = os.environ if environ is None else environ
        keys: list[ApiKey] = []
        sources = []
        if settings.keys_file is not None:
            path = Path(settings.keys_file)
            sources.append(str(path))
            if not path.is_file():
                raise NotFound(
                    f"access.keys_file: {path} does not exist; create it (one key or sha256: hash per line) "
                    "or leave keys_file out",
                    field="access.keys_file",
                )
            keys += parse_keys(path.read_text(encoding="utf-8"), str(path))
        sources.append(f"${settings.keys_env}")
        if environ.get(settings.keys_env):
            keys += parse_keys(environ[settings.keys_env], f"${settings.keys_env}", separators="\n,")
        if settings.require_keys and not keys:
            raise InvalidArgument(
                f"access.require_keys is true but no API key was found in {' nor '.join(sources)}; add keys "
                "(`python -m serving.access new-key` makes one) or set require_keys: false",
                field="access.keys_file",
            )
        return cls(
            require_keys=settings.require_keys,
            keys=keys,
            rate=settings.rate_limit.requests_per_s,
            burst=settings.rate_limit.burst,
        )

    def identify(self, presented: str | None) -> ApiKey:
        """The key ``presented`` is, compared in constant time with every known key; Unauthorized else."""
        if not presented:
            raise Unauthorized(
                f"authorization: this service needs an API key; {HOW_TO_SEND}", field="authorization"
            )
        digest = key_hash(presented)
        found = None
        for key in self.keys:  # every key, every time: no early exit
            if hmac.compare_digest(digest, key.digest):
                found = key
        if found is None:
            raise Unauthorized(
                f"authorization: the API key is not valid; {HOW_TO_SEND} with a key you were given",
                field="authorization",
            )
        return found

    def admit(self, key: ApiKey) -> None:
        """Take a token of the key's bucket; RateLimited (429, Retry-After) when it is empty."""
        if self.rate <= 0:
            return
        now = self.clock()
        bucket = self.buckets.get(key.name)
        if bucket is None:
            bucket = self.buckets[key.name] = TokenBucket(self.rate, self.burst, now)
        wait = bucket.take(now)
        if wait > 0:
            retry = max(1, math.ceil(wait))
            raise RateLimited(
                f"rate limit: this API key may send {self.rate:g} requests/s (bursts of {self.burst}); "
                f"retry after {retry} s",
                retry_after_s=retry,
                field="authorization",
            )


def presented_key(headers: list[tuple[bytes, bytes]]) -> str | None:
    """The key of ``Authorization: Bearer KEY``, else of ``X-API-Key: KEY``."""
    bearer = api_key = None
    for name, value in headers:
        name = name.lower()
        if name == b"authorization":
            scheme, _, token = value.decode("latin-1").strip().partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                bearer = token.strip()
        elif name == b"x-api-key":
            api_key = value.decode("latin-1").strip() or None
    return bearer or api_key


class AccessMiddleware:
    """ASGI middleware: every HTTP request but those of ``OPEN_PATHS`` needs a valid key (when the
    policy requires keys) and a token of its key's bucket, else 401 / 429 in the service's error shape.
    Sits inside ``RequestContextMiddleware`` (the refusal carries the request id)."""

    def __init__(self, app: Any, policy: AccessPolicy | None = None) -> None:
        # Nothing here may fail: Starlette builds its middleware when the first event (the lifespan)
        # arrives, and uvicorn takes an error then for "no lifespan" and serves on. The policy is read
        # at the first request; ModelService.__init__ reads it at start-up, where an error stops it.
        self.app = app
        self._policy = policy

    @property
    def policy(self) -> AccessPolicy:
        if self._policy is None:
            from serving.settings import load_settings

            self._policy = AccessPolicy.from_settings(load_settings().access)
            if self._policy.require_keys:
                rate = self._policy.rate
                log.info(
                    "access: %d API key(s); rate limit %s",
                    len(self._policy.keys),
                    f"{rate:g}/s, burst {self._policy.burst} per key" if rate > 0 else "none",
                )
        return self._policy

    async def __call__(self, scope: dict, receive: Callable, send: Callable) -> None:
        if scope["type"] != "http" or not self.policy.require_keys or scope.get("path") in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        presented = presented_key(scope.get("headers") or [])
        try:
            key = self.policy.identify(presented)
            self.policy.admit(key)
        except ToolkitError as err:
            await self._refuse(err, presented, scope, receive, send)
            return
        await self.app(scope, receive, send)

    async def _refuse(self, err: ToolkitError, presented: str | None, scope, receive, send) -> None:
        from serving.http import error_response
        from serving.observability import metrics

        reason = (
            "rate_limited" if isinstance(err, RateLimited) else "invalid_key" if presented else "missing_key"
        )
        metrics()["access_denied"].labels(reason=reason).inc()
        status = err.http_status
        log.warning(
            "%s %s %d: %s",
            scope.get("method"),
            scope.get("path"),
            status,
            reason,
            extra={"fields": {"endpoint": scope.get("path"), "status": status, "reason": reason}},
        )
        await error_response(err)(scope, receive, send)


# ---- the command line: keys for the keys file ---------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(
        prog="python -m serving.access", description="API keys for the service's access.keys_file."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    new = commands.add_parser(
        "new-key", help="print a new random key (give it to the client) and its hash line"
    )
    new.add_argument("name", nargs="?", default=None, help="a name for the logs, e.g. the client's")
    commands.add_parser("hash", help="read keys from stdin, one per line; print each one's sha256: line")
    args = parser.parse_args(argv)
    if args.command == "new-key":
        if args.name is not None and (not args.name or any(c.isspace() or c == "#" for c in args.name)):
            print(
                f"error: name {args.name!r}: one word without spaces or #, e.g. billing-batch",
                file=sys.stderr,
            )
            return 2
        key = secrets.token_urlsafe(32)
        line = HASH_PREFIX + key_hash(key).hex() + (f" {args.name}" if args.name else "")
        print(f"key:  {key}\nline: {line}")
        return 0
    for raw in sys.stdin:
        key = raw.strip()
        if not key:
            continue
        if len(key) < MIN_KEY_CHARS:
            print(
                f"error: a key of {len(key)} characters is too short (at least {MIN_KEY_CHARS})",
                file=sys.stderr,
            )
            return 2
        print(HASH_PREFIX + key_hash(key).hex())
    return 0


if __name__ == "__main__":
    sys.exit(main())
