"""Triton ``config.pbtxt``: built, read and written through Triton's own protobuf.

The message is ``tritonclient.grpc.model_config_pb2.ModelConfig`` and the text format is
``google.protobuf.text_format``: no string templates. ``build_config`` validates every argument
(naming the field, the bad value and the fix), ``write_config`` replaces the file atomically and
checks that what it wrote parses back to the same message, ``read_config`` parses one back.
``set_batching`` changes the batching of an existing config (the tuner's settings); ``set_warmup``
declares the requests Triton runs through a model when it loads it; ``set_response_cache`` turns
Triton's response cache on or off for an entry.

Triton's response cache (``response_cache { enable: true }``) answers a request whose inputs it has seen
from memory instead of running the model, when the server runs with a cache (``--cache-config
local,size=...``; a server without one serves the entry as if the flag were not there). It is right
only for a model that answers the same input the same way every time: the converters turn it on for a
graph without random operators (``RANDOM_OPS``) and refuse to turn it on for one with them.
"""

from __future__ import annotations

import os
import stat
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from core.errors import CheckFailed, InvalidArgument, NotFound
from core.tasks import TensorSpec

PLATFORMS = ("onnxruntime_onnx", "tensorrt_plan")
INSTANCE_KINDS = {"cpu": mc.ModelInstanceGroup.KIND_CPU, "gpu": mc.ModelInstanceGroup.KIND_GPU}
ACCELERATORS = ("tensorrt",)
ACCELERATOR_PRECISIONS = ("FP16", "FP32")
DEFAULT_MAX_BATCH_SIZE = 64
DEFAULT_PREFERRED_BATCH_SIZES = (16, 32)
# 0: a lone request goes out at once instead of waiting for preferred sizes it will never fill; Triton
# still batches whatever queued while the model was busy (issue 16: 2000 halved throughput at
# concurrency 1 and won nothing at 8). `python -m benchmarks tune` searches other delays per machine.
DEFAULT_MAX_QUEUE_DELAY_US = 0
# ONNX operators whose output is not a function of their input: a graph with one of them is not
# deterministic, so Triton's response cache would replay one draw for ever.
RANDOM_OPS = (
    "Bernoulli",
    "Multinomial",
    "RandomNormal",
    "RandomNormalLike",
    "RandomUniform",
    "RandomUniformLike",
)

_DATA_TYPES = {
    "INT64": mc.TYPE_INT64,
    "INT32": mc.TYPE_INT32,
    "FP32": mc.TYPE_FP32,
    "FP16": mc.TYPE_FP16,
    "BOOL": mc.TYPE_BOOL,
}


def data_type(datatype: str) -> int:
    """Triton datatype name ("INT64") to the protobuf enum (TYPE_INT64)."""
    try:
        return _DATA_TYPES[datatype]
    except KeyError:
        raise InvalidArgument(
            f"datatype: unsupported {datatype!r}; use one of {', '.join(_DATA_TYPES)}", field="datatype"
        ) from None


def _positive(field: str, value: int, fix: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise InvalidArgument(f"{field}: must be a positive integer, got {value!r}; {fix}", field=field)
    return value


def version_policy(policy: str | Sequence[int] | None) -> mc.ModelVersionPolicy:
    """``"latest"`` / ``"latest:N"`` / ``"all"`` / a list of versions -> ModelVersionPolicy."""
    message = mc.ModelVersionPolicy()
    if policy is None or policy == "latest":
        message.latest.num_versions = 1
    elif policy == "all":
        message.all.SetInParent()
    elif isinstance(policy, str) and policy.startswith("latest:"):
        count = policy.split(":", 1)[1]
        if not count.isdigit() or int(count) <= 0:
            raise InvalidArgument(
                f"version_policy: bad count in {policy!r}; write e.g. 'latest:2'", field="version_policy"
            )
        message.latest.num_versions = int(count)
    elif not isinstance(policy, str) and policy:
        for version in policy:
            _positive("version_policy", version, "list version numbers such as [1, 2]")
        message.specific.versions.extend(sorted(set(policy)))
    else:
        raise InvalidArgument(
            f"version_policy: {policy!r} is not one of 'latest', 'latest:N', 'all' or a list of versions",
            field="version_policy",
        )
    return message


def build_config(
    name: str,
    inputs: Iterable[TensorSpec],
    outputs: Iterable[TensorSpec],
    *,
    platform: str = "onnxruntime_onnx",
    max_batch_size: int = DEFAULT_MAX_BATCH_SIZE,
    preferred_batch_sizes: Sequence[int] | None = None,
    max_queue_delay_us: int = DEFAULT_MAX_QUEUE_DELAY_US,
    instance_kind: str = "cpu",
    instance_count: int = 1,
    policy: str | Sequence[int] | None = "latest",
    parameters: dict[str, str] | None = None,
    accelerator: str | None = None,
    accelerator_precision: str = "FP16",
    response_cache: bool = False,
) -> mc.ModelConfig:
    """A validated ModelConfig. Shapes in ``inputs``/``outputs`` include the batch axis, which
    Triton leaves out of ``dims`` when ``max_batch_size`` > 0."""
    if platform not in PLATFORMS:
        raise InvalidArgument(
            f"platform: unsupported {platform!r}; use one of {', '.join(PLATFORMS)}", field="platform"
        )
    _positive("max_batch_size", max_batch_size, "set --max-batch-size to e.g. 64")
    if preferred_batch_sizes is None:
        preferred = [p for p in DEFAULT_PREFERRED_BATCH_SIZES if p <= max_batch_size]
    else:
        preferred = _preferred_sizes(preferred_batch_sizes, max_batch_size)
    _queue_delay(max_queue_delay_us)
    if instance_kind not in INSTANCE_KINDS:
        raise InvalidArgument(
            f"instance_group.kind: unsupported {instance_kind!r}; use one of {', '.join(INSTANCE_KINDS)}",
            field="instance_group.kind",
        )
    _positive("instance_group.count", instance_count, "set --instance-count to 1 or more")

    config = mc.ModelConfig(name=name, platform=platform, max_batch_size=max_batch_size)
    for spec in inputs:
        tensor = config.input.add(name=spec.name, data_type=data_type(spec.datatype), dims=spec.shape[1:])
        _batch_only(tensor, spec)
        if spec.ragged:
            tensor.allow_ragged_batch = True
    for spec in outputs:
        tensor = config.output.add(name=spec.name, data_type=data_type(spec.datatype), dims=spec.shape[1:])
        _batch_only(tensor, spec)
    config.dynamic_batching.preferred_batch_size.extend(preferred)
    config.dynamic_batching.max_queue_delay_microseconds = max_queue_delay_us
    config.instance_group.add(kind=INSTANCE_KINDS[instance_kind], count=instance_count)
    config.version_policy.CopyFrom(version_policy(policy))
    for key, value in (parameters or {}).items():
        config.parameters[key].string_value = str(value)
    if response_cache:
        config.response_cache.enable = True
    if accelerator is not None:
        set_accelerator(config, accelerator, accelerator_precision)
        if instance_kind != "gpu":
            raise InvalidArgument(
                f"--accelerator {accelerator}: a GPU execution accelerator needs GPU instances, but "
                f"instance_group.kind is {instance_kind!r}; pass --instance-kind gpu (or leave it out)",
                field="accelerator",
            )
    return config


def _batch_only(tensor, spec: TensorSpec) -> None:
    """A tensor of shape [batch] alone: Triton wants ``dims`` besides the batch axis, so it is declared
    ``dims: [1]`` with ``reshape { shape: [] }`` (the model sees [batch]), as Triton's docs prescribe."""
    if len(spec.shape) == 1:
        tensor.dims.append(1)
        tensor.reshape.SetInParent()


def _preferred_sizes(sizes: Sequence[int], max_batch_size: int) -> list[int]:
    for size in sizes:
        _positive("preferred_batch_size", size, "give sizes such as 8,16")
        if size > max_batch_size:
            raise InvalidArgument(
                f"preferred_batch_size: {size} is larger than max_batch_size {max_batch_size}; "
                "lower it or raise --max-batch-size",
                field="preferred_batch_size",
            )
    return list(sizes)


def _queue_delay(value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise InvalidArgument(
            f"max_queue_delay_microseconds: must be an integer >= 0, got {value!r}",
            field="max_queue_delay_microseconds",
        )
    return value


def set_batching(
    config: mc.ModelConfig,
    *,
    preferred_batch_sizes: Sequence[int],
    max_queue_delay_us: int,
    instance_count: int,
) -> mc.ModelConfig:
    """Set the dynamic batching and the instance count of an existing config (in place), validated as
    ``build_config`` validates them (preferred sizes against the config's own ``max_batch_size``).
    Every instance group gets ``instance_count``; a config without one gets a group. The batching
    tuner's settings reach a config only through here: its measurement overrides and
    ``python -m converters configure --tuning``."""
    preferred = _preferred_sizes(preferred_batch_sizes, config.max_batch_size)
    _queue_delay(max_queue_delay_us)
    _positive("instance_group.count", instance_count, "give 1 or more instances")
    config.dynamic_batching.max_queue_delay_microseconds = max_queue_delay_us
    del config.dynamic_batching.preferred_batch_size[:]
    config.dynamic_batching.preferred_batch_size.extend(preferred)
    if not config.instance_group:
        config.instance_group.add()
    for group in config.instance_group:
        group.count = instance_count
    return config


def set_response_cache(
    config: mc.ModelConfig, enable: bool, random_ops: Sequence[str] = ()
) -> mc.ModelConfig:
    """Turn Triton's response cache on or off in ``config`` (in place); turning it on for a model whose
    graph has random operators (``random_ops``, found by the caller) is refused, naming them."""
    if enable and random_ops:
        raise InvalidArgument(
            f"--response-cache on: the graph has random operators ({', '.join(sorted(set(random_ops)))}), so "
            "the same input does not always give the same output and a cached answer would be replayed for "
            "ever; leave the cache off (--response-cache off)",
            field="response_cache",
        )
    if enable:
        config.response_cache.enable = True
    else:
        config.ClearField("response_cache")
    return config


@dataclass(frozen=True)
class WarmupSample:
    """One warm-up request: ``batch_size`` rows, and per input its dims without the batch axis."""

    batch_size: int
    dims: dict[str, tuple[int, ...]]

    @property
    def name(self) -> str:
        shapes = ", ".join(f"{name} {list(dims)}" for name, dims in self.dims.items())
        return f"batch {self.batch_size}: {shapes}"


def set_warmup(config: mc.ModelConfig, samples: Sequence[WarmupSample]) -> mc.ModelConfig:
    """Replace the config's ``model_warmup`` with ``samples`` (zeros of each input's declared type):
    Triton runs them through every instance when it loads the model, before it is READY, so the first
    real requests do not pay ONNX Runtime's first runs. Each sample is checked against the config: a
    batch within ``max_batch_size``, every input named once, dims of the input's rank with a real size
    where the config has -1 and the config's own size elsewhere."""
    if config.platform == "ensemble":
        raise InvalidArgument(f"{config.name}: Triton does not warm up ensembles", field="model_warmup")
    inputs = {tensor.name: tensor for tensor in config.input}
    del config.model_warmup[:]
    for sample in samples:
        if not 1 <= sample.batch_size <= max(config.max_batch_size, 1):
            raise InvalidArgument(
                f"model_warmup: batch size {sample.batch_size} is not within 1..max_batch_size "
                f"({config.max_batch_size})",
                field="model_warmup",
            )
        if set(sample.dims) != set(inputs):
            raise InvalidArgument(
                f"model_warmup: sample inputs {sorted(sample.dims)} differ from the config's inputs "
                f"{sorted(inputs)}",
                field="model_warmup",
            )
        warmup = config.model_warmup.add(name=sample.name, batch_size=sample.batch_size)
        for name, dims in sample.dims.items():
            declared = list(inputs[name].dims)
            fits = len(dims) == len(declared) and all(
                d > 0 and (want == -1 or want == d) for d, want in zip(dims, declared, strict=True)
            )
            if not fits:
                raise InvalidArgument(
                    f"model_warmup: dims {list(dims)} of input {name!r} do not fit its config dims "
                    f"{declared}",
                    field="model_warmup",
                )
            tensor = warmup.inputs[name]
            tensor.data_type = inputs[name].data_type
            tensor.dims.extend(dims)
            tensor.zero_data = True
    return config


def set_accelerator(config: mc.ModelConfig, accelerator: str, precision: str = "FP16") -> mc.ModelConfig:
    """Write ONNX Runtime's TensorRT execution accelerator into ``config`` (for GPU deployments)."""
    if accelerator not in ACCELERATORS:
        raise InvalidArgument(
            f"--accelerator: unsupported {accelerator!r}; use one of {', '.join(ACCELERATORS)}",
            field="accelerator",
        )
    if precision not in ACCELERATOR_PRECISIONS:
        raise InvalidArgument(
            f"precision_mode: unsupported {precision!r}; use one of {', '.join(ACCELERATOR_PRECISIONS)}",
            field="precision_mode",
        )
    if config.platform != "onnxruntime_onnx":
        raise InvalidArgument(
            f"--accelerator: only ONNX entries take an execution accelerator; this is {config.platform!r}",
            field="accelerator",
        )
    accelerators = config.optimization.execution_accelerators.gpu_execution_accelerator
    kept = [a for a in accelerators if a.name != accelerator]
    del accelerators[:]
    accelerators.extend(kept)
    entry = accelerators.add(name=accelerator)
    entry.parameters["precision_mode"] = precision
    return config


def to_text(config: mc.ModelConfig) -> str:
    return text_format.MessageToString(config)


def parse_text(text: str, *, source: str = "<text>") -> mc.ModelConfig:
    try:
        return text_format.Parse(text, mc.ModelConfig())
    except text_format.ParseError as err:
        raise InvalidArgument(f"{source}: not a valid Triton model config: {err}", field="config") from None


def read_config(path: str | os.PathLike) -> mc.ModelConfig:
    path = Path(path)
    if not path.is_file():
        raise NotFound(f"{path}: no config.pbtxt there", field="config")
    return parse_text(path.read_text(encoding="utf-8"), source=str(path))


def write_config(path: str | os.PathLike, config: mc.ModelConfig) -> Path:
    """Write ``config`` to ``path`` atomically (temp file in the same folder, fsync, os.replace),
    after checking that its text parses back to the very same message."""
    path = Path(path)
    text = to_text(config)
    if parse_text(text, source=str(path)) != config:
        raise CheckFailed(f"{path}: the config does not survive a text round trip; nothing written")
    return atomic_write(path, text.encode("utf-8"))


def atomic_write(path: Path, data: bytes) -> Path:
    """Replace ``path`` with ``data`` in one step: temp file in the same folder, fsync, os.replace.

    The file keeps the mode it had; a new one gets the mode any other new file gets (0666 less the
    umask), not mkstemp's private 0600, which would leave it unreadable to a server running as another
    user."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, _mode_for(path))
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
    return path


def _mode_for(path: Path) -> int:
    """The permission bits ``path`` has now, or those of a new file under the current umask."""
    try:
        return stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError:
        return 0o666 & ~_umask()


def _umask() -> int:
    """The process's umask, read from /proc (Linux): os.umask() can only read it by setting it, and
    another thread creating a file meanwhile would get the wrong mode."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    umask = os.umask(0o022)
    os.umask(umask)
    return umask


def fsync_dir(path: str | os.PathLike) -> None:
    """Make a rename or a new entry in ``path`` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass(frozen=True)
class ServingOptions:
    """What the user chose for serving (the CLI flags); ``build`` turns it into a validated config."""

    max_batch_size: int = DEFAULT_MAX_BATCH_SIZE
    preferred_batch_sizes: tuple[int, ...] | None = None
    max_queue_delay_us: int = DEFAULT_MAX_QUEUE_DELAY_US
    instance_kind: str | None = None  # None: "gpu" with an accelerator, else "cpu"
    instance_count: int = 1
    intra_op_threads: int | None = None
    accelerator: str | None = None
    response_cache: bool | None = None  # None: on when the graph is deterministic (no RANDOM_OPS)

    def check(self) -> ServingOptions:
        """Validate every option now, before any slow work (the tensors come later)."""
        self.build("check", [], [])
        return self

    def build(
        self,
        name: str,
        inputs,
        outputs,
        *,
        platform: str = "onnxruntime_onnx",
        random_ops: Sequence[str] = (),
    ) -> mc.ModelConfig:
        """The config; ``random_ops``: the random operators of the graph (the response cache's default)."""
        parameters = {}
        if self.intra_op_threads is not None:
            _positive("intra_op_thread_count", self.intra_op_threads, "set --intra-op-threads to 1 or more")
            parameters["intra_op_thread_count"] = str(self.intra_op_threads)
        config = build_config(
            name,
            inputs,
            outputs,
            platform=platform,
            max_batch_size=self.max_batch_size,
            preferred_batch_sizes=self.preferred_batch_sizes,
            max_queue_delay_us=self.max_queue_delay_us,
            instance_kind=self.instance_kind or ("gpu" if self.accelerator else "cpu"),
            instance_count=self.instance_count,
            parameters=parameters,
            accelerator=self.accelerator,
        )
        enable = self.response_cache if self.response_cache is not None else not random_ops
        return set_response_cache(config, enable, random_ops if self.response_cache else ())
