"""The close-set model's per-sample extras in stage 03: aligned through subsets, the
protocols and stage 02's file, and the two detectors that read them (uncertainty, disagreement)."""

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from scipy.special import softmax

from ferlib import stages
from ferlib.io import write_npz
from ferlib.metrics import openset_metrics
from ferlib.openset import apply_protocol, make_detector, run_detectors

# ----------------------------------------------------------------------------- detectors


@pytest.mark.parametrize(
    "name, params", [("uncertainty", {}), ("disagreement", {}), ("disagreement", {"measure": "vote"})]
)
def test_open_samples_score_higher(name, params, make_features_data):
    """Open samples are more uncertain / their branches disagree: AUROC (close positive,
    scores higher = open) is high through the label-free, shuffled path stage 03 uses."""
    data = make_features_data()
    scores = run_detectors(data, [name], {name: params}, log=False)[name].scores
    assert scores.shape == (len(data),)
    assert openset_metrics(scores, data.is_open)["auroc"] > 0.9, (name, params)


def test_uncertainty_is_the_extra_itself(make_features_data):
    data = make_features_data(n_close=20, n_open=10)
    np.testing.assert_allclose(make_detector("uncertainty").score(data), data.extras["uncertainty"])


def _entropy(q: np.ndarray) -> np.ndarray:
    return -(q * np.log(q)).sum(axis=-1)


def test_disagreement_measures_match_their_definitions(make_features_data):
    """kl: mean_b KL(p_b || p_mean) = H(p_mean) - mean_b H(p_b); vote: 1 - majority share."""
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 2, (6, 4, 5))
    logits[0] = logits[0, :1]  # every branch identical: no disagreement at all
    data = replace(make_features_data(n_close=6, n_open=0), extras={"branch_logits": logits})
    p = softmax(logits, axis=2)
    mutual_information = _entropy(p.mean(axis=1)) - _entropy(p).mean(axis=1)
    kl = make_detector("disagreement").score(data)
    np.testing.assert_allclose(kl, mutual_information, atol=1e-10)
    assert kl[0] == pytest.approx(0.0, abs=1e-12) and (kl[1:] > 0).all()
    votes = logits.argmax(axis=2)
    majority = np.array([np.bincount(v, minlength=5).max() for v in votes])
    np.testing.assert_allclose(make_detector("disagreement", measure="vote").score(data), 1 - majority / 4)


@pytest.mark.parametrize(
    "name, head",
    [("uncertainty", "'uncertainty' in stage 01"), ("disagreement", "'branches' in stage 01")],
)
def test_missing_extras_name_the_head(name, head, make_features_data):
    """A run whose close-set model had another head: a ValueError naming the head needed,
    also on stage 03's path (label-free view)."""
    data = replace(make_features_data(n_close=20, n_open=10), extras={})
    with pytest.raises(ValueError, match=rf"detector '{name}' needs the close-set model's per-sample .*head {head}"):
        run_detectors(data, [name], log=False)


def test_disagreement_refuses_what_it_cannot_measure(make_features_data):
    with pytest.raises(ValueError, match="measure must be one of"):
        make_detector("disagreement", measure="variance")
    one_branch = replace(make_features_data(n_close=4, n_open=0), extras={"branch_logits": np.zeros((4, 1, 3))})
    with pytest.raises(ValueError, match="at least 2 branches"):
        make_detector("disagreement").score(one_branch)


def test_result_key_covers_the_extras_read_and_only_those(make_features_data):
    """A detector's key hashes the extras it reads (reuse must not survive a new stage 02),
    while detectors that read none keep the keys they had before extras existed."""
    from ferlib.openset import detector_class
    from ferlib.openset.keys import result_ingredients, result_key

    def key(data, name):
        return result_key(result_ingredients(detector_class(name), {}, data.detector_view(), "honest", "all"))

    data = make_features_data(n_close=20, n_open=10)
    calmer = replace(data, extras={**data.extras, "uncertainty": data.extras["uncertainty"] * 0.5})
    assert key(calmer, "uncertainty") != key(data, "uncertainty")
    assert key(calmer, "disagreement") == key(data, "disagreement")
    assert key(replace(data, extras={}), "msp") == key(data, "msp")
    assert "model_extras" not in result_ingredients(detector_class("msp"), {}, data, "honest", "all")


# ----------------------------------------------------------------------------- alignment


def test_extras_must_have_one_entry_per_row(make_features_data):
    data = make_features_data(n_close=20, n_open=10)
    with pytest.raises(ValueError, match=r"extras\['uncertainty'\] has 29 rows, table has 30"):
        replace(data, extras={"uncertainty": np.zeros(29)})


def test_subset_keeps_extras_aligned(make_features_data):
    data = make_features_data(n_close=20, n_open=10)
    order = np.random.default_rng(0).permutation(len(data))
    sub = data.subset(order)
    for name, value in data.extras.items():
        np.testing.assert_array_equal(sub.extras[name], value[order])
    np.testing.assert_array_equal(sub.logits, data.logits[order])
    masked = data.subset(data.table["origin"].to_numpy() == "test")
    np.testing.assert_array_equal(masked.extras["uncertainty"], data.extras["uncertainty"][:20])


def test_reference_protocol_moves_extras_with_the_logits(make_features_data):
    """The reference protocol gives each training row another image's outputs: its extras
    must come from the same donor as its logits; test rows keep theirs."""
    data = make_features_data(n_close=40, n_open=20)
    n_split = 100
    rng = np.random.default_rng(1)
    all_logits = rng.normal(0, 1, (n_split, data.num_classes))
    all_features = rng.normal(0, 1, (n_split, data.features.shape[1]))
    all_extras = {"uncertainty": rng.random(n_split), "branch_logits": rng.normal(0, 1, (n_split, 3, 4))}
    ref = apply_protocol(data, "reference", all_logits, all_features, seed=5, all_train_extras=all_extras)
    train = data.table["origin"].to_numpy() == "train"
    donors = np.random.default_rng(5).permutation(n_split)[data.table["source_index"].to_numpy()[train]]
    np.testing.assert_array_equal(ref.logits[train], all_logits[donors])
    for name in all_extras:
        np.testing.assert_array_equal(ref.extras[name][train], all_extras[name][donors])
        np.testing.assert_array_equal(ref.extras[name][~train], data.extras[name][~train])
    assert not np.array_equal(ref.extras["uncertainty"], data.extras["uncertainty"])
    np.testing.assert_array_equal(apply_protocol(data, "honest").extras["uncertainty"], data.extras["uncertainty"])
    with pytest.raises(ValueError, match=r"extras \['branch_logits'\] on the whole training split"):
        apply_protocol(
            data, "reference", all_logits, all_features, all_train_extras={"uncertainty": all_extras["uncertainty"]}
        )


def _stage02_files(run: Path, data, all_extras: dict | None) -> None:
    """Stage 02's files by hand, the extras under stage 02's keys (none: a run without them)."""
    out = run / "02_pseudo_labels"
    out.mkdir(parents=True)
    data.table.to_csv(out / "pseudo_labels.csv", index=False)
    n_split = len(next(iter(all_extras.values()))) if all_extras else 100
    rng = np.random.default_rng(0)
    arrays = {
        "eval_logits": data.logits,
        "eval_features": data.features,
        "all_train_logits": rng.normal(0, 1, (n_split, data.num_classes)),
        "all_train_features": rng.normal(0, 1, (n_split, data.features.shape[1])),
        "train_index": np.arange(n_split - 50, n_split),
        "train_targets": rng.integers(0, data.num_classes, 50),
        "class_names": np.array([f"c{k}" for k in range(data.num_classes)]),
    }
    if all_extras:
        arrays.update({f"eval_extra_{k}": v for k, v in data.extras.items()})
        arrays.update({f"all_train_extra_{k}": v for k, v in all_extras.items()})
    write_npz(out / "outputs.npz", arrays)


def test_stage_03_reads_stage_02_extras_under_every_protocol_and_subset(tmp_path, make_features_data):
    data = make_features_data(n_close=40, n_open=20)
    rng = np.random.default_rng(2)
    all_extras = {"uncertainty": rng.random(100) * 0.1, "branch_logits": rng.normal(0, 1, (100, 3, 4))}
    _stage02_files(tmp_path / "run", data, all_extras)
    run = str(tmp_path / "run")
    honest = stages.load_openset_data(run, "honest", seed=3)
    assert set(honest.extras) == {"uncertainty", "branch_logits"}
    np.testing.assert_array_equal(honest.extras["branch_logits"], data.extras["branch_logits"])
    ref = stages.load_openset_data(run, "reference", seed=3)
    expected = apply_protocol(data, "reference", *_all_outputs(run), seed=3, all_train_extras=all_extras)
    for name in all_extras:
        np.testing.assert_array_equal(ref.extras[name], expected.extras[name])
    test_only = stages.load_openset_data(run, "reference", seed=3, eval_subset="test")
    np.testing.assert_array_equal(test_only.extras["uncertainty"], data.extras["uncertainty"][:40])

    metrics = stages.detect_open_set(run_dir=run, detectors=["msp", "uncertainty", "disagreement"], progress=False)
    by = metrics.set_index(["protocol", "detector"])["auroc"]
    assert by[("honest", "uncertainty")] > 0.9 and by[("honest", "disagreement")] > 0.9
    # the reference protocol hands the open training rows other images' (close, here calm) extras
    assert by[("reference", "uncertainty")] < by[("honest", "uncertainty")]
    scores = stages.load_scores(run, "honest")
    np.testing.assert_allclose(scores["uncertainty"], data.extras["uncertainty"])


def _all_outputs(run: str) -> tuple[np.ndarray, np.ndarray]:
    z = np.load(Path(run) / "02_pseudo_labels" / "outputs.npz")
    return z["all_train_logits"], z["all_train_features"]


def test_stage_03_on_a_run_without_extras_names_the_head(tmp_path, make_features_data):
    """A stage 02 file from a linear-head model (or from before extras were saved): the
    default detectors run as before, an extras reader names the head it needs."""
    data = make_features_data(n_close=40, n_open=20)
    _stage02_files(tmp_path / "run", replace(data, extras={}), None)
    run = str(tmp_path / "run")
    assert stages.load_openset_data(run, "reference").extras == {}
    stages.detect_open_set(run_dir=run, detectors=["msp"], progress=False)
    with pytest.raises(ValueError, match=r"head 'uncertainty' in stage 01.*extras: none"):
        stages.detect_open_set(run_dir=run, detectors=["uncertainty"], progress=False)
