"""hw.config presets and strict loading; mapping limits; the energy table covers every action."""
from __future__ import annotations

import re

import pytest

from engine.traces import TraceReader
from hw.config import CONFIG_DIR, HwInputError, load_config, load_feature_overrides
from hw.counts import ACTIONS
from hw.energy import ACTION_ENERGY, COMPONENTS
from hw.mapping import build_mapping
from hw_helpers import tiny_capture, write

PRESETS = ("aster_default", "spikesim65", "neurosim22", "dense_pim", "prior_pim", "sop45")


@pytest.mark.parametrize("name", PRESETS)
def test_presets_load_and_every_constant_has_a_source(name):
    config = load_config(name)
    assert config.name == name and len(config.hash) == 16
    for line in (CONFIG_DIR / f"{name}.yaml").read_text().splitlines():
        if re.match(r"^\s+\w+: -?[0-9.]+\s*(#.*)?$", line):
            assert "#" in line, f"{name}.yaml: constant without a source comment: {line.strip()}"


def test_baselines_switch_only_features():
    dense, aster = load_config("dense_pim"), load_config("aster_default")
    assert dense.energy == aster.energy and dense.crossbar == aster.crossbar
    assert not any(v for k, v in load_feature_overrides("dense_pim").items() if isinstance(v, bool))
    assert load_feature_overrides("prior_pim")["attention_unit"] == "crossbar"


def _preset(tmp_path, text: str):
    path = tmp_path / "p.yaml"
    path.write_text(f"base: {CONFIG_DIR / 'aster_default.yaml'}\nname: test\n{text}")
    return path


@pytest.mark.parametrize("text,message", [
    ("energy:\n  adcc: 1.0\n", "unknown key 'energy.adcc'"),
    ("energy:\n  adc: -0.5\n", "field 'energy.adc' is -0.5"),
    ("energy:\n  adc: lots\n", "field 'energy.adc' is 'lots'"),
    ("features:\n  spike_encoding: morse\n", "field 'features.spike_encoding'"),
    ("crossbar:\n  rows: 12.5\n", "field 'crossbar.rows'"),
    ("chip: 3\n", "field 'chip' must be a mapping"),
    ("crossbar:\n  rows: 0\n", "field 'crossbar.rows' is 0; it must be a positive integer"),
    ("crossbar:\n  cell_bits: 0\n", "field 'crossbar.cell_bits' is 0; it must be a positive integer"),
    ("crossbar:\n  mux: 0\n", "field 'crossbar.mux' is 0; it must be a positive integer"),
    ("chip:\n  subarrays_per_tile: 0\n", "field 'chip.subarrays_per_tile' is 0"),
    ("chip:\n  clock_ghz: 0\n", "field 'chip.clock_ghz' is 0; it must be a positive finite number"),
    ("chip:\n  attention_lanes: 0\n", "field 'chip.attention_lanes' is 0"),
    ("chip:\n  global_buffer_bits_per_cycle: 0\n", "field 'chip.global_buffer_bits_per_cycle' is 0"),
    ("energy:\n  adc: .inf\n", "field 'energy.adc' is inf; it must be a non-negative finite number"),
    ("energy:\n  adc: .nan\n", "field 'energy.adc' is nan"),
    ("energy:\n  adc: '1e999'\n", "field 'energy.adc' is '1e999'"),
    ("gpu:\n  efficiency: 5\n", "field 'gpu.efficiency' is 5; it must be a positive finite number at most 1"),
])
def test_bad_preset_names_file_and_field(tmp_path, text, message):
    path = _preset(tmp_path, text)
    with pytest.raises(HwInputError, match=re.escape(message)) as info:
        load_config(path)
    assert str(path) in str(info.value)


def test_zero_energies_and_numeric_strings_load(tmp_path):
    """Energies and optional costs may be 0; YAML 1.1 reads 16e-3 (no dot) as a string, taken as the number."""
    config = load_config(_preset(tmp_path, "energy:\n  adc: 0\n  cell_read: 16e-3\ntiming:\n  conversion_ns: 0\n"))
    assert (config.energy.adc, config.energy.cell_read, config.timing.conversion_ns) == (0.0, 0.016, 0.0)
    assert isinstance(config.energy.cell_read, float)


def test_missing_constant_names_the_field(tmp_path):
    text = (CONFIG_DIR / "aster_default.yaml").read_text()
    path = tmp_path / "full.yaml"
    path.write_text("\n".join(line for line in text.splitlines() if not line.strip().startswith("mux:")))
    with pytest.raises(HwInputError, match=r"missing field 'crossbar.mux'"):
        load_config(path)


def test_model_larger_than_the_chip(tmp_path):
    capture, config = tiny_capture()
    reader = TraceReader(write(tmp_path / "t", [capture], config))
    small = load_config(_preset(tmp_path, "chip:\n  max_tiles: 3\n"))
    with pytest.raises(HwInputError, match=r"field 'chip.max_tiles' is 3, but the model in .*meta.json needs"):
        build_mapping(reader.meta, small, meta_path=str(reader.dir / "meta.json"))


def test_energy_table_covers_every_action():
    assert set(ACTION_ENERGY) == set(ACTIONS)
    assert {c for pairs in ACTION_ENERGY.values() for c, _ in pairs} | {"leakage"} == set(COMPONENTS)


def test_a_bare_name_is_a_preset_of_hw_config_before_a_path(tmp_path, monkeypatch):
    """A bare name was looked up in the working directory first: a folder or file named like a preset hid it."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "aster_default").mkdir()
    (tmp_path / "prior_pim").write_text("not a preset")
    assert load_config("aster_default").source == str(CONFIG_DIR / "aster_default.yaml")
    assert load_feature_overrides("prior_pim")["attention_unit"] == "crossbar"
    (tmp_path / "mine").write_text(f"base: {CONFIG_DIR / 'aster_default.yaml'}\nname: mine\n")
    assert load_config("mine").name == "mine"  # no such preset in hw/config/: the path
    with pytest.raises(HwInputError, match="aster_default: cannot read a preset"):
        load_config("./aster_default")  # a path, not a bare name


def test_a_preset_that_is_not_utf8_text_names_the_file(tmp_path):
    """A binary file (or a Latin-1 comment) given as a preset was a UnicodeDecodeError without the file's name."""
    path = tmp_path / "chip.yml"
    path.write_bytes("# r\xe9glage\nenergy:\n  adc: 1.0\n".encode("latin-1"))
    with pytest.raises(HwInputError, match=re.escape(f"{path}: not YAML text (not UTF-8); give a preset")):
        load_config(path)
