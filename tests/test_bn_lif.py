"""BatchNorm + LIF as one op (module/bn_lif.py) against the two modules it replaces."""
import copy

import pytest
import timm
import torch

import model  # noqa: F401  (registers the sdt models)
from module import MultiStepLIF, instrument
from module.bn_lif import _bn_lif_forward, batch_norm_lif, bn_lif, can_fuse
from module.fused_lif import triton_available
from triton_scripts import run_in_interpreter



def _pair(parametric: bool, momentum: float | None = 0.1) -> tuple[torch.nn.BatchNorm2d, MultiStepLIF]:
    bn = torch.nn.BatchNorm2d(6, momentum=momentum)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 2.0)
        bn.bias.uniform_(-0.5, 0.5)
        bn.running_mean.uniform_(-1.0, 1.0)
        bn.running_var.uniform_(0.5, 2.0)
    return bn, MultiStepLIF(parametric=parametric)


@pytest.mark.parametrize("parametric", [False, True], ids=["lif", "plif"])
@pytest.mark.parametrize("training, momentum", [(True, 0.1), (True, None), (False, 0.1)],
                         ids=["train", "train-cumulative", "eval"])
def test_same_spikes_gradients_and_running_statistics(parametric, training, momentum):
    torch.manual_seed(0)
    bn, lif = _pair(parametric, momentum)
    bn.train(training)
    bn_ref, lif_ref = copy.deepcopy(bn), copy.deepcopy(lif)
    x = torch.randn(4, 3, 6, 5, 5) * 2 + 0.3
    grad_out = torch.randn_like(x)
    for _ in range(2):  # twice: the running statistics move the same way
        fused_in, ref_in = x.clone().requires_grad_(), x.clone().requires_grad_()
        spikes = batch_norm_lif(bn, lif, fused_in)
        expected = lif_ref(bn_ref(ref_in.flatten(0, 1)).view_as(ref_in))
        assert torch.equal(spikes, expected) and 0 < spikes.mean() < 1
        (spikes * grad_out).sum().backward()
        (expected * grad_out).sum().backward()
        torch.testing.assert_close(fused_in.grad, ref_in.grad, rtol=1e-5, atol=1e-6)
    for (name, p), q in zip([*bn.named_parameters(), *lif.named_parameters()],
                            [*bn_ref.parameters(), *lif_ref.parameters()]):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-5, atol=1e-5, msg=name)
    for name, value in bn_ref.state_dict().items():
        torch.testing.assert_close(bn.state_dict()[name], value, rtol=1e-6, atol=1e-7, msg=name)


_DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(),
                                                                 reason="needs a CUDA device"))]


@pytest.mark.parametrize("device", _DEVICES)
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_float64_computes_in_float64_as_the_unfused_pair(training, device):
    """Float64 input normalises, runs the membrane and reduces the statistics and gradients in float64 (not fp32;
    on CUDA without the fp32 kernels): spikes, gradients and running statistics of ``lif(bn(x))`` in float64, within
    float64 rounding."""
    torch.manual_seed(0)
    bn, lif = (m.to(device, torch.float64) for m in _pair(True))
    bn.train(training)
    bn_ref, lif_ref = copy.deepcopy(bn), copy.deepcopy(lif)
    x = (torch.randn(4, 3, 6, 5, 5, dtype=torch.float64) * 2 + 0.3).to(device)
    grad_out = torch.randn_like(x)
    fused_in, ref_in = x.clone().requires_grad_(), x.clone().requires_grad_()
    spikes = batch_norm_lif(bn, lif, fused_in)
    expected = lif_ref(bn_ref(ref_in.flatten(0, 1)).view_as(ref_in))
    assert spikes.dtype == torch.float64 and torch.equal(spikes, expected) and 0 < spikes.mean() < 1
    (spikes * grad_out).sum().backward()
    (expected * grad_out).sum().backward()
    torch.testing.assert_close(fused_in.grad, ref_in.grad, rtol=1e-12, atol=1e-13)
    for (name, p), q in zip([*bn.named_parameters(), *lif.named_parameters()],
                            [*bn_ref.parameters(), *lif_ref.parameters()]):
        torch.testing.assert_close(p.grad, q.grad, rtol=1e-12, atol=1e-13, msg=name)
    for name, value in bn_ref.state_dict().items():
        torch.testing.assert_close(bn.state_dict()[name], value, rtol=1e-13, atol=1e-14, msg=name)


def test_op_registration():
    """Schema, fake kernel, autograd kernel and AOT tracing of the op (``torch.library.opcheck``)."""
    x = torch.randn(3, 2, 4, 5, requires_grad=True)
    stats = torch.stack((torch.randn(4), torch.rand(4) + 0.5))
    weight, bias = torch.rand(4, requires_grad=True), torch.randn(4, requires_grad=True)
    for decay, batch_stats in ((torch.tensor(0.5), True), (torch.tensor(0.6, requires_grad=True), False)):
        torch.library.opcheck(_bn_lif_forward, (x, stats, weight, bias, decay, 1.0, batch_stats))
    x64, weight64, bias64 = (t.detach().double().requires_grad_() for t in (x, weight, bias))
    decay64 = torch.tensor(0.6, dtype=torch.float64, requires_grad=True)  # float64 gradients, in the fakes too
    torch.library.opcheck(_bn_lif_forward, (x64, stats.double(), weight64, bias64, decay64, 1.0, True))


def test_channels_last_in_real_and_fake_kernels():
    """Spikes and gradients keep a channels-last input's layout, and the fake kernels (``torch.compile``) agree
    (``opcheck`` does not compare strides)."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    from module.bn_lif import _bn_lif_backward

    x = torch.randn(3 * 2, 4, 5, 6).contiguous(memory_format=torch.channels_last).unflatten(0, (3, 2))
    stats, weight, bias = torch.stack((torch.randn(4), torch.rand(4) + 0.5)), torch.rand(4), torch.randn(4)
    args = (stats, weight, bias, torch.tensor(0.5), 1.0)
    spikes = _bn_lif_forward(x, *args, True)
    grads = _bn_lif_backward(torch.ones_like(spikes), x, *args, False, True)
    with FakeTensorMode(allow_non_fake_inputs=True) as mode:
        fake_x = mode.from_tensor(x)
        fake_spikes = _bn_lif_forward(fake_x, *args, True)
        fake_grads = _bn_lif_backward(torch.ones_like(fake_spikes), fake_x, *args, False, True)
    assert spikes.stride() == fake_spikes.stride() == x.stride()
    assert grads[0].stride() == fake_grads[0].stride() == x.stride()


def test_pairs_with_hooks_or_recorders_stay_unfused():
    """The hook dict, firing rates, energy and traces hook the LIFs; the profiler probes the BN output."""
    bn, lif = _pair(False)
    assert can_fuse(bn, lif)
    assert not can_fuse(torch.nn.SyncBatchNorm(6), lif)
    assert not can_fuse(torch.nn.BatchNorm2d(6, affine=False), lif)
    seen = []
    handle = lif.register_forward_hook(lambda m, inputs, out: seen.append(out))
    assert not can_fuse(bn, lif)
    out = bn_lif(bn, lif, torch.randn(2, 3, 6, 4, 4), fuse=True)
    assert len(seen) == 1 and seen[0] is out
    handle.remove()
    with instrument.recording(instrument.Recorder(timers=False)) as recorder:
        assert not can_fuse(bn, lif)
        bn_lif(bn, lif, torch.randn(2, 3, 6, 4, 4), fuse=True, probe="MLP postBN x after fc1")
    assert [m.label for m in recorder.collect()] == ["MLP postBN x after fc1"]


def test_model_switch_and_compiled_graph():
    """``model.fuse_bn_lif`` reaches every pair; the fused model is one graph under torch.compile and gives the
    unfused logits."""
    torch.manual_seed(0)
    net = timm.create_model("sdt_test", fuse_bn_lif=True).train()
    unfused = copy.deepcopy(net)
    unfused.fuse_bn_lif = False
    assert net.fuse_bn_lif and all(m.fuse_bn_lif for m in net.modules() if hasattr(m, "fuse_bn_lif"))
    assert not any(m.fuse_bn_lif for m in unfused.modules() if hasattr(m, "fuse_bn_lif"))
    x = torch.randn(4, 3, 32, 32) * 3
    torch._dynamo.reset()
    compiled = torch.compile(net, backend="aot_eager", fullgraph=True)
    out, expected = compiled(x), unfused(x)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-6)
    out.square().sum().backward()
    expected.square().sum().backward()
    for (name, p), q in zip(net.named_parameters(), unfused.parameters()):
        if q.grad is not None:
            torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-5, msg=name)


_TRITON_BACKWARD_CHECK = """
import torch
from module import lif_triton
from module.bn_lif import _batch_norm_backward, _normalize, _packed
from module.fused_lif import lif_backward_reference
torch.manual_seed(0)
C = 6
stats = torch.stack((torch.randn(C) * 0.2, torch.rand(C) + 0.5))
weight, bias, decay = torch.rand(C) + 0.5, torch.randn(C) * 0.3, torch.tensor(0.4).sigmoid()
# the membrane recomputed (T <= 5 in fp32, T <= 9 in bf16) or kept in a register history (up to T = 32)
for steps, dtype, channels_last in ((4, torch.float32, False), (4, torch.float32, True), (5, torch.float32, True),
                                    (8, torch.bfloat16, False), (3, torch.bfloat16, True), (8, torch.float32, False),
                                    (16, torch.float32, True), (12, torch.bfloat16, True)):
    x = torch.randn(steps * 5, C, 5, 7) * 2  # 175 positions per channel: partial tiles
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    x = x.unflatten(0, (steps, 5)).to(dtype)
    grad_spikes = torch.randn(x.shape).to(dtype)
    grad_x, grad_w, grad_b, grad_k = lif_triton.batch_norm_backward(grad_spikes, x, decay, 1.0, True,
                                                                    _packed(stats, weight, bias))
    table = _packed(stats, weight, bias)
    # the reference: the one-pass LIF backward kernel (the same interpreter arithmetic: it rounds fp32 -> bf16
    # towards zero where torch rounds to nearest even), then the BatchNorm backward; in fp32 also torch's LIF loop
    grad_y, ref_k = lif_triton.backward(grad_spikes, x, decay, 1.0, True, batch_norm=table)
    if dtype == torch.float32:
        torch_y, torch_k = lif_backward_reference(grad_spikes, _normalize(x, stats, weight, bias), decay, 1.0, True)
        assert (torch_y - grad_y).abs().max() <= 1e-6 and abs(torch_k - ref_k) <= 1e-4 * abs(ref_k)
    ref_x, ref_w, ref_b = _batch_norm_backward(grad_y, x, stats, weight, True)
    assert grad_x.dtype == dtype and grad_x.stride() == x.stride(), (steps, dtype, channels_last)
    tol = 1e-5 if dtype == torch.float32 else 1e-2  # bf16: the input gradient itself is rounded to bf16
    assert (grad_x.float() - ref_x.float()).abs().max() <= tol * ref_x.float().abs().max(), (steps, dtype)
    for ours, ref in ((grad_w, ref_w), (grad_b, ref_b), (grad_k, ref_k)):
        assert (ours - ref).abs().max() <= 1e-5 * (ref.abs().max() + 1), (steps, dtype, channels_last, ours, ref)
print("ok")
"""


@pytest.mark.skipif(not triton_available(), reason="Triton is not installed")
def test_two_pass_backward_in_the_interpreter():
    """The two-pass BN + LIF backward (reduction in a first LIF-backward pass, input gradient from a second), run by
    Triton's CPU interpreter, against the LIF backward followed by the BatchNorm backward, in NCHW and
    channels-last, fp32 and bf16."""
    run_in_interpreter(_TRITON_BACKWARD_CHECK)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels_last"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_kernels_match_the_unfused_pair(dtype, channels_last):
    """On a GPU: the Triton kernels and SyncBatchNorm's backward kernels against cuDNN's BN and the fused LIF."""
    torch.manual_seed(0)
    bn, lif = (m.cuda() for m in _pair(True))
    bn_ref, lif_ref = copy.deepcopy(bn), copy.deepcopy(lif)
    x = (torch.randn(4, 8, 6, 14, 14, device="cuda") * 2).to(dtype)
    if channels_last:
        x = x.flatten(0, 1).contiguous(memory_format=torch.channels_last).unflatten(0, (4, 8))
    grad_out = torch.randn_like(x)
    fused_in, ref_in = x.clone().requires_grad_(), x.clone().requires_grad_()
    spikes = batch_norm_lif(bn, lif, fused_in)
    expected = lif_ref(bn_ref(ref_in.flatten(0, 1)).view_as(ref_in))
    assert (spikes != expected).float().mean() < (1e-4 if dtype == torch.float32 else 1e-2)
    (spikes * grad_out).sum().backward()
    (expected * grad_out).sum().backward()
    agree = (spikes == expected).all(0, keepdim=True).expand_as(x)  # neurons whose spike train is the same
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    torch.testing.assert_close(fused_in.grad[agree].float(), ref_in.grad[agree].float(), rtol=tol, atol=tol)
    torch.testing.assert_close(bn.running_var, bn_ref.running_var, rtol=1e-5, atol=1e-6)


def test_engine_flag_reaches_the_model_and_needs_the_fused_neurons():
    from benchmarks.bench_train import TINY, engine_args
    from engine.model import build_model, resolve_model_args

    args = engine_args([*TINY["tiny-sdt-fp32"].flags, "--device", "cpu", "--fuse-bn-lif"])
    resolve_model_args(args)
    assert build_model(args).fuse_bn_lif
    with pytest.raises(ValueError, match="neuron_backend='fused'"):
        timm.create_model("sdt_test", neuron_backend="spikingjelly", fuse_bn_lif=True)
