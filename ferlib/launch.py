"""Sweep launchers: where the runs of ``python -m ferlib.run sweep`` execute.

``--launcher inline`` (the default, :func:`ferlib.run.run_sweep`'s own loop) runs the run folders
one after the other in the calling process. ``--launcher submitit`` hands each run folder to
`submitit <https://github.com/facebookincubator/submitit>`_ as one job, on one of three
``--cluster`` s:

``local``
    :class:`submitit.LocalExecutor`: each job is a subprocess of this machine. Without GPUs,
    ``--array-parallelism`` jobs at a time (default 1). With GPUs (``--gpus-per-job N``, or
    ``--device cuda``, which implies one GPU per job) the GPUs this process sees
    (``CUDA_VISIBLE_DEVICES``, else all of them) are cut into slots of N and one job runs per
    slot, with ``CUDA_VISIBLE_DEVICES`` set to its slot: inside the job, ``cuda`` (``cuda:0``)
    is the slot's first GPU, whichever physical GPU that is.
    ``--jobs-per-gpu N`` puts N jobs on each slot at once: small models (``smallface`` at
    32-48 px) leave most of a large GPU idle, bound by kernel launches and the data path, so
    several runs side by side finish far sooner than one after the other (the H200 sweeps
    of docs/RESULTS.md ran 21 at once).
``slurm``
    :class:`submitit.AutoExecutor` -> ``sbatch``: one job array, ``--array-parallelism`` tasks
    at a time; ``--partition``, ``--time-min``, ``--gpus-per-job``, ``--cpus-per-job``,
    ``--mem-gb`` and any other ``slurm_*`` parameter of submitit's (``--slurm account=abc``,
    ``--slurm qos=high``) go to sbatch. Slurm sets each job's ``CUDA_VISIBLE_DEVICES``.
``debug``
    submitit's debug executor: in this process, one job at a time, as ``local`` would run them
    (a crash other than a failing stage opens pdb, as submitit's debug mode does).

Each job calls :func:`ferlib.run.run_pipeline` for its run folder with the sweep's settings
(``--executor``, ``-p``, ``--stages``...). A job whose stage fails, or that crashes, is
submitted again, up to ``--max-attempts`` attempts in all; the runner skips the stages the
earlier attempt finished, so the new attempt resumes where it broke (``--force`` applies to
the first attempt only). A job that Slurm pre-empts or times out is requeued by submitit's
checkpointing (:meth:`SweepJob.checkpoint`) and resumes the same way. A bad argument or set-up
(:class:`~ferlib.run.RunnerError`) is not retried, nor a stage's user error (bad data, a missing
file: :func:`~ferlib.run.user_error`). When every job has ended, the sweep reports
finished and failed runs as the inline loop does; ``python -m ferlib.run tables`` gathers them.

Submitit's pickles and logs go to ``<outputs>/.submitit/`` (``<job id>_0_log.out`` and
``<job id>_0_log.err``: what the run printed), next to the run folders; nothing is written
elsewhere.

submitit is imported only when this launcher is chosen; without it the sweep stops, before any
work, with the ``pip`` command that installs it.
"""

from __future__ import annotations

import ast
import logging
import os
import shutil
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from ferlib.run import RunnerError, StageFailed, configure_logging, run_pipeline, user_error

CLUSTERS = ("local", "slurm", "debug")
#: where submitit's job folders go, under the sweep's outputs folder
SUBMITIT_DIR = ".submitit"
INSTALL_HINT = "pip install 'submitit>=1.5'"
DEFAULT_TIME_MIN = 720
DEFAULT_MAX_ATTEMPTS = 2

#: sbatch parameters that a launcher option sets (``--slurm`` may not set them too)
_OPTION_KEYS = {
    "partition": "--partition",
    "time": "--time-min",
    "timeout_min": "--time-min",
    "gpus_per_node": "--gpus-per-job",
    "num_gpus": "--gpus-per-job",
    "cpus_per_task": "--cpus-per-job",
    "mem": "--mem-gb",
    "mem_gb": "--mem-gb",
    "array_parallelism": "--array-parallelism",
    "job_name": "the launcher (it names the jobs)",
}


def import_submitit():
    """The submitit module, or a :class:`RunnerError` naming the command that installs it."""
    try:
        import submitit
    except ImportError as exc:
        raise RunnerError(
            f"--launcher submitit needs the submitit package ({exc}); install it with `{INSTALL_HINT}` "
            "(a dependency in pyproject.toml: `make venv` installs it), or use --launcher inline"
        ) from None
    return submitit


@dataclass(frozen=True)
class SubmititOptions:
    """How the submitit launcher runs the jobs (the sweep's options of the same names).

    ``gpus_per_job``: None = 1 when the device is ``cuda``, else 0. ``array_parallelism``:
    jobs at a time (Slurm: the array's ``%N``; local: default one per GPU slot, or 1 without
    GPUs). ``slurm``: further sbatch parameters, by submitit's names with or without the
    ``slurm_`` prefix. ``poll_s``: None = 0.5 s (local, debug) or 15 s (slurm).
    ``jobs_per_gpu``: local, with GPUs: jobs sharing each GPU slot at once (default 1).
    """

    cluster: str = "local"
    gpus_per_job: int | None = None
    cpus_per_job: int | None = None
    mem_gb: float | None = None
    time_min: int = DEFAULT_TIME_MIN
    partition: str | None = None
    array_parallelism: int | None = None
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    slurm: Mapping[str, Any] = field(default_factory=dict)
    poll_s: float | None = None
    jobs_per_gpu: int = 1


def parse_slurm_items(items: Iterable[str] | Mapping[str, Any] | None) -> dict[str, Any]:
    """``["account=abc", "slurm_qos=high"]`` -> ``{"account": "abc", "qos": "high"}`` (values
    parsed as Python literals when they are one, as ``-p`` values)."""
    if items is None:
        return {}
    pairs = items.items() if isinstance(items, Mapping) else (_split_item(item) for item in items)
    out: dict[str, Any] = {}
    for key, value in pairs:
        key = key.removeprefix("slurm_")
        if key in out:
            raise RunnerError(f"--slurm {key} given twice")
        out[key] = value
    return out


def _split_item(text: str) -> tuple[str, Any]:
    key, sep, raw = str(text).partition("=")
    key = key.strip()
    if not sep or not key.isidentifier():
        raise RunnerError(f"--slurm expects KEY=VALUE (a submitit slurm parameter), got {text!r}")
    try:
        value = ast.literal_eval(raw)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        value = raw
    return key, list(value) if isinstance(value, tuple) else value


def _positive(value: Any, option: str, *, zero: bool = False) -> None:
    if value is None:
        return
    low = 0 if zero else 1
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < low:
        raise RunnerError(f"{option} must be a number >= {low}, got {value!r}")


def _cuda_index(device: str) -> int | None:
    """``cuda`` -> 0, ``cuda:2`` -> 2, anything else -> None."""
    text = str(device).strip().lower()
    if not text.startswith("cuda"):
        return None
    _, _, index = text.partition(":")
    try:
        return int(index) if index else 0
    except ValueError:
        raise RunnerError(f"--device {device!r}: expected cuda or cuda:N") from None


def check_options(options: SubmititOptions | None, device: str = "cpu") -> SubmititOptions:
    """``options`` checked, with ``gpus_per_job`` and the ``slurm`` keys resolved; a
    :class:`RunnerError` (before any work) for a bad value, a missing submitit, an sbatch
    parameter submitit does not know, or a device the jobs will not see."""
    options = options if options is not None else SubmititOptions()
    if options.cluster not in CLUSTERS:
        raise RunnerError(f"--cluster must be one of {', '.join(CLUSTERS)}, got {options.cluster!r}")
    submitit = import_submitit()
    _positive(options.time_min, "--time-min")
    _positive(options.gpus_per_job, "--gpus-per-job", zero=True)
    _positive(options.cpus_per_job, "--cpus-per-job")
    _positive(options.mem_gb, "--mem-gb")
    _positive(options.array_parallelism, "--array-parallelism")
    _positive(options.max_attempts, "--max-attempts")
    _positive(options.jobs_per_gpu, "--jobs-per-gpu")
    for name in ("gpus_per_job", "cpus_per_job", "array_parallelism", "max_attempts", "time_min", "jobs_per_gpu"):
        value = getattr(options, name)
        if value is not None and not isinstance(value, int):
            raise RunnerError(f"--{name.replace('_', '-')} must be an integer, got {value!r}")

    slurm = parse_slurm_items(options.slurm)
    if options.cluster != "slurm":
        given = [
            opt
            for opt, value in (("--partition", options.partition), ("--mem-gb", options.mem_gb), ("--slurm", slurm))
            if value
        ]
        if given:
            raise RunnerError(f"{', '.join(given)} apply to --cluster slurm only (the cluster is {options.cluster})")
    valid = set(submitit.SlurmExecutor._valid_parameters())
    for key in slurm:
        if key in _OPTION_KEYS:
            raise RunnerError(f"--slurm {key}=...: set it with {_OPTION_KEYS[key]}")
        if key not in valid:
            raise RunnerError(
                f"--slurm {key}=...: submitit's Slurm executor has no parameter {key!r}; it has: "
                + ", ".join(sorted(valid - set(_OPTION_KEYS)))
            )

    index = _cuda_index(device)
    gpus = options.gpus_per_job
    if gpus is None:
        gpus = 1 if index is not None else 0
    if options.jobs_per_gpu != 1 and (options.cluster != "local" or gpus == 0):
        where = f"--cluster {options.cluster}" if options.cluster != "local" else "jobs without a GPU"
        raise RunnerError(
            f"--jobs-per-gpu applies to --cluster local with GPUs (--device cuda), not to {where}; "
            "without GPUs use --array-parallelism"
        )
    if index is not None and options.cluster != "debug":
        if gpus == 0:
            raise RunnerError(f"--device {device} with --gpus-per-job 0: the jobs would see no GPU")
        if index >= gpus:
            raise RunnerError(
                f"--device {device}: each job sees only its own {gpus} GPU(s), as cuda:0..cuda:{gpus - 1}; "
                "use --device cuda (the launcher picks the GPU of each job)"
            )
    if options.cluster == "slurm" and shutil.which("sbatch") is None:
        raise RunnerError("--cluster slurm: sbatch not found; start the sweep on a Slurm login node")
    return replace(options, gpus_per_job=gpus, slurm=slurm)


def thread_setup(cpus_per_job: int | None) -> list[str]:
    """Shell lines run before each job: the job's CPU share as its thread count."""
    return [] if not cpus_per_job else [f"export OMP_NUM_THREADS={cpus_per_job} MKL_NUM_THREADS={cpus_per_job}"]


def slurm_parameters(options: SubmititOptions, name: str) -> dict[str, Any]:
    """The :meth:`submitit.AutoExecutor.update_parameters` keywords of a Slurm sweep."""
    params: dict[str, Any] = {
        "name": name,
        "timeout_min": options.time_min,
        "gpus_per_node": options.gpus_per_job or None,
        "cpus_per_task": options.cpus_per_job,
        "mem_gb": options.mem_gb,
        "slurm_partition": options.partition,
        "slurm_array_parallelism": options.array_parallelism,
    }
    extra = {f"slurm_{k}": v for k, v in options.slurm.items()}
    setup = thread_setup(options.cpus_per_job)
    if setup:
        extra["slurm_setup"] = setup + list(extra.get("slurm_setup") or [])
    return {k: v for k, v in {**params, **extra}.items() if v is not None}


def visible_gpu_ids(environ: Mapping[str, str] | None = None, count: int | None = None) -> list[int]:
    """The GPUs this process may hand out: ``CUDA_VISIBLE_DEVICES`` when set, else ``0..count-1``
    (``count``: torch's device count)."""
    environ = os.environ if environ is None else environ
    visible = environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        items = [item.strip() for item in visible.split(",") if item.strip()]
        try:
            return [int(item) for item in items]
        except ValueError:
            raise RunnerError(
                f"CUDA_VISIBLE_DEVICES={visible!r}: the local launcher needs GPU indices, not UUIDs"
            ) from None
    if count is None:
        import torch

        count = torch.cuda.device_count()
    return list(range(count))


def local_slots(
    gpus_per_job: int, parallelism: int | None, gpu_ids: Sequence[int], jobs_per_gpu: int = 1
) -> list[tuple[int, ...]]:
    """The GPU ids of each job that may run at once on this machine (``()``: CPU only).

    ``jobs_per_gpu``: each GPU slot is handed out that many times, round-robin over the slots
    so that a capped sweep (``parallelism``) still spreads its jobs over every GPU."""
    if not gpus_per_job:
        return [()] * (parallelism or 1)
    n = len(gpu_ids) // gpus_per_job
    if n == 0:
        raise RunnerError(
            f"each job needs {gpus_per_job} GPU(s) but this machine shows {len(gpu_ids)} "
            f"({', '.join(map(str, gpu_ids)) or 'none'}); use --device cpu, fewer --gpus-per-job, "
            "or --cluster slurm"
        )
    slots = [tuple(gpu_ids[i * gpus_per_job : (i + 1) * gpus_per_job]) for i in range(n)] * jobs_per_gpu
    return slots[:parallelism] if parallelism else slots


# --------------------------------------------------------------------------------------------
# jobs


@dataclass
class JobOutcome:
    """What a job hands back: its result, or why it failed and whether another attempt may help."""

    result: Any = None
    error: str | None = None
    retry: bool = True


@dataclass
class SweepJob:
    """One run folder of a sweep, as a submitit job (picklable: names, paths, options)."""

    dataset: str
    open_class: str | None
    seed: int
    pipeline_kwargs: dict[str, Any]

    def __call__(self) -> JobOutcome:
        configure_logging()
        try:
            result = run_pipeline(self.dataset, open_class=self.open_class, seed=self.seed, **self.pipeline_kwargs)
        except StageFailed as exc:  # a user error (bad data, a missing file) would fail the same way again
            return JobOutcome(error=str(exc), retry=user_error(exc) is None)
        except RunnerError as exc:  # bad arguments or set-up: the same again would fail the same way
            return JobOutcome(error=str(exc), retry=False)
        return JobOutcome(result=result)

    def resumed(self) -> SweepJob:
        """The next attempt: finished stages are kept (no ``force``)."""
        return replace(self, pipeline_kwargs={**self.pipeline_kwargs, "force": False})

    def checkpoint(self, *args: Any, **kwargs: Any) -> Any:
        """submitit calls this when Slurm pre-empts or times the job out: requeue the resumed job."""
        import submitit

        return submitit.helpers.DelayedSubmission(self.resumed())


@dataclass
class _Task:
    name: str
    job: Callable[[], JobOutcome]
    attempt: int = 0


@dataclass
class _Running:
    task: _Task
    job: Any  # a submitit Job
    slot: tuple[int, ...] | None


def _short(exc: BaseException) -> str:
    """The last line of a job's traceback (submitit's errors carry the whole of it)."""
    head = str(exc).split("You can check full logs")[0]
    lines = [line.strip() for line in head.splitlines() if line.strip() and set(line.strip()) != {"-"}]
    return f"{type(exc).__name__}: {lines[-1] if lines else ''}".strip()


def _finished(job: Any) -> bool:
    try:
        return bool(job.done())
    except Exception:  # noqa: BLE001 - the debug executor raises here; result() says what happened
        return True


def _collect(job: Any) -> JobOutcome:
    try:
        outcome = job.result()
    except Exception as exc:  # noqa: BLE001 - crashed, killed, or timed out for good
        where = getattr(getattr(job, "paths", None), "stderr", None)
        return JobOutcome(error=f"job {job.job_id} failed ({_short(exc)}); its log: {where}", retry=True)
    if not all(hasattr(outcome, a) for a in ("result", "error", "retry")):  # a plain return value
        return JobOutcome(result=outcome)
    return outcome


def make_executor(options: SubmititOptions, folder: Path, name: str) -> Any:
    """The submitit executor of ``options.cluster``; its files go to ``folder`` (named by job id)."""
    submitit = import_submitit()
    jobs_folder = folder
    if options.cluster == "local":
        executor = submitit.LocalExecutor(folder=jobs_folder)
        executor.update_parameters(timeout_min=options.time_min, setup=thread_setup(options.cpus_per_job))
    elif options.cluster == "slurm":
        executor = submitit.AutoExecutor(folder=jobs_folder, cluster="slurm")
        executor.update_parameters(**slurm_parameters(options, name))
    else:
        executor = submitit.AutoExecutor(folder=jobs_folder, cluster="debug")
    return executor


def run_jobs(
    jobs: Sequence[tuple[str, Callable[[], JobOutcome]]],
    options: SubmititOptions,
    folder: str | os.PathLike,
    *,
    name: str = "ferkit",
    say: Callable[[str], None] = print,
    gpu_ids: Sequence[int] | None = None,
    executor: Any = None,
) -> dict[str, JobOutcome]:
    """Submit every ``(name, job)``, resubmit the failed ones (``options.max_attempts`` attempts
    in all), wait for the last, and return each name's final outcome (in ``jobs``' order).

    ``options`` as :func:`check_options` returns them. ``gpu_ids``: the GPUs a local sweep may
    hand out (default :func:`visible_gpu_ids`). ``executor``: a ready submitit executor (tests).
    """
    folder = Path(folder)
    if options.cluster == "local":
        if options.gpus_per_job and gpu_ids is None:
            gpu_ids = visible_gpu_ids()
        slots: list[tuple[int, ...]] | None = local_slots(
            options.gpus_per_job or 0, options.array_parallelism, gpu_ids, options.jobs_per_gpu
        )
    elif options.cluster == "debug":
        slots = [()]
    else:
        slots = None  # Slurm queues them (the array's parallelism)
    executor = executor if executor is not None else make_executor(options, folder, name)
    poll = options.poll_s if options.poll_s is not None else (15.0 if options.cluster == "slurm" else 0.5)
    total = len(jobs)
    order = {job_name: i + 1 for i, (job_name, _) in enumerate(jobs)}
    at_once = "as Slurm schedules them" if slots is None else f"{len(slots)} at a time"
    gpus = f"; GPUs per job: {', '.join(str(list(s)) for s in slots)}" if slots and any(slots) else ""
    say(f"== sweep: {total} jobs through submitit ({options.cluster}, {at_once}{gpus}); logs in {folder}")

    queue = deque(_Task(job_name, job) for job_name, job in jobs)
    free = list(slots) if slots is not None else None
    running: list[_Running] = []
    outcomes: dict[str, JobOutcome] = {}

    def submit(wave: list[tuple[_Task, tuple[int, ...] | None]]) -> None:
        if options.cluster == "slurm" and len(wave) > 1:
            with executor.batch():  # one job array
                handles = [executor.submit(task.job) for task, _ in wave]
        else:
            handles = []
            for task, slot in wave:
                if options.cluster == "local":  # this job's GPUs become its CUDA_VISIBLE_DEVICES
                    executor.update_parameters(gpus_per_node=len(slot or ()), visible_gpus=tuple(slot or ()))
                handles.append(executor.submit(task.job))
        for (task, slot), handle in zip(wave, handles):
            task.attempt += 1
            running.append(_Running(task, handle, slot))
            where = f", GPU {','.join(map(str, slot))}" if slot else ""
            tries = f", attempt {task.attempt}/{options.max_attempts}" if task.attempt > 1 else ""
            say(f"== sweep {order[task.name]}/{total}: {task.name} -> job {handle.job_id}{where}{tries}")

    try:
        while queue or running:
            wave = []
            while queue and (free is None or free):
                wave.append((queue.popleft(), free.pop(0) if free is not None else None))
            if wave:
                submit(wave)
            done = [entry for entry in running if _finished(entry.job)]
            if not done:
                time.sleep(poll)
                continue
            for entry in done:
                running.remove(entry)
                if free is not None:
                    free.append(entry.slot)
                    free.sort()
                task = entry.task
                outcome = _collect(entry.job)
                if outcome.error is None:
                    outcomes[task.name] = outcome
                    say(f"done {task.name} (job {entry.job.job_id})")
                elif outcome.retry and task.attempt < options.max_attempts:
                    say(f"resubmit {task.name} (attempt {task.attempt}/{options.max_attempts} failed: {outcome.error})")
                    if hasattr(task.job, "resumed"):
                        task.job = task.job.resumed()
                    queue.appendleft(task)
                else:
                    outcomes[task.name] = outcome
    except BaseException:
        if options.cluster == "slurm":
            ids = " ".join(str(entry.job.job_id) for entry in running)
            say(f"the launcher stopped; Slurm jobs still queued or running: {ids or 'none'} (scancel to stop them)")
        else:
            for entry in running:
                try:
                    entry.job.cancel(check=False)
                except Exception:  # noqa: BLE001 - best effort on the way out
                    logging.getLogger("ferlib.launch").debug("cannot cancel %s", entry.job.job_id)
        raise
    return {job_name: outcomes[job_name] for job_name, _ in jobs}


def launch_sweep(
    dataset: str,
    runs: Sequence[tuple[str, str | None, int]],
    pipeline_kwargs: Mapping[str, Any],
    options: SubmititOptions,
    *,
    say: Callable[[str], None] = print,
    gpu_ids: Sequence[int] | None = None,
) -> dict[str, JobOutcome]:
    """Run ``runs`` (``(run name, open class, seed)``) as submitit jobs; returns each run's
    outcome: its :class:`~ferlib.run.PipelineResult`, or the error of its last attempt."""
    kwargs = dict(pipeline_kwargs)
    repo_root = Path(kwargs.get("repo_root", ".")).resolve()
    outputs = Path(kwargs["outputs"]) if kwargs.get("outputs") is not None else repo_root / "outputs"
    kwargs["outputs"] = str(outputs.resolve())  # a job may start in another working directory
    if kwargs.get("data_root") is not None:
        kwargs["data_root"] = str(Path(kwargs["data_root"]).resolve())
    kwargs["repo_root"] = str(repo_root)
    jobs = [(name, SweepJob(dataset, open_class, seed, kwargs)) for name, open_class, seed in runs]
    folder = Path(kwargs["outputs"]) / SUBMITIT_DIR
    return run_jobs(jobs, options, folder, name=f"ferkit-{dataset}", say=say, gpu_ids=gpu_ids)
