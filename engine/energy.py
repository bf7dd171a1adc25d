"""Theoretical SNN energy, the papers' recipe (SDT supplementary; Horowitz, ISSCC 2014, 45 nm, 32-bit float).

For every ``nn.Conv2d`` / ``nn.Linear`` that runs, the ANN FLOPs of one time step for one image are
``k_h * k_w * H_out * W_out * C_in * C_out / groups`` (conv) or ``in * out`` per token (linear).  The rate ``R`` of the
tensor that actually feeds the layer (read by a forward-pre hook, so a max-pool between a LIF and a conv is
respected) is its mean value over all samples and time steps: the fraction of ones for spikes, and the mean event
count for non-binary inputs (DVS counts, STAtten's {0, 1, 2} DVS attention output), each count being one
accumulate.  An analog input charged as accumulates (a static image with ``first_layer_as_mac=False``, or any input
with negative values) costs one accumulate per non-zero value: its rate is the fraction of non-zero values, never
negative.  Then::

    SOPs_l = R_l * T * FLOPs_l                    (synaptic accumulates, charged E_AC = 0.9 pJ)
    MACs   = FLOPs_enc * encoding_steps           (first conv on analog static images, charged E_MAC = 4.6 pJ)
    E      = E_MAC * MACs + E_AC * sum_l SOPs_l   per image

``encoding_steps`` is 1 by default, as the papers write it (the repeated static image is encoded once); pass
``T`` to charge every repeated copy (its ``rate`` column reads 1: dense).  With event input the first layer sees
event counts and is charged as AC (switchable with ``first_layer_as_mac``; as MACs, all T steps are charged,
since event frames differ at every step).  The unused ``talking_heads`` Conv1d
never runs and costs nothing; the attention itself (masks, sums, STAtten's spike matmuls) is outside this recipe,
as in the papers.  With the model's ``encode_once`` the stem conv runs once per image; the meter gives it the T
copies while it is attached (``encoding_on_copies``), so the counts are those of the reference computation.

Cross-check with spikingjelly 2.0 (``op_counter.SynOpCounter`` / ``MACCounter``): see :func:`spikingjelly_counts`.
"""
from __future__ import annotations

import csv
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch import nn

from .atomic import atomic_open

__all__ = ["conv_output_hw", "EnergyConstants", "LayerEnergy", "EnergyMeter", "spikingjelly_counts", "write_energy_csv"]


@dataclass(frozen=True)
class EnergyConstants:
    """Energy per operation in pJ (defaults: 45 nm, 32-bit float, Horowitz ISSCC 2014)."""

    e_mac_pj: float = 4.6
    e_ac_pj: float = 0.9

    def __post_init__(self):
        for name, value in asdict(self).items():
            if not value >= 0:
                raise ValueError(f"{name}={value} must be a non-negative energy in pJ")


@dataclass
class LayerEnergy:
    """One row of ``energy.csv`` (per image)."""

    layer: str
    type: str
    kernel: str
    in_channels: int
    out_channels: int
    output_size: str
    flops: int
    rate: float
    macs: float
    sops: float
    energy_pj: float


@dataclass
class _LayerCount:
    module: nn.Module
    flops: int = 0
    output_size: str = ""
    input_sum: torch.Tensor | None = None
    input_nonzero: torch.Tensor | None = None
    input_min: torch.Tensor | None = None
    input_elements: int = 0  # elements of one time step of one image
    samples: int = 0
    steps: int = 0


def conv_output_hw(conv: nn.Conv2d, h: int, w: int) -> tuple[int, int]:
    """Output height and width of ``conv`` on an ``h x w`` input (numeric padding; a string padding counts as 0)."""
    pad = conv.padding if isinstance(conv.padding, tuple) else (0, 0)
    return tuple((size + 2 * p - d * (k - 1) - 1) // s + 1
                 for size, k, s, d, p in zip((h, w), conv.kernel_size, conv.stride, conv.dilation, pad))


def _layer_flops(module: nn.Module, x: torch.Tensor) -> tuple[int, int, str]:
    """(FLOPs for one step of one image, input elements per step per image, output size) from a batched input.

    Conv inputs are ``[T * B, C, H, W]``; linear inputs ``[..., in_features]`` hold one token per image and step
    (the head's ``[T, B, D]``).
    """
    if isinstance(module, nn.Conv2d):
        c_in, h, w = x.shape[-3:]
        h_out, w_out = conv_output_hw(module, h, w)
        flops = module.kernel_size[0] * module.kernel_size[1] * h_out * w_out * c_in * module.out_channels \
            // module.groups
        return flops, c_in * h * w, f"{h_out}x{w_out}"
    return module.in_features * module.out_features, module.in_features, str(module.out_features)


class EnergyMeter:
    """Forward-pre hooks on every Conv2d/Linear of a time-major model that count what feeds each layer.

    Args:
        model: the network; layers are named by ``named_modules``.
        T: time steps; a layer called with ``T * B`` rows (or ``[T, B, ...]``) sees ``B`` images.
        dvs_input: the first layer receives event counts rather than an analog image.
        constants: energies per operation.
        first_layer_as_mac: charge the first layer as MACs (default: only for static, analog input).
        encoding_steps: how many time steps of the encoding layer to charge as MACs (1 = the papers' recipe);
            with ``dvs_input`` it is T (each step's frame is another input) and this argument must be left at 1.

    Raises:
        ValueError: ``encoding_steps`` other than 1 with ``dvs_input``, or outside 1..T.
    """

    def __init__(self, model: nn.Module, T: int, dvs_input: bool = False, constants: EnergyConstants | None = None,
                 first_layer_as_mac: bool | None = None, encoding_steps: int = 1):
        self.T = T
        self.constants = constants or EnergyConstants()
        self.dvs_input = dvs_input
        self.first_layer_as_mac = (not dvs_input) if first_layer_as_mac is None else first_layer_as_mac
        if dvs_input and encoding_steps != 1:
            raise ValueError(f"encoding_steps {encoding_steps}: it counts the steps of a repeated static image; "
                             f"event frames differ at every step, so all T are charged")
        if not 1 <= encoding_steps <= T:
            raise ValueError(f"encoding_steps {encoding_steps}: charge between 1 and T={T} time steps of the "
                             "encoding conv")
        self.encoding_steps = T if dvs_input and self.first_layer_as_mac else encoding_steps
        self._layers: dict[str, _LayerCount] = {}
        self._order: list[str] = []
        self._handles = []
        # The counts assume every layer sees T * B rows: give the stem conv the T copies of a static image.
        self._copies = model.encoding_on_copies() if hasattr(model, "encoding_on_copies") else nullcontext()
        self._copies.__enter__()
        for name, module in model.named_modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                self._layers[name] = _LayerCount(module)
                self._handles.append(module.register_forward_pre_hook(self._hook_for(name)))

    def _hook_for(self, name: str):
        def hook(module, inputs):
            x = inputs[0].detach()
            count = self._layers[name]
            if count.input_sum is None:
                count.flops, count.input_elements, count.output_size = _layer_flops(module, x)
                count.input_sum = torch.zeros((), dtype=torch.float64, device=x.device)
                count.input_nonzero = torch.zeros((), dtype=torch.int64, device=x.device)
                count.input_min = torch.full((), float("inf"), dtype=torch.float64, device=x.device)
                self._order.append(name)
            rows = x.numel() // count.input_elements  # image-steps: T * B
            count.input_sum += x.sum(dtype=torch.float64)
            count.input_nonzero += torch.count_nonzero(x)
            torch.minimum(count.input_min, x.min().double(), out=count.input_min)
            count.samples += rows // self.T
            count.steps += rows
        return hook

    def all_reduce(self) -> None:
        """Combine the counts of every process (``torch.distributed``), in place."""
        import torch.distributed as dist

        for name in self._order:
            count = self._layers[name]
            dist.all_reduce(count.input_sum)
            dist.all_reduce(count.input_nonzero)
            dist.all_reduce(count.input_min, op=dist.ReduceOp.MIN)
            sizes = torch.tensor([count.samples, count.steps], dtype=torch.int64, device=count.input_sum.device)
            dist.all_reduce(sizes)
            count.samples, count.steps = sizes.tolist()

    def remove(self) -> None:
        """Detach the hooks."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self._copies.__exit__(None, None, None)

    def __enter__(self) -> "EnergyMeter":
        return self

    def __exit__(self, *exc) -> None:
        self.remove()

    def rows(self) -> list[LayerEnergy]:
        """Per-layer energy for one image, in execution order."""
        rows = []
        for i, name in enumerate(self._order):
            count = self._layers[name]
            module = count.module
            analog = (i == 0 and not self.dvs_input) or count.input_min.item() < 0
            ops = count.input_nonzero if analog else count.input_sum  # analog: one accumulate per non-zero value
            rate = ops.item() / (count.steps * count.input_elements)
            if i == 0 and self.first_layer_as_mac:  # dense analog input: every value is multiplied
                rate, macs, sops = 1.0, float(count.flops * self.encoding_steps), 0.0
            else:
                macs, sops = 0.0, rate * self.T * count.flops
            conv = isinstance(module, nn.Conv2d)
            rows.append(LayerEnergy(
                layer=name, type=type(module).__name__,
                kernel="x".join(map(str, module.kernel_size)) if conv else "-",
                in_channels=module.in_channels if conv else module.in_features,
                out_channels=module.out_channels if conv else module.out_features,
                output_size=count.output_size, flops=count.flops, rate=rate, macs=macs, sops=sops,
                energy_pj=self.constants.e_mac_pj * macs + self.constants.e_ac_pj * sops,
            ))
        return rows

    def summary(self) -> dict:
        """Totals per image: MACs, SOPs, energy in pJ and mJ, with the constants and counting choices."""
        rows = self.rows()
        total_pj = sum(r.energy_pj for r in rows)
        return {
            "samples": self._layers[self._order[0]].samples if self._order else 0,
            "T": self.T, "e_mac_pj": self.constants.e_mac_pj, "e_ac_pj": self.constants.e_ac_pj,
            "first_layer_as_mac": self.first_layer_as_mac, "encoding_steps": self.encoding_steps,
            "macs": sum(r.macs for r in rows), "sops": sum(r.sops for r in rows),
            "ann_flops": sum(r.flops for r in rows), "energy_pj": total_pj, "energy_mj": total_pj * 1e-9,
        }


def write_energy_csv(rows: list[LayerEnergy], path: Path) -> None:
    """``energy.csv``: one row per layer (per image), written atomically."""
    with atomic_open(path) as f:
        writer = csv.DictWriter(f, fieldnames=list(LayerEnergy.__dataclass_fields__))
        writer.writeheader()
        writer.writerows(asdict(r) for r in rows)


@dataclass
class SpikingJellyCounts:
    """spikingjelly 2.0's per-layer counts for one forward (all images, all time steps)."""

    synops: dict[str, int] = field(default_factory=dict)
    macs: dict[str, int] = field(default_factory=dict)


def spikingjelly_counts(model: nn.Module, x: torch.Tensor) -> SpikingJellyCounts:
    """Run ``model(x)`` under spikingjelly's ``SynOpCounter`` and ``MACCounter``; counts per Conv2d/Linear name.

    How they relate to :class:`EnergyMeter` on the same run (tested in ``tests/test_energy.py``):

    * 1x1 convs and linear layers with binary input: SynOps == ``SOPs * images`` exactly (each input spike is
      used by every output channel).
    * 3x3 convs: spikingjelly counts the exact weight uses, so spikes on the border, whose windows hang over the
      zero padding, count fewer uses; the recipe's ``R * FLOPs`` charges every spike the full ``k*k*C_out`` fan-out
      on average.  SynOps <= SOPs * images, equal when no spike touches the border.
    * The first conv on analog input: MACCounter counts what runs, once per image with the model's
      ``encode_once`` (the default; MACs_sj == MACs * images / encoding_steps) or T repeated steps without it
      (MACs_sj == MACs * images * T / encoding_steps); the recipe counts ``encoding_steps`` (1) of them.
    * Non-binary inputs (event counts, STAtten DVS's {0,1,2}) are not spikes for spikingjelly and get no SynOps.
    * spikingjelly also counts spike matmuls inside STAtten's attention, which the recipe leaves out; those are not
      Conv2d/Linear and are not in these per-layer dicts.
    """
    from spikingjelly.activation_based.op_counter import DispatchCounterMode, MACCounter, SynOpCounter

    synop_counter, mac_counter = SynOpCounter(), MACCounter()
    with torch.no_grad(), DispatchCounterMode([synop_counter, mac_counter]):
        model(x)
    prefix = type(model).__name__ + "."
    names = {name for name, m in model.named_modules() if isinstance(m, (nn.Conv2d, nn.Linear))}
    counts = SpikingJellyCounts()
    for target, counter in ((counts.synops, synop_counter), (counts.macs, mac_counter)):
        for scope, per_op in counter.records.items():
            name = scope.removeprefix(prefix)
            if name in names:
                target[name] = int(sum(per_op.values()))
    return counts
