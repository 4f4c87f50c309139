"""Stage 03 on a run whose stage 02 files are written by hand (post-hoc detectors only, so
no data set and no network): a test-split run writes beside the full run, never over it."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ferlib import stages
from ferlib.io import write_npy, write_npz
from ferlib.openset import presets
from ferlib.params import ParameterError

CHEAP = ["msp", "energy", "knn", "tknn"]


def _stage02_files(run: Path, data) -> Path:
    """The files stage 02 writes, from an in-memory evaluation set."""
    out = run / "02_pseudo_labels"
    out.mkdir(parents=True)
    table = data.table.copy()
    for k in range(data.num_classes):
        table[f"logit_{k}"] = data.logits[:, k]
    table.to_csv(out / "pseudo_labels.csv", index=False)
    n_train = int(data.table["source_index"].max()) + 1 + len(data.train_features)
    rng = np.random.default_rng(0)
    all_logits = rng.normal(0, 1, (n_train, data.num_classes))
    all_features = rng.normal(0, 1, (n_train, data.features.shape[1]))
    train_index = np.arange(n_train - len(data.train_features), n_train)
    all_features[train_index] = data.train_features
    write_npz(
        out / "outputs.npz",
        {
            "eval_logits": data.logits,
            "eval_features": data.features,
            "all_train_logits": all_logits,
            "all_train_features": all_features,
            "train_index": train_index,
            "train_targets": data.train_targets,
            "class_names": np.array([f"c{k}" for k in range(data.num_classes)]),
        },
    )
    return run


@pytest.fixture
def finished_stage02(tmp_path, make_features_data):
    """90 evaluation rows: 60 close + 10 open from the test split, 20 open from training."""
    data = make_features_data(n_close=60, n_open=30, dim=8)
    data.table.loc[60:69, "origin"] = "test"
    data.table.loc[60:69, "source_index"] = np.arange(60, 70)
    data.table.loc[70:, "source_index"] = np.arange(20)
    return _stage02_files(tmp_path / "run", data)


def test_test_split_run_writes_beside_the_full_run(finished_stage02):
    run = str(finished_stage02)
    full = stages.detect_open_set(run_dir=run, detectors=CHEAP, progress=False)
    detect = finished_stage02 / "03_detect"
    before = {p: (detect / f"scores_{p}.csv").read_bytes() for p in ("honest", "reference")}
    assert len(pd.read_csv(detect / "scores_honest.csv")) == 90
    metrics_before = pd.read_csv(finished_stage02 / "metrics.csv")
    assert set(metrics_before["eval_subset"]) == {"all"} and len(metrics_before) == 2 * len(CHEAP)

    test = stages.detect_open_set(run_dir=run, detectors=CHEAP, eval_subset="test", progress=False)
    assert set(test["eval_subset"]) == {"test"}
    for p in ("honest", "reference"):
        assert (detect / f"scores_{p}.csv").read_bytes() == before[p]  # the full run's files intact
        assert len(stages.load_scores(run, p, eval_subset="test")) == 70  # the test split's rows, beside
    metrics = pd.read_csv(finished_stage02 / "metrics.csv")
    kept = metrics[metrics["eval_subset"] == "all"].reset_index(drop=True)
    pd.testing.assert_frame_equal(kept, metrics_before, check_dtype=False)
    assert (metrics["eval_subset"] == "test").sum() == 2 * len(CHEAP)
    np.testing.assert_allclose(
        full.set_index(["protocol", "detector"])["auroc"], kept.set_index(["protocol", "detector"])["auroc"]
    )

    # re-running the full run replaces its own rows only, and one protocol leaves the other's rows
    stages.detect_open_set(run_dir=run, detectors=["msp"], protocols=["honest"], progress=False)
    metrics = pd.read_csv(finished_stage02 / "metrics.csv")
    assert len(metrics.query("eval_subset == 'all' and protocol == 'honest'")) == 1
    assert len(metrics.query("eval_subset == 'all' and protocol == 'reference'")) == len(CHEAP)
    assert len(metrics.query("eval_subset == 'test'")) == 2 * len(CHEAP)


def test_visualise_reads_the_full_run_not_the_test_split_run(finished_stage02):
    """Figures of a run with both subsets: the histograms' AUROCs are the full run's."""
    from ferlib import plots
    from ferlib.report import visualise

    run = str(finished_stage02)
    stages.detect_open_set(run_dir=run, detectors=CHEAP, protocols=["honest"], progress=False)
    stages.detect_open_set(run_dir=run, detectors=CHEAP, protocols=["honest"], eval_subset="test", progress=False)
    seen = {}
    original = plots.score_histograms

    def spy(scores, detectors, metrics, protocol):
        seen["n"], seen["metrics"] = len(scores), metrics
        return original(scores, detectors, metrics, protocol)

    plots.score_histograms = spy
    try:
        visualise(run, protocols=["honest"], embed_max_points=0)
    finally:
        plots.score_histograms = original
    assert seen["n"] == 90
    assert set(seen["metrics"]["eval_subset"]) == {"all"}


def test_write_npy_is_atomic(tmp_path, monkeypatch):
    """A failed write leaves the old file whole and no temporary file behind; numpy adds no
    suffix to the temporary name (the rename moves the written file)."""
    path = tmp_path / "detector_features_honest.npy"
    write_npy(path, np.arange(3))
    np.testing.assert_array_equal(np.load(path), np.arange(3))

    def broken(handle, array):
        handle.write(b"half")
        raise OSError("disk full")

    monkeypatch.setattr(np, "save", broken)
    with pytest.raises(OSError, match="disk full"):
        write_npy(path, np.arange(5))
    monkeypatch.undo()
    np.testing.assert_array_equal(np.load(path), np.arange(3))
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]


@pytest.fixture(scope="module")
def tiny_run(module_tmp, make_tiny_stage_params):
    """Stages 01-02 on a tiny synthetic set (a few seconds): 1 epoch, 32 px, ImageNet stem."""
    params = make_tiny_stage_params(module_tmp)
    stages.train_close_set(**params, epochs=1, batch_size=32)
    table = stages.predict_pseudo_labels(**params)
    return params, table


@pytest.mark.slow
def test_stage_02_writes_the_spread_table_and_outputs_atomically(tiny_run):
    """``02_pseudo_labels/spread.csv`` (cited by docs/RESULTS.md) is written, agrees with the
    pseudo-label table, and no temporary file is left beside the outputs."""
    params, table = tiny_run
    out = Path(params["run_dir"]) / "02_pseudo_labels"
    spread = pd.read_csv(out / "spread.csv")
    open_pseudo = table.loc[table["is_open"], "pseudo"].to_numpy()
    assert list(spread["count"]) == np.bincount(open_pseudo, minlength=len(spread)).tolist()
    assert spread["fraction"].sum() == pytest.approx(1.0)
    assert set(spread["n_open"]) == {int(table["is_open"].sum())}
    assert {"target", "class", "count", "fraction", "tv_from_uniform"} <= set(spread.columns)
    assert sorted(p.name for p in out.iterdir()) == ["outputs.npz", "pseudo_labels.csv", "spread.csv", "summary.json"]
    assert set(np.load(out / "outputs.npz").files) >= {"eval_logits", "all_train_features", "class_names"}


TINY = {"cycle": {"cycles": 1, "epochs_per_cycle": 1, "batch_size": 32}, "contrast": {"epochs": 1, "batch_size": 32}}


def _stamps(run: Path) -> dict[str, int]:
    """Modification times of every training checkpoint under 03_detect (a rewrite = an epoch trained)."""
    return {str(p.relative_to(run)): p.stat().st_mtime_ns for p in (run / "03_detect").rglob("last.pt")}


def _folders(run: Path, name: str) -> set[str]:
    return {str(p.relative_to(run / "03_detect")) for p in (run / "03_detect").glob(f"*/*/{name}-*")}


@pytest.mark.slow
def test_stage_03_result_keys_retrain_on_new_inputs_and_resume_on_another_device(tiny_run):
    """Stage 03 with the trained detectors: keyed folders; a different device resumes
    (nothing trained), lam=0 or new pseudo labels retrain in a fresh folder; the contrast
    detector (no label read) is fitted once for both protocols and survives new pseudo labels."""
    params, _ = tiny_run
    run = Path(params["run_dir"])
    first = stages.detect_open_set(**params, detectors=["msp", "cycle", "contrast"], detector_params=TINY)
    assert len(_folders(run, "cycle")) == 2  # one per protocol: it reads the pseudo labels
    (contrast_folder,) = _folders(run, "contrast")
    assert contrast_folder.startswith("all/any_protocol/contrast-")
    by = first.set_index(["protocol", "detector"])["auroc"]
    assert by[("honest", "contrast")] == pytest.approx(by[("reference", "contrast")])
    honest = stages.load_scores(params["run_dir"], "honest")
    assert len(np.load(run / "03_detect" / "detector_features_honest.npy")) == len(honest)
    stamps = _stamps(run)

    moved = stages.detect_open_set(
        **{**params, "device": "cpu:0"}, detectors=["msp", "cycle", "contrast"], detector_params=TINY
    )
    assert _stamps(run) == stamps  # resumed: not one epoch trained
    np.testing.assert_allclose(moved["auroc"], first["auroc"])

    stages.detect_open_set(
        **params, detectors=["cycle"], protocols=["honest"], detector_params={"cycle": {**TINY["cycle"], "lam": 0.0}}
    )
    assert len(_folders(run, "cycle")) == 3  # lam=0: a fresh folder, trained
    assert {k: v for k, v in _stamps(run).items() if k in stamps} == stamps  # the old result untouched

    # stage 02 re-run with other pseudo labels (here: one row relabelled by hand)
    csv = run / "02_pseudo_labels" / "pseudo_labels.csv"
    original = csv.read_bytes()
    table = pd.read_csv(csv)
    table.loc[0, "pseudo"] = (table.loc[0, "pseudo"] + 1) % 6
    table.to_csv(csv, index=False)
    try:
        stages.detect_open_set(**params, detectors=["cycle", "contrast"], protocols=["honest"], detector_params=TINY)
    finally:
        csv.write_bytes(original)
    assert len(_folders(run, "cycle")) == 4  # new pseudo labels: retrained
    assert _folders(run, "contrast") == {contrast_folder}  # reads no pseudo label: reused


@pytest.mark.slow
def test_ablation_shares_stage_03_keyed_results(tiny_run):
    """The ablation's ``paper`` variant with stage 03's settings is stage 03's result (same key,
    nothing trained); the test-split variant lands under ``03_detect/test/``."""
    params, _ = tiny_run
    run = Path(params["run_dir"])
    stages.detect_open_set(**params, detectors=["cycle"], protocols=["honest"], detector_params=TINY)
    stamps = _stamps(run)
    table = stages.ablate_cycle(
        **params,
        protocols=["honest"],
        detector_params=TINY,
        variants={k: stages.CYCLE_ABLATIONS[k] for k in ("paper", "test_split_only")},
    )
    rows = table.set_index("variant")
    assert rows.loc["paper", "folder"].startswith("03_detect/all/honest/cycle-")
    assert {k: v for k, v in _stamps(run).items() if k in stamps} == stamps
    assert rows.loc["test_split_only", "folder"].startswith("03_detect/test/honest/cycle-")
    assert (
        rows.loc["test_split_only", "n"]
        == (pd.read_csv(run / "02_pseudo_labels" / "pseudo_labels.csv")["origin"] == "test").sum()
    )
    assert (run / "ablation.csv").is_file()


def test_manifest_records_what_each_subset_applied(finished_stage02):
    from ferlib.manifest import read_manifest

    run = str(finished_stage02)
    stages.detect_open_set(
        run_dir=run,
        detectors=["tknn"],
        detector_params={"tknn": {"k": 5, "chunk": 64}},
        protocols=["honest"],
        progress=False,
    )
    stages.detect_open_set(
        run_dir=run, detectors=["tknn"], detector_params={"tknn": {"k": 7}}, protocols=["honest"], progress=False
    )
    stages.detect_open_set(run_dir=run, detectors=["msp"], eval_subset="test", progress=False)
    detection = read_manifest(run)["detection"]
    assert detection["all"]["detector_params"] == {"tknn": {"k": 7}}  # not merged with the earlier run's
    assert detection["test"]["detectors"] == ["msp"] and detection["test"]["protocols"] == ["honest", "reference"]


def test_stage03_runs_the_preset_and_the_user_wins(finished_stage02, monkeypatch):
    monkeypatch.setitem(presets.DETECTOR_PRESETS, "tiny", {"tknn": {"k": 3}})
    run = str(finished_stage02)

    def tknn_scores(**kwargs):
        stages.detect_open_set(run_dir=run, detectors=["tknn"], protocols=["honest"], progress=False, **kwargs)
        return stages.load_scores(run, "honest")["tknn"].to_numpy()

    default = tknn_scores()
    by_hand = tknn_scores(detector_params={"tknn": {"k": 3}})
    by_preset = tknn_scores(detector_preset="tiny")
    assert not np.allclose(default, by_hand)  # k matters on this set, so the check below can fail
    np.testing.assert_array_equal(by_preset, by_hand)
    manifest = json.loads((finished_stage02 / "manifest.json").read_text())
    assert manifest["detection"]["all"]["detector_params"] == {"tknn": {"k": 3}}
    assert manifest["detection"]["all"]["detector_preset"] == "tiny"

    overridden = tknn_scores(detector_preset="tiny", detector_params={"tknn": {"k": 5}})
    np.testing.assert_array_equal(overridden, tknn_scores(detector_params={"tknn": {"k": 5}}))


def test_stage03_rejects_a_bad_preset_before_any_work(finished_stage02):
    with pytest.raises((ParameterError, ValueError), match="detector_preset"):
        stages.detect_open_set(run_dir=str(finished_stage02), detectors=["msp"], detector_preset="nope")
    assert not (finished_stage02 / "03_detect").exists()
