"""Stage 05, the noisy-label benchmark: a tiny end-to-end run (2 methods x 2 noise settings x
1 seed x 1 epoch on a tiny synthetic set, about 10 s on 2 cores), its tables, figures and
manifest; a re-run that skips finished combinations and one that resumes a killed one;
names and values refused before any training; the runner's handling of a standalone stage."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ferlib import noisy
from ferlib.data.synthetic import SyntheticConfig, write_synthetic
from ferlib.io import read_json
from ferlib.params import ParameterError

METHODS = ["rul", "esr_div"]
NOISE = [None, {"kind": "symmetric", "rate": 0.3}]


def _params(base: Path, root: Path, **changes) -> dict:
    params = dict(
        dataset="synthetic",
        data_root=str(root),
        run_dir=str(base / "run"),
        methods=METHODS,
        noise=NOISE,
        seeds=[0],
        epochs=1,
        batch_size=16,
        input_size=32,
        cache_dir=str(base / "cache"),
        attention_images=2,
        progress=False,
    )
    params.update(changes)
    return params


@pytest.fixture(scope="module")
def bench(module_tmp):
    base = module_tmp
    root = write_synthetic(base / "synthetic", SyntheticConfig(n_train=70, n_valid=14, n_test=28, seed=0))
    summary = noisy.noisy_label_benchmark(**_params(base, root))
    return base, root, summary


def _folder(base: Path, method: str, tag: str, seed: int = 0) -> Path:
    return base / "run" / noisy.FOLDER / method / tag / f"seed{seed}"


def _never(*args, **kwargs):
    raise AssertionError("trained although nothing should be")


def _refuse_training(monkeypatch) -> None:
    """Stage 01 (with its own signature, from which the runs' keys come) fails if called."""
    monkeypatch.setattr(noisy, "train_close_set", functools.wraps(noisy.train_close_set)(_never))


def test_results_rows_and_columns(bench):
    base, _, summary = bench
    out = base / "run" / noisy.FOLDER
    results = pd.read_csv(out / "results.csv")
    assert list(results.columns) == list(noisy.RESULT_COLUMNS)
    assert len(results) == 4
    assert set(zip(results["method"], results["noise"])) == {
        (m, t) for m in METHODS for t in ("clean", "symmetric-0.3")
    }
    noisy_rows = results[results["noise"] == "symmetric-0.3"]
    assert (noisy_rows["kind"] == "symmetric").all() and (noisy_rows["rate"] == 0.3).all()
    assert np.allclose(noisy_rows["measured_rate"], 0.3)  # 21 of 70 training labels
    clean = results[results["noise"] == "clean"]
    assert (clean["kind"] == "clean").all() and (clean["measured_rate"] == 0).all()
    assert results["test_acc"].between(0, 1).all() and (results["best_epoch"] == 1).all()
    assert (results["train_seconds"] > 0).all() and (results["seed"] == 0).all()
    assert dict(zip(results["method"], results["objective"])) == {"rul": "rul", "esr_div": "ensemble"}
    for folder in results["folder"]:
        assert (base / "run" / folder / "01_close_set" / "results.json").is_file()

    stored = pd.read_csv(out / "summary.csv")
    assert len(stored) == 4 and stored["n_seeds"].eq(1).all()
    assert {"test_acc_mean", "test_acc_std", "measured_rate_mean"} <= set(stored.columns)
    pd.testing.assert_frame_equal(stored, summary, check_dtype=False)


def test_each_run_is_a_stage_01_run_with_its_noise(bench):
    base, _, _ = bench
    stage01 = read_json(_folder(base, "esr_div", "symmetric-0.3") / "01_close_set" / "results.json")
    assert stage01["head"] == "branches" and stage01["objective"] == "ensemble"
    assert stage01["objective_params"]["diversity"] == noisy.DIVERSITY_WEIGHT
    assert stage01["label_noise"]["kind"] == "symmetric" and stage01["label_noise"]["n_flipped_train"] == 21
    assert len(stage01["class_names"]) == 7  # open_class None: every class
    assert not (_folder(base, "rul", "clean") / "01_close_set" / "label_noise.npz").exists()


def test_noisy_label_detection_and_figures(bench):
    base, _, _ = bench
    out = base / "run" / noisy.FOLDER
    detection = pd.read_csv(out / "detection.csv")
    found = set(zip(detection["method"], detection["detector"]))
    assert found == {
        ("rul", "small_loss"),
        ("rul", "uncertainty"),
        ("esr_div", "small_loss"),
        ("esr_div", "disagreement"),
    }
    assert (detection["noise"] == "symmetric-0.3").all()  # a clean run has no flipped label to find
    assert detection["auroc"].between(0, 1).all() and (detection["n_flipped"] == 21).all()

    z = np.load(_folder(base, "rul", "symmetric-0.3") / noisy.FLIP_SCORES)
    noise = np.load(_folder(base, "rul", "symmetric-0.3") / "01_close_set" / "label_noise.npz")
    np.testing.assert_array_equal(z["train_rows"], noise["train_rows"])
    np.testing.assert_array_equal(z["flipped"], noise["train_flipped"])
    assert z["score_uncertainty"].shape == z["flipped"].shape and (z["score_uncertainty"] > 0).all()
    from ferlib.metrics import openset_metrics

    row = detection[(detection["method"] == "rul") & (detection["detector"] == "uncertainty")].iloc[0]
    assert row["auroc"] == pytest.approx(openset_metrics(z["score_uncertainty"], z["flipped"])["auroc"])

    a = np.load(_folder(base, "esr_div", "clean") / noisy.ATTENTION)
    assert a["attention"].shape[:2] == (2, 4) and a["images"].shape[0] == 2  # 2 images, 4 branches
    assert list(a["target"]) == [0, 1]  # one image per class first
    assert not (_folder(base, "rul", "clean") / noisy.ATTENTION).exists()  # RUL's head has no attention

    names = {
        "accuracy_vs_noise",
        "memorisation",
        "flip_small_loss_rul",
        "flip_small_loss_esr_div",
        "flip_uncertainty_rul",
        "flip_disagreement_esr_div",
        "attention_esr_div_clean",
        "attention_esr_div_symmetric-0.3",
    }
    for name in names:
        for suffix in ("png", "pdf"):
            assert (out / "figures" / f"{name}.{suffix}").stat().st_size > 0

    manifest = read_json(base / "run" / "manifest.json")["noisy_labels"]
    assert list(manifest["methods"]) == METHODS and manifest["seeds"] == [0]
    assert list(manifest["noise"]) == ["clean", "symmetric-0.3"] and manifest["runs"] == 4
    assert manifest["label_smoothing_note"] is None


def test_rerun_skips_finished_combinations(bench, monkeypatch, capsys):
    base, root, summary = bench
    checkpoints = sorted((base / "run" / noisy.FOLDER).rglob("last.pt"))
    assert len(checkpoints) == 4
    before = {p: p.stat().st_mtime_ns for p in checkpoints}
    _refuse_training(monkeypatch)
    monkeypatch.setattr(noisy, "_analyse", _never)
    again = noisy.noisy_label_benchmark(**_params(base, root))
    pd.testing.assert_frame_equal(again, summary)
    assert {p: p.stat().st_mtime_ns for p in checkpoints} == before
    assert capsys.readouterr().out.count("finished, skipped") == 4


def test_a_killed_combination_resumes_without_retraining(bench, capsys):
    """A combination without its record (killed after training, before the record) runs
    again: stage 01 resumes from its finished checkpoint (no epoch), the analysis is redone."""
    base, root, _ = bench
    folder = _folder(base, "rul", "symmetric-0.3")
    record = read_json(folder / noisy.RECORD)
    (folder / noisy.RECORD).unlink()
    last = folder / "01_close_set" / "last.pt"
    stamp = last.stat().st_mtime_ns
    history = (folder / "01_close_set" / "history.csv").read_text()
    noisy.noisy_label_benchmark(**_params(base, root))
    out = capsys.readouterr().out
    assert out.count("finished, skipped") == 3 and "rul / symmetric-0.3 / seed 0: training" in out
    assert last.stat().st_mtime_ns == stamp and (folder / "01_close_set" / "history.csv").read_text() == history
    assert read_json(folder / noisy.RECORD) == record


@pytest.mark.parametrize(
    "changes, words",
    [
        ({"methods": ["ce", "sgd"]}, "unknown 'sgd'; choose from ce, rul, esr, esr_div, manet, manet_div"),
        ({"methods": ["ce", "ce"]}, "names ce more than once"),
        ({"method_params": {"esr": {"objective": "ce"}}}, "has no key 'objective'"),
        ({"method_params": {"nope": {}}}, "unknown method 'nope'"),
        ({"method_params": {"esr": {"head_params": {"branchez": 2}}}}, "branchez"),
        ({"noise": [{"kind": "symmetric", "rate": 0.2, "sed": 1}]}, "no key 'sed'"),
        ({"noise": [{"kind": "gaussian", "rate": 0.2}]}, "kind must be one of symmetric, pair, annotator"),
        ({"noise": [{"kind": "annotator"}]}, "annotator votes, which data set 'synthetic' has not"),
        ({"noise": [None, None]}, "repeats the setting(s) clean"),
        ({"noise": []}, "non-empty list"),
        ({"seeds": []}, "seeds must be a non-empty list"),
        ({"seeds": [0, 0]}, "repeat a seed"),
        ({"detectors": ["knn"]}, "fits on data or trains networks"),
        ({"detectors": ["msq"]}, "msq"),
        ({"attention_images": -1}, "attention_images must be an integer >= 0"),
        ({"epochs": 0}, "epochs=0"),
        (
            {"recipe": "fast", "recipe_params": {"label_smoothing": 0.1}},
            "methods rul, esr_div train objectives that refuse label smoothing",
        ),
    ],
)
def test_bad_names_and_values_are_refused_before_any_training(tmp_path, monkeypatch, changes, words):
    _refuse_training(monkeypatch)
    params = _params(tmp_path, tmp_path / "no-data", **changes)
    with pytest.raises(ParameterError) as info:
        noisy.noisy_label_benchmark(**params)
    assert words in str(info.value)
    assert not (tmp_path / "run").exists()


def test_plan_defaults_recipe_and_keys(tmp_path):
    args = _defaults(run_dir=str(tmp_path))
    plan = noisy.plan_benchmark(args)
    assert list(plan.methods) == ["ce", "rul", "esr", "esr_div", "manet", "manet_div"]
    assert [t for t, _ in plan.noise] == ["clean", "symmetric-0.1", "symmetric-0.2", "symmetric-0.3", "pair-0.2"]
    assert len(plan.combinations) == 6 * 5 * 3 and len({c.key for c in plan.combinations}) == 90
    assert [t for t, _ in noisy.plan_benchmark({**args, "dataset": "ferplus"}).noise][-1] == "annotator"
    first = plan.combinations[0]
    assert first.stage01["open_class"] is None and first.folder == tmp_path / noisy.FOLDER / "ce" / "clean" / "seed0"
    assert [c.seed for c in plan.combinations[:30]] == [0] * 30  # seed outermost

    fast = noisy.plan_benchmark({**args, "recipe": "fast"})
    assert fast.recipe_params == {"label_smoothing": 0.0}
    assert "label_smoothing=0 for every method" in fast.smoothing_note
    smooth = {"recipe": "fast", "methods": ["ce"], "recipe_params": {"label_smoothing": 0.1}}
    kept = noisy.plan_benchmark({**args, **smooth})
    assert kept.recipe_params == {"label_smoothing": 0.1} and kept.smoothing_note is None
    # device, progress and run_dir change no result: same keys
    moved = noisy.plan_benchmark({**args, "device": "cuda", "progress": False})
    assert [c.key for c in moved.combinations] == [c.key for c in plan.combinations]
    longer = noisy.plan_benchmark({**args, "epochs": 11})
    assert not {c.key for c in longer.combinations} & {c.key for c in plan.combinations}


def test_noise_tags():
    assert noisy.noise_tag(None) == "clean"
    assert noisy.noise_tag({"kind": "symmetric", "rate": 0.2}) == "symmetric-0.2"
    assert noisy.noise_tag({"kind": "pair", "rate": 0.2, "seed": 3}) == "pair-0.2-nseed3"
    assert noisy.noise_tag({"kind": "annotator", "validation": False}) == "annotator-cleanval"
    assert noisy.noise_tag({"kind": "pair", "rate": 0.2, "pairs": {"fear": "surprise"}}).startswith("pair-0.2-pairs-")


def test_check_models_refuses_a_head_the_objective_cannot_train():
    plan = noisy.Plan(
        methods={"odd": {"head": "linear", "head_params": {}, "objective": "rul", "objective_params": {}}},
        noise=[("clean", None)],
        seeds=[0],
        recipe_params=None,
        smoothing_note=None,
    )
    with pytest.raises(ValueError, match="method 'odd'.*use head='uncertainty'"):
        noisy.check_models(plan, "smallface", 32)
    noisy.check_models(noisy.plan_benchmark(_defaults(run_dir="x")), "smallface", 48)  # every method builds


def _defaults(**changes) -> dict:
    import inspect

    args = {k: p.default for k, p in inspect.signature(noisy.noisy_label_benchmark).parameters.items()}
    return {**args, **changes}


# ------------------------------------------------------------------------------ the runner
def test_runner_runs_stage_05_only_when_named(tmp_path, monkeypatch):
    from ferlib import run as runner

    assert [s.name for s in runner.select_stages(runner.STAGES, None)] == [
        "01_train_close_set",
        "02_predict_pseudo_labels",
        "03_detect_open_set",
        "04_visualise",
    ]
    assert [s.name for s in runner.select_stages(runner.STAGES, ["05"])] == ["05_noisy_labels"]
    calls = []

    @functools.wraps(noisy.noisy_label_benchmark)  # the real signature: the runner passes what it accepts
    def record_call(**kwargs):
        calls.append(kwargs)

    monkeypatch.setattr(runner, "collect_environment", lambda: {"fake": True})
    monkeypatch.setattr(noisy, "noisy_label_benchmark", record_call)
    code = runner.main(
        ["stage", "05", "--dataset", "synthetic", "--outputs", str(tmp_path), "--run", "n", "--executor", "python"]
        + ["-p", "seeds=[0]", "-p", "methods=['ce']", "-p", "epochs=1"]
    )
    assert code == 0 and len(calls) == 1
    assert calls[0]["seeds"] == [0] and calls[0]["run_dir"] == str(tmp_path / "n") and "open_class" not in calls[0]
    record = json.loads((tmp_path / "n" / "stages" / "05_noisy_labels.json").read_text())
    assert record["upstream"] is None


def test_runner_refuses_a_bad_method_before_any_stage(tmp_path, monkeypatch, capsys):
    from ferlib import run as runner

    monkeypatch.setattr(runner, "_execute_python", _never)
    code = runner.main(
        ["pipeline", "--dataset", "synthetic", "--outputs", str(tmp_path), "--executor", "python"]
        + ["--stages", "01", "05", "-p", "methods=['ce', 'sgd']"]
    )
    assert code == 2 and "unknown 'sgd'; choose from ce" in capsys.readouterr().err


# ------------------------------------------------------------------------------ its figures
def test_accuracy_vs_noise_has_a_panel_per_noise_kind_starting_from_clean():
    import matplotlib.pyplot as plt

    from ferlib import plots

    summary = pd.DataFrame(
        {
            "method": ["ce", "rul"] * 4,
            "kind": ["clean"] * 2 + ["symmetric"] * 4 + ["annotator"] * 2,
            "rate": [0.0, 0.0, 0.1, 0.1, 0.3, 0.3, np.nan, np.nan],
            "measured_rate_mean": [0.0, 0.0, 0.1, 0.1, 0.3, 0.3, 0.27, 0.27],
            "test_acc_mean": [0.8, 0.82, 0.75, 0.8, 0.6, 0.7, 0.65, 0.7],
            "test_acc_std": [0.01] * 8,
        }
    )
    fig = plots.accuracy_vs_noise(summary, title="mean and std over 3 seeds")
    panels = [ax for ax in fig.axes if ax.get_visible()]
    assert [ax.get_title() for ax in panels] == ["symmetric", "annotator"]
    xs = {float(x) for line in panels[1].get_lines() for x in line.get_xdata()}
    assert xs == {0.0, 0.27}  # clean at 0, annotator at its measured rate
    assert fig.legends[0].get_title().get_text() == "mean and std over 3 seeds"
    plt.close(fig)


def test_flip_histograms_and_attention_maps():
    import matplotlib.pyplot as plt

    from ferlib import plots
    from ferlib.metrics import openset_metrics

    rng = np.random.default_rng(0)
    flipped = rng.random(200) < 0.3
    score = rng.normal(size=200) + flipped
    fig = plots.flip_histograms({"symmetric-0.3": (score, flipped)}, xlabel="u", title="rul")
    auroc = openset_metrics(score, flipped)["auroc"]
    assert f"AUROC = {auroc:.3f} ({flipped.sum()} flipped)" in fig.axes[0].get_xlabel()
    plt.close(fig)

    images = rng.integers(0, 255, (2, 1, 16, 16), dtype=np.uint8)
    fig = plots.attention_maps(images, rng.random((2, 4, 2, 2)), list(noisy.QUADRANTS), ["a", "b"])
    assert len(fig.axes) == 2 * 5
    plt.close(fig)
    with pytest.raises(ValueError, match="3 head names for 4 heads"):
        plots.attention_maps(images, rng.random((2, 4, 2, 2)), ["x"] * 3)


def test_the_memorisation_curve_is_measured_under_noise_only(bench):
    base, _, _ = bench
    out = base / "run" / noisy.FOLDER
    history = pd.read_csv(_folder(base, "rul", "symmetric-0.3") / "01_close_set" / "history.csv")
    shares = history[["flipped_given", "flipped_true", "clean_fit"]]
    assert shares.notna().all().all() and ((shares >= 0) & (shares <= 1)).all().all()
    # a flipped row predicted as its given label is not predicted as its true one
    assert (history["flipped_given"] + history["flipped_true"] <= 1).all()
    assert "flipped_given" not in pd.read_csv(_folder(base, "rul", "clean") / "01_close_set" / "history.csv")
    curves = pd.read_csv(out / "memorisation.csv")
    assert set(zip(curves["method"], curves["noise"])) == {("rul", "symmetric-0.3"), ("esr_div", "symmetric-0.3")}
    results = pd.read_csv(out / "results.csv").set_index(["method", "noise"])
    assert results.loc[("rul", "symmetric-0.3"), "memorised_last"] == pytest.approx(history["flipped_given"].iloc[-1])
    assert np.isnan(results.loc[("rul", "clean"), "memorised_last"])


def test_paper_tables_put_benchmarks_side_by_side_with_the_published_numbers(bench, tmp_path, capsys):
    import shutil

    from ferlib.run import main

    base, _, _ = bench
    text = (base / "run" / noisy.FOLDER / "noisy_tables.md").read_text()  # stage 05 writes its own
    assert "| rul |" in text and "88.98% RAF-DB" in text and "| esr_div | small_loss |" in text
    other = tmp_path / "other"
    shutil.copytree(base / "run", other)
    assert main(["tables", str(base / "run"), str(other), "--out", str(tmp_path / "tables")]) == 0
    assert "noisy-label tables of 2 benchmark(s)" in capsys.readouterr().out
    accuracy = pd.read_csv(tmp_path / "tables" / "noisy_accuracy.csv").set_index("method")
    label = noisy.benchmark_label(other)
    assert label == "other (smallface, 32 px, 1 epochs, 70 training images)"
    summary = pd.read_csv(base / "run" / noisy.FOLDER / "summary.csv").set_index(["method", "noise"])
    expected = f"{summary.loc[('rul', 'symmetric-0.3'), 'test_acc_mean']:.3f} (1)"
    assert accuracy.loc["rul", f"{label}: symmetric-0.3"] == expected
    assert accuracy.loc["rul", f"{noisy.benchmark_label(base / 'run')}: symmetric-0.3"] == expected
    assert accuracy.loc["esr_div", "published (clean labels)"].startswith("89.34% FERPlus")
    detection = pd.read_csv(tmp_path / "tables" / "noisy_detection.csv")
    assert {("rul", "small_loss"), ("rul", "uncertainty")} <= set(zip(detection["method"], detection["detector"]))


def test_compare_with_sets_finished_benchmarks_beside_this_one(bench, tmp_path, monkeypatch):
    """compare_with: a folder that is not a finished benchmark is refused before any training;
    a finished one stands beside this benchmark in its tables and in the comparison figure,
    whose bars are the summaries' accuracies; nothing is retrained."""
    import shutil

    base, root, _ = bench
    mine, other = tmp_path / "mine", tmp_path / "other"
    shutil.copytree(base / "run", mine)
    shutil.copytree(base / "run", other)
    _refuse_training(monkeypatch)
    with pytest.raises(ValueError, match=r"compare_with: .*nothing is not a finished noisy-label benchmark"):
        noisy.noisy_label_benchmark(**_params(base, root, run_dir=str(mine), compare_with=[str(tmp_path / "nothing")]))
    with pytest.raises(ValueError, match="own run_dir"):
        noisy.noisy_label_benchmark(**_params(base, root, run_dir=str(mine), compare_with=[str(mine)]))
    with pytest.raises(ValueError, match="a list of benchmark folders"):
        noisy.noisy_label_benchmark(**_params(base, root, run_dir=str(mine), compare_with=str(other)))

    noisy.noisy_label_benchmark(**_params(base, root, run_dir=str(mine), compare_with=[str(other)]))
    out = mine / noisy.FOLDER
    text = (out / "noisy_tables.md").read_text()
    assert noisy.benchmark_label(mine) in text and noisy.benchmark_label(other) in text
    assert (out / "noisy_accuracy_compared.png").stat().st_size > 0 and (out / "noisy_accuracy_compared.pdf").is_file()
    long = noisy.accuracy_long([mine, other])
    summary = pd.read_csv(out / "summary.csv")
    assert len(long) == 2 * len(summary)
    assert set(long["benchmark"]) == {noisy.benchmark_label(mine), noisy.benchmark_label(other)}
    got = long[long["benchmark"] == noisy.benchmark_label(other)]["mean"].to_numpy()
    assert got == pytest.approx(summary["test_acc_mean"].to_numpy())
    assert set(long["setting"]) == {f"{m}, {n}" for m, n in zip(summary["method"], summary["noise"])}


def test_records_restore_a_grid_on_a_machine_that_never_trained_it(bench, tmp_path, monkeypatch, capsys):
    """records_dir: a finished benchmark copies each combination's small files there (no
    weights; npz compressed but equal); a fresh run_dir restores every combination from them with
    no training and reports the same tables; a changed setting (another key) restores nothing."""
    import shutil

    base, root, summary = bench
    records, first, fresh = tmp_path / "records", tmp_path / "first", tmp_path / "fresh"
    shutil.copytree(base / "run", first)
    _refuse_training(monkeypatch)
    monkeypatch.setattr(noisy, "_analyse", _never)
    noisy.noisy_label_benchmark(**_params(base, root, run_dir=str(first), records_dir=str(records)))
    saved = sorted(p.relative_to(records).as_posix() for p in records.rglob("*") if p.is_file())
    assert len([p for p in saved if p.endswith(noisy.RECORD)]) == 4 and not [p for p in saved if p.endswith(".pt")]
    flips = _folder(base, "rul", "symmetric-0.3") / noisy.FLIP_SCORES
    with np.load(flips) as a, np.load(records / "rul" / "symmetric-0.3" / "seed0" / noisy.FLIP_SCORES) as b:
        assert a.files == b.files and all(np.array_equal(a[k], b[k]) for k in a.files)
    capsys.readouterr()

    again = noisy.noisy_label_benchmark(**_params(base, root, run_dir=str(fresh), records_dir=str(records)))
    assert capsys.readouterr().out.count(": restored from") == 4
    pd.testing.assert_frame_equal(again, summary)
    for name in ("results.csv", "detection.csv", "memorisation.csv"):
        pd.testing.assert_frame_equal(
            pd.read_csv(fresh / noisy.FOLDER / name), pd.read_csv(base / "run" / noisy.FOLDER / name)
        )
    assert read_json(fresh / "manifest.json")["noisy_labels"]["restored"] == 4

    with pytest.raises(AssertionError, match="trained although"):
        noisy.noisy_label_benchmark(
            **_params(base, root, run_dir=str(tmp_path / "other"), records_dir=str(records), epochs=2)
        )
