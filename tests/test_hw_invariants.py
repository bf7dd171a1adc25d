"""Invariants of the hardware model (aster_hw.md 4.10): zero and full traces, linearity in density, attention
skipping, early exit, exact vs statistical mode."""
from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from engine.traces import capture_sample
from hw.activity import Activity, exact_activity
from hw.config import load_config, with_features
from hw.counts import ALL_COUNTS
from hw.energy import COMPONENTS
from hw.pipeline import Variant, make_variant, simulate
from hw.timing import flow_shop_latency
from hw.synthetic import dvs_events, firing_model
from hw.workload import Rates, Workload, rates_from_traces
from hw_helpers import edited, tiny_capture, write

C = {name: i for i, name in enumerate(ALL_COUNTS)}
XBAR_ACTIONS = ("wl_rows", "cell_reads", "xbar_reads", "adc_conv", "shift_adds", "psum_adds", "serial_reads")


def _run(variant: Variant, workload: Workload, sample: int = 0, exit_step: int | None = None):
    """``(counts [R, T, A], energy [R, T, C], latency [T])`` of one sample under one variant."""
    act = Activity.stack([exact_activity(workload.reader.load_raw(sample), variant.mapping, variant.config)])
    w = None if exit_step is None else (np.arange(variant.mapping.T) < exit_step)[None].astype(float)
    counts, timing, energy = variant.evaluate(act, workload.meta.input_kind, w)
    return counts[0], energy[0], timing.latency[0]


@pytest.fixture(scope="module")
def sdt_dvs(tmp_path_factory):
    capture, config = tiny_capture("SDT", True)
    return Workload.open(write(tmp_path_factory.mktemp("sdt") / "t", [capture], config))


def test_all_zero_trace_reads_no_crossbar(tmp_path):
    capture, config = tiny_capture("SDT", True)
    workload = Workload.open(write(tmp_path / "t", [edited(capture, 0.0)], config))
    counts, energy, _ = _run(make_variant("aster", load_config("aster_default"), workload), workload)
    for action in XBAR_ACTIONS + ("attn_gates", "attn_incs", "sops", "spike_rd_bits", "spike_wr_bits"):
        assert not counts[..., C[action]].any(), action
    left = {c for c, e in zip(COMPONENTS, energy.sum((0, 1))) if e > 0}
    # what remains runs every step whatever the input: leakage, control, membrane updates and their state,
    # the residual stream (its adds, and its moves to the stage of each add) and the pools' fixed windows
    assert left <= {"leakage", "controller", "lif", "buffer_state", "residual", "pool", "noc"}
    assert {"leakage", "controller", "lif", "noc"} <= left
    rows = make_variant("aster", load_config("aster_default"), workload).mapping.rows
    moved = {r.name for r, e in zip(rows, energy[..., COMPONENTS.index("noc")].sum(1)) if e > 0}
    assert moved == {"block.0.attn", "block.0.mlp", "block.1.attn", "block.1.mlp", "patch_embed"}


def test_all_ones_trace_equals_dense_pim(tmp_path):
    """Every sparsity feature is a no-op on an all-ones trace, except the zero padding of 3x3 convs, which a
    gated design never drives: there aster reads exactly the padding rows fewer (checked by hand)."""
    capture, config = tiny_capture("SDT", True)
    workload = Workload.open(write(tmp_path / "t", [edited(capture, 1.0)], config))
    aster = make_variant("aster", load_config("aster_default"), workload)
    dense = make_variant("dense", load_config("dense_pim"), workload)
    (ca, ea, _), (cd, ed, _) = _run(aster, workload), _run(dense, workload)
    rows = aster.mapping.rows
    padded = {i for i, r in enumerate(rows) if r.geom is not None and r.geom.padding != (0, 0)}
    for i, r in enumerate(rows):
        if i in padded or r.kind == "chip":  # chip: leakage follows the padded layers' latency
            continue
        assert np.allclose(ca[i], cd[i]), r.name
        assert np.allclose(ea[i], ed[i]), r.name
    for i in padded:
        g = rows[i].geom
        h, w = g.in_hw
        inside = sum(min(h, y + 2) - max(0, y - 1) for y in range(h)) * sum(min(w, x + 2) - max(0, x - 1)
                                                                             for x in range(w))  # valid taps
        planes = 1
        assert ca[i, :, C["wl_rows"]] == pytest.approx(inside * g.cin * g.col_blocks * planes)
        assert cd[i, :, C["wl_rows"]] == pytest.approx(g.positions * g.rows_total * g.col_blocks * planes)
        assert (ca[i, :, C["xbar_reads"]] <= cd[i, :, C["xbar_reads"]]).all()
    assert ea.sum() <= ed.sum()


def _scaled(rates: Rates, s: float) -> Rates:
    scale = lambda d: {k: v * s for k, v in d.items()}  # noqa: E731
    return dataclasses.replace(rates, planes=scale(rates.planes), means=scale(rates.means),
                               nonzero=scale(rates.nonzero), kv=scale(rates.kv), lif=rates.lif * s,
                               silent={k: np.zeros_like(v) for k, v in rates.silent.items()})


def _stat_energy(workload, config, rates) -> float:
    return simulate(workload, config, "statistical", rates, progress=False).tally.totals[config.name][0][0]


def test_statistical_energy_is_linear_and_monotone_in_density(sdt_dvs):
    rates = rates_from_traces(sdt_dvs.reader)
    top = 1.0 / max(v.sum(1).max() for v in rates.planes.values())  # keeps every density (and plane sum) <= 1
    scales = np.linspace(0, top, 5)
    config = load_config("aster_default")
    linear = dataclasses.replace(
        with_features(config, spike_encoding="aer"), leakage=dataclasses.replace(config.leakage, tile_mw=0.0,
                                                                                  global_buffer_mw=0.0),
        statistical=dataclasses.replace(config.statistical, read_model="linear"))
    e = np.array([_stat_energy(sdt_dvs, linear, _scaled(rates, s)) for s in scales])
    assert np.all(np.diff(e) > 0)
    assert np.allclose(np.diff(e, 2), 0, atol=1e-9 * e.max())  # affine: constant increments
    e = np.array([_stat_energy(sdt_dvs, config, _scaled(rates, s)) for s in scales])  # Bernoulli, AER auto, leakage
    assert np.all(np.diff(e) > 0)


def test_skip_list_removes_exactly_the_sdsa_components(tmp_path, sdt_dvs):
    skip = tmp_path / "skip.json"
    skip.write_text(json.dumps({"skipped_blocks": [0]}))
    skipped = Workload.open(sdt_dvs.reader.dir, skip_json=skip)
    config = load_config("aster_default")
    base, cut = make_variant("a", config, sdt_dvs), make_variant("a", config, skipped)
    (_, e_base, _), (_, e_cut, _) = _run(base, sdt_dvs), _run(cut, skipped)
    removed = {r.name for r in cut.mapping.rows if r.skipped}
    attn = "block.0.attn"
    assert removed == {f"{attn}.{n}" for n in ("shortcut_lif", "q_conv", "q_lif", "k_conv", "k_lif", "v_conv",
                                               "v_lif", "pool", "pool#1", "pool#2", "pool#3", "talking_heads_lif",
                                               "core", "proj_conv")} | {attn}
    # the MLP now reads the residual stream from the stage before the block: its first layer and its residual add
    # are charged the NoC hops from there (no layer moves: the placement holds the skipped layers too)
    moved, noc = {"block.0.mlp.fc1_conv", "block.0.mlp"}, COMPONENTS.index("noc")
    for i, r in enumerate(cut.mapping.rows):
        if r.name in removed:
            assert not e_cut[i].any(), r.name
        elif r.name in moved:
            assert np.array_equal(np.delete(e_cut[i], noc, -1), np.delete(e_base[i], noc, -1)), r.name
        elif r.kind not in ("control", "chip"):  # fewer layers to sequence; shorter run, less leakage
            assert np.array_equal(e_cut[i], e_base[i]), r.name
    mlp = cut.mapping.index("block.0.mlp")
    assert cut.mapping.vec["stream_hops"][mlp] != base.mapping.vec["stream_hops"][mlp]
    assert e_cut[mlp, :, noc].sum() != e_base[mlp, :, noc].sum()
    assert any(r.name.startswith("block.0.mlp") for r in cut.mapping.rows if not r.skipped)


def test_exit_truncation_equals_the_sum_of_per_step_energies(tmp_path):
    """Energy with an exit after step t == the first t per-step energies of the full run == a run of t steps."""
    net = firing_model(T=4, embed_dims=64, img_size=32)
    x = dvs_events(4, 32, seed=2)
    trace = write(tmp_path / "full", [capture_sample(net, x)])
    config = load_config("aster_default")

    def run(step):
        path = tmp_path / f"exit{step}.json"
        path.write_text(json.dumps({"exit_steps": [step], "sample_ids": [0]}))
        return simulate(Workload.open(trace, exit_json=path), config, progress=False)

    per_step = run(4).tally.energy.sum((0, 2))  # all steps, with the per-step exit check
    res_exit = run(2)
    assert res_exit.tally.totals[config.name][0][0] == pytest.approx(per_step[:2].sum(), rel=1e-12)
    assert res_exit.tally.energy[:, 2:].sum() == 0
    no_exit = simulate(Workload.open(trace), config, progress=False).tally.energy.sum((0, 2))
    net.T = 2  # causality: the same model run for 2 steps
    short = Workload.open(write(tmp_path / "short", [capture_sample(net, x[:, :2])]))
    _, e_short, _ = _run(make_variant("a", config, short), short)
    assert e_short.sum() == pytest.approx(no_exit[:2].sum(), rel=1e-9)


def test_statten_exits_only_at_chunk_ends(tmp_path):
    capture, config = tiny_capture("STAtten", True)
    exits = tmp_path / "exit.json"
    exits.write_text(json.dumps({"exit_steps": [1]}))
    workload = Workload.open(write(tmp_path / "t", [capture], config), exit_json=exits)
    res = simulate(workload, load_config("aster_default"), progress=False)
    assert res.tally.steps == [2.0]  # chunk_size 2


def test_statistical_exits_round_to_each_variant_s_chunk_ends(tmp_path):
    """STAtten with every attention skipped exits at step 1, but its no_attention_skipping ablation keeps the
    chunked attention, which exits only at step 2.  Statistical mode rounded the exits once, by the skipping
    model's mapping, so the ablation ran 1 step (half the energy; exact mode ran 2)."""
    capture, config = tiny_capture("STAtten", True)
    trace = write(tmp_path / "t", [capture], config)
    (tmp_path / "skip.json").write_text('{"skipped_blocks": [0, 1]}')
    preset = load_config("aster_default")

    def energies(step, mode):
        (tmp_path / "exit.json").write_text(json.dumps({"exit_steps": [step]}))
        workload = Workload.open(trace, skip_json=tmp_path / "skip.json", exit_json=tmp_path / "exit.json")
        totals = simulate(workload, preset, mode, progress=False).tally.totals
        return totals[preset.name][0][0], totals["no_attention_skipping"][0][0]

    for mode in ("exact", "statistical"):
        (skipping_1, full_1), (skipping_2, full_2) = energies(1, mode), energies(2, mode)
        assert full_1 == pytest.approx(full_2, rel=1e-12), mode  # the chunk of 2 steps runs whole
        assert skipping_1 < 0.7 * skipping_2, mode  # no attention, no chunk: one step


def test_exact_and_statistical_agree_on_a_dvs_trace(tmp_path):
    """Bernoulli model with silent positions: above exact, by 15 % on these DVS-shaped traces (docs/hw.md: it treats
    neighbouring pixels as independent, so it over-estimates the row blocks 3x3 convs read on clustered events)."""
    captures = [tiny_capture("SDT", True, seed=s)[0] for s in range(3)]
    workload = Workload.open(write(tmp_path / "t", captures))
    config = load_config("aster_default")
    exact = np.mean([e for e, _ in simulate(workload, config, progress=False).tally.totals[config.name]])
    stat = _stat_energy(workload, config, rates_from_traces(workload.reader))
    assert 1.10 < stat / exact < 1.22


def test_rates_of_spike_tensors_count_channels_not_packed_bits(tmp_path):
    """Width 32: proj_conv1 reads 4 channels, packed into one byte with 4 padding bits.  For a 0/1 tensor the
    density of its single bit plane and its mean both equal its non-zero fraction (they were half of it)."""
    net = firing_model(T=2, embed_dims=32, depths=1, img_size=32)
    workload = Workload.open(write(tmp_path / "t", [capture_sample(net, dvs_events(2, 32, seed=2))]))
    rates = rates_from_traces(workload.reader)
    binary = [name for name, spec in workload.meta.tensors.items()
              if workload.reader.load_raw(0).index[name]["encoding"] == "bits"]
    assert any(workload.meta.tensors[name].shape[1] % 8 for name in binary)
    for name in binary:
        np.testing.assert_allclose(rates.planes[name][:, 0], rates.nonzero[name], rtol=1e-12, err_msg=name)
        np.testing.assert_allclose(rates.means[name], rates.nonzero[name], rtol=1e-12, err_msg=name)


def test_trace_of_a_skipping_model_warns_that_baselines_skip_too(tmp_path, caplog):
    """No attention_skipping ablation either, also when --skip-json repeats the blocks (ASTER's step 6)."""
    capture, config = tiny_capture("SDT", False, skip=(1,))
    path = write(tmp_path / "t", [capture], config)
    (tmp_path / "skip.json").write_text('{"skipped_blocks": [1]}')
    for skip_json in (None, tmp_path / "skip.json"):
        workload = Workload.open(path, skip_json=skip_json)
        res = simulate(workload, load_config("aster_default"), progress=False)
        assert "skips the attention of blocks [1]" in caplog.text and "--skip-json" in caplog.text
        assert "no_attention_skipping" not in [v.name for v in res.variants]


def test_layer_major_attention_and_static_reuse_use_the_global_buffer(tmp_path):
    """Layer-major: q, k, v and the attention output move through the global buffer like the LIF spikes; a reused
    static encoding is written there once (t = 0) and read at every later step."""
    capture, config = tiny_capture("SDT", False)
    workload = Workload.open(write(tmp_path / "t", [capture], config))
    preset = load_config("aster_default")
    staged = dataclasses.replace(preset, dataflow=dataclasses.replace(preset.dataflow, order="layer_major"))
    variant = make_variant("staged", staged, workload)
    counts, _, _ = _run(variant, workload)
    rows = variant.mapping.rows
    attention = [i for i, r in enumerate(rows) if r.kind == "attention"]
    assert attention and all(counts[i, :, C["spike_rd_bits"]].sum() == counts[i, :, C["spike_wr_bits"]].sum() == 0
                             for i in attention)
    assert all(counts[i, :, C["gb_rd_bits"]].sum() > 0 and counts[i, :, C["gb_wr_bits"]].sum() > 0
               for i in attention)
    first = next(i for i, r in enumerate(rows) if r.geom is not None)
    stored = counts[first, 0, C["gb_wr_bits"]]
    assert stored > 0 and not counts[first, 1:, C["gb_wr_bits"]].any()
    assert np.all(counts[first, 1:, C["gb_rd_bits"]] == stored)  # the stored encoding, read back at every step


def test_exit_checks_are_made_only_where_a_sample_can_exit(tmp_path):
    """Layer-major in chunks of 2 steps can exit only after steps 2 and 4, but the logits were checked at all 4
    steps: with every sample running to T, early-exit support cost energy and saved none (saving 0.9999995)."""
    capture, config = tiny_capture("SDT", True)
    (tmp_path / "exit.json").write_text(json.dumps({"exit_steps": [4]}))
    workload = Workload.open(write(tmp_path / "t", [capture], config), exit_json=tmp_path / "exit.json")
    preset = load_config("aster_default")
    for order, chunk, steps in (("timestep_major", 0, [1, 1, 1, 1]), ("layer_major", 2, [0, 1, 0, 1]),
                                ("layer_major", 4, [0, 0, 0, 1])):
        flow = dataclasses.replace(preset.dataflow, order=order, layer_major_chunk=chunk)
        counts, _, _ = _run(make_variant(order, dataclasses.replace(preset, dataflow=flow), workload), workload,
                            exit_step=4)
        per_step = counts[..., C["exit_checks"]].sum(0)
        assert per_step.max() > 0 and (per_step / per_step.max()).tolist() == steps, (order, chunk)


def test_static_reuse_costs_nothing_at_one_step(tmp_path):
    """T = 1: the static encoding is never replayed, so reuse stores nothing and equals computing it (no
    reuse_static_encoding ablation either)."""
    capture, config = tiny_capture("SDT", False, T=1)
    workload = Workload.open(write(tmp_path / "t", [capture], config))
    preset = load_config("aster_default")
    assert preset.features.reuse_static_encoding
    reuse = _run(make_variant("reuse", preset, workload), workload)[0]
    plain = _run(make_variant("plain", with_features(preset, reuse_static_encoding=False), workload), workload)[0]
    np.testing.assert_array_equal(reuse, plain)
    res = simulate(workload, preset, progress=False)
    assert "no_reuse_static_encoding" not in [v.name for v in res.variants]


@pytest.mark.parametrize("order", ["timestep_major", "layer_major"])
@pytest.mark.parametrize("dvs", [True, False])
def test_pipelined_latency_is_never_above_the_serial_one(tmp_path, order, dvs):
    """Pipelining overlaps stages; it cannot take longer than running them one after the other (the layer-major
    formula counted one step of the slowest stage twice: 220 us pipelined against 164 us serial at T=2)."""
    capture, config = tiny_capture("SDT", dvs)
    workload = Workload.open(write(tmp_path / "t", [capture], config))
    preset = load_config("aster_default")
    preset = dataclasses.replace(preset, dataflow=dataclasses.replace(preset.dataflow, order=order))
    variant = make_variant("v", preset, workload)
    act = Activity.stack([exact_activity(workload.reader.load_raw(0), variant.mapping, variant.config)])
    _, timing, _ = variant.evaluate(act, workload.meta.input_kind, None)
    serial, pipelined = timing.latency_serial.sum(), timing.latency_pipelined.sum()
    assert 0 < pipelined <= serial
    if order == "layer_major":  # the flow shop, step by step, stage by stage
        stage = timing.stage_cycles[0]
        finish = np.zeros(stage.shape)
        for s in range(stage.shape[0]):
            for t in range(stage.shape[1]):
                finish[s, t] = max(finish[s - 1, t] if s else 0, finish[s, t - 1] if t else 0) + stage[s, t]
        assert pipelined == pytest.approx(finish[-1, -1], rel=1e-12)
        assert pipelined >= stage.sum(-1).max()


def test_layer_major_pipelining_is_aflow_shop_latency():
    """Hand-computed: stage 0 costs 4 then 1, stage 1 costs 1 then 4.  Stage 1 starts step 0 at 4 and step 1 at 5,
    so the run ends at 9 (the old 'slowest stage plus one-step fill' formula gave 7.5, less than possible); the
    steps cost 5 and 4, and a 1-step run costs what the first step costs."""
    stage = np.array([[4.0, 1.0], [1.0, 4.0]])
    assert flow_shop_latency(stage).tolist() == [5.0, 4.0]
    assert flow_shop_latency(stage[:, :1]).tolist() == [5.0]
    assert flow_shop_latency(np.stack([stage, 2 * stage])).tolist() == [[5.0, 4.0], [10.0, 8.0]]
