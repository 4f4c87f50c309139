"""Stage 01 takes a head and an objective by name, records them, and stage 02's model
loader rebuilds the same head from stage 01's results.json (no head parameters there)."""

import pytest
import torch

from ferlib import stages
from ferlib.data.synthetic import SyntheticConfig, write_synthetic
from ferlib.io import read_json, write_json

SIZE = 32


@pytest.fixture(scope="module")
def tiny_data(module_tmp):
    base = module_tmp
    root = write_synthetic(base / "synthetic", SyntheticConfig(n_train=70, n_valid=14, n_test=28, seed=0))
    return dict(
        dataset="synthetic",
        data_root=str(root),
        open_class="surprise",
        input_size=SIZE,
        cache_dir=str(base / "cache"),
        progress=False,
        arch="resnet18",  # the network this test's checks read back
        recipe="reference",
    ), base


def test_head_and_objective_reach_training_and_stage_02(tiny_data):
    common, base = tiny_data
    run = base / "run"
    stages.train_close_set(
        **common,
        run_dir=str(run),
        epochs=1,
        batch_size=16,
        head="branches",
        head_params={"branches": 2, "width": 16},
        objective="cam_flip",
        objective_params={"lam": 2.0},
    )
    results = read_json(run / "01_close_set" / "results.json")
    assert results["head"] == "branches"
    assert results["head_params"] == {  # recorded complete, defaults filled in
        "branches": 2,
        "width": 16,
        "attention": True,
        "reduction": 16,
        "spatial_kernel": 7,
        "combine": "mean",
    }
    assert results["objective"] == "cam_flip" and results["objective_params"] == {"lam": 2.0}
    assert read_json(run / "01_close_set" / "key.json")["objective"] == {"name": "cam_flip", "lam": 2.0}
    model = stages._close_model(str(run), "resnet18", SIZE, len(results["class_names"]), "cpu")
    assert model.cfg.head == "branches" and len(model.head.branches) == 2
    best = torch.load(run / "01_close_set" / "best.pt")
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, best[k])


def test_names_are_checked_before_any_data_is_read(tmp_path):
    """A misspelt objective or head fails at once, naming the choices, even with a data
    root that does not exist (so nothing was decoded or trained)."""
    common = dict(
        dataset="synthetic", data_root=str(tmp_path / "absent"), run_dir=str(tmp_path / "run"), progress=False
    )
    with pytest.raises(ValueError, match=r"objective must be one of \[.*'cam_flip', 'ce'.*'rul'.*\]"):
        stages.train_close_set(**common, objective="cam-flip")
    with pytest.raises(ValueError, match="lam"):
        stages.train_close_set(**common, objective="ce", objective_params={"lam": 1})
    with pytest.raises(ValueError, match=r"head.*\['branches', 'dummy', 'linear', 'manet', 'uncertainty'\]"):
        stages.train_close_set(**common, head="mlp")
    with pytest.raises(ValueError, match="'hiden'.*accepted: embedding, embedding_dropout"):
        stages.train_close_set(**common, head="uncertainty", head_params={"hiden": 3})
    assert not (tmp_path / "run").exists()


def test_stage_02_refuses_other_architecture_settings(tiny_data):
    """Stage 02 asked for another trunk than stage 01 built: a clear error naming both,
    not a state-dict size mismatch traceback."""
    common, base = tiny_data
    run = base / "run_arch"
    folder = run / "01_close_set"
    folder.mkdir(parents=True)
    torch.save({}, folder / "best.pt")
    write_json(folder / "results.json", {"arch": "resnet50", "input_size": SIZE, "stem": "auto", "head": "linear"})
    with pytest.raises(ValueError, match=r"arch='resnet50' there, 'resnet18' here"):
        stages._close_model(str(run), "resnet18", SIZE, 6, "cpu")
