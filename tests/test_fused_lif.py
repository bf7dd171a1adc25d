"""The fused stateless LIF op against spikingjelly's neurons, its Triton kernels (interpreted on the CPU), and the
exact shortcuts of the fast path (encoding conv run once, STAtten attention without layout copies, torch.compile
without graph breaks)."""
import copy
import os
import shutil

import pytest
import timm
import torch
from spikingjelly.activation_based import neuron

import model  # noqa: F401  (registers the sdt models)
from module import MultiStepLIF
from module.fused_lif import _lif_forward, lif_backward_reference, lif_reference, runs_triton, triton_available
from module.sps import batch_norm_of_copies
from triton_scripts import run_compiler, run_in_interpreter



def _spikingjelly(parametric: bool, v_threshold: float) -> torch.nn.Module:
    if parametric:
        return neuron.ParametricLIFNode(init_tau=2.0, v_threshold=v_threshold, detach_reset=True, step_mode="m")
    return neuron.LIFNode(tau=2.0, v_threshold=v_threshold, detach_reset=True, step_mode="m")


@pytest.mark.parametrize("parametric", [False, True], ids=["lif", "plif"])
@pytest.mark.parametrize("v_threshold", [1.0, 0.5])
def test_same_spikes_and_gradients_as_spikingjelly(parametric, v_threshold):
    torch.manual_seed(0)
    x = (torch.randn(5, 3, 8, 6) * 1.5).requires_grad_()
    grad_out = torch.randn_like(x)
    sj, ours = _spikingjelly(parametric, v_threshold), MultiStepLIF(v_threshold=v_threshold, parametric=parametric)
    if parametric:
        with torch.no_grad():
            sj.w.fill_(0.3)
            ours.w.fill_(0.3)
    expected = sj(x)
    (expected * grad_out).sum().backward()
    expected_grad, x.grad = x.grad.clone(), None
    spikes = ours(x)
    (spikes * grad_out).sum().backward()
    assert 0 < spikes.mean() < 1
    assert torch.equal(spikes, expected)
    torch.testing.assert_close(x.grad, expected_grad, rtol=1e-5, atol=1e-6)
    if parametric:
        torch.testing.assert_close(ours.w.grad, sj.w.grad, rtol=1e-5, atol=1e-6)
    assert list(ours.state_dict()) == list(sj.state_dict())


_DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(),
                                                                 reason="needs a CUDA device"))]


@pytest.mark.parametrize("device", _DEVICES)
@pytest.mark.parametrize("parametric", [False, True], ids=["lif", "plif"])
def test_float64_computes_in_float64_as_spikingjelly(parametric, device):
    """Float64 input runs the membrane in float64 (not fp32; on CUDA the PyTorch loop, not the fp32 kernels), as
    spikingjelly's neurons do: the same spikes, and input and PLIF ``w`` gradients within float64 rounding."""
    torch.manual_seed(0)
    x = torch.randn(6, 4, 50, dtype=torch.float64) * 1.5
    x[0, 0, 0] = 2.0 - 1e-12  # h = 1 - 5e-13: below the threshold in float64, on it once rounded to fp32
    x = x.to(device).requires_grad_()
    grad_out = torch.randn_like(x)
    sj = _spikingjelly(parametric, 1.0).to(device, torch.float64)
    ours = MultiStepLIF(parametric=parametric).to(device, torch.float64)
    expected = sj(x)
    (expected * grad_out).sum().backward()
    expected_grad, x.grad = x.grad.clone(), None
    spikes = ours(x)
    (spikes * grad_out).sum().backward()
    assert spikes.dtype == torch.float64 and spikes[0, 0, 0] == 0 and 0 < spikes.mean() < 1
    assert torch.equal(spikes, expected)
    torch.testing.assert_close(x.grad, expected_grad, rtol=1e-12, atol=1e-14)
    if parametric:
        assert ours.w.grad.dtype == torch.float64
        torch.testing.assert_close(ours.w.grad, sj.w.grad, rtol=1e-12, atol=1e-14)


def test_hand_computed_membrane():
    # tau 2: h = v + (x - v) / 2.  Threshold 1: h = 0.6, 0.9, 1.05 (spike, v = 0), 0.2.  Threshold 0.5: h = 0.6
    # (spike), 0.6 (spike), 0.6 (spike), 0.2.
    x = torch.tensor([1.2, 1.2, 1.2, 0.4]).reshape(4, 1)
    assert MultiStepLIF()(x).flatten().tolist() == [0.0, 0.0, 1.0, 0.0]
    assert MultiStepLIF(v_threshold=0.5)(x).flatten().tolist() == [1.0, 1.0, 1.0, 0.0]


def test_is_stateless_and_keeps_the_input_dtype():
    lif = MultiStepLIF()
    x = torch.full((3, 4), 1.2)  # h = 0.6, 0.9, 1.05: one spike at the third step
    assert torch.equal(lif(x), lif(x))  # no membrane carried into the second call
    half = lif(x.bfloat16())
    assert half.dtype == torch.bfloat16 and half.flatten().tolist() == [0.0] * 8 + [1.0] * 4


def test_op_registration():
    """Schema, fake kernel, autograd kernel and AOT tracing of the op (``torch.library.opcheck``)."""
    x = torch.randn(3, 2, 5, requires_grad=True)
    torch.library.opcheck(_lif_forward, (x, torch.tensor(0.5), 1.0, 3))
    torch.library.opcheck(_lif_forward, (x, torch.tensor(0.6, requires_grad=True), 0.5, 3))
    torch.library.opcheck(_lif_forward, (x[:1], torch.tensor(0.6, requires_grad=True), 0.5, 4))  # repeated
    x64 = x.detach().double().requires_grad_()  # float64: a float64 decay gradient, in the fake kernel too
    torch.library.opcheck(_lif_forward, (x64, torch.tensor(0.6, dtype=torch.float64, requires_grad=True), 0.5, 3))


@pytest.mark.parametrize("layout", ["channels_last", "repeated_channels_last", "batch_major"])
def test_outputs_keep_the_input_layout_in_real_and_fake_kernels(layout):
    """Spikes and input gradients come back in the input's layout when each time step is one dense block (else
    contiguous), and the fake kernels that ``torch.compile`` traces with say the same strides."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    from module.fused_lif import _lif_backward

    x = torch.randn(3 * 2, 4, 5, 6).contiguous(memory_format=torch.channels_last).unflatten(0, (3, 2))
    if layout == "repeated_channels_last":
        x = x[:1]
    elif layout == "batch_major":  # [B, T, ...] memory viewed time-major: steps are not dense blocks
        x = torch.randn(2, 3, 4, 5, 6).transpose(0, 1)
    decay, steps = torch.tensor(0.5), 3
    spikes = _lif_forward(x, decay, 1.0, steps)
    grad_x, _ = _lif_backward(torch.ones_like(spikes), x, decay, 1.0, False)
    with FakeTensorMode(allow_non_fake_inputs=True) as mode:
        fake_x = mode.from_tensor(x)
        fake_spikes = _lif_forward(fake_x, decay, 1.0, steps)
        fake_grad_x, _ = _lif_backward(torch.ones_like(fake_spikes), fake_x, decay, 1.0, False)
    assert fake_spikes.stride() == spikes.stride() and fake_grad_x.stride() == grad_x.stride()
    if layout == "batch_major":
        assert spikes.is_contiguous()
    else:
        assert spikes[0].stride() == x[0].stride() and grad_x.stride() == x.stride()
    torch.testing.assert_close(spikes, lif_reference(x.expand(steps, *x.shape[1:]).contiguous(), decay, 1.0))
    torch.library.opcheck(_lif_forward, (x.requires_grad_(), torch.tensor(0.6, requires_grad=True), 0.5, steps))


def test_where_the_triton_kernels_run(monkeypatch):
    """CUDA tensors always (with Triton installed); CPU tensors only under ``TRITON_INTERPRET=1`` (Triton's
    interpreter); never the meta device, whose fake kernels stand in; never float64, which the kernels would
    compute in fp32."""
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    assert not runs_triton(torch.empty(1))
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        assert runs_triton(torch.empty(1, dtype=dtype)) == triton_available()
    assert not runs_triton(torch.empty(1, dtype=torch.float64))
    assert not runs_triton(torch.empty(1, device="meta"))
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    assert not runs_triton(torch.empty(1))


def test_bad_input():
    with pytest.raises(ValueError, match="tau"):
        MultiStepLIF(tau=1.0)
    with pytest.raises(ValueError, match=r"\[T, \.\.\.\]"):
        MultiStepLIF()(torch.ones(4))


_TRITON_CHECK = """
import torch
from module import lif_triton
from module.fused_lif import lif_backward_reference, lif_reference
torch.manual_seed(0)
# the backward recomputes the membrane at T=4, keeps it in registers at T=12 and T=16, in an fp32 scratch at T=36
for steps in (4, 12, 16, 36):
    assert lif_triton.recomputes_membrane(steps, 4) == lif_triton.recomputes_membrane(steps, 2) == (steps == 4)
    assert (steps <= lif_triton.HISTORY_STEPS) == (steps < 36)
    x = torch.randn(steps, 3, 700) * 1.5  # 2100 neurons: three blocks of 1024 (nine of 256), the last one masked
    g = torch.randn_like(x)
    for decay, th, need in ((torch.tensor(0.5), 1.0, False), (torch.tensor(0.3).sigmoid(), 0.5, True)):
        for dtype, tol in ((torch.float32, 1e-6), (torch.bfloat16, 1e-2)):
            for repeated in (False, True):  # [T, ...], or x[:1] at every step (summed gradient)
                xd, gd = (x[:1] if repeated else x).to(dtype), g.to(dtype)
                xt = xd.expand_as(gd)
                assert torch.equal(lif_triton.forward(xd, decay, th, steps), lif_reference(xt, decay, th))
                gx, gk = lif_triton.backward(gd, xd, decay, th, need)
                rx, rk = lif_backward_reference(gd, xt, decay, th, need)
                rx = rx.float().sum(0, keepdim=True) if repeated else rx.float()
                assert gx.dtype == dtype and gx.shape == xd.shape, (gx.dtype, gx.shape)
                assert (gx.float() - rx).abs().max() <= tol * (steps if repeated else 1), (steps, dtype, repeated)
                if need:
                    assert abs(gk - rk) <= 1e-4 * abs(rk) + 1e-4, (gk, rk)
from module.bn_lif import _normalize, _packed
C = 6  # the batch-norm prologue: [T, B, C, H, W], per-channel statistics and affine
stats, weight, bias = torch.stack((torch.randn(C) * 0.2, torch.rand(C) + 0.5)), torch.rand(C) + 0.5, torch.randn(C)
decay, table = torch.tensor(0.3).sigmoid(), _packed(stats, weight, bias)
for steps in (4, 12, 36):
    x = torch.randn(steps, 3, C, 5, 7) * 2
    g = torch.randn_like(x)
    y = _normalize(x, stats, weight, bias)
    assert torch.equal(lif_triton.forward(x, decay, 1.0, steps, batch_norm=table), lif_reference(y, decay, 1.0))
    gy, gk = lif_triton.backward(g, x, decay, 1.0, True, batch_norm=table)
    ry, rk = lif_backward_reference(g, y, decay, 1.0, True)
    assert (gy - ry).abs().max() <= 1e-6 and abs(gk - rk) <= 1e-4 * abs(rk) + 1e-4, steps
    # bf16: the interpreter rounds fp32 -> bf16 towards zero (compiled Triton and torch to nearest even), so the
    # normalised input may differ by one bf16 ulp here and flip the odd spike
    xb = x.bfloat16()
    spikes = lif_triton.forward(xb, decay, 1.0, steps, batch_norm=table)
    expected = lif_reference(_normalize(xb, stats, weight, bias), decay, 1.0)
    assert spikes.dtype == torch.bfloat16 and (spikes != expected).float().mean() < 0.01, steps
# channels-last conv outputs ([T * B, C, H, W] in NHWC order, viewed as [T, B, C, H, W]) keep their layout
x = torch.randn(4 * 3, C, 5, 7).contiguous(memory_format=torch.channels_last).unflatten(0, (4, 3)) * 2
g = torch.randn(4, 3, C, 5, 7)  # a gradient in another layout
for steps in (4, 12):
    xs, gs = x.repeat(steps // 4, 1, 1, 1, 1), g.repeat(steps // 4, 1, 1, 1, 1)
    xs = xs.flatten(0, 1).contiguous(memory_format=torch.channels_last).unflatten(0, xs.shape[:2])
    ys = _normalize(xs, stats, weight, bias)
    for batch_norm, lif_input in ((None, xs), (table, ys)):
        spikes = lif_triton.forward(xs, decay, 1.0, steps, batch_norm=batch_norm)
        assert spikes.stride() == xs.stride() and torch.equal(spikes, lif_reference(lif_input, decay, 1.0))
        gx, _ = lif_triton.backward(gs, xs, decay, 1.0, False, batch_norm=batch_norm)
        rx, _ = lif_backward_reference(gs, lif_input, decay, 1.0, False)
        assert gx.stride() == xs.stride() and (gx - rx).abs().max() <= 1e-6, steps
print("ok")
"""


@pytest.mark.skipif(not triton_available(), reason="Triton is not installed")
def test_triton_kernels_in_the_interpreter():
    """The CUDA kernels, run by Triton's CPU interpreter: same spikes, gradients within rounding."""
    run_in_interpreter(_TRITON_CHECK)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("steps", [4, 16, 36], ids=["recomputed", "registers", "scratch"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_cuda_kernels_match_the_torch_loop(steps, dtype):
    """On a GPU: the op's Triton kernels against its PyTorch loop, for each way the backward gets the membrane."""
    from module.fused_lif import _lif_backward

    torch.manual_seed(0)
    x = (torch.randn(steps, 4, 8, 30, device="cuda") * 1.5).to(dtype)
    grad = torch.randn_like(x)
    decay = torch.tensor(0.3, device="cuda").sigmoid()
    spikes = _lif_forward(x, decay, 0.5, steps)
    grad_x, grad_decay = _lif_backward(grad, x, decay, 0.5, True)
    expected = lif_reference(x.cpu(), decay.cpu(), 0.5)
    ref_x, ref_decay = lif_backward_reference(grad.cpu(), x.cpu(), decay.cpu(), 0.5, True)
    # the GPU may contract the membrane update into an FMA: a membrane one ulp from the threshold can flip
    assert (spikes.cpu() != expected).float().mean() < 1e-3
    agree = (spikes.cpu() == expected).all(0)  # neurons whose spike train is the same
    tol = 1e-5 if dtype == torch.float32 else 1e-2
    torch.testing.assert_close(grad_x.cpu()[:, agree].float(), ref_x[:, agree].float(), rtol=tol, atol=tol)
    assert abs(grad_decay.item() - ref_decay.item()) <= 1e-3 * abs(ref_decay.item()) + 1e-3


_TRITON_COMPILE = """
from module import lif_triton as L
from triton_scripts import compile_for_hopper
half = {"x_ptr": "*bf16", "spike_ptr": "*bf16", "grad_spike_ptr": "*bf16", "grad_x_ptr": "*bf16"}
cases = [
    (L._lif_forward_kernel, half, dict(T=4, v_threshold=1.0, REPEATED_INPUT=True, HAS_BN=False, BLOCK=L.BLOCK)),
    (L._lif_forward_kernel, {}, dict(T=16, v_threshold=0.5, REPEATED_INPUT=False, HAS_BN=True, BLOCK=L.BLOCK)),
    (L._lif_backward_kernel, half, dict(T=4, T_POW2=4, v_threshold=1.0, alpha=4.0, NEED_DECAY_GRAD=True,
                                        REPEATED_INPUT=True, HAS_BN=False, BN_GRAD=False, MEMBRANE="recompute",
                                        BLOCK=L.BLOCK)),
    (L._lif_backward_kernel, half, dict(T=8, T_POW2=8, v_threshold=0.5, alpha=4.0, NEED_DECAY_GRAD=True,
                                        REPEATED_INPUT=False, HAS_BN=True, BN_GRAD=True, MEMBRANE="recompute",
                                        BLOCK=L.BLOCK)),
    (L._lif_backward_kernel, {}, dict(T=16, T_POW2=16, v_threshold=1.0, alpha=4.0, NEED_DECAY_GRAD=True,
                                      REPEATED_INPUT=False, HAS_BN=True, BN_GRAD=True, MEMBRANE="registers",
                                      BLOCK=L.HISTORY_BLOCK)),
    (L._lif_backward_kernel, half, dict(T=32, T_POW2=32, v_threshold=0.5, alpha=4.0, NEED_DECAY_GRAD=False,
                                        REPEATED_INPUT=False, HAS_BN=False, BN_GRAD=False, MEMBRANE="registers",
                                        BLOCK=L.HISTORY_BLOCK)),
    (L._lif_backward_kernel, {}, dict(T=40, T_POW2=64, v_threshold=1.0, alpha=4.0, NEED_DECAY_GRAD=True,
                                      REPEATED_INPUT=False, HAS_BN=True, BN_GRAD=False, MEMBRANE="memory",
                                      BLOCK=L.BLOCK)),
    (L._bn_lif_grad_sums_kernel, half, dict(T=4, T_POW2=4, v_threshold=1.0, alpha=4.0, MEMBRANE="recompute", BJ=16,
                                            BC=64)),
    (L._bn_lif_grad_sums_kernel, {}, dict(T=5, T_POW2=8, v_threshold=1.0, alpha=4.0, MEMBRANE="recompute", BJ=256,
                                          BC=4)),
    (L._bn_lif_grad_sums_kernel, {}, dict(T=16, T_POW2=16, v_threshold=1.0, alpha=4.0, MEMBRANE="registers", BJ=4,
                                          BC=64)),
    (L._bn_lif_grad_sums_kernel, half, dict(T=12, T_POW2=16, v_threshold=1.0, alpha=4.0, MEMBRANE="registers", BJ=64,
                                            BC=4)),
    (L._bn_grad_finalize_kernel, {}, dict(BLOCK_C=128)),
]
compile_for_hopper(cases, {"N": "i32", "C": "i32", "S": "i32", "inv_count": "fp32"})
print("ok")
"""


@pytest.mark.skipif(not triton_available(), reason="Triton is not installed")
def test_triton_kernels_compile_for_hopper(tmp_path):
    """The interpreter runs kernels as Python; this compiles them (Triton -> PTX -> cubin for sm_90, no GPU
    needed), which catches what only the compiler rejects."""
    run_compiler(_TRITON_COMPILE, tmp_path)


@pytest.mark.parametrize("parametric", [False, True], ids=["lif", "plif"])
def test_repeated_input_is_the_input_at_every_step(parametric):
    """``steps`` with a ``[1, ...]`` input: the spikes of the expanded input, its gradient summed over time."""
    torch.manual_seed(0)
    x = torch.randn(1, 3, 8, 6) * 1.5
    grad_out = torch.randn(5, 3, 8, 6)
    once, expanded = x.clone().requires_grad_(), x.clone().requires_grad_()
    lif, lif_expanded = MultiStepLIF(parametric=parametric), MultiStepLIF(parametric=parametric)
    spikes, expected = lif(once, steps=5), lif_expanded(expanded.expand(5, -1, -1, -1))
    assert spikes.shape == (5, 3, 8, 6) and 0 < spikes.mean() < 1
    assert torch.equal(spikes, expected)
    (spikes * grad_out).sum().backward()
    (expected * grad_out).sum().backward()
    torch.testing.assert_close(once.grad, expanded.grad, rtol=1e-5, atol=1e-6)
    if parametric:
        torch.testing.assert_close(lif.w.grad, lif_expanded.w.grad, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="steps=4"):
        lif(torch.ones(2, 3), steps=4)


@pytest.mark.parametrize("momentum", [0.1, None])
def test_batch_norm_of_copies_is_batch_norm_of_the_stacked_copies(momentum):
    """Computed once and broadcast, with the stacked batch's outputs, gradients and running statistics."""
    torch.manual_seed(0)
    T, x = 3, torch.randn(4, 5, 6, 6)
    bn = torch.nn.BatchNorm2d(5, momentum=momentum)
    with torch.no_grad():
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-0.5, 0.5)
    stacked_bn = copy.deepcopy(bn)
    x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
    grad_out = torch.randn(T, *x.shape)
    for _ in range(2):  # twice: the running statistics and num_batches_tracked move the same way
        once = batch_norm_of_copies(bn, x1, T)
        stacked = stacked_bn(x2.repeat(T, 1, 1, 1)).unflatten(0, (T, -1))
        assert once.shape == (1, *x.shape)  # one copy, broadcastable
        once = once.expand(T, *x.shape)
        torch.testing.assert_close(once, stacked, rtol=1e-5, atol=1e-6)
        (once * grad_out).sum().backward()
        (stacked * grad_out).sum().backward()
    torch.testing.assert_close(x1.grad, x2.grad, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(bn.weight.grad, stacked_bn.weight.grad, rtol=1e-4, atol=1e-5)
    for name, value in stacked_bn.state_dict().items():
        torch.testing.assert_close(bn.state_dict()[name], value, rtol=1e-5, atol=1e-7, msg=name)


def test_batch_norm_of_copies_with_hooks_runs_the_copies():
    """A hooked BN (fine-tuning freezes statistics with a forward pre-hook) sees the stacked copies."""
    bn = torch.nn.BatchNorm2d(3)
    bn.register_forward_pre_hook(lambda module, inputs: None if module.train(False) else None)
    seen = []
    bn.register_forward_hook(lambda module, inputs, out: seen.append(inputs[0].shape))
    out = batch_norm_of_copies(bn, torch.randn(2, 3, 4, 4), 5)
    assert out.shape == (5, 2, 3, 4, 4) and seen == [(10, 3, 4, 4)]
    assert int(bn.num_batches_tracked) == 0 and torch.equal(bn.running_var, torch.ones(3))


def _check_compiled_against_eager(net: torch.nn.Module, x: torch.Tensor, backend: str, rtol: float,
                                  atol: float) -> None:
    """One graph (``fullgraph``) whose logits and gradients are eager's within the tolerances."""
    eager = copy.deepcopy(net)
    torch._dynamo.reset()
    out, expected = torch.compile(net, backend=backend, fullgraph=True)(x), eager(x)
    out.square().sum().backward()
    expected.square().sum().backward()
    torch.testing.assert_close(out, expected, rtol=0, atol=atol)
    for (name, p), q in zip(net.named_parameters(), eager.parameters()):
        if q.grad is not None:
            torch.testing.assert_close(p.grad, q.grad, rtol=rtol, atol=atol, msg=name)


@pytest.mark.parametrize("attention_mode", ["SDT", "STAtten"])
def test_compiles_without_graph_breaks_to_the_same_numbers(attention_mode):
    """The fast path under torch.compile (aot_eager: the graph capture, without code generation): one graph,
    the same logits and gradients as eager."""
    torch.manual_seed(0)
    net = timm.create_model("sdt_test", attention_mode=attention_mode, chunk_size=1).train()
    _check_compiled_against_eager(net, torch.randn(4, 3, 32, 32), "aot_eager", rtol=1e-5, atol=1e-6)


@pytest.mark.slow
@pytest.mark.skipif(shutil.which(os.environ.get("CXX", "g++")) is None, reason="inductor's CPU backend needs g++")
@pytest.mark.parametrize("attention_mode", ["SDT", "STAtten"])
def test_inductor_in_channels_last_computes_what_eager_does(attention_mode):
    """``--torchcompile --channels-last``: inductor trusts the fake kernels' strides, so the LIF ops must declare
    the layout their real kernels write (a contiguous fake fails inductor's stride assertion).  float64: the
    eager CPU BatchNorm is not accurate on channels-last fp32 input."""
    torch.manual_seed(0)
    net = timm.create_model("sdt_test", attention_mode=attention_mode, chunk_size=1).train().double()
    x = torch.randn(4, 3, 32, 32, dtype=torch.float64).contiguous(memory_format=torch.channels_last)
    _check_compiled_against_eager(net.to(memory_format=torch.channels_last), x, "inductor", rtol=1e-9, atol=1e-12)


def test_stateless_neurons_refuse_to_carry_state():
    net = timm.create_model("sdt_test")
    with pytest.raises(ValueError, match="neuron_backend='spikingjelly'"):
        net.auto_reset = False
    with pytest.raises(ValueError, match="neuron_backend"):
        timm.create_model("sdt_test", neuron_backend="cupy")
    stateful = timm.create_model("sdt_test", neuron_backend="spikingjelly")
    stateful.auto_reset = False
    assert type(stateful.head_lif) is neuron.LIFNode


def test_encode_once_and_fused_neurons_change_no_number():
    torch.manual_seed(0)
    fast = timm.create_model("sdt_test", spike_mode="plif").train()
    reference = timm.create_model("sdt_test", spike_mode="plif", neuron_backend="spikingjelly",
                                  encode_once=False).train()
    reference.load_state_dict(fast.state_dict())
    x = torch.randn(6, 3, 32, 32) * 3
    out, expected = fast(x), reference(x)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-6)
    out.logsumexp(1).sum().backward()
    expected.logsumexp(1).sum().backward()
    for (name, p), q in zip(fast.named_parameters(), reference.parameters()):
        if q.grad is not None:
            torch.testing.assert_close(p.grad, q.grad, rtol=1e-4, atol=1e-6, msg=name)
    for name, value in reference.state_dict().items():
        torch.testing.assert_close(fast.state_dict()[name], value, rtol=1e-5, atol=1e-7, msg=name)


def _statten_core_as_the_reference(q, k, v, chunk_size, heads, scale):
    """STAtten's attention core as the reference computes it: token-major copies, chunks merged, then back."""
    T, B, C, H, W = q.shape
    nc = T // chunk_size

    def chunks(x):
        x = x.flatten(3).transpose(-1, -2).reshape(T, B, -1, heads, C // heads).permute(0, 1, 3, 2, 4)
        return x.reshape(nc, chunk_size, *x.shape[1:]).permute(0, 2, 3, 1, 4, 5).flatten(3, 4)

    q, k, v = chunks(q), chunks(k), chunks(v)
    out = q @ ((k.transpose(-2, -1) @ v) * scale)
    out = out.unflatten(3, (chunk_size, H * W)).permute(0, 3, 1, 2, 4, 5).reshape(T, B, heads, H * W, -1)
    return out.transpose(4, 3).reshape(T, B, C, H * W)


@pytest.mark.parametrize("T, chunk_size, dvs", [(4, 2, False), (4, 4, False), (6, 3, True)])
def test_statten_core_without_copies_equals_the_reference_layout(T, chunk_size, dvs):
    """The view-based STAtten core (per-step K^T V summed over the chunk) gives the reference's attention output
    exactly on spikes, and the same input gradients."""
    from module import MS_SSA_Conv

    torch.manual_seed(0)
    attn = MS_SSA_Conv(32, num_heads=4, dvs=dvs, attention_mode="STAtten", chunk_size=chunk_size)
    x = torch.randn(T, 3, 32, 6, 6)
    q, k, v = ((torch.rand(T, 3, 32, 6, 6) < 0.3).float().requires_grad_() for _ in range(3))
    scale = 1.0 / (6 * 6 * chunk_size) if dvs else 1.0 / 6
    seen = {}
    attn.attn_lif.register_forward_hook(lambda m, inputs, out: seen.setdefault("core", inputs[0]))
    attn._statten_attention(x, q, k, v)
    pooled = [attn.pool(t) if dvs else t for t in (q, k, v)]
    expected = _statten_core_as_the_reference(*pooled, chunk_size, 4, scale)
    assert torch.equal(seen["core"], expected)
    grad_out = torch.randn_like(expected)
    mine = torch.autograd.grad((seen["core"] * grad_out).sum(), (q, k, v))
    theirs = torch.autograd.grad((expected * grad_out).sum(), (q, k, v))
    for a, b in zip(mine, theirs):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
@pytest.mark.skipif(shutil.which(os.environ.get("CXX", "g++")) is None, reason="inductor's CPU backend needs g++")
def test_a_compiled_statten_model_trains_on_a_short_last_batch(tmp_path):
    """--torchcompile on an event-data STAtten run crashed at the epoch's short last batch: inductor recompiled
    for a dynamic batch size and failed on the chunked attention ("cannot determine truth value of Relational").
    The engine compiles with static shapes; the second batch size gets a graph of its own, with eager's numbers."""
    from _engine_helpers import tiny_args

    from engine.model import build_model, compile_model, resolve_model_args

    args = tiny_args(tmp_path, "--attention-mode", "STAtten", "--chunk-size", "1", "--time-steps", "2",
                     "--torchcompile")
    resolve_model_args(args)
    torch.manual_seed(0)
    net = build_model(args).train()
    eager = copy.deepcopy(net)
    torch._dynamo.reset()
    compile_model(args, net)
    for batch in (4, 3):
        x = torch.randn(batch, 3, 32, 32)
        out = net(x)
        torch.testing.assert_close(out, eager(x), rtol=1e-5, atol=1e-5)
        out.sum().backward()
