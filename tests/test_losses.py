"""Objectives by name: registry, validation, config() for result keys, the CAM-flip formula,
and no import circle with the training loop."""

import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from ferlib.losses import (
    OBJECTIVES,
    CamFlipConsistency,
    CrossEntropy,
    available_objectives,
    make_objective,
    objective_config,
    validate_objective,
)
from ferlib.models import ModelConfig, build_model


def test_registry_and_configs():
    assert available_objectives() == ("cam_flip", "ce", "ensemble", "proser", "rul")
    assert set(OBJECTIVES) == {"ce", "cam_flip", "ensemble", "proser", "rul"}
    assert isinstance(make_objective("ce"), CrossEntropy)
    assert make_objective("cam_flip", lam=0.5).config() == {"name": "cam_flip", "lam": 0.5}
    assert validate_objective("cam_flip") == {"name": "cam_flip", "lam": 5.0}  # defaults filled in
    assert validate_objective("ce", None) == {"name": "ce"}


def test_bad_names_and_parameters_name_the_choices():
    with pytest.raises(
        ValueError, match=r"objective must be one of \['cam_flip', 'ce', 'ensemble', 'proser', 'rul'\], got 'CE'"
    ):
        make_objective("CE")
    with pytest.raises(ValueError, match=r"'cam_flip' has no parameter 'lambda'; objective_params accepted: lam"):
        validate_objective("cam_flip", {"lambda": 1.0})
    with pytest.raises(ValueError, match=r"'ce' has no parameter 'lam'.*accepted: none"):
        validate_objective("ce", {"lam": 1.0})
    for bad in (-1.0, float("nan"), "5", True):
        with pytest.raises(ValueError, match="lam must be a finite number >= 0"):
            validate_objective("cam_flip", {"lam": bad})


def test_cam_flip_is_ce_plus_lam_times_consistency():
    """lam=0 is cross-entropy; the loss is linear in lam (CE + lam * MSE of flipped CAMs)."""
    torch.manual_seed(0)
    model = build_model(ModelConfig(num_classes=3, input_size=32), verbose=False).eval()
    x, y = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 0])
    with torch.no_grad():
        loss = {lam: CamFlipConsistency(lam)(model, x, y, torch.arange(4))[0] for lam in (0.0, 1.0, 2.0)}
        ce, _ = CrossEntropy()(model, x, y, torch.arange(4))
        out = model.forward_all(torch.cat([x, torch.flip(x, dims=[3])]))
        cams = model.cam(out.feature_map)
        mse = F.mse_loss(cams[:4], torch.flip(cams[4:], dims=[-1]))
    torch.testing.assert_close(loss[0.0], ce)
    torch.testing.assert_close(loss[1.0], ce + mse, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(loss[2.0] - loss[0.0], 2 * (loss[1.0] - loss[0.0]), rtol=1e-4, atol=1e-5)
    assert mse > 0


def test_config_of_an_ad_hoc_objective():
    class Weighted:
        def __init__(self):
            self.weight = 3.0

        def __call__(self, model, x, y, index):
            raise NotImplementedError

    config = objective_config(Weighted())
    assert config["name"].endswith("Weighted") and config["weight"] == 3.0


def test_losses_do_not_import_the_training_loop():
    """The old ferlib.losses imported CrossEntropy from ferlib.train (a circle once train
    defaults to a loss): the losses package must load without the loop."""
    code = "import sys, ferlib.losses; assert 'ferlib.train' not in sys.modules, 'ferlib.train imported'"
    subprocess.run([sys.executable, "-c", code], check=True)
