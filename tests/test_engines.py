"""Engines: the stage defaults are the recommended engine, ``auto`` follows the measured
rule, explicit values always win, and every engine's values pass the stages' own checks."""

from __future__ import annotations

import inspect

import pytest

from ferlib import engines, noisy, report, stages
from ferlib.engines import ENGINES, FACE_MAX_TRAIN, apply_engine, choose_engine, resolve_engine
from ferlib.openset.registry import validate_detectors
from ferlib.params import validate_arguments


def _defaults(func) -> dict:
    return {n: p.default for n, p in inspect.signature(func).parameters.items()}


def test_stage_defaults_are_the_scratch_engine():
    """A notebook or a direct call without arguments gets the recommended engine; a change to
    either side without the other fails here (one list, kept in step by this test)."""
    first, second, third = (
        _defaults(stages.train_close_set),
        _defaults(stages.predict_pseudo_labels),
        _defaults(stages.detect_open_set),
    )
    for key, value in ENGINES["scratch"].params.items():
        assert first[key] == value, key
        if key in second:
            assert second[key] == value, key
        if key in third:
            assert third[key] == value, key


def test_notebook_run_dirs_are_their_own():
    """No notebook writes into the demo's or the noisy benchmark's run by default."""
    for func in (stages.train_close_set, stages.predict_pseudo_labels, stages.detect_open_set, report.visualise):
        assert _defaults(func)["run_dir"] == "outputs/lab"
    assert _defaults(noisy.noisy_label_benchmark)["run_dir"] == "outputs/lab_noisy"


def test_pseudo_oe_runs_by_default():
    assert "pseudo_oe" in stages.DEFAULT_DETECTORS


@pytest.mark.parametrize("name", sorted(ENGINES))
def test_engine_values_pass_the_stage_checks(name, monkeypatch):
    monkeypatch.setattr(engines, "face_weights_installed", lambda: True)
    engine = ENGINES[name]
    merged = apply_engine(engine, {})
    for func in (stages.train_close_set, stages.predict_pseudo_labels, stages.detect_open_set):
        accepted = set(inspect.signature(func).parameters)
        validate_arguments(func, {k: v for k, v in merged.items() if k in accepted})
    validate_detectors(list(stages.DEFAULT_DETECTORS), merged.get("detector_params"))


def test_auto_rule():
    assert choose_engine("synthetic", 500, True)[0] == "scratch"
    assert choose_engine("ferplus", 28_217, True)[0] == "scratch"
    assert choose_engine("rafdb", FACE_MAX_TRAIN, True)[0] == "face"
    assert choose_engine("rafdb", FACE_MAX_TRAIN + 1, True)[0] == "scratch"
    assert choose_engine("rafdb", 1_000, False)[0] == "scratch"
    assert choose_engine("rafdb", None, True)[0] == "scratch"
    name, reason = choose_engine("folders", 2_000, True)
    assert name == "face" and "2,000" in reason


def test_auto_counts_the_training_split(tmp_path, monkeypatch):
    """``auto`` reads the listing of the user's folder (nothing decoded) and decides by its size."""
    from PIL import Image

    for split, n in (("train", 3), ("valid", 1), ("test", 1)):
        for cls in ("happy", "sad"):
            folder = tmp_path / split / cls
            folder.mkdir(parents=True)
            for i in range(n):
                Image.new("L", (8, 8), color=i * 20).save(folder / f"{i}.png")
    assert engines.count_training_images("folders", str(tmp_path)) == 6
    assert engines.count_training_images("folders", str(tmp_path), {"max_train": 4}) == 4  # what is trained on
    monkeypatch.setattr(engines, "face_weights_installed", lambda: True)
    engine, reason = resolve_engine("auto", "folders", str(tmp_path))
    assert engine.name == "face" and "6 training images" in reason
    monkeypatch.setattr(engines, "FACE_MAX_TRAIN", 5)
    engine, reason = resolve_engine("auto", "folders", str(tmp_path))
    assert engine.name == "scratch" and "above 5" in reason


def test_face_engine_needs_the_weights(monkeypatch):
    monkeypatch.setattr(engines, "face_weights_installed", lambda: False)
    with pytest.raises(ValueError, match=r"\.\[face\]"):
        resolve_engine("face", "ferplus")
    with pytest.raises(ValueError, match="unknown engine 'fast'"):
        resolve_engine("fast", "ferplus")


def test_explicit_values_win_and_detector_params_merge():
    quick = ENGINES["quick"]
    merged = apply_engine(quick, {"epochs": 2, "detector_params": {"cycle": {"lam": 0.0}, "tknn": {"k": 5}}})
    assert merged["epochs"] == 2 and merged["input_size"] == 32
    assert merged["detector_params"]["cycle"] == {"arch": "smallface", "cycles": 1, "epochs_per_cycle": 2, "lam": 0.0}
    assert merged["detector_params"]["tknn"] == {"k": 5}
    assert merged["detector_params"]["contrast"]["epochs"] == 2
    only01 = apply_engine(quick, {}, accepted={"arch", "epochs"})
    assert set(only01) == {"arch", "epochs"}


# ----------------------------------------------------------------------------- the runner's engine

SEEN: dict[str, dict] = {}


def _train(
    dataset: str = "synthetic",
    data_root: str | None = None,
    run_dir: str = "outputs/run",
    arch: str = "smallface_deep",
    input_size: int = 48,
    epochs: int = 40,
    recipe: str = "fast_affine",
    pretrained: str | None = None,
) -> None:
    SEEN["train"] = {
        "arch": arch,
        "input_size": input_size,
        "epochs": epochs,
        "recipe": recipe,
        "pretrained": pretrained,
    }


def _detect(run_dir: str = "outputs/run", detector_params: dict | None = None) -> None:
    SEEN["detect"] = {"detector_params": detector_params}


def _noisy(
    run_dir: str = "outputs/run", arch: str = "smallface", epochs: int = 10, detector_params: dict | None = None
) -> None:
    SEEN["noisy"] = {"arch": arch, "epochs": epochs, "detector_params": detector_params}


def _table():
    from ferlib.run import Stage

    return (
        Stage("01_t", notebook="nb/01.ipynb", func=_train),
        Stage("03_d", notebook="nb/03.ipynb", func=_detect),
        Stage("05_n", notebook="nb/05.ipynb", func=_noisy, standalone=True),
    )


def _cli(tmp_path, *args: str) -> int:
    from ferlib.run import main

    argv = ["pipeline", "--dataset", "synthetic", "--executor", "python", "--outputs", str(tmp_path), *args]
    return main(argv, stage_table=_table(), repo_root=tmp_path)


def test_quick_reaches_every_stage_and_the_manifest(tmp_path):
    import json

    assert _cli(tmp_path, "--quick", "--run", "q", "-p", "epochs=2") == 0
    assert SEEN["train"] == {"arch": "smallface", "input_size": 32, "epochs": 2, "recipe": "fast", "pretrained": None}
    assert SEEN["detect"]["detector_params"]["cycle"]["cycles"] == 1
    manifest = json.loads((tmp_path / "q" / "manifest.json").read_text())
    assert manifest["engine"]["name"] == "quick" and manifest["params"]["input_size"] == 32


def test_the_engines_detector_settings_stay_out_of_the_noisy_label_stage(tmp_path):
    """They configure stage 03's network detectors; stage 05's scores refuse those detectors."""
    assert _cli(tmp_path, "--quick", "--run", "n", "--stages", "05") == 0
    assert SEEN["noisy"]["epochs"] == ENGINES["quick"].params["epochs"] and SEEN["noisy"]["detector_params"] is None
    assert _cli(tmp_path, "--quick", "--run", "n2", "--stages", "03", "05") != 2
    assert SEEN["detect"]["detector_params"]["cycle"]["cycles"] == 1


def test_auto_is_scratch_on_synthetic_and_steps_aside_for_an_explicit_network(tmp_path):
    assert _cli(tmp_path, "--run", "a") == 0
    assert SEEN["train"]["arch"] == "smallface_deep" and SEEN["train"]["epochs"] == 40
    assert _cli(tmp_path, "--run", "b", "-p", "arch=smallface") == 0
    assert SEEN["train"] == {
        "arch": "smallface",
        "input_size": 48,
        "epochs": 40,
        "recipe": "fast_affine",
        "pretrained": None,
    }


def test_face_engine_cannot_reach_a_stage_without_weights(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(engines, "face_weights_installed", lambda: True)
    assert _cli(tmp_path, "--engine", "face", "--run", "f", "--stages", "05") == 2
    assert "cannot load" in capsys.readouterr().err
    monkeypatch.setattr(engines, "face_weights_installed", lambda: False)
    assert _cli(tmp_path, "--engine", "face", "--run", "g") == 2
    assert ".[face]" in capsys.readouterr().err


def test_face_engine_detectors_start_from_face_weights():
    """Under the face engine the paper's method trains from the face weights, with a spatial
    attention map to be consistent about (dlibface_l1: 3x3 at 112 px)."""
    import torch

    from ferlib.models import ModelConfig, build_model

    params = apply_engine(ENGINES["face"], {})["detector_params"]
    assert params["cycle"] == {"arch": "dlibface_l1", "pretrained": "dlibface"}
    pytest.importorskip("face_recognition_models")
    cfg = params["cycle"]
    model = build_model(ModelConfig(cfg["arch"], 2, 112, pretrained=cfg["pretrained"]), verbose=False).eval()
    with torch.no_grad():
        out = model.forward_all(torch.zeros(2, 3, 112, 112))
    assert out.logits.shape == (2, 2) and out.feature_map.shape[-2:] == (3, 3)
