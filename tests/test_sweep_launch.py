"""Sweeps through submitit (``--launcher submitit``): one job per run folder, the same runs and
tables as the inline loop, failed jobs resubmitted and resumed from their finished stages, the
GPU each local job sees, the Slurm parameters, and the errors given before any work.

The stage table points at the dummy stages below (``--executor python``). submitit's local
jobs are subprocesses: they import these stages by name, so ``PYTHONPATH`` holds this folder
(fixture ``jobs_import_tests``); the dummies leave their traces in files, not in memory.
"""

from __future__ import annotations

import csv
import json
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

import pandas as pd
import pytest

from ferlib import launch
from ferlib import run as runner
from ferlib.launch import JobOutcome, SubmititOptions, SweepJob, check_options, local_slots, visible_gpu_ids
from ferlib.manifest import read_manifest
from ferlib.run import RunnerError, Stage, main, read_stage_record, run_sweep

submitit = pytest.importorskip("submitit")

TESTS = Path(__file__).resolve().parent
FAIL_ENV = "FERKIT_TEST_FAIL"  # "<mode>:<run name>[,...]"; mode: stage (once), crash (once), always


# ------------------------------------------------------------------------------ dummy stages
def _trace(run_dir: str, name: str) -> None:
    Path(run_dir).mkdir(parents=True, exist_ok=True)
    with open(Path(run_dir) / "calls.log", "a", encoding="utf-8") as handle:
        handle.write(name + "\n")


def _injected(run_dir: str, stage: str) -> None:
    """Fail as ``$FERKIT_TEST_FAIL`` says for this run (``once``: the first call only)."""
    run = Path(run_dir)
    for item in filter(None, os.environ.get(FAIL_ENV, "").split(",")):
        mode, _, name = item.partition(":")
        if name != run.name:
            continue
        if mode == "always" and stage == "02_b":
            raise RuntimeError(f"injected failure in {run.name}")
        flag = run / f"failed-once-{mode}"
        if mode == "stage" and stage == "02_b" and not flag.exists():
            flag.touch()
            raise RuntimeError(f"injected failure once in {run.name}")
        if mode == "crash" and stage == "03_c" and not flag.exists():
            flag.touch()
            os._exit(3)  # the job's process dies: no result, no stage record


def stage_a(
    dataset: str = "synthetic",
    open_class: str | None = None,
    seed: int = 0,
    device: str = "cpu",
    run_dir: str = "outputs/run",
    epochs: int = 3,
) -> None:
    _trace(run_dir, "01_a")
    seen = {"device": device, "CUDA_VISIBLE_DEVICES": os.environ.get("CUDA_VISIBLE_DEVICES"), "pid": os.getpid()}
    (Path(run_dir) / "a.json").write_text(json.dumps(seen))


def stage_b(run_dir: str = "outputs/run", seed: int = 0, k: int = 5) -> None:
    _trace(run_dir, "02_b")
    _injected(run_dir, "02_b")


def stage_c(run_dir: str = "outputs/run", open_class: str | None = None, seed: int = 0) -> None:
    _trace(run_dir, "03_c")
    _injected(run_dir, "03_c")
    base = 0.5 + 0.1 * seed + 0.01 * len(open_class or "")  # differs per run: the tables must match row by row
    with open(Path(run_dir) / "metrics.csv", "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["detector", "protocol", "auroc", "fpr95", "aupr_in", "aupr_out", "close_acc"])
        writer.writerow(["msp", "honest", base, 1 - base, 0.8, 0.7, 0.9])
        writer.writerow(["energy", "honest", base + 0.05, 0.9 - base, 0.85, 0.75, 0.9])


TABLE = (
    Stage("01_a", notebook="notebooks/01_a.ipynb", func=f"{__name__}:stage_a"),
    Stage("02_b", notebook="notebooks/02_b.ipynb", func=f"{__name__}:stage_b"),
    Stage("03_c", notebook="notebooks/03_c.ipynb", func=f"{__name__}:stage_c"),
)


@pytest.fixture
def jobs_import_tests(monkeypatch):
    """Local jobs are fresh interpreters: they find this module (and its stages) by PYTHONPATH."""
    paths = [str(TESTS), str(TESTS.parent), os.environ.get("PYTHONPATH", "")]
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(p for p in paths if p))
    monkeypatch.delenv(FAIL_ENV, raising=False)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)


def calls(run_dir: Path) -> list[str]:
    path = run_dir / "calls.log"
    return path.read_text(encoding="utf-8").split() if path.exists() else []


def sweep(tmp_path, out, lines=None, **kwargs):
    kwargs.setdefault("executor", "python")
    return run_sweep(
        "synthetic",
        open_classes=kwargs.pop("open_classes", ["surprise"]),
        seeds=kwargs.pop("seeds", [0, 1]),
        outputs=out,
        stage_table=TABLE,
        repo_root=tmp_path,
        say=lines.append if lines is not None else (lambda _: None),
        **kwargs,
    )


def gathered(out: Path) -> pd.DataFrame:
    """The table ``python -m ferlib.run tables`` starts from, without the run folders' paths."""
    from ferlib.tables import collect_runs

    frame = collect_runs(str(out / "*"))
    return frame.drop(columns="run").sort_values(["open_class", "seed", "detector"]).reset_index(drop=True)


LOCAL = SubmititOptions(cluster="local", array_parallelism=2, poll_s=0.2)  # both runs at once


# ------------------------------------------------------------------------------ errors before any work
def test_unknown_launcher_is_refused_before_any_work(tmp_path, capsys):
    out = tmp_path / "outputs"
    with pytest.raises(RunnerError, match="launcher must be one of inline, submitit, got 'slurm'"):
        sweep(tmp_path, out, launcher="slurm")
    with pytest.raises(SystemExit) as info:
        main(["sweep", "--dataset", "synthetic", "--outputs", str(out), "--launcher", "celery"], stage_table=TABLE)
    assert info.value.code == 2 and "invalid choice: 'celery'" in capsys.readouterr().err
    assert not out.exists()


def test_missing_submitit_names_the_pip_command(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "submitit", None)  # import submitit -> ImportError
    out = tmp_path / "outputs"
    with pytest.raises(RunnerError, match=r"pip install 'submitit>=1\.5'"):
        sweep(tmp_path, out, launcher="submitit")
    common = ["--dataset", "synthetic", "--outputs", str(out), "--executor", "python"]
    assert main(["sweep", *common, "--launcher", "submitit"], stage_table=TABLE, repo_root=tmp_path) == 2
    assert "pip install 'submitit>=1.5'" in capsys.readouterr().err
    assert not out.exists()
    # the inline sweep never imports it
    monkeypatch.setattr(runner, "collect_environment", lambda: {"fake": True})
    assert main(["sweep", *common, "--seeds", "0"], stage_table=TABLE, repo_root=tmp_path) == 0


@pytest.mark.parametrize(
    "options, device, words",
    [
        (SubmititOptions(cluster="kubernetes"), "cpu", ["--cluster must be one of local, slurm, debug"]),
        (SubmititOptions(cluster="slurm", slurm={"acount": "abc"}), "cpu", ["no parameter 'acount'", "account"]),
        (SubmititOptions(cluster="slurm", slurm={"slurm_partition": "x"}), "cpu", ["set it with --partition"]),
        (SubmititOptions(cluster="slurm", slurm=["qos"]), "cpu", ["--slurm expects KEY=VALUE"]),
        (SubmititOptions(cluster="local", partition="gpu"), "cpu", ["--partition apply to --cluster slurm only"]),
        (SubmititOptions(cluster="local", slurm={"qos": "high"}), "cpu", ["--slurm apply to --cluster slurm only"]),
        (SubmititOptions(max_attempts=0), "cpu", ["--max-attempts must be a number >= 1"]),
        (SubmititOptions(time_min=0), "cpu", ["--time-min"]),
        (SubmititOptions(gpus_per_job=0), "cuda", ["would see no GPU"]),
        (SubmititOptions(gpus_per_job=1), "cuda:1", ["only its own 1 GPU(s)", "use --device cuda"]),
        (SubmititOptions(), "cuda", ["needs 1 GPU(s) but this machine shows 0"]),
        (SubmititOptions(jobs_per_gpu=0), "cuda", ["--jobs-per-gpu must be a number >= 1"]),
        (SubmititOptions(jobs_per_gpu=4), "cpu", ["--jobs-per-gpu applies to --cluster local with GPUs", "without"]),
        (SubmititOptions(cluster="debug", jobs_per_gpu=2), "cuda", ["not to --cluster debug"]),
    ],
)
def test_bad_launcher_options_are_refused_before_any_work(tmp_path, monkeypatch, options, device, words):
    monkeypatch.setattr(launch.shutil, "which", lambda name: "/usr/bin/" + name)  # as on a login node
    monkeypatch.setattr(launch, "visible_gpu_ids", lambda: [])  # no GPU here, whatever the machine
    out = tmp_path / "outputs"
    with pytest.raises(RunnerError) as info:
        sweep(tmp_path, out, launcher="submitit", submitit=options, device=device)
    for word in words:
        assert word in str(info.value)
    assert not out.exists()


def test_slurm_needs_sbatch_and_options_need_the_submitit_launcher(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(launch.shutil, "which", lambda name: None)
    out = tmp_path / "outputs"
    with pytest.raises(RunnerError, match="sbatch not found"):
        sweep(tmp_path, out, launcher="submitit", submitit=SubmititOptions(cluster="slurm"))
    common = ["sweep", "--dataset", "synthetic", "--outputs", str(out), "--executor", "python"]
    assert main([*common, "--cluster", "local"], stage_table=TABLE, repo_root=tmp_path) == 2
    assert "need --launcher submitit" in capsys.readouterr().err
    assert main([*common, "--launcher", "submitit", "-p", "epohcs=1"], stage_table=TABLE, repo_root=tmp_path) == 2
    assert "-p epohcs: no stage has such a parameter; did you mean -p epochs=...?" in capsys.readouterr().err
    assert not out.exists()


# ------------------------------------------------------------------------------ parameters chosen
def test_gpu_slots_of_a_local_sweep():
    assert visible_gpu_ids({"CUDA_VISIBLE_DEVICES": "2,5"}) == [2, 5]
    assert visible_gpu_ids({"CUDA_VISIBLE_DEVICES": ""}) == []
    assert visible_gpu_ids({}, count=4) == [0, 1, 2, 3]
    with pytest.raises(RunnerError, match="indices, not UUIDs"):
        visible_gpu_ids({"CUDA_VISIBLE_DEVICES": "GPU-8d1c"})
    four = [0, 1, 2, 3]
    assert local_slots(1, None, four) == [(0,), (1,), (2,), (3,)]  # one job per GPU
    assert local_slots(2, None, four) == [(0, 1), (2, 3)]
    assert local_slots(1, 2, four) == [(0,), (1,)]  # --array-parallelism caps them
    assert local_slots(1, None, [2, 5]) == [(2,), (5,)]  # the GPUs this process was given
    assert local_slots(0, None, four) == [()]  # CPU: one job at a time unless told
    assert local_slots(0, 3, []) == [(), (), ()]
    with pytest.raises(RunnerError, match="needs 2 GPU"):
        local_slots(2, None, [0])
    # --jobs-per-gpu: each slot handed out N times, round-robin, so a cap still spreads the jobs
    assert local_slots(1, None, [0, 1], 3) == [(0,), (1,), (0,), (1,), (0,), (1,)]
    assert local_slots(1, 3, [0, 1], 3) == [(0,), (1,), (0,)]
    assert local_slots(2, None, four, 2) == [(0, 1), (2, 3), (0, 1), (2, 3)]
    assert check_options(SubmititOptions(jobs_per_gpu=4), "cuda").jobs_per_gpu == 4
    # --device cuda implies one GPU per job; cpu none; the debug cluster runs here, as inline
    assert check_options(SubmititOptions(), "cuda").gpus_per_job == 1
    assert check_options(SubmititOptions(), "cuda:0").gpus_per_job == 1
    assert check_options(SubmititOptions(gpus_per_job=2), "cuda:1").gpus_per_job == 2
    assert check_options(SubmititOptions(), "cpu").gpus_per_job == 0
    assert check_options(SubmititOptions(cluster="debug"), "cuda:1").cluster == "debug"


def test_slurm_parameters_and_sbatch_file(tmp_path, monkeypatch):
    monkeypatch.setattr(launch.shutil, "which", lambda name: "/usr/bin/" + name)
    options = check_options(
        SubmititOptions(
            cluster="slurm",
            partition="gpu",
            time_min=120,
            cpus_per_job=8,
            mem_gb=32,
            array_parallelism=4,
            slurm=["account=abc", "slurm_constraint=a100", "exclusive=True"],
        ),
        "cuda",
    )
    params = launch.slurm_parameters(options, "ferkit-ferplus")
    assert params == {
        "name": "ferkit-ferplus",
        "timeout_min": 120,
        "gpus_per_node": 1,
        "cpus_per_task": 8,
        "mem_gb": 32,
        "slurm_partition": "gpu",
        "slurm_array_parallelism": 4,
        "slurm_account": "abc",
        "slurm_constraint": "a100",
        "slurm_exclusive": True,
        "slurm_setup": ["export OMP_NUM_THREADS=8 MKL_NUM_THREADS=8"],
    }
    folder = tmp_path / "outputs" / launch.SUBMITIT_DIR
    executor = launch.make_executor(options, folder, "ferkit-ferplus")  # no Slurm needed to build it
    assert Path(executor.folder) == folder
    text = executor._executor._make_submission_file_text("python -m x", "uid")
    for line in (
        "#SBATCH --partition=gpu",
        "#SBATCH --time=120",
        "#SBATCH --gpus-per-node=1",
        "#SBATCH --cpus-per-task=8",
        "#SBATCH --mem=32GB",
        "#SBATCH --account=abc",
        "#SBATCH --constraint=a100",
        "#SBATCH --job-name=ferkit-ferplus",
        "export OMP_NUM_THREADS=8",
        f"#SBATCH --output={folder}/%j_0_log.out",
    ):
        assert line in text, line
    # local: the time limit and the thread count; GPUs are set per job (its slot)
    local = launch.make_executor(check_options(SubmititOptions(cpus_per_job=2), "cpu"), folder, "x")
    assert local.parameters["timeout_min"] == launch.DEFAULT_TIME_MIN
    assert local.parameters["setup"] == ["export OMP_NUM_THREADS=2 MKL_NUM_THREADS=2"]


def test_a_resubmitted_or_requeued_job_keeps_the_finished_stages():
    job = SweepJob("synthetic", "fear", 1, {"force": True, "executor": "python"})
    assert job.resumed().pipeline_kwargs == {"force": False, "executor": "python"}
    delayed = job.checkpoint()  # what submitit requeues on pre-emption or time-out
    assert isinstance(delayed, submitit.helpers.DelayedSubmission)
    assert delayed.function.pipeline_kwargs["force"] is False and delayed.function.seed == 1


# ------------------------------------------------------------------------------ local jobs
class Probe:
    """A job that reports the GPUs it sees and when it ran."""

    def __call__(self) -> JobOutcome:
        start = time.time()
        time.sleep(0.5)
        return JobOutcome(result=(os.environ.get("CUDA_VISIBLE_DEVICES"), start, time.time()))


def test_each_local_job_sees_only_its_own_gpu(tmp_path, jobs_import_tests):
    """No GPU is needed: the launcher hands out GPU ids through CUDA_VISIBLE_DEVICES."""
    options = check_options(SubmititOptions(gpus_per_job=1, poll_s=0.1), "cuda")
    lines: list[str] = []
    jobs = [(f"probe{i}", Probe()) for i in range(4)]
    outcomes = launch.run_jobs(jobs, options, tmp_path / ".submitit", say=lines.append, gpu_ids=[3, 7])
    seen = [outcomes[f"probe{i}"].result for i in range(4)]
    assert {gpu for gpu, _, _ in seen} == {"3", "7"}
    for gpu in ("3", "7"):  # one job per GPU at a time
        spans = sorted((start, end) for g, start, end in seen if g == gpu)
        assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:])), spans
    assert "2 at a time; GPUs per job: [3], [7]" in lines[0]
    assert any(", GPU 7" in line for line in lines)


class SlowProbe(Probe):
    def __call__(self) -> JobOutcome:
        start = time.time()
        time.sleep(2.0)
        return JobOutcome(result=(os.environ.get("CUDA_VISIBLE_DEVICES"), start, time.time()))


def test_jobs_per_gpu_share_one_gpu_side_by_side_and_no_more(tmp_path, jobs_import_tests):
    options = check_options(SubmititOptions(gpus_per_job=1, jobs_per_gpu=2, poll_s=0.1), "cuda")
    lines: list[str] = []
    jobs = [(f"probe{i}", SlowProbe()) for i in range(4)]
    outcomes = launch.run_jobs(jobs, options, tmp_path / ".submitit", say=lines.append, gpu_ids=[5])
    seen = [outcomes[f"probe{i}"].result for i in range(4)]
    assert {gpu for gpu, _, _ in seen} == {"5"}
    at_once = [sum(start <= t < end for _, start, end in seen) for _, t, _ in seen]
    assert max(at_once) == 2, seen  # two share the GPU; never three
    assert "2 at a time; GPUs per job: [5], [5]" in lines[0]


def test_local_sweep_gives_the_runs_and_table_of_the_inline_sweep(tmp_path, jobs_import_tests, capsys):
    inline_out, local_out = tmp_path / "inline", tmp_path / "local"
    inline = sweep(tmp_path, inline_out)
    assert inline.ok

    common = ["--dataset", "synthetic", "--open", "surprise", "--seeds", "0", "1", "--executor", "python"]
    argv = ["sweep", *common, "--outputs", str(local_out), "--launcher", "submitit", "--cluster", "local"]
    argv += ["--array-parallelism", "2"]
    assert main(argv, stage_table=TABLE, repo_root=tmp_path) == 0
    printed = capsys.readouterr().out
    assert "== sweep finished: 2/2 runs ok" in printed
    assert "synthetic_open-surprise_seed1 -> job " in printed

    names = ["synthetic_open-surprise_seed0", "synthetic_open-surprise_seed1"]
    assert list(inline.runs) == names
    pids = set()
    for name in names:
        run_dir = local_out / name
        assert calls(run_dir) == ["01_a", "02_b", "03_c"]
        assert all(read_stage_record(run_dir, s)["executor"] == "python" for s in ("01_a", "02_b", "03_c"))
        assert read_manifest(run_dir)["stages"]["03_c"]["status"] == "finished"
        pids.add(json.loads((run_dir / "a.json").read_text())["pid"])
    assert os.getpid() not in pids and len(pids) == 2  # one job (process) per run folder
    pd.testing.assert_frame_equal(gathered(local_out), gathered(inline_out))
    # submitit's files sit under the sweep's outputs, beside the run folders, and nowhere else
    assert sorted(p.name for p in local_out.iterdir()) == [".submitit", *names]
    logs = sorted((local_out / ".submitit").glob("*_log.out"))
    assert len(logs) == 2 and "run synthetic_open-surprise_seed0" in "".join(p.read_text() for p in logs)


def test_debug_cluster_resubmits_a_failed_run_which_resumes_and_reports_as_inline(tmp_path, monkeypatch):
    """submitit's debug executor runs the jobs in this process: the resubmission logic, fast."""
    monkeypatch.setattr(runner, "collect_environment", lambda: {"fake": True})  # in-process: patched
    once, broken = "synthetic_open-surprise_seed0", "synthetic_open-surprise_seed1"
    monkeypatch.setenv(FAIL_ENV, f"always:{broken}")
    inline_lines: list[str] = []
    inline = sweep(tmp_path, tmp_path / "inline", inline_lines)
    monkeypatch.setenv(FAIL_ENV, f"stage:{once},always:{broken}")
    lines: list[str] = []
    out = tmp_path / "debug"
    result = sweep(tmp_path, out, lines, launcher="submitit", submitit=SubmititOptions(cluster="debug"), force=True)
    assert json.loads((out / once / "a.json").read_text())["pid"] == os.getpid()
    # the run that failed once: 01 finished in the first attempt and was not run again
    # (--force holds for the first attempt only)
    assert calls(out / once) == ["01_a", "02_b", "02_b", "03_c"]
    assert result.runs[once].skipped == ["01_a"] and result.runs[once].ran == ["02_b", "03_c"]
    resubmitted = f"resubmit {once} (attempt 1/2 failed: stage 02_b failed (RuntimeError: injected failure once"
    assert sum(line.startswith(resubmitted) for line in lines) == 1
    # the run that always fails: tried max_attempts (2) times, reported as the inline sweep does
    assert calls(out / broken) == ["01_a", "02_b", "02_b"]
    assert list(result.failed) == list(inline.failed) == [broken]
    assert list(result.runs) == list(inline.runs) == [once]
    tail = lines[lines.index("== sweep finished: 1/2 runs ok") :]
    inline_tail = inline_lines[inline_lines.index("== sweep finished: 1/2 runs ok") :]
    assert tail == [line.replace(str(tmp_path / "inline"), str(out)) for line in inline_tail]
    assert tail[1] == "failed runs:" and "stage 02_b failed (RuntimeError: injected failure in" in tail[2]


class FakeJob:
    def __init__(self, job_id, fn):
        self.job_id, self.fn = job_id, fn
        self.paths = type("Paths", (), {"stderr": Path(f"/logs/{job_id}_0_log.err")})()

    def done(self):
        return True

    def result(self):
        return self.fn()


class FakeExecutor:
    """Runs each job when its result is asked for; records parameters and job arrays."""

    def __init__(self):
        self.submitted, self.parameters, self.arrays, self.in_batch = [], [], [], False

    def update_parameters(self, **kwargs):
        self.parameters.append(kwargs)

    def submit(self, fn):
        self.submitted.append(fn)
        if self.in_batch:
            self.arrays[-1] += 1
        return FakeJob(str(len(self.submitted)), fn)

    def batch(self):
        executor = self

        class Batch:
            def __enter__(self):
                executor.in_batch = True
                executor.arrays.append(0)

            def __exit__(self, *exc):
                executor.in_batch = False

        return Batch()


class Flaky:
    """Fails (as submitit reports a crashed job, or as a refused run) a number of times."""

    def __init__(self, name, failures, how="crash"):
        self.name, self.failures, self.how = name, failures, how
        self.attempts = 0

    def __call__(self):
        self.attempts += 1
        if self.attempts <= self.failures:
            if self.how == "crash":
                raise submitit.core.utils.UncompletedJobError(
                    "Job 7 (task: 0) with path x\nhas not produced any output"
                )
            return JobOutcome(error=f"{self.name}: bad set-up", retry=False)
        return JobOutcome(result=f"{self.name} ok after {self.attempts}")


def test_resubmission_is_bounded_and_skips_what_cannot_succeed(tmp_path):
    jobs = [("a", Flaky("a", 1)), ("b", Flaky("b", 5)), ("c", Flaky("c", 1, how="refused")), ("d", Flaky("d", 0))]
    options = check_options(SubmititOptions(max_attempts=3, array_parallelism=2, poll_s=0), "cpu")
    executor, lines = FakeExecutor(), []
    outcomes = launch.run_jobs(jobs, options, tmp_path, say=lines.append, executor=executor)
    assert list(outcomes) == ["a", "b", "c", "d"]
    assert outcomes["a"].result == "a ok after 2" and outcomes["d"].result == "d ok after 1"
    assert jobs[1][1].attempts == 3 and "UncompletedJobError: has not produced any output" in outcomes["b"].error
    assert "its log: /logs/" in outcomes["b"].error
    assert jobs[2][1].attempts == 1 and outcomes["c"].error == "c: bad set-up"  # a RunnerError: not retried
    assert len(executor.submitted) == 1 + 1 + 3 + 1 + 1  # a twice, b three times, c and d once
    assert all(p == {"gpus_per_node": 0, "visible_gpus": ()} for p in executor.parameters)
    assert (
        lines.count(
            "resubmit a (attempt 1/3 failed: job 1 failed (UncompletedJobError: has not produced any output); "
            "its log: /logs/1_0_log.err)"
        )
        == 1
    )  # noqa: E501

    # Slurm: one job array for the first wave; resubmissions one by one
    slurm = replace(options, cluster="slurm")
    executor = FakeExecutor()
    launch.run_jobs(
        [("a", Flaky("a", 1)), ("d", Flaky("d", 0))], slurm, tmp_path, say=lambda _: None, executor=executor
    )
    assert executor.arrays == [2] and len(executor.submitted) == 3 and executor.parameters == []


# ------------------------------------------------------------------------------ papermill and real stages
def tiny(seed: int = 0, run_dir: str = "nowhere", message: str = "default") -> None:
    """The function behind the tiny notebook."""


def test_local_jobs_execute_the_notebooks_with_papermill(tmp_path, jobs_import_tests):
    """The default executor in a job: papermill runs the notebook into the run folder."""
    from test_run import _kernel_or_skip, _write_notebook

    _kernel_or_skip()
    _write_notebook(
        tmp_path / "notebooks" / "tiny.ipynb",
        [
            ('seed = 0\nrun_dir = "nowhere"\nmessage = "default"', ["parameters"]),
            ("import pathlib\npathlib.Path(run_dir, 'tiny.txt').write_text(f'{message}|{seed}')", []),
        ],
    )
    table = (Stage("01_tiny", notebook="notebooks/tiny.ipynb", func=f"{__name__}:tiny"),)
    out = tmp_path / "outputs"
    result = run_sweep(
        "synthetic",
        open_classes=["fear"],
        seeds=[3],
        outputs=out,
        extra=["message='from a job'"],
        stage_table=table,
        repo_root=tmp_path,
        launcher="submitit",
        submitit=LOCAL,
        say=lambda _: None,
    )
    assert result.ok, result.failed
    run_dir = out / "synthetic_open-fear_seed3"
    assert (run_dir / "tiny.txt").read_text() == "from a job|3"
    assert (run_dir / "notebooks" / "01_tiny.ipynb").is_file()
    assert read_stage_record(run_dir, "01_tiny")["executor"] == "papermill"


@pytest.mark.slow
def test_real_stages_local_sweep_equals_inline_sweep(tmp_path, jobs_import_tests):
    """Stages 01-03 on a tiny synthetic set, two seeds: every metric identical either way."""
    from ferlib import report
    from ferlib.data.synthetic import SyntheticConfig, write_synthetic

    root = write_synthetic(tmp_path / "synthetic", SyntheticConfig(n_train=210, n_valid=70, n_test=70, seed=0))
    params = ["epochs=1", "input_size=32", "batch_size=16", "progress=False", "arch='smallface'"]
    params += ["detectors=['msp', 'tknn']", f"cache_dir='{tmp_path / 'cache'}'"]
    frames = {}
    for launcher in ("inline", "submitit"):
        out = tmp_path / launcher
        result = run_sweep(
            "synthetic",
            open_classes=["surprise"],
            seeds=[0, 1],
            data_root=root,
            outputs=out,
            stages=["01", "02", "03"],
            executor="python",
            extra=params,
            launcher=launcher,
            submitit=LOCAL if launcher == "submitit" else None,
            say=lambda _: None,
        )
        assert result.ok, result.failed
        frames[launcher] = gathered(out)
        tables = report.collect_results(str(out / "synthetic_*"), out_dir=tmp_path / f"tables-{launcher}")
        assert set(tables) == {f"synthetic_{m}_{p}" for m in ("auroc", "fpr95") for p in ("honest", "reference")}
        frames[f"{launcher}-table"] = tables["synthetic_auroc_honest"]
    pd.testing.assert_frame_equal(frames["submitit"], frames["inline"])
    pd.testing.assert_frame_equal(frames["submitit-table"], frames["inline-table"])


@pytest.mark.slow
def test_local_jobs_that_fail_or_crash_once_are_resubmitted_and_resume(tmp_path, jobs_import_tests, monkeypatch):
    """The same through LocalExecutor subprocesses, and a job whose process dies half-way."""
    out = tmp_path / "outputs"
    stage_fails, crashes = "synthetic_open-surprise_seed0", "synthetic_open-surprise_seed1"
    monkeypatch.setenv(FAIL_ENV, f"stage:{stage_fails},crash:{crashes}")
    lines: list[str] = []
    result = sweep(tmp_path, out, lines, launcher="submitit", submitit=LOCAL, force=True)
    assert result.ok, result.failed
    assert calls(out / stage_fails) == ["01_a", "02_b", "02_b", "03_c"]
    assert calls(out / crashes) == ["01_a", "02_b", "03_c", "03_c"]  # killed in 03: 03 again
    assert result.runs[stage_fails].skipped == ["01_a"] and result.runs[crashes].skipped == ["01_a", "02_b"]
    text = "\n".join(lines)
    assert f"resubmit {stage_fails} (attempt 1/2 failed: stage 02_b failed (RuntimeError: injected" in text
    assert f"resubmit {crashes} (attempt 1/2 failed: job " in text and "_log.err" in text
    assert text.count("attempt 2/2") == 2 and "== sweep finished: 2/2 runs ok" in text
