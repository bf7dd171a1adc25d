"""Cycle-level model of the ASTER hybrid analog-digital PIM accelerator, driven by spike traces (docs/hw.md).

One module per stage: :mod:`hw.config` (preset YAML -> dataclasses) -> :mod:`hw.workload` (trace or rates, skip
list, exit steps) -> :mod:`hw.mapping` (crossbars, tiles, stages, memory) -> :mod:`hw.activity` and
:mod:`hw.counts` (actions per layer and time step) -> :mod:`hw.timing` (cycles) -> :mod:`hw.energy` ->
:mod:`hw.report`; :mod:`hw.pipeline` runs them for a preset, its baselines and ablations; ``python -m hw.run`` is the
CLI.
"""
