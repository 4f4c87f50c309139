"""Detector presets (ferlib/openset/presets.py): a data set's chosen settings as one argument,
the user's own parameters laid over them (stage 03 with a preset: tests/openset/test_openset_stage.py)."""

import pytest

from ferlib.openset.presets import DETECTOR_PRESETS, available_presets, preset_params
from ferlib.openset.registry import validate_detectors


@pytest.mark.parametrize("name", available_presets())
def test_every_preset_is_valid_for_its_detectors(name):
    # every detector and key exists and every value passes the detector's own checks
    validate_detectors(["msp"], DETECTOR_PRESETS[name])


def test_user_parameters_are_laid_over_the_preset_key_by_key():
    merged = preset_params("ferplus", {"pseudo_oe": {"rounds": 1}, "tknn": {"k": 7}})
    expected = {**DETECTOR_PRESETS["ferplus"]["pseudo_oe"], "rounds": 1}
    assert merged["pseudo_oe"] == expected  # the other preset keys kept
    assert merged["tknn"] == {"k": 7}  # a detector the preset does not name
    assert DETECTOR_PRESETS["ferplus"]["pseudo_oe"]["rounds"] != 1  # the table is not changed
    merged["pseudo_oe"]["first_params"]["k"] = -1
    assert DETECTOR_PRESETS["ferplus"]["pseudo_oe"]["first_params"]["k"] != -1  # a deep copy


def test_no_preset_returns_the_parameters_as_given():
    assert preset_params(None) is None
    assert preset_params(None, {"tknn": {"k": 3}}) == {"tknn": {"k": 3}}


def test_unknown_preset_names_the_choices():
    with pytest.raises(ValueError, match="unknown detector_preset 'rafdb'.*ferplus"):
        preset_params("rafdb")


def test_frozen_presets_are_unchanged():
    """A frozen preset (confirmed once on fresh seeds) never changes: a new idea is a new name."""
    from ferlib.digest import json_digest
    from ferlib.openset.presets import DETECTOR_PRESETS, FROZEN_PRESETS

    assert "ferplus" in FROZEN_PRESETS
    for name, digest in FROZEN_PRESETS.items():
        assert json_digest(DETECTOR_PRESETS[name]) == digest, f"preset {name!r} is frozen; add a new preset instead"
