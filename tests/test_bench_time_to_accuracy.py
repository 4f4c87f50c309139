"""The time-to-accuracy benchmark runs end to end on FERPlus (tiny) under each label mode."""

import pandas as pd
from scripts import load_script


def _bench():
    return load_script("benchmarks/time_to_accuracy.py")


def test_soft_labels_train_on_votes_and_score_the_majority(ferplus_root, tmp_path):
    bench = _bench()
    args = bench.argparse.Namespace(
        data_root=str(ferplus_root),
        input_size=32,
        cache_dir=str(tmp_path / "cache"),
        seed=0,
        max_train=300,
        max_eval=200,
        label_mode="probability",
    )
    data = bench.load_ferplus(args)
    assert data.train.soft_targets is not None and data.train.soft_mode == "probability"
    assert data.val.soft_targets is None and data.test.soft_targets is None  # scored on the majority
    soft = data.train.soft_targets
    assert ((soft.sum(1) - 1).abs() < 1e-5).all() and (soft.max(1).values < 1).any()  # real vote mixtures
    out = tmp_path / "bench"
    code = bench.main(
        [
            "--data-root", str(ferplus_root), "--configs", "smallface:fast_affine", "--epochs", "1",
            "--input-size", "32", "--max-train", "300", "--max-eval", "200", "--label-mode", "crossentropy",
            "--recipe-params", '{"ema_decay": 0.0}', "--cache-dir", str(tmp_path / "cache"), "--out", str(out),
        ]
    )  # fmt: skip
    assert code == 0
    summary = pd.read_csv(out / "summary.csv")
    assert summary.loc[0, "label_mode"] == "crossentropy" and summary.loc[0, "config"] == "smallface:fast_affine"
    assert 0 <= summary.loc[0, "test_acc"] <= 1
    assert (out / "time_to_accuracy.png").is_file() and (out / "time_to_accuracy.pdf").is_file()
