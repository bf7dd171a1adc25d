"""benchmarks/roofline.py: per-op bytes and FLOPs on the meta device, checked by hand on single ops."""
import pytest
import torch

from benchmarks.bench_train import TINY
from benchmarks.roofline import H100, OpTraffic, distinct_bytes, main, roofline


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
    assert conv["seconds"] == pytest.approx(max((1536 + 432 + 2048) / H100["bandwidth"], 27648 / H100["fp32_conv"]))
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
