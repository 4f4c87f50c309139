"""pytorch-ood's detectors through the adapter (ferlib/openset/pood.py): the kit's sign, the
last layer recovered exactly from (features, logits), parameters, and which hand-written
post-hoc detectors compute the same thing as the library's."""

import numpy as np
import pandas as pd
import pytest
import torch

from ferlib.metrics import openset_metrics
from ferlib.openset import available_detectors, detector_class, make_detector, pood, validate_detectors
from ferlib.openset.data import TABLE_COLUMNS, OpenSetData

POOD = [n for n in available_detectors() if issubclass(detector_class(n), pood.PoodDetector)]
HEAD = [n for n in POOD if detector_class(n).needs_head]
#: small settings for 32-dimensional features
SMALL = {"vim": {"d": 8}}


def linear_head_data(
    n_close: int = 300, n_open: int = 100, k: int = 4, dim: int = 32, n_train: int = 600, seed: int = 0
) -> tuple[OpenSetData, np.ndarray, np.ndarray]:
    """As a close-set model with a linear head gives them: non-negative pooled features (after
    a ReLU), ``logits = features @ W.T + b`` in float32. Close rows light up their class's block
    of units; open rows light up units the classifier barely weighs (the second half) and the
    class blocks evenly: far from every class mean, flat softmax. Returns ``(data, W, b)``."""
    rng = np.random.default_rng(seed)
    block = dim // (2 * k)
    w = rng.normal(0, 0.05, (k, dim))
    for c in range(k):
        w[c, c * block : (c + 1) * block] += 1.0
    b = rng.normal(0, 0.1, k)

    def close(y):
        f = 0.3 + 0.3 * rng.standard_normal((len(y), dim))
        for c in range(k):
            f[y == c, c * block : (c + 1) * block] += 2.5
        return np.maximum(f, 0)

    def opens(n):
        f = 0.3 + 0.3 * rng.standard_normal((n, dim))
        f[:, dim // 2 :] += 1.5 * rng.random((n, dim // 2)) + 0.5
        f[:, : dim // 2] += 0.4
        return np.maximum(f, 0)

    y = rng.integers(0, k, n_close)
    features = np.concatenate([close(y), opens(n_open)]).astype(np.float32)
    train_targets = rng.integers(0, k, n_train)
    train_features = close(train_targets).astype(np.float32)
    logits = (features.astype(np.float64) @ w.T + b).astype(np.float32)
    n = n_close + n_open
    table = pd.DataFrame(
        {
            "index": np.arange(n),
            "path": [""] * n,
            "label": np.r_[y, np.full(n_open, 9)],
            "target": np.r_[y, -np.ones(n_open, int)],
            "pseudo": logits.argmax(1),
            "is_open": np.r_[np.zeros(n_close, bool), np.ones(n_open, bool)],
            "origin": "test",
            "source_index": np.arange(n),
        }
    )[TABLE_COLUMNS]
    data = OpenSetData(
        table=table, logits=logits, features=features, train_features=train_features, train_targets=train_targets
    )
    return data, w, b


@pytest.fixture(scope="module")
def linear_data() -> OpenSetData:
    return linear_head_data()[0]


# -- the registry and the contract -----------------------------------------------------------------------------------


def test_every_target_method_is_registered_through_the_adapter():
    expected = {
        "vim": "ViM",
        "react": "ReAct",
        "ash": "ASH",
        "scale": "SCALE",
        "gen": "GEN",
        "fdbd": "fDBD",
        "nnguide": "NNGuide",
        "pood_knn": "KNN",
        "pood_mahalanobis": "Mahalanobis",
        "rmd": "RMD",
        "pood_energy": "EnergyBased",
        "pood_entropy": "Entropy",
        "pood_msp": "MaxSoftmax",
        "pood_max_logit": "MaxLogit",
        "openmax": "OpenMax",
    }
    lib = pood._library()
    for name, library in expected.items():
        cls = detector_class(name)
        assert issubclass(cls, pood.PoodDetector) and cls.library == library, name
    for name in POOD:
        cls = detector_class(name)
        assert hasattr(lib, cls.library), name
        assert cls.reads_model_outputs and cls.depends_on_protocol(), name
        assert not (cls.trains_networks or cls.needs_images or cls.needs_train_images or cls.reads_pseudo_labels)
        assert cls.config_cls is not None and isinstance(make_detector(name).config, cls.config_cls)


@pytest.mark.parametrize("name", POOD)
def test_sign_higher_is_open(name, linear_data):
    """Open rows far from every class mean, with a flat softmax: every detector ranks them
    above the close rows (a wrong sign would give an AUROC near 0)."""
    data = linear_data
    scores = make_detector(name, **SMALL.get(name, {})).fit_score(data.detector_view())
    assert scores.shape == (len(data),) and scores.dtype == np.float64 and np.isfinite(scores).all()
    assert openset_metrics(scores, data.is_open)["auroc"] > 0.9, name


def test_sign_is_the_librarys_unchanged(linear_data):
    """pytorch-ood's "higher = more outlying" is the kit's "higher = more open": the adapter's
    scores are the library's own, not negated."""
    lib = pood._library()
    data = linear_data
    logits = torch.from_numpy(data.logits)
    assert pood.SIGN == 1.0
    np.testing.assert_array_equal(make_detector("pood_energy").fit_score(data), lib.EnergyBased.score(logits).numpy())
    knn = lib.KNN(None, k=5).fit_features(torch.from_numpy(data.train_features), torch.from_numpy(data.train_targets))
    np.testing.assert_allclose(
        make_detector("pood_knn", k=5).fit_score(data), knn.predict_features(torch.from_numpy(data.features)).numpy()
    )


def test_score_fits_an_unfitted_detector(linear_data):
    fitted = make_detector("react").fit(linear_data).score(linear_data)
    np.testing.assert_array_equal(make_detector("react").score(linear_data), fitted)


def test_feature_readers_see_what_the_logits_hide():
    """Open rows whose logits equal close rows' (their features differ only in the classifier's
    null space): the logits detectors cannot tell them apart, ViM and the distances can."""
    data, w, b = linear_head_data(seed=1)
    rng = np.random.default_rng(1)
    null = np.linalg.svd(w)[2][-1]  # W @ null == 0
    open_rows = np.flatnonzero(data.is_open)
    donors = rng.choice(np.flatnonzero(~data.is_open), len(open_rows))
    features = data.features.copy()
    features[open_rows] = features[donors] + 3.0 * np.sign(null[0]) * null
    data.features = features.astype(np.float32)
    data.logits = (data.features.astype(np.float64) @ w.T + b).astype(np.float32)
    np.testing.assert_allclose(data.logits[open_rows], data.logits[donors], atol=1e-4)
    auroc = {
        name: openset_metrics(make_detector(name, **SMALL.get(name, {})).fit_score(data), data.is_open)["auroc"]
        for name in ("pood_msp", "pood_energy", "vim", "pood_mahalanobis", "pood_knn")
    }
    assert auroc["pood_msp"] < 0.65 and auroc["pood_energy"] < 0.65, auroc
    assert min(auroc["vim"], auroc["pood_mahalanobis"], auroc["pood_knn"]) > 0.95, auroc


# -- the last layer, recovered ----------------------------------------------------------------------------------------


def test_recovery_is_exact():
    rng = np.random.default_rng(0)
    w, b = rng.normal(0, 1, (7, 24)), rng.normal(0, 1, 7)
    f = np.maximum(rng.normal(0.5, 1, (200, 24)), 0)
    fit = pood.recover_linear_head(f, f @ w.T + b)
    assert fit.identified and fit.rank == 24 and fit.rows == 200 and fit.residual < 1e-12
    np.testing.assert_allclose(fit.weight, w, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(fit.bias, b, rtol=1e-6, atol=1e-6)
    # float32 outputs, as stage 02 saves them: exact to float32 rounding
    f32, z32 = f.astype(np.float32), (f.astype(np.float32) @ w.T.astype(np.float32) + b.astype(np.float32))
    fit = pood.recover_linear_head(f32, z32)
    assert fit.residual < 1e-6
    np.testing.assert_allclose(fit.weight, w, atol=1e-4)
    np.testing.assert_allclose(fit.bias, b, atol=1e-4)


@pytest.mark.parametrize("head", ["linear", "uncertainty"])
def test_recovery_of_the_kits_linear_heads(head):
    """The kit's heads whose logits are one affine map of the pooled features, in eval mode and
    with flip test-time augmentation (logits and features averaged over the image and its mirror)."""
    from ferlib.models.registry import head_class

    torch.manual_seed(0)
    model = head_class(head)(16, 5).eval()
    fmap = torch.relu(torch.randn(80, 16, 3, 3))
    with torch.no_grad():
        a, m = model(fmap), model(torch.flip(fmap, dims=[3]))
    logits, features = ((a.logits + m.logits) / 2).numpy(), ((a.features + m.features) / 2).numpy()
    fit = pood.recover_linear_head(features, logits)
    assert fit.identified and fit.residual < 1e-5
    if head == "linear":
        np.testing.assert_allclose(fit.weight, model.fc.weight.detach().numpy(), atol=1e-4)
        np.testing.assert_allclose(fit.bias, model.fc.bias.detach().numpy(), atol=1e-4)
    np.testing.assert_allclose(fit.logits(features), logits, atol=1e-4)


def test_a_head_that_is_not_one_linear_layer_is_refused(make_features_data):
    """The branches head (each branch its own conv block): no detector runs on a made-up layer."""
    from ferlib.models.registry import head_class

    torch.manual_seed(0)
    model = head_class("branches")(16, 5).eval()
    with torch.no_grad():
        out = model(torch.relu(torch.randn(80, 16, 3, 3)))
    with pytest.raises(ValueError, match="not an affine function of the pooled features"):
        pood.recover_linear_head(out.features.numpy(), out.logits.numpy())
    data = make_features_data()
    data.logits = data.logits + np.sin(3 * data.features[:, :4])  # logits of the kit fixture, made non-affine
    with pytest.raises(ValueError, match="not an affine function"):
        make_detector("vim", d=4).fit(data)
    make_detector("pood_msp").fit_score(data)  # the logits detectors need no layer
    with pytest.raises(ValueError, match="no features"):
        pood.recover_linear_head(np.zeros((10, 0)), data.logits[:10])


def test_scoring_rows_that_do_not_follow_the_fitted_layer_is_refused(linear_data):
    from dataclasses import replace

    detector = make_detector("fdbd").fit(linear_data)
    other = replace(
        linear_data, logits=linear_data.logits + np.random.default_rng(0).normal(0, 3, linear_data.logits.shape)
    )
    with pytest.raises(ValueError, match="do not follow the last layer"):
        detector.score(other)


def test_too_few_rows_warn_and_still_reproduce_the_logits():
    rng = np.random.default_rng(0)
    w, b = rng.normal(0, 1, (4, 30)), rng.normal(0, 1, 4)
    f = rng.normal(0, 1, (12, 30))
    with pytest.warns(UserWarning, match="determined only on the features' span"):
        fit = pood.recover_linear_head(f, f @ w.T + b)
    assert not fit.identified and fit.rank == 11
    np.testing.assert_allclose(fit.logits(f), f @ w.T + b, atol=1e-5)


@pytest.mark.parametrize("name", HEAD)
def test_recovered_layer_gives_the_scores_of_the_true_layer(name, linear_data, monkeypatch):
    """Every detector built around the last layer scores the same with the recovered (W, b) as
    with the network's own."""
    data, w, b = linear_head_data()
    params = SMALL.get(name, {})
    recovered = make_detector(name, **params).fit_score(data)
    true = pood.LinearFit(w.astype(np.float32), b.astype(np.float32), 0.0, w.shape[1], len(data))
    monkeypatch.setattr(pood, "recover_linear_head", lambda *args, **kwargs: true)
    np.testing.assert_allclose(recovered, make_detector(name, **params).fit_score(data), rtol=2e-3, atol=1e-4)


@pytest.mark.parametrize("name, percentile", [("ash", 0.65), ("scale", 0.65), ("ash", 0.9)])
def test_ash_and_scale_shape_the_pooled_features_as_the_papers_say(name, percentile, linear_data):
    """The adapter's plumbing (pooled features as B x D x 1 x 1 maps, the recovered layer,
    energy) against the definitions: keep each row's top k = D - round(D p) activations;
    ASH-S prunes the rest and scales by exp(s1 / s2), SCALE scales every activation by it."""
    data = linear_data
    _, w, b = linear_head_data()
    x = data.features.astype(np.float64)
    k = x.shape[1] - int(np.round(x.shape[1] * percentile))
    top = np.sort(x, axis=1)[:, -k:]
    factor = np.exp(x.sum(1) / top.sum(1))[:, None]
    if name == "ash":
        kept = np.where(x >= top[:, :1], x, 0.0)  # no ties in continuous data
        shaped = kept * factor
    else:
        shaped = x * factor
    logits = shaped @ w.T + b
    expected = -(logits.max(1) + np.log(np.exp(logits - logits.max(1, keepdims=True)).sum(1)))
    got = make_detector(name, percentile=percentile).fit_score(data)
    np.testing.assert_allclose(got, expected, rtol=2e-3)


# -- parameters -------------------------------------------------------------------------------------------------------


def test_parameters_reach_the_library(linear_data):
    validate_detectors(
        ["vim", "react"],
        {"vim": {"d": 64}, "react": {"percentile": 0.95}, "pood_knn": {"k": 10}, "ash": {"variant": "ash-b"}},
    )
    assert make_detector("vim", d=64).config.d == 64
    vim = make_detector("vim", d=5).fit(linear_data)
    assert vim.detector_.d == 5 and vim.detector_.principal_subspace.shape == (32, 27)
    assert make_detector("vim").fit(linear_data).detector_.d == 16  # None = half the feature dimension
    assert make_detector("pood_knn", k=7).fit(linear_data).detector_.k == 7
    react = make_detector("react", percentile=0.5).fit(linear_data).detector_
    assert react.threshold == pytest.approx(np.percentile(linear_data.train_features, 50))
    # a fixed threshold: nothing fitted, the energy of the clipped features through the layer
    scores = make_detector("react", threshold=1.0).fit_score(linear_data)
    _, w, b = linear_head_data()
    clipped = np.minimum(linear_data.features.astype(np.float64), 1.0) @ w.T + b
    np.testing.assert_allclose(scores, -np.log(np.exp(clipped).sum(1)), rtol=1e-4)
    assert make_detector("gen", gamma=0.5, M=2).fit(linear_data).detector_.M == 2
    openmax = make_detector("openmax", tailsize=10, alpha=2, euclid_weight=0.5).fit(linear_data).detector_
    assert (openmax.tailsize, openmax.alpha, openmax.euclid_weight) == (10, 2, 0.5)


@pytest.mark.parametrize(
    "name, params, match",
    [
        ("vim", {"d": 0}, "d must be"),
        ("react", {"percentile": 90}, "percentile must be a fraction"),
        ("ash", {"variant": "ash-x"}, "variant must be one of"),
        ("ash", {"percentile": 1.0}, "percentile must be a fraction"),
        ("scale", {"percentile": -0.1}, "percentile must be a fraction"),
        ("pood_knn", {"k": 0}, "k must be"),
        ("nnguide", {"k": 0}, "k must be"),
        ("gen", {"gamma": 0}, "gamma must be"),
        ("gen", {"M": 0}, "M must be"),
        ("pood_energy", {"temperature": 0}, "temperature"),
        ("openmax", {"euclid_weight": 2}, "euclid_weight"),
        ("fdbd", {"max_residual": -1}, "max_residual"),
        ("vra", {"lower_percentile": 0.9, "upper_percentile": 0.5}, "lower_percentile must be below"),
        ("vim", {"dim": 3}, "unknown parameter 'dim'"),
        ("rmd", {"k": 3}, "rmd accepts no parameters"),
    ],
)
def test_bad_parameters_are_refused_before_any_work(name, params, match):
    with pytest.raises(ValueError, match=match):
        validate_detectors(["msp"], {name: params})


def test_data_problems_are_named(linear_data):
    from dataclasses import replace

    with pytest.raises(ValueError, match="d must be in"):
        make_detector("vim", d=32).fit(linear_data)
    with pytest.raises(ValueError, match="needs the close training features"):
        make_detector("pood_knn").fit(replace(linear_data, train_features=None))
    gap = replace(linear_data, train_targets=np.where(linear_data.train_targets == 1, 2, linear_data.train_targets))
    with pytest.raises(ValueError, match="cover the classes"):
        make_detector("pood_mahalanobis").fit(gap)


# -- the hand-written post-hoc detectors against the library's ------------------------------------------------------


@pytest.fixture(params=["kit", "linear"])
def both(request, make_features_data):
    """The kit's fixture (Gaussian features) and non-negative features with affine logits."""
    return make_features_data() if request.param == "kit" else linear_head_data()[0]


@pytest.mark.parametrize(
    "name, params", [("msp", {}), ("max_logit", {}), ("energy", {}), ("energy", {"temperature": 2.0})]
)
def test_msp_max_logit_energy_equal_the_librarys(name, params, both):
    kit = make_detector(name, **params).fit_score(both)
    lib = make_detector(f"pood_{name}", **params).fit_score(both)
    np.testing.assert_allclose(kit, lib, rtol=1e-6, atol=1e-7)


def test_entropy_equals_the_librarys_up_to_its_clip(both):
    """The library clips probabilities at 1e-7 before the log, the kit at 1e-12: equal where no
    probability is that small, and within K * 1e-7 * 17 everywhere."""
    kit = make_detector("entropy").fit_score(both)
    lib = make_detector("pood_entropy").fit_score(both)
    k = both.num_classes
    np.testing.assert_allclose(kit, lib, atol=k * 1e-7 * 17)
    p = np.exp(both.logits - both.logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    unclipped = p.min(1) > 1e-7
    assert unclipped.any()
    np.testing.assert_allclose(kit[unclipped], lib[unclipped], rtol=1e-5)


def test_mahalanobis_is_the_librarys_times_2n(both):
    """The library's score is half the squared distance under the *unnormalised* scatter
    matrix (covariance times N): the kit's minimum squared distance is 2 N times it."""
    kit = make_detector("mahalanobis").fit_score(both)
    lib = make_detector("pood_mahalanobis").fit_score(both)
    n = len(both.train_features)
    np.testing.assert_allclose(kit, 2 * n * lib, rtol=2e-3)
    assert openset_metrics(kit, both.is_open)["auroc"] == pytest.approx(
        openset_metrics(lib, both.is_open)["auroc"], abs=1e-3
    )


@pytest.mark.parametrize("k", [1, 5, 50])
def test_knn_is_a_monotone_map_of_the_librarys(k, both):
    """Kit: 1 - cosine similarity of the k-th neighbour; library: Euclidean distance between the
    unit vectors, sqrt(2 - 2 cos). Same neighbour, same order: lib = sqrt(2 kit)."""
    kit = make_detector("knn", k=k).fit_score(both)
    lib = make_detector("pood_knn", k=k).fit_score(both)
    np.testing.assert_allclose(lib, np.sqrt(2 * np.clip(kit, 0, None)), atol=2e-4)
    assert openset_metrics(kit, both.is_open)["auroc"] == pytest.approx(
        openset_metrics(lib, both.is_open)["auroc"], abs=1e-3
    )


# -- through stage 03 ------------------------------------------------------------------------------------------------


def test_stage_03_runs_them_from_stage_02_files(tmp_path):
    """Stage 02's files written by hand from one linear layer (the open rows come from the
    training split, so the reference protocol swaps their outputs for other training images'):
    stage 03 scores the adapter's detectors under both protocols, parameters included."""
    from ferlib import stages
    from ferlib.io import write_npz

    data, w, b = linear_head_data(n_close=120, n_open=40, n_train=300)
    n_close, n_open = 120, 40
    table = data.table.copy()
    table.loc[n_close:, "origin"] = "train"
    # the training split: 300 close rows, then the open class's 40 rows (the evaluation's open rows)
    all_features = np.concatenate([data.train_features, data.features[n_close:]])
    all_logits = (all_features.astype(np.float64) @ w.T + b).astype(np.float32)
    table.loc[n_close:, "source_index"] = 300 + np.arange(n_open)
    out = tmp_path / "run" / "02_pseudo_labels"
    out.mkdir(parents=True)
    for k in range(data.num_classes):
        table[f"logit_{k}"] = data.logits[:, k]
    table.to_csv(out / "pseudo_labels.csv", index=False)
    write_npz(
        out / "outputs.npz",
        {
            "eval_logits": data.logits,
            "eval_features": data.features,
            "all_train_logits": all_logits,
            "all_train_features": all_features,
            "train_index": np.arange(300),
            "train_targets": data.train_targets,
            "class_names": np.array([f"c{k}" for k in range(data.num_classes)]),
        },
    )
    names = ["vim", "react", "pood_knn", "fdbd"]
    metrics = stages.detect_open_set(
        run_dir=str(tmp_path / "run"), detectors=names, detector_params={"vim": {"d": 8}}, progress=False
    )
    assert set(metrics["detector"]) == set(names) and set(metrics["protocol"]) == {"honest", "reference"}
    honest = metrics[metrics["protocol"] == "honest"].set_index("detector")["auroc"]
    assert (honest > 0.9).all(), honest
    scores = stages.load_scores(str(tmp_path / "run"), "honest")
    assert set(names) <= set(scores.columns) and len(scores) == n_close + n_open
