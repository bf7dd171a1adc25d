"""Stage 0: hardware presets.  A YAML file -> a frozen :class:`HwConfig` of dataclasses, validated strictly.

Every preset lives in ``hw/config/*.yaml`` with the source of each constant in a comment next to it.  A preset may
start from another with ``base: other.yaml`` (path relative to the file) and override any subset of fields; the
merged result must define every field.  Numbers are finite; energies, leakage and the fields marked
``_zero_ok`` may be 0, every other number (geometry, lanes, bandwidths, clock, times) must be positive.  Errors
(:class:`HwInputError`) name the file and the dotted field: an unknown key, a missing field, a zero, negative,
infinite or non-numeric constant, a value outside its choices.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path

import yaml

__all__ = ["HwInputError", "read_mapping", "CrossbarConfig", "ChipConfig", "TimingConfig", "MemoryConfig",
           "EnergyConfig", "LeakageConfig", "FeatureConfig", "DataflowConfig", "StatisticalConfig", "GpuConfig",
           "HwConfig", "preset_path", "load_config", "load_feature_overrides", "with_features", "CONFIG_DIR"]

CONFIG_DIR = Path(__file__).parent / "config"


class HwInputError(ValueError):
    """Bad input to the hardware model; the message names the file and the field."""


def _choice(*options: str):
    return field(metadata={"choices": options})


def _zero_ok():
    """A numeric field that may be 0 (an energy, a leakage, an optional cost); other numbers must be positive."""
    return field(metadata={"zero_ok": True})


def _fraction():
    """A positive number at most 1 (a share of a peak rate)."""
    return field(metadata={"at_most": 1})


@dataclass(frozen=True)
class CrossbarConfig:
    """Analog crossbar geometry and precision (weight-stationary, one layer's weights per set of crossbars)."""

    rows: int  # R: wordlines per crossbar
    cols: int  # Cx: bitlines per crossbar
    weight_bits: int  # b_w
    cell_bits: int  # b_c; a weight uses ceil(b_w / b_c) columns (bit slices)
    sign_columns: int  # s: 1 = offset encoding, 2 = differential column pairs
    mux: int  # m: columns sharing one ADC / sense amplifier
    adc_bits: int  # b_adc (reported; the energy per conversion is given directly)
    replication: int  # copies of every layer's crossbars (throughput)
    analog_input_bits: int  # bit-serial passes for an analog (non-spike) first-layer input


@dataclass(frozen=True)
class ChipConfig:
    """Tiles and digital lanes."""

    subarrays_per_tile: int  # one crossbar per subarray
    max_tiles: int  # mapping limit
    clock_ghz: float
    lif_lanes_per_tile: int  # LIF updates per cycle per tile
    digital_lanes_per_tile: int  # pool / residual / token-mean ops per cycle per tile
    attention_lanes: int  # digital attention unit ops per cycle (chip-wide)
    buffer_bits_per_cycle_per_tile: int  # local SRAM bandwidth
    global_buffer_bits_per_cycle: int


@dataclass(frozen=True)
class TimingConfig:
    read_ns: float  # one crossbar read (wordline pulse + settle)
    conversion_ns: float = _zero_ok()  # one ADC conversion; a read converts its columns in ``mux`` rounds
    cell_write_ns: float  # one row write (attention on crossbars)


@dataclass(frozen=True)
class MemoryConfig:
    membrane_bits: int
    residual_bits: int
    psum_bits: int
    count_bits: int  # bits per DVS event count in an input frame
    state_kib_per_tile: float = _zero_ok()  # membrane + residual SRAM per tile
    spike_kib_per_tile: float = _zero_ok()
    global_buffer_kib: float = _zero_ok()


@dataclass(frozen=True)
class EnergyConfig:
    """Energy per action in pJ (docs/hw.md lists which count each one multiplies)."""

    wl_drive: float = _zero_ok()  # per driven wordline per crossbar read
    cell_read: float = _zero_ok()  # per cell on a driven wordline
    xbar_read: float = _zero_ok()  # per crossbar read, array-level (precharge, reference)
    read_overhead: float = _zero_ok()  # per crossbar read, lumped data movement (SpikeSim-style presets)
    adc: float = _zero_ok()  # per conversion
    mux: float = _zero_ok()  # per conversion
    shift_add: float = _zero_ok()  # per bit-slice shift-add
    psum_add: float = _zero_ok()  # per partial-sum add across row blocks / input bit planes
    lif: float = _zero_ok()  # per LIF update (logic; membrane traffic is charged to the buffer)
    residual_add: float = _zero_ok()  # per residual or token-mean add
    attn_gate: float = _zero_ok()  # per 1-bit AND/OR in the attention unit
    attn_inc: float = _zero_ok()  # per counter increment in the attention unit
    attn_add: float = _zero_ok()  # per multi-bit add in the attention unit
    pool_or: float = _zero_ok()  # per output of a 3x3 max-pool on spikes (9-input OR)
    pool_cmp: float = _zero_ok()  # per output of a 3x3 max-pool on real values (8 compares)
    sram_read_bit: float = _zero_ok()
    sram_write_bit: float = _zero_ok()
    gb_read_bit: float = _zero_ok()
    gb_write_bit: float = _zero_ok()
    noc_bit_hop: float = _zero_ok()
    bus_bit: float = _zero_ok()
    dram_bit: float = _zero_ok()
    cell_write: float = _zero_ok()  # per RRAM cell written (attention on crossbars; weight programming)
    ctrl_step: float = _zero_ok()  # controller, per executed layer per time step
    exit_check_class: float = _zero_ok()  # early-exit check, per class per time step (accumulate + compare)
    sop: float = _zero_ok()  # paper convention: per synaptic accumulate (0 in PIM presets)
    mac: float = _zero_ok()  # paper convention: per MAC of the analog first layer (0 in PIM presets)


@dataclass(frozen=True)
class LeakageConfig:
    tile_mw: float = _zero_ok()  # per used tile
    global_buffer_mw: float = _zero_ok()


@dataclass(frozen=True)
class FeatureConfig:
    """The sparsity features; each is an ablation switch."""

    wordline_gating: bool
    read_skipping: bool
    event_driven_attention: bool
    spike_encoding: str = _choice("bitmap", "aer", "auto")
    attention_skipping: bool
    early_exit: bool
    reuse_static_encoding: bool
    attention_unit: str = _choice("digital", "crossbar")


@dataclass(frozen=True)
class DataflowConfig:
    order: str = _choice("timestep_major", "layer_major")
    pipelining: bool  # latency, leakage and throughput use the pipelined figure (both are reported)
    layer_major_chunk: int = _zero_ok()  # steps per layer pass in layer_major (exits only at its ends); 0 = all T


@dataclass(frozen=True)
class StatisticalConfig:
    read_model: str = _choice("bernoulli", "linear")


@dataclass(frozen=True)
class GpuConfig:
    """Modelled GPU baseline (an estimate): time = max(ops / (efficiency * peak), bytes / bandwidth) + launches."""

    name: str
    power_w: float
    peak_tops: float
    efficiency: float = _fraction()  # achieved share of the peak rate
    bandwidth_gbps: float
    launch_us: float = _zero_ok()
    kernels_per_op: float = _zero_ok()
    bytes_per_value: float


@dataclass(frozen=True)
class HwConfig:
    name: str
    technology_nm: float
    crossbar: CrossbarConfig
    chip: ChipConfig
    timing: TimingConfig
    memory: MemoryConfig
    energy: EnergyConfig
    leakage: LeakageConfig
    features: FeatureConfig
    dataflow: DataflowConfig
    statistical: StatisticalConfig
    gpu: GpuConfig
    source: str = field(default="", compare=False)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d.pop("source")
        return d

    @property
    def hash(self) -> str:
        """sha256 of the canonical JSON of every field (16 hex digits)."""
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:16]


def read_mapping(path: str | Path, fmt: str = "YAML", what: str = "a preset") -> dict:
    """The top-level mapping of a YAML or JSON (``fmt``) file; an unreadable file, a syntax error or another
    top-level type is one :class:`HwInputError` naming the file and ``what`` it should hold."""
    loads, syntax_error = (json.loads, json.JSONDecodeError) if fmt == "JSON" else (yaml.safe_load, yaml.YAMLError)
    try:
        d = loads(Path(path).read_text())
    except OSError as e:
        raise HwInputError(f"{path}: cannot read {what} ({e.strerror})") from None
    except UnicodeDecodeError:
        raise HwInputError(f"{path}: not {fmt} text (not UTF-8); give {what}") from None
    except syntax_error as e:
        raise HwInputError(f"{path}: not valid {fmt}: {e}") from None
    if not isinstance(d, dict):
        raise HwInputError(f"{path}: {what} must be a {fmt} mapping, got {type(d).__name__}")
    return d


def _number(value, hint):
    """``value`` as a finite number of type ``hint``, or None.  A float field also takes a numeric string: YAML 1.1
    reads ``16e-3`` (no dot) as one."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        return None
    if hint is int:
        return value if isinstance(value, int) else None
    try:
        value = float(value)
    except (ValueError, OverflowError):
        return None
    return value if math.isfinite(value) else None


def _check_value(path: Path, key: str, f: dataclasses.Field, hint, value) -> None:
    """Type, sign and choice check of one leaf value."""
    zero_ok = f.metadata.get("zero_ok", False)
    if hint is bool:
        ok = isinstance(value, bool)
    elif hint in (int, float):
        number = _number(value, hint)
        ok = number is not None and (number >= 0 if zero_ok else number > 0) and number <= f.metadata.get(
            "at_most", math.inf)
    else:
        ok = isinstance(value, str) and value in f.metadata.get("choices", (value,))
    if not ok:
        sign = "a non-negative" if zero_ok else "a positive"
        bound = f" at most {f.metadata['at_most']}" if "at_most" in f.metadata else ""
        want = {bool: "true or false", int: f"{sign} integer", float: f"{sign} finite number{bound}"}.get(
            hint, f"one of {f.metadata.get('choices')}" if f.metadata.get("choices") else "a string")
        raise HwInputError(f"{path}: field '{key}' is {value!r}; it must be {want}")


def _validate(cls, d: dict, path: Path, prefix: str = "", require_all: bool = True) -> None:
    """Check keys and leaf values of ``d`` against dataclass ``cls``; with ``require_all`` every field must exist."""
    hints = typing.get_type_hints(cls)
    known = {f.name: f for f in fields(cls) if f.name != "source"}
    for key, value in d.items():
        if key not in known:
            raise HwInputError(f"{path}: unknown key '{prefix}{key}' (known: {', '.join(sorted(known))})")
        f, hint = known[key], hints[key]
        if dataclasses.is_dataclass(hint):
            if not isinstance(value, dict):
                raise HwInputError(f"{path}: field '{prefix}{key}' must be a mapping, got {value!r}")
            _validate(hint, value, path, f"{prefix}{key}.", require_all)
        else:
            _check_value(path, f"{prefix}{key}", f, hint, value)
    if require_all:
        missing = [name for name in known if name not in d]
        if missing:
            raise HwInputError(f"{path}: missing field '{prefix}{missing[0]}'"
                               + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""))


def _merge(base: dict, override: dict) -> dict:
    out = dict(base)
    for key, value in override.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def _resolve(path: Path, seen: tuple[Path, ...] = ()) -> dict:
    """The preset at ``path`` merged over its ``base`` chain; each file's own keys are checked in that file."""
    path = path.resolve()
    if path in seen:
        raise HwInputError(f"{path}: 'base' chain loops back to itself")
    d = read_mapping(path)
    base = d.pop("base", None)
    _validate(HwConfig, d, path, require_all=False)
    if base is None:
        return d
    if not isinstance(base, str):
        raise HwInputError(f"{path}: field 'base' must be a file name, got {base!r}")
    return _merge(_resolve(path.parent / base, (*seen, path)), d)


def _build(cls, d: dict):
    hints = typing.get_type_hints(cls)
    return cls(**{k: _build(hints[k], v) if dataclasses.is_dataclass(hints[k]) else
                  (float(v) if hints[k] is float else v) for k, v in d.items()})


def preset_path(path: str | Path) -> Path:
    """A bare name (no folder, no suffix) such as ``aster_default`` means ``hw/config/<name>.yaml``, whatever the
    working directory holds; it is taken as a path only when ``hw/config/`` has no such preset but the path exists.
    """
    if Path(path).name != str(path) or Path(path).suffix:
        return Path(path)
    preset = CONFIG_DIR / f"{path}.yaml"
    return Path(path) if not preset.exists() and Path(path).exists() else preset


def load_config(path: str | Path) -> HwConfig:
    """Load, merge and validate a preset (a path, or a bare name: :func:`preset_path`)."""
    path = preset_path(path)
    d = _resolve(path)
    _validate(HwConfig, d, path)
    return dataclasses.replace(_build(HwConfig, d), source=str(path))


def load_feature_overrides(path: str | Path) -> dict:
    """The ``features`` section a baseline preset itself sets (e.g. ``dense_pim``: every sparsity feature off)."""
    path = preset_path(path)
    d = read_mapping(path)
    features = d.get("features", {})
    _validate(FeatureConfig, features, path, "features.", require_all=False)
    return features


def with_features(config: HwConfig, name: str | None = None, **features) -> HwConfig:
    """``config`` with some feature switches replaced (a baseline or an ablation of the same hardware)."""
    return dataclasses.replace(config, name=name or config.name,
                               features=dataclasses.replace(config.features, **features))
