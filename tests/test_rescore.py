"""ferlib.rescore: finished runs scored again with changed evaluation settings, the model held
fixed; the paired table of the differences."""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from test_data_duplicates import VOTES, _write_ferplus

from ferlib import rescore
from ferlib.emotions import Emotion
from ferlib.run import main

CLASSES = list(VOTES)


def _face(emotion: Emotion, rng: np.random.Generator) -> np.ndarray:
    """A 48 px gray picture whose bright band's row says its class (learnable in one epoch)."""
    image = rng.integers(0, 80, (48, 48)).astype(np.uint8)
    row = 8 + 14 * CLASSES.index(emotion)
    image[row : row + 8] += 150
    return image


@pytest.fixture(scope="module")
def finished(module_tmp) -> dict:
    """A tiny FERPlus whose test split holds 6 copies of training rows and whose validation
    split holds 3, and one open-set run on it (surprise open, duplicates dropped: the default)."""
    rng = np.random.default_rng(0)
    train = [(_face(c, rng), c) for c in CLASSES for _ in range(30)]
    test = [(_face(c, rng), c) for c in CLASSES for _ in range(10)]
    valid = [(_face(c, rng), c) for c in CLASSES for _ in range(8)]
    for k in range(6):  # copies of training rows, two per class
        test[k * 5] = train[k * 15]
    for k in range(3):
        valid[k * 8] = train[k * 30 + 1]
    root = module_tmp / "ferplus"
    _write_ferplus(root, {"train": train, "valid": valid, "test": test})
    outputs = module_tmp / "runs"
    code = main(
        [
            "pipeline", "--dataset", "ferplus", "--data-root", str(root), "--outputs", str(outputs),
            "--run", "ferplus_open-surprise_seed0", "--executor", "python", "--open-class", "surprise",
            "-p", "arch='smallface'", "-p", "input_size=32", "-p", "epochs=1", "-p", "batch_size=32",
            "-p", "cache_dir=None", "-p", "detectors=['msp', 'knn', 'tknn']",
        ]
    )  # fmt: skip
    assert code == 0
    return {"root": root, "run": outputs / "ferplus_open-surprise_seed0", "out": module_tmp / "twins"}


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_twin_scores_the_duplicates_back_with_the_same_model(finished):
    run, out = finished["run"], finished["out"]
    changes = {"data_options": {"dedupe": False}}
    twins = rescore.rescore([run], out, changes, python=sys.executable)
    twin = twins[0]
    assert twin == out / run.name
    # the model was copied, not retrained: same weights, stage 01's record unchanged
    assert _digest(twin / "01_close_set" / "best.pt") == _digest(run / "01_close_set" / "best.pt")
    assert (twin / "stages" / "01_train_close_set.json").read_text() == (
        run / "stages" / "01_train_close_set.json"
    ).read_text()
    base, back = pd.read_csv(run / "metrics.csv"), pd.read_csv(twin / "metrics.csv")
    # the 6 test copies (2 of them open) are evaluation rows again; nothing else changed
    assert (back["n_close"] - base["n_close"]).unique().tolist() == [4]
    assert (back["n_open"] - base["n_open"]).unique().tolist() == [2]
    record = json.loads((twin / "stages" / "03_detect_open_set.json").read_text())
    assert record["params"]["data_options"] == {"dedupe": False}
    assert record["params"]["detectors"] == ["msp", "knn", "tknn"]  # everything else as the run's
    manifest = json.loads((twin / "manifest.json").read_text())
    assert manifest["rescored_from"] == {"run": str(run.resolve()), "changes": changes}
    # a second call finds every stage finished and changes nothing
    before = _digest(twin / "metrics.csv")
    rescore.rescore([run], out, changes, python=sys.executable)
    assert _digest(twin / "metrics.csv") == before


def test_paired_difference_is_twin_minus_base_per_seed_then_over_seeds(tmp_path):
    def fake(folder: Path, seed: int, cls: str, auroc: float, n_open: int) -> Path:
        run = folder / f"ferplus_open-{cls}_seed{seed}"
        run.mkdir(parents=True)
        (run / "manifest.json").write_text(
            json.dumps({"params": {"dataset": "ferplus", "open_class": cls, "seed": seed}})
        )
        row = {"detector": "knn", "protocol": "honest", "n_close": 10, "eval_subset": "all"}
        test_only = {**row, "auroc": 0.0, "fpr95": 1.0, "n_close": 1, "n_open": 1, "eval_subset": "test"}
        rows = [{**row, "auroc": auroc, "fpr95": 1 - auroc, "n_open": n_open}, test_only]
        pd.DataFrame(rows).to_csv(run / "metrics.csv", index=False)
        return run

    values = {
        (0, "fear"): (0.70, 0.80),
        (0, "anger"): (0.60, 0.64),
        (1, "fear"): (0.72, 0.78),
        (1, "anger"): (0.62, 0.62),
    }
    base = [fake(tmp_path / "a", s, c, v[0], 5) for (s, c), v in values.items()]
    twins = [fake(tmp_path / "b", s, c, v[1], 7) for (s, c), v in values.items()]
    table = rescore.paired_difference(base, twins)
    row = table.query("detector == 'knn' and protocol == 'honest'").iloc[0]
    seed_diffs = [np.mean([0.10, 0.04]), np.mean([0.06, 0.00])]
    assert row["auroc_diff_mean"] == pytest.approx(np.mean(seed_diffs))
    assert row["auroc_diff_std"] == pytest.approx(np.std(seed_diffs, ddof=1))
    assert row["auroc_base_mean"] == pytest.approx(np.mean([0.65, 0.67]))
    assert row["fpr95_diff_mean"] == pytest.approx(-np.mean(seed_diffs))
    assert (row["n_base"], row["n_twin"], row["seeds"], row["open_classes"]) == (15, 17, 2, 2)
    text = rescore.difference_markdown(table)
    assert "| knn | 0.660 ± 0.014 | 0.710 ± 0.014 | +0.050 ± 0.028 |" in text


def test_refusals_name_the_run(tmp_path, finished):
    with pytest.raises(ValueError, match="take no parameter \\['epochs'\\]"):
        rescore.twin_parameters(finished["run"], {"epochs": 3})
    half = tmp_path / "half"
    (half / "stages").mkdir(parents=True)
    (half / "metrics.csv").write_text("detector\n")
    (half / "manifest.json").write_text(json.dumps({"params": {"dataset": "ferplus", "open_class": "fear", "seed": 0}}))
    assert rescore.finished_runs([half]) == []
    with pytest.raises(ValueError, match="no finished open-set run"):
        rescore.rescore([half], tmp_path / "out", {})
    with pytest.raises(ValueError, match="would overwrite the run"):
        rescore.make_twin(finished["run"], finished["run"].parent)


def test_duplicates_effect_tool_writes_both_tables_and_the_difference(finished, tmp_path, capsys):
    from scripts import load_script

    tool = load_script("tools/duplicates_effect.py")
    out, tables = tmp_path / "twins", tmp_path / "tables"
    # --no-tables makes the twin only; the next call finds it finished and writes the tables
    args = [str(finished["run"]), "--out", str(out), "--tables", str(tables), "--jobs", "1"]
    assert tool.main([*args, "--no-tables"]) == 0
    assert (out / finished["run"].name / "metrics.csv").is_file() and not tables.exists()
    assert tool.main(args) == 0
    diff = pd.read_csv(tables / "difference.csv")
    assert set(diff["detector"]) == {"msp", "knn", "tknn"} and (diff["n_twin"] - diff["n_base"] == 6).all()
    assert (tables / "without" / "ferplus_auroc_honest.md").is_file() and (
        tables / "with" / "ferplus_auroc_honest.md"
    ).is_file()
    assert "| tknn |" in (tables / "difference.md").read_text()
    # the same tables from the small committed records alone (metrics.csv and manifest.json)
    records = tmp_path / "records"
    for side, run in (("runs", finished["run"]), ("twins", out / finished["run"].name)):
        for name in ("metrics.csv", "manifest.json"):
            (records / side / run.name).mkdir(parents=True, exist_ok=True)
            (records / side / run.name / name).write_bytes((run / name).read_bytes())
    again = tmp_path / "again_tables"
    assert tool.main(["--records", str(records / "runs"), str(records / "twins"), "--tables", str(again)]) == 0
    pd.testing.assert_frame_equal(pd.read_csv(again / "difference.csv"), diff)
    assert tool.main(["--records", str(records / "runs"), str(tmp_path / "none"), "--tables", str(again)]) == 2
    capsys.readouterr()
    # the twins kept their duplicates: nothing to put back
    assert tool.main([str(out / finished["run"].name), "--out", str(tmp_path / "again")]) == 2
    assert "kept their duplicate rows already" in capsys.readouterr().err


def test_duplicates_effect_tool_keeps_the_twins_out_of_the_sweeps_folder(finished, tmp_path, capsys):
    """Given a glob of the runs, the twins go beside the folder it searches, never into it (the
    sweep's own glob would find them as its runs); an --out inside that folder is refused."""
    from scripts import load_script

    tool = load_script("tools/duplicates_effect.py")
    run = finished["run"]
    pattern = str(run.parent / f"{run.name[:4]}*")
    assert tool.main([pattern, "--dry-run"]) == 0
    expected = run.parent.parent / f"{run.parent.name}_with_duplicates"
    assert f"twins in {expected}," in capsys.readouterr().out
    assert tool.main([pattern, "--out", str(run.parent / "twins"), "--dry-run"]) == 2
    assert "lies inside the runs' folder" in capsys.readouterr().err
