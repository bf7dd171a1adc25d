"""hw NoC charges: every move between stages costs bits x hops from the stage that produced the data (crossbar
inputs, the 16-bit residual stream, q/k spikes into the attention core), in every dataflow and in both modes."""
from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from hw.activity import Activity, exact_activity, statistical_activity
from hw.config import load_config
from hw.counts import ALL_COUNTS, count_actions
from hw.energy import COMPONENTS, energy_matrix
from hw.mapping import build_mapping
from hw.workload import Workload, rates_from_traces
from hw_helpers import tiny_capture, write

NOC = ALL_COUNTS.index("noc_bit_hops")


def _centroids(mapping) -> dict[str, np.ndarray]:
    """Tile centroid of every layer: ceil(crossbars / 4) tiles each, placed in order along a snake."""
    layers = [r for r in mapping.rows if r.geom is not None]
    tiles = [-(-r.geom.crossbars // 4) for r in layers]
    width = math.ceil(math.sqrt(sum(tiles)))
    snake = lambda k: (k // width, k % width if (k // width) % 2 == 0 else width - 1 - k % width)  # noqa: E731
    starts = np.cumsum([0] + tiles)
    return {r.name: np.mean([snake(k) for k in range(a, a + n)], axis=0) for r, a, n in zip(layers, starts, tiles)}


def _spike_bits(numel: int, nnz: np.ndarray) -> np.ndarray:
    """Bits of a binary tensor moved as bitmap or AER, whichever is cheaper."""
    return np.minimum(numel, nnz * math.ceil(math.log2(numel)))


def _expected(capture, mapping, mode: str) -> dict[str, np.ndarray]:
    """NoC bit-hops per step of the moves the old model left out or measured from the wrong layer."""
    cen = _centroids(mapping)
    hops = lambda a, b: max(1.0, float(np.abs(cen[a] - cen[b]).sum()))  # noqa: E731
    lifs = [op for op in capture.ops if op.kind == "lif"]
    lif_bits = {op.name: _spike_bits(math.prod(op.out_shape), capture.lif_nnz[k].numpy())
                for k, op in enumerate(lifs)}
    numel = math.prod(next(op for op in capture.ops if op.name == "patch_embed").out_shape)
    stream = numel * 16.0  # 16-bit residual stream per step
    out = {"patch_embed": stream * hops("patch_embed.proj_conv3", "patch_embed.rpe_conv")}
    for b, before in enumerate(("patch_embed.rpe_conv", "block.0.mlp.fc2_conv")):
        p = f"block.{b}.attn"
        spikes = capture.tensors[f"in:{p}.q_conv"]
        in_bits = _spike_bits(spikes[0].numel(), (spikes != 0).flatten(1).sum(1).numpy())
        for conv in ("q_conv", "k_conv", "v_conv"):  # all read the shortcut LIF's spikes, on the stage before
            out[f"{p}.{conv}"] = in_bits * hops(before, f"{p}.{conv}")
        out[f"{p}.core"] = (lif_bits[f"{p}.q_lif"] * hops(f"{p}.q_conv", f"{p}.v_conv")
                            + lif_bits[f"{p}.k_lif"] * hops(f"{p}.k_conv", f"{p}.v_conv"))
        if mode == "STAtten":  # out * x_pool + x_pool: the shortcut LIF's spikes too
            out[f"{p}.core"] += lif_bits[f"{p}.shortcut_lif"] * hops(before, f"{p}.v_conv")
        out[p] = stream * hops(before, f"{p}.proj_conv")
        out[f"block.{b}.mlp"] = stream * hops(f"{p}.proj_conv", f"block.{b}.mlp.fc2_conv")
    return out


@pytest.mark.parametrize("mode,order", [("SDT", "timestep_major"), ("SDT", "layer_major"),
                                        ("STAtten", "timestep_major")])
def test_noc_charges_every_move_from_its_producer(tmp_path, mode, order):
    capture, summary = tiny_capture(mode, True)
    workload = Workload.open(write(tmp_path / "t", [capture], summary))
    config = load_config("aster_default")
    config = dataclasses.replace(config, dataflow=dataclasses.replace(config.dataflow, order=order))
    mapping = build_mapping(workload.meta, config)
    exact = exact_activity(workload.reader.load_raw(0), mapping, config)
    expected = _expected(capture, mapping, mode)
    rates = rates_from_traces(workload.reader)
    for act in (exact, statistical_activity(rates, mapping, config)):  # one sample: its rates are exact
        counts = count_actions(Activity.stack([act]), mapping, config, "events")[0]
        for name, bit_hops in expected.items():
            np.testing.assert_allclose(counts[mapping.index(name), :, NOC], bit_hops, rtol=1e-9, err_msg=name)


def test_a_move_into_the_port_tile_still_costs_one_hop(tmp_path):
    """The first layer (2 x 3x3 = 18 rows, 8 outputs x 4 slices = 32 columns: 1 crossbar, 1 tile) sits at tile
    (0, 0), where the port is: Manhattan distance 0, yet its input crosses the NoC, so hops = max(1, 0) = 1 and
    noc_bit_hops = the bits it reads from the global buffer x 1 (1 row block: no cross-tile partial sums);
    its noc energy = noc_bit_hops x noc_bit_hop + bus_bits x bus_bit."""
    capture, summary = tiny_capture("SDT", True)
    workload = Workload.open(write(tmp_path / "t", [capture], summary))
    config = load_config("aster_default")
    mapping = build_mapping(workload.meta, config)
    first = mapping.index("patch_embed.proj_conv")
    assert (mapping.rows[first].geom.crossbars, _centroids(mapping)["patch_embed.proj_conv"].tolist()) == (1, [0, 0])
    assert mapping.vec["hops"][first] == 1.0 and mapping.vec["psum_noc_fraction"][first] == 0
    act = exact_activity(workload.reader.load_raw(0), mapping, config)
    counts = count_actions(Activity.stack([act]), mapping, config, "events")[0][first]
    bits = counts[:, ALL_COUNTS.index("gb_rd_bits")]
    assert (bits > 0).all()
    np.testing.assert_array_equal(counts[:, NOC], bits * 1)
    noc_energy = (counts @ energy_matrix(config))[:, COMPONENTS.index("noc")]
    e = config.energy
    np.testing.assert_allclose(noc_energy, bits * e.noc_bit_hop + counts[:, ALL_COUNTS.index("bus_bits")] * e.bus_bit)
