"""The tuning set (stage 03's ``eval_subset="tuning"``): the validation split's close and open
rows, where hyper-parameters are chosen. It shares no row with the reported evaluation set
(the test split and the open class's training rows), and scoring it never changes the
reported run's files or metrics."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ferlib import stages
from ferlib.data.duplicates import pixel_digest
from ferlib.data.prepare import load_splits
from ferlib.data.splits import openset_split, tuning_index
from ferlib.emotions import BASIC7, Emotion

POSTHOC = ["msp", "energy", "knn", "tknn", "mahalanobis"]


def _splits(params: dict, data_root: str | None = None, cache_dir: str | None = "params"):
    cache = params["cache_dir"] if cache_dir == "params" else cache_dir
    return load_splits("synthetic", data_root or params["data_root"], "surprise", params["input_size"], cache)


def _digests(images) -> list[bytes]:
    """Each image's pixel digest (:func:`ferlib.data.duplicates.pixel_digest`): equal for equal
    pixels, whatever file or split folder holds them. Paths would differ between splits even
    for a copied image, so a comparison of paths can never find a shared image."""
    return [pixel_digest(image) for image in images]


def _tuning_and_reported(s) -> tuple[list[bytes], list[bytes]]:
    """Pixel digests of the tuning rows and of the reported evaluation rows (the test split
    and the open class's training rows) of ``s``."""
    tuning = _digests(s.valid.images[s.tuning_rows()])
    reported = _digests(s.test.images[s.split.eval_test_index]) + _digests(s.train.images[s.split.eval_train_index])
    return tuning, reported


def test_tuning_rows_are_the_validation_close_and_open_rows(tmp_path, make_tiny_stage_params):
    """By construction on the synthetic set: every validation row of a close class (the
    model-selection rows) and of the open class, and none of the test split or of the
    training split (whose open-class rows form the reported evaluation set)."""
    params = make_tiny_stage_params(tmp_path)
    s = _splits(params)
    rows = s.tuning_rows()
    labels = s.valid.labels.numpy()[rows]
    is_open = labels == int(Emotion.SURPRISE)
    close_rows, close_targets = s.validation()
    assert np.array_equal(rows[~is_open], close_rows)  # the close rows: those stage 01 selected on
    assert np.array_equal(s.label_map.encode(labels[~is_open]), close_targets)
    assert is_open.sum() == (s.valid.labels.numpy() == int(Emotion.SURPRISE)).sum() > 0
    assert len(rows) == len(s.valid)  # the synthetic set has only the basic seven
    assert all(s.valid.paths[i].startswith("valid/") for i in rows)
    tuning, reported = _tuning_and_reported(s)
    assert len(set(reported)) == s.split.n_eval and len(set(tuning)) == len(rows)  # distinct images
    assert set(tuning).isdisjoint(reported)  # no image, under any path, on both sides
    assert len(stages._tuning_images(s)) == len(rows)


def test_an_image_copied_into_the_validation_split_is_caught(tmp_path, make_tiny_stage_params):
    """The check above compares pixels: a test image saved again under validation's open-class
    folder (another path, another split folder) is found on both sides."""
    params = make_tiny_stage_params(tmp_path)
    planted = tmp_path / "planted"
    shutil.copytree(params["data_root"], planted)
    source = sorted((planted / "test").rglob("*.png"))[0]
    target = sorted((planted / "valid" / source.parent.name).glob("*.png"))[0]
    shutil.copyfile(source, target)
    s = _splits(params, str(planted), cache_dir=None)
    tuning, reported = _tuning_and_reported(s)
    assert len(set(tuning) & set(reported)) == 1


def test_no_tuning_set_when_validation_is_carved_from_training(tmp_path, make_tiny_stage_params):
    """Carved validation rows of the open class are open-class training images, part of the
    reported evaluation set: refused, and the close-set data is what it was."""
    params = make_tiny_stage_params(tmp_path)
    carved = tmp_path / "carved"
    shutil.copytree(params["data_root"], carved)
    shutil.rmtree(carved / "valid")
    s = _splits(params, str(carved))
    assert s.valid_carved and not _splits(params).valid_carved
    with pytest.raises(ValueError, match="no tuning set"):
        s.tuning_rows()


def test_tuning_index_on_label_arrays():
    train = np.array([0, 1, 2, 2, 3])
    test = np.array([0, 2, 3])
    split = openset_split(train, test, BASIC7, Emotion.SURPRISE)
    valid = np.array([2, 0, 6, 2, 1])
    assert tuning_index(valid, split).tolist() == [0, 1, 2, 3, 4]
    close_only = openset_split(train, test, BASIC7, None)
    with pytest.raises(ValueError, match="open class"):
        tuning_index(valid, close_only)


@pytest.mark.ferplus
def test_ferplus_tuning_set_is_fer2013valid_and_shares_no_image_with_the_reported_set(ferplus_root, tmp_path):
    """On FERPlus's decoded images: the tuning set is FER2013Valid's rows of the seven classes,
    with open rows for every open class, and shares no image (compared by pixels, not by path)
    with the test split or the open class's training rows.

    FER2013 holds byte-identical images across its splits. Without the deduplication of the
    evaluation rows (``dedupe``, on by default for open-set runs on FERPlus) the tuning and the
    reported rows share some, and this comparison finds them: a comparison of paths, whose
    split folders always differ, could not."""
    cache = str(tmp_path / "cache")
    raw = load_splits("ferplus", str(ferplus_root), "surprise", 48, cache, data_options={"dedupe": False})
    tuning, reported = _tuning_and_reported(raw)
    assert set(tuning) & set(reported)  # the copies are there, and pixels find them
    for open_class in BASIC7:
        s = load_splits("ferplus", str(ferplus_root), open_class.label, 48, cache)
        assert s.dedupe is not None  # the open-set default
        rows = s.tuning_rows()
        assert len(rows) == len(s.valid)  # the seven classes: every kept validation row
        assert all("FER2013Valid" in s.valid.paths[i] for i in rows)
        assert int((s.valid.labels.numpy()[rows] == int(open_class)).sum()) > 0, open_class
        tuning, reported = _tuning_and_reported(s)
        assert set(tuning).isdisjoint(reported), open_class


# ----------------------------------------------------------------------------- stages 01-03
@pytest.fixture(scope="module")
def trained_run(module_tmp):
    """Stages 01-02 on a balanced synthetic set with 140 validation rows (20 open): smallface
    at 48 px, 3 epochs (about 30 s on one core); stage 03 over every reported row."""
    from ferlib.data.synthetic import SyntheticConfig, write_synthetic

    base = module_tmp
    cfg = SyntheticConfig(n_train=560, n_valid=140, n_test=28, seed=0, class_shares=None)
    root = write_synthetic(base / "synthetic", cfg)
    params = dict(
        dataset="synthetic",
        data_root=str(root),
        open_class="surprise",
        input_size=48,
        progress=False,
        run_dir=str(base / "run"),
        cache_dir=str(base / "cache"),
    )
    stages.train_close_set(**params, arch="smallface", epochs=3, batch_size=32)
    table = stages.predict_pseudo_labels(**params, arch="smallface")
    metrics = stages.detect_open_set(**params, detectors=POSTHOC)
    return params, table, metrics


def _files(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.mark.slow
def test_stage_03_on_the_tuning_set_writes_beside_the_reported_run(trained_run):
    params, table, metrics_all = trained_run
    run = Path(params["run_dir"])
    stage02 = _files(run / "02_pseudo_labels")
    scores_all = {p: (run / "03_detect" / f"scores_{p}.csv").read_bytes() for p in ("honest", "reference")}

    metrics = stages.detect_open_set(**params, detectors=POSTHOC, eval_subset="tuning")
    assert set(metrics["eval_subset"]) == {"tuning"} and len(metrics) == 2 * len(POSTHOC)
    # the reported run's files and metrics are untouched; stage 02's arrays too
    assert {k: v for k, v in _files(run / "02_pseudo_labels").items() if not k.startswith("tuning/")} == stage02
    for p, before in scores_all.items():
        assert (run / "03_detect" / f"scores_{p}.csv").read_bytes() == before
    merged = pd.read_csv(run / "metrics.csv")
    pd.testing.assert_frame_equal(
        merged[merged["eval_subset"] == "all"].reset_index(drop=True), metrics_all, check_dtype=False
    )
    assert (merged["eval_subset"] == "tuning").sum() == 2 * len(POSTHOC)

    # the tuning rows: the validation split's, none of the reported evaluation set's
    tuning = stages.load_scores(params["run_dir"], "honest", eval_subset="tuning")
    assert len(tuning) == 140 and set(tuning["origin"]) == {"valid"}
    assert tuning["is_open"].sum() == 20
    assert set(tuning["path"]).isdisjoint(table["path"])
    # no training row: both protocols see the same data
    ref = stages.load_scores(params["run_dir"], "reference", eval_subset="tuning")
    pd.testing.assert_frame_equal(tuning, ref)
    by = metrics.set_index(["protocol", "detector"])["auroc"]
    for name in POSTHOC:
        assert by[("honest", name)] == pytest.approx(by[("reference", name)])

    # the close-set outputs on the tuning rows are kept, and reused while the model is the same
    outputs = run / "02_pseudo_labels" / "tuning" / "outputs.npz"
    stamp = outputs.stat().st_mtime_ns
    again = stages.detect_open_set(**params, detectors=["msp"], protocols=["honest"], eval_subset="tuning")
    assert outputs.stat().st_mtime_ns == stamp
    assert again["auroc"].item() == pytest.approx(by[("honest", "msp")])
    from ferlib.manifest import read_manifest

    assert set(read_manifest(run)["detection"]) == {"all", "tuning"}


@pytest.mark.slow
def test_a_detector_separates_open_from_close_on_the_tuning_set(trained_run):
    params, _, _ = trained_run
    metrics = stages.detect_open_set(**params, detectors=POSTHOC, protocols=["honest"], eval_subset="tuning")
    auroc = metrics.set_index("detector")["auroc"]
    assert auroc["tknn"] > 0.75, auroc.round(3).to_dict()


@pytest.mark.slow
def test_trained_detectors_and_the_ablation_run_on_the_tuning_images(trained_run, tiny_params):
    """A detector that trains on the evaluation images gets the tuning images and its own
    folder (``03_detect/tuning/...``); so does an ablation variant with eval_subset tuning."""
    params, _, _ = trained_run
    run = Path(params["run_dir"])
    stages.detect_open_set(
        **params, detectors=["contrast"], protocols=["honest"], eval_subset="tuning", detector_params=tiny_params
    )
    (folder,) = (run / "03_detect" / "tuning").glob("any_protocol/contrast-*")
    assert len(np.load(folder / "scores.npy")) == 140
    table = stages.ablate_cycle(
        **params, protocols=["honest"], detector_params=tiny_params, variants={"tuning": {"eval_subset": "tuning"}}
    )
    row = table.set_index("variant").loc["tuning"]
    assert row["n"] == 140 and row["eval_subset"] == "tuning"
    assert row["folder"].startswith("03_detect/tuning/honest/cycle-")


def test_unknown_eval_subset_names_the_tuning_set(tmp_path):
    for call in (
        lambda: stages.check_eval_subset("tset"),
        lambda: stages.load_scores(str(tmp_path), "honest", eval_subset="tset"),
        lambda: stages.detect_open_set(run_dir=str(tmp_path), detectors=["msp"], eval_subset="tset"),
    ):
        with pytest.raises(ValueError, match="tuning"):
            call()


def test_tuning_data_needs_its_outputs(tmp_path):
    """Without ``02_pseudo_labels/tuning/`` the tuning set cannot be loaded: the message says
    what computes it."""
    out = tmp_path / "02_pseudo_labels"
    out.mkdir()
    (out / "pseudo_labels.csv").write_text("index\n")
    np.savez(out / "outputs.npz", class_names=np.array(["a"]))
    with pytest.raises(FileNotFoundError, match="eval_subset='tuning'"):
        stages.load_openset_data(str(tmp_path), eval_subset="tuning")


@pytest.mark.slow
def test_stage_02_saves_the_pyramid_features_of_every_row_set(trained_run):
    """Evaluation, close training and tuning rows all carry every trunk stage's pooled output
    (smallface: 448 values, the last 256 the classifier's pooled features), and pseudo_oe
    learns in that space on the tuning set."""
    params, _, _ = trained_run
    data = stages.load_openset_data(params["run_dir"], "honest")
    assert data.extras["pyramid"].shape == (len(data), 448)
    assert data.train_extras["pyramid"].shape == (len(data.train_features), 448)
    np.testing.assert_allclose(data.extras["pyramid"][:, -256:], data.features, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(data.train_extras["pyramid"][:, -256:], data.train_features, rtol=1e-5, atol=1e-6)
    metrics = stages.detect_open_set(
        **params,
        detectors=["pseudo_oe"],
        protocols=["honest"],
        eval_subset="tuning",
        detector_params={"pseudo_oe": {"features": "pyramid"}},
    )
    tuning = stages.load_openset_data(params["run_dir"], "honest", eval_subset="tuning")
    assert tuning.extras["pyramid"].shape == (140, 448)
    assert metrics["auroc"].item() > 0.6, metrics["auroc"].item()


@pytest.mark.slow
def test_stage_03_computes_the_held_out_close_rows_a_detector_needs(trained_run, tmp_path):
    """pseudo_oe with ``share_multiplier`` > 0 (the ``ferplus`` preset's) reads the close-set
    model's outputs on the validation split: stage 03 on the reported rows computes them first
    when they are missing, and scores as it does once they exist; settings that do not need
    them leave the run without them."""
    params, _, _ = trained_run
    run = tmp_path / "run"
    shutil.copytree(params["run_dir"], run)
    shutil.rmtree(run / "02_pseudo_labels" / stages.TUNING_DIR, ignore_errors=True)
    mine = {**params, "run_dir": str(run), "protocols": ["honest"]}
    plain = {"pseudo_oe": {"rounds": 2}}
    stages.detect_open_set(**mine, detectors=["pseudo_oe"], detector_params=plain)
    assert not (run / "02_pseudo_labels" / stages.TUNING_DIR).exists()
    share = {"pseudo_oe": {"rounds": 2, "share_multiplier": 1.0}}
    first = stages.detect_open_set(**mine, detectors=["pseudo_oe"], detector_params=share)
    assert (run / "02_pseudo_labels" / stages.TUNING_DIR / "outputs.npz").is_file()
    again = stages.detect_open_set(**mine, detectors=["pseudo_oe"], detector_params=share)
    assert again["auroc"].item() == first["auroc"].item() > 0.5
