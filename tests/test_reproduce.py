"""``reproduce``: the plan (runs, settings, estimate) is made before any work, a budget too
small refuses to start, and the sweep it starts carries the engine and the table's detectors."""

from __future__ import annotations

import pytest

from ferlib import reproduce as rep
from ferlib import run as runner
from ferlib.emotions import BASIC7
from ferlib.noisy import METHODS, default_noise


def test_openset_plan_and_budget(tmp_path):
    said: list[str] = []
    plan = rep.reproduce(
        "openset", "synthetic", seeds=[0, 1], engine="quick", outputs=tmp_path, dry_run=True, say=said.append
    )
    assert plan.runs == len(BASIC7) * 2 and plan.engine == "quick" and plan.minutes > 0
    assert "rough estimate" in plan.basis and any("engine quick" in line for line in said)
    with pytest.raises(ValueError, match="over --budget-minutes 1"):
        rep.reproduce(
            "openset", "synthetic", seeds=[0], engine="quick", outputs=tmp_path, budget_minutes=1, say=said.append
        )


def test_estimate_uses_finished_runs(tmp_path):
    run = tmp_path / "synthetic_open-fear_seed0"
    run.mkdir()
    stages = {"01_x": {"status": "finished", "wall_s": 600}, "03_detect": {"status": "finished", "wall_s": 600}}
    (run / "manifest.json").write_text(__import__("json").dumps({"stages": stages}))
    minutes, basis = rep.estimate("openset", "synthetic", 7, 1, "quick", "cpu", tmp_path, 1000)
    assert minutes == pytest.approx(6 * 20.0) and "1 finished runs" in basis


def test_openset_runs_the_sweep_with_engine_and_detectors(tmp_path, monkeypatch):
    calls = {}
    monkeypatch.setattr(runner, "run_sweep", lambda dataset, **kw: calls.update(kw, dataset=dataset))
    monkeypatch.setattr("ferlib.report.collect_results", lambda runs, out_dir: calls.update(tables=(runs, out_dir)))
    rep.reproduce(
        "openset",
        "synthetic",
        seeds=[3],
        engine="quick",
        outputs=tmp_path,
        extra={"epochs": 2},
        records="docs/results/x",
        say=lambda m: None,
    )
    assert calls["records"] == "docs/results/x"
    extra = calls["extra"]
    assert calls["open_classes"] == ["all"] and calls["seeds"] == [3] and calls["stages"] == ["01", "02", "03"]
    assert extra["epochs"] == 2 and extra["input_size"] == 32  # explicit over engine
    assert extra["detectors"] == list(rep.OPENSET_DETECTORS) and "embed_method" not in extra
    assert extra["detector_params"]["cycle"]["cycles"] == 1
    assert calls["tables"][1] == tmp_path / "tables"


def test_noisy_plan_counts_the_grid(tmp_path):
    plan = rep.reproduce(
        "noisy", "ferplus", seeds=[0, 1, 2], engine="scratch", outputs=tmp_path, dry_run=True, say=print
    )
    assert plan.runs == len(METHODS) * len(default_noise("ferplus")) * 3


def test_noisy_takes_the_face_engine_with_its_weights(tmp_path, monkeypatch):
    """Stage 05 passes ``pretrained`` to every run's stage 01: the face engine reaches it whole."""
    monkeypatch.setattr("ferlib.engines.face_weights_installed", lambda: True)
    calls = {}
    monkeypatch.setattr(runner, "run_pipeline", lambda dataset, **kw: calls.update(kw))
    rep.reproduce("noisy", "ferplus", engine="face", outputs=tmp_path, records=tmp_path / "rec", say=print)
    assert calls["stages"] == ["05"] and calls["extra"]["pretrained"] == "dlibface"
    assert calls["extra"]["records_dir"] == str(tmp_path / "rec")  # stage 05's combination records
    assert calls["extra"]["arch"] == "dlibface" and calls["extra"]["input_size"] == 112


def test_unknown_table():
    with pytest.raises(ValueError, match="choose openset or noisy"):
        rep.reproduce("closed", "synthetic", dry_run=True)


def test_command_line(tmp_path, capsys):
    base = ["reproduce", "openset", "--dataset", "synthetic", "--outputs", str(tmp_path), "--quick", "--seeds", "0"]
    assert runner.main([*base, "--dry-run"]) == 0
    assert "reproduce openset: 7 runs" in capsys.readouterr().out
    assert runner.main([*base, "--budget-minutes", "0.5"]) == 2
    assert "over --budget-minutes" in capsys.readouterr().err
    assert not any(tmp_path.iterdir())  # refused before any work


def test_each_engine_has_its_own_default_folder(monkeypatch):
    """A face-engine plan must not re-run (and overwrite) a scratch plan's finished runs."""
    monkeypatch.setattr("ferlib.engines.face_weights_installed", lambda: True)
    quick = rep.reproduce("openset", "synthetic", engine="quick", dry_run=True, say=lambda m: None)
    scratch = rep.reproduce("openset", "synthetic", engine="scratch", dry_run=True, say=lambda m: None)
    assert quick.outputs != scratch.outputs and quick.outputs.name.endswith("_quick")


def test_finished_runs_are_counted_from_their_manifests(tmp_path):
    """A run counts as done when its manifest says stage 03 finished; a killed one does not."""
    import json

    for name, status in (("synthetic_open-fear_seed0", "finished"), ("synthetic_open-anger_seed0", "running")):
        (tmp_path / name).mkdir()
        stages = {"01_train_close_set": {"status": "finished", "wall_s": 60}, "03_detect_open_set": {"status": status}}
        (tmp_path / name / "manifest.json").write_text(json.dumps({"stages": stages}))
    said: list[str] = []
    plan = rep.reproduce(
        "openset", "synthetic", seeds=[0], engine="quick", outputs=tmp_path, dry_run=True, say=said.append
    )
    assert "1 already finished" in said[-1] and plan.minutes == pytest.approx(6 * 1.0)
