"""Run manifest: deep merge, atomic writes, environment facts."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from ferlib import manifest as mf
from ferlib.manifest import (
    collect_environment,
    deep_merge,
    git_info,
    read_manifest,
    set_manifest,
    update_manifest,
)


def _leftovers(run_dir: Path) -> list[str]:
    return sorted(p.name for p in run_dir.iterdir() if p.name.endswith(".tmp"))


def test_read_manifest_of_a_new_run_is_empty(tmp_path):
    assert read_manifest(tmp_path / "nothing-yet") == {}


def test_update_manifest_deep_merges(tmp_path):
    update_manifest(tmp_path, params={"seed": 0, "dataset": "synthetic"}, stages={"01": {"wall_s": 1.5}})
    update_manifest(tmp_path, stages={"02": {"wall_s": 2.0}}, data={"hash": "abc"})
    update_manifest(tmp_path, stages={"01": {"finished": "now"}}, params={"seed": 1})
    out = update_manifest(tmp_path, metrics=[{"detector": "msp", "auroc": 0.9}])
    out = update_manifest(tmp_path, metrics=[{"detector": "energy", "auroc": 0.8}])

    assert out == read_manifest(tmp_path)
    assert out["params"] == {"seed": 1, "dataset": "synthetic"}
    assert out["stages"] == {"01": {"wall_s": 1.5, "finished": "now"}, "02": {"wall_s": 2.0}}
    assert out["data"] == {"hash": "abc"}
    assert out["metrics"] == [{"detector": "energy", "auroc": 0.8}]  # lists replace
    assert json.loads((tmp_path / "manifest.json").read_text()) == out
    assert _leftovers(tmp_path) == []


def test_deep_merge_does_not_modify_its_arguments():
    base = {"a": {"b": 1, "c": [1]}}
    update = {"a": {"d": 2}}
    merged = deep_merge(base, update)
    merged["a"]["c"].append(2)
    assert base == {"a": {"b": 1, "c": [1]}}
    assert update == {"a": {"d": 2}}
    assert merged == {"a": {"b": 1, "c": [1, 2], "d": 2}}


def test_set_manifest_replaces_whole_sections(tmp_path):
    update_manifest(tmp_path, params={"seed": 0, "epochs": 5}, other={"x": 1})
    out = set_manifest(tmp_path, params={"seed": 0})
    assert out["params"] == {"seed": 0}
    assert out["other"] == {"x": 1}


def test_manifest_converts_numpy_and_paths(tmp_path):
    np = pytest.importorskip("numpy")
    update_manifest(tmp_path, metrics={"auroc": np.float32(0.5), "n": np.int64(3)}, paths={"run": tmp_path})
    out = read_manifest(tmp_path)
    assert out["metrics"] == {"auroc": 0.5, "n": 3}
    assert out["paths"]["run"] == str(tmp_path)


def test_failed_write_keeps_the_old_manifest_and_no_temp_file(tmp_path, monkeypatch):
    update_manifest(tmp_path, params={"seed": 0})
    before = (tmp_path / "manifest.json").read_text()

    def broken_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk full"):
        update_manifest(tmp_path, params={"seed": 1})
    monkeypatch.undo()

    assert (tmp_path / "manifest.json").read_text() == before
    assert _leftovers(tmp_path) == []
    assert read_manifest(tmp_path)["params"] == {"seed": 0}


def test_read_manifest_rejects_a_non_object(tmp_path):
    (tmp_path / "manifest.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="manifest.json"):
        read_manifest(tmp_path)


def test_collect_environment_reports_versions_and_device():
    env = collect_environment()
    for key in (
        "python",
        "platform",
        "torch",
        "torchvision",
        "numpy",
        "sklearn",
        "pandas",
        "ferlib",
        "cuda_available",
        "cuda_device",
        "git_commit",
        "git_dirty",
    ):
        assert key in env, key
    import numpy

    import ferlib

    assert env["ferlib"] == ferlib.__version__
    assert env["numpy"] == numpy.__version__
    assert isinstance(env["cuda_available"], bool)
    if not env["cuda_available"]:
        assert env["cuda_device"] is None
    json.dumps(env)  # JSON-ready as it is


def _git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True, text=True).stdout.strip()


@pytest.fixture
def git_repo(tmp_path):
    try:
        _git(tmp_path, "init", "-q")
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("git not available")
    _git(tmp_path, "config", "user.email", "test@example.com")
    _git(tmp_path, "config", "user.name", "test")
    return tmp_path


def test_git_info_commit_and_dirty_flag(git_repo):
    assert git_info(git_repo) == {"commit": None, "dirty": False}  # no commit yet
    (git_repo / "a.txt").write_text("a\n")
    assert git_info(git_repo)["dirty"] is True
    _git(git_repo, "add", "a.txt")
    _git(git_repo, "commit", "-q", "-m", "a")
    head = _git(git_repo, "rev-parse", "HEAD")
    assert git_info(git_repo) == {"commit": head, "dirty": False}
    (git_repo / "a.txt").write_text("b\n")
    assert git_info(git_repo) == {"commit": head, "dirty": True}


def test_git_info_is_none_outside_a_checkout(tmp_path, git_repo):
    inner = git_repo / "sub"
    inner.mkdir()
    assert git_info(inner) is None  # a folder inside some other checkout is not its top
    outside = Path(os.path.abspath(os.sep))
    if git_info(outside) is not None:
        pytest.skip("filesystem root is a git checkout")


def test_environment_uses_the_repository_holding_ferlib(monkeypatch, tmp_path):
    monkeypatch.setattr(mf, "REPO_ROOT", tmp_path)  # not a checkout
    env = collect_environment()
    assert env["git_commit"] is None and env["git_dirty"] is None
