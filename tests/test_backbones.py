"""The small-face backbone: shapes, CAM, and that it learns the synthetic faces."""

import numpy as np
import pytest
import torch

from ferlib.data.augment import AugmentConfig
from ferlib.data.synthetic import SyntheticConfig, generate_images
from ferlib.models import TRUNKS, ModelConfig, build_model
from ferlib.params import ParameterError, validate_arguments
from ferlib.stages import train_close_set
from ferlib.train import TensorData, TrainConfig, fit, predict


@pytest.mark.parametrize("size, side", [(40, 5), (48, 6), (64, 8)])
def test_smallface_feature_map_side(size, side):
    model = build_model(ModelConfig("smallface", num_classes=7, input_size=size), verbose=False)
    out = model.forward_all(torch.rand(2, 3, size, size))
    assert out.feature_map.shape == (2, model.num_features, side, side)
    assert out.logits.shape == (2, 7) and out.features.shape == (2, model.num_features)


def test_smallface_cam_maps_pool_to_logits():
    model = build_model(ModelConfig("smallface", num_classes=7, input_size=48), verbose=False).eval()
    out = model.forward_all(torch.rand(3, 3, 48, 48))
    cams = model.cam(out.feature_map)
    assert cams.shape == (3, 7, 6, 6)  # room for the flip-consistency loss
    torch.testing.assert_close(cams.mean(dim=(2, 3)) + model.head.fc.bias, out.logits)


def test_smallface_is_a_registered_arch_and_smaller_than_resnet18():
    assert "smallface" in TRUNKS
    validate_arguments(train_close_set, {"arch": "smallface"})
    with pytest.raises(ParameterError, match="smallface"):
        validate_arguments(train_close_set, {"arch": "vgg"})
    small = build_model(ModelConfig("smallface"), verbose=False)
    big = build_model(ModelConfig("resnet18"), verbose=False)
    assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in big.parameters()) / 5


def _synthetic(split: str, data: dict) -> TensorData:
    images, labels = data[split]
    classes = np.unique(data["train"][1])
    targets = np.searchsorted(classes, labels)
    x = torch.from_numpy(images)[:, None].expand(-1, 3, -1, -1).contiguous()
    return TensorData(x, torch.from_numpy(targets))


def test_smallface_learns_the_synthetic_faces():
    """A few hundred 48-px synthetic faces, a few epochs: clearly above chance (1/7)."""
    data = generate_images(SyntheticConfig(n_train=420, n_valid=70, n_test=140, seed=1))
    train, test = _synthetic("train", data), _synthetic("test", data)
    torch.manual_seed(0)
    model = build_model(ModelConfig("smallface", num_classes=7, input_size=48), verbose=False)
    cfg = TrainConfig(
        epochs=6,
        batch_size=32,
        optimizer="sgd",
        lr=0.05,
        weight_decay=5e-4,
        schedule="onecycle",
        warmup_epochs=0.5,
        augment=AugmentConfig(),
        progress=False,
    )
    fit(model, train, None, cfg)
    acc = (predict(model, test.images, progress=False).logits.argmax(1) == test.targets).float().mean().item()
    assert acc > 0.3, acc  # chance is 1/7; the seeded run gives .43


def test_smallface_wide_keeps_the_map_and_doubles_the_width():
    narrow = build_model(ModelConfig("smallface", num_classes=7, input_size=48), verbose=False)
    wide = build_model(ModelConfig("smallface_wide", num_classes=7, input_size=48), verbose=False)
    out = wide.forward_all(torch.rand(2, 3, 48, 48))
    assert out.feature_map.shape == (2, 2 * narrow.num_features, 6, 6)
    assert wide.cam(out.feature_map).shape == (2, 7, 6, 6)
    validate_arguments(train_close_set, {"arch": "smallface_wide"})


def test_smallface_deep_keeps_the_map_and_adds_one_conv_to_the_coarse_blocks():
    narrow = build_model(ModelConfig("smallface", num_classes=7, input_size=48), verbose=False)
    deep = build_model(ModelConfig("smallface_deep", num_classes=7, input_size=48), verbose=False)
    out = deep.forward_all(torch.rand(2, 3, 48, 48))
    assert out.feature_map.shape == (2, narrow.num_features, 6, 6)
    assert deep.cam(out.feature_map).shape == (2, 7, 6, 6)

    def convs(model):
        return sum(isinstance(m, torch.nn.Conv2d) for m in model.modules())

    assert convs(deep) == convs(narrow) + 2
    validate_arguments(train_close_set, {"arch": "smallface_deep"})
