"""The papermill runner: stage order, the parameter contract (each stage gets only the keys its
signature accepts; an unknown or bad ``-p`` fails before any work), per-stage result keys,
skip/resume/force, sweeps, the CLI, one real papermill run.

Stage tables point at the dummy stage functions below (``--executor python``) or at tiny
notebooks written into ``tmp_path``, so no test trains anything.
"""

from __future__ import annotations

import csv
import json
import os
import sys
import types
from pathlib import Path

import pytest

from ferlib import run as runner
from ferlib.emotions import BASIC7
from ferlib.manifest import read_manifest
from ferlib.run import (
    CORE_PARAMS,
    RunnerError,
    Stage,
    StageFailed,
    default_run_name,
    expand_open_classes,
    main,
    params_hash,
    parse_param,
    read_stage_record,
    run_pipeline,
    run_sweep,
    select_stages,
)

# ------------------------------------------------------------------------------ dummy stages
CALLS: list[tuple[str, dict]] = []
FAIL: dict[str, BaseException] = {}  # stage name -> exception it raises (outside the params)
FAIL_RUNS: set[tuple[str | None, int]] = set()  # (open_class, seed) whose stage b fails


def _stage(name: str, params: dict) -> None:
    CALLS.append((name, dict(params)))
    if name in FAIL:
        raise FAIL[name]
    if name == "02_b" and (params["open_class"], params["seed"]) in FAIL_RUNS:
        raise RuntimeError(f"boom in b for {params['open_class']} seed {params['seed']}")
    out = Path(params["run_dir"]) / name
    out.mkdir(parents=True, exist_ok=True)
    (out / "done.txt").write_text(json.dumps(params, sort_keys=True))


# Each dummy stage keeps the contract of the real ones: explicit, typed, defaulted parameters.
def stage_a(
    dataset: str = "synthetic",
    data_root: str | None = None,
    open_class: str | None = None,
    seed: int = 0,
    device: str = "cpu",
    run_dir: str = "outputs/run",
    epochs: int = 3,
    lr: float = 0.01,
    arch: str = "resnet18",
    tags: list | None = None,
) -> None:
    _stage("01_a", locals())


def stage_b(
    dataset: str = "synthetic",
    open_class: str | None = None,
    seed: int = 0,
    device: str = "cpu",
    run_dir: str = "outputs/run",
    k: int = 5,
    progress: bool = True,
) -> None:
    _stage("02_b", locals())


def stage_c(run_dir: str = "outputs/run", seed: int = 0, names: list[str] | None = None) -> None:
    _stage("03_c", locals())
    with open(Path(run_dir) / "metrics.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["detector", "protocol", "auroc", "fpr95", "aupr_in", "aupr_out", "close_acc"])
        writer.writerow(["msp", "basic", 0.75, 0.5, 0.8, "nan", 0.9])
        writer.writerow(["energy", "basic", 0.8, 0.4, 0.85, 0.7, 0.9])


TABLE = (
    Stage("01_a", notebook="notebooks/01_a.ipynb", func=f"{__name__}:stage_a"),  # imported by name
    Stage("02_b", notebook="notebooks/02_b.ipynb", func=stage_b),
    Stage("03_c", notebook="notebooks/03_c.ipynb", func=stage_c),
)


@pytest.fixture(autouse=True)
def _reset(monkeypatch):
    CALLS.clear()
    FAIL.clear()
    FAIL_RUNS.clear()
    # collect_environment imports torch and runs git: tested in test_manifest, faked here
    monkeypatch.setattr(runner, "collect_environment", lambda: {"python": "3.x", "fake": True})
    yield
    CALLS.clear()
    FAIL.clear()
    FAIL_RUNS.clear()


def called() -> list[str]:
    names = [name for name, _ in CALLS]
    CALLS.clear()
    return names


def pipeline(tmp_path, lines=None, **kwargs):
    kwargs.setdefault("executor", "python")
    kwargs.setdefault("outputs", tmp_path / "outputs")
    return run_pipeline(
        kwargs.pop("dataset", "synthetic"),
        stage_table=kwargs.pop("stage_table", TABLE),
        repo_root=tmp_path,
        say=(lines.append if lines is not None else (lambda _: None)),
        **kwargs,
    )


def tmp_files(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.name.endswith(".tmp")]


# ------------------------------------------------------------------------------ pipeline
def test_pipeline_gives_each_stage_only_the_keys_its_signature_accepts(tmp_path):
    result = pipeline(
        tmp_path,
        data_root=tmp_path / "data",
        open_class="happy",
        seed=3,
        extra=["epochs=2", "lr=1e-3", "arch=resnet18", "tags=[1, 2]", "k=7"],
    )
    assert result.run == "synthetic_open-happiness_seed3"
    run_dir = tmp_path / "outputs" / result.run
    assert result.run_dir == run_dir
    assert result.ran == ["01_a", "02_b", "03_c"] and result.skipped == []

    assert [name for name, _ in CALLS] == ["01_a", "02_b", "03_c"]
    core = {
        "dataset": "synthetic",
        "data_root": str((tmp_path / "data").resolve()),
        "open_class": "happiness",
        "seed": 3,
        "device": "cpu",
        "run_dir": str(run_dir),
    }
    applied = {
        "01_a": {**core, "epochs": 2, "lr": 1e-3, "arch": "resnet18", "tags": [1, 2]},
        "02_b": {k: core[k] for k in ("dataset", "open_class", "seed", "device", "run_dir")}
        | {"k": 7, "progress": True},
        "03_c": {"run_dir": str(run_dir), "seed": 3, "names": None},  # defaults are applied values too
    }
    assert dict(CALLS) == applied
    assert set(CORE_PARAMS) <= set(applied["01_a"])

    for stage in TABLE:
        record = read_stage_record(run_dir, stage)
        assert record["stage"] == stage.name
        assert record["params"] == applied[stage.name]
        assert record["params_hash"] == params_hash(applied[stage.name])
        assert record["wall_s"] >= 0 and record["finished"] and record["key"]
    assert read_stage_record(run_dir, "01_a")["upstream"] is None
    assert read_stage_record(run_dir, "02_b")["upstream"]["key"] == read_stage_record(run_dir, "01_a")["key"]

    manifest = read_manifest(run_dir)
    assert manifest["params"] == {**core, "epochs": 2, "lr": 1e-3, "arch": "resnet18", "tags": [1, 2], "k": 7}
    assert manifest["environment"] == {"python": "3.x", "fake": True}
    assert set(manifest["stages"]) == {"01_a", "02_b", "03_c"}
    for name, section in manifest["stages"].items():
        assert section["status"] == "finished" and section["wall_s"] >= 0
        assert section["params"] == applied[name]  # what the stage applied, per stage
        assert section["key"] == read_stage_record(run_dir, name)["key"]
    assert manifest["metrics"] == [
        {
            "detector": "msp",
            "protocol": "basic",
            "auroc": 0.75,
            "fpr95": 0.5,
            "aupr_in": 0.8,
            "aupr_out": None,
            "close_acc": 0.9,
        },
        {
            "detector": "energy",
            "protocol": "basic",
            "auroc": 0.8,
            "fpr95": 0.4,
            "aupr_in": 0.85,
            "aupr_out": 0.7,
            "close_acc": 0.9,
        },
    ]
    assert tmp_files(tmp_path) == []


def test_unknown_parameter_is_refused_before_any_work(tmp_path):
    """A misspelt -p key used to be swallowed by ``**_`` and recorded as applied."""
    with pytest.raises(RunnerError) as info:
        pipeline(tmp_path, run="typo", extra={"epohcs": 3})
    # the nearest accepted name, so the right spelling is one look away
    assert str(info.value) == "-p epohcs: no stage has such a parameter; did you mean -p epochs=...?"
    assert CALLS == [] and not (tmp_path / "outputs").exists()

    # nothing near: every stage's parameters are listed
    with pytest.raises(RunnerError) as info:
        pipeline(tmp_path, run="typo", extra={"zzzz": 3})
    message = str(info.value)
    assert message.startswith("-p zzzz: no stage has such a parameter\n")
    assert "01_a: dataset, data_root, open_class, seed, device, run_dir, epochs, lr, arch, tags" in message
    assert "03_c: run_dir, seed, names" in message
    assert CALLS == [] and not (tmp_path / "outputs").exists()

    with pytest.raises(RunnerError, match="epohcs"):  # a sweep refuses it before its first run
        run_sweep(
            "synthetic",
            open_classes=["fear", "anger"],
            seeds=[0],
            outputs=tmp_path / "outputs",
            executor="python",
            stage_table=TABLE,
            repo_root=tmp_path,
            say=lambda _: None,
            extra=["epohcs=3"],
        )
    assert CALLS == [] and not (tmp_path / "outputs").exists()


@pytest.mark.parametrize(
    "extra, words",
    [
        ({"epochs": 0}, ["stage 01_a", "epochs=0", ">= 1"]),
        ({"lr": 5.0}, ["lr=5.0", "(0.0, 1.0]"]),
        ({"epochs": "ten"}, ["epochs='ten'", "expected int"]),
        ({"arch": "resnet19"}, ["arch='resnet19'", "resnet18", "resnet50"]),
        ({"k": 2.5}, ["stage 02_b", "k=2.5", "expected int"]),
    ],
)
def test_bad_values_are_refused_before_any_work(tmp_path, extra, words):
    with pytest.raises(RunnerError) as info:
        pipeline(tmp_path, run="bad", extra=extra)
    for word in words:
        assert word in str(info.value)
    assert CALLS == [] and not (tmp_path / "outputs").exists()


def test_bad_dataset_and_open_class_are_refused_before_any_work(tmp_path):
    with pytest.raises(RunnerError, match=r"dataset='ferplsu': unknown data set; choose from .*ferplus"):
        pipeline(tmp_path, dataset="ferplsu")
    with pytest.raises(ValueError, match="unknown emotion"):
        pipeline(tmp_path, open_class="bored")
    assert CALLS == [] and not (tmp_path / "outputs").exists()


def test_second_call_skips_finished_stages(tmp_path, monkeypatch):
    result = pipeline(tmp_path)
    called()
    monkeypatch.setattr(runner, "collect_environment", lambda: {"python": "other machine"})
    lines: list[str] = []
    result = pipeline(tmp_path, lines)
    # only skipped: the environment of the run is still the one its stages ran in
    assert read_manifest(result.run_dir)["environment"] == {"python": "3.x", "fake": True}
    assert called() == []
    assert result.skipped == ["01_a", "02_b", "03_c"] and result.ran == []
    assert "skip 01_a (finished)" in lines
    assert "skip 03_c (finished)" in lines


def test_changed_parameters_rerun_and_run_dir_is_not_a_parameter(tmp_path):
    pipeline(tmp_path, run="x")
    called()
    lines: list[str] = []
    pipeline(tmp_path, lines, run="x", extra={"epochs": 5})
    assert called() == ["01_a", "02_b", "03_c"]
    assert any("01_a (parameters changed" in line for line in lines)
    assert any("02_b (an earlier stage re-ran" in line for line in lines)
    run_dir = tmp_path / "outputs" / "x"
    assert read_manifest(run_dir)["params"]["epochs"] == 5
    assert read_manifest(run_dir)["stages"]["01_a"]["params"]["epochs"] == 5
    # dropping -p again is a change too (back to the default), and the run's params lose the key
    pipeline(tmp_path, run="x")
    assert called() == ["01_a", "02_b", "03_c"]
    assert "epochs" not in read_manifest(run_dir)["params"]
    assert read_manifest(run_dir)["stages"]["01_a"]["params"]["epochs"] == 3
    # asking for the default explicitly changes nothing
    pipeline(tmp_path, run="x", extra={"epochs": 3})
    assert called() == []

    base = {"dataset": "d", "seed": 0}
    assert params_hash({**base, "run_dir": "a"}) == params_hash({**base, "run_dir": "b"})
    assert params_hash({**base, "device": "cpu"}) == params_hash({**base, "device": "cuda:0"})
    assert params_hash({**base, "progress": True}) == params_hash({**base, "progress": False})
    assert params_hash(base) != params_hash({**base, "seed": 1})


def test_a_stage_key_covers_its_own_parameters_and_the_upstream_stage(tmp_path):
    """Changing a parameter of a later stage re-runs that stage and what follows, never the
    stages before it (the old runner hashed every parameter into every stage)."""
    pipeline(tmp_path, run="y")
    called()
    lines: list[str] = []
    pipeline(tmp_path, lines, run="y", extra={"names": ["msp"]})  # a parameter of 03_c only
    assert called() == ["03_c"]
    assert "skip 01_a (finished)" in lines and "skip 02_b (finished)" in lines
    pipeline(tmp_path, run="y", extra={"names": ["msp"], "k": 9})  # of 02_b: 02 and 03 re-run
    assert called() == ["02_b", "03_c"]
    # what does not change results changes no key: another device, no progress bars
    pipeline(tmp_path, run="y", extra={"names": ["msp"], "k": 9, "progress": False}, device="cuda:0")
    assert called() == []
    # re-running 01 (same parameters) makes 02 and 03 stale
    pipeline(tmp_path, run="y", stages=["01"], force=True)
    assert called() == ["01_a"]
    lines.clear()
    pipeline(tmp_path, lines, run="y", extra={"names": ["msp"], "k": 9})
    assert called() == ["02_b", "03_c"]
    assert any("02_b (an earlier stage re-ran" in line for line in lines)


def test_force_reruns_and_later_stages_follow(tmp_path):
    pipeline(tmp_path)
    called()
    pipeline(tmp_path, stages=["02"], force=True)
    assert called() == ["02_b"]
    lines: list[str] = []
    pipeline(tmp_path, lines)  # 03 used the old output of 02: it is stale now
    assert called() == ["03_c"]
    assert "skip 01_a (finished)" in lines and "skip 02_b (finished)" in lines
    assert any("03_c" in line and "earlier stage re-ran" in line for line in lines)
    pipeline(tmp_path, force=True)
    assert called() == ["01_a", "02_b", "03_c"]


def test_failing_stage_stops_the_pipeline_and_resumes_there(tmp_path):
    FAIL["02_b"] = ValueError("bad input in b")
    with pytest.raises(StageFailed) as info:
        pipeline(tmp_path, run="r")
    message = str(info.value)
    assert "02_b" in message and "bad input in b" in message and "stage_b" in message
    assert called() == ["01_a", "02_b"]
    run_dir = tmp_path / "outputs" / "r"
    assert read_stage_record(run_dir, "01_a") is not None
    assert read_stage_record(run_dir, "02_b") is None
    assert read_stage_record(run_dir, "03_c") is None
    stages = read_manifest(run_dir)["stages"]
    assert stages["02_b"]["status"] == "failed" and "bad input in b" in stages["02_b"]["error"]

    FAIL.clear()
    result = pipeline(tmp_path, run="r")
    assert called() == ["02_b", "03_c"]
    assert result.skipped == ["01_a"]
    stages = read_manifest(run_dir)["stages"]
    assert stages["02_b"]["status"] == "finished" and "error" not in stages["02_b"]


def test_killed_stage_has_no_record_and_reruns(tmp_path):
    pipeline(tmp_path, run="k")
    called()
    FAIL["02_b"] = KeyboardInterrupt()  # killed half-way through a forced rerun
    with pytest.raises(KeyboardInterrupt):
        pipeline(tmp_path, run="k", stages=["02_b"], force=True)
    assert read_stage_record(tmp_path / "outputs" / "k", "02_b") is None  # old record removed
    FAIL.clear()
    called()
    pipeline(tmp_path, run="k")
    assert called() == ["02_b", "03_c"]
    assert tmp_files(tmp_path) == []


def test_unknown_stage_and_bad_function_are_clear_errors(tmp_path):
    with pytest.raises(RunnerError, match="matches no stage"):
        pipeline(tmp_path, stages=["09"])
    table = (Stage("01_x", notebook="x.ipynb", func="ferlib_no_such_module:f"),)
    with pytest.raises(RunnerError, match="cannot import ferlib_no_such_module:f"):
        run_pipeline(
            "synthetic", outputs=tmp_path, executor="python", stage_table=table, repo_root=tmp_path, say=lambda _: None
        )


def test_select_stages_by_prefix_in_table_order():
    assert [s.name for s in select_stages(TABLE, ["03", "01_a"])] == ["01_a", "03_c"]
    assert [s.name for s in select_stages(TABLE, None)] == ["01_a", "02_b", "03_c"]
    table = (Stage("01_a", "a", stage_a), Stage("01_b", "b", stage_b))
    with pytest.raises(RunnerError, match="ambiguous"):
        select_stages(table, ["01"])


def stage_d(run_dir: str = "outputs/run", seed: int = 0, rounds: int = 1) -> None:
    _stage("04_d", locals())


#: TABLE and a standalone stage (as stage 05, the noisy-label benchmark): it reads no other
#: stage's files
TABLE_WITH_STANDALONE = (*TABLE, Stage("04_d", notebook="notebooks/04_d.ipynb", func=stage_d, standalone=True))


def test_a_standalone_stage_runs_only_when_named_and_keys_on_itself(tmp_path):
    assert [s.name for s in select_stages(TABLE_WITH_STANDALONE, None)] == ["01_a", "02_b", "03_c"]
    result = pipeline(tmp_path, stage_table=TABLE_WITH_STANDALONE)
    assert result.ran == ["01_a", "02_b", "03_c"] and called() == ["01_a", "02_b", "03_c"]

    result = pipeline(tmp_path, stage_table=TABLE_WITH_STANDALONE, stages=["04"], extra=["rounds=2"])
    assert result.ran == ["04_d"] and called() == ["04_d"]
    record = read_stage_record(result.run_dir, "04_d")
    assert record["upstream"] is None and record["params"]["rounds"] == 2

    # re-running the stages before it does not make it stale, and it is nobody's upstream
    pipeline(tmp_path, stage_table=TABLE_WITH_STANDALONE, stages=["03"], force=True)
    assert called() == ["03_c"]
    result = pipeline(tmp_path, stage_table=TABLE_WITH_STANDALONE, stages=["03", "04"], extra=["rounds=2"])
    assert result.skipped == ["03_c", "04_d"] and called() == []
    result = pipeline(tmp_path, stage_table=TABLE_WITH_STANDALONE, stages=["04"], extra=["rounds=3"])
    assert result.ran == ["04_d"]  # its own parameters do


def test_parameters_parsing_and_names():
    assert parse_param("lr=0.1") == ("lr", 0.1)
    assert parse_param("epochs=10") == ("epochs", 10)
    assert parse_param("arch=resnet50") == ("arch", "resnet50")
    assert parse_param("pretrained=None") == ("pretrained", None)
    assert parse_param("flag=True") == ("flag", True)
    assert parse_param("sizes=(1, 2)") == ("sizes", [1, 2])
    assert parse_param("path=a=b") == ("path", "a=b")
    assert parse_param("note='x y'") == ("note", "x y")
    with pytest.raises(RunnerError):
        parse_param("novalue")
    with pytest.raises(RunnerError, match="--seed"):
        runner.parse_params(["seed=3"])
    assert default_run_name("ferplus", "fear", 2) == "ferplus_open-fear_seed2"
    assert default_run_name("ferplus", None, 0) == "ferplus_open-none_seed0"
    assert expand_open_classes(["all"]) == [e.label for e in BASIC7]
    assert len(expand_open_classes(["all"])) == 7 and "contempt" not in expand_open_classes(["all"])
    assert expand_open_classes(["Surprised", "fear", "surprise", "none"]) == ["surprise", "fear", None]
    with pytest.raises(ValueError, match="unknown emotion"):
        expand_open_classes(["bored"])


def test_open_class_none(tmp_path):
    result = pipeline(tmp_path, open_class="none")
    assert result.run == "synthetic_open-none_seed0"
    assert CALLS[0][1]["open_class"] is None


# ------------------------------------------------------------------------------ sweep
def test_sweep_goes_on_after_a_failure_and_reports_it(tmp_path):
    FAIL_RUNS.add(("fear", 1))
    lines: list[str] = []
    result = run_sweep(
        "synthetic",
        open_classes=["surprise", "fear"],
        seeds=[0, 1],
        outputs=tmp_path / "outputs",
        executor="python",
        stage_table=TABLE,
        repo_root=tmp_path,
        say=lines.append,
    )
    assert not result.ok
    assert list(result.failed) == ["synthetic_open-fear_seed1"]
    assert "boom in b" in result.failed["synthetic_open-fear_seed1"]
    assert sorted(result.runs) == [
        "synthetic_open-fear_seed0",
        "synthetic_open-surprise_seed0",
        "synthetic_open-surprise_seed1",
    ]
    assert len(CALLS) == 3 * 3 + 2
    assert "== sweep finished: 3/4 runs ok" in lines
    assert any("synthetic_open-fear_seed1" in line for line in lines[lines.index("failed runs:") :])

    FAIL_RUNS.clear()
    called()
    result = run_sweep(
        "synthetic",
        open_classes=["surprise", "fear"],
        seeds=[0, 1],
        outputs=tmp_path / "outputs",
        executor="python",
        stage_table=TABLE,
        repo_root=tmp_path,
        say=lines.append,
    )
    assert result.ok
    assert called() == ["02_b", "03_c"]  # only the failed run's unfinished stages


def test_sweep_records_let_a_machine_that_never_ran_them_skip_finished_runs(tmp_path):
    """--records: each finished run leaves its record (stage records, metrics, manifest); a new
    outputs folder restores them and runs nothing, with the same metrics; a record of other
    settings, or one whose last stage is missing, restores nothing and the run runs."""
    import shutil

    records = tmp_path / "records"
    lines: list[str] = []
    kwargs = dict(
        open_classes=["surprise", "fear"],
        seeds=[0],
        executor="python",
        stage_table=TABLE,
        repo_root=tmp_path,
        records=records,
        say=lines.append,
    )
    assert run_sweep("synthetic", outputs=tmp_path / "first", **kwargs).ok
    assert called() == ["01_a", "02_b", "03_c"] * 2
    saved = records / "synthetic_open-fear_seed0"
    assert {p.name for p in (saved / "stages").iterdir()} == {"01_a.json", "02_b.json", "03_c.json"}
    assert (saved / "metrics.csv").is_file() and (saved / "manifest.json").is_file()
    assert not (saved / "01_a").exists()  # no stage's files: only what the tables read

    assert run_sweep("synthetic", outputs=tmp_path / "second", **kwargs).ok
    assert called() == []
    assert sum("restored synthetic_open-" in line for line in lines) == 2
    for run in ("synthetic_open-fear_seed0", "synthetic_open-surprise_seed0"):
        assert (tmp_path / "second" / run / "metrics.csv").read_bytes() == (
            tmp_path / "first" / run / "metrics.csv"
        ).read_bytes()

    other = shutil.copytree(records, tmp_path / "other")
    assert run_sweep("synthetic", outputs=tmp_path / "third", extra={"epochs": 4}, **{**kwargs, "records": other}).ok
    assert called() == ["01_a", "02_b", "03_c"] * 2  # another key: nothing restored (then replaced)

    partial = tmp_path / "partial"
    shutil.copytree(records, partial)
    (partial / "synthetic_open-fear_seed0" / "stages" / "03_c.json").unlink()
    assert run_sweep("synthetic", outputs=tmp_path / "fourth", **{**kwargs, "records": partial}).ok
    assert called() == ["01_a", "02_b", "03_c"]  # surprise restored; fear, without its stage 03, runs


def test_cli_pipeline_stage_and_sweep(tmp_path, capsys):
    out = tmp_path / "outputs"
    common = ["--dataset", "synthetic", "--outputs", str(out), "--executor", "python"]
    assert main(["pipeline", *common, "--run", "cli", "-p", "epochs=1"], stage_table=TABLE, repo_root=tmp_path) == 0
    assert called() == ["01_a", "02_b", "03_c"]
    assert read_manifest(out / "cli")["params"]["epochs"] == 1

    assert main(["stage", "02", *common, "--run", "cli"], stage_table=TABLE, repo_root=tmp_path) == 0
    assert called() == []
    assert "skip 02_b (finished)" in capsys.readouterr().out
    assert main(["stage", "02", *common, "--run", "cli", "--force"], stage_table=TABLE, repo_root=tmp_path) == 0
    assert called() == ["02_b"]
    # stage 02 has no epochs: the full command line still serves one stage, with a note
    assert (
        main(
            ["stage", "02", *common, "--run", "cli", "-p", "epochs=1", "--force"], stage_table=TABLE, repo_root=tmp_path
        )
        == 0
    )
    assert "note: -p epochs not used in this call (a parameter of 01_a)" in capsys.readouterr().out
    assert called() == ["02_b"]
    # a key no stage has: one line, the nearest name, exit status 2, nothing runs
    assert main(["stage", "02", *common, "--run", "cli", "-p", "epoch=1"], stage_table=TABLE, repo_root=tmp_path) == 2
    err = capsys.readouterr().err
    assert err == "ferlib.run: error: -p epoch: no stage has such a parameter; did you mean -p epochs=...?\n"
    assert called() == []

    FAIL_RUNS.add(("anger", 0))
    code = main(["sweep", *common, "--open", "anger", "disgust", "--seeds", "0"], stage_table=TABLE, repo_root=tmp_path)
    assert code == 1
    printed = capsys.readouterr().out
    assert "failed runs:" in printed and "synthetic_open-anger_seed0" in printed

    assert main(["pipeline", *common, "--stages", "nope"], stage_table=TABLE, repo_root=tmp_path) == 2
    assert "matches no stage" in capsys.readouterr().err


# ------------------------------------------------------------------------------ papermill
def test_missing_kernel_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("FERKIT_KERNEL", "ferkit-no-such-kernel")
    with pytest.raises(RunnerError, match="make venv"):
        pipeline(tmp_path, executor="papermill", run="nk")
    assert read_stage_record(tmp_path / "outputs" / "nk", "01_a") is None
    assert CALLS == []


def _kernel_or_skip() -> str:
    name = os.environ.get("FERKIT_KERNEL") or "ferkit"
    try:
        kernels = runner.available_kernels()
    except ImportError:
        kernels = set()
    if name not in kernels:
        if os.environ.get("CI"):
            pytest.fail(f"Jupyter kernel {name!r} missing in CI: `make venv` registers it")
        pytest.skip(f"Jupyter kernel {name!r} not installed (run `make venv`)")
    return name


def _write_notebook(path: Path, cells: list[tuple[str, list[str]]]) -> None:
    import nbformat

    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    for source, tags in cells:
        cell = nbformat.v4.new_code_cell(source)
        if tags:
            cell.metadata["tags"] = tags
        nb.cells.append(cell)
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, str(path))


def tiny(dataset: str = "default", seed: int = 0, run_dir: str = "nowhere", message: str = "default message") -> None:
    """The function behind the tiny notebook: its signature is the notebook's contract."""
    CALLS.append(("tiny", locals()))


def test_papermill_executes_notebooks_into_the_run_dir(tmp_path):
    kernel = _kernel_or_skip()
    _write_notebook(
        tmp_path / "notebooks" / "tiny.ipynb",
        [
            ('dataset = "default"\nseed = 0\nrun_dir = "nowhere"\nmessage = "default message"', ["parameters"]),
            ("import os, pathlib\npathlib.Path(run_dir, 'tiny.txt').write_text(f'{message}|{seed}|{os.getcwd()}')", []),
            ("print('message is', message)", []),
        ],
    )
    table = (Stage("01_tiny", notebook="notebooks/tiny.ipynb", func=tiny),)
    run_pipeline(
        "synthetic",
        seed=7,
        run="nb",
        outputs=tmp_path / "outputs",
        extra=["message='hello from papermill'"],
        executor="papermill",
        stage_table=table,
        repo_root=tmp_path,
        kernel=kernel,
        say=lambda _: None,
    )
    run_dir = tmp_path / "outputs" / "nb"
    assert CALLS == []  # papermill executor: the stage functions are not called

    executed = run_dir / "notebooks" / "01_tiny.ipynb"
    assert executed.exists()
    text = executed.read_text()
    assert "injected-parameters" in text and "hello from papermill" in text
    injected = [c for c in json.loads(text)["cells"] if "injected-parameters" in c["metadata"].get("tags", [])]
    source = "".join(injected[0]["source"])
    # only what the stage's signature accepts: no open_class, device or data_root
    assert "message = " in source and "seed = 7" in source and "run_dir = " in source
    assert "open_class" not in source and "device" not in source and "data_root" not in source
    assert "message is hello from papermill" in text
    message, seed, cwd = (run_dir / "tiny.txt").read_text().split("|")
    assert (message, seed) == ("hello from papermill", "7")
    assert Path(cwd).resolve() == tmp_path.resolve()  # kernel runs in the repo root
    assert read_stage_record(run_dir, "01_tiny")["notebook"] == str(executed)


def test_papermill_failure_names_the_executed_notebook(tmp_path, monkeypatch):
    """The runner's side of a failing notebook, with papermill faked (no kernel start)."""
    seen: dict = {}

    def execute_notebook(source, target, **kwargs):
        seen.update(kwargs, source=source, target=target)
        Path(target).write_text("{}")  # papermill saves the executed copy, error included
        raise RuntimeError("RuntimeError: broken on purpose")

    fake = types.SimpleNamespace(execute_notebook=execute_notebook)
    monkeypatch.setitem(sys.modules, "papermill", fake)
    monkeypatch.setattr(runner, "available_kernels", lambda: {"ferkit", "python3"})
    monkeypatch.delenv("FERKIT_KERNEL", raising=False)
    (tmp_path / "notebooks").mkdir()
    for stage in TABLE:
        (tmp_path / stage.notebook).write_text("{}")

    with pytest.raises(StageFailed) as info:
        pipeline(tmp_path, executor="papermill", run="pm", seed=4)
    run_dir = tmp_path / "outputs" / "pm"
    broken = run_dir / "notebooks" / "01_a.ipynb"
    assert str(broken) in str(info.value) and "broken on purpose" in str(info.value)
    assert broken.exists() and read_stage_record(run_dir, "01_a") is None
    assert CALLS == []
    assert seen["source"] == str(tmp_path / "notebooks" / "01_a.ipynb")
    assert seen["kernel_name"] == "ferkit" and seen["cwd"] == str(tmp_path.resolve())
    assert seen["parameters"]["seed"] == 4 and seen["parameters"]["run_dir"] == str(run_dir)
    assert set(seen["parameters"]) == set(CORE_PARAMS)  # given keys only: the notebook holds the defaults
    assert seen["progress_bar"] is False and seen["log_output"] is True
    assert read_manifest(run_dir)["stages"]["01_a"]["status"] == "failed"

    monkeypatch.setenv("FERKIT_KERNEL", "python3")  # the documented fallback
    with pytest.raises(StageFailed):
        pipeline(tmp_path, executor="papermill", run="pm", seed=4)
    assert seen["kernel_name"] == "python3"


def test_missing_notebook_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "papermill", types.SimpleNamespace())
    monkeypatch.setattr(runner, "available_kernels", lambda: {"ferkit"})
    monkeypatch.delenv("FERKIT_KERNEL", raising=False)
    with pytest.raises(RunnerError, match="01_a.ipynb does not exist"):
        pipeline(tmp_path, executor="papermill")


def test_cli_tables_without_finished_runs_is_a_clear_error(tmp_path, capsys):
    (tmp_path / "half_run").mkdir()  # no metrics.csv: not finished
    assert main(["tables", str(tmp_path / "*"), "--out", str(tmp_path / "tables")], repo_root=tmp_path) == 2
    assert "no finished run" in capsys.readouterr().err
    assert not (tmp_path / "tables").exists()
