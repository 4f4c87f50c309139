"""The paper's detector as its released code runs it (one network, no cycle training)."""

import json

import numpy as np
import pytest

from ferlib.metrics import openset_metrics
from ferlib.openset import make_detector
from ferlib.openset.cycle import CycleDetector
from ferlib.openset.registry import detector_class, resolve_params
from ferlib.openset.released import ReleasedConfig, ReleasedDetector


@pytest.mark.slow
def test_released_detector_finds_noisy_labels(tmp_path, make_noisy_images):
    """The open rows carry symmetric-noise pseudo labels: one network trained on them at the
    reference optimiser settings (Adam 1e-4, lam 6) must give them the larger loss. An MSP on
    the pseudo-label logits (all equally confident) and the same scores shuffled across rows
    both sit at chance.

    192 images, 3 epochs, ResNet-18 at 32 px: AUROC 1.0 for seeds 0-2 on CPU (about 25 s
    each on one busy core)."""
    data = make_noisy_images(192)
    view = data.detector_view()
    cfg = ReleasedConfig(input_size=32, epochs=3, batch_size=32, progress=False, out_dir=str(tmp_path / "released"))
    assert (cfg.lam, cfg.lr, cfg.lr_gamma) == (6.0, 1e-4, 0.9)  # the reference's, not tuned here
    det = ReleasedDetector(cfg).fit(view)
    scores = det.score(view)
    auroc = openset_metrics(scores, data.is_open)["auroc"]
    shuffled = openset_metrics(np.random.default_rng(0).permutation(scores), data.is_open)["auroc"]
    msp = openset_metrics(make_detector("msp").score(view), data.is_open)["auroc"]
    assert auroc > 0.85, auroc
    assert auroc > max(msp, shuffled) + 0.2, (auroc, msp, shuffled)
    assert det.snapshot_losses_.shape == (1, len(data))
    assert det.embedding_features().shape[0] == len(data)
    assert len(det.history_) == 3
    record = json.loads((tmp_path / "released" / "detector.json").read_text())
    assert record["config"]["lam"] == 6.0 and record["epochs_trained"] == 3
    assert (tmp_path / "released" / "net" / "last.pt").exists()


@pytest.mark.slow
def test_killed_run_resumes_to_the_uninterrupted_scores(tmp_path, make_noisy_images):
    """A run killed after 2 of 3 epochs resumes from its checkpoint: it trains only the third
    epoch (the first two history rows, wall times included, come back from the checkpoint)
    and ends with the scores of a run that was never interrupted."""
    view = make_noisy_images(60).detector_view()

    def run(folder, epochs):
        cfg = ReleasedConfig(
            input_size=32, epochs=epochs, batch_size=20, stem="imagenet", progress=False, out_dir=str(folder)
        )
        return ReleasedDetector(cfg).fit(view)

    whole = run(tmp_path / "whole", 3)
    killed = run(tmp_path / "killed", 2)
    resumed = run(tmp_path / "killed", 3)
    assert len(resumed.history_) == 3
    assert resumed.history_.iloc[:2].equals(killed.history_)  # not retrained: read back
    np.testing.assert_allclose(resumed.score(view), whole.score(view), rtol=1e-5, atol=1e-5)
    # a finished run trains nothing and scores the same again
    again = run(tmp_path / "killed", 3)
    assert again.history_.equals(resumed.history_)
    np.testing.assert_allclose(again.score(view), resumed.score(view), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize(
    "field, value",
    [("lam", -1.0), ("lam", float("nan")), ("epochs", 0), ("lr", 0.0), ("lr_gamma", 1.5), ("weight_decay", -1e-4)]
    + [("batch_size", 1), ("epochs", 2.5)],
)
def test_config_errors_name_the_field(field, value):
    with pytest.raises(ValueError, match=f"ReleasedConfig.{field} "):
        ReleasedConfig(**{field: value})


def test_registry_entry_and_errors(make_features_data, make_noisy_images):
    cls = detector_class("released")
    assert cls is ReleasedDetector and issubclass(cls, CycleDetector)
    assert cls.needs_images and cls.reads_pseudo_labels and cls.trains_networks and cls.depends_on_protocol()
    params = resolve_params("released", {}, {"input_size": 32, "seed": 3})
    assert params["lam"] == 6.0 and params["lr"] == 1e-4 and params["epochs"] == 30
    assert params["input_size"] == 32 and params["seed"] == 3 and "out_dir" not in params
    det = make_detector("released", progress=False)
    assert isinstance(det.cfg, ReleasedConfig) and repr(det).startswith("ReleasedDetector(")
    with pytest.raises(ValueError, match="images"):
        det.fit(make_features_data())  # no images
    with pytest.raises(ValueError, match="ReleasedConfig.input_size"):
        det.fit(make_noisy_images(12).detector_view())  # 32 px images, 48 px network
    with pytest.raises(RuntimeError, match="released detector"):
        det.score(make_features_data())
    det = make_detector("released", input_size=32, epochs=1, batch_size=6, stem="imagenet", progress=False)
    det.fit(make_noisy_images(12).detector_view())
    with pytest.raises(ValueError, match="transductive"):
        det.score(make_noisy_images(15).detector_view())
