"""Named training recipes: what they hold, and that names and fields are checked up front."""

import pytest

from ferlib.params import ParameterError, validate_arguments
from ferlib.recipes import RECIPE_FIELDS, RECIPES, available_recipes, recipe_settings, train_config
from ferlib.stages import _recipe, train_close_set
from ferlib.train import TrainConfig


def test_reference_is_todays_defaults():
    default = TrainConfig()
    settings = recipe_settings("reference")
    assert settings["augment"] == {}  # the papers' policy, as overrides
    assert {f: settings[f] for f in RECIPE_FIELDS if f != "augment"} == {
        f: getattr(default, f) for f in RECIPE_FIELDS if f != "augment"
    }
    assert TrainConfig(**settings) == default
    assert train_config("reference", epochs=3).key_fields() == TrainConfig(epochs=3).key_fields()


def test_fast_switches_every_recipe_setting_on():
    fast = recipe_settings("fast")
    assert fast["optimizer"] == "sgd" and fast["schedule"] == "onecycle"
    assert fast["warmup_epochs"] > 0 and fast["label_smoothing"] > 0 and fast["ema_decay"] > 0 and fast["flip_tta"]


def test_every_recipe_is_complete_and_valid():
    for name in available_recipes():
        assert set(RECIPES[name]) == set(RECIPE_FIELDS)
        TrainConfig(**recipe_settings(name))


def test_recipe_params_override_single_fields():
    settings = recipe_settings("fast", {"ema_decay": 0.0})
    assert settings["ema_decay"] == 0.0 and settings["label_smoothing"] == RECIPES["fast"]["label_smoothing"]


@pytest.mark.parametrize(
    "name, params, words",
    [
        ("quick", None, ["recipe must be one of", "fast", "reference"]),
        ("fast", {"emma_decay": 0.9}, ["'emma_decay'", "ema_decay", "label_smoothing"]),
        ("fast", {"epochs": 3}, ["'epochs'", "recipe_params accepted"]),
        ("fast", {"optimizer": "lamb"}, ["optimizer", "adam, adamw, sgd"]),
        ("fast", {"label_smoothing": "0.1"}, ["label_smoothing", "float"]),
        ("reference", {"ema_decay": 1.5}, ["ema_decay"]),
    ],
)
def test_bad_recipe_names_the_choices(name, params, words):
    with pytest.raises(ValueError) as err:
        recipe_settings(name, params)
    for word in words:
        assert word in str(err.value)


def test_stage_validates_recipe_before_any_work():
    validate_arguments(train_close_set, {"recipe": "fast", "recipe_params": {"ema_decay": 0.0}})
    choices = "face, face_frozen, fast, fast_affine, reference"
    with pytest.raises(ParameterError, match=f"train_close_set: recipe must be one of {choices}"):
        validate_arguments(train_close_set, {"recipe": "quick"})
    with pytest.raises(ParameterError, match="recipe_params accepted"):
        validate_arguments(train_close_set, {"recipe": "fast", "recipe_params": {"lr_max": 1.0}})
    with pytest.raises(ParameterError, match="given both"):
        validate_arguments(train_close_set, {"recipe": "fast", "lr": 0.1, "recipe_params": {"lr": 0.2}})


def test_stage_lr_overrides_the_recipe_and_none_keeps_it():
    assert _recipe("fast", None, lr=None, weight_decay=None, lr_gamma=None)["lr"] == RECIPES["fast"]["lr"]
    assert _recipe("fast", None, lr=0.01, weight_decay=None, lr_gamma=None)["lr"] == 0.01


def test_recipe_fields_stay_out_of_the_stage_settings():
    with pytest.raises(ValueError, match="recipe_params"):
        train_config("fast", lr=0.1)


def test_stage_01_trains_smallface_with_a_recipe_and_records_it(tmp_path):
    from ferlib.data.synthetic import SyntheticConfig, write_synthetic
    from ferlib.io import read_json
    from ferlib.stages import _close_model

    root = write_synthetic(tmp_path / "synthetic", SyntheticConfig(n_train=140, n_valid=28, n_test=56, seed=0))
    run = tmp_path / "run"
    train_close_set(
        dataset="synthetic",
        data_root=str(root),
        run_dir=str(run),
        cache_dir=None,
        input_size=32,
        epochs=1,
        batch_size=32,
        arch="smallface",
        recipe="fast",
        recipe_params={"ema_decay": 0.9},
        progress=False,
    )
    results = read_json(run / "01_close_set" / "results.json")
    assert results["arch"] == "smallface" and results["recipe"] == "fast"
    assert results["recipe_settings"]["ema_decay"] == 0.9 and results["recipe_settings"]["optimizer"] == "sgd"
    key = read_json(run / "01_close_set" / "key.json")
    assert key["train_config"]["ema_decay"] == 0.9 and key["train_config"]["epochs"] == 1  # one-cycle: keyed
    model = _close_model(str(run), "smallface", 32, len(results["class_names"]), "cpu")
    assert model.trunk.out_channels == 256
    # stage 02 predicts as stage 01 tested: with the recipe's flip test-time augmentation
    import numpy as np
    import torch

    from ferlib.stages import load_splits, predict_pseudo_labels
    from ferlib.train import predict

    table = predict_pseudo_labels(
        dataset="synthetic",
        data_root=str(root),
        open_class="surprise",
        run_dir=str(run),
        cache_dir=None,
        input_size=32,
        arch="smallface",
        progress=False,
    )
    s = load_splits("synthetic", str(root), "surprise", 32, None)
    rows = torch.as_tensor(s.split.eval_test_index[:8])
    with_tta = predict(model, s.test.images[rows], progress=False, tta=True).logits.numpy()
    without = predict(model, s.test.images[rows], progress=False, tta=False).logits.numpy()
    logits = table[[c for c in table.columns if c.startswith("logit_")]].to_numpy()[:8]
    assert not np.allclose(with_tta, without)
    np.testing.assert_allclose(logits, with_tta, rtol=1e-4, atol=1e-4)


def test_fast_affine_is_fast_plus_a_warp_and_augment_overrides_merge():
    warp = recipe_settings("fast_affine")
    assert {k: v for k, v in warp.items() if k != "augment"} == {
        k: v for k, v in recipe_settings("fast").items() if k != "augment"
    }
    cfg = TrainConfig(**warp)
    assert cfg.augment.affine_p == 1.0 and cfg.augment.rotate_deg > 0 and cfg.augment.scale == (0.9, 1.1)
    # one field overridden, the recipe's others kept
    merged = recipe_settings("fast_affine", {"augment": {"rotate_deg": 5.0}})["augment"]
    assert merged["rotate_deg"] == 5.0 and merged["affine_p"] == 1.0
    # the warp enters the training key; the papers' policy keeps keys written before it existed
    assert "affine_p" in cfg.key_fields()["augment"]
    assert "affine_p" not in TrainConfig(**recipe_settings("fast")).key_fields()["augment"]


@pytest.mark.parametrize(
    "augment, words",
    [
        ({"rotate": 5}, ["'rotate'", "rotate_deg"]),
        ({"affine_p": 2.0}, ["affine_p", "[0, 1]"]),
        ([1], ["augment", "dict"]),
    ],
)
def test_bad_augment_overrides_name_the_field(augment, words):
    with pytest.raises(ValueError) as info:
        recipe_settings("fast", {"augment": augment})
    assert all(w in str(info.value) for w in words), str(info.value)
