"""Third mutation round on the model code (neurons, fused BN + LIF, pools, attention, stem, model): the time-major
layout test, the LIF backward's memory plan, the PLIF's initial decay and its gradient without an input gradient,
the factory's plain "alif"/"blif", the fused BN + LIF without running statistics or with a hooked LIF, the pool's
default stride, the attention's own width check, the stem with spikingjelly neurons or a pre-hooked BN, and the
model's checkpoint, variant and event-input handling."""
import pytest
import timm
import torch

import model  # noqa: F401  (registers the sdt models)
from model.spikeformer import checkpoint_filter_fn, variant_defaults
from module import MultiStepLIF, create_lif
from module.bn_lif import batch_norm_lif, bn_lif
from module.fused_lif import HISTORY_STEPS, is_time_major, keeps_membrane_in_memory, recomputes_membrane
from module.ms_conv import MS_SSA_Conv
from module.pool import max_pool2d

TINY = dict(img_size_h=32, img_size_w=32, in_channels=3, num_classes=10, embed_dims=32, num_heads=4, mlp_ratios=4,
            depths=1, T=2, pooling_stat="0011")

# ---------------------------------------------------------------------------------------------------- fused LIF


@pytest.mark.parametrize("shape, stride", [((1, 4, 5, 6), (999, 1, 24, 4)), ((3, 2, 4, 1, 6), (48, 24, 1, 999, 4))],
                         ids=["one_step", "size_one_axis"])
def test_time_major_ignores_the_stride_of_a_size_one_axis(shape, stride):
    """A size-one axis is never stepped along, so its stride says nothing about the layout: one time step (no next
    step to be ``N`` elements after) or a channels-last step with H = 1 is time-major whatever that stride, and the
    spikes keep the input's layout."""
    x = torch.empty_strided(shape, stride).fill_(3.0)
    assert is_time_major(x)
    spikes = MultiStepLIF()(x)
    assert spikes[0].stride() == x[0].stride() and bool(spikes[0].all())


def test_plif_decay_gradient_without_an_input_gradient():
    """The decay's gradient does not depend on whether the input wants one (a stem whose input is data)."""
    with_x, without_x = MultiStepLIF(parametric=True), MultiStepLIF(parametric=True)
    x = torch.tensor([0.5, 0.5]).reshape(2, 1)
    with_x(x.clone().requires_grad_())[1].sum().backward()
    without_x(x)[1].sum().backward()
    assert without_x.w.grad is not None and without_x.w.grad.item() == pytest.approx(with_x.w.grad.item())


def test_plif_initial_decay_is_one_over_tau():
    """``1/tau = sigmoid(w)``: w = -log(tau - 1) gives 1/3 for tau 3 (at tau 2 either sign of w gives 1/2)."""
    assert MultiStepLIF(tau=3.0, parametric=True).membrane_decay().item() == pytest.approx(1 / 3)
    assert MultiStepLIF(tau=3.0).membrane_decay().item() == pytest.approx(1 / 3)


def test_backward_memory_plan_boundaries():
    """Recomputing moves no more bytes while (T + 1) itemsize <= 2 (itemsize + 8): up to T = 5 in fp32 and T = 9 in
    half precision; beyond, the membrane stays in registers up to ``HISTORY_STEPS`` (32) and only then in memory."""
    assert [recomputes_membrane(t, 4) for t in (5, 6)] == [True, False]
    assert [recomputes_membrane(t, 2) for t in (9, 10)] == [True, False]
    assert HISTORY_STEPS == 32
    assert [keeps_membrane_in_memory(t, 4) for t in (5, 32, 33)] == [False, False, True]


# ------------------------------------------------------------------------------------------------ neuron factory


def test_alif_and_blif_build_a_plain_lif():
    """The reference accepts "alif" and "blif" and builds a plain LIF there: no ``w`` parameter, unlike "plif"."""
    for backend in ("fused", "spikingjelly"):
        assert [len(list(create_lif(mode, backend=backend).parameters())) for mode in ("lif", "alif", "blif",
                                                                                        "plif")] == [0, 0, 0, 1]


# ------------------------------------------------------------------------------------------------ fused BN + LIF


@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_batch_norm_without_running_statistics_fuses_to_the_same_spikes(training):
    """``track_running_stats=False`` normalises with the batch's statistics in eval too (and has no running
    statistics to update): the fused pair's spikes and input gradient are the unfused pair's."""
    torch.manual_seed(0)
    bn, lif = torch.nn.BatchNorm2d(3, track_running_stats=False).train(training), MultiStepLIF()
    with torch.no_grad():
        bn.weight.uniform_(0.5, 2.0)
        bn.bias.uniform_(-0.5, 0.5)
    x = torch.randn(3, 2, 3, 4, 4) * 2 + 0.3
    fused_in, ref_in = x.clone().requires_grad_(), x.clone().requires_grad_()
    spikes, expected = batch_norm_lif(bn, lif, fused_in), lif(bn(ref_in.flatten(0, 1)).view_as(ref_in))
    assert torch.equal(spikes, expected) and 0 < spikes.mean() < 1
    spikes.sum().backward()
    expected.sum().backward()
    torch.testing.assert_close(fused_in.grad, ref_in.grad, rtol=1e-5, atol=1e-6)


def test_a_pre_hook_on_the_lif_keeps_the_pair_unfused():
    """A forward pre-hook on the LIF must see the BN output: the pair runs unfused even when fusing is asked for."""
    bn, lif = torch.nn.BatchNorm2d(2), MultiStepLIF()
    seen = []
    lif.register_forward_pre_hook(lambda module, inputs: seen.append(inputs[0].shape))
    bn_lif(bn, lif, torch.randn(2, 3, 2, 4, 4), fuse=True)
    assert seen == [(2, 3, 2, 4, 4)]


# ---------------------------------------------------------------------------------------------------------- pools


def test_max_pool_stride_defaults_to_the_kernel():
    """As ``F.max_pool2d``: no stride means stride = kernel, a 4x4 input pooled 2x2 into its four quadrant maxima."""
    x = torch.arange(16.0).reshape(1, 1, 4, 4).requires_grad_()
    out = max_pool2d(x, 2)
    assert out.flatten().tolist() == [5.0, 7.0, 13.0, 15.0]
    out.sum().backward()
    assert x.grad.flatten().nonzero().flatten().tolist() == [5, 7, 13, 15]


# ---------------------------------------------------------------------------------------------------- attention


def test_attention_refuses_a_width_that_the_heads_do_not_divide():
    """The module checks its own width (the model's check does not cover modules built directly)."""
    with pytest.raises(ValueError, match="embed_dims=12 is not divisible by num_heads=8"):
        MS_SSA_Conv(12, num_heads=8)


# ---------------------------------------------------------------------------------------------------------- stem


def test_spikingjelly_neurons_encode_once_to_the_same_numbers():
    """With the stateful spikingjelly neurons the stem's first LIF gets the once-computed encoding expanded over the
    T steps: logits as on the T copies."""
    torch.manual_seed(0)
    once = timm.create_model("sdt_test", neuron_backend="spikingjelly", encode_once=True)
    copies = timm.create_model("sdt_test", neuron_backend="spikingjelly", encode_once=False)
    copies.load_state_dict(once.state_dict())
    x = torch.randn(4, 3, 32, 32) * 3
    with torch.no_grad():
        torch.testing.assert_close(once(x), copies(x), rtol=0, atol=1e-6)


def test_batch_norm_of_copies_with_a_pre_hook_only_runs_the_copies():
    """A forward pre-hook alone (statistics frozen for fine-tuning) already sends the BN the stacked copies."""
    from module.sps import batch_norm_of_copies

    bn = torch.nn.BatchNorm2d(3)
    seen = []
    bn.register_forward_pre_hook(lambda module, inputs: seen.append(inputs[0].shape))
    assert batch_norm_of_copies(bn, torch.randn(2, 3, 4, 4), 5).shape == (5, 2, 3, 4, 4)
    assert seen == [(10, 3, 4, 4)]


# --------------------------------------------------------------------------------------------------------- model


def test_checkpoint_filter_prefers_the_plain_state_dict():
    """A checkpoint with both keeps its ``state_dict``; ``state_dict_ema`` is used only when it is alone."""
    plain, ema = {"module.a": 1}, {"module.a": 2}
    assert checkpoint_filter_fn({"state_dict": plain, "state_dict_ema": ema}, None) == {"a": 1}
    assert checkpoint_filter_fn({"state_dict_ema": ema}, None) == {"a": 2}


def test_variant_defaults_is_a_copy_and_the_callers_arguments_win():
    """Changing the returned dict leaves the registry alone; a named variant built with T=4 has T=4."""
    defaults = variant_defaults("sdt_test")
    defaults["T"] = 99
    assert variant_defaults("sdt_test")["T"] == 2
    with torch.device("meta"):
        assert timm.create_model("sdt_test", T=4).T == 4


def test_event_input_with_too_few_steps_is_refused():
    """``[B, T, C, H, W]`` event frames must have exactly the model's T steps, fewer too."""
    net = timm.create_model("sdt", **{**TINY, "in_channels": 2, "dvs_mode": True, "T": 3})
    with pytest.raises(ValueError, match=r"the event input has 2 time steps .* built with T=3"):
        net(torch.rand(1, 2, 2, 32, 32))
