"""FERPlus's label modes in the training loop: soft targets on ``TensorData``, drawn targets
(``probability``), the loss against vote distributions (``crossentropy``), label smoothing
of soft targets, and the training key."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from toy import brightness_pairs

from ferlib.losses import CamFlipConsistency, CrossEntropy
from ferlib.models import ModelConfig, build_model
from ferlib.train import TensorData, TrainConfig, _smoothed, fit, load_history, training_key


def _toy(n=64, seed=0):
    """Two classes that differ by brightness."""
    return brightness_pairs(n, seed)


def _model():
    torch.manual_seed(0)
    return build_model(ModelConfig(arch="smallface", num_classes=2, input_size=32), verbose=False)


CFG = dict(batch_size=16, lr=1e-3, progress=False, augment=None)


@pytest.mark.parametrize("objective", [CrossEntropy(), CamFlipConsistency(lam=5.0)])
def test_crossentropy_on_one_hot_votes_gives_the_majority_loss(objective):
    """Same model, same batch: one-hot soft targets give the loss of hard ones, for each
    objective that takes soft targets (its cross-entropy reads probabilities), to float32
    rounding: torch reduces the probability form in another order, so the last bit may
    differ."""
    x, y = _toy(16)
    torch.manual_seed(0)
    model = build_model(ModelConfig(num_classes=2, input_size=32), verbose=False)  # linear head: CAM
    batch = x.float() / 255
    hard, _ = objective(model, batch, y, torch.arange(16))
    soft, _ = objective(model, batch, F.one_hot(y, 2).float(), torch.arange(16))
    assert soft.item() == pytest.approx(hard.item(), rel=1e-6, abs=0)
    logits = model(batch)
    smoothed_hard = _smoothed(hard, logits, y, 0.1)
    smoothed_soft = _smoothed(soft, logits, F.one_hot(y, 2).float(), 0.1)
    assert smoothed_soft.item() == pytest.approx(smoothed_hard.item(), rel=1e-6, abs=0)


def test_crossentropy_on_one_hot_votes_trains_as_majority(tmp_path):
    """Whole runs agree to float rounding (the gradient of the probability form of
    cross-entropy is computed by another kernel, so the last bits of a step may differ)."""
    x, y = _toy()
    one_hot = F.one_hot(y, 2).float()
    hard, soft = _model(), _model()
    fit(hard, TensorData(x, y), None, TrainConfig(epochs=2, **CFG), out_dir=tmp_path / "hard")
    fit(soft, TensorData(x, y, one_hot, "crossentropy"), None, TrainConfig(epochs=2, **CFG), out_dir=tmp_path / "soft")
    a, b = load_history(tmp_path / "hard"), load_history(tmp_path / "soft")
    np.testing.assert_allclose(a["train_loss"], b["train_loss"], rtol=1e-5)
    assert a["train_acc"].tolist() == b["train_acc"].tolist()
    for k, v in hard.state_dict().items():
        torch.testing.assert_close(v, soft.state_dict()[k], rtol=1e-4, atol=1e-5)


def test_crossentropy_on_soft_votes_trains_on_the_distribution():
    """The objective receives the distributions: its loss is -sum_k q_k log p_k."""
    x, y = _toy(8)
    q = torch.tensor([[0.7, 0.3], [0.2, 0.8]]).repeat(4, 1)
    data = TensorData(x, y, q)
    seen = {}

    class Spy(CrossEntropy):
        def __call__(self, model, x, t, index):
            seen["t"] = t.clone()
            return super().__call__(model, x, t, index)

    fit(_model(), data, None, TrainConfig(epochs=1, **{**CFG, "batch_size": 8}), Spy())
    assert seen["t"].dtype == torch.float32 and seen["t"].shape == (8, 2)
    assert sorted(map(tuple, seen["t"].tolist())) == sorted(map(tuple, q.tolist()))


def test_probability_draws_are_seeded_and_follow_the_votes():
    q = torch.tensor([[0.6, 0.3, 0.1, 0.0], [0.0, 0.0, 0.5, 0.5]]).repeat(10_000, 1)
    data = TensorData(torch.zeros(len(q), 1, 4, 4, dtype=torch.uint8), q.argmax(1), q, "probability")
    index = torch.arange(len(q))
    a = data.loss_targets(index, torch.Generator().manual_seed(0))
    b = data.loss_targets(index, torch.Generator().manual_seed(0))
    c = data.loss_targets(index, torch.Generator().manual_seed(1))
    assert a.dtype == torch.long and torch.equal(a, b) and not torch.equal(a, c)
    first = np.bincount(a[0::2].numpy(), minlength=4) / 10_000
    second = np.bincount(a[1::2].numpy(), minlength=4) / 10_000
    assert first == pytest.approx([0.6, 0.3, 0.1, 0.0], abs=0.015)
    assert second == pytest.approx([0.0, 0.0, 0.5, 0.5], abs=0.015)  # never a class without a vote


def test_probability_mode_redraws_per_use_and_resumes_exactly(tmp_path):
    x, y = _toy(32)
    q = torch.tensor([[0.5, 0.5]]).repeat(32, 1)
    data = TensorData(x, y, q, "probability")
    drawn = []

    class Spy(CrossEntropy):
        def __call__(self, model, x, t, index):
            drawn.append(t[torch.argsort(index)].clone())
            return super().__call__(model, x, t, index)

    cfg = {**CFG, "batch_size": 32}
    fit(_model(), data, None, TrainConfig(epochs=2, **cfg), Spy(), out_dir=tmp_path / "a")
    assert not torch.equal(drawn[0], drawn[1])  # a new label each time the image is used
    first = list(drawn)
    a = _model()
    fit(a, data, None, TrainConfig(epochs=1, **cfg), out_dir=tmp_path / "b")
    a = _model()
    fit(a, data, None, TrainConfig(epochs=2, **cfg), out_dir=tmp_path / "b")  # resumes epoch 2
    b = _model()
    drawn.clear()
    fit(b, data, None, TrainConfig(epochs=2, **cfg), Spy(), out_dir=tmp_path / "c")
    assert all(torch.equal(p, q) for p, q in zip(first, drawn))  # the same draws in a new run
    for k, v in a.state_dict().items():
        torch.testing.assert_close(v, b.state_dict()[k])


def test_label_smoothing_of_soft_targets_is_cross_entropy_against_the_smoothed_distribution():
    torch.manual_seed(0)
    logits = torch.randn(5, 4)
    q = torch.softmax(torch.randn(5, 4), 1)
    eps = 0.1
    smoothed = _smoothed(F.cross_entropy(logits, q), logits, q, eps)
    expected = F.cross_entropy(logits, (1 - eps) * q + eps / 4)
    torch.testing.assert_close(smoothed, expected)
    y = q.argmax(1)  # and hard targets as before
    torch.testing.assert_close(
        _smoothed(F.cross_entropy(logits, y), logits, y, eps), F.cross_entropy(logits, y, label_smoothing=eps)
    )


def test_soft_targets_need_a_cross_entropy_objective():
    x, y = _toy(8)

    def squared(model, x, t, index):
        logits = model(x)
        return ((logits - t) ** 2).mean(), logits

    data = TensorData(x, y, F.one_hot(y, 2).float())
    with pytest.raises(ValueError, match="soft targets .* need an objective"):
        fit(_model(), data, None, TrainConfig(epochs=1, **CFG), squared)


def test_tensor_data_checks_and_subsets_soft_targets():
    x, y = _toy(4)
    with pytest.raises(ValueError, match="soft_targets must be"):
        TensorData(x, y, torch.ones(3, 2) / 2)
    with pytest.raises(ValueError, match="probabilities"):
        TensorData(x, y, torch.ones(4, 2))
    with pytest.raises(ValueError, match="soft_mode must be one of crossentropy, probability"):
        TensorData(x, y, soft_mode="multi_target")
    q = torch.tensor([[1.0, 0.0], [0.25, 0.75], [0.5, 0.5], [0.0, 1.0]])
    sub = TensorData(x, y, q, "probability").subset(np.array([3, 1]))
    assert torch.equal(sub.soft_targets, q[[3, 1]]) and sub.soft_mode == "probability"


def test_training_key_follows_targets_soft_targets_and_mode():
    x, y = _toy(8)
    model, cfg = _model(), TrainConfig(**CFG)
    q = torch.tensor([[0.7, 0.3]]).repeat(8, 1)
    flipped = y.clone()
    flipped[0] = 1 - flipped[0]  # one noisy label

    def key(data):
        return training_key(model, data, None, cfg, CrossEntropy())

    clean, ingredients = key(TensorData(x, y))
    assert "soft_targets" not in ingredients  # runs without soft targets keep their keys
    keys = {
        clean,
        key(TensorData(x, flipped))[0],
        key(TensorData(x, y, q, "crossentropy"))[0],
        key(TensorData(x, y, q, "probability"))[0],
        key(TensorData(x, y, q.flip(1), "crossentropy"))[0],
    }
    assert len(keys) == 5
