"""Relative Uncertainty Learning: the ``rul`` objective against a hand computation, its
checks, and the ``uncertainty`` head + ``rul`` training in the one loop."""

import math

import pytest
import torch
from torch import nn

from ferlib.losses import RelativeUncertaintyMixup, make_objective, relative_mixup, validate_objective
from ferlib.models import ForwardOutput, ModelConfig, build_model
from ferlib.models.uncertainty import UncertaintyHead
from ferlib.train import TensorData, TrainConfig, fit, predict

# u = mean_d exp(log_var) = 1, 3, 2, 6 for the four samples
VARIANCES = torch.tensor([[1.0, 1.0], [2.0, 4.0], [2.0, 2.0], [6.0, 6.0]])
MU = torch.tensor([[1.0, 0.0], [0.0, 1.0], [2.0, 2.0], [-2.0, 2.0]])
PERM = torch.tensor([1, 0, 3, 2])
Y = torch.tensor([0, 1, 1, 0])


class _Fixed(nn.Module):
    """A model whose head outputs are given: mu, log_var, and fc = identity (no bias)."""

    def __init__(self, mu: torch.Tensor, log_var: torch.Tensor):
        super().__init__()
        self.head = UncertaintyHead(4, 2, embedding=2)
        with torch.no_grad():
            self.head.fc.weight.copy_(torch.eye(2))
            self.head.fc.bias.zero_()
        self.mu, self.log_var = mu, log_var

    def forward_all(self, x: torch.Tensor) -> ForwardOutput:
        logits = self.head.classify(self.mu)
        extras = {"mu": self.mu, "log_var": self.log_var}
        return ForwardOutput(logits, torch.zeros(len(x), 4), torch.zeros(len(x), 4, 1, 1), extras)


def test_mixup_weights_and_loss_equal_a_hand_computation(monkeypatch):
    """w = u_i / (u_i + u_p(i)) = 1/4, 3/4, 2/8, 6/8; the mixtures of the pairs (0, 1) and
    (2, 3) are [.25, .75] and [-1, 2] (each pair gives the same mixture twice); each pair
    carries both labels, so every add-up loss is logsumexp(m) - (m_0 + m_1) / 2."""
    log_var = torch.log(VARIANCES).requires_grad_(True)
    mixed, w = relative_mixup(MU, log_var, PERM)
    torch.testing.assert_close(w, torch.tensor([0.25, 0.75, 0.25, 0.75]))
    torch.testing.assert_close(mixed, torch.tensor([[0.25, 0.75], [0.25, 0.75], [-1.0, 2.0], [-1.0, 2.0]]))

    objective = make_objective("rul")
    monkeypatch.setattr(objective, "permutation", lambda n, device: PERM)
    model = _Fixed(MU, log_var)
    loss, logits = objective(model, torch.zeros(4, 3, 8, 8), Y, torch.arange(4))
    pair_a = math.log(math.exp(0.25) + math.exp(0.75)) - 0.5
    pair_b = math.log(math.exp(-1.0) + math.exp(2.0)) - 0.5
    assert loss.item() == pytest.approx((pair_a + pair_b) / 2, rel=1e-6)
    torch.testing.assert_close(logits, MU)  # fc(mu), fc the identity: what inference predicts
    loss.backward()
    assert log_var.grad is not None and log_var.grad.abs().sum() > 0  # u learns through the weights


def test_add_up_loss_weighs_both_labels_equally(monkeypatch):
    """With a pair of one label each, swapping the labels leaves the loss unchanged (the
    add-up loss is symmetric in y_i and y_p(i), unlike a lambda-weighted mixup loss)."""
    objective = RelativeUncertaintyMixup()
    monkeypatch.setattr(objective, "permutation", lambda n, device: PERM)
    model = _Fixed(MU, torch.log(VARIANCES))
    x, index = torch.zeros(4, 3, 8, 8), torch.arange(4)
    a, _ = objective(model, x, Y, index)
    b, _ = objective(model, x, Y[PERM], index)
    torch.testing.assert_close(a, b)


def test_the_permutation_follows_the_seeded_global_generator():
    objective = RelativeUncertaintyMixup()
    torch.manual_seed(7)
    first = objective.permutation(50, "cpu")
    torch.manual_seed(7)
    torch.testing.assert_close(objective.permutation(50, "cpu"), first)
    assert sorted(first.tolist()) == list(range(50))


def test_registry_and_config():
    assert validate_objective("rul") == {"name": "rul"}
    with pytest.raises(ValueError, match=r"objective 'rul' has no parameter 'lam'; objective_params accepted: none"):
        make_objective("rul", lam=1.0)


def test_rul_refuses_a_head_without_mu_and_log_var():
    model = build_model(ModelConfig(num_classes=3, input_size=32, head="branches"), verbose=False)
    with pytest.raises(ValueError, match=r"objective 'rul'.*head 'branches' produces none; use head='uncertainty'"):
        fit(model, _toy(8), None, TrainConfig(epochs=1, **CFG), make_objective("rul"))


def test_rul_refuses_label_smoothing():
    """The loop smooths the cross-entropy of the returned logits fc(mu); RUL's loss is on
    the mixtures, so smoothing it that way would be wrong: refused before any epoch."""
    model = _uncertainty_model()
    with pytest.raises(ValueError, match=r"label_smoothing=0.1 .*objective 'rul' is not one"):
        fit(model, _toy(8), None, TrainConfig(epochs=1, label_smoothing=0.1, **CFG), make_objective("rul"))


def _toy(n: int = 96, seed: int = 0, k: int = 4) -> TensorData:
    """``k`` classes coded by brightness (learnable in a few steps): chance is 1/k."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % k
    base = (40 + y * (180 // (k - 1)))[:, None, None, None]
    x = (base + torch.randint(-15, 15, (n, 3, 32, 32), generator=g)).clamp(0, 255).to(torch.uint8)
    return TensorData(x, y)


CFG = dict(batch_size=32, lr=2e-3, progress=False, augment=None)


def _uncertainty_model(arch: str = "smallface") -> nn.Module:
    torch.manual_seed(0)
    cfg = ModelConfig(arch=arch, num_classes=4, input_size=32, head="uncertainty", head_params={"embedding": 16})
    return build_model(cfg, verbose=False)


def test_uncertainty_head_with_rul_trains_and_beats_chance():
    """smallface + uncertainty head + rul on four brightness classes: held-out accuracy far
    above chance (1/4), and predict returns each image's uncertainty."""
    train, test = _toy(128), _toy(64, seed=1)
    model = _uncertainty_model()
    result = fit(model, train, None, TrainConfig(epochs=4, **CFG), make_objective("rul"))
    assert result.history["train_loss"].iloc[-1] < result.history["train_loss"].iloc[0]
    pred = predict(model, test.images, progress=False)
    accuracy = (pred.logits.argmax(1) == test.targets).float().mean().item()
    assert accuracy > 0.75, accuracy
    assert pred.extras["uncertainty"].shape == (64,) and (pred.extras["uncertainty"] > 0).all()


def test_stage_01_refuses_label_smoothing_with_rul_before_decoding(tmp_path):
    """recipe 'fast' smooths labels, which rul's mixup loss cannot take: refused before any data
    is read (the data root does not even exist)."""
    from ferlib.stages import train_close_set

    with pytest.raises(ValueError, match="label_smoothing=0.1 .*objective 'rul'"):
        train_close_set(
            data_root=str(tmp_path / "absent"),
            run_dir=str(tmp_path / "run"),
            head="uncertainty",
            objective="rul",
            recipe="fast",
            progress=False,
        )
    assert not (tmp_path / "absent").exists() and not (tmp_path / "run").exists()
