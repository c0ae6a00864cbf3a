"""The tensor signature of a torch module: what its ``forward`` takes and gives, as data.

A module's inputs come from its ``example_input_array`` in any form Lightning allows (one tensor, a
tuple/list of positional arguments, a dict of keyword arguments) or from ``--input NAME:DTYPE:DIMS``
flags; its outputs from running it (one tensor, a tuple/list, a dict). The ``Signature`` says, for
each input, its name in the ONNX graph, the ``forward`` parameter it feeds, its datatype, its dims
(without the batch axis; -1 is dynamic) and the value range of generated inputs; for each output, its
name and where it is in what ``forward`` returns. It is stored in the manifest (``signature``), so
``validate`` re-runs the same parity on the same generated inputs.

Generated inputs (parity, the int8 gate, benchmarks): floats are N(0, 1) (or uniform in the declared
range), ints uniform in the declared range, bools fair coins; seeded, so every run feeds the same data.
A range comes from ``--input ...:LOW..HIGH``, else from the example's own values (min..max), else
0..1 for ints (token ids need the real range: declare it). Parity runs at batch 1 with every dynamic
axis at its sample size (the example's, else 8) and at batch 4 with every dynamic axis doubled: the
batch axis and each dynamic axis are checked at two sizes.
"""

from __future__ import annotations

import inspect
import logging
import re
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np

from core.errors import InvalidArgument
from core.tasks import DATATYPES, TensorSpec

log = logging.getLogger(__name__)

SEED = 1234  # converters.inputs.IMAGE_SEED: the image classifier's parity inputs stay what they were
PARITY_BATCHES = (1, 4)
EXPORT_BATCH = 2  # the traced example: neither parity batch, so a size baked in by tracing shows up
DEFAULT_DYNAMIC_SIZE = 8
DEFAULT_INT_RANGE = (0, 1)

# What users write for a dtype (torch's names, their aliases, Triton's) -> the Triton datatype.
_DTYPE_NAMES = {
    **{numpy_name: triton for triton, numpy_name in DATATYPES.items()},
    **{triton.lower(): triton for triton in DATATYPES},
    "float": "FP32",
    "half": "FP16",
    "long": "INT64",
    "int": "INT32",
}
_INPUT_FLAG = re.compile(r"^(?P<name>[^:]+):(?P<dtype>[^:]+):(?P<dims>[^:]*)(?::(?P<range>[^:]+))?$")
_RANGE = re.compile(r"^\s*(-?[0-9.eE+-]+)\s*\.\.\s*(-?[0-9.eE+-]+)\s*$")


def datatype_of(dtype: Any, where: str) -> str:
    """A torch dtype -> its Triton datatype, or InvalidArgument naming the supported ones."""
    name = str(dtype).removeprefix("torch.")
    if name not in _DTYPE_NAMES or name not in DATATYPES.values():
        supported = ", ".join(DATATYPES.values())
        raise InvalidArgument(
            f"{where}: dtype {name} is not supported; use one of {supported} (cast inside forward)",
            field="input",
        )
    return _DTYPE_NAMES[name]


def parse_dims(text: str, flag: str) -> tuple[int, ...]:
    """``"3,32,32"`` -> (3, 32, 32); -1 marks a dynamic axis; an empty string is no axis besides batch."""
    parts = [p.strip() for p in text.split(",")] if text.strip() else []
    if not all(re.fullmatch(r"-1|[1-9][0-9]*", p) for p in parts):
        raise InvalidArgument(
            f"{flag}: {text!r} is not a comma-separated list of positive integers or -1 (dynamic), the "
            "dims without the batch axis; write e.g. 3,32,32 or 20 or -1",
            field=flag.lstrip("-").replace("-", "_"),
        )
    return tuple(int(p) for p in parts)


@dataclass(frozen=True)
class InputDecl:
    """One input of the module, as declared (by the example, a flag, or both)."""

    name: str  # the tensor's name in the ONNX graph, the Triton config and requests
    datatype: str  # Triton's name: FP32, FP16, INT64, INT32, BOOL
    dims: tuple[int, ...]  # without the batch axis; -1 is dynamic
    param: str | None = None  # the forward parameter it is passed as (None: positionally, in order)
    sample: tuple[int, ...] = ()  # the dims of the first parity case (dynamic axes at their sample size)
    low: float | None = None  # the range of generated values (ints: inclusive)
    high: float | None = None

    def spec(self) -> TensorSpec:
        axes = {0: "batch", **{i: f"{self.name}_dim{i}" for i, d in enumerate(self.dims, start=1) if d == -1}}
        return TensorSpec(self.name, self.datatype, (-1, *self.dims), axes)

    def describe(self) -> str:
        value_range = "" if self.low is None else f" in {_fmt(self.low)}..{_fmt(self.high)}"
        return f"{self.name} {self.datatype} {list(self.dims)}{value_range}"

    def to_manifest(self, used: bool = True) -> dict:
        return {
            "name": self.name,
            "used": used,
            "param": self.param,
            "datatype": self.datatype,
            "dims": list(self.dims),
            "sample": list(self.sample),
            "low": self.low,
            "high": self.high,
        }

    @classmethod
    def from_manifest(cls, data: dict) -> InputDecl:
        return cls(
            name=data["name"],
            datatype=data["datatype"],
            dims=tuple(int(d) for d in data["dims"]),
            param=data.get("param"),
            sample=tuple(int(d) for d in data.get("sample") or data["dims"]),
            low=data.get("low"),
            high=data.get("high"),
        )


def _fmt(value: float | None) -> str:
    return "-" if value is None else (str(int(value)) if float(value).is_integer() else f"{value:g}")


def parse_input_flag(text: str) -> InputDecl:
    """``NAME:DTYPE:DIMS[:LOW..HIGH]``, e.g. ``features:float32:20`` or ``ids:int64:-1:0..30521``."""
    match = _INPUT_FLAG.fullmatch(text.strip())
    if match is None:
        raise InvalidArgument(
            f"--input: {text!r} is not NAME:DTYPE:DIMS[:LOW..HIGH]; write e.g. features:float32:20 or "
            "input_ids:int64:-1:0..30521",
            field="input",
        )
    dtype = match["dtype"].strip().lower()
    if dtype not in _DTYPE_NAMES:
        raise InvalidArgument(
            f"--input {text}: dtype {match['dtype']!r} is not one of {', '.join(DATATYPES.values())}",
            field="input",
        )
    dims = parse_dims(match["dims"], f"--input {text}")
    low = high = None
    if match["range"] is not None:
        bounds = _RANGE.fullmatch(match["range"])
        try:
            low, high = (float(bounds[1]), float(bounds[2])) if bounds else (None, None)
        except ValueError:
            low = high = None
        if low is None or not low <= high:
            raise InvalidArgument(
                f"--input {text}: range {match['range']!r} is not LOW..HIGH with LOW <= HIGH, e.g. 0..30521",
                field="input",
            )
    return InputDecl(match["name"].strip(), _DTYPE_NAMES[dtype], dims, low=low, high=high)


# ---- forward's parameters, and the inputs declared for them ---------------------------------------


@dataclass(frozen=True)
class ForwardParams:
    """The parameters of ``forward`` (without self): who can be passed by position and by keyword."""

    positional: tuple[str, ...]  # positional-or-keyword and positional-only, in order
    keyword_only: tuple[str, ...]
    required: tuple[str, ...]
    var_positional: bool
    var_keyword: bool

    @classmethod
    def of(cls, module) -> ForwardParams:
        try:
            parameters = list(inspect.signature(module.forward).parameters.values())
        except (TypeError, ValueError):  # a forward without a signature (C extension): anything goes
            return cls((), (), (), True, True)
        kinds = inspect.Parameter
        return cls(
            positional=tuple(
                p.name for p in parameters if p.kind in (kinds.POSITIONAL_ONLY, kinds.POSITIONAL_OR_KEYWORD)
            ),
            keyword_only=tuple(p.name for p in parameters if p.kind == kinds.KEYWORD_ONLY),
            required=tuple(
                p.name
                for p in parameters
                if p.default is p.empty and p.kind not in (kinds.VAR_POSITIONAL, kinds.VAR_KEYWORD)
            ),
            var_positional=any(p.kind == kinds.VAR_POSITIONAL for p in parameters),
            var_keyword=any(p.kind == kinds.VAR_KEYWORD for p in parameters),
        )

    def accepts_keyword(self, name: str) -> bool:
        return name in self.positional or name in self.keyword_only or self.var_keyword


def _tensor_decl(value, name: str, param: str | None, where: str) -> InputDecl:
    import torch

    if not isinstance(value, torch.Tensor):
        raise InvalidArgument(
            f"{where} is a {type(value).__name__}, not a tensor; example_input_array may hold tensors only "
            "(a tensor, a tuple/list of tensors, or a dict of them)",
            field="example_input_array",
        )
    if value.ndim == 0:
        raise InvalidArgument(
            f"{where} is a scalar; every input needs a batch axis first (shape [batch, ...])",
            field="example_input_array",
        )
    datatype = datatype_of(value.dtype, where)
    dims = tuple(int(d) for d in value.shape[1:])
    low = high = None
    if value.numel() and datatype != "BOOL":
        lo, hi = float(value.min()), float(value.max())
        if datatype.startswith("INT") or lo < hi:  # a constant float example says nothing of the range
            low, high = lo, hi
    return InputDecl(name, datatype, dims, param=param, sample=dims, low=low, high=high)


def example_decls(module, params: ForwardParams) -> list[InputDecl] | None:
    """The inputs that ``example_input_array`` declares, or None when the module has none."""
    example = getattr(module, "example_input_array", None)
    cls = type(module).__name__
    if example is None:
        return None
    if isinstance(example, dict):
        decls = []
        for key, value in example.items():
            if not isinstance(key, str) or not params.accepts_keyword(key):
                raise InvalidArgument(
                    f"{cls}.example_input_array has key {key!r}, which is no parameter of forward "
                    f"({', '.join(params.positional + params.keyword_only) or 'none'})",
                    field="example_input_array",
                )
            decls.append(_tensor_decl(value, key, key, f"{cls}.example_input_array[{key!r}]"))
        return decls
    values = list(example) if isinstance(example, tuple | list) else [example]
    if len(values) > len(params.positional) and not params.var_positional:
        raise InvalidArgument(
            f"{cls}.example_input_array has {len(values)} items but forward takes {len(params.positional)} "
            f"positional arguments ({', '.join(params.positional)})",
            field="example_input_array",
        )
    return [
        _tensor_decl(
            value,
            params.positional[i] if i < len(params.positional) else f"input_{i}",
            None,
            f"{cls}.example_input_array" + (f"[{i}]" if isinstance(example, tuple | list) else ""),
        )
        for i, value in enumerate(values)
    ]


def _merge_flag(decl: InputDecl, flag: InputDecl, cls: str) -> InputDecl:
    """An example's input with a ``--input`` flag on it: the flag may make axes dynamic (-1) and set
    the range; dtype and the other dims must agree with the example."""
    where = f"--input {flag.name}"
    if flag.datatype != decl.datatype:
        raise InvalidArgument(
            f"{where}: dtype {flag.datatype} differs from {cls}.example_input_array's {decl.datatype}",
            field="input",
        )
    if len(flag.dims) != len(decl.dims) or any(
        f not in (-1, d) for f, d in zip(flag.dims, decl.dims, strict=True)
    ):
        raise InvalidArgument(
            f"{where}: dims {list(flag.dims)} do not fit {cls}.example_input_array's {list(decl.dims)} "
            "(after the batch axis); keep each dim, or write -1 to make it dynamic",
            field="input",
        )
    low, high = (flag.low, flag.high) if flag.low is not None else (decl.low, decl.high)
    return replace(decl, dims=flag.dims, low=low, high=high)


def _sample(dims: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(DEFAULT_DYNAMIC_SIZE if d == -1 else d for d in dims)


def declare_inputs(module, flags: list[InputDecl], input_shape: tuple[int, ...] | None) -> list[InputDecl]:
    """The module's inputs: from ``example_input_array`` and/or ``--input`` flags (or the old
    ``--input-shape``, the dims of a one-input module). InvalidArgument naming the flag otherwise."""
    cls = type(module).__name__
    params = ForwardParams.of(module)
    decls = example_decls(module, params)
    if input_shape is not None and flags:
        raise InvalidArgument(
            "--input-shape and --input: give one of them (--input NAME:DTYPE:DIMS says everything "
            "--input-shape does)",
            field="input_shape",
        )
    if input_shape is not None:
        if decls is None:
            name = params.positional[0] if params.positional else "input_0"
            return [InputDecl(name, "FP32", input_shape, sample=_sample(input_shape))]
        if len(decls) != 1:
            raise InvalidArgument(
                f"--input-shape: {cls}.example_input_array has {len(decls)} inputs; declare each one with "
                "--input NAME:DTYPE:DIMS",
                field="input_shape",
            )
        (decl,) = decls
        if len(input_shape) != len(decl.dims):
            dims = ",".join(map(str, decl.dims))
            hint = " = C,H,W" if len(decl.dims) == 3 else ""
            raise InvalidArgument(
                f"--input-shape: {','.join(map(str, input_shape))!r} has {len(input_shape)} dims but "
                f"{cls}.example_input_array has {len(decl.dims)} after the batch axis ({dims}{hint}); "
                f"give {len(decl.dims)}, e.g. {dims}",
                field="input_shape",
            )
        return [replace(decl, dims=input_shape, sample=_sample(input_shape))]
    if decls is None:
        if not flags:
            raise InvalidArgument(
                f"{cls} has no example_input_array; declare its inputs with --input NAME:DTYPE:DIMS (e.g. "
                "--input features:float32:20, -1 for a dynamic axis), or set example_input_array in it",
                field="input",
            )
        decls = []
        for flag in flags:
            if not params.accepts_keyword(flag.name):
                raise InvalidArgument(
                    f"--input {flag.name}: forward of {cls} has no parameter {flag.name!r} "
                    f"(its parameters: {', '.join(params.positional + params.keyword_only) or 'none'})",
                    field="input",
                )
            decls.append(replace(flag, param=flag.name, sample=_sample(flag.dims)))
        missing = [p for p in params.required if p not in {d.name for d in decls}]
        if missing:
            raise InvalidArgument(
                f"--input: forward of {cls} also needs {', '.join(missing)}; declare each with "
                "--input NAME:DTYPE:DIMS",
                field="input",
            )
        return [_default_range(d) for d in decls]
    by_name = {d.name: i for i, d in enumerate(decls)}
    for flag in flags:
        if flag.name not in by_name:
            raise InvalidArgument(
                f"--input {flag.name}: {cls}.example_input_array has no input {flag.name!r} "
                f"(its inputs: {', '.join(by_name)})",
                field="input",
            )
        decls[by_name[flag.name]] = _merge_flag(decls[by_name[flag.name]], flag, cls)
    return [_default_range(d) for d in decls]


def _default_range(decl: InputDecl) -> InputDecl:
    if decl.low is None and decl.datatype.startswith("INT"):
        return replace(decl, low=float(DEFAULT_INT_RANGE[0]), high=float(DEFAULT_INT_RANGE[1]))
    return decl


# ---- generated inputs -----------------------------------------------------------------------------


def case_dims(decl: InputDecl, case: int) -> tuple[int, ...]:
    """The dims of ``decl`` in parity case ``case`` (0: sample sizes, 1: dynamic axes doubled)."""
    return tuple(s * (2 if d == -1 and case else 1) for d, s in zip(decl.dims, decl.sample, strict=True))


def generate(decls: list[InputDecl], batch: int, case: int, seed: int = SEED) -> dict[str, np.ndarray]:
    """Seeded inputs for every declared input, at ``batch`` rows, dims of parity case ``case``."""
    rng = np.random.default_rng(seed + batch)
    feeds = {}
    for decl in decls:
        shape = (batch, *case_dims(decl, case))
        dtype = np.dtype(DATATYPES[decl.datatype])
        if decl.datatype == "BOOL":
            value = rng.integers(0, 2, size=shape).astype(bool)
        elif decl.datatype.startswith("INT"):
            value = rng.integers(int(decl.low), int(decl.high) + 1, size=shape).astype(dtype)
        elif decl.low is not None:
            value = rng.uniform(decl.low, decl.high, size=shape).astype(dtype)
        else:
            value = rng.standard_normal(shape).astype(dtype)
        feeds[decl.name] = value
    return feeds


# ---- outputs --------------------------------------------------------------------------------------


def flatten_outputs(result, cls: str) -> tuple[str, list[tuple[str | int, Any]]]:
    """What forward returned -> (form, [(key, tensor)]): form "tensor", "sequence" or "dict"."""
    import torch

    if isinstance(result, torch.Tensor):
        return "tensor", [(0, result)]
    if isinstance(result, dict):
        form, items = "dict", list(result.items())
    elif isinstance(result, tuple | list):
        form, items = "sequence", list(enumerate(result))
    else:
        raise InvalidArgument(
            f"{cls}.forward returns a {type(result).__name__}; return a tensor, a tuple/list of tensors or a "
            "dict of tensors",
            field="module",
        )
    if not items:
        raise InvalidArgument(f"{cls}.forward returns an empty {type(result).__name__}", field="module")
    for key, value in items:
        if not isinstance(value, torch.Tensor):
            raise InvalidArgument(
                f"{cls}.forward's output [{key!r}] is a {type(value).__name__}, not a tensor; return a flat "
                "tuple/list or dict of tensors",
                field="module",
            )
    return form, items


@dataclass(frozen=True)
class OutputDecl:
    name: str
    key: str | int  # the dict key or the position in what forward returns
    datatype: str
    dims: tuple[int, ...]  # without the batch axis; -1 where it changed with the inputs' dynamic axes

    def spec(self) -> TensorSpec:
        axes = {0: "batch", **{i: f"{self.name}_dim{i}" for i, d in enumerate(self.dims, start=1) if d == -1}}
        return TensorSpec(self.name, self.datatype, (-1, *self.dims), axes)


# ---- the signature --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Signature:
    """How to call the module and read what it returns, and the tensors of its entry."""

    inputs: tuple[InputDecl, ...]
    outputs: tuple[OutputDecl, ...]
    output_form: str  # "tensor", "sequence" or "dict"
    seed: int = SEED
    batches: tuple[int, ...] = PARITY_BATCHES
    dropped: tuple[str, ...] = field(default=())  # inputs the exported graph does not use

    @property
    def input_specs(self) -> list[TensorSpec]:
        return [d.spec() for d in self.inputs if d.name not in self.dropped]

    @property
    def output_specs(self) -> list[TensorSpec]:
        return [o.spec() for o in self.outputs]

    @property
    def dynamic(self) -> bool:
        return any(-1 in d.dims for d in self.inputs)

    def cases(self) -> list[tuple[str, dict[str, np.ndarray]]]:
        """The parity cases: (label, feeds), batch 1 at the sample sizes, batch 4 with dynamic axes x2."""
        cases = []
        for case, batch in enumerate(self.batches):
            label = f"batch={batch}" + (", dynamic axes x2" if case and self.dynamic else "")
            cases.append((label, generate(list(self.inputs), batch, case, self.seed)))
        return cases

    def describe_cases(self) -> list[str]:
        inputs = ", ".join(d.describe() for d in self.inputs)
        batches = " and ".join(map(str, self.batches))
        dynamic = (
            "; dynamic axes at their sample size, then doubled (sample dims: "
            + ", ".join(f"{d.name} {list(d.sample)}" for d in self.inputs)
            + ")"
            if self.dynamic
            else ""
        )
        return [f"seeded inputs ({inputs}; seed {self.seed}), batch {batches}{dynamic}"]

    def to_manifest(self) -> dict:
        return {
            # Every input forward takes, those the graph does not use too: validate calls forward again.
            "inputs": [d.to_manifest(used=d.name not in self.dropped) for d in self.inputs],
            "outputs": [{"name": o.name, "key": o.key} for o in self.outputs],
            "output_form": self.output_form,
            "seed": self.seed,
            "batches": list(self.batches),
        }

    @classmethod
    def from_manifest(cls, manifest: dict) -> Signature:
        """The signature a version was published with; an image classifier published before signatures
        were recorded gets the one it had (one positional input, one tensor out)."""
        data = manifest.get("signature")
        outputs_by_name = {o["name"]: o for o in manifest["outputs"]}
        if data is None:
            (spec,) = manifest["inputs"]
            dims = tuple(int(d) for d in spec["shape"][1:])
            inputs = (InputDecl(spec["name"], spec["datatype"], dims, sample=dims),)
            dropped = ()
            data = {"outputs": [{"name": spec["name"], "key": 0} for spec in manifest["outputs"]]}
            data["output_form"] = "tensor"
        else:
            inputs = tuple(InputDecl.from_manifest(d) for d in data["inputs"])
            dropped = tuple(d["name"] for d in data["inputs"] if d.get("used") is False)
        outputs = tuple(
            OutputDecl(
                o["name"],
                o["key"],
                outputs_by_name[o["name"]]["datatype"],
                tuple(int(d) for d in outputs_by_name[o["name"]]["shape"][1:]),
            )
            for o in data["outputs"]
        )
        return cls(
            inputs=inputs,
            outputs=outputs,
            output_form=data["output_form"],
            seed=int(data.get("seed", SEED)),
            batches=tuple(int(b) for b in data.get("batches", PARITY_BATCHES)),
            dropped=dropped,
        )


# ---- the module as the exporter and the parity check call it ---------------------------------------


def adapter(module, signature_inputs: tuple[InputDecl, ...], output_form: str, keys: list):
    """``module`` behind a forward of positional tensors (the declared inputs, in order) returning a
    tuple (the outputs, in order): what torch.onnx.export traces, and what parity compares against."""
    import torch

    positional = [i for i, d in enumerate(signature_inputs) if d.param is None]
    keyword = [(i, d.param) for i, d in enumerate(signature_inputs) if d.param is not None]

    class Adapter(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, *args):
            result = self.inner(*[args[i] for i in positional], **{name: args[i] for i, name in keyword})
            if output_form == "tensor":
                return result
            return tuple(result[key] for key in keys)

    # Named after the module, so that the exporter's log lines and errors name the user's class.
    named = type(type(module).__name__, (Adapter,), {})
    return named(module).eval()


def torch_outputs(wrapped, feeds: dict[str, np.ndarray], inputs: tuple[InputDecl, ...]) -> list[np.ndarray]:
    import torch

    with torch.no_grad():
        result = wrapped(*[torch.from_numpy(feeds[d.name]) for d in inputs])
    values = [result] if isinstance(result, torch.Tensor) else list(result)
    return [v.detach().cpu().numpy() for v in values]


def probe(
    module, decls: list[InputDecl], output_names: list[str] | None, flag: str
) -> tuple[str, list[OutputDecl]]:
    """Run the module on the two parity cases' inputs: its output form, and each output's name, key,
    datatype and dims (an axis that changed with the inputs' dynamic axes is dynamic)."""
    import torch

    cls = type(module).__name__
    results = []
    for case, batch in enumerate(PARITY_BATCHES):
        feeds = generate(decls, batch, case)
        positional = [torch.from_numpy(feeds[d.name]) for d in decls if d.param is None]
        keyword = {d.param: torch.from_numpy(feeds[d.name]) for d in decls if d.param is not None}
        try:
            with torch.no_grad():
                result = module(*positional, **keyword)
        except Exception as err:  # whatever forward raises on inputs it does not take
            shapes = ", ".join(f"{d.describe()} -> {list(feeds[d.name].shape)}" for d in decls)
            first_line = str(err).strip().splitlines()[0] if str(err).strip() else ""
            raise InvalidArgument(
                f"{flag}: {cls} rejects inputs of shape {shapes}: {type(err).__name__}: {first_line} "
                "(declare the inputs it takes with --input NAME:DTYPE:DIMS[:LOW..HIGH])",
                field=flag.lstrip("-").replace("-", "_"),
            ) from None
        form, items = flatten_outputs(result, cls)
        for key, value in items:
            if value.ndim == 0 or value.shape[0] != batch:
                raise InvalidArgument(
                    f"{cls}.forward's output [{key!r}] has shape {list(value.shape)} for a batch of {batch}; "
                    "every output needs the batch axis first (Triton batches along it)",
                    field="module",
                )
        results.append((form, items))
    (form, first), (_, second) = results
    if [k for k, _ in first] != [k for k, _ in second]:
        raise InvalidArgument(f"{cls}.forward returns different outputs for different inputs", field="module")
    if output_names is not None:
        if len(output_names) != len(first):
            raise InvalidArgument(
                f"--output-names: {len(output_names)} names for {len(first)} outputs of {cls}",
                field="output_names",
            )
        names = list(output_names)
    elif form == "dict":
        names = [str(k) for k, _ in first]
    else:
        names = [f"output_{i}" for i in range(len(first))]
    outputs = []
    for name, (key, a), (_, b) in zip(names, first, second, strict=True):
        if a.ndim != b.ndim:
            raise InvalidArgument(
                f"{cls}.forward's output {name!r} changes rank with the input", field="module"
            )
        dims = tuple(int(x) if x == y else -1 for x, y in zip(a.shape[1:], b.shape[1:], strict=True))
        outputs.append(OutputDecl(name, key, datatype_of(a.dtype, f"{cls}.forward's output {name!r}"), dims))
    clash = sorted({o.name for o in outputs} & {d.name for d in decls})
    if clash or len({o.name for o in outputs}) != len(outputs):
        raise InvalidArgument(
            f"{cls}: output names {names} repeat a name or an input's name "
            f"({', '.join(clash) or 'duplicate'}); name them with --output-names",
            field="output_names",
        )
    return form, outputs
