"""Identity confounds on subject-split data sets, and the near-chance warning.

On a set split by subject (CK+, JAFFE, KDEF), the paper's evaluation set puts the open class's
images of *training* subjects beside close images of *unseen* test subjects: a detector that
only asks "have I seen this person?" then separates the two sides without looking at the
expression. By default the evaluation set of such a set takes its open rows from the test
subjects only (``open_from_test_subjects``); the paper's protocol stays one loader option away.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from test_visualise import make_run

from ferlib import stages
from ferlib.data import DataError
from ferlib.data.prepare import load_splits
from ferlib.data.splits import openset_split, restrict_to_test_rows
from ferlib.emotions import BASIC7, Emotion
from ferlib.metrics import close_set_warning, near_chance_warning, openset_metrics
from ferlib.tables import collect_runs, overview_markdown, summary_table, to_latex, to_markdown

CLASSES = ("neutral", "happiness", "surprise")
SIZE = 32


def _identity_set(root: Path, n_subjects: int = 16, per_class: int = 4, seed: int = 0) -> Path:
    """A CK+-style set where the subject alone decides the pixels: each subject has a strong
    random signature, each image is that signature plus noise, and the expression leaves no
    trace. Whatever separates open from close rows on it is identity, never expression."""
    rng = np.random.default_rng(seed)
    for s in range(1, n_subjects + 1):
        signature = rng.integers(0, 256, (SIZE, SIZE)).astype(np.float64)
        for c, folder in enumerate(CLASSES):
            for q in range(per_class):
                pixels = np.clip(signature + rng.normal(0, 20, (SIZE, SIZE)), 0, 255).astype(np.uint8)
                path = root / folder / f"S{s:03d}_{c * per_class + q + 1:03d}_{q:08d}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(pixels).save(path)
    return root


def _load(root: Path, **options):
    return load_splits(
        "subjects",
        str(root),
        "surprise",
        SIZE,
        cache_dir=None,
        data_options={"subject_pattern": "ck+", "test_fraction": 0.25, "split_seed": 0, **options},
    )


def _subject(path) -> str:
    return Path(str(path)).name.split("_")[0]


def _evaluation(s) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """The evaluation images (stage 02's row order), is_open and each row's subject."""
    images = stages._eval_images(s).float().flatten(1).numpy()
    subjects = [_subject(s.test.paths[i]) for i in s.split.eval_test_index]
    subjects += [_subject(s.train.paths[i]) for i in s.split.eval_train_index]
    return images, s.split.eval_is_open, subjects


def _seen_before_auroc(s) -> float:
    """AUROC of a detector that sees identity only: a row's distance to the nearest close
    training image (higher = less familiar = "open"); the close rows are the positive class."""
    images, is_open, _ = _evaluation(s)
    seen = s.train.images[s.split.train_index].float().flatten(1).numpy()
    d2 = (images**2).sum(1)[:, None] - 2 * images @ seen.T + (seen**2).sum(1)[None, :]
    score = np.sqrt(np.maximum(d2, 0).min(1))
    return openset_metrics(score, is_open)["auroc"]


@pytest.fixture(scope="module")
def identity_root(tmp_path_factory) -> Path:
    return _identity_set(tmp_path_factory.mktemp("identity") / "ck")


def test_open_rows_come_from_test_subjects_by_default(identity_root):
    s = _load(identity_root)
    test_subjects = {_subject(p) for p in s.test.paths}
    train_subjects = {_subject(p) for p in s.train.paths}
    assert test_subjects and train_subjects and not test_subjects & train_subjects
    _, is_open, subjects = _evaluation(s)
    assert s.split.open_rows == "test" and len(s.split.eval_train_index) == 0
    assert is_open.sum() == 4 * len(test_subjects)  # every test subject's open images, and no other
    assert {subj for subj, o in zip(subjects, is_open) if o} == test_subjects
    assert set(subjects) == test_subjects  # close rows too: every row shows an unseen person
    assert len(stages._eval_images(s)) == s.split.n_eval == len(s.test)


def test_an_identity_only_detector_is_at_chance_by_default_and_far_from_it_with_the_papers_rows(identity_root):
    """Identity alone decides the pixels. On the default evaluation set every row shows an
    unseen person, so "have I seen this face?" says nothing about open or close (AUROC near
    .5). With the open class's images of training subjects (the paper's protocol), the same
    detector calls them familiar and the unseen close rows unfamiliar: far below .5."""
    default = _load(identity_root)
    paper = _load(identity_root, open_from_test_subjects=False)
    assert paper.split.open_rows == "test+train" and len(paper.split.eval_train_index) > 0
    _, is_open, subjects = _evaluation(paper)
    train_subjects = {_subject(p) for p in paper.train.paths}
    assert any(o and subj in train_subjects for subj, o in zip(subjects, is_open))
    near = _seen_before_auroc(default)
    far = _seen_before_auroc(paper)
    assert abs(near - 0.5) < 0.15, near
    assert far < 0.25, far
    # the choice is part of the data's identity: runs of the two protocols never share a key
    assert default.fingerprint != paper.fingerprint


def test_the_choice_reaches_the_run_manifest(identity_root, tmp_path):
    """Stage 01 records where the open rows come from (results.json and the manifest), so a
    table can say which evaluation set it reports."""
    run = tmp_path / "run"
    common = dict(
        dataset="subjects",
        data_root=str(identity_root),
        open_class="surprise",
        data_options={"subject_pattern": "ck+", "test_fraction": 0.25},
        input_size=SIZE,
        arch="smallface",
        epochs=1,
        batch_size=32,
        cache_dir=None,
        progress=False,
    )
    stages.train_close_set(**common, run_dir=str(run))
    manifest = json.loads((run / "manifest.json").read_text())
    results = json.loads((run / "01_close_set" / "results.json").read_text())
    assert manifest["data"]["open_rows"] == results["open_rows"] == "test"
    assert results["val_acc"] is not None and "close_set_warning" in manifest["close_set"]


def test_the_default_is_in_the_runners_stage_keys():
    """The runner hashes the values a stage applied: a subject-split run records the default
    ``open_from_test_subjects=True``, so it never shares a key with a run of the paper's rows."""
    from ferlib.data.prepare import effective_data_options
    from ferlib.run import STAGES, stage_key

    on, off = {"open_from_test_subjects": True}, {"open_from_test_subjects": False}
    assert effective_data_options("subjects", "surprise", None) == on
    assert effective_data_options("subjects", "surprise", {"folds": 10}) == {"folds": 10, **on}
    assert effective_data_options("subjects", None, off) == off
    assert effective_data_options("synthetic", "surprise", None) is None
    stage = STAGES[0]
    default = stage.applied({"dataset": "subjects", "open_class": "surprise"})
    paper = stage.applied({"dataset": "subjects", "open_class": "surprise", "data_options": off})
    assert default["data_options"] == on
    assert stage_key(stage, default, None) != stage_key(stage, paper, None)


def test_restricting_keeps_the_test_rows_and_their_order():
    split = openset_split([0, 2, 1, 2, 3], [2, 0, 1], BASIC7, Emotion.SURPRISE)
    cut = restrict_to_test_rows(split)
    assert cut.eval_test_index.tolist() == [0, 1, 2] and cut.eval_train_index.tolist() == []
    assert cut.eval_labels.tolist() == [2, 0, 1] and cut.eval_is_open.tolist() == [True, False, False]
    assert cut.open_rows == "test" and split.open_rows == "test+train"
    assert cut.train_index.tolist() == split.train_index.tolist()  # training is not touched


def test_no_open_image_among_the_test_subjects_is_refused(tmp_path):
    """Only subjects 1-2 posed surprise; with them all in training, the test subjects' evaluation
    set would have no open row: refused at loading, naming the way out."""
    root = _identity_set(tmp_path / "ck", n_subjects=8, per_class=1)
    for path in (root / "surprise").glob("*.png"):
        if _subject(path) not in ("S001", "S002"):
            path.unlink()

    def test_subjects(seed: int) -> set[str]:
        return {_subject(p) for p in _load(root, split_seed=seed, open_from_test_subjects=False).test.paths}

    split_seed = next(seed for seed in range(50) if not {"S001", "S002"} & test_subjects(seed))
    with pytest.raises(DataError, match="test subjects have no surprise image.*open_from_test_subjects"):
        _load(root, split_seed=split_seed)
    with pytest.raises(DataError, match="open_from_test_subjects must be True or False"):
        _load(root, open_from_test_subjects="no")


# ----------------------------------------------------------------------------- near chance
def test_near_chance_warning_below_one_and_a_half_times_chance():
    assert near_chance_warning(0.2, 6) is not None  # chance .167, flagged below .25
    assert near_chance_warning(0.249, 6) is not None
    assert near_chance_warning(0.25, 6) is None
    assert near_chance_warning(0.9, 6) is None
    assert "validation accuracy 0.200 with 6 classes" in near_chance_warning(0.2, 6)
    # from stage 01's files: results.json's val_acc, else the history at the best epoch
    history = pd.DataFrame({"val_acc": [0.1, 0.6, 0.2]})
    names = ["a", "b", "c", "d", "e", "f"]
    assert close_set_warning({"val_acc": 0.2, "class_names": names}) is not None
    assert close_set_warning({"best_epoch": 3, "class_names": names}, history) is not None
    assert close_set_warning({"best_epoch": 2, "class_names": names}, history) is None
    assert close_set_warning({"class_names": names}) is None  # nothing to judge by


def _near_chance_run(tmp_path: Path) -> Path:
    run = make_run(tmp_path / "run")
    results_path = run / "01_close_set" / "results.json"
    results = json.loads(results_path.read_text())
    k = len(results["class_names"])
    results["val_acc"] = 1.2 / k  # above chance, below 1.5 x chance
    results_path.write_text(json.dumps(results))
    return run


def test_stage_03_writes_the_warning_into_the_manifest_and_under_its_table(tmp_path, capsys):
    run = _near_chance_run(tmp_path)
    metrics = stages.detect_open_set(run_dir=str(run), detectors=["msp"], protocols=["honest"], progress=False)
    warning = metrics.attrs["warnings"][0]
    assert "near chance" in warning and "mean nothing" in warning
    assert "WARNING: the close-set model is near chance" in capsys.readouterr().out
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["detection"]["all"]["close_set_warning"] == warning
    # a healthy model: no warning anywhere
    healthy = make_run(tmp_path / "healthy")
    metrics = stages.detect_open_set(run_dir=str(healthy), detectors=["msp"], protocols=["honest"], progress=False)
    assert metrics.attrs["warnings"] == []
    assert json.loads((healthy / "manifest.json").read_text())["detection"]["all"]["close_set_warning"] is None


def test_the_report_tables_print_the_warning_under_themselves(tmp_path):
    run = _near_chance_run(tmp_path)
    stages.detect_open_set(run_dir=str(run), detectors=["msp", "energy"], protocols=["honest"], progress=False)
    manifest = json.loads((run / "manifest.json").read_text())
    manifest["params"] = {"dataset": "ferplus", "open_class": "surprise", "seed": 0}
    (run / "manifest.json").write_text(json.dumps(manifest))
    frame = collect_runs(str(run))
    summary = summary_table(frame, "auroc", "honest")
    markdown = to_markdown(summary)
    table_end = markdown.rindex("| mean")
    assert markdown.index("**Warning**: open class Sur, seed 0 (run): the close-set model is near chance") > table_end
    assert "Warning}: open class Sur" in to_latex(summary).split(r"\end{tabular}")[1]
    assert "**Warning**" in overview_markdown(summary)
    # a run without the problem: no warning line
    (run / "01_close_set" / "results.json").write_text(
        json.dumps({**json.loads((run / "01_close_set" / "results.json").read_text()), "val_acc": 0.9})
    )
    manifest["close_set"] = {"close_set_warning": None}
    (run / "manifest.json").write_text(json.dumps(manifest))
    assert "Warning" not in to_markdown(summary_table(collect_runs(str(run)), "auroc", "honest"))
