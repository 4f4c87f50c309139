"""PROSER (CVPR 2021): the dummy head, the trunk split, the ``proser`` objective, the
calibration and the detector that fine-tunes stage 01's network."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from ferlib.losses import make_objective, validate_objective
from ferlib.losses.proser import ProserPlaceholders, different_class_pairs, placeholder_loss, with_dummy
from ferlib.metrics import openset_metrics
from ferlib.models import ForwardOutput, ModelConfig, build_model, load_pretrained
from ferlib.models.dummy import DummyHead
from ferlib.openset import detector_class, make_detector, validate_detectors
from ferlib.openset.keys import result_ingredients, result_key
from ferlib.openset.proser import (
    ProserConfig,
    ProserDetector,
    calibrate_bias,
    dummy_probability,
    known_margin,
)
from ferlib.openset.registry import resolve_params
from ferlib.params import ParameterError, applied_arguments, validate_arguments

# ----------------------------------------------------------------------------- network


@pytest.mark.parametrize("arch,stem", [("resnet18", "small"), ("resnet18", "imagenet"), ("smallface", "auto")])
def test_trunk_split_recomposes_the_forward(arch, stem):
    """Running the trunk up to any stage and on from there is the plain forward, and the
    dummy head's logits stay the K close-class logits, the dummy ones in extras."""
    torch.manual_seed(0)
    model = build_model(ModelConfig(arch, 4, 32, stem=stem, head="dummy", head_params={"dummies": 2}), verbose=False)
    model.eval()
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        full = model.forward_all(x)
        assert full.logits.shape == (3, 4) and full.extras["dummy_logits"].shape == (3, 2)
        for k in range(model.trunk.num_stages + 1):
            out = model.forward_from(model.forward_until(x, k), k)
            torch.testing.assert_close(out.logits, full.logits)
            torch.testing.assert_close(out.extras["dummy_logits"], full.extras["dummy_logits"])
    assert model.trunk.num_stages == (4 if arch == "smallface" else 5)


def test_dummy_head_takes_a_linear_checkpoint(tmp_path):
    """A stage 01 best.pt (head ``linear``) loads onto the dummy head whole: only the dummy
    classifier is new, and the close-class logits are the close-set model's."""
    torch.manual_seed(0)
    linear = build_model(ModelConfig("resnet18", 3, 32, stem="imagenet"), verbose=False).eval()
    torch.save(linear.state_dict(), tmp_path / "best.pt")
    dummy = build_model(ModelConfig("resnet18", 3, 32, stem="imagenet", head="dummy"), verbose=False).eval()
    report = load_pretrained(dummy, tmp_path / "best.pt", verbose=False)
    assert report.missing == ["head.dummy.bias", "head.dummy.weight"] and not report.mismatched
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(dummy(x), linear(x))


class TinyNet(nn.Module):
    """A linear model in the kit's interface: inputs are (B, F, 1, 1) "feature maps", the
    trunk one identity stage, the head the real dummy head. Records what the mixup sends
    through ``forward_from``."""

    def __init__(self, features: int, classes: int, dummies: int = 1):
        super().__init__()
        self.head = DummyHead(features, classes, dummies=dummies)
        self.trunk = SimpleNamespace(num_stages=1)
        self.seen: list[torch.Tensor] = []

    def forward_until(self, x, stage):
        return x

    def forward_from(self, h, stage):
        self.seen.append(h.detach().clone())
        out = self.head(h)
        return ForwardOutput(out.logits, out.features, h, out.extras)

    def forward_all(self, x):
        return self.forward_from(x, 0)


# ----------------------------------------------------------------------------- objective


def test_objective_registry_and_checks():
    assert validate_objective("proser") == {
        "name": "proser",
        "lamb0": 1.0,
        "lamb1": 1.0,
        "lamb2": 0.01,
        "alpha": 1.0,
        "mix_at": -1,
    }
    for bad, match in [
        ({"lamb1": -1.0}, "lamb1 must be a finite number >= 0"),
        ({"alpha": 0}, "alpha must be a finite number > 0"),
        ({"mix_at": 1.5}, "mix_at must be an integer"),
        ({"lamb0": 0, "lamb1": 0, "lamb2": 0}, "must not all be 0"),
    ]:
        with pytest.raises(ValueError, match=match):
            make_objective("proser", **bad)
    with pytest.raises(ValueError, match="use head='dummy'"):
        make_objective("proser").check(build_model(ModelConfig(num_classes=3, input_size=32), verbose=False))
    with pytest.raises(ValueError, match="mix_at=7 is outside the trunk's 5 stages"):
        dummy = build_model(ModelConfig(num_classes=3, input_size=32, head="dummy"), verbose=False)
        make_objective("proser", mix_at=7).check(dummy)


def test_different_class_pairs_never_pair_one_class():
    """Every row that has a row of another class in its batch is mixed, always with a row of
    another class; a batch of one class mixes nothing."""
    g = torch.Generator().manual_seed(0)
    for _ in range(200):
        n = int(torch.randint(2, 12, (1,), generator=g))
        y = torch.randint(0, 3, (n,), generator=g)
        i, j = different_class_pairs(y, g)
        assert (y[i] != y[j]).all()
        has_other = (y[:, None] != y[None, :]).any(dim=1)
        assert i.tolist() == torch.nonzero(has_other).squeeze(1).tolist()
    for y in (torch.tensor([2, 2, 2]), torch.tensor([1])):
        i, j = different_class_pairs(y)
        assert len(i) == len(j) == 0
    # partners are drawn among all rows of other classes, not a fixed one
    y = torch.tensor([0, 1, 1, 1, 2])
    partners = {int(different_class_pairs(y, g)[1][0]) for _ in range(100)}
    assert partners == {1, 2, 3, 4}


def test_mixup_mixes_samples_of_different_classes_only(monkeypatch):
    """Through the objective: each mixed map is lam * e_i + (1 - lam) * e_j of two one-hot
    rows whose classes differ, labelled as the dummy class."""
    n = 9
    y = torch.tensor([0, 0, 0, 0, 1, 1, 2, 2, 2])
    model = TinyNet(features=n, classes=3)
    objective = ProserPlaceholders(lamb2=1.0)
    monkeypatch.setattr(objective, "mix_coefficient", lambda: 0.3)
    torch.manual_seed(0)
    x = torch.eye(n)[:, :, None, None]
    loss, logits = objective(model, x, y, torch.arange(n))
    assert logits.shape == (n, 3) and torch.isfinite(loss)
    plain, mixed = model.seen
    torch.testing.assert_close(plain, x)
    mixed = mixed.flatten(1)
    assert len(mixed) == n  # every row has another class in this batch
    for row, m in enumerate(mixed):
        i, j = int(torch.argmax(m)), int(torch.nonzero((m > 0) & (m < 0.5)).squeeze())
        assert m[i] == pytest.approx(0.7) and m[j] == pytest.approx(0.3)
        assert y[i] != y[j], (row, i, j)


def test_dummy_is_trained_to_rank_second():
    """A few optimisation steps of the objective on a hand-built batch make, for every
    sample, the true class the top logit and the dummy the second (the classifier
    placeholder), starting from a dummy that ranks last everywhere."""
    torch.manual_seed(0)
    angles = torch.tensor([0.0, 2.1, 4.2])
    y = torch.arange(12) % 3
    x = torch.stack([torch.cos(angles[y]), torch.sin(angles[y])], 1) + 0.1 * torch.randn(12, 2)
    x = x[:, :, None, None]
    model = TinyNet(features=2, classes=3)
    with torch.no_grad():
        model.head.fc.weight.copy_(2 * torch.stack([torch.cos(angles), torch.sin(angles)], 1))
        model.head.fc.bias.zero_()
        model.head.dummy.weight.zero_()
        model.head.dummy.bias.fill_(-10.0)

    @torch.no_grad()
    def ranks():
        out = model.forward_all(x)
        extended = with_dummy(out.logits, out.extras["dummy_logits"])
        order = extended.argsort(dim=1, descending=True)
        return order[:, 0], order[:, 1], float(placeholder_loss(extended, y))

    top, second, before = ranks()
    assert (top == y).all() and not (second == 3).any()
    objective = ProserPlaceholders()
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    for _ in range(100):
        loss, _ = objective(model, x, y, torch.arange(12))
        opt.zero_grad()
        loss.backward()
        opt.step()
    top, second, after = ranks()
    assert (top == y).all() and (second == 3).all()
    assert after < before / 10


# ----------------------------------------------------------------------------- calibration and score


@pytest.mark.parametrize("share", [0.95, 0.9, 0.5, 1.0, 0.001])
def test_calibration_gives_the_asked_share_of_known(share):
    margin = np.random.default_rng(0).normal(3, 2, 201)
    bias = calibrate_bias(margin, share)
    known = (margin >= bias).mean()
    assert known == math.ceil(share * 201) / 201
    assert share <= known < share + 1 / 201 + 1e-12
    with pytest.raises(ValueError, match="known_share"):
        calibrate_bias(margin, 0.0)


@pytest.mark.parametrize("share", [0.95, 0.5])
def test_the_calibrated_dummy_wins_exactly_on_the_rows_called_unknown(share):
    """Calibrated on the margins of real logits and dummy logits, the bias makes the dummy the
    arg-max of ``[z, max dummy + bias]`` exactly on the rows whose margin is below it, and the
    asked share of rows keeps a close class. The margin is the best close logit minus the best
    dummy logit: one that ignored the dummy, or took its smallest, would call other rows known."""
    rng = np.random.default_rng(1)
    logits, dummy = rng.normal(0, 2, (201, 4)), rng.normal(0, 2, (201, 3))
    margin = known_margin(logits, dummy)
    bias = calibrate_bias(margin, share)
    extended = np.c_[logits, dummy.max(1) + bias]
    dummy_wins = extended.argmax(1) == logits.shape[1]
    ties = np.isclose(margin, bias)  # the calibration row itself: a tie, which the close class keeps
    assert (dummy_wins[~ties] == (margin < bias)[~ties]).all()
    assert (~dummy_wins).mean() == math.ceil(share * 201) / 201


def test_score_is_the_calibrated_dummy_probability():
    """softmax([z, max dummy + b])[K], higher for a larger dummy logit (more open); the bias
    shifts every score the same way, so the ranking (AUROC) does not depend on it."""
    g = torch.Generator().manual_seed(0)
    z, d = torch.randn(50, 4, generator=g) * 3, torch.randn(50, 2, generator=g) * 3
    z, d = z.double(), d.double()
    expected = torch.softmax(torch.cat([z, d.max(1, keepdim=True).values + 0.7], 1), 1)[:, -1]
    np.testing.assert_allclose(dummy_probability(z, d, 0.7), expected.numpy(), rtol=1e-10)
    s0, s1 = dummy_probability(z, d, 0.0), dummy_probability(z, d, 5.0)
    assert (np.argsort(s0) == np.argsort(s1)).all() and (s1 > s0).all()
    assert dummy_probability(z[:1], d[:1] + 1.0)[0] > dummy_probability(z[:1], d[:1])[0]


# ----------------------------------------------------------------------------- registry, parameters, keys


def test_registry_parameters_and_stage_validation():
    cls = detector_class("proser")
    assert cls is ProserDetector and cls.config_cls is ProserConfig
    assert cls.trains_networks and cls.needs_close_set and cls.needs_images and not cls.needs_train_images
    assert not cls.reads_pseudo_labels and not cls.reads_model_outputs and not cls.depends_on_protocol()
    params = resolve_params("proser", {"lamb2": 0.1}, {"input_size": 32, "seed": 3, "progress": False})
    assert params["lamb2"] == 0.1 and params["input_size"] == 32 and params["seed"] == 3
    assert {"epochs": 10, "lr": 1e-3, "weight_decay": 5e-4, "optimizer": "sgd", "batch_size": 128}.items() <= {
        k: params[k] for k in ("epochs", "lr", "weight_decay", "optimizer", "batch_size")
    }.items()
    assert {k: params[k] for k in ("dummies", "lamb0", "lamb1", "alpha", "mix_at", "known_share")} == {
        "dummies": 1,
        "lamb0": 1.0,
        "lamb1": 1.0,
        "alpha": 1.0,
        "mix_at": -1,
        "known_share": 0.95,
    }
    validate_detectors(["msp", "proser"], {"proser": {"epochs": 2, "lamb2": 0.0, "known_share": 0.9}})
    for bad, match in [
        ({"known_share": 0}, "known_share"),
        ({"lamb1": -1}, "lamb1"),
        ({"dummies": 0}, "dummies"),
        ({"pretrained": "w.pt"}, "pretrained is not used"),
        ({"optimizer": "rmsprop"}, "optimizer"),
        ({"lr": 0.0}, "lr=0.0 is out of range"),
        ({"lamda": 1}, "unknown parameter 'lamda'"),
    ]:
        with pytest.raises(ValueError, match=rf"detector_params\['proser'\].*{match}"):
            validate_detectors(["proser"], {"proser": bad})
    from ferlib import stages

    func = stages.detect_open_set
    ok = {"detectors": ["msp", "proser"], "detector_params": {"proser": {"epochs": 3}}}
    validate_arguments(func, applied_arguments(func, ok))
    with pytest.raises(ParameterError, match="detect_open_set.*known_share"):
        validate_arguments(func, applied_arguments(func, {**ok, "detector_params": {"proser": {"known_share": 2}}}))


def test_result_key_hashes_stage_01_weights_not_the_protocol(tmp_path, make_tiny_image_data, make_tiny_close_set):
    data = make_tiny_image_data()
    data.close_set = make_tiny_close_set(tmp_path)
    view = data.detector_view()
    params = resolve_params("proser", {"progress": False})
    key = result_key(result_ingredients(ProserDetector, params, view, "honest", "all"))
    assert key == result_key(result_ingredients(ProserDetector, params, view, "reference", "all"))
    ingredients = result_ingredients(ProserDetector, params, view, "honest", "all")
    assert "protocol" not in ingredients and "pseudo_labels" not in ingredients
    assert ingredients["close_set"]["model"]["arch"] == "resnet18"
    with torch.no_grad():  # other weights at the same path: another key
        net = build_model(data.close_set.model, verbose=False)
        net.head.fc.bias.add_(1.0)
    torch.save(net.state_dict(), tmp_path / "best.pt")
    assert result_key(result_ingredients(ProserDetector, params, view, "honest", "all")) != key
    view.close_set = None
    with pytest.raises(ValueError, match="close_set is None"):
        result_ingredients(ProserDetector, params, view, "honest", "all")


def test_refuses_a_close_set_model_it_cannot_extend(tmp_path, make_tiny_image_data, make_tiny_close_set):
    data = make_tiny_image_data()
    with pytest.raises(ValueError, match="close_set is None"):
        ProserDetector(ProserConfig(progress=False)).fit(data.detector_view())
    close = make_tiny_close_set(tmp_path)
    data.close_set = replace(close, model=replace(close.model, head="uncertainty"))
    with pytest.raises(ValueError, match="head 'uncertainty'"):
        ProserDetector(ProserConfig(progress=False)).fit(data.detector_view())
    data.close_set = replace(close, model=replace(close.model, input_size=48))
    with pytest.raises(ValueError, match="images are 32 px but stage 01's network takes 48 px"):
        ProserDetector(ProserConfig(progress=False)).fit(data.detector_view())


# ----------------------------------------------------------------------------- on images


@pytest.mark.slow
def test_proser_separates_open_from_close_on_synthetic_squares(tmp_path, make_squares_data):
    """Measured (seeds 0, 1, 2; 1 CPU thread, about 30 s each): PROSER AUROC 1.000, .969,
    .960 where max softmax of the same close-set network gets .465, .333, .669 (the open bar
    sits where class 1's square does, so the network calls it class 1 confidently). The bar
    .85 leaves a margin; the same scores misaligned with their rows (the reference
    pseudo-label loader's defect) land near .5 and fail it."""
    data = make_squares_data(tmp_path)
    view = data.detector_view()
    cfg = ProserConfig(input_size=32, stem="imagenet", batch_size=32, progress=False, out_dir=str(tmp_path / "proser"))
    det = ProserDetector(cfg).fit(view)
    scores = det.score(view)
    auroc = openset_metrics(scores, data.is_open)["auroc"]
    msp = openset_metrics(make_detector("msp").score(view), data.is_open)["auroc"]
    misaligned = openset_metrics(scores[np.random.default_rng(1).permutation(len(scores))], data.is_open)["auroc"]
    assert auroc > 0.85, (auroc, msp)
    assert auroc > msp, (auroc, msp)
    assert misaligned < 0.85 and abs(misaligned - 0.5) < 0.2, misaligned
    # calibration: 95% of the validation split (60 rows) classified known: 57 rows
    assert det.val_known_share_ == pytest.approx(57 / 60)
    assert det.val_acc_ > 0.9  # fine-tuning kept the close classes
    assert 0 < det.eval_known_share_ < 1
    assert ((scores > 0) & (scores < 1)).all() and det.embedding_features().shape == (len(data), 512)
    record = json.loads((tmp_path / "proser" / "detector.json").read_text())
    assert record["bias"] == pytest.approx(det.bias_) and record["n_train"] == 120 and record["n_val"] == 60
    # resuming from the checkpoint recomputes the same scores without training
    again = ProserDetector(cfg).fit(view).score(view)
    np.testing.assert_allclose(again, scores, rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_stage_03_runs_proser_by_name_from_stage_01(tmp_path, make_tiny_stage_params):
    """Stage 03 with ``detectors=[..., 'proser']``: it fine-tunes stage 01's network once for
    both protocols (``any_protocol`` folder) on stage 01's own rows; a stage 03 whose data
    would carve another validation split is refused."""
    from ferlib import stages
    from ferlib.data.prepare import load_splits

    params = make_tiny_stage_params(tmp_path)
    stages.train_close_set(**params, epochs=1, batch_size=32)
    stages.predict_pseudo_labels(**params)
    metrics = stages.detect_open_set(
        **params, detectors=["msp", "proser"], detector_params={"proser": {"epochs": 1, "batch_size": 32}}
    )
    run = Path(params["run_dir"])
    (folder,) = [p for p in (run / "03_detect").glob("all/*/proser-*")]
    assert folder.parent.name == "any_protocol" and (folder / "scores.npy").is_file()
    record = json.loads((folder / "detector.json").read_text())
    close = json.loads((run / "01_close_set" / "results.json").read_text())
    assert record["n_train"] == close["n_train"] and record["n_val"] == close["n_val"]
    by = metrics.set_index(["protocol", "detector"])["auroc"]
    assert by[("honest", "proser")] == pytest.approx(by[("reference", "proser")])
    honest = pd.read_csv(run / "03_detect" / "scores_honest.csv")
    assert honest["proser"].between(0, 1).all()
    # stage 01 validated on another split than the one loaded here: refused, naming both
    results = run / "01_close_set" / "results.json"
    results.write_text(json.dumps({**close, "validation": "10% of the training split carved (seed 7)"}))
    s = load_splits("synthetic", params["data_root"], "surprise", 32, str(tmp_path / "cache"))
    with pytest.raises(ValueError, match="stage 01 validated on"):
        stages.load_close_set_inputs(s, str(run))
