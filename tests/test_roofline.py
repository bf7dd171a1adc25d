"""benchmarks/roofline.py: per-op bytes and FLOPs on the meta device, checked by hand on single ops."""
import pytest
import torch

from benchmarks.bench_train import TINY
from benchmarks.peaks import H100
from benchmarks.roofline import OpTraffic, distinct_bytes, extra_reads, main, roofline


def test_single_ops_by_hand():
    with torch.device("meta"):
        x, weight, bias = torch.empty(2, 3, 8, 8), torch.empty(4, 3, 3, 3), torch.empty(3, 1, 1)
        with OpTraffic(fp32_peaks=True) as traffic:
            out = torch.nn.functional.conv2d(x, weight, padding=1)
            x.transpose(2, 3).reshape(2, 3, 64)  # a view: free
            x + bias  # the [3, 1, 1] bias is read once
            torch.nn.functional.pad(x, (1, 1, 1, 1))
    conv = traffic.ops["aten.convolution"]
    assert (conv["calls"], conv["read"], conv["written"]) == (1, 2 * 3 * 64 * 4 + 4 * 3 * 9 * 4, 2 * 4 * 64 * 4)
    assert conv["flops"] == 2 * (2 * 4 * 64) * (3 * 9) and out.shape == (2, 4, 8, 8)
    assert conv["seconds"] == pytest.approx(max((1536 + 432 + 2048) / H100.bandwidth, 27648 / H100.tf32))
    add = traffic.ops["aten.add"]
    assert (add["read"], add["written"], add["flops"]) == (1536 + 12, 1536, 0)
    assert "aten.view" not in traffic.ops and "aten.transpose" not in traffic.ops
    assert traffic.ops["aten.constant_pad_nd"]["written"] == 2 * 3 * 100 * 4


def test_batch_norm_pays_its_second_pass():
    """Training BatchNorm reads its input twice (statistics, then the norm); its backward reads grad_out and input
    twice (reduction, then the elementwise pass)."""
    with torch.device("meta"):
        x = torch.empty(4, 3, 8, 8, requires_grad=True)
        bn = torch.nn.BatchNorm2d(3)
        with OpTraffic(fp32_peaks=True) as traffic:
            bn(x).backward(torch.empty(4, 3, 8, 8))
    x_bytes, channel_bytes = 4 * 3 * 64 * 4, 3 * 4
    forward, backward = traffic.ops["aten.native_batch_norm"], traffic.ops["aten.native_batch_norm_backward"]
    assert forward["read"] == 2 * x_bytes + 4 * channel_bytes  # input twice; weight, bias, running stats
    assert forward["written"] == x_bytes + 2 * channel_bytes  # output; saved mean and invstd
    assert backward["read"] == 4 * x_bytes + 3 * channel_bytes + 2 * channel_bytes  # + weight, running, saved stats
    assert backward["written"] == x_bytes + 2 * channel_bytes


def _lif_backward_passes(op: str, steps: int, dtype: torch.dtype, need_decay_grad: bool = False) -> float:
    """Tensor passes (in units of the input's bytes) of a LIF backward over ``[steps, 2, 8, 4, 4]``: one read of the
    spike gradient and the input, one write of the input gradient, and :func:`extra_reads`."""
    with torch.device("meta"):
        grad_spikes = torch.empty(steps, 2, 8, 4, 4, dtype=dtype)
        x = torch.empty_like(grad_spikes)
    if op == "sdt.multistep_lif_backward":
        args = (grad_spikes, x, None, 1.0, need_decay_grad)
    else:  # grad_spikes, x, stats, weight, bias, decay, v_threshold, need_decay_grad, batch_stats
        args = (grad_spikes, x, None, None, None, None, 1.0, need_decay_grad, True)
    return 3 + extra_reads(op, args) / distinct_bytes(x)


def test_lif_backward_passes_by_where_the_membrane_comes_from():
    """module/lif_triton.py: recomputing the membrane reads the input once (recent steps hit the cache); the register
    history (6-32 steps in fp32, 10-32 in half precision) and the fp32 scratch are filled in a pass of their own, and
    the backward pass reads the input again where it uses it (the decay gradient, the fused norm's input gradient).
    The fused BN + LIF backward runs two such kernels over the spike gradient and the input."""
    bn_lif, lif = "sdt.batch_norm_lif_backward", "sdt.multistep_lif_backward"
    assert _lif_backward_passes(bn_lif, 4, torch.float32) == 5  # recomputed: 2 x (grad, input) + the input gradient
    assert _lif_backward_passes(bn_lif, 9, torch.float16) == 5
    assert _lif_backward_passes(bn_lif, 16, torch.float32) == 7  # register history: the input twice per kernel
    assert _lif_backward_passes(bn_lif, 16, torch.float16) == 7
    # past the register history: the fp32 scratch (2 passes of 4 bytes), dy written, BatchNorm's two passes
    assert _lif_backward_passes(bn_lif, 40, torch.float32) == 3 + 2 + 5
    assert _lif_backward_passes(lif, 16, torch.float32) == 3
    assert _lif_backward_passes(lif, 16, torch.float32, need_decay_grad=True) == 4
    assert _lif_backward_passes(lif, 4, torch.float32, need_decay_grad=True) == 3
    assert _lif_backward_passes(lif, 40, torch.float16, need_decay_grad=True) == 3 + 4 + 1


def test_distinct_bytes_and_roofline():
    assert distinct_bytes(torch.empty(3, 1, 5, dtype=torch.float16).expand(3, 7, 5)) == 30
    assert roofline(3.35e12, 0, 1.0) == pytest.approx(1.0)
    assert roofline(0, 2e12, 1e12) == pytest.approx(2.0)


def test_tiny_configs(tmp_path):
    results = main(["--tiny", "--json", str(tmp_path / "roofline.json")])
    assert set(results) == set(TINY) and (tmp_path / "roofline.json").exists()
    for name, per_path in results.items():
        default, fused = per_path["default"], per_path["bn_lif"]
        assert default["tflop"] == fused["tflop"] > 0, name  # fusing BN + LIF changes no FLOP
        assert 0 < fused["gb_moved"] < default["gb_moved"], name  # but moves fewer bytes
        assert default["roofline_ms"] >= default["memory_bound_ms"] * (1 - 1e-12) > 0, name
        assert sum(op["share"] for op in default["top"]) <= 1 + 1e-9
        assert default["top"][0]["ms"] >= default["top"][-1]["ms"]
        assert "anchor_busy_over_roofline" not in default
