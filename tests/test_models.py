"""Backbones: shapes, CAM identity, stems, non-strict weight loading with a report."""

import pytest
import torch

from ferlib.models import ModelConfig, build_model, load_pretrained


@pytest.mark.parametrize("size,stem,side", [(48, "auto", 3), (112, "auto", 7), (224, "auto", 7), (48, "imagenet", 2)])
def test_feature_map_side(size, stem, side):
    model = build_model(ModelConfig(num_classes=6, input_size=size, stem=stem), verbose=False).eval()
    out = model.forward_all(torch.randn(2, 3, size, size))
    assert out.logits.shape == (2, 6)
    assert out.feature_map.shape[-2:] == (side, side)


def test_cam_pools_to_logits():
    """CAM is exact for a linear head on average-pooled features: mean over positions of
    M_k plus the bias equals the logit."""
    model = build_model(ModelConfig(num_classes=5, input_size=48), verbose=False).eval()
    with torch.no_grad():
        out = model.forward_all(torch.randn(3, 3, 48, 48))
        cam = model.cam(out.feature_map)
    torch.testing.assert_close(cam.mean(dim=(2, 3)) + model.fc.bias, out.logits, rtol=1e-4, atol=1e-4)


def test_bad_config():
    with pytest.raises(ValueError, match="arch"):
        build_model(ModelConfig(arch="vgg"), verbose=False)
    with pytest.raises(ValueError, match="input_size"):
        build_model(ModelConfig(input_size=16), verbose=False)


def test_load_pretrained_non_strict(tmp_path, capsys):
    """A face-recognition checkpoint (ImageNet stem, other classifier, 'module.' prefix)
    loads its trunk; mismatches are reported, not fatal."""
    donor = build_model(ModelConfig(num_classes=1000, input_size=224), verbose=False)
    state = {"state_dict": {"module." + k.replace("stem.0.", "conv1.").replace("stem.1.", "bn1."): v
                            for k, v in donor.state_dict().items()}}
    path = tmp_path / "resnet18_msceleb.pth"
    torch.save(state, path)
    model = build_model(ModelConfig(num_classes=6, input_size=48, pretrained=str(path)))
    torch.testing.assert_close(model.layer3[0].conv1.weight, donor.layer3[0].conv1.weight)
    printed = capsys.readouterr().out
    assert "mismatched" in printed and "fc.weight" in printed and "stem.0.weight" in printed


def test_load_pretrained_errors(tmp_path):
    model = build_model(ModelConfig(num_classes=6), verbose=False)
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        load_pretrained(model, tmp_path / "missing.pth")
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="bad.pth"):
        load_pretrained(model, bad)
    other = tmp_path / "other.pth"
    torch.save({"foo.weight": torch.zeros(3)}, other)
    with pytest.raises(ValueError, match="no tensor matches"):
        load_pretrained(model, other)
