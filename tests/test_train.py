"""The one training loop: learns, selects on validation, resumes, is deterministic."""

import numpy as np
import pytest
import torch

from ferlib.models import ModelConfig, build_model
from ferlib.train import TensorData, TrainConfig, fit, load_history, predict


def _toy(n=96, seed=0):
    """Two classes that differ by brightness: learnable in a couple of epochs."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 2
    base = torch.where(y[:, None, None, None] == 1, 190, 60)
    x = (base + torch.randint(-30, 30, (n, 3, 32, 32), generator=g)).clamp(0, 255).to(torch.uint8)
    return TensorData(x, y)


def _model():
    torch.manual_seed(0)
    return build_model(ModelConfig(num_classes=2, input_size=32), verbose=False)


CFG = dict(batch_size=32, lr=1e-3, progress=False, augment=None)


def test_learns_and_writes_history(tmp_path):
    train, val = _toy(), _toy(32, seed=1)
    model = _model()
    result = fit(model, train, val, TrainConfig(epochs=3, **CFG), out_dir=tmp_path)
    hist = load_history(tmp_path)
    assert list(hist["epoch"]) == [1, 2, 3]
    assert {"train_loss", "train_acc", "val_loss", "val_acc", "lr", "seconds"} <= set(hist.columns)
    assert hist["val_acc"].max() >= 0.9
    assert (tmp_path / "best.pt").exists() and (tmp_path / "last.pt").exists()
    assert result.best_epoch == int(hist.loc[hist["val_acc"].idxmax(), "epoch"])
    # the model holds the best-on-validation weights
    best = torch.load(tmp_path / "best.pt")
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, best[k])


def test_resume_matches_uninterrupted(tmp_path):
    """Two epochs, then a call asking for four, equals four epochs in one go."""
    train = _toy()
    a = _model()
    fit(a, train, None, TrainConfig(epochs=2, **CFG), out_dir=tmp_path / "a")
    a = _model()  # a fresh process would rebuild the model
    fit(a, train, None, TrainConfig(epochs=4, **CFG), out_dir=tmp_path / "a")
    b = _model()
    fit(b, train, None, TrainConfig(epochs=4, **CFG), out_dir=tmp_path / "b")
    assert len(load_history(tmp_path / "a")) == 4
    for k, v in a.state_dict().items():
        torch.testing.assert_close(v, b.state_dict()[k])


def test_changed_settings_start_over(tmp_path, capsys):
    train = _toy()
    fit(_model(), train, None, TrainConfig(epochs=1, **CFG), out_dir=tmp_path)
    cfg = TrainConfig(epochs=1, **{**CFG, "lr": 5e-4, "progress": True})
    fit(_model(), train, None, cfg, out_dir=tmp_path)
    assert "starting over" in capsys.readouterr().out


def test_lr_schedules():
    exp = TrainConfig(lr=1.0, lr_gamma=0.5)
    assert exp.lr_at(0.5) == 1.0 and exp.lr_at(2.1) == 0.25
    cyc = TrainConfig(lr=1.0, lr_min=0.0, schedule="cyclic", cycle_epochs=4)
    assert cyc.lr_at(0) == pytest.approx(1.0) and cyc.lr_at(2) == pytest.approx(0.5)
    assert cyc.lr_at(4) == pytest.approx(1.0)  # restart
    with pytest.raises(ValueError, match="schedule"):
        TrainConfig(schedule="step").lr_at(0)


def test_predict_is_row_aligned():
    """predict returns outputs in row order: a row's output does not depend on the others."""
    data = _toy(40)
    model = _model().eval()
    full = predict(model, data.images, batch_size=16, progress=False)
    perm = torch.randperm(40, generator=torch.Generator().manual_seed(3))
    shuffled = predict(model, data.images[perm], batch_size=7, progress=False)
    torch.testing.assert_close(shuffled.logits, full.logits[perm], rtol=1e-4, atol=1e-4)
    assert full.features.shape == (40, 512)


def test_bad_tensor_data():
    with pytest.raises(ValueError, match="uint8"):
        TensorData(torch.zeros(4, 3, 8, 8), torch.zeros(4))
    with pytest.raises(ValueError, match="targets"):
        TensorData(torch.zeros(4, 3, 8, 8, dtype=torch.uint8), torch.zeros(3))
