"""Diversified ensembles: CBAM, ESR branches with attention, MA-Net's patch split, their exact
CAMs, the ``ensemble`` objective, its progressive (ESR) schedule through ``fit``, and tiny
trainings that learn."""

import pytest
import torch
import torch.nn.functional as F

from ferlib.losses import EnsembleObjective, dpp_diversity, make_objective, validate_objective
from ferlib.models import CBAM, ModelConfig, build_model, validate_head
from ferlib.models.manet import quadrant_slices
from ferlib.train import TensorData, TrainConfig, fit, predict


def _net(head, params=None, arch="smallface", size=32, k=3):
    torch.manual_seed(0)
    cfg = ModelConfig(arch=arch, num_classes=k, input_size=size, head=head, head_params=params or {})
    return build_model(cfg, verbose=False)


def _toy(n=96, seed=0, size=32):
    """Three classes that differ by brightness: learnable in a few epochs."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 3
    base = torch.tensor([50, 128, 205])[y][:, None, None, None]
    x = (base + torch.randint(-25, 25, (n, 3, size, size), generator=g)).clamp(0, 255).to(torch.uint8)
    return TensorData(x, y)


FAST = dict(batch_size=16, lr=5e-3, progress=False, augment=None, channels_last=False)


# ---------------------------------------------------------------- CBAM and the heads


def test_cbam_returns_its_attention_and_applies_it():
    torch.manual_seed(0)
    cbam = CBAM(32, reduction=8)
    x = torch.randn(2, 32, 5, 6)
    refined, channel, spatial = cbam(x)
    assert refined.shape == x.shape and channel.shape == (2, 32) and spatial.shape == (2, 5, 6)
    assert ((channel > 0) & (channel < 1)).all() and ((spatial > 0) & (spatial < 1)).all()
    torch.testing.assert_close(refined, x * channel[:, :, None, None] * spatial[:, None])
    with pytest.raises(ValueError, match="odd"):
        CBAM(8, kernel_size=4)


def test_branches_head_with_attention_shapes():
    model = _net("branches", {"branches": 3, "width": 16}).eval()
    with torch.no_grad():
        out = model.forward_all(torch.randn(2, 3, 32, 32))
    assert out.feature_map.shape[-2:] == (4, 4)
    assert out.extras["branch_logits"].shape == (2, 3, 3)
    assert out.extras["spatial_attention"].shape == (2, 3, 4, 4)
    assert out.extras["channel_attention"].shape == (2, 3, 16)
    torch.testing.assert_close(out.logits, out.extras["branch_logits"].mean(dim=1))


def test_branches_without_attention_is_the_plain_head():
    """attention=False: no CBAM modules (the state-dict keys of before) and no attention extras."""
    model = _net("branches", {"branches": 2, "width": 16, "attention": False}).eval()
    assert not any("cbam" in k for k in model.state_dict())
    with torch.no_grad():
        out = model.forward_all(torch.randn(2, 3, 32, 32))
    assert set(out.extras) == {"branch_logits"}


def test_head_parameters_are_validated():
    assert validate_head("branches", {"width": 8}) == {
        "branches": 4,
        "width": 8,
        "attention": True,
        "reduction": 16,
        "spatial_kernel": 7,
        "combine": "mean",
    }
    assert validate_head("manet") == {"width": 256, "local_weight": 0.6, "reduction": 16, "spatial_kernel": 7}
    for params, message in [
        ({"combine": "median"}, r"combine must be one of \['mean', 'vote'\]"),
        ({"attention": 1}, "attention must be True or False"),
        ({"spatial_kernel": 4}, "spatial_kernel must be odd"),
    ]:
        with pytest.raises(ValueError, match=message):
            validate_head("branches", params)
    with pytest.raises(ValueError, match=r"local_weight must be a number in \[0, 1\]"):
        validate_head("manet", {"local_weight": 1.5})


def test_vote_combines_by_plurality():
    """combine="vote": the argmax is the branches' plurality vote (ties to the mean
    probability), softmax gives the vote shares, and CAM is no longer claimed exact."""
    from ferlib.models.branches import vote_logits

    branch_logits = torch.tensor(
        [
            [[5.0, 0, 0], [4, 0, 0], [0, 9, 0]],  # two votes for 0 beat one confident vote for 1
            [[0.0, 1, 0], [0, 0, 1], [2, 0, 0]],  # a three-way tie: broken by the mean probability
        ]
    )
    logits = vote_logits(branch_logits)
    assert logits.argmax(1).tolist() == [0, branch_logits[1].softmax(1).mean(0).argmax().item()]
    torch.testing.assert_close(logits.softmax(1).sum(1), torch.ones(2))
    model = _net("branches", {"branches": 3, "width": 16, "combine": "vote"}).eval()
    assert not model.supports_cam
    with torch.no_grad():
        out = model.forward_all(torch.randn(4, 3, 32, 32))
    torch.testing.assert_close(out.logits, vote_logits(out.extras["branch_logits"]))


def test_quadrants_cover_the_map():
    assert quadrant_slices(4, 4) == [
        (slice(0, 2), slice(0, 2)),
        (slice(0, 2), slice(2, 4)),
        (slice(2, 4), slice(0, 2)),
        (slice(2, 4), slice(2, 4)),
    ]
    odd = quadrant_slices(3, 5)  # overlapping middle row / column, one patch shape
    assert {(r.stop - r.start, c.stop - c.start) for r, c in odd} == {(2, 3)}
    covered = torch.zeros(3, 5)
    for r, c in odd:
        covered[r, c] += 1
    assert (covered >= 1).all()
    with pytest.raises(ValueError, match="1x4; use a larger input_size"):
        quadrant_slices(1, 4)


@pytest.mark.parametrize("arch,size,side", [("smallface", 32, 2), ("smallface", 48, 3), ("resnet18", 48, 2)])
def test_manet_shapes(arch, size, side):
    model = _net("manet", {"width": 16}, arch=arch, size=size).eval()
    with torch.no_grad():
        out = model.forward_all(torch.randn(2, 3, size, size))
    assert out.extras["branch_logits"].shape == (2, 2, 3)
    assert out.extras["branch_features"].shape == (2, 2, 16)
    assert out.extras["spatial_attention"].shape == (2, 4, side, side)
    assert out.extras["channel_attention"].shape == (2, 4, 16)
    global_logits, local_logits = out.extras["branch_logits"].unbind(1)
    torch.testing.assert_close(out.logits, 0.4 * global_logits + 0.6 * local_logits)
    torch.testing.assert_close(out.features, out.feature_map.mean(dim=(2, 3)))


def test_manet_refuses_a_map_too_small_to_split():
    """ResNet-18 with the ImageNet stem leaves a 32-px face a 1x1 map: a clear error."""
    model = build_model(ModelConfig(num_classes=3, input_size=32, stem="imagenet", head="manet"), verbose=False)
    with pytest.raises(ValueError, match="head 'manet' splits.*1x1"):
        model.forward_all(torch.randn(2, 3, 32, 32))


@pytest.mark.parametrize(
    "head,params,arch,size",
    [
        ("branches", {"branches": 3, "width": 16}, "smallface", 48),
        ("branches", {"branches": 2, "width": 16, "attention": False}, "resnet18", 48),
        ("manet", {"width": 16}, "smallface", 48),
        ("manet", {"width": 16, "local_weight": 0.3}, "resnet18", 48),  # 3x3 map: overlapping patches
    ],
)
def test_cam_is_exact_on_the_attended_maps(head, params, arch, size):
    """Eval mode: the CAM's spatial mean plus the (weighted) bias is the logit."""
    model = _net(head, params, arch=arch, size=size).eval()
    with torch.no_grad():
        out = model.forward_all(torch.randn(3, 3, size, size))
        cam = model.cam(out.feature_map)
    if head == "manet":
        bias = model.head.cam_bias()
    else:
        bias = torch.stack([b.fc.bias for b in model.head.branches]).mean(0)
    assert cam.shape == (3, 3, *out.feature_map.shape[-2:])
    torch.testing.assert_close(cam.mean(dim=(2, 3)) + bias, out.logits, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------- the objective


def test_objective_registry_and_validation():
    assert validate_objective("ensemble") == {
        "name": "ensemble",
        "diversity": 0.0,
        "gamma": 10.0,
        "form": "det",
        "weights": None,
        "progressive_epochs": 0,
    }
    for params, message in [
        ({"diversity": -1}, "diversity must be a finite number >= 0"),
        ({"gamma": 0}, "gamma must be a finite number > 0"),
        ({"form": "trace"}, "form must be one of"),
        ({"weights": [0, 0]}, "must not all be 0"),
        ({"weights": [1, -1]}, "every weight must be"),
        ({"progressive_epochs": 1.5}, "progressive_epochs must be an integer >= 0"),
    ]:
        with pytest.raises(ValueError, match=message):
            make_objective("ensemble", **params)


def test_check_refuses_heads_it_cannot_train():
    with pytest.raises(ValueError, match="head 'linear' has no branches; use head='branches' or head='manet'"):
        EnsembleObjective().check(_net("linear"))
    with pytest.raises(ValueError, match="weights has 3 entries, but head 'manet' has 2 branches"):
        EnsembleObjective(weights=[1, 1, 1]).check(_net("manet", {"width": 8}))
    with pytest.raises(ValueError, match="progressive_epochs adds ESR's branches"):
        EnsembleObjective(progressive_epochs=2).check(_net("manet", {"width": 8}))
    plain = _net("branches", {"branches": 2, "width": 8, "attention": False})
    EnsembleObjective(diversity=1.0).check(plain)
    with pytest.raises(ValueError, match="attention=False"):
        EnsembleObjective(diversity=1.0)(plain, torch.randn(2, 3, 32, 32), torch.tensor([0, 1]), None)


@pytest.mark.parametrize("head,params", [("branches", {"branches": 3, "width": 16}), ("manet", {"width": 16})])
def test_loss_is_weighted_ce_plus_diversity(head, params):
    model = _net(head, params).eval()
    x, y = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 0])
    with torch.no_grad():
        out = model.forward_all(x)
        ce = sum(
            w * F.cross_entropy(out.extras["branch_logits"][:, b], y) for b, w in enumerate(model.head.branch_weights)
        )
        div = dpp_diversity(out.extras["spatial_attention"].flatten(2)) + dpp_diversity(out.extras["channel_attention"])
        if head == "manet":
            div = div + dpp_diversity(out.extras["branch_features"])
        plain, logits = EnsembleObjective()(model, x, y, None)
        diverse, _ = EnsembleObjective(diversity=0.5)(model, x, y, None)
        summed, _ = EnsembleObjective(weights=[1.0] * len(model.head.branch_weights))(model, x, y, None)
    torch.testing.assert_close(logits, out.logits)
    torch.testing.assert_close(plain, ce)
    torch.testing.assert_close(diverse, ce + 0.5 * div)
    expected_sum = sum(
        F.cross_entropy(out.extras["branch_logits"][:, b], y) for b in range(len(model.head.branch_weights))
    )
    torch.testing.assert_close(summed, expected_sum)


def test_diversity_gradient_spreads_the_branch_attention():
    """Training on the diversity term alone (training mode, as in fit) makes the branches'
    attention less alike."""
    model = _net("branches", {"branches": 3, "width": 16}).train()
    x = torch.rand(8, 3, 32, 32)

    def spread():
        with torch.no_grad():
            sp = model.forward_all(x).extras["spatial_attention"].flatten(2)
        return dpp_diversity(sp).item()

    before = spread()
    opt = torch.optim.Adam(model.head.parameters(), lr=1e-2)
    for _ in range(10):
        out = model.forward_all(x)
        loss = dpp_diversity(out.extras["spatial_attention"].flatten(2))
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert spread() < before - 0.05


# ---------------------------------------------------------------- training through fit


def _accuracy(model, data):
    logits = predict(model, data.images, progress=False, channels_last=False).logits
    return (logits.argmax(1) == data.targets).float().mean()


@pytest.mark.parametrize(
    "head,params,objective",
    [
        ("branches", {"branches": 2, "width": 16}, {"diversity": 0.0}),
        ("branches", {"branches": 2, "width": 16}, {"diversity": 0.5, "form": "logdet"}),
        ("manet", {"width": 16}, {"diversity": 0.5}),
    ],
)
def test_ensembles_learn(head, params, objective):
    """A few epochs on three brightness classes beat chance (1/3) clearly."""
    model = _net(head, params)
    fit(model, _toy(), None, TrainConfig(epochs=3, **FAST), make_objective("ensemble", **objective))
    assert _accuracy(model, _toy(48, seed=1)) >= 0.8


class _Recording(EnsembleObjective):
    def __init__(self, **kw):
        super().__init__(**kw)
        self.seen: list[int] = []

    def on_epoch_start(self, epoch):
        super().on_epoch_start(epoch)
        self.seen.append(epoch)


def test_progressive_schedule_activates_branches_on_schedule():
    obj = EnsembleObjective(progressive_epochs=2)
    for epoch, active in [(0, 1), (1, 1), (2, 2), (5, 3), (9, 4), (40, 4)]:
        obj.on_epoch_start(epoch)
        assert obj.active_branches(4) == active
        weights = obj.branch_weights(_net("branches", {"branches": 4, "width": 8}), 4)
        assert (weights[:active] > 0).all() and (weights[active:] == 0).all()
        assert weights.sum().item() == pytest.approx(1.0)
    assert EnsembleObjective().active_branches(4) == 4


def test_fit_calls_the_epoch_hook_and_untrained_branches_stay_untouched(tmp_path):
    """progressive_epochs=1 over two epochs: branch 0 trains from epoch 0, branch 1 joins at
    epoch 1, branch 2 never receives a gradient (its weights are the initial ones). A resumed
    run calls the hook from the epoch it resumes at."""
    model = _net("branches", {"branches": 3, "width": 8})
    initial = {k: v.clone() for k, v in model.head.state_dict().items()}
    objective = _Recording(progressive_epochs=1, diversity=0.5)
    fit(model, _toy(64), None, TrainConfig(epochs=2, **FAST), objective, out_dir=tmp_path)
    assert objective.seen == [0, 1]
    after = model.head.state_dict()
    for name in ("fc.weight", "block.0.weight", "cbam.mlp.0.weight", "cbam.spatial.weight"):
        assert not torch.equal(after[f"branches.0.{name}"], initial[f"branches.0.{name}"])
        assert not torch.equal(after[f"branches.1.{name}"], initial[f"branches.1.{name}"])
        torch.testing.assert_close(after[f"branches.2.{name}"], initial[f"branches.2.{name}"], rtol=0, atol=0)

    resumed = _Recording(progressive_epochs=1, diversity=0.5)
    again = _net("branches", {"branches": 3, "width": 8})
    fit(again, _toy(64), None, TrainConfig(epochs=3, **FAST), resumed, out_dir=tmp_path)
    assert resumed.seen == [2]
