"""Label noise as a data option (``ferlib.data.noise``) and the label step of stage 01
(``ferlib.data.prepare.training_labels``): exact flip counts, seeds, where each kind sends a
label, annotator votes, and the test split left clean."""

from __future__ import annotations

import numpy as np
import pytest

from ferlib.data import DataError
from ferlib.data.noise import (
    FERPLUS_CONFUSION,
    VALID_STREAM,
    LabelNoise,
    add_label_noise,
    resolve_pairs,
    vote_confusion,
    vote_pairs,
)
from ferlib.data.prepare import check_labels, load_splits, training_labels, vote_distribution
from ferlib.emotions import BASIC7, Emotion

K = 6
TARGETS = np.arange(1000) % K  # balanced, every class present


def _noise(**kw) -> LabelNoise:
    return LabelNoise(**{"kind": "symmetric", "rate": 0.2, "seed": 0, **kw})


# --------------------------------------------------------------------------- symmetric / pair
@pytest.mark.parametrize("rate", [0.0, 0.123, 0.2, 0.5, 0.9])
def test_symmetric_flips_exactly_the_fraction_never_to_itself(rate):
    noisy = add_label_noise(TARGETS, K, _noise(rate=rate))
    assert noisy.flipped.sum() == round(rate * len(TARGETS))
    assert np.array_equal(noisy.flipped, noisy.targets != TARGETS)  # a flipped row always changed class
    assert noisy.rate == pytest.approx(round(rate * len(TARGETS)) / len(TARGETS))
    assert noisy.targets.min() >= 0 and noisy.targets.max() < K


def test_symmetric_spreads_over_every_other_class():
    noisy = add_label_noise(TARGETS, K, _noise(rate=0.9))
    for c in range(K):
        moved = noisy.targets[(TARGETS == c) & noisy.flipped]
        assert set(moved.tolist()) == set(range(K)) - {c}
        counts = np.bincount(moved, minlength=K)[[k for k in range(K) if k != c]]
        assert counts.min() > 0.5 * counts.mean()  # roughly uniform, not all to one class


def test_noise_is_reproducible_by_seed_and_seeds_differ():
    a = add_label_noise(TARGETS, K, _noise(seed=3))
    b = add_label_noise(TARGETS, K, _noise(seed=3))
    c = add_label_noise(TARGETS, K, _noise(seed=4))
    v = add_label_noise(TARGETS, K, _noise(seed=3), stream=VALID_STREAM)
    assert np.array_equal(a.targets, b.targets)
    assert not np.array_equal(a.flipped, c.flipped)
    assert not np.array_equal(a.flipped, v.flipped)  # the validation draw is its own stream
    assert np.array_equal(TARGETS, np.arange(1000) % K)  # the input is not modified


def test_pair_sends_each_flip_to_its_partner_and_counts_exactly():
    partner = np.array([1, 0, 3, 2, -1, -1])  # classes 4 and 5 have no partner
    noisy = add_label_noise(TARGETS, K, LabelNoise("pair", 0.3, seed=1), partner=partner)
    assert noisy.flipped.sum() == 300
    rows = np.flatnonzero(noisy.flipped)
    assert np.array_equal(noisy.targets[rows], partner[TARGETS[rows]])
    assert not noisy.flipped[TARGETS >= 4].any()
    with pytest.raises(ValueError, match="only 668 rows belong to a class with a partner"):
        add_label_noise(TARGETS, K, LabelNoise("pair", 0.7), partner=partner)


def test_vote_pairs_take_the_class_with_most_secondary_votes():
    # class 0 rows: second votes mostly for 2; class 1: for 0; class 2: none at all
    targets = np.array([0, 0, 1, 2])
    votes = np.array([[5, 1, 3], [6, 0, 2], [4, 6, 0], [0, 0, 9]])
    assert vote_confusion(targets, votes).tolist() == [[0, 1, 5], [4, 0, 0], [0, 0, 0]]
    assert vote_pairs(targets, votes).tolist() == [2, 0, -1]


def test_pairs_given_by_the_user_win_and_must_be_model_classes():
    classes = [e for e in BASIC7 if e is not Emotion.SURPRISE]  # surprise held out
    noise = LabelNoise("pair", 0.1, pairs={"Fear": "sad", "anger": "disgust"})
    partner = resolve_pairs(noise, classes, TARGETS % 6, np.ones((1000, 6)))
    names = [c.label for c in classes]
    assert {names[i]: names[j] for i, j in enumerate(partner) if j >= 0} == {"fear": "sadness", "anger": "disgust"}
    with pytest.raises(ValueError, match="surprise, not a class of this model"):
        resolve_pairs(LabelNoise("pair", 0.1, pairs={"fear": "surprise"}), classes)


def test_default_pairs_without_votes_follow_the_ferplus_ranking_skipping_absent_classes():
    every = resolve_pairs(LabelNoise("pair", 0.1), BASIC7)
    assert [BASIC7[j].label for j in every] == [
        "sadness",  # neutral
        "neutral",  # happiness
        "fear",  # surprise
        "neutral",  # sadness
        "neutral",  # anger
        "anger",  # disgust
        "surprise",  # fear
    ]
    classes = [e for e in BASIC7 if e is not Emotion.SURPRISE]
    partner = resolve_pairs(LabelNoise("pair", 0.1), classes)
    fear = classes.index(Emotion.FEAR)
    assert classes[partner[fear]] is Emotion.SADNESS  # fear's second choice: surprise is not a class
    assert all(set(rank) == set(Emotion) - {e} for e, rank in FERPLUS_CONFUSION.items())


# --------------------------------------------------------------------------- annotator
def test_annotator_draws_one_of_the_rows_votes():
    votes = np.array([[10, 0, 0], [0, 4, 6], [3, 3, 3]] * 3000)  # rows: unanimous, 40/60, thirds
    targets = votes.argmax(1)
    noisy = add_label_noise(targets, 3, LabelNoise("annotator", seed=0), class_votes=votes)
    assert not noisy.flipped[0::3].any()  # a unanimous row cannot be relabelled
    second = noisy.targets[1::3]
    assert set(second.tolist()) == {1, 2}  # never a class without a vote
    assert np.mean(second == 1) == pytest.approx(0.4, abs=0.03)
    assert np.bincount(noisy.targets[2::3], minlength=3) / 3000 == pytest.approx([1 / 3] * 3, abs=0.03)
    again = add_label_noise(targets, 3, LabelNoise("annotator", seed=0), class_votes=votes)
    assert np.array_equal(noisy.targets, again.targets)
    with pytest.raises(ValueError, match="needs annotator votes"):
        add_label_noise(targets, 3, LabelNoise("annotator"))


# --------------------------------------------------------------------------- validation of the settings
@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"kind": "symmetric", "rate": 1.0}, r"rate must lie in \[0, 1\)"),
        ({"kind": "symmetric", "rate": -0.1}, r"rate must lie in \[0, 1\)"),
        ({"kind": "symmetric", "rate": "0.2"}, "rate must be a number"),
        ({"kind": "symmetric"}, "needs a rate"),
        ({"kind": "annotator", "rate": 0.2}, "takes no rate"),
        ({"kind": "uniform", "rate": 0.2}, "kind must be one of symmetric, pair, annotator"),
        ({"rate": 0.2}, "needs a 'kind'"),
        ({"kind": "symmetric", "rate": 0.2, "sed": 1}, "no key 'sed'"),
        ({"kind": "symmetric", "rate": 0.2, "pairs": {"fear": "surprise"}}, "pairs apply to kind 'pair' only"),
        ({"kind": "pair", "rate": 0.2, "pairs": {"fear": "fear"}}, "paired with itself"),
        ({"kind": "pair", "rate": 0.2, "pairs": {"fear": "awe"}}, "label_noise pairs 'fear': 'awe'"),
        ({"kind": "symmetric", "rate": 0.2, "seed": -1}, "seed must be an integer >= 0"),
    ],
)
def test_bad_label_noise_is_refused_with_a_clear_message(params, message):
    with pytest.raises(ValueError, match=message):
        LabelNoise.from_params(params)


def test_check_labels_names_a_data_set_without_votes():
    with pytest.raises(ValueError, match="'rafdb' has not"):
        check_labels("rafdb", "crossentropy")
    with pytest.raises(ValueError, match="'synthetic' has not"):
        check_labels("synthetic", "majority", {"kind": "annotator"})
    with pytest.raises(ValueError, match="label_mode must be one of majority, probability, crossentropy"):
        check_labels("ferplus", "soft")
    with pytest.raises(ValueError, match="cannot be combined"):
        check_labels("ferplus", "probability", {"kind": "symmetric", "rate": 0.1})
    assert check_labels("synthetic", "majority", {"kind": "pair", "rate": 0.1}).kind == "pair"
    assert check_labels("ferplus", "crossentropy") is None


# --------------------------------------------------------------------------- the label step on FERPlus-like data
def _v(**votes: int) -> list[int]:
    order = ["neu", "hap", "sur", "sad", "ang", "dis", "fea", "con", "unk", "nf"]
    return [votes.get(k, 0) for k in order]


@pytest.fixture
def tiny_ferplus(make_ferplus):
    """Train rows with mixed votes (contempt, unknown and the open class surprise among
    them), a validation and a test split."""
    train = [
        ("a.png", _v(neu=6, sad=3, con=1)),
        ("b.png", _v(hap=8, neu=2)),
        ("c.png", _v(neu=5, sur=4, unk=1)),  # surprise is the open class: its votes go
        ("d.png", _v(sad=7, neu=3)),
        ("e.png", _v(fea=5, sur=3, sad=2)),
        ("f.png", _v(hap=10)),
        ("g.png", _v(ang=6, dis=4)),
        ("h.png", _v(dis=5, ang=5)),  # tie: first max -> anger
        ("i.png", _v(dis=6, ang=3, neu=1)),
    ] * 5
    train = [(f"{i}{name}", v) for i, (name, v) in enumerate(train)]
    valid = [(f"v{i}.png", v) for i, (_, v) in enumerate(train[:18])]
    test = [(f"t{i}.png", v) for i, (_, v) in enumerate(train[:18])] + [("ts.png", _v(sur=9))]
    return make_ferplus({"train": train, "valid": valid, "test": test})


def _splits(root, tmp_path):
    return load_splits("ferplus", str(root), "surprise", 32, cache_dir=str(tmp_path / "cache"))


def test_label_modes_read_the_votes_of_the_model_classes(tiny_ferplus, tmp_path):
    s = _splits(tiny_ferplus, tmp_path)
    names = s.label_map.names
    assert names == ["neutral", "happiness", "sadness", "anger", "disgust", "fear"]
    majority = training_labels(s, "majority", dataset="ferplus")
    assert majority.train_soft is None
    soft = training_labels(s, "crossentropy", dataset="ferplus")
    first = {name: p for name, p in zip(names, soft.train_soft[0])}  # a.png: neu 6, sad 3, (contempt 1 dropped)
    assert first == pytest.approx(
        {"neutral": 2 / 3, "happiness": 0, "sadness": 1 / 3, "anger": 0, "disgust": 0, "fear": 0}
    )
    third = soft.train_soft[2]  # c.png: neu 5, (surprise 4 and unknown 1 dropped)
    assert third.tolist() == [1, 0, 0, 0, 0, 0]
    assert soft.train_soft[7].tolist() == pytest.approx([0, 0, 0, 0.5, 0.5, 0])  # h.png, the tie
    assert soft.train_soft.sum(1) == pytest.approx(np.ones(len(soft.train_soft)))
    # hard targets (accuracy, validation) stay the majority vote in every mode
    for mode in ("probability", "crossentropy"):
        other = training_labels(s, mode, dataset="ferplus")
        assert np.array_equal(other.train_targets, majority.train_targets)
        assert np.array_equal(other.val_targets, majority.val_targets)
        assert np.array_equal(other.train_soft, soft.train_soft)


def test_vote_distribution_falls_back_to_one_hot_without_votes():
    out = vote_distribution(np.array([[0, 0, 0], [1, 3, 0]]), np.array([2, 1]))
    assert out.tolist() == [[0, 0, 1], [0.25, 0.75, 0]]


def test_noise_on_train_and_validation_never_on_test(tiny_ferplus, tmp_path):
    s = _splits(tiny_ferplus, tmp_path)
    test_before = s.test.labels.clone()
    clean = training_labels(s, dataset="ferplus")
    noisy = training_labels(s, label_noise={"kind": "symmetric", "rate": 0.25, "seed": 0}, dataset="ferplus")
    assert noisy.train_flipped.sum() == round(0.25 * len(clean.train_targets))
    assert np.array_equal(noisy.train_clean, clean.train_targets)
    assert np.array_equal(noisy.train_rows, clean.train_rows)
    assert noisy.val_flipped.sum() == round(0.25 * len(clean.val_targets))
    assert np.array_equal(s.test.labels, test_before)  # the test split is untouched
    summary = noisy.summary()["label_noise"]
    assert summary["measured_rate_train"] == pytest.approx(noisy.train_flipped.mean())
    assert summary["kind"] == "symmetric" and summary["rate"] == 0.25
    kept = training_labels(s, label_noise={"kind": "symmetric", "rate": 0.25, "validation": False}, dataset="ferplus")
    assert not kept.val_flipped.any() and np.array_equal(kept.val_targets, clean.val_targets)
    assert np.array_equal(kept.train_targets, noisy.train_targets)  # the flag does not change the training draw


def test_pair_noise_on_ferplus_pairs_from_the_training_votes(tiny_ferplus, tmp_path):
    s = _splits(tiny_ferplus, tmp_path)
    labels = training_labels(s, label_noise={"kind": "pair", "rate": 0.5, "seed": 2}, dataset="ferplus")
    # neutral rows vote sadness 3 (a.png) vs surprise (open: dropped); fear rows vote sadness
    # (surprise dropped); anger <-> disgust; happiness -> neutral; sadness -> neutral
    assert labels.pairs == {
        "neutral": "sadness",
        "happiness": "neutral",
        "sadness": "neutral",
        "anger": "disgust",
        "disgust": "anger",
        "fear": "sadness",
    }
    names = s.label_map.names
    moved = {
        (names[a], names[b])
        for a, b in zip(labels.train_clean[labels.train_flipped], labels.train_targets[labels.train_flipped])
    }
    assert moved <= set(labels.pairs.items())


def test_annotator_noise_on_ferplus_draws_only_model_class_votes(tiny_ferplus, tmp_path):
    s = _splits(tiny_ferplus, tmp_path)
    labels = training_labels(s, label_noise={"kind": "annotator", "seed": 0}, dataset="ferplus")
    soft = training_labels(s, "crossentropy", dataset="ferplus").train_soft
    # every drawn label holds a vote for a model class on its row (contempt, unknown, surprise never)
    assert (soft[np.arange(len(soft)), labels.train_targets] > 0).all()
    unanimous = soft.max(1) == 1  # f.png, and c.png once surprise and unknown are dropped
    assert unanimous.any() and not labels.train_flipped[unanimous].any()
    assert np.array_equal(labels.train_flipped, labels.train_targets != labels.train_clean)
    assert 0 < labels.train_flipped.mean() < 0.6
    assert labels.summary()["label_noise"]["rate"] is None


def test_modes_needing_votes_fail_on_splits_without_them(tmp_path):
    from ferlib.data.synthetic import SyntheticConfig, write_synthetic

    root = write_synthetic(tmp_path / "syn", SyntheticConfig(n_train=14, n_valid=7, n_test=7, image_size=16))
    s = load_splits("synthetic", str(root), None, 32, cache_dir=None)
    with pytest.raises(DataError, match="'synthetic' has not"):
        training_labels(s, "probability", dataset="synthetic")


# --------------------------------------------------------------------------- stage 01
def _stage(tmp_path, name, **params):
    from ferlib import stages
    from ferlib.data.synthetic import SyntheticConfig, write_synthetic
    from ferlib.io import read_json

    root = tmp_path / "syn"
    if not root.exists():
        write_synthetic(root, SyntheticConfig(n_train=70, n_valid=14, n_test=28, image_size=32))
    common = dict(dataset="synthetic", data_root=str(root), input_size=32, epochs=1, batch_size=16, progress=False)
    run = tmp_path / name
    out = stages.train_close_set(**common, cache_dir=str(tmp_path / "cache"), run_dir=str(run), **params)
    return out, read_json(run / "01_close_set" / "key.json"), run / "01_close_set"


def test_stage_01_with_label_noise_writes_the_mask_and_retrains(tmp_path):
    from ferlib.io import read_json

    _, clean_key, clean_dir = _stage(tmp_path, "clean")
    noise = {"kind": "symmetric", "rate": 0.3, "seed": 5}
    results, noisy_key, noisy_dir = _stage(tmp_path, "noisy", label_noise=noise)
    assert not (clean_dir / "label_noise.npz").exists()
    assert noisy_key["key"] != clean_key["key"]
    assert noisy_key["train_data"] != clean_key["train_data"]  # the targets' digest carries the noise
    z = np.load(noisy_dir / "label_noise.npz")
    n = len(z["train_rows"])
    assert n == results["n_train"] and z["train_flipped"].sum() == round(0.3 * n)
    assert np.array_equal(z["train_flipped"], z["train_noisy"] != z["train_clean"])
    assert z["val_flipped"].sum() == round(0.3 * len(z["val_rows"]))
    recorded = read_json(noisy_dir / "results.json")["label_noise"]
    assert recorded["kind"] == "symmetric" and recorded["rate"] == 0.3 and recorded["seed"] == 5
    assert recorded["measured_rate_train"] == pytest.approx(z["train_flipped"].mean())
    manifest = read_json(tmp_path / "noisy" / "manifest.json")
    assert manifest["close_set"]["label_noise"]["measured_rate_train"] == recorded["measured_rate_train"]
    # same noise, another run seed: the same noisy labels
    _, _, other_dir = _stage(tmp_path, "other_seed", label_noise=noise, seed=1)
    assert np.array_equal(np.load(other_dir / "label_noise.npz")["train_noisy"], z["train_noisy"])


def test_stage_01_refuses_bad_label_settings_before_any_work(tmp_path):
    from ferlib import stages

    root = tmp_path / "absent"
    with pytest.raises(ValueError, match=r"rate must lie in \[0, 1\)"):
        stages.train_close_set(data_root=str(root), label_noise={"kind": "pair", "rate": 1.5}, run_dir=str(tmp_path))
    with pytest.raises(ValueError, match="label_mode='crossentropy' needs annotator votes.*'synthetic'"):
        stages.train_close_set(data_root=str(root), label_mode="crossentropy", run_dir=str(tmp_path))
    assert not root.exists()  # nothing was generated or decoded


def test_stage_01_trains_ferplus_on_vote_distributions(tiny_ferplus, tmp_path):
    from ferlib import stages
    from ferlib.io import read_json

    common = dict(dataset="ferplus", data_root=str(tiny_ferplus), input_size=32, epochs=1, batch_size=16)
    common.update(progress=False, cache_dir=str(tmp_path / "cache"))
    stages.train_close_set(**common, run_dir=str(tmp_path / "soft"), label_mode="crossentropy")
    stages.train_close_set(**common, run_dir=str(tmp_path / "hard"))
    soft = read_json(tmp_path / "soft" / "01_close_set" / "key.json")
    hard = read_json(tmp_path / "hard" / "01_close_set" / "key.json")
    assert soft["soft_targets"]["mode"] == "crossentropy" and "soft_targets" not in hard
    assert soft["key"] != hard["key"] and soft["train_data"] == hard["train_data"]  # same hard targets
    assert read_json(tmp_path / "soft" / "01_close_set" / "results.json")["label_mode"] == "crossentropy"


# --------------------------------------------------------------------------- real FERPlus (skipped when absent)
@pytest.mark.ferplus
def test_real_ferplus_votes_give_the_documented_ranking_and_annotator_rate(ferplus_root):
    """FERPLUS_CONFUSION is what the training votes say (8 classes), and annotator noise on the
    seven-class training split (contempt dropped, as stage 01) disagrees with the majority
    vote on about 22% of the images (measured 0.2236 with seed 0; expected 0.2195)."""
    from ferlib.data.ferplus import emotion_votes, load_ferplus

    ds = load_ferplus(ferplus_root, "train", num_classes=8)
    votes = emotion_votes(ds.votes)
    confusion = vote_confusion(ds.labels, votes)
    for emotion, ranking in FERPLUS_CONFUSION.items():
        order = [Emotion(int(k)) for k in np.argsort(-confusion[int(emotion)], kind="stable") if k != int(emotion)]
        assert tuple(order) == ranking, emotion.label

    seven = load_ferplus(ferplus_root, "train", num_classes=7)
    kept = [int(e) for e in BASIC7]
    targets = np.searchsorted(kept, seven.labels)
    class_votes = emotion_votes(seven.votes)[:, kept]
    noisy = add_label_noise(targets, 7, LabelNoise("annotator", seed=0), class_votes=class_votes)
    assert len(targets) == 28217 and noisy.rate == pytest.approx(0.2236, abs=5e-4)
    expected = 1 - vote_distribution(class_votes, targets)[np.arange(len(targets)), targets].mean()
    assert expected == pytest.approx(0.2195, abs=5e-4)
    assert [BASIC7[j].label for j in vote_pairs(targets, class_votes)] == [
        "sadness",
        "neutral",
        "fear",
        "neutral",
        "neutral",
        "anger",
        "surprise",
    ]
