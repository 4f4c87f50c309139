"""The time-to-accuracy benchmark runs end to end on FERPlus (tiny) under each label mode."""

import pandas as pd
import torch
from scripts import load_script

from ferlib.models import ModelConfig, build_model


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
            "--save-best",
        ]
    )  # fmt: skip
    assert code == 0
    summary = pd.read_csv(out / "summary.csv")
    assert summary.loc[0, "label_mode"] == "crossentropy" and summary.loc[0, "config"] == "smallface:fast_affine"
    assert 0 <= summary.loc[0, "test_acc"] <= 1
    assert (out / "time_to_accuracy.png").is_file() and (out / "time_to_accuracy.pdf").is_file()
    saved = torch.load(out / "best_smallface_fast_affine.pt", weights_only=True)  # --save-best
    assert saved["epoch"] == summary.loc[0, "best_epoch"] and saved["val_acc"] == summary.loc[0, "val_acc"]
    model = build_model(ModelConfig("smallface", num_classes=7, input_size=32), verbose=False)
    model.load_state_dict(saved["state_dict"])
    views = load_script("benchmarks/test_time_views.py")  # reads that checkpoint
    csv = tmp_path / "views.csv"
    argv = [str(out / "best_smallface_fast_affine.pt"), "--data-root", str(ferplus_root), "--cache-dir",
            str(tmp_path / "cache"), "--views", "flip,flip+cross1", "--out", str(csv)]  # fmt: skip
    assert views.main(argv) == 0
    table = pd.read_csv(csv)
    assert list(table["views"]) == ["flip", "flip+cross1"] and list(table["n_views"]) == [2, 10]
    assert table[["validation_acc", "test_acc"]].stack().between(0, 1).all()


def test_ensemble_row_scores_the_members_mean_softmax_and_sums_their_time():
    """Two members each right on a different half, each leaning hard when right and softly
    when wrong: their mean is right everywhere, which neither member is."""
    import torch

    bench = _bench()
    targets = torch.tensor([0, 1, 2, 0])
    data = bench.Data(
        None,
        bench.TensorData(torch.zeros(4, 1, 2, 2, dtype=torch.uint8), targets),
        bench.TensorData(torch.zeros(4, 1, 2, 2, dtype=torch.uint8), targets),
    )

    def probs(right: list[bool]) -> torch.Tensor:
        p = torch.full((4, 3), 0.0)
        for i, ok in enumerate(right):
            if ok:
                p[i, targets[i]] = 0.9
                p[i, (targets[i] + 1) % 3] = 0.1
            else:
                p[i, targets[i]] = 0.4
                p[i, (targets[i] + 1) % 3] = 0.6
        return p

    def member(seed: int, right: list[bool], seconds: float) -> list[dict]:
        p = probs(right)
        return [
            {"config": f"m{seed}", "epoch": 1, "seed": seed, "train_seconds": seconds, "train_loss": 1.0,
             "val_acc": sum(right) / 4, "test_acc": sum(right) / 4, "stopped": "epochs",
             "_val_prob": p, "_test_prob": p}
        ]  # fmt: skip

    rows = bench.ensemble_rows(
        [member(0, [True, True, False, False], 10.0), member(1, [False, False, True, True], 12.5)], data, "x2"
    )
    assert len(rows) == 1
    row = rows[0]
    assert row["config"] == "x2" and row["seed"] == "0,1"
    assert row["val_acc"] == 1.0 and row["test_acc"] == 1.0  # each member alone: .5
    assert row["train_seconds"] == 22.5
    assert not any(key.startswith("_") for key in row)


def test_members_curves_are_saved_after_every_epoch_and_the_run_has_a_manifest(ferplus_root, tmp_path):
    """A run stopped from outside keeps what it measured: the sink sees every epoch of every
    member as it finishes, without the probability tensors; the finished run writes the
    ensemble's rows and a manifest with the data's fingerprint and the summary."""
    import json

    bench = _bench()
    out = tmp_path / "bench"
    argv = [
        "--data-root", str(ferplus_root), "--configs", "smallface:fast", "--epochs", "2", "--members", "2",
        "--input-size", "32", "--max-train", "200", "--max-eval", "100", "--cache-dir", str(tmp_path / "cache"),
        "--out", str(out),
    ]  # fmt: skip
    seen: list[list[dict]] = []
    args = bench.build_parser().parse_args(argv)
    data = bench.load_ferplus(args)
    bench.run_members("smallface", "fast", data, args, sink=lambda rows: seen.append(list(rows)))
    assert [len(rows) for rows in seen] == [1, 2, 3, 4]  # two members x two epochs, in order
    assert [r["seed"] for r in seen[-1]] == [0, 0, 1, 1]
    assert not any(key.startswith("_") for rows in seen for r in rows for key in r)

    assert bench.main(argv) == 0
    curves = pd.read_csv(out / "curves.csv")
    assert set(curves["config"]) == {"smallface:fast seed 0", "smallface:fast seed 1", "smallface:fast x2"}
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["data"]["fingerprint"] == data.fingerprint and data.fingerprint
    assert manifest["params"]["members"] == 2
    assert [r["config"] for r in manifest["summary"]] == list(pd.read_csv(out / "summary.csv")["config"])


def test_test_time_views_shift_moves_the_face_and_repeats_the_border():
    views = load_script("benchmarks/test_time_views.py")
    img = torch.arange(16, dtype=torch.uint8).view(1, 1, 4, 4)
    right = views.shift(img, 1, 0)
    assert torch.equal(right[..., 1:], img[..., :3]) and torch.equal(right[..., 0], img[..., 0])
    down = views.shift(img, 0, -2)  # up by two
    assert torch.equal(down[..., :2, :], img[..., 2:, :]) and torch.equal(down[..., 3, :], img[..., 3, :])
    assert views.shift(img, 0, 0) is img and right.dtype == torch.uint8
