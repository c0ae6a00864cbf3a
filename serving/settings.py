"""The service's configuration: ``service.yaml`` (or the file ``$MODELPACK_SERVICE_CONFIG`` names), read
into frozen pydantic models. Unknown keys are refused and one error lists every bad field, so a typo
never passes as a silently ignored line."""

import functools
import math
import os
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from core.errors import InvalidArgument, NotFound
from core.repository import validate_name
from core.tasks import TASK_SPECS

CONFIG_ENV = "MODELPACK_SERVICE_CONFIG"
TRITON_URL_ENV = "MODELPACK_TRITON_URL"
REPOSITORY_ENV = "MODELPACK_REPOSITORY"
# The `access` section as YAML/JSON (containers without a config file of their own: ECS), and the API
# keys themselves (a secret: Kubernetes/ECS put it in the environment or a file, never service.yaml).
ACCESS_ENV = "MODELPACK_ACCESS"
API_KEYS_ENV = "MODELPACK_API_KEYS"
# The bento ships service.yaml beside service.py, one folder above this package.
DEFAULT_CONFIG = Path(__file__).resolve().parent.parent / "service.yaml"
# The tasks of the registry: pydantic refuses any other, listing these.
TaskName = Literal[tuple(TASK_SPECS)]


TARGET_FORMS = "host:port, dns:///name:port or ipv4:10.0.0.1:8001,10.0.0.2:8001"


def triton_addresses(url: str) -> list[tuple[str, int]]:
    """The (host, port) pairs of a gRPC target as ``triton.url`` takes it, or ValueError naming the form.

    ``host:port`` (one address; the name is resolved as gRPC does), ``dns:///name:port`` (every address
    the name resolves to, re-resolved when a channel is opened: a Kubernetes headless Service) and
    ``ipv4:h1:p1,h2:p2`` (a fixed list). The channel spreads calls over the addresses round-robin."""
    import ipaddress

    def host_port(part: str, scheme: str) -> tuple[str, int]:
        host, sep, port = part.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(
                f"{url!r}: {part!r} is not host:port; write Triton's gRPC address, e.g. 127.0.0.1:8001 "
                f"(forms: {TARGET_FORMS})"
            )
        if scheme == "ipv4":
            try:
                ipaddress.IPv4Address(host)
            except ValueError:
                raise ValueError(
                    f"{url!r}: {host!r} is not an IPv4 address; ipv4: takes a list of addresses "
                    "(ipv4:10.0.0.1:8001,10.0.0.2:8001); for a name use dns:///name:port"
                ) from None
        elif any(c in host for c in "/, ") or (host.startswith("[") != host.endswith("]")):
            raise ValueError(f"{url!r}: {host!r} is not a host name; forms: {TARGET_FORMS}")
        return host, int(port)

    if "://" in url and not url.startswith("dns:///"):
        scheme = url.split("://", 1)[0]
        hint = (
            "dns: takes no authority: write dns:///name:port (three slashes)"
            if scheme == "dns"
            else "triton.url is Triton's gRPC address, not a URL"
        )
        raise ValueError(f"{url!r}: {hint}; forms: {TARGET_FORMS}")
    if url.startswith("dns:///"):
        return [host_port(url.removeprefix("dns:///"), "dns")]
    if url.startswith("ipv4:"):
        parts = url.removeprefix("ipv4:").split(",")
        if not all(p.strip() for p in parts):
            raise ValueError(f"{url!r}: an empty address in the list; write ipv4:10.0.0.1:8001,10.0.0.2:8001")
        return [host_port(p.strip(), "ipv4") for p in parts]
    if "," in url:
        raise ValueError(
            f"{url!r}: a list of addresses needs the ipv4: scheme (ipv4:10.0.0.1:8001,10.0.0.2:8001); for a "
            "name that resolves to several addresses write dns:///name:port"
        )
    return [host_port(url, "")]


class _Strict(BaseModel):
    """Unknown keys are refused: a typo in service.yaml is an error, not a silently ignored line."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class TritonSettings(_Strict):
    url: str = Field(
        "127.0.0.1:8001",
        description="Triton's gRPC endpoint: host:port, dns:///name:port (every address the name resolves "
        "to, e.g. a headless Service) or ipv4:host:port,host:port; calls are spread round-robin",
    )
    timeout_s: float = Field(10.0, gt=0, le=300, description="longest wait for Triton per request, then 503")
    retry_after_s: int = Field(1, ge=1, le=3600, description="Retry-After sent with a 503")
    ready_timeout_s: float = Field(2.0, gt=0, le=60, description="per readiness probe call")
    ready_interval_s: float = Field(
        1.0, gt=0, le=60, description="how often Triton is checked in the background; /readyz answers from it"
    )
    max_connection_age_s: float = Field(
        0.0,
        ge=0,
        le=86_400,
        description="open a new gRPC channel after this many seconds (so a dns:/// name is resolved again "
        "and Triton pods added since get calls); 0: keep one channel",
    )

    @field_validator("url")
    @classmethod
    def _target(cls, value: str) -> str:
        triton_addresses(value)
        return value


class Limits(_Strict):
    max_items: int = Field(64, ge=1, le=4096, description="texts, candidates or images per request")
    max_text_chars: int = Field(10_000, ge=1, description="characters per text, before tokenizing")
    max_body_bytes: int = Field(16 * 1024 * 1024, ge=1024, description="request body size, else 413")
    # BentoML parses a body on the event loop: 16 MiB of pixel array took seconds there (every request
    # waited). Counted from the body's separators before it is parsed; a file is one value.
    max_json_values: int = Field(
        210_000, ge=100, description="values in a JSON body (an H x W x 3 pixel array is ~4*H*W), else 413"
    )
    max_image_pixels: int = Field(4096 * 4096, ge=1, description="decoded width*height per image")
    # What one request may make the service decode: checked from the images' headers (and the arrays'
    # lengths) before any pixel is decoded, so a batch of small files that inflate is refused up front.
    max_request_pixels: int = Field(
        4096 * 4096, ge=1, description="decoded width*height of all the images of one request, else 413"
    )
    decode_threads: int = Field(2, ge=1, le=64, description="threads decoding images and arrays")
    decode_timeout_s: float = Field(
        10.0, gt=0, le=300, description="longest wait for a request's images to be decoded, then 503"
    )


class Batching(_Strict):
    """Merge concurrent requests for one model version into one Triton call (see docs/figures.md)."""

    coalesce: bool = True
    max_batch_size: int = Field(
        64, ge=1, le=4096, description="rows per merged call (also capped by Triton's)"
    )
    max_in_flight: int = Field(2, ge=1, le=64, description="Triton calls in flight per model version")
    split_lengths: bool = Field(
        True,
        description="merged texts of different lengths go out as one call per length bucket (16, 24, 32, "
        "48, ...), so a short one is not padded to the longest (mixed-length traffic, docs/figures.md)",
    )


# Where a text model's requests are tokenized: in this service (it sends NAME the token tensors), or
# in Triton (it sends the texts to the entry's ensemble NAME_text, whose NAME_tokenizer pads them).
Tokenize = Literal["service", "triton"]
# The default for text models: the faster of the two on the benchmark workloads (docs/figures.md).
DEFAULT_TOKENIZE: Tokenize = "service"


class CacheSettings(_Strict):
    """The Bento's shared response cache (serving/cache.py): each item's model output row in Redis, keyed
    by model, version, a digest of what makes its tensors (manifest, tokenizer, max_length, image
    settings) and the item itself. Off by default; Redis down or slow means the cache is bypassed."""

    enabled: bool = False
    redis_url: str = Field(
        "redis://127.0.0.1:6379/0", description="redis://host:port/db, rediss:// (TLS) or unix:///path"
    )
    ttl_s: int = Field(86_400, ge=1, le=30 * 86_400, description="how long a cached row is kept")
    timeout_s: float = Field(0.25, gt=0, le=5, description="per Redis call; a slower call is a bypass")
    retry_after_s: float = Field(
        5.0, ge=0, le=600, description="after a Redis failure the cache is bypassed this long"
    )
    key_prefix: str = Field("modelpack", min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.:-]+$")

    @field_validator("redis_url")
    @classmethod
    def _url(cls, value: str) -> str:
        if not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError(
                f"{value!r} is not a Redis URL; write redis://host:6379/0, rediss://host:6380/0 or "
                "unix:///path/to/redis.sock"
            )
        return value


class RateLimit(_Strict):
    """A token bucket per API key (per Bento worker: replicas x workers multiply it)."""

    requests_per_s: float = Field(0.0, ge=0, le=1_000_000, description="refill rate; 0: no limit")
    burst: int = Field(20, ge=1, le=1_000_000, description="requests a key may send at once")


class AccessSettings(_Strict):
    """API keys and rate limits (serving/access.py). Off by default; the deploy overlays turn them on."""

    require_keys: bool = Field(
        False, description="every route but /healthz, /livez, /readyz and /metrics needs a valid API key"
    )
    keys_file: Path | None = Field(
        None, description="one key per line, plain or as sha256:<hex> (relative paths: to this file's folder)"
    )
    keys_env: str = Field(
        API_KEYS_ENV, description="an environment variable holding keys, comma or newline separated"
    )
    rate_limit: RateLimit = RateLimit()

    @model_validator(mode="after")
    def _keys_for_limits(self) -> "AccessSettings":
        if self.rate_limit.requests_per_s > 0 and not self.require_keys:
            raise ValueError(
                "rate_limit is per API key: set require_keys: true (and give keys), or requests_per_s: 0"
            )
        return self


class ModelSettings(_Strict):
    name: str
    task: TaskName
    versions: dict[int, float] | None = Field(
        None, description="canary split, version -> weight (e.g. {1: 90, 2: 10}); default: the latest version"
    )
    max_length: int | None = Field(None, ge=1, description="tokens after truncation; at most the manifest's")
    top_k: int = Field(5, ge=1, description="default number of labels returned by classifiers")
    tokenize: Tokenize | None = Field(
        None,
        description="text models: 'service' (tokenize here, send token tensors to NAME) or 'triton' (send "
        f"the texts to NAME_text); default {DEFAULT_TOKENIZE!r}",
    )

    @model_validator(mode="after")
    def _tokenize_text_only(self) -> "ModelSettings":
        if self.tokenize is not None and TASK_SPECS[self.task].input_kind != "text":
            raise ValueError(
                f"tokenize: {self.task} models take no text; leave `tokenize` out for {self.name!r}"
            )
        return self

    @property
    def tokenize_in(self) -> Tokenize | None:
        """Where this model's texts are tokenized; None for a model that takes no text."""
        if TASK_SPECS[self.task].input_kind != "text":
            return None
        return self.tokenize or DEFAULT_TOKENIZE

    @field_validator("name")
    @classmethod
    def _safe_name(cls, value: str) -> str:
        try:
            return validate_name(value)
        except InvalidArgument as err:
            raise ValueError(str(err).removeprefix("--name: ")) from None

    @field_validator("versions")
    @classmethod
    def _split(cls, value: dict[int, float] | None) -> dict[int, float] | None:
        if value is None:
            return None
        if not value:
            raise ValueError("an empty split; leave `versions` out to serve the latest version")
        for version, weight in value.items():
            if version < 1:
                raise ValueError(f"version {version} is not a positive integer")
            if not weight >= 0 or math.isinf(weight):
                raise ValueError(f"weight {weight} of version {version} must be a finite number >= 0")
        if sum(value.values()) <= 0:
            raise ValueError(f"the weights {dict(value)} add up to 0; give at least one version a weight > 0")
        return value


class ServiceSettings(_Strict):
    repository: Path = Field(Path("model_repository"), description="relative paths: to this file's folder")
    triton: TritonSettings = TritonSettings()
    limits: Limits = Limits()
    batching: Batching = Batching()
    log_requests: bool = Field(True, description="one JSON log line per request")
    refresh_s: float = Field(
        0.5,
        gt=0,
        le=60,
        description="how often the repository's served versions and Triton's ready ones are read again",
    )
    cache: CacheSettings = CacheSettings()
    access: AccessSettings = AccessSettings()
    models: list[ModelSettings] = Field(min_length=1)

    @model_validator(mode="after")
    def _unique_names(self) -> "ServiceSettings":
        names = [m.name for m in self.models]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"models: {', '.join(duplicates)} listed more than once; list each model once")
        return self


def read_settings(path: str | os.PathLike, *, environ: dict[str, str] | None = None) -> ServiceSettings:
    """Parse and validate a service configuration file; one error listing every bad field.

    ``$MODELPACK_TRITON_URL`` and ``$MODELPACK_REPOSITORY`` (from ``environ``, default ``os.environ``)
    override ``triton.url`` and ``repository``, for containers that get them from their deployment.
    """
    environ = os.environ if environ is None else environ
    path = Path(path)
    if not path.is_file():
        raise NotFound(
            f"{path}: no service configuration there; write one (see service.yaml) "
            f"or point ${CONFIG_ENV} at it",
            field="config",
        )
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        raise InvalidArgument(f"{path}: not valid YAML: {err}", field="config") from err
    if not isinstance(data, dict):
        raise InvalidArgument(
            f"{path}: expected a mapping with a `models` list, got {type(data).__name__}", field="config"
        )
    if environ.get(TRITON_URL_ENV):
        data.setdefault("triton", {})
        if isinstance(data["triton"], dict):
            data["triton"]["url"] = environ[TRITON_URL_ENV]
    if environ.get(REPOSITORY_ENV):
        data["repository"] = environ[REPOSITORY_ENV]
    if environ.get(ACCESS_ENV):
        try:
            access = yaml.safe_load(environ[ACCESS_ENV])
        except yaml.YAMLError as err:
            raise InvalidArgument(f"${ACCESS_ENV}: not valid YAML or JSON: {err}", field="access") from None
        if not isinstance(access, dict):
            raise InvalidArgument(
                f'${ACCESS_ENV}: expected a mapping such as {{"require_keys": true}}, got {access!r}',
                field="access",
            )
        data["access"] = access
    try:
        settings = ServiceSettings.model_validate(data)
    except ValidationError as err:
        lines = []
        for problem in err.errors(include_url=False):
            where = ".".join(str(p) for p in problem["loc"]) or "(top level)"
            given = f" (given: {problem['input']!r})" if problem["type"] != "missing" else ""
            lines.append(f"- {where}: {problem['msg']}{given}")
        first = str(err.errors()[0]["loc"][0]) if err.errors() and err.errors()[0]["loc"] else "config"
        raise InvalidArgument(
            f"{path}: {err.error_count()} invalid setting(s):\n" + "\n".join(lines), field=first
        ) from None
    if not settings.repository.is_absolute():
        settings = settings.model_copy(update={"repository": (path.parent / settings.repository).resolve()})
    keys_file = settings.access.keys_file
    if keys_file is not None and not keys_file.is_absolute():
        access = settings.access.model_copy(update={"keys_file": (path.parent / keys_file).resolve()})
        settings = settings.model_copy(update={"access": access})
    return settings


@functools.lru_cache(maxsize=1)
def load_settings() -> ServiceSettings:
    """The settings of this process: ``$MODELPACK_SERVICE_CONFIG`` or the service.yaml beside service.py."""
    return read_settings(os.environ.get(CONFIG_ENV) or DEFAULT_CONFIG)
