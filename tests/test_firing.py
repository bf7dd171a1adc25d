"""Firing-rate accumulation for any T, exact over all samples, and the reference log block round trip."""
import json
import logging

import pytest
import timm
import torch

import model  # noqa: F401
from engine.firing import FiringRateMeter, load_firing_rates, parse_firing_log
from reference_fixtures import FIXTURE_DIR, build_seeded, load_fixture

REFERENCE_LOG_FORMAT = "%(asctime)s %(levelname)s: %(message)s"  # SDT's valid logger


def _random_hooks(T, batch, generator):
    return {
        "MS_SPS_lif": (torch.rand(T, batch, 4, 8, 8, generator=generator) < 0.3).float(),
        "MS_SSA_Conv0_after_qkv": torch.randint(0, 3, (T, batch, 8, 4, 4), generator=generator).float(),
        "head_lif": (torch.rand(T, batch, 16, generator=generator) < 0.1).float(),
    }


@pytest.mark.parametrize("T", [6, 16])
def test_rates_per_step_equal_direct_computation_with_short_last_batch(T):
    generator = torch.Generator().manual_seed(T)
    batches = [_random_hooks(T, b, generator) for b in (5, 5, 2)]
    meter = FiringRateMeter()
    for hook in batches:
        meter.update(hook)
    assert meter.samples == 12 and meter.time_steps == T
    rates, nonzero = meter.firing_rate(), meter.non_zero()
    assert list(rates) == [f"t{t}" for t in range(T)]
    for key in batches[0]:
        whole = torch.cat([h[key] for h in batches], dim=1)  # every sample once
        for t in range(T):
            assert rates[f"t{t}"][key] == pytest.approx(whole[t].double().mean().item(), abs=1e-12)
            expected_nz = torch.count_nonzero(whole[t]).item() / whole[t].numel()
            assert nonzero[f"t{t}"][key] == pytest.approx(expected_nz, abs=1e-12)
    # the non-binary tensor is where the two measures differ
    assert rates["t0"]["MS_SSA_Conv0_after_qkv"] > nonzero["t0"]["MS_SSA_Conv0_after_qkv"]


def test_model_rates_match_reference_fixture():
    fixture = load_fixture(FIXTURE_DIR / "statten_C_statten_dvs_chunk4.pt")  # T=8, non-binary after_qkv
    net = build_seeded(fixture)
    net.load_state_dict(fixture["state_dict"])
    net.eval()
    meter = FiringRateMeter()
    x = fixture["input"].float()
    with torch.no_grad():
        for sample in x.split(1):  # batch 1 twice == the fixture's one batch of 2
            meter.update(net(sample, hook={})[1])
    for name, table in (("firing_rate", meter.firing_rate()), ("non_zero_rate", meter.non_zero())):
        for t, per_key in fixture[name].items():
            for key, value in per_key.items():
                assert table[t][key] == pytest.approx(value, abs=1e-6), (name, t, key)


def _write_reference_log(meter, path):
    logger = logging.getLogger(f"valid-{path.name}")
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter(REFERENCE_LOG_FORMAT))
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    logger.info("Test: [  10/10]  Acc@1: 90.0000 (91.0000)")
    meter.log_reference_block(logger)
    handler.close()
    logger.removeHandler(handler)


def test_log_block_parses_back_exactly(tmp_path):
    meter = FiringRateMeter()
    meter.update(_random_hooks(5, 3, torch.Generator().manual_seed(0)))
    log = tmp_path / "sdt.log"
    _write_reference_log(meter, log)
    text = log.read_text()
    assert " INFO: firing_rate: \n" in text and " INFO: non_zero: \n" in text
    assert parse_firing_log(log) == meter.firing_rate()
    assert load_firing_rates(log) == meter.firing_rate()


def test_hand_written_reference_log(tmp_path):
    log = tmp_path / "sdt.log"
    log.write_text(
        "2024-01-01 10:00:00,000 INFO: non_zero: \n"
        '2024-01-01 10:00:00,001 INFO: {\n    "t0": {\n        "MS_SSA_Conv0_x_after_qkv": 0.5\n    }\n}\n'
        "2024-01-01 10:00:00,002 INFO: firing_rate: \n"
        '2024-01-01 10:00:00,003 INFO: {\n    "t0": {\n        "MS_SSA_Conv0_x_after_qkv": 0.001\n    },\n'
        '    "t1": {\n        "MS_SSA_Conv0_x_after_qkv": 0.003\n    }\n}\n\n'
        "2024-01-01 10:00:01,000 INFO: done\n")
    assert parse_firing_log(log) == {"t0": {"MS_SSA_Conv0_x_after_qkv": 0.001},
                                     "t1": {"MS_SSA_Conv0_x_after_qkv": 0.003}}


@pytest.mark.parametrize("content, message", [
    ("2024 INFO: top-1: 90\n", "no 'firing_rate: ' block"),
    ("2024 INFO: firing_rate: \n2024 INFO: {\n  \"t0\": {\n", "does not parse"),
])
def test_bad_logs_raise_naming_the_file(tmp_path, content, message):
    log = tmp_path / "broken.log"
    log.write_text(content)
    with pytest.raises(ValueError, match=message) as err:
        parse_firing_log(log)
    assert "broken.log" in str(err.value)


def test_missing_rate_file_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="firing_num.py"):
        load_firing_rates(tmp_path / "nope.json")


def test_write_outputs(tmp_path):
    net = timm.create_model("sdt_test", T=3).eval()
    meter = FiringRateMeter()
    with torch.no_grad():
        meter.update(net(torch.randn(4, 3, 32, 32), hook={})[1])
    content = meter.write(tmp_path)
    assert json.loads((tmp_path / "firing.json").read_text()) == content
    assert load_firing_rates(tmp_path / "firing.json") == meter.firing_rate()
    lines = (tmp_path / "firing.csv").read_text().splitlines()
    assert lines[0] == "key,t,firing_rate,non_zero"
    assert len(lines) == 1 + 3 * len(meter.keys)
    assert (tmp_path / "firing.png").stat().st_size > 1000
    assert not list(tmp_path.glob(".*tmp*"))


def test_failed_plot_leaves_no_open_figure(tmp_path, monkeypatch):
    """A plot that cannot be saved raises and leaves no figure in pyplot's registry (one leaked per call before)."""
    import matplotlib.pyplot as plt

    import engine.firing

    def refuse(path, mode):
        raise OSError(28, "No space left on device", str(path))

    plt.close("all")
    monkeypatch.setattr(engine.firing, "atomic_open", refuse)
    with pytest.raises(OSError, match="No space"):
        engine.firing.plot_firing_rates({"t0": {"a": 0.5}}, ["a"], tmp_path / "firing.png")
    assert plt.get_fignums() == []
    assert not (tmp_path / "firing.png").exists()
