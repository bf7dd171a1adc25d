"""module/pool.py: max-pooling that keeps only narrowed indices for the backward, bit-identical to PyTorch's."""
import pytest
import torch

from benchmarks.saved_memory import saved_bytes
from module.ms_conv import _to_heads
from module.pool import MaxPool2d, SpatialMaxPool, max_pool2d


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


def test_keeps_narrow_indices_instead_of_the_input():
    """Per output element: 2 bytes of index (the plane has 99 positions) instead of 8 bytes of int64 index plus
    the input; 4 bytes once the plane has more than 2**15 positions."""
    for size, index_bytes in ((9, 2), (200, 4)):
        x = torch.randn(2, 3, size, size, requires_grad=True)
        outputs = 2 * 3 * ((size - 1) // 2 + 1) ** 2
        assert saved_bytes(torch.nn.Identity(), lambda: max_pool2d(x, 3, 2, 1)) == outputs * index_bytes
        reference = saved_bytes(torch.nn.Identity(), lambda: torch.nn.functional.max_pool2d(x, 3, 2, 1))
        assert reference == x.numel() * 4 + outputs * 8
    with torch.no_grad():
        assert saved_bytes(torch.nn.Identity(), lambda: max_pool2d(x, 3, 2, 1)) == 0
    with pytest.raises(ValueError, match="return_indices"):
        MaxPool2d(3, return_indices=True)


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
