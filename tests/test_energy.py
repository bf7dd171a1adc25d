"""The SOP/MAC energy report: a hand-computed case and the cross-check with spikingjelly's op counters."""
import pytest
import torch
from torch import nn

from engine.energy import EnergyConstants, EnergyMeter, spikingjelly_counts, write_energy_csv
from reference_fixtures import FIXTURE_DIR, build_seeded, load_fixture


class _Toy(nn.Module):
    """Analog 3x3 encoding conv, a 1x1 conv on fixed spikes and a linear head on fixed spikes (T=2, B=1)."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 2, 3, padding=1, bias=False)
        self.conv2 = nn.Conv2d(2, 3, 1)
        self.head = nn.Linear(3, 2)
        spikes = torch.zeros(2, 2, 4, 4)
        spikes.view(2, -1)[:, :8] = 1  # 8 of 32 per step: rate 0.25
        self.register_buffer("spikes", spikes)
        self.register_buffer("head_spikes", torch.tensor([[[1.0, 1.0, 0.0]], [[1.0, 0.0, 0.0]]]))  # rate 0.5

    def forward(self, x):
        self.conv1(x)
        self.conv2(self.spikes)
        return self.head(self.head_spikes)


def test_hand_computed_energy():
    toy = _Toy()
    with EnergyMeter(toy, T=2) as meter:
        toy(torch.randn(2, 1, 4, 4))
    rows = {r.layer: r for r in meter.rows()}
    # conv1: 3*3 * 4*4 * 1*2 = 288 FLOPs, charged once as MACs: 288 * 4.6 = 1324.8 pJ
    assert rows["conv1"].flops == 288 and rows["conv1"].macs == 288 and rows["conv1"].sops == 0
    assert rows["conv1"].energy_pj == pytest.approx(1324.8, abs=0.01)
    # conv2: 1*1 * 4*4 * 2*3 = 96 FLOPs; SOPs = 0.25 * T(2) * 96 = 48 -> 43.2 pJ
    assert rows["conv2"].flops == 96 and rows["conv2"].rate == 0.25
    assert rows["conv2"].sops == pytest.approx(48) and rows["conv2"].energy_pj == pytest.approx(43.2, abs=0.01)
    # head: 3*2 = 6 FLOPs; SOPs = 0.5 * 2 * 6 = 6 -> 5.4 pJ
    assert rows["head"].sops == pytest.approx(6) and rows["head"].energy_pj == pytest.approx(5.4, abs=0.01)
    summary = meter.summary()
    assert summary["energy_pj"] == pytest.approx(1373.4, abs=0.01)
    assert summary["energy_mj"] == pytest.approx(1373.4e-9)
    assert summary["samples"] == 1


def test_constants_are_configurable_and_validated():
    toy = _Toy()
    with EnergyMeter(toy, T=2, constants=EnergyConstants(e_mac_pj=1.0, e_ac_pj=0.5), encoding_steps=2) as meter:
        toy(torch.randn(2, 1, 4, 4))
    assert meter.summary()["energy_pj"] == pytest.approx(2 * 288 * 1.0 + 0.5 * (48 + 6))
    with pytest.raises(ValueError, match="e_ac_pj"):
        EnergyConstants(e_ac_pj=-0.9)
    for steps in (0, 3):  # a T=2 model has one to two copies of the encoding conv to charge
        with pytest.raises(ValueError, match=f"encoding_steps {steps}: charge between 1 and T=2"):
            EnergyMeter(toy, T=2, encoding_steps=steps)


def test_dvs_first_layer_is_charged_as_accumulates():
    toy = _Toy()
    with EnergyMeter(toy, T=2, dvs_input=True) as meter:
        toy(torch.ones(2, 1, 4, 4) * 2)  # two events everywhere: rate 2
    first = meter.rows()[0]
    assert first.macs == 0 and first.sops == pytest.approx(2 * 2 * 288)


def test_event_frames_charged_as_macs_count_every_step():
    """Event frames differ at every step: as MACs, all T steps of the first layer are charged (it charged one, the
    static recipe's 'encoded once'); --encoding-steps, meant for a repeated image, is refused with events."""
    toy = _Toy()
    with EnergyMeter(toy, T=2, dvs_input=True, first_layer_as_mac=True) as meter:
        toy(torch.ones(2, 1, 4, 4))
    assert meter.rows()[0].macs == 2 * 288 and meter.summary()["encoding_steps"] == 2
    assert EnergyMeter(toy, T=2, dvs_input=True).summary()["encoding_steps"] == 1  # nothing charged as MACs
    with pytest.raises(ValueError, match="encoding_steps 2: .*event frames differ"):
        EnergyMeter(toy, T=2, dvs_input=True, encoding_steps=2)


def test_static_image_charged_as_accumulates_counts_non_zero_values():
    """--no-first-layer-as-mac on a normalised image: one accumulate per non-zero pixel, never a negative rate."""
    toy = _Toy()
    image = torch.zeros(2, 1, 4, 4)  # T=2 copies of 16 pixels: 8 at -1.5, 4 at 0.5, 20 zeros; mean -0.3125
    image.view(2, -1)[:, :4] = -1.5
    image.view(2, -1)[:, 4:6] = 0.5
    with EnergyMeter(toy, T=2, first_layer_as_mac=False) as meter:
        toy(image)
    first = meter.rows()[0]
    # 12 of 32 values are non-zero: rate 0.375; SOPs = 0.375 * T(2) * 288 FLOPs = 216 -> 216 * 0.9 = 194.4 pJ
    assert first.macs == 0 and first.rate == pytest.approx(0.375)
    assert first.sops == pytest.approx(216) and first.energy_pj == pytest.approx(194.4)


def test_event_counts_are_still_charged_by_count():
    """DVS input: a count of 3 is three accumulates (the documented recipe), zeros none."""
    toy = _Toy()
    events = torch.zeros(2, 1, 4, 4)
    events.view(2, -1)[:, :8] = 3.0  # mean count 1.5, non-zero fraction 0.5
    with EnergyMeter(toy, T=2, dvs_input=True) as meter:
        toy(events)
    assert meter.rows()[0].rate == pytest.approx(1.5) and meter.rows()[0].sops == pytest.approx(1.5 * 2 * 288)


@pytest.fixture(scope="module")
def fixture_model():
    fixture = load_fixture(FIXTURE_DIR / "sdt_A_lif_static.pt")
    net = build_seeded(fixture)
    net.load_state_dict(fixture["state_dict"])
    return net.eval(), fixture["input"]


def test_rates_come_from_real_layer_inputs(fixture_model, tmp_path):
    net, x = fixture_model
    with torch.no_grad(), EnergyMeter(net, T=net.T) as meter:
        _, hook = net(x, hook={})
    rows = {r.layer: r for r in meter.rows()}
    assert "block.0.attn.talking_heads" not in rows  # never runs
    # fc1_conv is fed directly by fc1_lif: same rate; proj_conv1 is fed by a max-pool of proj_lif's spikes in
    # "1111" stems only, here ("0011") it is fed directly too.
    assert rows["block.0.mlp.fc1_conv"].rate == pytest.approx(hook["MS_MLP_Conv0_fc1_lif"].mean().item())
    assert rows["head"].rate == pytest.approx(hook["head_lif"].mean().item())
    assert rows["patch_embed.rpe_conv"].rate == pytest.approx(hook["MS_SPS_lif3"].mean().item())
    write_energy_csv(meter.rows(), tmp_path / "energy.csv")
    assert len((tmp_path / "energy.csv").read_text().splitlines()) == 1 + len(rows)


def test_maxpool_between_lif_and_conv_is_respected():
    import timm

    net = timm.create_model("sdt_test", pooling_stat="1111", T=2).eval()
    with torch.no_grad(), EnergyMeter(net, T=2) as meter:
        _, hook = net(torch.randn(2, 3, 32, 32) * 4, hook={})
    rows = {r.layer: r for r in meter.rows()}
    pooled = torch.nn.functional.max_pool2d(hook["MS_SPS_lif"].flatten(0, 1), 3, 2, 1)
    assert rows["patch_embed.proj_conv1"].rate == pytest.approx(pooled.mean().item())
    assert rows["patch_embed.proj_conv1"].output_size == "16x16"


def test_agrees_with_spikingjelly_op_counter(fixture_model):
    net, x = fixture_model
    images = x.shape[0]
    with torch.no_grad(), EnergyMeter(net, T=net.T) as meter:
        net(x)
    ours = {r.layer: r for r in meter.rows()}
    sj = spikingjelly_counts(net, x)
    for name, row in ours.items():
        if name == "patch_embed.proj_conv":
            assert sj.macs[name] == row.macs * images  # the stem conv runs once per image (encode_once)
            with net.encoding_on_copies():  # the reference's T repeated copies: spikingjelly charges every step
                assert spikingjelly_counts(net, x).macs[name] == row.macs * images * net.T
            assert sj.synops[name] == 0
        elif row.kernel in ("1x1", "-"):
            assert sj.synops[name] == pytest.approx(row.sops * images, rel=1e-9), name
        else:  # 3x3 convs: exact weight uses with zero padding <= the recipe's average fan-out
            assert 0.8 * row.sops * images < sj.synops[name] <= row.sops * images, name
