"""The one training loop: learns, selects on validation, resumes, is deterministic."""

import numpy as np
import pytest
import torch
from toy import brightness_pairs

from ferlib.data.augment import AugmentConfig
from ferlib.digest import tensor_digest
from ferlib.io import read_json
from ferlib.losses import CamFlipConsistency, CrossEntropy
from ferlib.models import ModelConfig, build_model
from ferlib.train import AgreementProbe, TensorData, TrainConfig, fit, load_history, predict, training_key


def _toy(n=96, seed=0):
    """Two classes that differ by brightness: learnable in a couple of epochs."""
    return TensorData(*brightness_pairs(n, seed))


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


# ----------------------------------------------------------------------------- result keys
# The checkpoint is reused only when every input that determines the result is the same.
# Each test below compares against a fresh run in another folder: "started over" means the
# weights equal a run that never saw the old checkpoint.


def _same_weights(a, b) -> bool:
    return all(torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items())


def _fresh(train, val, cfg, objective=None, model=None, out=None):
    model = model or _model()
    fit(model, train, val, cfg, objective, out_dir=out)
    return model


def test_changed_loss_weight_starts_over(tmp_path, capsys):
    """lam is in the key: a run with lam=2 in a folder trained with lam=0.5 does not resume
    the lam=0.5 checkpoint (before, only TrainConfig and sample counts were keyed)."""
    train, val = _toy(64), _toy(32, seed=1)
    cfg = TrainConfig(epochs=1, **{**CFG, "progress": True})
    fit(_model(), train, val, cfg, CamFlipConsistency(0.5), out_dir=tmp_path / "run")
    capsys.readouterr()
    second = _fresh(train, val, cfg, CamFlipConsistency(2.0), out=tmp_path / "run")
    assert "starting over" in capsys.readouterr().out
    assert _same_weights(second, _fresh(train, val, cfg, CamFlipConsistency(2.0), out=tmp_path / "fresh"))
    assert read_json(tmp_path / "run" / "key.json")["objective"] == {"name": "cam_flip", "lam": 2.0}


def test_changed_targets_start_over(tmp_path):
    """Same images, other targets (new pseudo labels): retrain, and the stale best.pt of
    the old targets is not what the model ends up holding."""
    train, val = _toy(64), _toy(32, seed=1)
    cfg = TrainConfig(epochs=1, **CFG)
    fit(_model(), train, val, cfg, out_dir=tmp_path / "run")
    relabelled = TensorData(train.images, 1 - train.targets)
    second = _fresh(relabelled, val, cfg, out=tmp_path / "run")
    assert _same_weights(second, _fresh(relabelled, val, cfg, out=tmp_path / "fresh"))
    assert not _same_weights(second, _fresh(train, val, cfg, out=tmp_path / "old"))


def test_changed_pretrained_weights_start_over(tmp_path):
    """The initial state dict is in the key: other pretrained weights retrain."""
    files = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        donor = build_model(ModelConfig(num_classes=2, input_size=32), verbose=False)
        files.append(tmp_path / f"weights{seed}.pth")
        torch.save(donor.state_dict(), files[-1])

    def pretrained(path):
        torch.manual_seed(0)
        return build_model(ModelConfig(num_classes=2, input_size=32, pretrained=str(path)), verbose=False)

    train = _toy(64)
    cfg = TrainConfig(epochs=1, **CFG)
    fit(pretrained(files[0]), train, None, cfg, out_dir=tmp_path / "run")
    second = _fresh(train, None, cfg, model=pretrained(files[1]), out=tmp_path / "run")
    assert _same_weights(second, _fresh(train, None, cfg, model=pretrained(files[1])))


def test_changed_device_resumes(tmp_path, capsys):
    """device is not in the key: a run moved to another device name resumes, and two
    epochs then one more equal three epochs in one go."""
    train, val = _toy(64), _toy(32, seed=1)
    fit(_model(), train, val, TrainConfig(epochs=2, device="cpu", **CFG), out_dir=tmp_path / "run")
    resumed = _model()
    fit(
        resumed,
        train,
        val,
        TrainConfig(epochs=3, device="cpu:0", **{**CFG, "progress": True}),
        out_dir=tmp_path / "run",
    )
    assert "resuming" in capsys.readouterr().out
    assert list(load_history(tmp_path / "run")["epoch"]) == [1, 2, 3]
    assert _same_weights(resumed, _fresh(train, val, TrainConfig(epochs=3, **CFG), out=tmp_path / "fresh"))


def test_unreadable_checkpoint_starts_over(tmp_path, capsys):
    """A torn or foreign last.pt is never loaded: the run starts over and says why."""
    (tmp_path / "last.pt").write_bytes(b"torn")
    torch.save({"fc.weight": torch.zeros(2, 512)}, tmp_path / "best.pt")
    train, val = _toy(64), _toy(32, seed=1)
    cfg = TrainConfig(epochs=1, **CFG)
    model = _fresh(train, val, cfg, out=tmp_path)
    assert "not a readable checkpoint" in capsys.readouterr().out
    assert _same_weights(model, _fresh(train, val, cfg, out=tmp_path / "fresh"))


def test_key_ingredients_written_beside_the_checkpoint(tmp_path):
    train, val = _toy(64), _toy(32, seed=1)
    fit(_model(), train, val, TrainConfig(epochs=1, **CFG), out_dir=tmp_path)
    key = read_json(tmp_path / "key.json")
    assert key["key"] == torch.load(tmp_path / "last.pt", weights_only=False)["key"]
    assert {"train_config", "train_data", "val_data", "objective", "initial_model"} <= set(key)
    assert key["objective"] == {"name": "ce"}
    for excluded in ("device", "progress", "eval_batch_size", "epochs"):
        assert excluded not in key["train_config"]


def test_training_key_covers_each_input():
    train, val = _toy(32), _toy(16, seed=1)
    cfg = TrainConfig(epochs=1, **CFG)
    base, _ = training_key(_model(), train, val, cfg, CrossEntropy())
    images = train.images.clone()
    images[0, 0, 0, 0] ^= 1  # one bit of one pixel
    variants = {
        "image byte": training_key(_model(), TensorData(images, train.targets), val, cfg, CrossEntropy()),
        "val targets": training_key(_model(), train, TensorData(val.images, 1 - val.targets), cfg, CrossEntropy()),
        "no val": training_key(_model(), train, None, cfg, CrossEntropy()),
        "objective": training_key(_model(), train, val, cfg, CamFlipConsistency(1.0)),
        "lr": training_key(_model(), train, val, TrainConfig(epochs=1, **{**CFG, "lr": 0.5}), CrossEntropy()),
        "init seed": training_key(
            build_model(ModelConfig(num_classes=2, input_size=32), verbose=False), train, val, cfg, CrossEntropy()
        ),
        "head": training_key(
            build_model(ModelConfig(num_classes=2, input_size=32, head="uncertainty"), verbose=False),
            train,
            val,
            cfg,
            CrossEntropy(),
        ),
        "dropout": training_key(_model_with(dropout=0.5), train, val, cfg, CrossEntropy()),
    }
    for name, (key, _) in variants.items():
        assert key != base, f"{name} does not change the training key"
    same = {
        "device": TrainConfig(epochs=1, device="cpu:0", **CFG),
        "epochs": TrainConfig(epochs=7, **CFG),
        "progress": TrainConfig(epochs=1, **{**CFG, "progress": True}),
        "eval batch": TrainConfig(epochs=1, eval_batch_size=3, **CFG),
    }
    for name, other in same.items():
        assert training_key(_model(), train, val, other, CrossEntropy())[0] == base, f"{name} changes the key"


def _model_with(**kw):
    torch.manual_seed(0)
    return build_model(ModelConfig(num_classes=2, input_size=32, **kw), verbose=False)


@pytest.mark.parametrize("head,params", [("uncertainty", {"embedding": 8}), ("branches", {"branches": 2, "width": 16})])
def test_every_head_trains_in_the_one_loop(head, params):
    """Heads plug into fit by name; predict reads logits and features as for the linear head."""
    torch.manual_seed(0)
    model = build_model(ModelConfig(num_classes=2, input_size=32, head=head, head_params=params), verbose=False)
    train = _toy(64)
    result = fit(model, train, None, TrainConfig(epochs=1, **CFG), CamFlipConsistency(1.0))
    assert np.isfinite(result.history["train_loss"]).all()
    pred = predict(model, train.images[:8], progress=False)
    assert pred.logits.shape == (8, 2) and pred.features.shape == (8, 512)


def test_objective_checks_the_model_before_training():
    """cam_flip needs class-activation maps: a model without them fails at once, by name."""

    class NoCam(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(3 * 32 * 32, 2)

        def forward(self, x):
            return self.fc(x.flatten(1))

    with pytest.raises(ValueError, match="cam_flip.*class-activation"):
        fit(NoCam(), _toy(8), None, TrainConfig(epochs=1, **CFG), CamFlipConsistency(1.0))


def test_tensor_digest_is_content_based():
    a = torch.arange(24, dtype=torch.uint8).reshape(2, 3, 2, 2)
    assert tensor_digest(a) == tensor_digest(a.clone())
    assert tensor_digest(a) == tensor_digest(a.to(memory_format=torch.channels_last))  # layout is not content
    assert tensor_digest(a) != tensor_digest(a.reshape(3, 2, 2, 2))  # shape is
    assert tensor_digest(a) != tensor_digest(a.long())  # dtype is
    assert tensor_digest(a, None) != tensor_digest(a)


def test_resume_on_another_kind_of_device_reseeds_augmentation(tmp_path, capsys):
    """A CUDA generator state cannot be set on a CPU generator: a checkpoint written on
    another device type resumes with a reseeded augmentation stream instead of failing."""
    train = _toy(64)
    cfg = TrainConfig(epochs=1, **{**CFG, "augment": AugmentConfig()})
    fit(_model(), train, None, cfg, out_dir=tmp_path)
    ckpt = torch.load(tmp_path / "last.pt", weights_only=False)
    ckpt.update(aug_device_type="cuda", aug_generator=torch.zeros(16, dtype=torch.uint8))  # a CUDA-sized state
    torch.save(ckpt, tmp_path / "last.pt")
    fit(
        _model(),
        train,
        None,
        TrainConfig(epochs=2, **{**CFG, "augment": AugmentConfig(), "progress": True}),
        out_dir=tmp_path,
    )
    out = capsys.readouterr().out
    assert "resuming" in out and "reseeded" in out
    assert list(load_history(tmp_path)["epoch"]) == [1, 2]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_run_started_on_gpu_resumes_on_cpu(tmp_path, capsys):
    """The device is not part of the key: epochs trained on a GPU are kept when the run moves
    to a CPU (and the augmentation stream is reseeded there, which the log says)."""
    train, val = _toy(64), _toy(32, seed=1)
    fit(_model(), train, val, TrainConfig(epochs=1, device="cuda", **CFG), out_dir=tmp_path)
    first = load_history(tmp_path).iloc[0].to_dict()
    capsys.readouterr()
    fit(_model(), train, val, TrainConfig(epochs=2, device="cpu", **{**CFG, "progress": True}), out_dir=tmp_path)
    assert "resuming" in capsys.readouterr().out
    hist = load_history(tmp_path)
    assert list(hist["epoch"]) == [1, 2]
    assert hist.iloc[0].to_dict() == first  # epoch 1 is the GPU's, not retrained


# ----------------------------------------------------------------------------- recipe switches


def _small():
    torch.manual_seed(0)
    return build_model(ModelConfig("smallface", num_classes=2, input_size=32), verbose=False)


def test_warmup_starts_small_and_run_length_schedules_end_at_zero():
    cfg = TrainConfig(lr=0.1, epochs=10, schedule="cosine", warmup_epochs=2)
    assert cfg.lr_at(0.0) < 0.01 * cfg.lr
    assert cfg.lr_at(1.0) == pytest.approx(0.05)
    assert cfg.lr_at(2.0) == pytest.approx(0.1)
    assert cfg.lr_at(6.0) == pytest.approx(0.05)  # cosine half way through the decay
    assert cfg.lr_at(10.0) == pytest.approx(0.0, abs=1e-12)
    one = TrainConfig(lr=0.1, epochs=10, schedule="onecycle", warmup_epochs=2)
    assert one.lr_at(6.0) == pytest.approx(0.05) and one.lr_at(10.0) == pytest.approx(0.0)
    # warm-up also ramps the per-epoch schedules; without it they are as before
    assert TrainConfig(lr=1.0, warmup_epochs=1).lr_at(0.5) == pytest.approx(0.5)
    assert TrainConfig(lr=1.0).lr_at(0.0) == 1.0


def test_run_length_schedules_key_the_epochs_others_do_not():
    assert "epochs" in TrainConfig(schedule="onecycle").key_fields()
    assert "epochs" not in TrainConfig().key_fields()
    # switches at their off value leave the key of the reference recipe as it was
    assert not {"optimizer", "momentum", "warmup_epochs", "label_smoothing", "ema_decay", "flip_tta"} & set(
        TrainConfig().key_fields()
    )
    on = TrainConfig(optimizer="sgd", warmup_epochs=1, label_smoothing=0.1, ema_decay=0.9, flip_tta=True)
    assert {"optimizer", "momentum", "warmup_epochs", "label_smoothing", "ema_decay", "flip_tta"} <= set(
        on.key_fields()
    )


@pytest.mark.parametrize(
    "field, value", [("optimizer", "lamb"), ("schedule", "step"), ("label_smoothing", 1.0), ("ema_decay", -0.1)]
)
def test_bad_recipe_settings_name_the_field(field, value):
    with pytest.raises(ValueError, match=field):
        TrainConfig(**{field: value})


def test_label_smoothing_changes_the_loss():
    """The loop's loss is smoothed cross-entropy, exactly (1 - eps) CE + eps * mean_k(-log p_k)."""
    from ferlib.train import _smoothed

    train = _toy(32)
    losses = {}
    for eps in (0.0, 0.2):
        cfg = TrainConfig(epochs=1, label_smoothing=eps, **CFG)
        losses[eps] = fit(_small(), train, None, cfg).history["train_loss"].iloc[0]
    assert losses[0.2] != pytest.approx(losses[0.0])
    logits, y = torch.randn(8, 5), torch.randint(0, 5, (8,))
    ce = torch.nn.functional.cross_entropy(logits, y)
    want = torch.nn.functional.cross_entropy(logits, y, label_smoothing=0.3)
    torch.testing.assert_close(_smoothed(ce, logits, y, 0.3), want)


def test_label_smoothing_refuses_an_objective_it_cannot_smooth():
    class Odd:
        def __call__(self, model, x, y, index):
            logits = model(x)
            return logits.pow(2).mean(), logits

    cfg = TrainConfig(epochs=1, label_smoothing=0.1, **CFG)
    with pytest.raises(ValueError, match="label_smoothing"):
        fit(_small(), _toy(8), None, cfg, objective=Odd())


def test_ema_weights_differ_from_raw_and_are_the_result(tmp_path):
    train, val = _toy(), _toy(32, seed=1)
    sgd = {**CFG, "lr": 0.05, "optimizer": "sgd"}
    seen = []
    model = _small()
    result = fit(
        model, train, val, TrainConfig(epochs=2, ema_decay=0.9, **sgd), out_dir=tmp_path, callbacks=[seen.append]
    )
    ckpt = torch.load(tmp_path / "last.pt", weights_only=False)
    name = "head.fc.weight"
    assert not torch.allclose(ckpt["ema"][name], ckpt["model"][name])  # the average is not the last step
    # best.pt and the returned model (hence predict) hold EMA weights, never the raw ones
    best = torch.load(tmp_path / "best.pt")
    assert seen[0].model is not model  # validated and handed to callbacks: the EMA copy
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, best[k])
    if result.best_epoch == 2:  # the last epoch was best: best.pt is the final EMA copy
        torch.testing.assert_close(best[name], ckpt["ema"][name])
    raw = _small()
    fit(raw, train, val, TrainConfig(epochs=2, **sgd))
    assert not torch.allclose(model.state_dict()[name], raw.state_dict()[name])


def test_ema_without_validation_returns_the_average():
    model = _small()
    cfg = TrainConfig(epochs=1, ema_decay=0.5, **CFG)
    seen = []
    fit(
        model,
        _toy(),
        None,
        cfg,
        callbacks=[lambda info: seen.append({k: v.clone() for k, v in info.model.state_dict().items()})],
    )
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, seen[-1][k])


def test_resume_with_ema_is_exact(tmp_path):
    """EMA, SGD-Nesterov, warm-up, one-cycle, smoothing, augmentation over 3 epochs:
    a run killed after epoch 1 and resumed equals an uninterrupted one."""
    train = _toy()
    base = {
        **CFG,
        "lr": 0.05,
        "optimizer": "sgd",
        "schedule": "onecycle",
        "warmup_epochs": 0.5,
        "ema_decay": 0.9,
        "label_smoothing": 0.1,
        "augment": AugmentConfig(),
    }

    class Stop(Exception):
        pass

    def stop_after_first(info):
        if info.epoch == 1:
            raise Stop

    a = _small()
    with pytest.raises(Stop):
        fit(a, train, None, TrainConfig(epochs=3, **base), out_dir=tmp_path / "a", callbacks=[stop_after_first])
    a = _small()
    fit(a, train, None, TrainConfig(epochs=3, **base), out_dir=tmp_path / "a")
    assert len(load_history(tmp_path / "a")) == 3
    b = _small()
    fit(b, train, None, TrainConfig(epochs=3, **base), out_dir=tmp_path / "b")
    last_a = torch.load(tmp_path / "a" / "last.pt", weights_only=False)
    last_b = torch.load(tmp_path / "b" / "last.pt", weights_only=False)
    for part in ("model", "ema"):
        for k, v in last_a[part].items():
            torch.testing.assert_close(v, last_b[part][k])
    for k, v in a.state_dict().items():
        torch.testing.assert_close(v, b.state_dict()[k])


def test_flip_tta_averages_the_mirror():
    model = _small().eval()
    images = _toy(6).images
    plain = predict(model, images, progress=False)
    mirror = predict(model, images, flip=True, progress=False)
    both = predict(model, images, tta=True, progress=False)
    torch.testing.assert_close(both.logits, (plain.logits + mirror.logits) / 2)
    torch.testing.assert_close(both.features, (plain.features + mirror.features) / 2)
    assert not torch.allclose(both.logits, plain.logits)


def test_sgd_optimizer_is_nesterov():
    from ferlib.train import _make_optimizer

    opt = _make_optimizer(_small(), TrainConfig(optimizer="sgd", momentum=0.8))
    assert isinstance(opt, torch.optim.SGD)
    assert opt.param_groups[0]["nesterov"] and opt.param_groups[0]["momentum"] == 0.8


def test_compiled_step_trains_like_the_eager_one_and_resumes(tmp_path, capsys, monkeypatch):
    """``compile`` runs the same step through torch.compile: same weights up to rounding,
    and it is not in the key, so an eager run resumes compiled (and says so).

    Dynamo captures the step and AOTAutograd traces its backward (backend ``aot_eager``);
    only inductor's C++ code generation is left out, to keep the test at seconds instead of
    a minute of compiling on two cores (benchmarks/train_throughput.py --compile runs it).
    """
    import functools

    calls = []

    def compile_eagerly(module, **kw):
        calls.append(type(module).__name__)
        return real_compile(module, **{**kw, "backend": "aot_eager"})

    real_compile = torch.compile
    monkeypatch.setattr(torch, "compile", functools.wraps(real_compile)(compile_eagerly))
    train = _toy(64)
    eager = _fresh(train, None, TrainConfig(epochs=2, **CFG))
    fit(_model(), train, None, TrainConfig(epochs=1, **CFG), out_dir=tmp_path / "run")
    compiled = _model()
    cfg = TrainConfig(epochs=2, compile=True, **{**CFG, "progress": True})
    fit(compiled, train, None, cfg, out_dir=tmp_path / "run")
    assert calls == ["_ObjectiveStep"]  # the whole objective step, compiled once
    assert "resuming" in capsys.readouterr().out
    for k, v in eager.state_dict().items():
        torch.testing.assert_close(compiled.state_dict()[k], v, rtol=1e-3, atol=1e-4)
    assert not _same_weights(compiled, _model())  # it trained


def test_amp_runs_bf16_on_the_cpu_and_trains(tmp_path):
    """``amp`` is bf16 autocast on the CPU too (it was ignored there before): the step's
    convolutions run in bf16, the loop still learns, predictions come back as float32 close to
    the fp32 ones, and the key says bf16, so a checkpoint of the fp32 era does not resume."""
    from ferlib.train import AMP_DTYPE, _autocast

    conv = torch.nn.Conv2d(3, 4, 3)
    x = torch.randn(2, 3, 8, 8)
    with _autocast(TrainConfig(amp=True, device="cpu")):
        assert conv(x).dtype == torch.bfloat16
    with _autocast(TrainConfig(amp=False, device="cpu")):
        assert conv(x).dtype == torch.float32

    assert TrainConfig(amp=True).key_fields()["amp"] == AMP_DTYPE == "bfloat16"
    assert TrainConfig(amp=False).key_fields()["amp"] is False
    train, val = _toy(), _toy(32, seed=1)
    cfg = TrainConfig(epochs=3, amp=True, **CFG)
    fp32_key = training_key(_model(), train, val, TrainConfig(epochs=3, **CFG), CrossEntropy())[0]
    assert training_key(_model(), train, val, cfg, CrossEntropy())[0] != fp32_key
    model = _model()
    fit(model, train, val, cfg, out_dir=tmp_path)
    assert load_history(tmp_path)["val_acc"].max() >= 0.9
    fp32 = predict(model, val.images, progress=False)
    bf16 = predict(model, val.images, progress=False, amp=True)
    assert bf16.logits.dtype == torch.float32 and bf16.features.dtype == torch.float32
    assert not torch.equal(bf16.logits, fp32.logits)  # bf16 arithmetic did run
    torch.testing.assert_close(bf16.logits, fp32.logits, atol=0.1, rtol=0.05)
    assert (bf16.logits.argmax(1) == fp32.logits.argmax(1)).float().mean() >= 0.95


def test_amp_on_a_cpu_without_native_bf16_says_it_is_slower(tmp_path, capsys, monkeypatch):
    import ferlib.train as train_module

    monkeypatch.setattr(train_module, "cpu_has_native_bf16", lambda: False)
    cfg = TrainConfig(epochs=1, amp=True, **{**CFG, "progress": True})
    fit(_model(), _toy(16), _toy(8, seed=1), cfg, out_dir=tmp_path)
    assert "emulates it, slower than fp32" in capsys.readouterr().out


def test_probes_write_their_shares_into_the_history_and_resume_with_it(tmp_path):
    """An agreement probe on the training rows with half their labels flipped: the share of
    flipped rows fit to the given label and of clean rows fit are history columns, each the
    share of the rows its targets count (-1 = not counted), kept across a resume."""
    train = _toy()
    flipped = torch.arange(len(train)) % 2 == 0
    given = torch.where(flipped, 1 - train.targets, train.targets)
    none = torch.full_like(given, -1)
    targets = {"flipped_given": torch.where(flipped, given, none), "clean_fit": torch.where(flipped, none, given)}
    probe = AgreementProbe(train.images, targets)
    model = _model()
    fit(model, train, None, TrainConfig(epochs=2, **CFG), out_dir=tmp_path, probes=[probe])
    fit(model, train, None, TrainConfig(epochs=3, **CFG), out_dir=tmp_path, probes=[probe])
    hist = load_history(tmp_path)
    assert list(hist["epoch"]) == [1, 2, 3] and hist[["flipped_given", "clean_fit"]].notna().all().all()
    pred = predict(model, train.images, progress=False).logits.argmax(1)
    assert hist["flipped_given"].iloc[-1] == pytest.approx((pred[flipped] == given[flipped]).float().mean().item())
    assert hist["clean_fit"].iloc[-1] == pytest.approx((pred[~flipped] == given[~flipped]).float().mean().item())
    with pytest.raises(ValueError, match="targets 'x' have shape"):
        AgreementProbe(train.images, {"x": given[:3]})
