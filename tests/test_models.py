"""Networks: shapes, heads by name, CAM identity, stems, weight loading with a report."""

import pytest
import torch

from ferlib.models import (
    HEADS,
    ForwardOutput,
    ModelConfig,
    available_heads,
    build_model,
    load_pretrained,
    validate_head,
)

HEAD_PARAMS = {
    "linear": {},
    "uncertainty": {"embedding": 16},
    "branches": {"branches": 3, "width": 32},
    "manet": {"width": 32},
    "dummy": {"dummies": 2},
}


def _net(head="linear", params=None, k=5, size=48, **kw):
    torch.manual_seed(0)
    cfg = ModelConfig(num_classes=k, input_size=size, head=head, head_params=params or {}, **kw)
    return build_model(cfg, verbose=False).eval()


@pytest.mark.parametrize("size,stem,side", [(48, "auto", 3), (112, "auto", 7), (224, "auto", 7), (48, "imagenet", 2)])
def test_feature_map_side(size, stem, side):
    model = build_model(ModelConfig(num_classes=6, input_size=size, stem=stem), verbose=False).eval()
    out = model.forward_all(torch.randn(2, 3, size, size))
    assert out.logits.shape == (2, 6)
    assert out.feature_map.shape[-2:] == (side, side)


def test_every_registered_head_is_tested():
    assert set(HEAD_PARAMS) == set(HEADS) == set(available_heads())


@pytest.mark.parametrize("head", sorted(HEAD_PARAMS))
def test_head_output_shapes(head):
    """Every head gives (B, K) logits and (B, C) pooled trunk features, which the detectors
    read, and forward() is forward_all().logits."""
    model = _net(head, HEAD_PARAMS[head])
    x = torch.randn(4, 3, 48, 48)
    with torch.no_grad():
        out = model.forward_all(x)
        plain = model(x)
    assert isinstance(out, ForwardOutput)
    assert out.logits.shape == (4, 5) and out.features.shape == (4, 512)
    assert out.feature_map.shape == (4, 512, 3, 3)
    torch.testing.assert_close(plain, out.logits)
    torch.testing.assert_close(out.features, out.feature_map.mean(dim=(2, 3)))
    expected_extras = {
        "linear": set(),
        "uncertainty": {"mu", "log_var", "uncertainty"},
        "branches": {"branch_logits", "spatial_attention", "channel_attention"},
        "manet": {"branch_logits", "branch_features", "spatial_attention", "channel_attention"},
        "dummy": {"dummy_logits"},
    }[head]
    assert set(out.extras) == expected_extras


def test_uncertainty_head_extras():
    """RUL interface: an embedding mu and a log-variance of the same shape (B, D), the
    uncertainty u = mean_d exp(log_var) > 0, logits = fc(mu), and gradients reach the
    log-variance branch through u."""
    model = _net("uncertainty", {"embedding": 16})
    out = model.forward_all(torch.randn(3, 3, 48, 48))
    assert out.extras["mu"].shape == out.extras["log_var"].shape == (3, 16)
    torch.testing.assert_close(out.extras["uncertainty"], torch.exp(out.extras["log_var"]).mean(dim=1))
    assert (out.extras["uncertainty"] > 0).all()
    torch.testing.assert_close(out.logits, model.head.fc(out.extras["mu"]))
    out.extras["uncertainty"].sum().backward()
    grad = model.head.log_var.linear.weight.grad
    assert grad is not None and grad.abs().sum() > 0
    assert model.head.mu.linear.weight.grad is None  # u does not depend on the mean branch


def test_uncertainty_cam_is_exact_with_trained_statistics():
    """The head pools before its Linear (not the paper's flatten), so in eval mode a CAM is
    exact even after BatchNorm learnt running statistics and affine parameters that are far
    from the identity (a wrong composition would show here, not at initialisation)."""
    model = _net("uncertainty", {"embedding": 8})
    model.train()
    with torch.no_grad():
        for _ in range(3):  # move the running statistics
            model.forward_all(torch.randn(6, 3, 48, 48) * 3 + 2)
        model.head.mu.norm.weight.uniform_(0.5, 2.0)
        model.head.mu.norm.bias.uniform_(-1.0, 1.0)
        model.head.fc.bias.uniform_(-1.0, 1.0)
    model.eval()
    assert model.head.mu.norm_map.running_var.sub(1).abs().max() > 0.1
    with torch.no_grad():
        out = model.forward_all(torch.randn(3, 3, 48, 48))
        cam = model.cam(out.feature_map)
    torch.testing.assert_close(cam.mean(dim=(2, 3)) + model.head.cam_bias(), out.logits, rtol=1e-4, atol=1e-4)
    # the paper's input-size tie is gone: another input size runs through the same head
    assert model.forward_all(torch.randn(2, 3, 64, 64)).logits.shape == (2, 5)


def test_branches_head_averages_branch_logits():
    model = _net("branches", {"branches": 3, "width": 32})
    assert len(model.head.branches) == 3
    with torch.no_grad():
        out = model.forward_all(torch.randn(2, 3, 48, 48))
    assert out.extras["branch_logits"].shape == (2, 3, 5)
    torch.testing.assert_close(out.logits, out.extras["branch_logits"].mean(dim=1))
    # the branches are distinct networks, not copies
    assert not torch.allclose(out.extras["branch_logits"][:, 0], out.extras["branch_logits"][:, 1])


def _bias(model):
    head = model.head
    if hasattr(head, "cam_bias"):  # uncertainty: BatchNorm and Linear before fc add to fc's bias
        return head.cam_bias()
    if hasattr(head, "fc"):
        return head.fc.bias
    return torch.stack([b.fc.bias for b in head.branches]).mean(0)


@pytest.mark.parametrize("head", sorted(HEAD_PARAMS))
def test_cam_pools_to_logits(head):
    """CAM is exact for a linear classifier on average-pooled features: mean over positions
    of M_k plus the bias equals the logit (for the branches head: averaged over branches)."""
    model = _net(head, HEAD_PARAMS[head])
    assert model.supports_cam
    with torch.no_grad():
        out = model.forward_all(torch.randn(3, 3, 48, 48))
        cam = model.cam(out.feature_map)
    assert cam.shape == (3, 5, 3, 3)
    torch.testing.assert_close(cam.mean(dim=(2, 3)) + _bias(model), out.logits, rtol=1e-4, atol=1e-4)


def test_unknown_head_names_the_choices():
    choices = r"\['branches', 'dummy', 'linear', 'manet', 'uncertainty'\]"
    with pytest.raises(ValueError, match=rf"head must be one of {choices}.*'cam'"):
        build_model(ModelConfig(head="cam"), verbose=False)
    with pytest.raises(ValueError, match="head must be one of"):
        validate_head("Linear")


def test_head_params_are_checked():
    accepted = "accepted: attention, branches, combine, reduction, spatial_kernel, width"
    with pytest.raises(ValueError, match=rf"'branches'.*'n_branches'.*{accepted}"):
        validate_head("branches", {"n_branches": 3})
    with pytest.raises(ValueError, match=r"'linear'.*'hidden'.*accepted: none"):
        build_model(ModelConfig(head="linear", head_params={"hidden": 3}), verbose=False)
    with pytest.raises(ValueError, match="branches must be an integer >= 1, got 0"):
        validate_head("branches", {"branches": 0})
    with pytest.raises(ValueError, match="embedding must be an integer >= 1"):
        validate_head("uncertainty", {"embedding": 2.5})
    with pytest.raises(ValueError, match=r"embedding_dropout must be in \[0, 1\)"):
        validate_head("uncertainty", {"embedding_dropout": 1.0})
    assert validate_head("uncertainty") == {"embedding": 64, "embedding_dropout": 0.4}
    assert validate_head("branches", {"width": 8}) == {
        "branches": 4,
        "width": 8,
        "attention": True,
        "reduction": 16,
        "spatial_kernel": 7,
        "combine": "mean",
    }
    assert validate_head("linear") == {}


def test_bad_config():
    with pytest.raises(ValueError, match="arch"):
        build_model(ModelConfig(arch="vgg"), verbose=False)
    with pytest.raises(ValueError, match="input_size"):
        build_model(ModelConfig(input_size=16), verbose=False)


def _torchvision_layout(state):
    """A kit state dict renamed as torchvision (and face-recognition checkpoints) name it."""
    out = {}
    for k, v in state.items():
        k = k.removeprefix("trunk.").removeprefix("head.")
        out[k.replace("stem.0.", "conv1.").replace("stem.1.", "bn1.")] = v
    return out


def test_load_pretrained_non_strict(tmp_path, capsys):
    """A face-recognition checkpoint (ImageNet stem, other classifier, 'module.' prefix)
    loads its trunk; mismatches are reported, not fatal."""
    donor = build_model(ModelConfig(num_classes=1000, input_size=224), verbose=False)
    state = {"state_dict": {"module." + k: v for k, v in _torchvision_layout(donor.state_dict()).items()}}
    path = tmp_path / "resnet18_msceleb.pth"
    torch.save(state, path)
    model = build_model(ModelConfig(num_classes=6, input_size=48, pretrained=str(path)))
    torch.testing.assert_close(model.trunk.layer3[0].conv1.weight, donor.trunk.layer3[0].conv1.weight)
    printed = capsys.readouterr().out
    assert "mismatched" in printed and "head.fc.weight" in printed and "trunk.stem.0.weight" in printed


@pytest.mark.parametrize("head", ["uncertainty", "branches"])
def test_pretrained_trunk_under_any_head(tmp_path, head):
    donor = build_model(ModelConfig(num_classes=6), verbose=False)
    path = tmp_path / "w.pth"
    torch.save(_torchvision_layout(donor.state_dict()), path)
    model = build_model(ModelConfig(num_classes=6, head=head, pretrained=str(path)), verbose=False)
    torch.testing.assert_close(model.trunk.layer4[1].conv2.weight, donor.trunk.layer4[1].conv2.weight)


def test_checkpoint_from_before_the_trunk_head_split_loads():
    """A stage 01 best.pt written by the flat FERNet (keys stem.*, layerN.*, fc.*) still
    loads strictly into today's trunk/head network, so stage 02 can read old runs."""
    old = _net()
    flat = {k.removeprefix("trunk.").removeprefix("head."): v for k, v in old.state_dict().items()}
    assert "fc.weight" in flat and "stem.0.weight" in flat
    new = _net(k=5)
    torch.nn.init.zeros_(new.head.fc.weight)
    new.load_state_dict(flat)
    torch.testing.assert_close(new.head.fc.weight, old.head.fc.weight)
    x = torch.randn(2, 3, 48, 48)
    with torch.no_grad():
        torch.testing.assert_close(new(x), old(x))


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


def test_seeded_initialisation_is_unchanged_by_the_head_split():
    """Under one seed the network draws its initial weights in the same order as a plain
    torchvision ResNet with the small stem and a linear classifier (the flat FERNet of
    before), and checking head parameters draws nothing: seeded runs reproduce."""
    from torchvision.models import resnet18

    torch.manual_seed(3)
    validate_head("branches", {"branches": 2})
    model = build_model(ModelConfig(num_classes=4, input_size=48), verbose=False)
    torch.manual_seed(3)
    ref = resnet18(weights=None)
    conv1 = torch.nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
    fc = torch.nn.Linear(512, 4)
    torch.testing.assert_close(model.trunk.stem[0].weight, conv1.weight)
    torch.testing.assert_close(model.trunk.layer2[0].conv1.weight, ref.layer2[0].conv1.weight)
    torch.testing.assert_close(model.head.fc.weight, fc.weight)
