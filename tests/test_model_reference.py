"""Our SDT/STAtten against outputs, hooks, gradients and BN statistics of the original model code."""
import copy

import pytest
import torch

from reference_fixtures import FIXTURES, VARIANTS, build_seeded, load_fixture, reference_loss, unpack_hook

pytestmark = pytest.mark.parametrize("path", FIXTURES, ids=[p.stem for p in FIXTURES])


@pytest.fixture(params=list(VARIANTS))
def case(path, request):
    """Fixture and seeded model, once with the fast defaults (stateless fused LIF, static encoding conv run once)
    and once with spikingjelly's neurons on T repeated copies, as the reference computed it."""
    fixture = load_fixture(path)
    model = build_seeded(fixture, **VARIANTS[request.param])
    return fixture, model


def _firing_rates(hook: dict) -> dict:
    return {f"t{t}": {k: v[t].float().mean().item() for k, v in hook.items()} for t in range(hook["head_lif"].shape[0])}


def test_seeded_init_matches_reference(case):
    # Same RNG stream as the reference; timm 1.x's trunc_normal_ rounds differently from 0.6.12 in the last bits.
    fixture, model = case
    expected = {**fixture["state_dict"], **fixture["init_values"]}
    state = model.state_dict()
    assert list(state) == list(expected)
    for key, value in state.items():
        torch.testing.assert_close(value, expected[key], rtol=0, atol=1e-8, msg=key)


def test_state_dict_loads_strictly(case):
    fixture, model = case
    result = model.load_state_dict(fixture["state_dict"], strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    assert [k for k in model.state_dict()] == list(fixture["state_dict"])


def test_eval_output_and_hooks(case):
    fixture, model = case
    model.load_state_dict(fixture["state_dict"])
    model.eval()
    with torch.no_grad():
        out, hook = model(fixture["input"].float(), hook=dict())
    assert out.shape == fixture["eval_output"].shape
    assert (out - fixture["eval_output"]).abs().max() < 1e-5
    assert list(hook) == list(fixture["hook"])
    for key, entry in fixture["hook"].items():
        expected = unpack_hook(entry)
        mine = hook[key][:, :1].float()
        assert mine.shape == expected.shape, key
        assert (mine - expected).abs().max() < 1e-5, key
    rates = _firing_rates(hook)
    for t, per_key in fixture["firing_rate"].items():
        for key, value in per_key.items():
            assert rates[t][key] == pytest.approx(value, abs=1e-6), (t, key)


def test_eval_is_repeatable_without_manual_reset(case):
    """Neuron state must not leak across forwards: same input, same output, with another batch in between."""
    fixture, model = case
    model.load_state_dict(fixture["state_dict"])
    model.eval()
    x = fixture["input"].float()
    with torch.no_grad():
        first = model(x)
        model(torch.flip(x, dims=[0]) * 2)
        second = model(x)
    assert torch.equal(first, second)


def _check_train_step(fixture: dict, model: torch.nn.Module, out: torch.Tensor) -> None:
    """Backward of the fixture's loss on the train-mode ``out``; output, loss, gradients and BN statistics against
    the fixture."""
    loss = reference_loss(fixture, out)
    loss.backward()
    torch.testing.assert_close(out, fixture["train_output"], rtol=1e-4, atol=1e-5)
    assert loss.item() == pytest.approx(fixture["train_loss"], rel=1e-4, abs=1e-5)

    params = dict(model.named_parameters())
    for name, grad in fixture["grads"].items():
        torch.testing.assert_close(params[name].grad, grad, rtol=1e-4, atol=1e-5, msg=name)
    for name, norm in fixture["grad_norms"].items():
        assert params[name].grad.norm().item() == pytest.approx(norm, rel=1e-4, abs=1e-5), name
    assert sorted(n for n, p in params.items() if p.grad is None) == sorted(fixture["grads_none"])

    state = model.state_dict()
    for name, value in fixture["train_bn_running_stats"].items():
        torch.testing.assert_close(state[name], value, rtol=1e-4, atol=1e-5, msg=name)


def test_train_forward_backward(case):
    # spikingjelly 2.0's fused CPU LIF kernel and our fused op have their own backward: gradients agree with the
    # reference's plain-torch loop to rounding (about 1e-7 absolute, 1e-5 relative on PLIF w), inside the tolerances
    # below.  The encoding conv run once sums its T weight gradients in another order: rounding too.
    fixture, model = case
    model.load_state_dict(fixture["state_dict"])
    model = copy.deepcopy(model).train()
    out, hook = model(fixture["input"].float(), hook=dict())
    _check_train_step(fixture, model, out)
    rates = _firing_rates(hook)
    for t, per_key in fixture["train_firing_rate"].items():
        for key, value in per_key.items():
            assert rates[t][key] == pytest.approx(value, abs=1e-6), (t, key)


def test_train_forward_backward_with_fused_bn_lif(path, monkeypatch):
    """``fuse_bn_lif``: every BatchNorm + LIF pair as one op reproduces the training step (no hooks attached: the
    hook dict's hooks on the LIFs would keep the pairs unfused)."""
    import module.bn_lif

    fixture = load_fixture(path)
    model = build_seeded(fixture, fuse_bn_lif=True)
    model.load_state_dict(fixture["state_dict"])
    model.train()
    fused_calls = []
    fused = module.bn_lif.batch_norm_lif
    monkeypatch.setattr(module.bn_lif, "batch_norm_lif", lambda *args: fused_calls.append(1) or fused(*args))
    x = fixture["input"].float()
    out = model(x)
    # q, k, v and the MLP in every block; stem stages 1 and 2, and stage 0 for event frames (a static image's first
    # stage runs once, unfused, and is broadcast over T)
    assert len(fused_calls) == 4 * model.depths + 2 + (x.dim() == 5)
    _check_train_step(fixture, model, out)


def _train_step_in_layout(fixture: dict, memory_format: torch.memory_format, **options):
    """Output, gradients, BN statistics and the layout of every conv input after the first (True: channels-last)
    of one float64 training step on the fixture's weights and input, the model and a static input in
    ``memory_format``."""
    model = build_seeded(fixture, **options)
    model.load_state_dict(fixture["state_dict"])
    model = model.double().to(memory_format=memory_format).train()
    layouts = {}

    def record_layout(name: str):
        def hook(module, args):
            layouts.setdefault(name, args[0].is_contiguous(memory_format=torch.channels_last))
        return hook

    convs = [(name, m) for name, m in model.named_modules() if isinstance(m, torch.nn.Conv2d)]
    for name, conv in convs[1:]:
        conv.register_forward_pre_hook(record_layout(name))
    x = fixture["input"].double()
    if x.dim() == 4:
        x = x.contiguous(memory_format=memory_format)
    out = model(x)
    reference_loss(fixture, out).backward()
    grads = {name: p.grad for name, p in model.named_parameters() if p.grad is not None}
    return out.detach(), grads, model.state_dict(), layouts


@pytest.mark.parametrize("fuse_bn_lif", [False, True], ids=["unfused", "bn_lif"])
def test_train_step_in_channels_last(path, fuse_bn_lif):
    """``--channels-last``: every convolution after the first gets NHWC input (the LIFs, pools, BN + LIF and the
    attention views keep the layout), and the step computes what it computes in channel-major memory.

    Compared in float64, against the same step in channel-major memory: PyTorch's CPU BatchNorm reduces
    channels-last input in another order, and in fp32 that rounding flips spikes that sit on a threshold (the
    fixtures' DVS models amplify it to 0.1 in the output).  On a GPU the fp32 differences come from
    ``benchmarks/fixture_diffs.py``'s ``channels_last`` variant.
    """
    fixture = load_fixture(path)
    out, grads, state, layouts = _train_step_in_layout(fixture, torch.contiguous_format, fuse_bn_lif=fuse_bn_lif)
    out_cl, grads_cl, state_cl, layouts_cl = _train_step_in_layout(fixture, torch.channels_last,
                                                                   fuse_bn_lif=fuse_bn_lif)
    assert layouts_cl and [name for name, channels_last in layouts_cl.items() if not channels_last] == []
    assert not any(layouts.values())
    torch.testing.assert_close(out_cl, out, rtol=0, atol=1e-12)
    assert grads_cl.keys() == grads.keys()
    # float64 throughout (the LIF and BN + LIF ops compute in float64 for float64 input): the gradient sums (PLIF
    # decay, batch norm backward) differ only in their order per layout, a few ulps of float64
    for name, grad in grads.items():
        torch.testing.assert_close(grads_cl[name], grad, rtol=1e-10, atol=1e-12, msg=lambda m: f"{name}: {m}")
    for name, value in state.items():
        torch.testing.assert_close(state_cl[name], value, rtol=1e-12, atol=1e-12, msg=lambda m: f"{name}: {m}")
