"""module/pool.py: max-pooling that keeps one byte of argmax per output for the backward, bit-identical to
PyTorch's."""

import pytest
import torch

from benchmarks.saved_memory import saved_bytes
from module.fused_lif import triton_available
from module.ms_conv import _to_heads
from module.pool import MaxPool2d, SpatialMaxPool, max_pool2d
from triton_scripts import run_compiler, run_in_interpreter



@pytest.mark.parametrize("kind", ["spikes", "real", "channels_last"])
@pytest.mark.parametrize("kernel, stride, padding", [(3, 2, 1), (3, 1, 1), (2, 2, 0)])
def test_same_values_and_gradients_as_max_pool2d(kind, kernel, stride, padding):
    torch.manual_seed(0)
    x = (torch.rand(4, 5, 9, 11) < 0.3).float() if kind == "spikes" else torch.randn(4, 5, 9, 11)
    if kind == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    ours_in, ref_in = x.clone().requires_grad_(), x.clone().requires_grad_()
    ours = MaxPool2d(kernel, stride, padding)(ours_in)
    expected = torch.nn.MaxPool2d(kernel, stride, padding)(ref_in)
    assert torch.equal(ours, expected)
    grad_out = torch.randn_like(expected)
    (ours * grad_out).sum().backward()
    (expected * grad_out).sum().backward()
    assert torch.equal(ours_in.grad, ref_in.grad)
    assert ours_in.grad.is_contiguous(memory_format=torch.channels_last) == (kind == "channels_last")


def test_keeps_the_argmax_instead_of_the_input():
    """Per output element, on CUDA (modelled by the meta device): the argmax's offset in its window, one byte; on
    the CPU: ATen's int64 index.  The reference keeps the input and the int64 index."""
    for size in (9, 200):
        outputs = 2 * 3 * ((size - 1) // 2 + 1) ** 2
        for device, argmax_bytes in (("meta", 1), ("cpu", 8)):
            x = torch.randn(2, 3, size, size, device=device, requires_grad=True)
            assert saved_bytes(torch.nn.Identity(), lambda: max_pool2d(x, 3, 2, 1)) == outputs * argmax_bytes
        reference = saved_bytes(torch.nn.Identity(), lambda: torch.nn.functional.max_pool2d(x, 3, 2, 1))
        assert reference == x.numel() * 4 + outputs * 8
    with torch.no_grad():
        assert saved_bytes(torch.nn.Identity(), lambda: max_pool2d(x, 3, 2, 1)) == 0
    with pytest.raises(ValueError, match="return_indices"):
        MaxPool2d(3, return_indices=True)


def test_ties_infinities_nan_and_the_plain_fallbacks():
    """ATen's argmax rules (first maximum, an all -inf window keeps its first in-bounds position, NaN wins), and
    dilation, ceil_mode or a window of more than 127 positions run ``F.max_pool2d`` itself."""
    x = torch.full((1, 2, 5, 5), float("-inf"))
    x[0, 1] = 1.0
    x[0, 1, 2, 3] = float("nan")
    for options in ((3, 2, 1, 1, False), (3, 1, 1, 2, False), (3, 2, 1, 1, True), (12, 1, 6, 1, False)):
        ours_in, ref_in = x.clone().requires_grad_(), x.clone().requires_grad_()
        ours, expected = max_pool2d(ours_in, *options), torch.nn.functional.max_pool2d(ref_in, *options)
        torch.testing.assert_close(ours, expected, equal_nan=True)
        grad_out = torch.arange(float(ours.numel())).view_as(ours)
        (ours * grad_out).sum().backward()
        (expected * grad_out).sum().backward()
        assert torch.equal(ours_in.grad, ref_in.grad), options


@pytest.mark.parametrize("layout", ["contiguous", "channels_last", "heads_view"])
def test_real_and_fake_kernels_agree_on_layout(layout):
    """The layout the ops write is the one their fake kernels declare (``torch.compile`` relies on it)."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    from module.pool import _max_pool_backward, _max_pool_forward

    x = torch.randn(2, 6, 7, 9)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    elif layout == "heads_view":
        x = _to_heads(torch.randn(1, 2, 6, 7, 9), 2).flatten(0, 1)
    args = ([3, 3], [2, 2], [1, 1])
    out, offsets = _max_pool_forward(x, *args)
    grad_x = _max_pool_backward(torch.ones_like(out), offsets, list(x.shape), *args, layout == "channels_last")
    with FakeTensorMode(allow_non_fake_inputs=True) as mode:
        fake_x = mode.from_tensor(x)
        fake_out, fake_offsets = _max_pool_forward(fake_x, *args)
        fake_grad_x = _max_pool_backward(torch.ones_like(fake_out), fake_offsets, list(x.shape), *args,
                                         layout == "channels_last")
    assert out.stride() == offsets.stride() == fake_out.stride() == fake_offsets.stride()
    assert grad_x.stride() == fake_grad_x.stride() and offsets.dtype == fake_offsets.dtype == torch.int64
    assert out.is_contiguous(memory_format=torch.channels_last) == (layout == "channels_last") or out.is_contiguous()
    torch.library.opcheck(_max_pool_forward, (x.requires_grad_(), *args))


@pytest.mark.parametrize("layout", ["tbchw", "heads_view"])
def test_spatial_max_pool_is_the_reference_max_pool_3d(layout):
    """The 2-D DVS pooling equals the reference's MaxPool3d((1, 3, 3)) on spikes (ties everywhere), gradients too."""
    torch.manual_seed(0)
    x = (torch.rand(3, 2, 8, 5, 6) < 0.4).float()
    if layout == "heads_view":
        x = _to_heads(x, 2)  # [T, B, heads, N, d], a transposed view
    ours_in, ref_in = x.clone().requires_grad_(), x.clone().requires_grad_()  # clone keeps the view's strides
    assert ours_in.is_contiguous() == (layout == "tbchw")
    ours = SpatialMaxPool()(ours_in)
    expected = torch.nn.MaxPool3d((1, 3, 3), 1, (0, 1, 1))(ref_in)
    assert torch.equal(ours, expected)
    grad_out = torch.randn_like(expected)
    (ours * grad_out).sum().backward()
    (expected * grad_out).sum().backward()
    assert torch.equal(ours_in.grad, ref_in.grad)
    with pytest.raises(ValueError, match="5-D"):
        SpatialMaxPool()(x[0])


_TRITON_CHECK = """
import torch
from module import pool_triton
from module.ms_conv import _to_heads
from module.pool import _aten_backward, _aten_forward, _channels_last, _empty_outputs
torch.manual_seed(0)
inputs = {
    "spikes": (torch.rand(2, 3, 9, 11) < 0.3).float(),
    "real": torch.randn(2, 3, 9, 11),
    "channels_last": (torch.rand(2, 5, 8, 7) < 0.5).half().contiguous(memory_format=torch.channels_last),
    "heads_view": _to_heads((torch.rand(1, 2, 8, 6, 5) < 0.4).bfloat16(), 2).flatten(0, 1),
    "inf_nan": torch.full((1, 2, 6, 6), float("-inf")),
    # several tiles along every axis (module.pool_triton.tile_shape), the last ones masked
    "tiles_channels_last": torch.randn(2, 20, 11, 19).contiguous(memory_format=torch.channels_last),
    "tiles_nchw": (torch.rand(2, 3, 40, 37) < 0.3).float(),
}
inputs["inf_nan"][0, 1, 2:, 2:] = 1.0
inputs["inf_nan"][0, 1, 3, 4] = float("nan")
assert pool_triton.tile_shape(11, 19, 20, True) == (4, 8, 16)
assert pool_triton.tile_shape(40, 37, 3, False) == (16, 32, 1)
fits_int32 = pool_triton._spans_int32
for name, x in inputs.items():
    # two inputs also take the int64 offsets within a sample (WIDE), kept for samples of 2**31 elements or more
    wide = name in ("heads_view", "tiles_channels_last")
    pool_triton._spans_int32 = (lambda *tensors: False) if wide else fits_int32
    for kernel, stride, padding in (([3, 3], [2, 2], [1, 1]), ([3, 3], [1, 1], [1, 1]), ([2, 2], [2, 2], [0, 0]),
                                    ([3, 2], [2, 1], [1, 0])):
        out, offsets = _aten_forward(x, kernel, stride, padding, torch.int8)
        ours, our_offsets = torch.empty_like(out), torch.empty_like(offsets)
        pool_triton.forward(x, ours, our_offsets, kernel, stride, padding)
        assert torch.equal(ours.isnan(), out.isnan()) and torch.equal(ours.nan_to_num(), out.nan_to_num()), name
        layout = _empty_outputs(x, kernel, stride, padding)[0].stride()
        assert our_offsets.dtype == torch.int8 and out.stride() == ours.stride() == layout
        assert torch.equal(our_offsets, offsets), (name, kernel, stride)
        # integer gradients, transposed in memory: exact sums, any strides; a non-finite gradient reaches only the
        # argmax of its output, not the other inputs its window covers
        grad_out = torch.randint(-3, 4, out.shape[::-1]).to(x.dtype)
        grad_out.view(-1)[::5], grad_out.view(-1)[1::7] = float("inf"), float("nan")
        grad_out = grad_out.permute(3, 2, 1, 0)
        expected = _aten_backward(grad_out, offsets, list(x.shape), kernel, stride, padding, _channels_last(x))
        grad_x = torch.empty_like(expected)
        pool_triton.backward(grad_out, offsets, grad_x, kernel, stride, padding)
        assert torch.equal(grad_x.isnan(), expected.isnan()), (name, kernel, stride)
        assert torch.equal(grad_x.nan_to_num(), expected.nan_to_num()), (name, kernel, stride)
        assert grad_x.stride() == expected.stride(), (name, kernel, stride)
print("ok")
"""


@pytest.mark.skipif(not triton_available(), reason="Triton is not installed")
def test_triton_kernels_in_the_interpreter():
    """The CUDA kernels, run by Triton's CPU interpreter: ATen's outputs, argmax offsets and gradients exactly."""
    run_in_interpreter(_TRITON_CHECK)


def _check_float64_is_aten(device: str) -> None:
    """Float64 values, argmax and gradients are ATen's, among values equal once rounded to fp32."""
    torch.manual_seed(0)
    near_ties = 1.0 + 1e-12 * torch.randn(2, 3, 7, 8, dtype=torch.float64)
    inputs = [torch.tensor([[[[1.0, 1.0 + 1e-12, 0.5]]]], dtype=torch.float64),
              near_ties.contiguous(memory_format=torch.channels_last)]
    for x in inputs:
        for kernel, stride, padding in (((1, 3), 1, (0, 1)), (3, 2, 1)):
            ours_in, ref_in = (x.to(device, copy=True).requires_grad_() for _ in range(2))
            ours = max_pool2d(ours_in, kernel, stride, padding)
            expected = torch.nn.functional.max_pool2d(ref_in, kernel, stride, padding)
            assert torch.equal(ours, expected)
            grad_out = torch.arange(float(ours.numel()), dtype=torch.float64, device=device).view_as(ours)
            ours.backward(grad_out)
            expected.backward(grad_out)
            assert torch.equal(ours_in.grad, ref_in.grad), kernel


@pytest.mark.slow
@pytest.mark.skipif(not triton_available(), reason="Triton is not installed")
def test_float64_runs_aten_where_the_triton_kernels_run():
    """Under ``TRITON_INTERPRET=1`` (the CUDA dispatch on the CPU), float64 runs ATen's kernels: the Triton ones
    compare in fp32 and would pick another argmax among values equal once rounded."""
    run_in_interpreter("from test_pool import _check_float64_is_aten\n_check_float64_is_aten('cpu')\nprint('ok')")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_float64_runs_aten():
    _check_float64_is_aten("cuda")


_TRITON_COMPILE = """
from module import pool_triton as P
from triton_scripts import compile_for_hopper
window = dict(KH=3, KW=3, SH=2, SW=2, PH=1, PW=1, WIDE=False)
channels_last, nchw = dict(zip(("TH", "TW", "BC"), P.tile_shape(56, 56, 64, True))), dict(TH=4, TW=32, BC=4)
cases = [
    (P._max_pool_forward_kernel, {"x_ptr": "*fp16", "out_ptr": "*fp16"}, dict(window, **channels_last)),
    (P._max_pool_forward_kernel, {}, dict(window, SH=1, SW=1, **nchw)),
    (P._max_pool_backward_kernel, {"grad_out_ptr": "*bf16", "grad_x_ptr": "*bf16"}, dict(window, **channels_last)),
    (P._max_pool_backward_kernel, {}, dict(window, SH=1, SW=1, WIDE=True, **nchw)),
]
compile_for_hopper(cases, {"offset_ptr": "*i8"})
print("ok")
"""


@pytest.mark.skipif(not triton_available(), reason="Triton is not installed")
def test_triton_kernels_compile_for_hopper(tmp_path):
    """Triton -> PTX -> cubin for sm_90 without a GPU: what only the compiler rejects."""
    run_compiler(_TRITON_COMPILE, tmp_path)


def test_window_offsets_convert_to_and_from_aten_indices():
    """The int8 offsets (kept on CUDA) name the same argmax as ATen's indices: through them, ATen's gradient."""
    from module.pool import _aten_backward, _aten_forward

    torch.manual_seed(0)
    x = (torch.rand(2, 3, 10, 9) < 0.4).float()
    for kernel, stride, padding in (([3, 3], [2, 2], [1, 1]), ([3, 2], [1, 2], [1, 0])):
        out, offsets = _aten_forward(x, kernel, stride, padding, torch.int8)
        expected, indices = torch.ops.aten.max_pool2d_with_indices(x, kernel, stride, padding)
        assert torch.equal(out, expected) and offsets.dtype == torch.int8
        assert 0 <= offsets.min() and offsets.max() < kernel[0] * kernel[1]
        grad_out = torch.randn_like(out)
        grad_x = _aten_backward(grad_out, offsets, list(x.shape), kernel, stride, padding, False)
        assert torch.equal(grad_x, torch.ops.aten.max_pool2d_with_indices_backward(
            grad_out, x, kernel, stride, padding, [1, 1], False, indices))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("layout", ["nchw", "channels_last", "heads_view"])
def test_cuda_kernels_match_aten(dtype, layout):
    """On a GPU: the Triton pool (one-byte argmax) against ATen's max_pool2d, values and gradients bit for bit."""
    torch.manual_seed(0)
    x = (torch.rand(8, 16, 28, 28, device="cuda") < 0.3).to(dtype)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    elif layout == "heads_view":
        x = _to_heads((torch.rand(2, 4, 16, 14, 14, device="cuda") < 0.3).to(dtype), 4).flatten(0, 1)
    for kernel, stride, padding in ((3, 2, 1), (3, 1, 1)):
        ours_in, ref_in = x.clone().requires_grad_(), x.clone().requires_grad_()
        ours = max_pool2d(ours_in, kernel, stride, padding)
        expected = torch.nn.functional.max_pool2d(ref_in, kernel, stride, padding)
        assert torch.equal(ours, expected)
        grad_out = torch.randint(-4, 5, expected.shape, device="cuda").to(dtype)
        ours.backward(grad_out)
        expected.backward(grad_out)
        assert torch.equal(ours_in.grad, ref_in.grad), (kernel, stride)


@pytest.mark.skipif(not triton_available(), reason="Triton is not installed")
def test_pool_grid_is_one_axis_for_any_channel_count():
    """CUDA allows 65535 programs on grid axes 1 and 2; in NCHW a 32 x 32 output tile holds one channel, so 70000
    channels are 70000 channel blocks: they go on the one axis with the spatial tiles and samples."""
    from module import pool_triton

    launched = {}

    class RecordingKernel:
        def __getitem__(self, grid):
            launched["grid"] = grid
            return lambda *args, **kwargs: launched.update(kwargs)

    x = torch.empty(2, 70000, 32, 32, device="meta")
    out = torch.empty_like(x)
    pool_triton._launch(RecordingKernel(), (x, out, out), (x, out), out, (70000, 32, 32, 32, 32), [3, 3], [1, 1],
                        [1, 1])
    assert (launched["TH"], launched["TW"], launched["BC"]) == (16, 32, 1)
    assert launched["grid"] == (2 * 70000 * 2 * 1,)


@pytest.mark.skipif(not triton_available(), reason="Triton is not installed")
def test_an_empty_axis_is_atens_error_on_the_triton_path():
    """The Triton kernels would pool a padded empty image into -inf; ATen refuses it, and so does max_pool2d."""
    run_in_interpreter("""
import torch
from module.pool import max_pool2d
x = torch.empty(1, 1, 0, 4, requires_grad=True)
messages = []
for pool in (torch.nn.functional.max_pool2d, max_pool2d):
    try:
        pool(x, 2, 1, 1)
    except RuntimeError as error:
        messages.append(str(error))
assert len(messages) == 2 and messages[0] == messages[1], messages
print("ok")
""")
