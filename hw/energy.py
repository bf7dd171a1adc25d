"""Stage 5: energy.  Counts x per-action energies (an Accelergy-style table), plus leakage x latency.

``ACTION_ENERGY`` says which preset constants (``energy.*``, pJ) each counted action pays and to which component
the energy goes (``lumped_movement`` is SpikeSim's per-read buffer and H-tree energy).  Leakage is
``(tile_mw * used tiles + global_buffer_mw) * latency`` per step, charged to the ``chip`` row; 1 mW for 1 ns is
1 pJ.
"""
from __future__ import annotations

import numpy as np

from .config import HwConfig
from .counts import ACTIONS, ALL_COUNTS
from .mapping import Mapping
from .timing import Timing

__all__ = ["COMPONENTS", "ACTION_ENERGY", "energy_matrix", "leakage_pj", "compute_energy"]

COMPONENTS = ("xbar_cell", "wl_driver", "adc", "shift_add", "accumulate", "lif", "attention", "pool", "residual",
              "buffer_spike", "buffer_state", "global_buffer", "noc", "lumped_movement", "dram", "xbar_write",
              "controller", "digital_ac", "digital_mac", "leakage")

ACTION_ENERGY: dict[str, tuple[tuple[str, str], ...]] = {
    "wl_rows": (("wl_driver", "wl_drive"),),
    "cell_reads": (("xbar_cell", "cell_read"),),
    "xbar_reads": (("xbar_cell", "xbar_read"), ("lumped_movement", "read_overhead")),
    "adc_conv": (("adc", "adc"), ("adc", "mux")),
    "shift_adds": (("shift_add", "shift_add"),),
    "psum_adds": (("accumulate", "psum_add"),),
    "lif_updates": (("lif", "lif"),),
    "res_adds": (("residual", "residual_add"),),
    "attn_gates": (("attention", "attn_gate"),),
    "attn_incs": (("attention", "attn_inc"),),
    "attn_adds": (("attention", "attn_add"),),
    "pool_or": (("pool", "pool_or"),),
    "pool_cmp": (("pool", "pool_cmp"),),
    "spike_rd_bits": (("buffer_spike", "sram_read_bit"),),
    "spike_wr_bits": (("buffer_spike", "sram_write_bit"),),
    "state_rd_bits": (("buffer_state", "sram_read_bit"),),
    "state_wr_bits": (("buffer_state", "sram_write_bit"),),
    "gb_rd_bits": (("global_buffer", "gb_read_bit"),),
    "gb_wr_bits": (("global_buffer", "gb_write_bit"),),
    "noc_bit_hops": (("noc", "noc_bit_hop"),),
    "bus_bits": (("noc", "bus_bit"),),
    "dram_bits": (("dram", "dram_bit"),),
    "cell_writes": (("xbar_write", "cell_write"),),
    "ctrl_steps": (("controller", "ctrl_step"),),
    "exit_checks": (("controller", "exit_check_class"),),
    "sops": (("digital_ac", "sop"),),
    "macs": (("digital_mac", "mac"),),
}


def energy_matrix(config: HwConfig) -> np.ndarray:
    """``[A, C]`` pJ per action per component (timing-only actions have zero rows)."""
    m = np.zeros((len(ALL_COUNTS), len(COMPONENTS)))
    for a, action in enumerate(ACTIONS):
        for component, constant in ACTION_ENERGY[action]:
            m[a, COMPONENTS.index(component)] += getattr(config.energy, constant)
    return m


def leakage_pj(mapping: Mapping, config: HwConfig, latency_cycles: np.ndarray) -> np.ndarray:
    """Leakage of the used tiles and the global buffer over ``latency_cycles``."""
    power_mw = config.leakage.tile_mw * mapping.tiles_used + config.leakage.global_buffer_mw
    return power_mw * latency_cycles / config.chip.clock_ghz


def compute_energy(counts: np.ndarray, timing: Timing, mapping: Mapping, config: HwConfig,
                   matrix: np.ndarray) -> np.ndarray:
    """Energy ``[B, R, T, C]`` in pJ; leakage goes to the ``chip`` row."""
    energy = counts @ matrix
    chip = np.flatnonzero(mapping.vec["chip"])[0]
    energy[..., chip, :, COMPONENTS.index("leakage")] = leakage_pj(mapping, config, timing.latency)
    return energy
