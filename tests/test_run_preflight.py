"""``python -m ferlib.run`` failing cleanly and early, as a new user needs it: pre-flight checks
before any kernel starts or file is written (data folder, device, output folders), one line and
exit status 2 for user errors (in this process or in a notebook), Ctrl-C marking the stage
``interrupted`` (exit 130), "did you mean" for ``-p`` keys, parameters of stages a call does not
run, the kernel's TCP warning hidden, the closing summary, and ``ferlib.params`` as a leaf module.

The stage tables point at the dummy stage functions below (``--executor python``), or at a faked
papermill, so no test trains anything; one test starts a real kernel (skipped without it).
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import types
from pathlib import Path

import pytest
from papermill.exceptions import PapermillExecutionError

from ferlib import run as runner
from ferlib.data.errors import DataError
from ferlib.manifest import MANIFEST_NAME, read_manifest, update_manifest
from ferlib.params import ParameterError
from ferlib.run import RunnerError, Stage, StageInterrupted, main, run_pipeline, run_sweep

CALLS: list[str] = []
RAISE: dict[str, BaseException] = {}  # stage name -> exception it raises


def _stage(name: str, run_dir: str) -> None:
    CALLS.append(name)
    if name in RAISE:
        raise RAISE[name]
    Path(run_dir).mkdir(parents=True, exist_ok=True)


def stage_a(
    dataset: str = "synthetic",
    data_root: str | None = None,
    seed: int = 0,
    device: str = "cpu",
    run_dir: str = "outputs/run",
    epochs: int = 3,
) -> None:
    _stage("01_a", run_dir)
    update_manifest(run_dir, close_set={"test_acc": 0.8125})


def stage_b(open_class: str | None = None, seed: int = 0, run_dir: str = "outputs/run", k: int = 5) -> None:
    _stage("02_b", run_dir)


def stage_c(run_dir: str = "outputs/run", names: list[str] | None = None) -> None:
    """Reads no data (as stage 04): it runs without the data set's folder."""
    _stage("03_c", run_dir)
    with open(Path(run_dir) / "metrics.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["detector", "protocol", "auroc", "fpr95"])
        writer.writerows([["msp", "honest", 0.7, 0.5], ["tknn", "honest", 0.9, 0.3], ["msp", "reference", 0.8, 0.4]])
    (Path(run_dir) / "figures").mkdir(exist_ok=True)


TABLE = (
    Stage("01_a", notebook="notebooks/01_a.ipynb", func=stage_a),
    Stage("02_b", notebook="notebooks/02_b.ipynb", func=stage_b),
    Stage("03_c", notebook="notebooks/03_c.ipynb", func=stage_c),
)


@pytest.fixture(autouse=True)
def _reset(monkeypatch):
    CALLS.clear()
    RAISE.clear()
    monkeypatch.setattr(runner, "collect_environment", lambda: {"python": "3.x", "fake": True})
    yield
    CALLS.clear()
    RAISE.clear()


def pipeline(tmp_path, **kwargs):
    kwargs.setdefault("executor", "python")
    kwargs.setdefault("outputs", tmp_path / "outputs")
    lines = kwargs.pop("lines", [])
    return run_pipeline(
        kwargs.pop("dataset", "synthetic"),
        stage_table=kwargs.pop("stage_table", TABLE),
        repo_root=tmp_path,
        say=lines.append,
        **kwargs,
    )


def cli(tmp_path, *args: str, command: str = "pipeline") -> int:
    common = ["--outputs", str(tmp_path / "outputs"), "--executor", "python"]
    if "--dataset" not in args:
        common += ["--dataset", "synthetic"]
    return main([command, *args, *common], stage_table=TABLE, repo_root=tmp_path)


@pytest.fixture
def fake_papermill(monkeypatch, tmp_path):
    """papermill replaced by a function that records its calls and raises ``raises[0]``, if any;
    the notebooks exist and the kernel is 'installed'."""
    seen: list[dict] = []
    raises: list[BaseException] = []

    def execute_notebook(source, target, **kwargs):
        seen.append(dict(kwargs, source=source, target=target))
        Path(target).write_text("{}")
        if raises:
            raise raises[0]

    monkeypatch.setitem(sys.modules, "papermill", types.SimpleNamespace(execute_notebook=execute_notebook))
    monkeypatch.setattr(runner, "available_kernels", lambda: {"ferkit"})
    monkeypatch.delenv("FERKIT_KERNEL", raising=False)
    (tmp_path / "notebooks").mkdir()
    for stage in TABLE:
        (tmp_path / stage.notebook).write_text("{}")
    return types.SimpleNamespace(seen=seen, raises=raises)


def notebook_error(ename: str, evalue: str) -> Exception:
    """The exception papermill raises for a failing cell."""
    return PapermillExecutionError(0, 1, "stage()", ename, evalue, [f"{ename}: {evalue}"])


# ------------------------------------------------------------------------------ 1. pre-flight
def test_missing_data_root_is_refused_before_any_file_or_kernel(tmp_path, fake_papermill):
    missing = tmp_path / "no-such-data"
    with pytest.raises(RunnerError) as info:
        pipeline(tmp_path, dataset="ferplus", data_root=missing, executor="papermill")
    assert str(info.value) == f"--dataset ferplus: --data-root {missing} does not exist"
    assert fake_papermill.seen == [] and not (tmp_path / "outputs").exists()  # no kernel, no run folder

    (tmp_path / "a-file").write_text("x")
    with pytest.raises(RunnerError, match="a-file is not a folder"):
        pipeline(tmp_path, dataset="ferplus", data_root=tmp_path / "a-file")
    with pytest.raises(RunnerError, match=r"no --data-root given and its default folder .*data/ferplus is missing"):
        pipeline(tmp_path, dataset="ferplus")
    assert CALLS == [] and not (tmp_path / "outputs").exists()

    # the same from the command line: one line, exit status 2, no traceback, no run folder
    assert cli(tmp_path, "--dataset", "ferplus", "--data-root", str(missing)) == 2


def test_cli_missing_data_root_is_one_line(tmp_path, capsys):
    missing = tmp_path / "nope"
    assert cli(tmp_path, "--dataset", "rafdb", "--data-root", str(missing)) == 2
    captured = capsys.readouterr()
    assert captured.err == f"ferlib.run: error: --dataset rafdb: --data-root {missing} does not exist\n"
    assert "Traceback" not in captured.out and not (tmp_path / "outputs").exists()


def test_data_root_is_checked_only_where_a_stage_to_run_reads_data(tmp_path):
    pipeline(tmp_path, data_root=tmp_path / "generated")  # synthetic: generated on first use
    assert CALLS == ["01_a", "02_b", "03_c"]
    CALLS.clear()
    data = tmp_path / "ferplus"
    data.mkdir()
    pipeline(tmp_path, run="r", dataset="ferplus", data_root=data)
    CALLS.clear()
    data.rmdir()  # the data is gone (rendering on a laptop): finished stages need none
    pipeline(tmp_path, run="r", dataset="ferplus", data_root=data)
    pipeline(tmp_path, run="r", dataset="ferplus", data_root=data, stages=["03"], force=True)
    assert CALLS == ["03_c"]  # reads no data
    with pytest.raises(RunnerError, match="does not exist"):
        pipeline(tmp_path, run="r", dataset="ferplus", data_root=data, stages=["01"], force=True)


def _fake_torch(monkeypatch, *, cuda: bool, count: int = 0, mps: bool = False) -> None:
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: mps)


def test_unusable_device_is_refused_up_front(tmp_path, monkeypatch, capsys):
    _fake_torch(monkeypatch, cuda=False)
    with pytest.raises(RunnerError, match=r"--device cuda: no CUDA device is available here .*use --device cpu"):
        pipeline(tmp_path, device="cuda")
    with pytest.raises(RunnerError, match="--device mps: MPS .* is not available here"):
        pipeline(tmp_path, device="mps")
    assert cli(tmp_path, "--device", "cuda:0") == 2
    assert capsys.readouterr().err.startswith("ferlib.run: error: --device cuda:0: no CUDA device")

    _fake_torch(monkeypatch, cuda=True, count=2)
    with pytest.raises(RunnerError, match=r"--device cuda:2: this machine shows 2 CUDA device\(s\), cuda:0..cuda:1"):
        pipeline(tmp_path, device="cuda:2")
    assert CALLS == [] and not (tmp_path / "outputs").exists()
    pipeline(tmp_path, device="cuda:1")  # there: the (dummy) stages run
    assert CALLS == ["01_a", "02_b", "03_c"]

    # an inline sweep checks before its first run
    _fake_torch(monkeypatch, cuda=False)
    with pytest.raises(RunnerError, match="no CUDA device"):
        run_sweep(
            "synthetic",
            open_classes=["fear"],
            seeds=[5],
            device="cuda",
            outputs=tmp_path / "sweep",
            executor="python",
            stage_table=TABLE,
            repo_root=tmp_path,
            say=lambda _: None,
        )
    assert not (tmp_path / "sweep").exists()


def test_output_folder_must_be_writable(tmp_path):
    (tmp_path / "taken").write_text("a file where the outputs folder would go")
    with pytest.raises(RunnerError, match=r"output folder .*taken/outputs/.*: .*taken is a file, not a folder"):
        pipeline(tmp_path, outputs=tmp_path / "taken" / "outputs")
    assert CALLS == []


# ------------------------------------------------------------------------------ 2. user errors
@pytest.mark.parametrize(
    "error, text",
    [
        (DataError("/data/ferplus/label.csv", "bad row", line=3), "/data/ferplus/label.csv, line 3: bad row"),
        (FileNotFoundError("no checkpoint at outputs/x/01/best.pt"), "no checkpoint at outputs/x/01/best.pt"),
        (ParameterError("epochs=0: must be an integer >= 1"), "epochs=0: must be an integer >= 1"),
    ],
)
def test_user_error_in_a_stage_is_one_line_and_status_2(tmp_path, capsys, error, text):
    RAISE["01_a"] = error
    assert cli(tmp_path) == 2
    captured = capsys.readouterr()
    assert captured.err == f"ferlib.run: error: stage 01_a: {text}\n"
    assert "Traceback" not in captured.out + captured.err


def test_user_error_wrapped_in_another_is_found_at_the_root(tmp_path, capsys):
    try:
        raise DataError("/data/x", "no such split")
    except DataError as exc:
        try:
            raise RuntimeError("loading failed") from exc
        except RuntimeError as wrapped:
            RAISE["02_b"] = wrapped
    assert cli(tmp_path) == 2
    assert capsys.readouterr().err == "ferlib.run: error: stage 02_b: /data/x: no such split\n"


def test_unexpected_error_keeps_its_traceback(tmp_path, capsys):
    RAISE["01_a"] = ZeroDivisionError("a bug")
    assert cli(tmp_path) == 1
    err = capsys.readouterr().err
    assert "Traceback" in err and "ZeroDivisionError: a bug" in err


def test_user_error_in_a_notebook_is_one_line_too(tmp_path, capsys, fake_papermill):
    fake_papermill.raises.append(notebook_error("DataError", "/data/ferplus/label.csv: bad row"))
    common = ["--dataset", "synthetic", "--outputs", str(tmp_path / "outputs"), "--executor", "papermill"]
    assert main(["pipeline", *common], stage_table=TABLE, repo_root=tmp_path) == 2
    assert capsys.readouterr().err == "ferlib.run: error: stage 01_a: /data/ferplus/label.csv: bad row\n"
    fake_papermill.raises[:] = [notebook_error("ZeroDivisionError", "a bug")]
    assert main(["pipeline", *common], stage_table=TABLE, repo_root=tmp_path) == 1
    assert "open the executed notebook" in capsys.readouterr().err


# ------------------------------------------------------------------------------ 3. Ctrl-C
def _lock_is_free(run_dir: Path) -> bool:
    import fcntl

    with open(run_dir / f".{MANIFEST_NAME}.lock", "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False
        fcntl.flock(handle, fcntl.LOCK_UN)
        return True


def test_ctrl_c_marks_the_stage_interrupted_and_exits_130(tmp_path, capsys):
    RAISE["02_b"] = KeyboardInterrupt()
    assert cli(tmp_path, "--run", "ctrl-c") == 130
    captured = capsys.readouterr()
    assert captured.err == "interrupted: 02_b; run again to resume\n"
    assert "Traceback" not in captured.out
    run_dir = tmp_path / "outputs" / "ctrl-c"
    stages = read_manifest(run_dir)["stages"]
    assert stages["01_a"]["status"] == "finished" and stages["02_b"]["status"] == "interrupted"
    assert _lock_is_free(run_dir)

    # library callers still get a KeyboardInterrupt, which names the stage
    with pytest.raises(StageInterrupted) as info:
        pipeline(tmp_path, run="ctrl-c", engine="auto")  # the command line's default engine: the same run
    assert isinstance(info.value, KeyboardInterrupt) and info.value.stage.name == "02_b"

    RAISE.clear()
    CALLS.clear()
    assert cli(tmp_path, "--run", "ctrl-c") == 0  # resumes where it stopped
    assert CALLS == ["02_b", "03_c"]
    assert read_manifest(run_dir)["stages"]["02_b"]["status"] == "finished"


def test_ctrl_c_under_papermill(tmp_path, capsys, fake_papermill):
    common = ["--dataset", "synthetic", "--outputs", str(tmp_path / "outputs"), "--executor", "papermill"]
    for raised in (KeyboardInterrupt(), notebook_error("KeyboardInterrupt", "")):  # here, or in the kernel
        fake_papermill.raises[:] = [raised]
        assert main(["pipeline", *common, "--run", "pm"], stage_table=TABLE, repo_root=tmp_path) == 130
        assert capsys.readouterr().err == "interrupted: 01_a; run again to resume\n"
        assert read_manifest(tmp_path / "outputs" / "pm")["stages"]["01_a"]["status"] == "interrupted"


# ------------------------------------------------------------------------------ 4. did you mean
@pytest.mark.parametrize(
    "param, option, sweep_option",
    [
        ("open_class=fear", "--open-class", "--open"),
        ("seed=1", "--seed", "--seeds"),
        ("device=cuda", "--device", "--device"),
        ("data_root=/data", "--data-root", "--data-root"),
        ("dataset=ferplus", "--dataset", "--dataset"),
    ],
)
def test_runner_parameters_name_their_option(tmp_path, capsys, param, option, sweep_option):
    key = param.split("=")[0]
    assert cli(tmp_path, "-p", param) == 2
    err = capsys.readouterr().err
    assert err == f"ferlib.run: error: -p cannot set {key}: use {option} (an option of the runner)\n"
    assert cli(tmp_path, "-p", param, command="sweep") == 2
    assert f"-p cannot set {key}: use {sweep_option} " in capsys.readouterr().err
    assert not (tmp_path / "outputs").exists()


def test_misspelt_key_gets_the_nearest_name(tmp_path, capsys):
    assert cli(tmp_path, "-p", "epoch=2") == 2
    assert capsys.readouterr().err == (
        "ferlib.run: error: -p epoch: no stage has such a parameter; did you mean -p epochs=...?\n"
    )
    assert cli(tmp_path, "-p", "sede=2") == 2  # near a runner parameter: its option
    assert "did you mean --seed?" in capsys.readouterr().err
    assert cli(tmp_path, "-p", "sede=2", command="sweep") == 2
    assert "did you mean --seeds?" in capsys.readouterr().err


# ------------------------------------------------------------------------------ 5. other stages' keys
def test_parameters_of_stages_not_run_are_noted_and_left_out(tmp_path):
    lines: list[str] = []
    result = pipeline(tmp_path, run="one", stages=["01"], extra=["epochs=2", "names=['msp']", "k=7"], lines=lines)
    assert CALLS == ["01_a"]
    assert "note: -p names, k not used in this call (a parameter of 02_b, 03_c)" in lines
    manifest = read_manifest(result.run_dir)
    assert manifest["params"]["epochs"] == 2 and "names" not in manifest["params"] and "k" not in manifest["params"]

    # validated against their own stage all the same; a key no stage has is still refused
    with pytest.raises(RunnerError, match=r"stage 02_b: k=2.5: expected int"):
        pipeline(tmp_path, run="one", stages=["01"], extra={"k": 2.5})
    with pytest.raises(RunnerError, match="no stage has such a parameter"):
        pipeline(tmp_path, run="one", stages=["01"], extra={"kk": 2, "nothing_like_it": 1})

    lines.clear()
    CALLS.clear()
    sweep = run_sweep(
        "synthetic",
        open_classes=["fear", "anger"],
        seeds=[0],
        stages=["02"],
        extra=["epochs=2", "k=3"],
        outputs=tmp_path / "sweep",
        executor="python",
        stage_table=TABLE,
        repo_root=tmp_path,
        say=lines.append,
    )
    assert sweep.ok and CALLS == ["02_b", "02_b"]
    assert [line for line in lines if line.startswith("note:")] == [
        "note: -p epochs not used in this call (a parameter of 01_a)"
    ]  # once, not once per run


# ------------------------------------------------------------------------------ 6. kernel warning
def test_papermill_kernels_log_errors_only(tmp_path, fake_papermill):
    pipeline(tmp_path, executor="papermill", stages=["01"])
    assert fake_papermill.seen[0]["extra_arguments"] == ["--IPKernelApp.log_level=CRITICAL"]


def test_real_kernel_prints_no_tcp_encryption_warning(tmp_path, capfd):
    name = os.environ.get("FERKIT_KERNEL") or "ferkit"
    try:
        kernels = runner.available_kernels()
    except ImportError:
        kernels = set()
    if name not in kernels:
        pytest.skip(f"Jupyter kernel {name!r} not installed (run `make venv`)")
    import nbformat

    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells.append(nbformat.v4.new_code_cell("run_dir = 'x'", metadata={"tags": ["parameters"]}))
    nb.cells.append(nbformat.v4.new_code_cell("print('cell ran')"))
    (tmp_path / "notebooks").mkdir()
    nbformat.write(nb, str(tmp_path / "notebooks" / "01_t.ipynb"))

    def t(run_dir: str = "x") -> None:
        """The function behind the notebook."""

    table = (Stage("01_t", notebook="notebooks/01_t.ipynb", func=t),)
    pipeline(tmp_path, executor="papermill", stage_table=table, kernel=name)
    err = capfd.readouterr().err
    assert "without encryption" not in err


# ------------------------------------------------------------------------------ 7. summary
def test_every_call_ends_with_a_summary(tmp_path, capsys):
    (tmp_path / "outputs" / "tables").mkdir(parents=True)
    assert cli(tmp_path, "--run", "sum") == 0
    out = capsys.readouterr().out
    run_dir = tmp_path / "outputs" / "sum"
    summary = out[out.index("summary:") :].splitlines()
    assert summary == [
        "summary:",
        f"  sum: {run_dir} (ran 3, skipped 0 stage(s))",
        "    close-set test accuracy 0.8125",
        "    best AUROC: honest 0.9000 (tknn); reference 0.8000 (msp)",
        f"    metrics: {run_dir / 'metrics.csv'}",
        f"    figures: {run_dir / 'figures'}",
        f"    tables: {tmp_path / 'outputs' / 'tables'}",
    ]
    assert cli(tmp_path, "02", "--run", "sum", command="stage") == 0
    assert f"  sum: {run_dir} (ran 0, skipped 1 stage(s))" in capsys.readouterr().out

    assert cli(tmp_path, "--open", "fear", "anger", "--seeds", "3", "--stages", "01", command="sweep") == 0
    out = capsys.readouterr().out
    summary = out[out.index("summary:") :]
    for name in ("synthetic_open-fear_seed3", "synthetic_open-anger_seed3"):
        assert f"  {name}: {tmp_path / 'outputs' / name} (ran 1, skipped 0 stage(s))" in summary
    assert summary.count("close-set test accuracy 0.8125") == 2


# ------------------------------------------------------------------------------ 8. params is a leaf
def test_params_imports_no_stage_module():
    code = (
        "import sys, ferlib.params\n"
        "heavy = [m for m in ('ferlib.stages', 'ferlib.report', 'ferlib.noisy', 'ferlib.run', 'torch') "
        "if m in sys.modules]\n"
        "print(json.dumps(heavy))"
    )
    out = subprocess.run(
        [sys.executable, "-c", "import json\n" + code],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    assert json.loads(out.stdout) == []


def test_ctrl_c_silences_papermills_clean_up_logs(monkeypatch):
    """After Ctrl-C, papermill's clean-up logged "Kernel died while waiting for execute reply"
    and asyncio a never-retrieved task's traceback; the CLI's SIGINT handler mutes them."""
    import logging
    import signal

    for name in runner._CLEANUP_LOGGERS:
        monkeypatch.setattr(logging.getLogger(name), "disabled", False)
    before = signal.getsignal(signal.SIGINT)
    with pytest.raises(KeyboardInterrupt):
        with runner._quiet_after_ctrl_c():
            os.kill(os.getpid(), signal.SIGINT)
            import time

            time.sleep(5)  # the signal arrives here
    assert all(logging.getLogger(name).disabled for name in runner._CLEANUP_LOGGERS)
    assert signal.getsignal(signal.SIGINT) is before


def test_a_sweep_job_that_hits_a_user_error_is_not_resubmitted(tmp_path):
    from ferlib.launch import SweepJob

    kwargs = dict(outputs=tmp_path / "outputs", executor="python", stage_table=TABLE, repo_root=tmp_path)
    RAISE["02_b"] = DataError("/data/x/label.csv", "bad row")
    outcome = SweepJob("synthetic", "fear", 0, {**kwargs, "say": lambda _: None})()
    assert "bad row" in outcome.error and outcome.retry is False  # the same again fails the same way
    RAISE["02_b"] = RuntimeError("out of memory, maybe")
    outcome = SweepJob("synthetic", "fear", 0, {**kwargs, "say": lambda _: None})()
    assert outcome.retry is True


def test_left_out_keys_are_checked_by_the_pipeline_stage_not_a_standalone_one(tmp_path):
    """`--stages 01 -p "detectors=[..., 'cycle']"` is stage 03's list: stage 05, which has a
    `detectors` list of its own (outputs-only scores), must not refuse it."""
    from ferlib.run import STAGES, check_parameters, select_stages

    selected = select_stages(STAGES, ["01"])
    params = {"dataset": "synthetic", "run_dir": str(tmp_path / "r"), "detectors": ["msp", "cycle"]}
    assert check_parameters(selected, params, ["detectors"], stage_table=STAGES) == ["detectors"]
    with pytest.raises(RunnerError, match="stage 03"):
        check_parameters(selected, {**params, "detectors": ["nope"]}, ["detectors"], stage_table=STAGES)
