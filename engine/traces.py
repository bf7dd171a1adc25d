"""Spike traces for the hardware model: capture one sample's layer inputs, write them compactly, read them back.

A trace folder holds one ``sample_XXXXX.npz`` per sample and one ``meta.json`` (schema: docs/traces.md): the input
of every ``nn.Conv2d``/``nn.Linear`` as the layer saw it (forward-pre hooks), the q/k/v spikes, mask and output of
every attention core, the head logits and every LIF's spike count per time step.  Tensors are time-major without
the batch axis (``[T, C, H, W]``, ``[T, D]``); on disk their channel axis is last and binary tensors are bit-packed
along it with ``np.packbits``.  :meth:`TraceReader.load` returns the original tensors, :meth:`TraceReader.load_raw`
the stored arrays (for ``hw/``, without unpacking).
"""
from __future__ import annotations

import functools
import io
import json
import logging
import math
import mmap
import struct
import uuid
import zipfile
import zlib
from collections.abc import Iterable
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from module import MS_MLP_Conv, MS_SPS, MS_SSA_Conv, is_neuron

from .atomic import atomic_open
from .energy import conv_output_hw
from .trace_meta import (CROSSBAR_KINDS, FORMAT_VERSION, OpMeta, SampleMeta, TensorSpec, TraceFormatError,
                         TraceMeta, is_int)

__all__ = ["CROSSBAR_KINDS", "FORMAT_VERSION", "TraceFormatError", "TensorSpec", "OpMeta", "SampleMeta", "TraceMeta",
           "Capture",
           "RawSample", "TraceSample", "capture_sample", "fixed_point_scale", "model_summary", "TraceWriter",
           "TraceReader", "export_traces"]

_logger = logging.getLogger(__name__)

MAX_FRACTION_BITS = 4
META_FILE = "meta.json"
INDEX_KEY = "__index__"
ENCODINGS = ("bits", "uint8", "uint16", "float32", "alias")
STORED_DTYPES = {"bits": np.uint8, "uint8": np.uint8, "uint16": np.uint16, "float32": np.float32}
INTEGER_ENCODINGS = ("uint8", "uint16")  # counts or fixed-point values ("fraction_bits")
DATA_DEPENDENT_ATTRS = ("binary_input",)  # may differ between the samples of one model and input size


# ----------------------------------------------------------------------------------------------------------- capture
@dataclass
class Capture:
    """One sample's forward pass: operations, tensors ``[T, ...]`` by name, logits ``[T, K]``, LIF spike counts."""

    T: int
    input_kind: str
    ops: list[OpMeta]
    tensors: dict[str, torch.Tensor]
    logits: torch.Tensor
    lif_nnz: torch.Tensor  # [n_lif, T]
    skipped_blocks: list[int]


def _block_of(name: str) -> tuple[int | None, bool]:
    """``("block.3.attn.q_conv")`` -> ``(3, True)``; the stem and head give ``(None, False)``."""
    parts = name.split(".")
    if len(parts) >= 3 and parts[0] == "block" and parts[1].isdigit():
        return int(parts[1]), parts[2] == "attn"
    return None, False


def _pair(v) -> list[int]:
    return list(v) if isinstance(v, tuple) else [v, v]


def _is_binary(x: torch.Tensor) -> bool:
    return bool(((x == 0) | (x == 1)).all())


class _Recorder:
    """Forward hooks that build a :class:`Capture`; see :func:`capture_sample`."""

    def __init__(self, model: nn.Module, T: int):
        self.T = T
        self.ops: list[OpMeta] = []
        self.tensors: dict[str, torch.Tensor] = {}
        self.lif_nnz: list[torch.Tensor] = []
        self.logits: torch.Tensor | None = None
        self._calls: dict[str, int] = {}
        self._handles = []
        head = getattr(model, "head", None)
        for name, m in model.named_modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                self._handles.append(m.register_forward_pre_hook(self._layer_hook(name)))
            elif is_neuron(m):
                self._handles.append(m.register_forward_hook(self._lif_hook(name)))
            elif isinstance(m, (nn.MaxPool2d, nn.MaxPool3d)):
                self._handles.append(m.register_forward_hook(self._pool_hook(name)))
            elif isinstance(m, (MS_SPS, MS_MLP_Conv, MS_SSA_Conv)):
                self._handles.append(m.register_forward_hook(self._residual_hook(name)))
            if isinstance(m, MS_MLP_Conv) and m.res:  # mlp_ratio 1: h = x + fc1 branch, added before fc2_lif
                self._handles.append(m.fc2_lif.register_forward_pre_hook(self._inner_residual_hook(name)))
            if isinstance(m, MS_SSA_Conv):
                self._hook_attention(name, m)
        if isinstance(head, nn.Linear):
            self._handles.append(head.register_forward_hook(self._logits_hook))

    def _op(self, name: str, kind: str, in_shape, out_shape, tensor=None, **attrs) -> None:
        block, sdsa = _block_of(name)
        self.ops.append(OpMeta(name, kind, block, sdsa, tuple(in_shape), tuple(out_shape), tensor, attrs))

    def _layer_hook(self, name: str):
        def hook(m, inputs):
            x = inputs[0].detach()
            key = f"in:{name}"
            if isinstance(m, nn.Conv2d):
                if x.shape[0] != self.T:
                    raise ValueError(f"{name}: expected [T*B, C, H, W] with T={self.T}, B=1, got {tuple(x.shape)}")
                (kh, kw), (sh, sw), (dh, dw) = m.kernel_size, m.stride, m.dilation
                ph, pw = _pair(m.padding) if not isinstance(m.padding, str) else (0, 0)
                out = (m.out_channels, *conv_output_hw(m, *x.shape[-2:]))
                self._op(name, "conv", x.shape[1:], out, key, kernel=[kh, kw], stride=[sh, sw], padding=[ph, pw],
                         dilation=[dh, dw], groups=m.groups, in_channels=m.in_channels,
                         out_channels=m.out_channels, bias=m.bias is not None, first=not self.tensors)
            else:
                x = x.reshape(self.T, -1, m.in_features)
                x = x[:, 0] if x.shape[1] == 1 else x
                self._op(name, "linear", x.shape[1:], (*x.shape[1:-1], m.out_features), key, kernel=[1, 1],
                         stride=[1, 1], padding=[0, 0], dilation=[1, 1], groups=1, in_channels=m.in_features,
                         out_channels=m.out_features, bias=m.bias is not None, first=not self.tensors)
            self.tensors[key] = x
        return hook

    def _lif_hook(self, name: str):
        def hook(m, inputs, out):
            out = out.detach()
            self._op(name, "lif", out.shape[2:], out.shape[2:], v_threshold=float(m.v_threshold))
            self.lif_nnz.append(torch.count_nonzero(out.reshape(self.T, -1), dim=1))
        return hook

    def _pool_hook(self, name: str):
        def hook(m, inputs, out):
            calls = self._calls.get(name, 0)
            self._calls[name] = calls + 1
            skip = 1 if isinstance(m, nn.MaxPool2d) else 2  # [T*B, C, H, W] or [T, B, ...]
            self._op(f"{name}#{calls}" if calls else name, "pool", inputs[0].shape[skip:], out.shape[skip:],
                     kernel=_pair(m.kernel_size)[-2:], stride=_pair(m.stride)[-2:],
                     binary_input=_is_binary(inputs[0]))
        return hook

    def _residual_hook(self, name: str):
        def hook(m, inputs, out):
            self._op(name, "residual", out.shape[2:], out.shape[2:])
        return hook

    def _inner_residual_hook(self, name: str):
        def hook(m, inputs):
            shape = inputs[0].shape[2:]  # [T, B, C, H, W]
            self._op(f"{name}.inner_residual", "residual", shape, shape)
        return hook

    def _hook_attention(self, name: str, attn: MS_SSA_Conv) -> None:
        block, _ = _block_of(name)
        prefix = f"attn:{block}:"
        probes = {"q": attn.q_spikes, "k": attn.k_spikes, "v": attn.v_spikes}
        if attn.attention_mode == "SDT":
            probes |= {"mask": attn.talking_heads_lif, "out": attn.x_after_qkv}
        else:
            probes["out"] = attn.after_qkv

        def store(field_name: str):
            def hook(m, inputs, out):
                out = out.detach()[:, 0]  # [T, 1, ...] -> [T, ...]
                q_shape = self.tensors[prefix + "q"].shape if field_name != "q" else out.shape
                if field_name == "mask":  # [T, heads, 1, d] -> [T, C], channel = head * d + j
                    out = out.reshape(self.T, -1)
                elif field_name == "out" and out.dim() == 4 and attn.attention_mode == "SDT":
                    out = out.transpose(2, 3).reshape(q_shape)  # [T, heads, N, d] -> [T, C, H, W]
                self.tensors[prefix + field_name] = out
                if field_name == "out":
                    c, h, w = q_shape[1:]
                    self._op(f"{name}.core", "attention", q_shape[1:], out.shape[1:], mode=attn.attention_mode,
                             heads=attn.num_heads, head_dim=c // attn.num_heads, tokens=h * w, dvs=bool(attn.dvs),
                             chunk_size=attn.chunk_size, reference=attn.reference,
                             tensors={f: prefix + f for f in probes})
            return hook

        for field_name, module in probes.items():
            self._handles.append(module.register_forward_hook(store(field_name)))

    def _logits_hook(self, m, inputs, out):
        self.logits = out.detach().reshape(self.T, -1)

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()


def capture_sample(model: nn.Module, x: torch.Tensor) -> Capture:
    """Run ``model`` (eval mode, no grad) on one sample and capture what a trace stores.

    Args:
        model: an SDT/STAtten model (``model.T`` time steps) whose head is an ``nn.Linear``.
        x: one sample, ``[C, H, W]`` / ``[1, C, H, W]`` (static image) or ``[1, T, C, H, W]`` (event frames).
    """
    T = int(model.T)
    if x.dim() == 3:
        x = x.unsqueeze(0)
    if x.shape[0] != 1:
        shape = list(x.shape)
        if x.dim() == 4 and x.shape[0] == T:
            raise ValueError(f"traces are captured at batch 1: a static image is [C, H, W] or [1, C, H, W], event "
                             f"frames [1, T, C, H, W] (T={T}); got {shape}: for event frames add the batch axis "
                             "(x.unsqueeze(0))")
        raise ValueError(f"traces are captured at batch 1: a sample is [C, H, W], [1, C, H, W] or [1, T, C, H, W]; "
                         f"got {shape}, a batch of {x.shape[0]}: pass one sample at a time")
    recorder = _Recorder(model, T)
    was_training = model.training
    model.eval()
    copies = model.encoding_on_copies() if hasattr(model, "encoding_on_copies") else nullcontext()
    try:
        with torch.no_grad(), copies:
            out = model(x)
    finally:
        recorder.remove()
        model.train(was_training)
    logits = recorder.logits if recorder.logits is not None else out.detach().reshape(1, -1).expand(T, -1)
    ran_attention = {op.block for op in recorder.ops if op.sdsa}
    blocks = {op.block for op in recorder.ops if op.block is not None}
    return Capture(T=T, input_kind="events" if x.dim() == 5 else "static", ops=recorder.ops,
                   tensors=recorder.tensors, logits=logits.float(),
                   lif_nnz=torch.stack(recorder.lif_nnz) if recorder.lif_nnz else torch.zeros(0, T, dtype=torch.long),
                   skipped_blocks=sorted(blocks - ran_attention))


# ---------------------------------------------------------------------------------------------------------- encoding
def _fraction_bits(x: torch.Tensor) -> int | None:
    """The fewest fraction bits f (0..MAX_FRACTION_BITS) that make ``x * 2**f`` integers in 0..65535, or None."""
    limit = np.iinfo(np.uint16).max
    if not x.numel() or x.min() < 0:
        return None
    if not x.is_floating_point():
        return 0 if x.max() <= limit else None
    for bits in range(MAX_FRACTION_BITS + 1):
        scaled = x * 2 ** bits
        if scaled.max() > limit:
            return None
        if bool((scaled == scaled.round()).all()):
            return bits
    return None


def _encode(x: torch.Tensor) -> tuple[np.ndarray, dict]:
    """Stored array and index entry: channels (axis 1) last, binary -> packed bits, counts (or fixed-point values
    such as DVS counts averaged 2x2 by a bilinear halving: multiples of 1/4) -> uint8, or uint16 above 255."""
    entry = {"encoding": "float32", "repeat_t": False}
    if x.shape[0] > 1 and bool((x == x[:1]).all()):
        x, entry["repeat_t"] = x[:1], True
    arr = x.movedim(1, -1).contiguous().cpu()
    if _is_binary(x):
        entry["encoding"] = "bits"
        return np.packbits(arr.to(torch.uint8).numpy(), axis=-1), entry
    bits = _fraction_bits(x)
    if bits is not None:
        units = (arr * 2 ** bits).to(torch.int32)
        entry["encoding"] = "uint8" if units.max() <= np.iinfo(np.uint8).max else "uint16"
        if bits:
            entry["fraction_bits"] = bits
        return units.numpy().astype(STORED_DTYPES[entry["encoding"]]), entry
    return arr.float().numpy(), entry


def fixed_point_scale(entry: dict) -> float:
    """The value of one stored unit of a uint8/uint16 tensor: ``2 ** -fraction_bits`` (1 for counts)."""
    return 2.0 ** -entry.get("fraction_bits", 0)


def _check_entry(path: Path, name: str, entry) -> dict:
    """An index entry with a valid ``encoding``, a boolean ``repeat_t`` and sound ``fraction_bits``."""
    if not isinstance(entry, dict) or entry.get("encoding") not in ENCODINGS:
        raise TraceFormatError(f"{path}: tensor {name!r} of meta.json is missing from the index or has no valid "
                               f"encoding (one of {', '.join(ENCODINGS)})")
    if not isinstance(entry.get("repeat_t"), bool):
        raise TraceFormatError(f"{path}: tensor {name!r}: index field 'repeat_t' is {entry.get('repeat_t')!r}; "
                               f"expected true or false")
    bits = entry.get("fraction_bits", 0)
    if bits != 0 and (entry["encoding"] not in INTEGER_ENCODINGS or not is_int(bits)
                      or bits not in range(1, MAX_FRACTION_BITS + 1)):
        raise TraceFormatError(f"{path}: tensor {name!r} has fraction_bits {bits!r}; expected 1.."
                               f"{MAX_FRACTION_BITS} on a {' or '.join(INTEGER_ENCODINGS)} tensor")
    return entry


def _check_stored(path: Path, name: str, arr: np.ndarray, spec: TensorSpec, entry: dict) -> None:
    """The stored array has the shape ``meta.json`` implies and the dtype of its encoding."""
    expected = _stored_shape(spec, entry)
    if arr.shape != expected:
        raise TraceFormatError(f"{path}: tensor {name!r} is stored with shape {arr.shape}, meta.json implies "
                               f"{expected}")
    dtype = np.dtype(STORED_DTYPES[entry["encoding"]])
    if arr.dtype != dtype:
        raise TraceFormatError(f"{path}: tensor {name!r} is stored as {arr.dtype}, but its encoding "
                               f"{entry['encoding']!r} stores {dtype} (a file edited or written by another tool?)")


def _stored_shape(spec: TensorSpec, entry: dict) -> tuple[int, ...]:
    """Shape of the stored array for a tensor of logical shape ``[T, C, *rest]``."""
    t, c, *rest = spec.shape
    if entry["repeat_t"]:
        t = 1
    return (t, *rest, -(-c // 8) if entry["encoding"] == "bits" else c)


def _decode(arr: np.ndarray, spec: TensorSpec, entry: dict) -> torch.Tensor:
    """Inverse of :func:`_encode`: the logical ``[T, C, ...]`` tensor in its original dtype."""
    if entry["encoding"] == "bits":
        arr = np.unpackbits(arr, axis=-1, count=spec.shape[1])
    elif entry["encoding"] == "uint16":
        arr = arr.astype(np.int32)  # few torch ops take uint16
    x = torch.from_numpy(np.moveaxis(arr, -1, 1).copy())
    if entry.get("fraction_bits"):
        x = x.float() * fixed_point_scale(entry)
    x = x.to(getattr(torch, spec.dtype))
    return x.expand(spec.shape[0], *x.shape[1:]).contiguous() if entry["repeat_t"] else x


# ------------------------------------------------------------------------------------------------------------ writer
def model_summary(model: nn.Module) -> dict:
    """The architecture fields a trace needs when the caller gives no config."""
    names = ("T", "depths", "embed_dim", "num_classes", "attention_mode", "chunk_size", "dvs", "reference")
    return {name: getattr(model, name) for name in names if hasattr(model, name)}


class TraceWriter:
    """Writes a trace folder sample by sample; every file is written atomically.

    Args:
        out_dir: the trace folder; created if needed.  A folder that already holds a trace raises
            ``FileExistsError`` unless ``overwrite``.
        dataset: dataset name stored in ``meta.json``.
        model_config: the model's constructor arguments (stored as given; default: a few model attributes).
        overwrite: replace an existing trace (its sample files are deleted first).
    """

    def __init__(self, out_dir: str | Path, dataset: str, model_config: dict | None = None,
                 overwrite: bool = False):
        self.dir = Path(out_dir)
        if (self.dir / META_FILE).exists():
            if not overwrite:
                raise FileExistsError(f"{self.dir} already holds a trace ({META_FILE}); pass overwrite=True "
                                      f"or choose another folder")
            for old in self.dir.glob("sample_*.npz"):
                old.unlink()
            (self.dir / META_FILE).unlink()
        self.dir.mkdir(parents=True, exist_ok=True)
        self.dataset, self.model_config = dataset, model_config
        self.meta: TraceMeta | None = None
        self._warned_analog = False

    def record(self, model: nn.Module, x: torch.Tensor, label: int | None = None) -> SampleMeta:
        """Capture one sample (:func:`capture_sample`) and write it."""
        if self.model_config is None:
            self.model_config = model_summary(model)
        return self.write(capture_sample(model, x), label)

    def write(self, capture: Capture, label: int | None = None) -> SampleMeta:
        """Write one captured sample and update ``meta.json``."""
        if self.meta is None:
            self.meta = TraceMeta(
                T=capture.T, dataset=self.dataset, input_kind=capture.input_kind, model=self.model_config or {},
                skipped_blocks=capture.skipped_blocks, ops=capture.ops,
                tensors={k: TensorSpec(tuple(v.shape), str(v.dtype).removeprefix("torch."))
                         for k, v in capture.tensors.items()}, trace_id=uuid.uuid4().hex)
        else:
            self._check_same_structure(capture)
        sample_id = len(self.meta.samples)
        arrays, index = {}, {}
        for name, x in capture.tensors.items():  # a tensor equal to a stored one (q/k/v inputs) becomes an alias
            twin = next((k for k, y in capture.tensors.items() if k in arrays and y.shape == x.shape
                         and torch.equal(y, x)), None)
            if twin is not None:
                index[name] = {"encoding": "alias", "repeat_t": False, "alias": twin}
                continue
            arrays[name], index[name] = _encode(x)
        if not self._warned_analog and _analog_events(self.meta, index):
            self._warned_analog = True
            _warn_analog_events(sample_id)
        arrays["logits"] = capture.logits.cpu().numpy().astype(np.float32)
        arrays["lif_nnz"] = capture.lif_nnz.cpu().numpy().astype(np.int64)
        arrays[INDEX_KEY] = np.array(json.dumps({"format_version": FORMAT_VERSION, "trace_id": self.meta.trace_id,
                                                 "sample_id": sample_id, "tensors": index}))
        sample = SampleMeta(id=sample_id, file=f"sample_{sample_id:05d}.npz", label=None if label is None else
                            int(label), pred_per_step=tuple(capture.logits.cumsum(0).argmax(-1).tolist()))
        with atomic_open(self.dir / sample.file, "wb") as f:
            np.savez(f, **arrays)
        self.meta.samples.append(sample)
        text = json.dumps(self.meta.to_json(), indent=1).encode()
        with atomic_open(self.dir / META_FILE, "wb") as f:
            f.write(text)
        return sample

    def _check_same_structure(self, capture: Capture) -> None:
        """Same T, input kind and operations (names, kinds, shapes, attrs but the data-dependent ones)."""
        got = [("T", capture.T), ("input_kind", capture.input_kind), *map(_structure, capture.ops)]
        expected = [("T", self.meta.T), ("input_kind", self.meta.input_kind), *map(_structure, self.meta.ops)]
        if got != expected:
            diff = next((f"{a} vs {b}" for a, b in zip(expected, got) if a != b), f"{len(expected)} vs {len(got)} ops")
            raise ValueError(f"sample {len(self.meta.samples)} does not have the structure of the first sample of "
                             f"{self.dir} (first difference: {diff}); one trace folder holds one model and input size")


def _structure(op: OpMeta) -> tuple:
    """What must be equal between the samples of one trace: an op without its data-dependent attrs."""
    attrs = {k: v for k, v in op.attrs.items() if k not in DATA_DEPENDENT_ATTRS}
    return op.name, op.kind, op.in_shape, op.out_shape, op.tensor, json.dumps(attrs, sort_keys=True)


def _analog_events(meta: TraceMeta, index: dict) -> bool:
    """Event frames stored as float32: neither counts nor fixed point (e.g. resized by a non-power-of-two)."""
    return meta.input_kind == "events" and index[meta.layers()[0].tensor]["encoding"] == "float32"


def _warn_analog_events(sample_id: int) -> None:
    _logger.warning(
        "Trace sample %d: the event frames are not event counts (non-negative integers up to 65535, or multiples "
        "of 1/%d such as the 2x2 averages of a bilinear halving); a resize by a factor other than a power of two "
        "(e.g. N-MNIST 34 -> 32) interpolates them. The trace stores them as float32 and hw.run charges the first "
        "layer as an analog input (analog_input_bits passes over its non-zero pixels): an approximation of its "
        "event-driven cost. Counts survive only at the sensor size or a power-of-two fraction of it, and the model "
        "takes only sizes divisible by the total stride of its pooling stages (pooling_stat), which rules that out "
        "for some sensors (N-MNIST's 34 x 34 with the demo's pooling). Warned once per trace.",
        sample_id, 2 ** MAX_FRACTION_BITS)


def export_traces(model: nn.Module, samples: Iterable[tuple[torch.Tensor, int | None]], out_dir: str | Path,
                  dataset: str, num_samples: int | None = None, model_config: dict | None = None,
                  overwrite: bool = False, progress: bool = True) -> TraceMeta:
    """Write up to ``num_samples`` ``(input, label)`` pairs (each one sample, no batch axis or batch 1) as a trace."""
    from tqdm import tqdm

    writer = TraceWriter(out_dir, dataset, model_config, overwrite)
    for i, (x, label) in enumerate(tqdm(samples, total=num_samples, disable=not progress, desc="traces")):
        if num_samples is not None and i >= num_samples:
            break
        writer.record(model, x, None if label is None else int(label))
    if writer.meta is None:
        raise ValueError("export_traces got no samples")
    _logger.info("wrote %d trace samples to %s", len(writer.meta.samples), writer.dir)
    return writer.meta


# ------------------------------------------------------------------------------------------------------------ reader
@dataclass
class RawSample:
    """One sample as stored: ``arrays`` (channel-last; aliases resolved), ``index`` (per tensor its ``encoding``:
    bits, uint8, uint16 or float32, and ``repeat_t``: stored once for all steps), logits, LIF spike counts."""

    id: int
    label: int | None
    arrays: dict[str, np.ndarray]
    index: dict[str, dict]
    logits: np.ndarray
    lif_nnz: np.ndarray


@dataclass
class TraceSample:
    """One sample decoded: tensors ``[T, C, ...]`` in their original dtype, logits ``[T, K]``, LIF counts."""

    id: int
    label: int | None
    pred_per_step: tuple[int, ...]
    tensors: dict[str, torch.Tensor]
    logits: torch.Tensor
    lif_nnz: torch.Tensor


@functools.lru_cache(maxsize=4096)
def _npy_header(raw: bytes) -> tuple[tuple[int, ...], bool, np.dtype]:
    """``(shape, fortran_order, dtype)`` of a ``.npy`` header (cached: every sample repeats the same headers)."""
    f = io.BytesIO(raw)
    version = np.lib.format.read_magic(f)
    read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    return read(f)


def _read_npz(path: Path, check_crc: bool) -> dict[str, np.ndarray]:
    """Read an uncompressed ``.npz`` as read-only views of one memory map (no copies).

    Errors name the file and the member.  ``check_crc`` verifies each member's CRC-32 (about 1.5 GB/s).
    """
    try:
        with open(path, "rb") as f:
            infos = zipfile.ZipFile(f).infolist()
            data = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    except OSError as e:
        raise TraceFormatError(f"{path}: cannot read: {e}") from None
    except (zipfile.BadZipFile, ValueError) as e:
        raise TraceFormatError(f"{path}: not a readable .npz (truncated or corrupt): {e}") from None
    arrays = {}
    for info in infos:
        name, off = info.filename.removesuffix(".npy"), info.header_offset
        if info.compress_type != zipfile.ZIP_STORED or data[off:off + 4] != b"PK\x03\x04":
            raise TraceFormatError(f"{path}: member {name!r} is compressed or has a bad header; traces are "
                                   f"written uncompressed by engine.traces")
        name_len, extra_len = struct.unpack_from("<HH", data, off + 26)
        start = off + 30 + name_len + extra_len
        end = start + info.file_size
        if end > len(data):
            raise TraceFormatError(f"{path}: member {name!r} is truncated ({len(data) - start} of "
                                   f"{info.file_size} bytes)")
        if check_crc and zlib.crc32(memoryview(data)[start:end]) != info.CRC:
            raise TraceFormatError(f"{path}: member {name!r} fails its CRC-32 check (corrupt file)")
        try:
            size = 2 if data[start + 6] == 1 else 4  # .npy format 1.0: 2-byte header length, else 4
            offset = start + 8 + size + struct.unpack_from("<H" if size == 2 else "<I", data, start + 8)[0]
            shape, fortran, dtype = _npy_header(data[start:offset])
            count = math.prod(shape)
            if fortran or dtype.hasobject or offset + count * dtype.itemsize > end:
                raise ValueError("unexpected layout or size")
            arrays[name] = np.frombuffer(data, dtype, count, offset).reshape(shape)
        except ValueError as e:
            raise TraceFormatError(f"{path}: member {name!r} is not a valid .npy array: {e}") from None
    return arrays


class TraceReader:
    """Reads a trace folder written by :class:`TraceWriter`.

    Args:
        trace_dir: the folder with ``meta.json`` and the sample files.
        check_crc: verify every member's CRC-32 when loading a sample (bit flips); truncation and missing or
            misshaped tensors are always detected.

    Every problem raises :class:`TraceFormatError` naming the file and what is wrong.
    """

    def __init__(self, trace_dir: str | Path, check_crc: bool = True):
        self.dir, self.check_crc = Path(trace_dir), check_crc
        meta_path = self.dir / META_FILE
        try:
            self.meta = TraceMeta.from_json(json.loads(meta_path.read_text()), meta_path)
        except OSError as e:
            raise TraceFormatError(f"{meta_path}: cannot read the trace metadata ({e.strerror}); is {self.dir} a "
                                   f"trace folder?") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise TraceFormatError(f"{meta_path}: not valid JSON (truncated or corrupt?): {e}") from None
        self._samples = {s.id: s for s in self.meta.samples}

    @property
    def sample_ids(self) -> list[int]:
        return list(self._samples)

    def __len__(self) -> int:
        return len(self._samples)

    def path(self, sample_id: int) -> Path:
        return self.dir / self._samples[sample_id].file

    def load_raw(self, sample_id: int) -> RawSample:
        """The stored arrays of one sample, checked against ``meta.json``: trace and sample id, every tensor's
        encoding, dtype and shape, logits and LIF counts."""
        path = self.path(sample_id)
        arrays = _read_npz(path, self.check_crc)
        for key in (INDEX_KEY, "logits", "lif_nnz"):
            if key not in arrays:
                raise TraceFormatError(f"{path}: member {key!r} is missing")
        index = self._read_index(path, arrays.pop(INDEX_KEY), sample_id)
        for name, spec in self.meta.tensors.items():
            entry = _check_entry(path, name, index.get(name))
            source = entry.get("alias") if entry["encoding"] == "alias" else name
            if source not in arrays or not isinstance(index.get(source), dict) or index[source].get("encoding") in (
                    None, "alias"):
                raise TraceFormatError(f"{path}: tensor {name!r} has no stored data (member {source!r})")
            if entry["encoding"] == "alias":
                index[name] = _check_entry(path, source, index[source])
                arrays[name] = arrays[source]
            _check_stored(path, name, arrays[name], spec, index[name])
        self._check_outputs(path, arrays["logits"], arrays["lif_nnz"])
        meta = self._samples[sample_id]
        return RawSample(sample_id, meta.label, {k: arrays[k] for k in self.meta.tensors},
                         {k: index[k] for k in self.meta.tensors}, arrays["logits"], arrays["lif_nnz"])

    def _read_index(self, path: Path, member: np.ndarray, sample_id: int) -> dict:
        """The tensor index of a sample file, after checking that the file belongs to this trace and sample."""
        try:
            stored = json.loads(str(member[()]))
            index, stored_id = stored["tensors"], stored["sample_id"]
        except (ValueError, KeyError, TypeError) as e:
            raise TraceFormatError(f"{path}: member {INDEX_KEY!r} is not the tensor index: {e}") from None
        if not isinstance(index, dict):
            raise TraceFormatError(f"{path}: member {INDEX_KEY!r} has no tensor table (field 'tensors')")
        if self.meta.trace_id is not None and stored.get("trace_id") != self.meta.trace_id:
            raise TraceFormatError(f"{path}: belongs to trace {stored.get('trace_id')!r}, but meta.json describes "
                                   f"trace {self.meta.trace_id!r} (a sample file copied from another trace folder?); "
                                   f"a trace folder holds the samples of one export")
        if stored_id != sample_id:
            raise TraceFormatError(f"{path}: holds sample {stored_id!r}, but meta.json lists it as sample {sample_id} "
                                   f"(a sample file copied or renamed?)")
        return index

    def _check_outputs(self, path: Path, logits: np.ndarray, lif_nnz: np.ndarray) -> None:
        """``logits`` floating ``[T, K]``; ``lif_nnz`` non-negative integers ``[n_LIF, T]``."""
        n_lif, T = len(self.meta.lifs()), self.meta.T
        if lif_nnz.shape != (n_lif, T) or logits.ndim != 2 or logits.shape[0] != T:
            raise TraceFormatError(f"{path}: lif_nnz {lif_nnz.shape} / logits {logits.shape} do not match meta.json "
                                   f"({n_lif} LIFs, T={T}: expected ({n_lif}, {T}) / ({T}, classes))")
        if lif_nnz.dtype.kind not in "iu" or (lif_nnz.dtype.kind == "i" and lif_nnz.min(initial=0) < 0):
            raise TraceFormatError(f"{path}: member 'lif_nnz' must hold non-negative integer spike counts; it holds "
                                   f"{lif_nnz.dtype} values (minimum {lif_nnz.min(initial=0)})")
        if logits.dtype.kind != "f":
            raise TraceFormatError(f"{path}: member 'logits' is stored as {logits.dtype}; expected floating point")

    def load(self, sample_id: int) -> TraceSample:
        """One sample with every tensor decoded to its original shape and dtype."""
        raw = self.load_raw(sample_id)
        tensors = {name: _decode(raw.arrays[name], spec, raw.index[name]) for name, spec in self.meta.tensors.items()}
        return TraceSample(sample_id, raw.label, self._samples[sample_id].pred_per_step, tensors,
                           torch.from_numpy(raw.logits.copy()), torch.from_numpy(raw.lif_nnz.copy()))
