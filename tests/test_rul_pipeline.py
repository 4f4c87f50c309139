"""RUL through the stages: stage 01 trains the ``uncertainty`` head with the ``rul`` loss,
stage 02 saves every row's extras beside its logits, stage 03 scores with them."""

from pathlib import Path

import numpy as np
import torch

from ferlib import stages
from ferlib.data.synthetic import SyntheticConfig, write_synthetic
from ferlib.io import read_json
from ferlib.train import predict


def test_stage_02_saves_extras_that_stage_03_reads(tmp_path):
    root = write_synthetic(tmp_path / "synthetic", SyntheticConfig(n_train=70, n_valid=14, n_test=28, seed=0))
    common = dict(
        dataset="synthetic",
        data_root=str(root),
        open_class="surprise",
        input_size=32,
        cache_dir=str(tmp_path / "cache"),
        progress=False,
        run_dir=str(tmp_path / "run"),
        arch="smallface",
    )
    stages.train_close_set(
        **common,
        epochs=1,
        batch_size=16,
        head="uncertainty",
        head_params={"embedding": 8},
        objective="rul",
        recipe="reference",  # the default recipe's label smoothing does not apply to RUL's loss
    )
    results = read_json(tmp_path / "run" / "01_close_set" / "results.json")
    assert results["objective"] == "rul" and results["head_params"] == {"embedding": 8, "embedding_dropout": 0.4}
    table = stages.predict_pseudo_labels(**common)

    z = np.load(Path(common["run_dir"]) / "02_pseudo_labels" / "outputs.npz")
    n_eval, n_split = len(table), len(z["all_train_logits"])
    for prefix, n in (("eval_extra_", n_eval), ("all_train_extra_", n_split)):
        assert z[prefix + "uncertainty"].shape == (n,)
        assert z[prefix + "mu"].shape == z[prefix + "log_var"].shape == (n, 8)
    # row i's extras are image i's, as its logits are
    model = stages._close_model(common["run_dir"], "smallface", 32, len(results["class_names"]), "cpu")
    s = stages.load_splits("synthetic", str(root), "surprise", 32, str(tmp_path / "cache"), seed=0)
    rows = np.array([0, n_eval - 1])
    images = stages._eval_images(s)[torch.as_tensor(rows)]
    pred = predict(model, images, progress=False)
    np.testing.assert_allclose(z["eval_extra_uncertainty"][rows], pred.extras["uncertainty"].numpy(), rtol=1e-4)
    np.testing.assert_allclose(z["eval_logits"][rows], pred.logits.numpy(), rtol=1e-4, atol=1e-5)

    detect = {k: v for k, v in common.items() if k != "arch"}
    metrics = stages.detect_open_set(**detect, detectors=["msp", "uncertainty"])
    assert set(metrics["detector"]) == {"msp", "uncertainty"} and metrics["auroc"].notna().all()
    scores = stages.load_scores(common["run_dir"], "honest")
    np.testing.assert_allclose(scores["uncertainty"], z["eval_extra_uncertainty"], rtol=1e-6)
