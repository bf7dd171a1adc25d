"""The schema of a trace folder's ``meta.json`` (docs/traces.md): its dataclasses and their validation.

:meth:`TraceMeta.from_json` checks every field (types, op kinds and their attributes, the tensors the ops name,
shapes) and raises one :class:`TraceFormatError` naming the file and the field, so every reader of a trace
(``engine.traces.TraceReader``, ``hw/``) meets a malformed file as one clear error.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

__all__ = ["FORMAT_VERSION", "READABLE_VERSIONS", "CROSSBAR_KINDS", "OP_KINDS", "INPUT_KINDS", "TraceFormatError",
           "TensorSpec", "OpMeta", "SampleMeta", "TraceMeta", "is_int"]

# 2: uint8 tensors may carry "fraction_bits" (fixed point); 3: "uint16" counts, a "trace_id" in meta.json and in
# every sample.  Versions 1 and 2 read as before.
FORMAT_VERSION = 3
READABLE_VERSIONS = (1, 2, 3)
CROSSBAR_KINDS = ("conv", "linear")
OP_KINDS = ("conv", "linear", "lif", "pool", "residual", "attention")
INPUT_KINDS = ("static", "events")


class TraceFormatError(ValueError):
    """A trace folder or file that cannot be read; the message names the file and what is wrong."""


@dataclass(frozen=True)
class TensorSpec:
    """A stored tensor: logical shape ``[T, C, ...]`` (batch removed) and the original torch dtype name."""

    shape: tuple[int, ...]
    dtype: str = "float32"


@dataclass(frozen=True)
class OpMeta:
    """One operation of the forward pass, in execution order.

    ``kind`` is ``conv``, ``linear``, ``lif``, ``pool``, ``residual`` or ``attention``.  Shapes are per time step
    (no T, no batch).  ``block`` is the encoder block (None in the stem and head) and ``sdsa`` marks the parts of a
    block's attention branch (what attention skipping removes).  ``tensor`` names the stored input of a layer.
    ``attrs`` holds kind-specific fields (docs/traces.md): layers ``kernel``, ``stride``, ``padding``,
    ``dilation``, ``groups``, ``in_channels``, ``out_channels``, ``bias``, ``first``; pools ``kernel``, ``stride``,
    ``binary_input``; LIFs ``v_threshold``; attention ``mode``, ``heads``, ``head_dim``, ``tokens``, ``dvs``,
    ``chunk_size``, ``reference``, ``tensors``.
    """

    name: str
    kind: str
    block: int | None
    sdsa: bool
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...]
    tensor: str | None = None
    attrs: dict = field(default_factory=dict)


@dataclass(frozen=True)
class SampleMeta:
    """Per-sample entry of ``meta.json``: id, file, label, and the argmax of the cumulative logits at each t."""

    id: int
    file: str
    label: int | None
    pred_per_step: tuple[int, ...]


@dataclass
class TraceMeta:
    """Contents of ``meta.json``."""

    T: int
    dataset: str
    input_kind: str  # "static" (analog image repeated over T) or "events"
    model: dict
    skipped_blocks: list[int]
    ops: list[OpMeta]
    tensors: dict[str, TensorSpec]
    samples: list[SampleMeta] = field(default_factory=list)
    format_version: int = FORMAT_VERSION
    trace_id: str | None = None  # random, also in every sample's index (format 3); None in older traces

    def layers(self) -> list[OpMeta]:
        """The Conv2d/Linear operations, in execution order."""
        return [op for op in self.ops if op.kind in CROSSBAR_KINDS]

    def lifs(self) -> list[OpMeta]:
        """The LIF operations, in execution order (the rows of ``lif_nnz``)."""
        return [op for op in self.ops if op.kind == "lif"]

    def to_json(self) -> dict:
        d = asdict(self)
        d["tensors"] = {k: asdict(v) for k, v in self.tensors.items()}
        return {"format": "spike-trace", **d}

    @classmethod
    def from_json(cls, d: dict, path: Path) -> "TraceMeta":
        """Parse and validate (types, op kinds and attributes, tensors named by ops, shapes); one
        :class:`TraceFormatError` names ``path`` and the field."""
        f = _Fields(d, path)
        if d.get("format") != "spike-trace":
            raise TraceFormatError(f"{path}: field 'format' is {d.get('format')!r}, expected 'spike-trace'")
        version = d.get("format_version")
        if isinstance(version, bool) or version not in READABLE_VERSIONS:
            raise TraceFormatError(f"{path}: field 'format_version' is {version!r}; this reader "
                                   f"reads versions {', '.join(map(str, READABLE_VERSIONS))}")
        T = f.integer("T", 1)
        tensors = {name: _parse_tensor(spec, T) for name, spec in f.sub("tensors").items()}
        trace_id = d.get("trace_id")
        if trace_id is not None and not isinstance(trace_id, str):
            f.fail("trace_id", f"is {trace_id!r}; expected a string")
        meta = cls(T=T, dataset=f.text("dataset"), input_kind=f.text("input_kind", INPUT_KINDS),
                   model=f.sub("model").d, skipped_blocks=list(f.integers("skipped_blocks")),
                   ops=[_parse_op(op) for op in f.objects("ops")], tensors=tensors,
                   samples=[_parse_sample(s, T) for s in f.objects("samples")], format_version=version,
                   trace_id=trace_id)
        _check_consistency(meta, path)
        return meta


# ------------------------------------------------------------------------------------------------ meta.json checks
class _Fields:
    """Typed access to one JSON object of ``meta.json``; every error names the file and the field's path."""

    def __init__(self, d, path: Path, where: str = ""):
        self.d, self.path, self.where = d, path, where
        if not isinstance(d, dict):
            raise TraceFormatError(f"{path}: {f'field {where!r}' if where else 'the content'} is {d!r:.60}; "
                                   f"expected a JSON object")

    def name(self, key: str) -> str:
        return f"{self.where}.{key}" if self.where else key

    def fail(self, key: str, problem: str):
        raise TraceFormatError(f"{self.path}: field {self.name(key)!r} {problem}")

    def get(self, key: str):
        if key not in self.d:
            raise TraceFormatError(f"{self.path}: missing field {self.name(key)!r}")
        return self.d[key]

    def integer(self, key: str, minimum: int = 0) -> int:
        value = self.get(key)
        if not is_int(value) or value < minimum:
            self.fail(key, f"is {value!r}; expected an integer >= {minimum}")
        return value

    def integers(self, key: str, lengths: tuple[int, ...] = (), minimum: int = 0) -> tuple[int, ...]:
        value = self.get(key)
        if (not isinstance(value, list) or not all(is_int(v) and v >= minimum for v in value)
                or (lengths and len(value) not in lengths)):
            size = f"{' or '.join(map(str, lengths))} " if lengths else ""
            self.fail(key, f"is {value!r:.80}; expected a list of {size}integers >= {minimum}")
        return tuple(value)

    def flag(self, key: str) -> bool:
        value = self.get(key)
        if not isinstance(value, bool):
            self.fail(key, f"is {value!r}; expected true or false")
        return value

    def number(self, key: str) -> float:
        value = self.get(key)
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            self.fail(key, f"is {value!r}; expected a number")
        return value

    def text(self, key: str, choices: tuple[str, ...] = ()) -> str:
        value = self.get(key)
        if not isinstance(value, str) or (choices and value not in choices):
            self.fail(key, f"is {value!r}; expected {' or '.join(map(repr, choices)) if choices else 'a string'}")
        return value

    def sub(self, key: str) -> "_Fields":
        return _Fields(self.get(key), self.path, self.name(key))

    def items(self):
        return ((key, _Fields(value, self.path, self.name(key))) for key, value in self.d.items())

    def objects(self, key: str) -> list["_Fields"]:
        value = self.get(key)
        if not isinstance(value, list):
            self.fail(key, f"is {value!r:.60}; expected a list")
        return [_Fields(v, self.path, f"{self.name(key)}[{i}]") for i, v in enumerate(value)]


def is_int(value) -> bool:
    """An int that is not a bool (JSON true/false read as ints otherwise)."""
    return isinstance(value, int) and not isinstance(value, bool)


def _parse_tensor(f: _Fields, T: int) -> TensorSpec:
    shape = f.integers("shape", minimum=1)
    if len(shape) < 2 or shape[0] != T:
        f.fail("shape", f"is {list(shape)}; expected [T={T}, C, ...]")
    dtype = f.text("dtype")
    torch_dtype = getattr(torch, dtype, None)
    if not isinstance(torch_dtype, torch.dtype) or torch_dtype.is_complex:
        f.fail("dtype", f"is {dtype!r}; expected a real torch dtype name such as 'float32'")
    return TensorSpec(shape, dtype)


_OP_FIELDS = ("name", "kind", "block", "sdsa", "in_shape", "out_shape", "tensor", "attrs")
_SHAPE_RANKS = {"conv": (3,), "linear": (1, 2), "attention": (3,)}


def _parse_op(f: _Fields) -> OpMeta:
    unknown = sorted(set(f.d) - set(_OP_FIELDS))
    if unknown:
        f.fail(unknown[0], f"is not an op field (expected {', '.join(_OP_FIELDS)})")
    kind = f.text("kind", OP_KINDS)
    block = f.get("block")
    if block is not None and not (is_int(block) and block >= 0):
        f.fail("block", f"is {block!r}; expected null or a block index")
    tensor = f.d.get("tensor")
    if tensor is not None and not isinstance(tensor, str):
        f.fail("tensor", f"is {tensor!r}; expected a tensor name")
    ranks = _SHAPE_RANKS.get(kind, ())
    attrs = f.sub("attrs")
    _ATTR_CHECKS[kind](attrs)
    return OpMeta(f.text("name"), kind, block, f.flag("sdsa"), f.integers("in_shape", ranks, 1),
                  f.integers("out_shape", ranks, 1), tensor, attrs.d)


def _check_layer_attrs(a: _Fields) -> None:
    for key, minimum in (("kernel", 1), ("stride", 1), ("padding", 0), ("dilation", 1)):
        a.integers(key, (2,), minimum)
    for key in ("groups", "in_channels", "out_channels"):
        a.integer(key, 1)
    a.flag("bias"), a.flag("first")


def _check_attention_attrs(a: _Fields) -> None:
    mode = a.text("mode", ("SDT", "STAtten"))
    for key in ("heads", "head_dim", "tokens", "chunk_size"):
        a.integer(key, 1)
    a.flag("dvs"), a.text("reference")
    tensors = a.sub("tensors")
    for key in ("q", "k", "v", "out", *(("mask",) if mode == "SDT" else ())):
        tensors.text(key)


_ATTR_CHECKS = {
    "conv": _check_layer_attrs, "linear": _check_layer_attrs, "lif": lambda a: a.number("v_threshold"),
    "pool": lambda a: (a.integers("kernel", (2,), 1), a.integers("stride", (2,), 1), a.flag("binary_input")),
    "residual": lambda a: None, "attention": _check_attention_attrs,
}


def _parse_sample(f: _Fields, T: int) -> SampleMeta:
    file = f.text("file")
    if Path(file).name != file or not file.endswith(".npz"):
        f.fail("file", f"is {file!r}; expected a .npz file name in the trace folder")
    label = f.get("label")
    if label is not None and not (is_int(label) and label >= 0):
        f.fail("label", f"is {label!r}; expected null or a class index")
    pred = f.integers("pred_per_step", (T,))
    return SampleMeta(f.integer("id"), file, label, pred)


def _check_consistency(meta: TraceMeta, path: Path) -> None:
    """Cross-field checks: op names unique, every tensor an op names listed in ``tensors`` with the op's shape,
    layer channels and output sizes consistent, attention heads and tokens, sample ids unique."""
    def fail(problem: str):
        raise TraceFormatError(f"{path}: {problem}")

    if not meta.layers():
        fail("field 'ops' has no conv or linear operation; a trace needs at least one layer")
    names = [op.name for op in meta.ops]
    if len(set(names)) != len(names):
        fail(f"field 'ops' names {next(n for n in names if names.count(n) > 1)!r} twice")
    ids = [s.id for s in meta.samples]
    if len(set(ids)) != len(ids):
        fail(f"field 'samples' lists sample {next(i for i in ids if ids.count(i) > 1)} twice")

    def shape_of(op: OpMeta, tensor, expected: tuple[int, ...]) -> None:
        spec = meta.tensors.get(tensor)
        if spec is None:
            fail(f"op {op.name!r} names tensor {tensor!r}, which field 'tensors' does not list")
        if spec.shape != expected:
            fail(f"tensor {tensor!r} of op {op.name!r} has shape {list(spec.shape)}; the op implies {list(expected)}")

    for op in meta.ops:
        a, T = op.attrs, meta.T
        if op.kind in CROSSBAR_KINDS:
            shape_of(op, op.tensor, (T, *op.in_shape))
            if _layer_shapes(op) != (op.in_shape, op.out_shape):
                fail(f"op {op.name!r}: in_shape {list(op.in_shape)} and out_shape {list(op.out_shape)} do not "
                     f"match its attrs (channels {a['in_channels']} -> {a['out_channels']}, kernel {a['kernel']}, "
                     f"stride {a['stride']}, padding {a['padding']})")
        elif op.kind == "attention":
            c, h, w = op.in_shape
            if a["heads"] * a["head_dim"] != c or a["tokens"] != h * w:
                fail(f"op {op.name!r}: heads {a['heads']} x head_dim {a['head_dim']} and tokens {a['tokens']} do "
                     f"not match in_shape {list(op.in_shape)}")
            for key in ("q", "k", "v"):
                shape_of(op, a["tensors"][key], (T, *op.in_shape))
            shape_of(op, a["tensors"]["out"], (T, *op.out_shape))
            if "mask" in a["tensors"]:
                shape_of(op, a["tensors"]["mask"], (T, c))


def _layer_shapes(op: OpMeta) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The ``(in_shape, out_shape)`` a layer's attrs imply (spatial input size taken from ``in_shape``)."""
    a = op.attrs
    if op.kind == "linear":
        return (*op.in_shape[:-1], a["in_channels"]), (*op.in_shape[:-1], a["out_channels"])
    out = ((size + 2 * p - d * (k - 1) - 1) // s + 1
           for size, k, s, d, p in zip(op.in_shape[1:], a["kernel"], a["stride"], a["dilation"], a["padding"]))
    return (a["in_channels"], *op.in_shape[1:]), (a["out_channels"], *out)
