"""ASTER attention skipping: choose the blocks whose SDSA branch barely fires.

A block's rate is the mean over time steps of the firing rate of the spike tensor that feeds its attention
projection: ``MS_SSA_Conv{l}_x_after_qkv`` (SDT mode; ``_after_qkv`` in STAtten mode).  The rates come from an
un-skipped model (``firing.json`` or a reference ``sdt.log``, see :mod:`engine.firing`), and every block is judged
independently, as in ASTER.  Three ways to choose: a threshold (skip if rate <= X, inclusive), the K lowest-rate
blocks (the paper's heat map axis), or an explicit list.
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass

__all__ = ["SkipDecision", "block_attention_rates", "select_skip_blocks"]

_logger = logging.getLogger(__name__)
_ATTENTION_KEY = re.compile(r"MS_SSA_Conv(\d+)_")
_RATED_KEY = {"SDT": "_x_after_qkv", "STAtten": "_after_qkv"}  # per attention mode, the rated tensor's hook key


def block_attention_rates(rates: dict[str, dict[str, float]], depths: int,
                          attention_mode: str | None = None) -> list[float]:
    """Mean over the time steps present of each block's attention-output firing rate: ``_x_after_qkv`` for an
    ``SDT``-mode model, ``_after_qkv`` for a ``STAtten``-mode one (the reference's keys; either when
    ``attention_mode`` is None).

    Raises:
        ValueError: the rates lack a block of the model, hold a block it does not have (a deeper model's), or hold
            only the other attention mode's key.
    """
    deepest = max((int(m.group(1)) for per_key in rates.values() for k in per_key
                   if (m := _ATTENTION_KEY.match(k))), default=-1)
    if deepest >= depths:
        raise ValueError(f"the firing rates hold MS_SSA_Conv{deepest}_* keys, so they come from a model with at "
                         f"least {deepest + 1} blocks, not {depths}; measure this model's rates with firing_num.py")
    suffixes = [_RATED_KEY[attention_mode]] if attention_mode else list(_RATED_KEY.values())
    per_block = []
    for layer in range(depths):
        keys = [f"MS_SSA_Conv{layer}{suffix}" for suffix in suffixes]
        values = [per_key[k] for per_key in rates.values() for k in keys if k in per_key]
        if not values:
            raise ValueError(_missing_block_message(rates, layer, keys, depths, attention_mode))
        per_block.append(sum(values) / len(values))
    return per_block


def _missing_block_message(rates: dict[str, dict[str, float]], layer: int, keys: list[str], depths: int,
                           attention_mode: str | None) -> str:
    """Why block ``layer`` has none of ``keys``: the rates are of the other attention mode, or of another model."""
    other = [mode for mode, suffix in _RATED_KEY.items()
             if any(f"MS_SSA_Conv{layer}{suffix}" in per_key for per_key in rates.values())]
    if other:
        return (f"the firing rates hold MS_SSA_Conv{layer}{_RATED_KEY[other[0]]}, the rate of attention mode "
                f"{other[0]}, but the model runs attention mode {attention_mode} (rated by {keys[0]}); measure this "
                "model's rates with firing_num.py")
    wanted = keys[0] if len(keys) == 1 else f"{keys[0]} (or {keys[1]})"
    return (f"the firing rates have no {wanted} for block {layer}; they must come from an un-skipped model with "
            f"{depths} blocks")


@dataclass
class SkipDecision:
    """The chosen blocks, each block's rate and a human-readable reason per block."""

    blocks: list[int]
    rates: list[float]
    reasons: list[str]

    def as_dict(self) -> dict:
        return {"format": "skip-blocks/1", "skipped_blocks": self.blocks, "block_rates": self.rates,
                "reasons": self.reasons}


def select_skip_blocks(depths: int, rates: dict[str, dict[str, float]] | None = None, threshold: float | None = None,
                       lowest: int | None = None, explicit: list[int] | None = None,
                       attention_mode: str | None = None) -> SkipDecision:
    """Pick the blocks to skip by ``threshold`` (rate <= X), ``lowest`` (K lowest rates) or an ``explicit`` list.

    Exactly one rule must be given; ``rates`` is required by the first two and must be of a model in
    ``attention_mode`` (:func:`block_attention_rates`).  The decision is logged block by block.
    """
    rules = [name for name, value in (("threshold", threshold), ("lowest", lowest), ("explicit", explicit))
             if value is not None]
    if len(rules) != 1:
        raise ValueError(f"give exactly one skip rule (threshold, lowest or explicit), got {rules or 'none'}")
    block_rates = (block_attention_rates(rates, depths, attention_mode) if rates is not None
                   else [float("nan")] * depths)
    if explicit is not None:
        bad = [b for b in explicit if not 0 <= b < depths]
        if bad:
            raise ValueError(f"--skip-blocks {bad} out of range: the model has blocks 0..{depths - 1}")
        blocks = sorted(set(explicit))
        reasons = [f"block {b}: {'skipped (explicit list)' if b in blocks else 'kept'}" for b in range(depths)]
    elif rates is None:
        raise ValueError(f"the {rules[0]} rule needs firing rates (--log-file firing.json or sdt.log)")
    elif threshold is not None:
        blocks = [b for b, r in enumerate(block_rates) if r <= threshold]
        reasons = [f"block {b}: rate {r:.6g} {'<=' if b in blocks else '>'} threshold {threshold:g}: "
                   f"{'skipped' if b in blocks else 'kept'}" for b, r in enumerate(block_rates)]
    else:
        if not 0 <= lowest <= depths:
            raise ValueError(f"--skip-lowest {lowest} must be between 0 and the number of blocks ({depths})")
        order = sorted(range(depths), key=lambda b: (block_rates[b], b))
        blocks = sorted(order[:lowest])
        reasons = [f"block {b}: rate {block_rates[b]:.6g}, rank {order.index(b) + 1} of {depths}: "
                   f"{'skipped' if b in blocks else 'kept'}" for b in range(depths)]
    for reason in reasons:
        _logger.info("attention skip: %s", reason)
    return SkipDecision(blocks=blocks, rates=block_rates, reasons=reasons)
