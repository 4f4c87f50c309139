"""``predict`` keeps the head's per-sample extras, in row order, averaged under flip TTA,
and leaves out what is not per sample or too large (spatial maps)."""

import torch
from torch import nn

from ferlib.data.augment import to_float
from ferlib.models import ForwardOutput, ModelConfig, build_model
from ferlib.train import predict


def _images(n: int = 10, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, 32, 32), generator=g, dtype=torch.uint8)


def _model(head: str, params: dict) -> nn.Module:
    torch.manual_seed(0)
    model = build_model(
        ModelConfig(arch="smallface", num_classes=3, input_size=32, head=head, head_params=params), verbose=False
    )
    model.train()
    with torch.no_grad():  # BatchNorm statistics away from the identity
        model.forward_all(torch.rand(8, 3, 32, 32) * 2)
    return model.eval()


def test_extras_are_kept_per_row_across_batches():
    """Batches of 4 over 10 rows: every row's extras equal a forward pass of that image."""
    model = _model("uncertainty", {"embedding": 6})
    images = _images()
    pred = predict(model, images, batch_size=4, progress=False, channels_last=False)
    assert set(pred.extras) == {"mu", "log_var", "uncertainty"}
    with torch.no_grad():
        out = model.forward_all(to_float(images))
    assert pred.extras["mu"].shape == (10, 6) and pred.extras["uncertainty"].shape == (10,)
    for name in pred.extras:
        torch.testing.assert_close(pred.extras[name], out.extras[name], rtol=1e-4, atol=1e-5)


def test_flip_tta_averages_extras_like_logits():
    model = _model("branches", {"branches": 2, "width": 8})
    images = _images(6)
    plain = predict(model, images, progress=False)
    mirrored = predict(model, images, flip=True, progress=False)
    tta = predict(model, images, tta=True, progress=False)
    assert tta.extras["branch_logits"].shape == (6, 2, 3)
    expected = (plain.extras["branch_logits"] + mirrored.extras["branch_logits"]) / 2
    torch.testing.assert_close(tta.extras["branch_logits"], expected)
    torch.testing.assert_close(tta.logits, (plain.logits + mirrored.logits) / 2)
    assert not torch.allclose(plain.extras["branch_logits"], mirrored.extras["branch_logits"])


class _ManyExtras(nn.Module):
    """Extras of every kind: per sample (1-3 dims), a spatial map, a per-batch value, ints."""

    def forward_all(self, x: torch.Tensor) -> ForwardOutput:
        b = len(x)
        pooled = x.mean(dim=(2, 3))
        extras = {
            "score": pooled[:, 0],
            "pair": pooled[:, :2],
            "cube": pooled[:, :, None].expand(b, 3, 2),
            "map": x,  # (B, C, h, w): never kept
            "per_batch": torch.ones(5),  # not per sample, though as long as the first batch
            "votes": torch.zeros(b, dtype=torch.long),  # not floating point
        }
        return ForwardOutput(pooled, pooled, x, extras)


def test_only_small_per_sample_float_extras_are_kept():
    pred = predict(_ManyExtras(), _images(7), batch_size=5, progress=False)
    assert set(pred.extras) == {"score", "pair", "cube"}
    assert pred.extras["cube"].shape == (7, 3, 2) and pred.extras["score"].shape == (7,)
    assert all(v.dtype == torch.float32 for v in pred.extras.values())


def test_a_plain_module_and_an_empty_set_have_no_extras():
    plain = nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 2))
    assert predict(plain, _images(3), progress=False).extras == {}
    assert predict(_ManyExtras(), _images(0), progress=False).extras == {}


# ----------------------------------------------------------------------------- pyramid features
def test_pyramid_pools_every_stage_after_the_stem_in_the_same_pass():
    """smallface: 64 + 128 + 256 pooled values; the last 256 are the linear head's pooled
    features, and asking for the pyramid changes neither the logits nor the features."""
    model = _model("linear", {})
    x = to_float(_images(5))
    with torch.no_grad():
        plain, both = model.forward_all(x), model.forward_all(x, pyramid=True)
        maps = model.trunk.stage_maps(x)
    assert "pyramid" not in plain.extras and both.extras["pyramid"].shape == (5, 448)
    torch.testing.assert_close(both.logits, plain.logits)
    torch.testing.assert_close(both.extras["pyramid"][:, -256:], plain.features)
    torch.testing.assert_close(both.extras["pyramid"][:, :64], maps[1].mean(dim=(2, 3)))
    torch.testing.assert_close(maps[-1], model.trunk(x))


def test_pyramid_of_a_resnet_has_its_four_stages():
    torch.manual_seed(0)
    model = build_model(ModelConfig(arch="resnet18", num_classes=3, input_size=32, stem="small"), verbose=False).eval()
    with torch.no_grad():
        out = model.forward_all(to_float(_images(2)), pyramid=True)
    assert out.extras["pyramid"].shape == (2, 64 + 128 + 256 + 512)


def test_predict_keeps_the_pyramid_only_when_asked_and_averages_it_under_tta():
    model = _model("linear", {})
    images = _images(6)
    assert "pyramid" not in predict(model, images, progress=False).extras
    plain = predict(model, images, pyramid=True, batch_size=4, progress=False)
    mirrored = predict(model, images, flip=True, pyramid=True, progress=False)
    tta = predict(model, images, tta=True, pyramid=True, progress=False)
    assert plain.extras["pyramid"].shape == (6, 448)
    torch.testing.assert_close(tta.extras["pyramid"], (plain.extras["pyramid"] + mirrored.extras["pyramid"]) / 2)
    torch.testing.assert_close(tta.features, tta.extras["pyramid"][:, -256:])
