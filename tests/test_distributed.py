"""Data-parallel training under torchrun (ferlib.distributed): two CPU processes with gloo.

The DDP tests launch ``torchrun --standalone --nproc_per_node 2`` on tests/ddp_worker.py (a
tiny convolutional net, 101 training rows, global batch 32, so the last global batch of 5
splits 3/2) and compare with the same training in this process. Measured on a 2-core CPU:

- without BatchNorm, DDP is the single-process computation: max |weight difference| after 3
  epochs with augmentation 4.5e-8, validation loss and accuracy equal to 1e-9 (float
  summation order only); asserted to 1e-5 / 1e-6;
- with BatchNorm it is not (statistics of each rank's slice; SyncBatchNorm refuses CPU
  tensors): max |weight difference| 8.6e-3, validation loss 6.6e-4 apart; asserted to be
  above 1e-5 (so a silent change to the same computation would be noticed) and below
  0.05 / 0.01;
- a DDP run resumed after epoch 1 ends with the same weights, bit for bit, as an
  uninterrupted one.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ferlib import distributed
from ferlib.losses import CrossEntropy
from ferlib.run import RunnerError, run_pipeline
from ferlib.train import fit, training_key

REPO = Path(__file__).resolve().parents[1]
WORKER = REPO / "tests" / "ddp_worker.py"
#: what fit and the worker's update_manifest leave in an output folder
FILES = {"best.pt", "history.csv", "history.json", "key.json", "last.pt", "manifest.json", ".manifest.json.lock"}


def _worker():
    sys.path.insert(0, str(WORKER.parent))
    try:
        import ddp_worker
    finally:
        sys.path.pop(0)
    return ddp_worker


# ----------------------------------------------------------------------------- single process


def test_shard_slices_cover_the_rows_in_order():
    for size in (1, 2, 3, 4):
        for n in range(12):
            bounds = [distributed.shard(n, r, size) for r in range(size)]
            rows = [i for lo, hi in bounds for i in range(lo, hi)]
            assert rows == list(range(n))
            lengths = [hi - lo for lo, hi in bounds]
            assert max(lengths) - min(lengths) <= 1 and lengths == sorted(lengths, reverse=True)


def test_helpers_are_no_ops_in_a_single_process(monkeypatch):
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    assert not distributed.is_distributed() and distributed.is_main() and distributed.world_size() == 1
    assert not distributed.init("cpu")
    assert distributed.run_on_main(lambda: 3) == 3
    assert distributed.all_reduce_sum([1, 2.5]) == [1.0, 2.5]
    obj = {"a": 1}
    assert distributed.all_gather_objects(obj) == [obj] and distributed.broadcast_object(obj) is obj
    distributed.barrier()
    with distributed.main_first():
        pass
    assert distributed.local_device("cuda:1") == "cuda:1" and distributed.shard(5) == (0, 5)


def test_torchrun_environment_is_read_without_a_process_group(monkeypatch):
    """Before any process group exists (the runner's first manifest write) the rank comes
    from torchrun's environment; each rank drives the GPU of its LOCAL_RANK."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert distributed.world_size() == 2 and not distributed.is_main() and distributed.is_distributed()
    assert distributed.local_device("cuda:0") == "cuda:1" and distributed.local_device("cpu") == "cpu"
    with distributed.solo():
        assert not distributed.is_distributed()  # one rank alone: no collectives


def test_single_process_key_has_no_world_size():
    w = _worker()
    model, train, val, cfg = w.build("plain", 1)
    _, ingredients = training_key(model, train, val, cfg, CrossEntropy())
    assert "world_size" not in ingredients


def test_papermill_is_refused_under_torchrun(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(RunnerError, match="--executor python"):
        run_pipeline("synthetic", executor="papermill")


# ----------------------------------------------------------------------------- two processes


def _torchrun(args: list[str], tmp: Path, cwd: Path = REPO) -> str:
    """Launch torchrun; its scratch folders (``torchelastic_*``) go under ``tmp``, not /tmp."""
    scratch = tmp / "torchrun_tmp"
    scratch.mkdir(exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TMPDIR": str(scratch)}
    for name in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(name, None)
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output[-6000:]
    return output


def _jobs(tmp: Path, name: str, jobs: list[dict]) -> str:
    path = tmp / f"{name}.json"
    path.write_text(json.dumps(jobs))
    return str(path)


@pytest.fixture(scope="module")
def ddp_runs(module_tmp):
    """One torchrun launch: 3 epochs without and with BatchNorm, and 1 epoch of the first
    into a folder a later launch resumes."""
    tmp = module_tmp
    jobs = [
        {"model": "plain", "epochs": 3, "out": str(tmp / "plain"), "result": str(tmp / "plain.pt")},
        {"model": "bn", "epochs": 3, "out": str(tmp / "bn"), "result": str(tmp / "bn.pt")},
        {"model": "plain", "epochs": 1, "out": str(tmp / "resumed"), "result": str(tmp / "first.pt")},
    ]
    _torchrun([str(WORKER), _jobs(tmp, "first", jobs)], tmp)
    return tmp


def _single(kind: str, out: Path):
    model, train, val, cfg = _worker().build(kind, 3)
    cfg.progress = False
    result = fit(model, train, val, cfg, out_dir=out)
    return model, result


def _max_diff(state_a: dict, state_b: dict) -> float:
    return max((v.float() - state_b[k].float()).abs().max().item() for k, v in state_a.items())


@pytest.mark.slow
def test_ddp_without_batchnorm_is_the_single_process_run(ddp_runs, tmp_path):
    ddp = torch.load(ddp_runs / "plain.pt")
    model, result = _single("plain", tmp_path / "single")
    assert ddp["world_size"] == 2
    assert _max_diff(model.state_dict(), ddp["state"]) < 1e-5
    assert ddp["best_epoch"] == result.best_epoch
    for column in ("train_loss", "train_acc", "val_loss", "val_acc"):
        assert ddp["history"][column] == pytest.approx(list(result.history[column]), abs=1e-6), column
    assert ddp["digests"][0] == ddp["digests"][1]  # every rank ends with the same weights


@pytest.mark.slow
def test_ddp_with_batchnorm_differs_by_the_slices_statistics(ddp_runs, tmp_path):
    ddp = torch.load(ddp_runs / "bn.pt")
    model, result = _single("bn", tmp_path / "single")
    diff = _max_diff(model.state_dict(), ddp["state"])
    assert 1e-5 < diff < 0.05
    assert ddp["history"]["val_loss"] == pytest.approx(list(result.history["val_loss"]), abs=0.01)
    assert ddp["digests"][0] == ddp["digests"][1]  # rank 0's running statistics everywhere


@pytest.mark.slow
def test_ddp_writes_one_set_of_files_from_rank_0(ddp_runs):
    for kind in ("plain", "bn"):
        ddp = torch.load(ddp_runs / f"{kind}.pt")
        rank0, rank1 = ddp["writes"]
        assert rank1 == [] and set(rank0) == FILES - {".manifest.json.lock"}
        names = {p.name for p in (ddp_runs / kind).iterdir()}
        assert names == FILES  # no per-rank copies, no temporary leftovers
        key = json.loads((ddp_runs / kind / "key.json").read_text())
        assert key["world_size"] == 2


@pytest.mark.slow
def test_ddp_resumes_and_never_resumes_a_single_process_checkpoint(ddp_runs, tmp_path):
    """A new launch asking for 3 epochs resumes the 1-epoch run (every rank from rank 0's
    checkpoint) and ends where the uninterrupted run did; in a folder holding a
    single-process run's checkpoint it starts over (the world size is in the key)."""
    _single("plain", tmp_path / "single")
    jobs = [
        {"model": "plain", "epochs": 3, "out": str(ddp_runs / "resumed"), "result": str(tmp_path / "resumed.pt")},
        {"model": "plain", "epochs": 3, "out": str(tmp_path / "single"), "result": str(tmp_path / "over.pt")},
    ]
    output = _torchrun([str(WORKER), _jobs(tmp_path, "second", jobs)], tmp_path)
    assert output.count("resuming from") == 1 and output.count("starting over") == 1
    whole = torch.load(ddp_runs / "plain.pt")
    for name in ("resumed", "over"):
        ddp = torch.load(tmp_path / f"{name}.pt")
        assert ddp["history"]["epoch"] == [1, 2, 3]
        assert all(torch.equal(v, whole["state"][k]) for k, v in ddp["state"].items()), name
        assert ddp["writes"][1] == []


@pytest.mark.slow
def test_torchrun_runs_stage_01_end_to_end(tmp_path):
    """``torchrun -m ferlib.run -- stage 01 ... --executor python`` on a tiny synthetic set:
    one manifest, one stage record, one set of stage files, no temporary leftovers."""
    from ferlib.data.synthetic import SyntheticConfig, write_synthetic

    root = write_synthetic(tmp_path / "synthetic", SyntheticConfig(n_train=140, n_valid=35, n_test=70))
    # fmt: off
    args = [
        "-m", "ferlib.run", "--", "stage", "01", "--dataset", "synthetic", "--data-root", str(root),
        "--outputs", str(tmp_path / "out"), "--run", "r", "--executor", "python",
        "-p", "epochs=1", "-p", "input_size=32", "-p", "batch_size=32",
        "-p", f"cache_dir={tmp_path / 'cache'}", "-p", "progress=False",
    ]
    # fmt: on
    output = _torchrun(args, tmp_path)
    run = tmp_path / "out" / "r"
    assert output.count("close-set test accuracy") == 3  # both ranks ran the stage, rank 0 summed up...
    assert {p.name for p in (run / "01_close_set").iterdir()} == {
        "best.pt", "last.pt", "history.csv", "history.json", "key.json", "results.json"
    }  # fmt: skip
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["environment"]["world_size"] == 2
    assert manifest["stages"]["01_train_close_set"]["status"] == "finished"
    assert [p.name for p in (run / "stages").iterdir()] == ["01_train_close_set.json"]
    leftovers = [p for p in tmp_path.rglob("*") if p.name.endswith(".tmp") or ".tmp-" in p.name]
    assert leftovers == []  # ...and rank 0 alone wrote
