"""hw counting: the vectorised activity against brute-force im2col, hand-computed counts for a 2-256 model, and
the SOP calibration against the papers' firing-rate recipe (engine.energy)."""
from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from engine.energy import EnergyMeter
from engine.traces import OpMeta, TraceReader, capture_sample
from hw.activity import Activity, crossbar_maps, exact_activity
from hw.config import load_config, with_features
from hw.counts import ALL_COUNTS, count_actions
from hw.mapping import build_mapping, crossbar_geometry
from hw.pipeline import simulate
from hw.synthetic import dvs_events, firing_model
from hw.workload import Workload, and_nnz_per_t, rates_from_traces
from hw_helpers import tiny_capture, write

C = {name: i for i, name in enumerate(ALL_COUNTS)}


def _conv_op(cin, cout, k, stride, pad, h):
    ho = (h + 2 * pad - k) // stride + 1
    return OpMeta("conv", "conv", None, False, (cin, h, h), (cout, ho, ho), "x",
                  {"kernel": [k, k], "stride": [stride, stride], "padding": [pad, pad], "dilation": [1, 1],
                   "groups": 1, "in_channels": cin, "out_channels": cout, "bias": False, "first": False})


@pytest.mark.parametrize("cin,k,stride,pad,rows,encoding", [
    (16, 3, 1, 1, 16, "bits"), (24, 3, 2, 1, 40, "bits"), (8, 1, 1, 0, 16, "bits"), (64, 3, 1, 0, 128, "bits"),
    (3, 3, 1, 1, 16, "uint8"), (2, 3, 1, 1, 16, "uint16"), (2, 3, 1, 1, 128, "float32")])
def test_activity_matches_brute_force_im2col(cin, k, stride, pad, rows, encoding):
    """Shifted popcounts == im2col (HWC row order) cut into row blocks, for every step, plane and block."""
    config = load_config("aster_default")
    config = dataclasses.replace(config, crossbar=dataclasses.replace(config.crossbar, rows=rows))
    geom = crossbar_geometry(_conv_op(cin, 8, k, stride, pad, 12), config)
    g = torch.Generator().manual_seed(cin + k)
    T = 3
    if encoding == "bits":
        x = (torch.rand(T, cin, 12, 12, generator=g) < 0.2).float()
        stored = np.packbits(x.permute(0, 2, 3, 1).to(torch.uint8).numpy(), axis=-1)
        planes, weight = [x], 1
    elif encoding in ("uint8", "uint16"):  # uint16: counts above 255, 9 bit planes
        x = torch.poisson(torch.full((T, cin, 12, 12), 0.7 if encoding == "uint8" else 300.0), generator=g)
        stored = x.permute(0, 2, 3, 1).numpy().astype(encoding)
        planes, weight = [((x.long() >> b) & 1).float() for b in range(int(x.max()).bit_length())], 1
    else:
        x = torch.randn(T, cin, 12, 12, generator=g) * (torch.rand(T, cin, 12, 12, generator=g) < 0.5)
        stored = x.permute(0, 2, 3, 1).numpy()
        planes, weight = [(x != 0).float()], config.crossbar.analog_input_bits
    stats = crossbar_maps(stored, {"encoding": encoding, "repeat_t": False}, geom, config)
    wl, reads, pos = np.zeros(T), np.zeros((T, geom.row_blocks)), np.zeros(T)
    any_read = 0
    for plane in planes:
        cols = F.unfold(plane, k, padding=pad, stride=stride)  # [T, C*k*k (c-major), positions]
        hwc = cols.reshape(T, cin, k * k, -1).transpose(1, 2).reshape(T, cin * k * k, -1)  # kernel-major rows
        blocks = [hwc[:, i * rows:(i + 1) * rows].sum(1) for i in range(geom.row_blocks)]  # a [T, positions]
        wl += sum(b.sum(1) for b in blocks).numpy()
        reads += torch.stack([(b > 0).sum(1) for b in blocks], 1).numpy()
        any_read = any_read + sum(blocks)
    pos = (any_read > 0).sum(1).numpy()
    assert np.array_equal(stats["wl"], wl * weight)
    assert np.array_equal(stats["reads"], reads.sum(1) * weight)
    assert np.array_equal(stats["serial"], reads.max(1) * weight)
    block_rows = np.array([min(rows, cin * k * k - i * rows) for i in range(geom.row_blocks)], dtype=float)
    assert np.array_equal(stats["full_wl"], reads @ block_rows * weight)  # ungated: every row of a block read
    assert np.array_equal(stats["pos"], pos)
    assert np.array_equal(stats["in_nnz"], (x != 0).flatten(1).sum(1).numpy())
    assert stats["planes"] == len(planes) * weight
    if encoding != "float32":
        assert np.array_equal(stats["in_sum"], x.flatten(1).sum(1).numpy())


@pytest.fixture(scope="module")
def model_2_256():
    """A 2-256, 64x64 DVS model's trace at T=2 (geometry as CIFAR10-DVS; T does not change the mapping)."""
    net = firing_model(T=2, embed_dims=256, img_size=64, num_heads=8, chunk_size=2)
    return capture_sample(net, dvs_events(2, 64, seed=3))


def test_crossbar_allocation_of_2_256_by_hand(tmp_path, model_2_256):
    """Row blocks I = ceil(k*k*C_in / 128), column blocks J = ceil(C_out * 4 slices / 128), per layer."""
    reader = TraceReader(write(tmp_path / "t", [model_2_256]))
    mapping = build_mapping(reader.meta, load_config("aster_default"))
    expected = {"patch_embed.proj_conv": (1, 1), "patch_embed.proj_conv1": (3, 2), "patch_embed.proj_conv2": (5, 4),
                "patch_embed.proj_conv3": (9, 8), "patch_embed.rpe_conv": (18, 8), "head": (2, 1)}
    for b in range(2):
        for name in ("attn.q_conv", "attn.k_conv", "attn.v_conv", "attn.proj_conv"):
            expected[f"block.{b}.{name}"] = (2, 8)
        expected |= {f"block.{b}.mlp.fc1_conv": (2, 32), f"block.{b}.mlp.fc2_conv": (8, 8)}
    got = {r.name: (r.geom.row_blocks, r.geom.col_blocks) for r in mapping.rows if r.geom is not None}
    assert got == expected
    assert mapping.crossbars_used == 629 and mapping.tiles_used == sum(-(-i * j // 4) for i, j in expected.values())


def _counts_for(tmp_path, capture, tensors: dict, config_name="aster_default"):
    edited = dataclasses.replace(capture, tensors={k: torch.zeros_like(v) for k, v in capture.tensors.items()})
    for name, x in tensors.items():
        edited.tensors[name] = x
    workload = Workload.open(write(tmp_path / "t", [edited]))
    config = load_config(config_name)
    mapping = build_mapping(workload.meta, config)
    act = exact_activity(workload.reader.load_raw(0), mapping, config)
    counts = count_actions(Activity.stack([act]), mapping, config, "events")[0]
    return {r.name: counts[i] for i, r in enumerate(mapping.rows)}


def test_per_layer_counts_match_a_hand_calculation(tmp_path, model_2_256):
    """Known spikes into q_conv (1x1, 256 -> 256) and proj_conv1 (3x3, 32 -> 64 at 64x64), by hand."""
    T = 2
    q_in = torch.zeros(T, 256, 16, 16)
    q_in[0, 0:10, 0, 0] = 1  # token 0: 10 spikes in row block 0
    q_in[0, 200, 0, 5] = 1  # token 5: 1 spike in row block 1
    q_in[0, [3, 130], 0, 7] = 1  # token 7: one spike in each row block
    c1_in = torch.zeros(T, 32, 64, 64)
    c1_in[1, 5, 10, 10] = 1  # interior: 9 output positions, kernel positions 0..8 -> blocks 0,0,0,0,1,1,1,1,2
    c1_in[1, 7, 0, 0] = 1  # corner: 4 output positions, kernel positions 0, 1, 3, 4 -> blocks 0, 0, 0, 1
    counts = _counts_for(tmp_path, model_2_256, {"in:block.0.attn.q_conv": q_in,
                                                  "in:patch_embed.proj_conv1": c1_in})
    q, c1 = counts["block.0.attn.q_conv"], counts["patch_embed.proj_conv1"]
    J, cols, cout = 8, 1024, 256  # 256 outputs x 4 slices = 1024 columns = 8 column blocks
    spikes, pairs, positions = 13, 4, 3  # (token, row block) pairs read: (0,0), (5,1), (7,0), (7,1)
    assert q[0, C["wl_rows"]] == spikes * J and q[0, C["cell_reads"]] == spikes * cols
    assert q[0, C["xbar_reads"]] == pairs * J and q[0, C["adc_conv"]] == pairs * cols
    assert q[0, C["shift_adds"]] == pairs * cout * 3 and q[0, C["psum_adds"]] == (pairs - positions) * cout
    assert q[0, C["serial_reads"]] == 2 and q[0, C["sops"]] == spikes * cout
    assert not q[1, :C["macs"]].any()
    J, cols = 2, 256  # 64 outputs x 4 slices
    assert c1[1, C["wl_rows"]] == (9 + 4) * J and c1[1, C["xbar_reads"]] == (9 + 4) * J
    assert c1[1, C["adc_conv"]] == 13 * cols and c1[1, C["serial_reads"]] == 4 + 3
    assert c1[1, C["psum_adds"]] == 0 and c1[1, C["sops"]] == 2 * 9 * 64  # nominal fan-out k*k*C_out
    dense = _counts_for(tmp_path / "d", model_2_256, {}, "dense_pim")["patch_embed.proj_conv1"]
    assert dense[1, C["xbar_reads"]] == 4096 * 3 * 2 and dense[1, C["wl_rows"]] == 4096 * 288 * 2


@pytest.mark.parametrize("mode,dvs", [("SDT", False), ("SDT", True), ("STAtten", True), ("SDT", "halved")])
def test_sop_calibration_reproduces_the_firing_rate_report(tmp_path, mode, dvs):
    """sop45 (E_AC 0.9 pJ per SOP, E_MAC 4.6 pJ, everything else 0) == E_MAC * MACs + E_AC * sum_l R_l T FLOPs_l,
    computed directly from the stored layer inputs, and == engine.energy.EnergyMeter on the same forward.
    "halved": 64x64 event counts resized bilinearly to 32x32 (as CIFAR10-DVS 128 -> 64), multiples of 1/4."""
    net = firing_model(T=4, embed_dims=64, img_size=32, in_channels=2 if dvs else 3, dvs=bool(dvs),
                       attention_mode=mode)
    x = dvs_events(4, 32, seed=5) if dvs is True else torch.randn(1, 3, 32, 32)
    if dvs == "halved":
        x = F.interpolate(dvs_events(4, 64, seed=5)[0], size=32, mode="bilinear")[None]
        assert not torch.equal(x, x.round()) and torch.equal(x * 4, (x * 4).round())
    with EnergyMeter(net, T=4, dvs_input=bool(dvs)) as meter:
        capture = capture_sample(net, x)
    reader = TraceReader(write(tmp_path / "t", [capture]))
    first = reader.meta.layers()[0].tensor
    raw_entry = reader.load_raw(0).index[first]
    assert raw_entry["encoding"] == ("float32" if not dvs else "uint8")
    assert raw_entry.get("fraction_bits", 0) == (2 if dvs == "halved" else 0)
    sample = reader.load(0)
    direct = 0.0
    for op in reader.meta.layers():
        g = crossbar_geometry(op, load_config("aster_default"))
        rate = sample.tensors[op.tensor].double().mean().item()
        if op.attrs["first"] and not dvs:
            direct += 4.6 * g.flops  # the repeated static image is encoded once
        else:
            direct += 0.9 * rate * 4 * g.flops
    res = simulate(Workload(reader), load_config("sop45"), progress=False)
    energy = res.tally.totals["sop45"][0][0]
    assert energy == pytest.approx(direct, rel=1e-9)
    assert energy == pytest.approx(meter.summary()["energy_pj"], rel=1e-6)
    assert math.isclose(res.tally.energy.sum(), energy, rel_tol=1e-12)


@pytest.mark.parametrize("reference,width,heads", [("sdt", 64, 4), ("statten", 64, 4), ("sdt", 48, 2)])
def test_dvs_sdt_increments_count_the_pooled_k_and_v(tmp_path, reference, width, heads):
    """SDT with DVS input sums pool(K * V) (3x3 max over tokens and channels of a head): the counter increments
    (exact and statistical) are the non-zeros of that pooled tensor, taken from the model's own pool.  Heads of 16
    channels take the packed-word path, heads of 24 the unpacked one."""
    net = firing_model(T=4, embed_dims=width, num_heads=heads, img_size=32, dvs=True, attention_mode="SDT",
                       reference=reference)
    pooled = []
    handles = [m.kv_before.register_forward_hook(
        lambda probe, inputs, kv, attn=m: pooled.append(torch.count_nonzero(attn.pool(kv).flatten(1), dim=1)))
        for m in net.modules() if hasattr(m, "kv_before")]
    capture = capture_sample(net, dvs_events(4, 32, seed=1))
    for h in handles:
        h.remove()
    workload = Workload.open(write(tmp_path / "t", [capture]))
    config = load_config("aster_default")
    mapping = build_mapping(workload.meta, config)
    act = exact_activity(workload.reader.load_raw(0), mapping, config)
    rows = [i for i, r in enumerate(mapping.rows) if r.kind == "attention"]
    assert len(rows) == len(pooled) == 2
    raw = workload.reader.load_raw(0)
    for i, expected in zip(rows, pooled):
        assert np.array_equal(act.kv[i], expected.numpy()), mapping.rows[i].name
        t = mapping.rows[i].op.attrs["tensors"]
        unpooled = and_nnz_per_t(raw.arrays[t["k"]], raw.index[t["k"]], raw.arrays[t["v"]], raw.index[t["v"]], 4)
        assert act.kv[i].sum() > 2 * unpooled.sum()  # what hw charged before
    rates = rates_from_traces(workload.reader)
    for i, expected in zip(rows, pooled):
        op = mapping.rows[i].op
        np.testing.assert_allclose(rates.kv[op.name] * math.prod(op.in_shape), expected.numpy())
    counts = count_actions(Activity.stack([act]), mapping, config, "events")[0]
    assert np.array_equal(counts[rows, :, C["attn_incs"]], act.kv[rows])


def test_mlp_ratio_1_charges_the_inner_residual(tmp_path):
    """mlp_ratio 1: MS_MLP_Conv adds h = x + fc1_bn(fc1_conv(lif(x))) before fc2_lif, then its outer residual:
    two residual ops per MLP, in execution order, each charged one add per element and step."""
    net = firing_model(T=2, embed_dims=32, depths=2, img_size=32, mlp_ratios=1)
    capture = capture_sample(net, dvs_events(2, 32, seed=1))
    names = [op.name for op in capture.ops]
    residuals = [op for op in capture.ops if op.kind == "residual"]
    assert len(residuals) == 1 + 2 * 3  # SPS, then per block attention, MLP inner and MLP outer
    for b in range(2):
        inner = names.index(f"block.{b}.mlp.inner_residual")
        assert names.index(f"block.{b}.mlp.fc1_conv") < inner < names.index(f"block.{b}.mlp.fc2_lif")
    workload = Workload.open(write(tmp_path / "t", [capture]))
    res = simulate(workload, load_config("aster_default"), progress=False)
    rows = {r.name: i for i, r in enumerate(res.main.mapping.rows)}
    numel = math.prod(residuals[1].out_shape)
    for b in range(2):
        for name in (f"block.{b}.mlp.inner_residual", f"block.{b}.mlp"):
            assert res.tally.counts[rows[name], :, C["res_adds"]].tolist() == [numel] * 2, name


def test_event_counts_above_255_move_into_the_chip_with_their_bits(tmp_path):
    """A hot pixel's count of 400 needs 9 bits: the frames' DRAM and global-buffer bits use the counts' bit planes
    when they exceed the preset's count_bits (8), as the first layer's crossbar reads already did."""
    net = firing_model(T=2, embed_dims=32, depths=1, img_size=32)
    events = dvs_events(2, 32, seed=2)
    events[0, 0, 0, 5, 5] = 400.0
    workload = Workload.open(write(tmp_path / "t", [capture_sample(net, events)]))
    config = load_config("aster_default")
    res = simulate(workload, config, progress=False)
    C = {name: k for k, name in enumerate(ALL_COUNTS)}
    row = next(i for i, r in enumerate(res.main.mapping.rows) if r.kind == "input")
    counts = res.tally.counts[row]  # [T, A], summed over the one sample
    in_numel = int(np.prod(workload.meta.layers()[0].in_shape))
    nnz = [(events[0, t] != 0).sum().item() for t in range(2)]
    per_event = math.ceil(math.log2(max(in_numel, 2))) + 9  # address bits + 9 value bits (400 < 512)
    expected = [min(in_numel * 9, n * per_event) for n in nnz]  # spike_encoding auto: the cheaper of bitmap/AER
    assert counts[:, C["dram_bits"]].tolist() == pytest.approx(expected)


@pytest.mark.parametrize("mode", ["SDT", "STAtten"])
def test_prior_pim_attention_fits_its_tokens_into_crossbar_rows(tmp_path, mode):
    """prior_pim writes V a token per row: 64 tokens in 32-row crossbars are 2 row blocks, written and read in
    parallel, and each K channel is one read per row block.  SDT's sum_n(K*V) converts one column per read (the
    channel's own), STAtten's K^T V all d of the head; the second row block's results are partial sums."""
    capture, summary = tiny_capture(mode, True)
    workload = Workload.open(write(tmp_path / "t", [capture], summary))
    config = load_config("prior_pim")
    config = dataclasses.replace(config, crossbar=dataclasses.replace(config.crossbar, rows=32))
    mapping = build_mapping(workload.meta, config)
    act = exact_activity(workload.reader.load_raw(0), mapping, config)
    core = count_actions(Activity.stack([act]), mapping, config, "events")[0][mapping.index("block.0.attn.core")]
    attrs = mapping.rows[mapping.index("block.0.attn.core")].op.attrs
    heads, d, tokens, blocks, slices = attrs["heads"], attrs["head_dim"], attrs["tokens"], 2, 4
    assert (heads, d, tokens) == (4, 16, 64)
    columns, q_reads = (1, 0) if mode == "SDT" else (d, tokens * heads)  # STAtten: Q (K^T V), d rows: one block
    assert (core[:, C["xbar_reads"]] == heads * d * blocks + q_reads).all()
    assert (core[:, C["adc_conv"]] == heads * d * blocks * columns + q_reads * d * slices).all()
    assert (core[:, C["psum_adds"]] == heads * d * (blocks - 1) * columns).all()
    assert (core[:, C["write_rows"]] == tokens / blocks).all()


def test_fixed_point_static_image_reads_and_moves_its_bit_planes(tmp_path):
    """A non-negative static image of multiples of 1/16 is stored fixed-point, not float32: its first layer reads
    one pass per bit plane its largest value needs (not analog_input_bits), and its frame moves in with
    max(analog_input_bits, planes) bits per pixel: 6/16 needs 3 planes (8 bits moved), 20 = 320/16 needs 9."""
    net = firing_model(T=2, embed_dims=32, depths=1, img_size=32, in_channels=3, dvs=False)
    image = (torch.arange(3 * 32 * 32) % 7).float().reshape(1, 3, 32, 32) / 16
    hot = image.clone()
    hot[0, 0, 5, 5] = 20.0
    config = load_config("aster_default")
    for x, encoding, planes in ((image, "uint8", 3), (hot, "uint16", 9)):
        workload = Workload.open(write(tmp_path / encoding, [capture_sample(net, x)]))
        raw = workload.reader.load_raw(0)
        first = workload.meta.layers()[0].tensor
        assert raw.index[first]["encoding"] == encoding and raw.index[first]["fraction_bits"] == 4
        mapping = build_mapping(workload.meta, config)
        act = exact_activity(raw, mapping, config)
        counts = count_actions(Activity.stack([act]), mapping, config, "static")[0]
        assert act.planes[mapping.index("patch_embed.proj_conv")] == planes
        frame = counts[mapping.index("input"), :, C["dram_bits"]]
        assert frame.tolist() == [x.numel() * max(8, planes), 0]


@pytest.mark.parametrize("rows,blocks,write_rows", [(64, 1, 64), (63, 2, 32), (30, 3, 22)])
def test_prior_pim_attention_rounds_partial_row_blocks_up(tmp_path, rows, blocks, write_rows):
    """64 tokens (4 heads x d 16, SDT) in crossbars of ``rows`` rows, by hand: blocks = ceil(64 / rows) (64 -> 1,
    63 -> 2: the 64th token needs a second block, 30 -> 3), each written in parallel with ceil(64 / blocks) rows
    (64, 32, 22: 64 / 3 = 21.3, a partial row is still written); every token's V is written (64 x 4 x 16 = 4096
    cells); each K channel is one read per block, converting its own column: 4 x 16 x blocks reads and conversions,
    and 4 x 16 x (blocks - 1) partial-sum adds."""
    capture, summary = tiny_capture("SDT", True)
    workload = Workload.open(write(tmp_path / "t", [capture], summary))
    config = load_config("prior_pim")
    config = dataclasses.replace(config, crossbar=dataclasses.replace(config.crossbar, rows=rows))
    mapping = build_mapping(workload.meta, config)
    act = exact_activity(workload.reader.load_raw(0), mapping, config)
    core = count_actions(Activity.stack([act]), mapping, config, "events")[0][mapping.index("block.0.attn.core")]
    heads_x_d = 4 * 16
    assert (core[:, C["cell_writes"]] == 4096).all() and (core[:, C["write_rows"]] == write_rows).all()
    for count, expected in (("xbar_reads", blocks), ("adc_conv", blocks), ("psum_adds", blocks - 1)):
        assert (core[:, C[count]] == heads_x_d * expected).all(), count


def test_ungated_wordlines_are_the_rows_of_each_block_read(tmp_path):
    """Without wordline gating a read drives every row of its block.  The count used the mean block size
    (reads x rows_total / blocks), so a layer whose last block is partly filled was miscounted (-18 % on a DVS
    2-256 proj_conv2 of 128 + 16 rows)."""
    capture, config = tiny_capture("SDT", True)
    workload = Workload.open(write(tmp_path / "t", [capture], config))
    preset = with_features(load_config("aster_default"), wordline_gating=False)
    mapping = build_mapping(workload.meta, preset)
    act = exact_activity(workload.reader.load_raw(0), mapping, preset)
    counts = count_actions(Activity.stack([act]), mapping, preset, workload.meta.input_kind)[0]
    uneven = 0
    for r, row in enumerate(mapping.rows):
        if row.geom is None:
            continue
        block_rows = row.geom.block_rows
        assert block_rows.sum() == row.geom.rows_total
        uneven += len(set(block_rows)) > 1
        np.testing.assert_allclose(counts[r, :, C["wl_rows"]], act.full_wl[r] * row.geom.col_blocks)
    assert uneven  # the tiny model has layers with a partly filled last block
