"""CutMix on a whole batch: the targets weigh each label by the share of pixels it
contributes, the stream is seeded, and the training loop uses it only where the loss can
read mixed targets."""

from __future__ import annotations

import pytest
import torch
from toy import brightness_pairs

from ferlib.data.mix import cutmix_batch, one_hot_targets
from ferlib.losses import CrossEntropy
from ferlib.models import ModelConfig, build_model
from ferlib.recipes import recipe_settings
from ferlib.train import TensorData, TrainConfig, fit, training_key


def _labelled_images(b=8, size=16):
    """Image i is the constant i, of class i: every pixel says where it came from."""
    x = torch.arange(b, dtype=torch.float32).view(b, 1, 1, 1).expand(b, 3, size, size).contiguous()
    return x, torch.arange(b)


def test_targets_weigh_each_label_by_its_share_of_pixels():
    x, y = _labelled_images()
    mixed_any = False
    for seed in range(20):
        out, t = cutmix_batch(x, y, num_classes=8, p=1.0, generator=torch.Generator().manual_seed(seed))
        assert t.shape == (8, 8) and t.dtype == torch.float32
        torch.testing.assert_close(t.sum(1), torch.ones(8))
        for i in range(8):
            share = (out[i, 0] == i).float().mean()  # pixels still its own
            if share < 1:
                mixed_any = True
                donor = int(out[i, 0][out[i, 0] != i][0])
                assert set(out[i, 0].unique().tolist()) == {float(i), float(donor)}  # one donor per image
                torch.testing.assert_close(t[i, donor], 1 - share)
            torch.testing.assert_close(t[i, i], share)
    assert mixed_any


def test_off_or_unlucky_batches_come_back_as_they_were():
    x, y = _labelled_images()
    out, t = cutmix_batch(x, y, num_classes=8, p=0.0, generator=torch.Generator().manual_seed(0))
    assert out is x
    torch.testing.assert_close(t, torch.eye(8))
    kept = 0
    for seed in range(40):  # p = .5: about half the batches unchanged, the others mixed
        out, _ = cutmix_batch(x, y, num_classes=8, p=0.5, generator=torch.Generator().manual_seed(seed))
        kept += bool(torch.equal(out, x))
    assert 8 <= kept <= 32


def test_seeded_generator_reproduces_the_mix_and_soft_targets_mix_too():
    x = torch.randn(6, 3, 12, 12)
    soft = torch.softmax(torch.randn(6, 4), 1)
    a = cutmix_batch(x, soft, 4, 1.0, torch.Generator().manual_seed(3))
    b = cutmix_batch(x, soft, 4, 1.0, torch.Generator().manual_seed(3))
    torch.testing.assert_close(a[0], b[0])
    torch.testing.assert_close(a[1], b[1])
    torch.testing.assert_close(a[1].sum(1), torch.ones(6))
    assert not torch.equal(a[1], soft)


def test_bad_input_names_what_is_wrong():
    x, y = _labelled_images()
    with pytest.raises(ValueError, match="p must be"):
        cutmix_batch(x, y, 8, 1.5)
    with pytest.raises(ValueError, match=r"lie in \[0, 4\)"):
        one_hot_targets(y, 4)
    with pytest.raises(ValueError, match="soft targets must be"):
        one_hot_targets(torch.rand(8, 3), 4)
    with pytest.raises(ValueError, match="float"):
        cutmix_batch(x.to(torch.uint8), y, 8, 1.0)


def _toy(n=64, seed=0):
    return TensorData(*brightness_pairs(n, seed))


def _model():
    torch.manual_seed(0)
    return build_model(ModelConfig(arch="smallface", num_classes=2, input_size=32), verbose=False)


CFG = dict(batch_size=16, lr=1e-3, progress=False, augment=None, epochs=3)


def test_the_loop_learns_with_cutmix_and_keys_it():
    train, val = _toy(), _toy(32, seed=1)
    off, on = TrainConfig(**CFG), TrainConfig(cutmix_p=1.0, **CFG)
    assert "cutmix_p" not in off.key_fields()  # runs from before the switch keep their keys
    model = _model()
    k_off = training_key(model, train, val, off, CrossEntropy())[0]
    k_on = training_key(model, train, val, on, CrossEntropy())[0]
    assert k_off != k_on
    result = fit(model, train, val, on)
    assert result.history["val_acc"].max() >= 0.9  # brightness survives a pasted rectangle
    # mixed targets make the training loss higher than the same run's without them
    plain = fit(_model(), train, val, off)
    assert result.history["train_loss"].iloc[-1] > plain.history["train_loss"].iloc[-1]


def test_cutmix_refuses_an_objective_that_cannot_read_mixed_targets():
    class Odd:
        def __call__(self, model, x, y, index):
            logits = model(x)
            return logits.pow(2).mean(), logits

    with pytest.raises(ValueError, match="cutmix_p"):
        fit(_model(), _toy(8), None, TrainConfig(cutmix_p=0.5, **CFG), objective=Odd())


def test_recipes_take_cutmix_as_a_parameter():
    assert recipe_settings("fast_affine", {"cutmix_p": 0.5})["cutmix_p"] == 0.5
    assert recipe_settings("fast_affine")["cutmix_p"] == 0.0
    with pytest.raises(ValueError, match="cutmix_p"):
        recipe_settings("fast", {"cutmix_p": 2.0})
