"""Supplemental clips: clean machine sound vs noise only, from names or config, and the report."""

from __future__ import annotations

import logging

import numpy as np
import pytest

from monitor.errors import ConfigError
from training.data import discover, supplemental_kind
from training.recipes.base import MachineArrays
from training.supplemental import (
    clip_kinds,
    overall_kind,
    plan_supplemental,
    stated_kind,
)
from training.synth import generate_dataset


def test_clip_kinds_from_dcase_2025_names():
    names = [
        "section_00_machine_source_0000_noAttribute.wav",  # published DCASE 2025 form
        "section_00_machine_0001_.wav",  # baseline README form
        "section_00_source_supplemental_clean_0000.wav",
        "section_00_noise_supplemental_normal_0003.wav",
        "section_00_noise_target_0002_noise_babble.wav",
        "section_00_source_train_normal_0001_speed_1450.wav",  # a train clip: no kind
        "recording_17.wav",  # not a DCASE name
    ]
    assert clip_kinds(names) == ["clean", "clean", "clean", "noise", "noise", None, None]


def test_overall_kind():
    assert overall_kind(["clean", "clean", None]) == "clean"
    assert overall_kind(["noise"]) == "noise"
    assert overall_kind(["clean", "noise"]) == "mixed"
    assert overall_kind([None, None]) is None


def test_stated_kind_global_per_machine_and_bad_values():
    assert stated_kind("noise", "fan") == "noise"
    assert stated_kind({"fan": "clean"}, "fan") == "clean"
    assert stated_kind({"fan": "clean"}, "pump") is None
    assert stated_kind(None, "fan") is None
    with pytest.raises(ConfigError, match="'fan'.*'dirty'"):
        stated_kind({"fan": "dirty"}, "fan")
    with pytest.raises(ConfigError, match="'both'"):
        stated_kind("both", "fan")


def _arrays(kind, kinds=None, n=4) -> MachineArrays:
    waves = np.arange(6 * 10, dtype=np.float32).reshape(6, 10)
    supp = np.arange(n * 10, dtype=np.float32).reshape(n, 10) + 1000
    return MachineArrays("fan", waves, ["source"] * 6, supp, kind, kinds)


def test_plan_clean_machine():
    use = plan_supplemental(_arrays("clean"))
    assert use.noise is None and use.clean is not None and len(use.clean) == 4
    assert use.describe() == {
        "kind": "clean",
        "kind_from": "names",
        "clean_clips": 4,
        "noise_clips": 0,
    }
    assert "4 clean clip(s)" in use.summary()


def test_plan_noise_machine():
    use = plan_supplemental(_arrays("noise"))
    assert use.clean is None and len(use.noise) == 4
    assert "4 noise-only clip(s) as background noise" in use.summary()


def test_config_overrides_the_names():
    use = plan_supplemental(_arrays("noise"), {"fan": "clean"})
    assert use.kind == "clean" and use.source == "config" and len(use.clean) == 4


def test_mixed_folder_is_sorted_clip_by_clip():
    use = plan_supplemental(_arrays("mixed", ["clean", "noise", None, "noise"]))
    assert use.kind == "mixed"
    np.testing.assert_array_equal(use.clean[:, 0], [1000.0])
    np.testing.assert_array_equal(use.noise[:, 0], [1010.0, 1030.0])


def test_unknown_kind_uses_nothing_and_says_so(caplog):
    with caplog.at_level(logging.WARNING):
        use = plan_supplemental(_arrays(None))
    assert use.clean is None and use.noise is None and use.source == "none"
    assert "supplemental_kind clean|noise" in caplog.text
    assert "no supplemental clips used" in use.summary()


def test_no_supplemental_clips():
    data = MachineArrays("fan", np.zeros((3, 10), np.float32), [None] * 3)
    use = plan_supplemental(data)
    assert use.describe()["clean_clips"] == 0 and use.describe()["noise_clips"] == 0


def test_synthetic_data_set_kinds_are_detected(tmp_path):
    generate_dataset(
        tmp_path,
        machines=("fan", "pump"),
        n_train_source=1,
        n_train_target=1,
        n_test_per_group=1,
        n_supplemental=2,
        seconds=0.2,
        seed=0,
    )
    found = discover(tmp_path)
    assert supplemental_kind(found["fan"].supplemental) == "clean"
    assert supplemental_kind(found["pump"].supplemental) == "noise"
    assert clip_kinds([c.path for c in found["pump"].supplemental]) == ["noise", "noise"]
