"""Papermill driver: run the notebooks as a pipeline, a sweep, or one stage.

    python -m ferlib.run pipeline --dataset synthetic --run demo
    python -m ferlib.run pipeline --dataset ferplus --data-root ../shared/data/ferplus \\
        --open-class fear --seed 1 --device cuda:0 -p epochs=40
    python -m ferlib.run sweep --dataset ferplus --data-root ... --open all --seeds 0 1 2
    python -m ferlib.run sweep ... --device cuda --launcher submitit --cluster local      # one job per GPU
    python -m ferlib.run sweep ... --device cuda --launcher submitit --cluster slurm --partition gpu
    python -m ferlib.run stage 03 --dataset synthetic --run demo --force
    python -m ferlib.run stage 05 --dataset synthetic --run noisy -p "seeds=[0]" -p epochs=3

Stage 05 (the noisy-label benchmark) is standalone: it reads no other stage's files, so
``pipeline`` runs it only when named (``stage 05`` or ``--stages 05``) and its key does not
depend on stages 01-04.

Each stage is a notebook (executed with papermill into ``<run_dir>/notebooks/``) backed by one
function (``--executor python`` calls that function directly, for headless machines without
Jupyter). The function's signature is the stage's parameter contract: the notebook's parameters
cell is generated from it (``tools/make_notebooks.py``), and the runner gives each stage only
the keys it accepts among ``dataset``, ``data_root``, ``open_class``, ``seed``, ``device``,
``run_dir`` and the ``-p key=value`` options. A ``-p`` key that no stage of the table accepts is
refused (with the nearest name); a key of a stage this call does not run is noted and left out, so
one full command line serves ``--stages 01`` too. Every selected stage's values are validated
(``ferlib.params``) before any work.

Pre-flight, before a kernel starts or a run folder is written: the data set's folder exists (every
data set but ``synthetic``, which is generated), the device is there (``cuda:N``, ``mps``), the
output folders are writable and the papermill kernel is installed. Expected user errors (bad
options, bad data, missing files) end the CLI with one ``ferlib.run: error: ...`` line and exit
status 2; Ctrl-C marks the stage ``interrupted`` in the manifest and exits 130; every
``pipeline``/``stage``/``sweep`` call ends with a short summary of its runs.

Resuming: after a stage succeeds the runner writes ``<run_dir>/stages/<stage>.json`` with the
values the stage applied (defaults included) and the stage's key: a hash of those values
(``device``, ``run_dir`` and ``progress`` left out: they do not change results) and of the
upstream stage's record. A later call skips a stage whose key is unchanged; so changing a
parameter of stage 03 re-runs 03 and what follows, never 01, and re-running 01 (``--force``)
makes 02-04 stale. A stage killed half-way has no record and runs again (it resumes from its
own checkpoints).

Sweeps: ``--launcher inline`` (default) runs the run folders one after the other in this
process; ``--launcher submitit`` runs each as a submitit job on this machine (``--cluster
local``, one job per GPU) or on Slurm (``--cluster slurm``), resubmitting a failed job, which
resumes from its finished stages (:mod:`ferlib.launch`).
"""

from __future__ import annotations

import argparse
import ast
import csv
import difflib
import hashlib
import importlib
import json
import logging
import math
import os
import re
import signal
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ferlib.io import read_json, write_json
from ferlib.manifest import (
    REPO_ROOT,
    collect_environment,
    modify_manifest,
    set_manifest,
    update_manifest,
)
from ferlib.params import UNHASHED_PARAMS, ParameterError, accepted, applied_arguments, validate_arguments


@dataclass(frozen=True)
class Stage:
    """One step of the pipeline: a notebook and the function behind it.

    ``notebook`` is relative to the repository root (absolute paths are kept as they are);
    ``func`` is ``"module:function"`` (or a callable, for tests).

    ``standalone``: the stage reads no other stage's files (stage 05, the noisy-label
    benchmark, trains its own models). ``pipeline`` without ``--stages`` leaves it out (it
    runs when named: ``stage 05``, ``--stages 05``), its key covers its own parameters only,
    not the record of the stage before it, and it is no stage's upstream.
    """

    name: str
    notebook: str | os.PathLike
    func: str | Callable[..., Any]
    standalone: bool = False

    def notebook_path(self, repo_root: str | os.PathLike = REPO_ROOT) -> Path:
        return Path(repo_root) / self.notebook

    def function(self) -> Callable[..., Any]:
        if callable(self.func):
            return self.func
        module_name, _, attr = str(self.func).partition(":")
        if not attr:
            raise RunnerError(f"stage {self.name}: func must be 'module:function', got {self.func!r}")
        try:
            module = importlib.import_module(module_name)
            return getattr(module, attr)
        except (ImportError, AttributeError) as exc:
            raise RunnerError(f"stage {self.name}: cannot import {self.func} ({exc})") from exc

    @property
    def func_name(self) -> str:
        if callable(self.func):
            return f"{self.func.__module__}:{self.func.__qualname__}"
        return str(self.func)

    def accepts(self, key: str) -> bool:
        """Whether the stage function has a parameter ``key`` (its signature is the contract)."""
        return accepted(self.function(), key)

    def given(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """The keys of ``params`` this stage accepts: what the executor passes it."""
        return {k: v for k, v in params.items() if self.accepts(k)}

    def applied(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """Every parameter's value when the stage runs with ``params`` (defaults filled in).

        ``data_options`` shows the data set's own defaults too (an open-set FERPlus run drops
        duplicate evaluation rows: ``{'dedupe': True}``,
        :func:`ferlib.data.prepare.effective_data_options`), so the stage record says so and a
        run with them never shares a key with a run without."""
        applied = applied_arguments(self.function(), params)
        options = applied.get("data_options")
        if "dataset" in applied and "data_options" in applied and (options is None or isinstance(options, Mapping)):
            from ferlib.data.prepare import effective_data_options

            applied["data_options"] = effective_data_options(applied["dataset"], applied.get("open_class"), options)
        return applied


#: The pipeline, in order. Names are also the executed notebooks' and records' file names.
STAGES: tuple[Stage, ...] = (
    Stage("01_train_close_set", notebook="notebooks/01_train_close_set.ipynb", func="ferlib.stages:train_close_set"),
    Stage(
        "02_predict_pseudo_labels",
        notebook="notebooks/02_predict_pseudo_labels.ipynb",
        func="ferlib.stages:predict_pseudo_labels",
    ),
    Stage("03_detect_open_set", notebook="notebooks/03_detect_open_set.ipynb", func="ferlib.stages:detect_open_set"),
    Stage("04_visualise", notebook="notebooks/04_visualise.ipynb", func="ferlib.report:visualise"),
    Stage(
        "05_noisy_labels",
        notebook="notebooks/05_noisy_labels.ipynb",
        func="ferlib.noisy:noisy_label_benchmark",
        standalone=True,
    ),
)

#: Parameters set by the runner's options (``-p`` may not set them); a stage receives those
#: its function accepts.
CORE_PARAMS = ("dataset", "data_root", "open_class", "seed", "device", "run_dir")
EXECUTORS = ("papermill", "python")
#: where a sweep's runs execute: this process, one after the other, or submitit jobs (ferlib.launch)
LAUNCHERS = ("inline", "submitit")
DEFAULT_OPEN_CLASS = "surprise"
DEFAULT_KERNEL = "ferkit"
KERNEL_ENV = "FERKIT_KERNEL"

log = logging.getLogger("ferlib.run")


_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")


class RunnerError(RuntimeError):
    """Bad arguments or set-up (unknown stage, missing kernel or notebook...)."""


class StageInterrupted(KeyboardInterrupt):
    """Ctrl-C during a stage: a KeyboardInterrupt (so callers stop as before) that names the
    stage and run, which the manifest already marks ``interrupted``."""

    def __init__(self, stage: Stage, run_dir: Path):
        self.stage = stage
        self.run_dir = run_dir
        super().__init__(f"interrupted: {stage.name}; run again to resume")


class StageFailed(RuntimeError):
    """A stage raised; the message says where to look."""

    def __init__(self, stage: Stage, run_dir: Path, notebook: Path | None, cause: BaseException):
        self.stage = stage
        self.run_dir = run_dir
        self.notebook = notebook
        self.cause = cause
        where = (
            f"open the executed notebook {notebook} to see the failing cell"
            if notebook is not None
            else f"the traceback above comes from {stage.func_name}"
        )
        if getattr(cause, "ename", None):  # papermill: the exception raised in the notebook
            what = f"{cause.ename}: {getattr(cause, 'evalue', '')}"
        else:
            lines = _ANSI.sub("", str(cause)).strip().splitlines()
            what = f"{type(cause).__name__}: {lines[-1] if lines else ''}"
        super().__init__(f"stage {stage.name} failed ({what.strip()}); {where}")


def _user_error_types() -> tuple[type[BaseException], ...]:
    """Errors a user fixes by changing the command line or the data, not the code: bad data,
    a bad parameter, a missing file, a bad option of the runner."""
    from ferlib.data.errors import DataError
    from ferlib.params import ParameterError

    return (DataError, ParameterError, FileNotFoundError, RunnerError)


def _subclass_names(types_: Iterable[type]) -> set[str]:
    names: set[str] = set()
    pending = list(types_)
    while pending:
        kind = pending.pop()
        names.add(kind.__name__)
        pending.extend(kind.__subclasses__())
    return names


def user_error(exc: BaseException) -> str | None:
    """The one line to show for an expected user error, else None (an unexpected error keeps
    its traceback).

    A :class:`StageFailed` is unwrapped to its root cause (``cause``, then ``__cause__``); a
    papermill error carries only the name of the exception raised in the notebook (``ename``)."""
    stage = exc.stage.name if isinstance(exc, StageFailed) else None
    root = exc.cause if isinstance(exc, StageFailed) else exc
    while root.__cause__ is not None:
        root = root.__cause__
    kinds = _user_error_types()
    if getattr(root, "ename", None):
        if root.ename not in _subclass_names(kinds):
            return None
        message = _ANSI.sub("", str(getattr(root, "evalue", ""))).strip()
    elif isinstance(root, kinds):
        message = str(root)
    else:
        return None
    return f"stage {stage}: {message}" if stage else message


def interrupted_stage(exc: BaseException) -> bool:
    """Whether ``exc`` (raised while a stage ran) means Ctrl-C: in this process, or inside the
    papermill kernel (the notebook's cell raised KeyboardInterrupt)."""
    return isinstance(exc, KeyboardInterrupt) or getattr(exc, "ename", None) == "KeyboardInterrupt"


# --------------------------------------------------------------------------------------------
# parameters


def normalise_open_class(value: Any) -> str | None:
    """``"none"``/``None`` -> ``None``; any emotion name or alias -> its canonical label."""
    from ferlib.emotions import parse_emotion

    if value is None or str(value).strip().lower() in ("", "none", "null"):
        return None
    return parse_emotion(value).label


def expand_open_classes(values: Iterable[str]) -> list[str | None]:
    """Sweep ``--open`` values: ``all`` = the seven basic emotions; duplicates dropped."""
    from ferlib.emotions import BASIC7

    out: list[str | None] = []
    for value in values:
        items = [e.label for e in BASIC7] if str(value).lower() == "all" else [normalise_open_class(value)]
        for item in items:
            if item not in out:
                out.append(item)
    return out


def default_run_name(dataset: str, open_class: str | None, seed: int) -> str:
    return f"{dataset}_open-{open_class or 'none'}_seed{seed}"


def parse_param(text: str) -> tuple[str, Any]:
    """``"lr=0.1"`` -> ``("lr", 0.1)``; values go through ``ast.literal_eval``, else stay str."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key.isidentifier():
        raise RunnerError(f"-p expects key=value with a Python identifier as key, got {text!r}")
    try:
        value = ast.literal_eval(raw)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        value = raw
    if isinstance(value, (tuple, set, frozenset)):
        value = list(value)  # papermill and JSON know lists
    return key, value


#: the runner option that sets each of ``CORE_PARAMS``: (pipeline and stage, sweep)
CORE_OPTIONS: dict[str, tuple[str, str]] = {
    "dataset": ("--dataset", "--dataset"),
    "data_root": ("--data-root", "--data-root"),
    "open_class": ("--open-class", "--open"),
    "seed": ("--seed", "--seeds"),
    "device": ("--device", "--device"),
    "run_dir": ("--run and --outputs", "--outputs"),
}


def core_option(key: str, *, sweep: bool = False) -> str:
    """The option of ``pipeline``/``stage`` (or ``sweep``) that sets runner parameter ``key``."""
    return CORE_OPTIONS[key][1 if sweep else 0]


def parse_params(items: Iterable[str] | Mapping[str, Any] | None, *, sweep: bool = False) -> dict[str, Any]:
    """The ``-p`` options as a dict; a runner parameter (``seed``...) is refused, naming the
    option that sets it in this command (``sweep``: ``--open``, ``--seeds``)."""
    if items is None:
        return {}
    if isinstance(items, Mapping):
        extra = dict(items)
    else:
        extra = dict(parse_param(item) for item in items)
    clash = [key for key in CORE_PARAMS if key in extra]
    if clash:
        raise RunnerError(
            "-p cannot set "
            + "; ".join(f"{key}: use {core_option(key, sweep=sweep)}" for key in clash)
            + " (an option of the runner)"
        )
    return extra


def _digest(payload: Any) -> str:
    text = json.dumps(payload, sort_keys=True, default=str)  # tuples and lists hash alike
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def params_hash(params: Mapping[str, Any]) -> str:
    """Stable hash of the parameters that decide a stage's result (``UNHASHED_PARAMS`` left out:
    where a run lives or runs, and progress bars, change no result)."""
    return _digest({k: v for k, v in params.items() if k not in UNHASHED_PARAMS})


def stage_key(stage: Stage | str, applied: Mapping[str, Any], upstream: Mapping[str, Any] | None) -> str:
    """The key of one execution's result: the stage, the values it applied (hashed as in
    :func:`params_hash`) and the upstream stage's record (its key and when it finished, so a
    re-run upstream, even with the same parameters, makes this stage stale)."""
    name = stage.name if isinstance(stage, Stage) else stage
    token = (
        None
        if upstream is None
        else {"stage": upstream.get("stage"), "key": upstream.get("key"), "finished_ns": upstream.get("finished_ns")}
    )
    return _digest({"stage": name, "params": params_hash(applied), "upstream": token})


def _unknown_key_message(key: str, stage_table: Sequence[Stage], *, sweep: bool) -> str:
    """Why ``-p key`` is refused, with the nearest accepted name (a runner parameter named as
    its option)."""
    names = list(dict.fromkeys(name for stage in stage_table for name in stage.applied({})))
    close = difflib.get_close_matches(key, names, n=1)
    if not close:
        return f"-p {key}: no stage has such a parameter"
    match = close[0]
    hint = core_option(match, sweep=sweep) if match in CORE_PARAMS else f"-p {match}=..."
    return f"-p {key}: no stage has such a parameter; did you mean {hint}?"


def check_parameters(
    stages: Sequence[Stage],
    params: Mapping[str, Any],
    extra_keys: Iterable[str],
    repo_root: str | os.PathLike = REPO_ROOT,
    *,
    stage_table: Sequence[Stage] | None = None,
    sweep: bool = False,
) -> list[str]:
    """Refuse, before any work, a ``-p`` key that no stage of ``stage_table`` accepts and any
    value a stage would reject (:func:`ferlib.params.validate_arguments`); return the keys that
    only stages outside ``stages`` (the selected ones) accept.

    Those keys are validated against the stages that take them, so one full command line can be
    reused for a single stage (``--stages 01`` with ``-p detectors=...``); the caller leaves them
    out of the call. ``stage_table`` defaults to ``stages``. Values are checked in ``repo_root``,
    the working directory the stages run in (relative paths such as ``pretrained`` are resolved
    there). Raises :class:`RunnerError`.
    """
    table = list(stage_table) if stage_table is not None else list(stages)
    keys = list(extra_keys)
    unknown = [key for key in keys if not any(stage.accepts(key) for stage in table)]
    if unknown:
        lines = [_unknown_key_message(key, table, sweep=sweep) for key in unknown]
        if not any("did you mean" in line for line in lines):  # no near name: list what there is
            lines.append("the stages accept:")
            lines.extend(f"  {stage.name}: {', '.join(stage.applied({}))}" for stage in table)
        raise RunnerError("\n".join(lines))
    unused = [key for key in keys if not any(stage.accepts(key) for stage in stages)]
    # each left-out key is checked against the stages a full pipeline gives it to; a standalone
    # stage (05) only for keys no pipeline stage takes (its `detectors` are another list)
    others: list[Stage] = []
    for key in unused:
        takers = [s for s in table if s not in stages and s.accepts(key)]
        takers = [s for s in takers if not s.standalone] or takers
        others.extend(s for s in takers if s not in others)
    with _chdir(Path(repo_root)):
        for stage in [*stages, *others]:
            try:
                validate_arguments(stage.function(), stage.applied(params), where=f"stage {stage.name}")
            except ParameterError as exc:
                raise RunnerError(str(exc)) from None
    return unused


def unused_note(unused: Sequence[str], stage_table: Sequence[Stage]) -> str:
    """The note that says which ``-p`` keys this call leaves out, and which stages take them."""
    takers = [s.name for s in stage_table if any(s.accepts(key) for key in unused)]
    return f"note: -p {', '.join(unused)} not used in this call (a parameter of {', '.join(takers)})"


def select_stages(stage_table: Sequence[Stage], tokens: Iterable[str] | None) -> list[Stage]:
    """Stages named by ``tokens`` (full name or prefix such as ``01``), in table order; no
    tokens: every stage but the standalone ones (:attr:`Stage.standalone`)."""
    if not tokens:
        return [s for s in stage_table if not s.standalone]
    chosen: set[str] = set()
    for token in tokens:
        matches = [s.name for s in stage_table if s.name == token or s.name.startswith(str(token))]
        if len(matches) != 1:
            names = ", ".join(s.name for s in stage_table)
            problem = "matches no stage" if not matches else f"is ambiguous ({', '.join(matches)})"
            raise RunnerError(f"stage {token!r} {problem}; stages: {names}")
        chosen.add(matches[0])
    return [s for s in stage_table if s.name in chosen]


# --------------------------------------------------------------------------------------------
# stage records


def stage_record_path(run_dir: str | os.PathLike, stage: Stage | str) -> Path:
    name = stage.name if isinstance(stage, Stage) else stage
    return Path(run_dir) / "stages" / f"{name}.json"


def read_stage_record(run_dir: str | os.PathLike, stage: Stage | str) -> dict | None:
    path = stage_record_path(run_dir, stage)
    if not path.exists():
        return None
    try:
        record = read_json(path)
    except (OSError, ValueError):
        return None  # unreadable record: treat the stage as not finished
    return record if isinstance(record, dict) else None


def _now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def rerun_reason(
    stage: Stage, record: Mapping[str, Any] | None, applied: Mapping[str, Any], key: str, force: bool
) -> str | None:
    """Why ``stage`` runs (``--force``, not finished, parameters changed, an earlier stage
    re-ran), or None when its record has ``key``: finished, skipped."""
    if force:
        return "--force"
    if record is None:
        return "not finished"
    if record.get("key") == key:
        return None
    if record.get("params_hash") != params_hash(applied):
        return "parameters changed"
    return "an earlier stage re-ran"


def stage_decision(
    stage: Stage,
    record: Mapping[str, Any] | None,
    params: Mapping[str, Any],
    upstream: Mapping[str, Any] | None,
    force: bool,
) -> tuple[dict[str, Any], str, str | None]:
    """What one stage would apply, its key, and why it runs (None: finished with that key, so
    skipped): the one decision :func:`run_pipeline` and :func:`stages_to_run` both make. A
    standalone stage's key ignores ``upstream`` (it reads no other stage's files)."""
    applied = stage.applied(params)
    key = stage_key(stage, applied, None if stage.standalone else upstream)
    return applied, key, rerun_reason(stage, record, applied, key, force)


def stages_to_run(
    stage_table: Sequence[Stage], selected: Sequence[Stage], run_dir: Path, params: Mapping[str, Any], force: bool
) -> list[Stage]:
    """The selected stages a call will run (the rest are finished and skipped), read from the
    stage records without writing anything: what the pre-flight checks are for.

    A stage that runs gets a new record, so every later selected stage it is upstream of runs
    too (as :func:`run_pipeline` finds when it gets there)."""
    names = {s.name for s in selected}
    upstream: Mapping[str, Any] | None = None
    out: list[Stage] = []
    for stage in stage_table:
        record = read_stage_record(run_dir, stage)
        if stage.name not in names:
            if not stage.standalone:
                upstream = record
            continue
        _, key, reason = stage_decision(stage, record, params, upstream, force)
        if reason is None:
            if not stage.standalone:
                upstream = record
            continue
        out.append(stage)
        if not stage.standalone:
            upstream = {"stage": stage.name, "key": key, "finished_ns": None}  # not the old record any more
    return out


# --------------------------------------------------------------------------------------------
# pre-flight: what a new user gets wrong, found before a kernel starts or a file is written

#: data sets generated on first use: they need no folder on disk
GENERATED_DATASETS = frozenset({"synthetic"})
#: stage parameters that name a folder the stage writes into
OUTPUT_PARAMS = ("run_dir", "cache_dir")


def check_data_root(dataset: str, data_root: str | os.PathLike | None, repo_root: Path) -> None:
    """The data set's folder exists: ``data_root``, or the data set's default under the
    repository (where the stages run). Raises :class:`RunnerError` naming both."""
    if dataset in GENERATED_DATASETS:
        return
    if data_root is None:
        from ferlib.data.prepare import DEFAULT_ROOTS

        default = repo_root / DEFAULT_ROOTS.get(dataset, f"data/{dataset}")
        if not default.is_dir():
            raise RunnerError(f"--dataset {dataset}: no --data-root given and its default folder {default} is missing")
        return
    root = Path(data_root)
    if not root.exists():
        raise RunnerError(f"--dataset {dataset}: --data-root {root} does not exist")
    if not root.is_dir():
        raise RunnerError(f"--dataset {dataset}: --data-root {root} is not a folder")


def check_device(device: str) -> None:
    """``cuda``/``cuda:N``/``mps`` is there on this machine (CPU always is); raises
    :class:`RunnerError`. Imports torch only for those devices."""
    text = str(device).strip().lower()
    if not text.startswith(("cuda", "mps")):
        return
    import torch

    try:
        parsed = torch.device(text)
    except (RuntimeError, TypeError, ValueError):
        raise RunnerError(f"--device {device}: not a torch device; use e.g. cpu, cuda, cuda:1 or mps") from None
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            build = "built without CUDA" if torch.version.cuda is None else f"CUDA {torch.version.cuda}"
            raise RunnerError(
                f"--device {device}: no CUDA device is available here (torch {torch.__version__}, {build}); "
                "use --device cpu"
            )
        count = torch.cuda.device_count()
        if parsed.index is not None and parsed.index >= count:
            raise RunnerError(f"--device {device}: this machine shows {count} CUDA device(s), cuda:0..cuda:{count - 1}")
    elif parsed.type == "mps" and not torch.backends.mps.is_available():
        raise RunnerError(f"--device {device}: MPS (Apple GPU) is not available here; use --device cpu")


def check_writable(path: str | os.PathLike, what: str) -> None:
    """``path`` can be created or written: its nearest existing ancestor is a writable folder."""
    target = Path(path)
    probe = target
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        raise RunnerError(f"{what} {target}: {probe} is a file, not a folder")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise RunnerError(f"{what} {target}: {probe} is not writable")


def preflight(
    to_run: Sequence[Stage],
    params: Mapping[str, Any],
    repo_root: Path,
    *,
    executor: str,
    kernel: str | None = None,
    device: bool = True,
) -> str | None:
    """The checks of a call that will run ``to_run``, before any of its files is written: the
    data folder (when a stage to run reads data), the device (``device=False``: the jobs of a
    submitit sweep check their own GPUs), every output folder, and the papermill kernel,
    which is returned (None without papermill or nothing to run). Raises :class:`RunnerError`."""
    if not to_run:
        return None
    if any(stage.accepts("data_root") for stage in to_run):
        check_data_root(str(params["dataset"]), params.get("data_root"), repo_root)
    if device and any(stage.accepts("device") for stage in to_run):
        check_device(str(params.get("device", "cpu")))
    outputs = {Path(params["run_dir"])} if params.get("run_dir") else set()
    for stage in to_run:
        applied = stage.applied(params)
        outputs.update(repo_root / applied[name] for name in OUTPUT_PARAMS if applied.get(name))
    for path in sorted(outputs):
        check_writable(path, "output folder")
    return resolve_kernel(kernel) if executor == "papermill" else None


# --------------------------------------------------------------------------------------------
# executors


def available_kernels() -> set[str]:
    from jupyter_client.kernelspec import KernelSpecManager

    return set(KernelSpecManager().find_kernel_specs())


def resolve_kernel(kernel: str | None = None) -> str:
    """The Jupyter kernel papermill uses: ``kernel``, else ``$FERKIT_KERNEL``, else ``ferkit``.

    Raises :class:`RunnerError` with the fix when that kernel is not installed.
    """
    name = kernel or os.environ.get(KERNEL_ENV) or DEFAULT_KERNEL
    try:
        kernels = available_kernels()
    except ImportError as exc:
        raise RunnerError(
            f"papermill executor needs jupyter_client ({exc}); run `make venv`, or use --executor python"
        ) from exc
    if name not in kernels:
        raise RunnerError(
            f"Jupyter kernel {name!r} is not installed (found: {', '.join(sorted(kernels)) or 'none'}). "
            "Run `make venv`, which registers the 'ferkit' kernel inside the venv "
            "(python -m ipykernel install --sys-prefix --name ferkit), and run from that venv; "
            f"or set {KERNEL_ENV}=python3 to use another kernel; or use --executor python."
        )
    return name


@contextmanager
def _chdir(path: Path) -> Iterator[None]:
    old = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(old)


#: Arguments of every papermill kernel: its own log off. It printed ipykernel's warning "Kernel
#: is running over TCP without encryption" at each stage (the kernel listens on localhost only),
#: and after Ctrl-C a zmq traceback of the reply it could no longer send. The notebook's own
#: output, warnings and errors are cell outputs, kept; a dead kernel is papermill's error.
KERNEL_ARGUMENTS = ("--IPKernelApp.log_level=CRITICAL",)


def _execute_papermill(stage: Stage, params: dict, run_dir: Path, repo_root: Path, kernel: str) -> Path:
    import papermill

    source = stage.notebook_path(repo_root)
    if not source.exists():
        raise RunnerError(f"stage {stage.name}: notebook {source} does not exist")
    target = run_dir / "notebooks" / f"{stage.name}.ipynb"
    target.parent.mkdir(parents=True, exist_ok=True)
    papermill.execute_notebook(
        str(source),
        str(target),
        parameters=params,
        kernel_name=kernel,
        cwd=str(repo_root),
        progress_bar=False,
        log_output=True,
        extra_arguments=list(KERNEL_ARGUMENTS),
    )
    return target


def _execute_python(stage: Stage, params: dict, repo_root: Path) -> None:
    func = stage.function()
    with _chdir(repo_root):  # same working directory as the papermill kernel
        func(**params)


# --------------------------------------------------------------------------------------------
# pipeline


@dataclass
class PipelineResult:
    run: str
    run_dir: Path
    ran: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


def _say(message: str) -> None:
    print(message, flush=True)


def configure_logging() -> None:
    """Warnings to stderr, and papermill's cell outputs as they come (the CLI and sweep jobs)."""
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.WARNING, format="%(message)s")
    logging.getLogger("papermill").setLevel(logging.INFO)


def _read_metrics(path: Path) -> list[dict]:
    def convert(text: str) -> Any:
        if text == "":
            return None
        for kind in (int, float):
            try:
                value = kind(text)
            except ValueError:
                continue
            return None if isinstance(value, float) and not math.isfinite(value) else value
        return text

    with path.open(newline="", encoding="utf-8") as handle:
        return [{k: convert(v) for k, v in row.items()} for row in csv.DictReader(handle)]


def _run_params(
    dataset: str,
    data_root: str | os.PathLike | None,
    open_class: str | None,
    seed: int,
    device: str,
    run_dir: Path,
    extra_params: Mapping[str, Any],
) -> dict[str, Any]:
    """The parameters of one run: the runner's options (``CORE_PARAMS``) and the ``-p`` keys."""
    return {
        "dataset": dataset,
        "data_root": str(Path(data_root).resolve()) if data_root is not None else None,
        "open_class": open_class,
        "seed": seed,
        "device": device,
        "run_dir": str(run_dir),
        **extra_params,
    }


def _outputs_dir(outputs: str | os.PathLike | None, repo_root: Path) -> Path:
    """The folder of run folders: ``outputs``, else ``<repo_root>/outputs``."""
    return (Path(outputs) if outputs is not None else repo_root / "outputs").resolve()


#: parameters that choose the network: given explicitly, ``auto`` leaves the engine out
_NETWORK_KEYS = ("arch", "pretrained")


def _with_engine(
    engine: str,
    dataset: str,
    data_root: str | os.PathLike | None,
    selected: Sequence[Stage],
    extra: Mapping[str, Any],
) -> tuple[dict[str, Any], dict | None]:
    """``extra`` over the engine's parameters (those the selected stages take), and the
    manifest's record of the engine (None: no engine applies)."""
    from ferlib.engines import ENGINES, apply_engine, resolve_engine

    if engine == "auto" and any(k in extra for k in _NETWORK_KEYS):
        return dict(extra), None  # the user chose the network; the stages' defaults fill the rest
    try:
        chosen, reason = resolve_engine(
            engine, dataset, None if data_root is None else str(data_root), extra.get("data_options")
        )
    except ValueError as exc:
        raise RunnerError(str(exc)) from None
    # the engine's weights must reach every stage that builds its network
    lacking = [s.name for s in selected if s.accepts("arch") and not all(s.accepts(k) for k in chosen.params)]
    lacking = [n for n in lacking if "pretrained" in chosen.params]
    if lacking:
        if engine != "auto":
            raise RunnerError(f"engine {engine!r} starts from weights that stage(s) {', '.join(lacking)} cannot load")
        chosen, reason = ENGINES["scratch"], f"stage(s) {', '.join(lacking)} cannot load the face weights"
    accepted = {k for k in chosen.params if any(s.accepts(k) for s in selected)}
    # the engine's detector settings are for the open-set detectors that train networks, which
    # only stage 03 runs: not for stage 05's (standalone) noisy-label scores, which refuse them
    if chosen.detector_params and any(s.accepts("detector_params") and not s.standalone for s in selected):
        accepted.add("detector_params")
    record = {"name": chosen.name, "asked": engine, "reason": f"{reason}; {chosen.why}"}
    return apply_engine(chosen, extra, accepted), record


def run_pipeline(
    dataset: str,
    *,
    data_root: str | os.PathLike | None = None,
    open_class: str | None = DEFAULT_OPEN_CLASS,
    seed: int = 0,
    device: str = "cpu",
    run: str | None = None,
    outputs: str | os.PathLike | None = None,
    stages: Iterable[str] | None = None,
    executor: str = "papermill",
    force: bool = False,
    extra: Iterable[str] | Mapping[str, Any] | None = None,
    stage_table: Sequence[Stage] = STAGES,
    repo_root: str | os.PathLike = REPO_ROOT,
    kernel: str | None = None,
    engine: str | None = None,
    say: Callable[[str], None] = _say,
) -> PipelineResult:
    """Run the selected stages of one run in order, skipping finished ones.

    ``engine``: a named bundle of parameters (:mod:`ferlib.engines`; ``"auto"`` chooses one for
    the data set) under the ``extra`` values, printed and recorded in the manifest; None (the
    default for callers in Python) applies none, so the stage functions' defaults hold.
    Returns what ran and what was skipped; raises :class:`StageFailed` at the first failing
    stage (later stages do not run) and :class:`RunnerError` for bad arguments.
    """
    if executor not in EXECUTORS:
        raise RunnerError(f"executor must be one of {', '.join(EXECUTORS)}, got {executor!r}")
    if executor == "papermill" and int(os.environ.get("WORLD_SIZE") or 1) > 1:
        # a notebook kernel is not a torchrun worker: the stages must run in the ranks themselves
        raise RunnerError("under torchrun use --executor python (docs/DESIGN.md, Distributed training)")
    repo_root = Path(repo_root).resolve()
    open_class = normalise_open_class(open_class)
    seed = int(seed)
    extra_params = parse_params(extra)
    selected = select_stages(stage_table, stages)
    run = run or default_run_name(dataset, open_class, seed)
    run_dir = _outputs_dir(outputs, repo_root) / run
    engine_record = None
    if engine is not None:
        extra_params, engine_record = _with_engine(engine, dataset, data_root, selected, extra_params)
        if engine_record is not None:
            say(f"engine {engine_record['name']}: {engine_record['reason']}")

    params = _run_params(dataset, data_root, open_class, seed, device, run_dir, extra_params)
    # before any file is written: the parameters, then what the stages that will run need
    unused = check_parameters(selected, params, extra_params, repo_root, stage_table=stage_table)
    if unused:
        say(unused_note(unused, stage_table))
        params = {k: v for k, v in params.items() if k not in unused}
    to_run = stages_to_run(stage_table, selected, run_dir, params, force)
    resolved_kernel = preflight(to_run, params, repo_root, executor=executor, kernel=kernel)
    selected_names = {s.name for s in selected}
    say(f"run {run} -> {run_dir}")

    run_dir.mkdir(parents=True, exist_ok=True)

    def start_manifest(manifest: dict) -> dict:
        manifest = dict(manifest)
        manifest.setdefault("run", run)
        manifest.setdefault("created", _now_iso())
        manifest["updated"] = _now_iso()
        manifest["params"] = params  # what the run was asked for; each stage's section: what it applied
        if engine_record is not None:
            manifest["engine"] = engine_record  # the engine behind those parameters, and why
        manifest.pop("params_hash", None)  # per stage now (stages.<name>.key)
        return manifest

    modify_manifest(run_dir, start_manifest)

    result = PipelineResult(run=run, run_dir=run_dir)
    upstream: dict | None = None  # the record of the stage before this one in the table
    failure: StageFailed | None = None
    environment_recorded = False
    for stage in stage_table:
        record = read_stage_record(run_dir, stage)
        if stage.name not in selected_names:
            if not stage.standalone:
                upstream = record
            continue
        applied, key, reason = stage_decision(stage, record, params, upstream, force)
        stage_upstream = None if stage.standalone else upstream  # a standalone stage reads no other's files
        if reason is None:
            say(f"skip {stage.name} (finished)")
            result.skipped.append(stage.name)
            if not stage.standalone:
                upstream = record
            continue

        if executor == "papermill" and resolved_kernel is None:
            resolved_kernel = resolve_kernel(kernel)
        if not environment_recorded:
            # where the stages that run now run (a call that only skips changes nothing)
            set_manifest(run_dir, environment=collect_environment())
            environment_recorded = True
        # The old record goes first: a rerun killed half-way must not look finished.
        stage_record_path(run_dir, stage).unlink(missing_ok=True)
        target = run_dir / "notebooks" / f"{stage.name}.ipynb" if executor == "papermill" else None
        say(
            f"run {stage.name} ({reason}; {executor}"
            + (f" -> {target})" if target is not None else f": {stage.func_name})")
        )
        started = _now_iso()
        modify_manifest(
            run_dir,
            lambda m, name=stage.name, started=started: {
                **m,
                "stages": {
                    **m.get("stages", {}),
                    name: {"status": "running", "started": started, "executor": executor},
                },
            },
        )
        t0 = time.perf_counter()
        try:
            if executor == "papermill":
                _execute_papermill(stage, stage.given(params), run_dir, repo_root, resolved_kernel)
            else:
                _execute_python(stage, stage.given(params), repo_root)
        except RunnerError:
            update_manifest(run_dir, stages={stage.name: {"status": "failed"}})
            raise
        except BaseException as exc:  # noqa: BLE001 - Ctrl-C too: the manifest must say where it stopped
            wall = time.perf_counter() - t0
            if interrupted_stage(exc):
                update_manifest(run_dir, stages={stage.name: {"status": "interrupted", "wall_s": round(wall, 3)}})
                raise StageInterrupted(stage, run_dir) from None
            if not isinstance(exc, Exception):  # SystemExit and the like: not a stage's failure
                raise
            failure = StageFailed(stage, run_dir, target, exc)
            if executor == "python" and user_error(failure) is None:
                traceback.print_exc()  # unexpected: the traceback is the report (a user error is one line)
            update_manifest(
                run_dir, stages={stage.name: {"status": "failed", "wall_s": round(wall, 3), "error": str(failure)}}
            )
            break
        wall = time.perf_counter() - t0
        record = {
            "stage": stage.name,
            "key": key,
            "params_hash": params_hash(applied),
            "params": applied,
            "upstream": None
            if stage_upstream is None
            else {
                "stage": stage_upstream.get("stage"),
                "key": stage_upstream.get("key"),
                "finished_ns": stage_upstream.get("finished_ns"),
            },
            "executor": executor,
            "notebook": str(target) if target is not None else None,
            "started": started,
            "finished": _now_iso(),
            "finished_ns": time.time_ns(),
            "wall_s": round(wall, 3),
        }
        write_json(stage_record_path(run_dir, stage), record)
        # replaced, not merged: a key the stage no longer applies must not linger in the manifest
        modify_manifest(
            run_dir,
            lambda m, name=stage.name, rec=record: {
                **m,
                "stages": {
                    **m.get("stages", {}),
                    name: {
                        "status": "finished",
                        "executor": executor,
                        "started": rec["started"],
                        "finished": rec["finished"],
                        "wall_s": rec["wall_s"],
                        "notebook": rec["notebook"],
                        "key": rec["key"],
                        "params": rec["params"],
                    },
                },
            },
        )
        if not stage.standalone:
            upstream = record
        result.ran.append(stage.name)
        say(f"done {stage.name} in {wall:.1f} s")

    metrics_csv = run_dir / "metrics.csv"
    if metrics_csv.exists():
        set_manifest(run_dir, metrics=_read_metrics(metrics_csv))
    if failure is not None:
        raise failure
    return result


@dataclass
class SweepResult:
    runs: dict[str, PipelineResult] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)  # run name -> error message

    @property
    def ok(self) -> bool:
        return not self.failed


def _keep_record(run_dir: Path, records: str | os.PathLike | None, chain: Sequence[Stage]) -> None:
    """The run's record into ``records`` once every stage of ``chain`` has finished there."""
    if records is not None and all(read_stage_record(run_dir, stage) is not None for stage in chain):
        from ferlib.records import save_run_record

        save_run_record(run_dir, records)


def run_sweep(
    dataset: str,
    *,
    open_classes: Iterable[str] = ("all",),
    seeds: Iterable[int] = (0,),
    launcher: str = "inline",
    submitit: Any = None,
    records: str | os.PathLike | None = None,
    say: Callable[[str], None] = _say,
    **pipeline_kwargs: Any,
) -> SweepResult:
    """Run the pipeline for every (open class, seed); a failing run does not stop the sweep.

    ``pipeline_kwargs`` go to :func:`run_pipeline` (``data_root``, ``device``, ``stages``,
    ``executor``, ``force``, ``extra``, ``stage_table``...); run names are the defaults.

    ``launcher``: ``"inline"`` runs them here, one after the other; ``"submitit"`` runs each as
    a submitit job (:func:`ferlib.launch.launch_sweep`), with ``submitit`` a
    :class:`ferlib.launch.SubmititOptions` (None: a local sweep with the defaults). Either way
    the result, and the report of failed runs, are the same.

    ``records``: a folder of committed run records (:mod:`ferlib.records`; stages 01-03 only):
    a run with no stage record here whose record there holds the keys of these settings is
    restored and skipped, and every run that finishes its stages 01-03 leaves its record there,
    so a sweep longer than one machine's life goes on on the next.
    """
    if launcher not in LAUNCHERS:
        raise RunnerError(f"launcher must be one of {', '.join(LAUNCHERS)}, got {launcher!r}")
    if "run" in pipeline_kwargs or "open_class" in pipeline_kwargs or "seed" in pipeline_kwargs:
        raise RunnerError("run_sweep names its runs itself: pass open_classes and seeds")
    options = None
    if launcher == "submitit":
        from ferlib.launch import check_options

        options = check_options(submitit, device=pipeline_kwargs.get("device", "cpu"))
    elif submitit is not None:
        raise RunnerError("submitit options (--cluster, --gpus-per-job, --slurm...) need --launcher submitit")
    classes = expand_open_classes(open_classes)
    seed_list = list(dict.fromkeys(int(s) for s in seeds))  # a run folder is run once
    # a bad -p key or value fails before any run starts (the runs differ only in class and seed)
    extra_params = parse_params(pipeline_kwargs.get("extra"), sweep=True)
    repo_root = Path(pipeline_kwargs.get("repo_root", REPO_ROOT)).resolve()
    stage_table = pipeline_kwargs.get("stage_table", STAGES)
    selected = select_stages(stage_table, pipeline_kwargs.get("stages"))
    device = pipeline_kwargs.get("device", "cpu")
    outputs_dir = _outputs_dir(pipeline_kwargs.get("outputs"), repo_root)
    checked = extra_params  # what the runs will be given: with the engine's values (each run resolves it again)
    if pipeline_kwargs.get("engine") is not None:
        checked, _ = _with_engine(
            pipeline_kwargs["engine"], dataset, pipeline_kwargs.get("data_root"), selected, extra_params
        )

    def params_of(open_class: str | None, seed: int, run_dir: Path) -> dict[str, Any]:
        return _run_params(dataset, pipeline_kwargs.get("data_root"), open_class, seed, device, run_dir, checked)

    unused = check_parameters(
        selected,
        params_of(classes[0] if classes else None, seed_list[0] if seed_list else 0, outputs_dir / "sweep-check"),
        checked,
        repo_root,
        stage_table=stage_table,
        sweep=True,
    )
    if unused:
        say(unused_note(unused, stage_table))
        extra_params = {k: v for k, v in extra_params.items() if k not in unused}
        checked = {k: v for k, v in checked.items() if k not in unused}
        pipeline_kwargs = {**pipeline_kwargs, "extra": extra_params}  # each run is told the used keys only
    runs = [(default_run_name(dataset, c, seed), c, seed) for c in classes for seed in seed_list]
    # the stages a run record stands for: 01-03 (stage 04 draws from per-image files a record lacks)
    chain = [s for s in stage_table if not s.standalone and s.name[:2] in ("01", "02", "03")]
    if records is not None:
        from ferlib.records import restore_run_record

        beyond = [s.name for s in selected if s not in chain]
        if beyond:
            raise RunnerError(f"--records keeps runs of stages 01-03 only; this sweep also runs {', '.join(beyond)}")
        force = pipeline_kwargs.get("force", False)
        for name, open_class, seed in runs:
            params = params_of(open_class, seed, outputs_dir / name)

            def would_run(folder: Path, params=params) -> list[Stage]:
                return stages_to_run(stage_table, chain, folder, params, force)

            if restore_run_record(outputs_dir / name, records, would_run):
                say(f"restored {name} from its record in {records}")
    # pre-flight of what the runs will run, before the first one starts; a submitit job checks
    # its own GPUs (a Slurm login node has none)
    to_run: list[Stage] = []
    for name, open_class, seed in runs:
        params = params_of(open_class, seed, outputs_dir / name)
        planned = stages_to_run(stage_table, selected, outputs_dir / name, params, pipeline_kwargs.get("force", False))
        to_run.extend(stage for stage in planned if stage not in to_run)
    preflight(
        to_run,
        params_of(classes[0] if classes else None, seed_list[0] if seed_list else 0, outputs_dir),
        repo_root,
        executor=pipeline_kwargs.get("executor", "papermill"),
        kernel=pipeline_kwargs.get("kernel"),
        device=launcher == "inline",
    )
    result = SweepResult()
    total = len(runs)
    if launcher == "submitit":
        from ferlib.launch import launch_sweep

        outcomes = launch_sweep(dataset, runs, {**pipeline_kwargs, "repo_root": repo_root}, options, say=say)
        for name, outcome in outcomes.items():
            if outcome.error is None:
                result.runs[name] = outcome.result
                _keep_record(outputs_dir / name, records, chain)
            else:
                result.failed[name] = outcome.error
                say(f"FAILED {name}: {outcome.error}")
    else:
        for index, (name, open_class, seed) in enumerate(runs, start=1):
            say(f"== sweep {index}/{total}: {name}")
            try:
                result.runs[name] = run_pipeline(dataset, open_class=open_class, seed=seed, say=say, **pipeline_kwargs)
                _keep_record(outputs_dir / name, records, chain)
            except (StageFailed, RunnerError) as exc:
                result.failed[name] = str(exc)
                say(f"FAILED {name}: {exc}")
            except Exception as exc:  # noqa: BLE001 - one broken run must not end the sweep
                traceback.print_exc()
                result.failed[name] = f"{type(exc).__name__}: {exc}"
                say(f"FAILED {name}: {type(exc).__name__}: {exc}")
    done = total - len(result.failed)
    say(f"== sweep finished: {done}/{total} runs ok")
    if result.failed:
        say("failed runs:")
        for name, message in result.failed.items():
            say(f"  {name}: {message}")
    return result


# --------------------------------------------------------------------------------------------
# command line


def _add_common(parser: argparse.ArgumentParser, *, choose_stages: bool = True) -> None:
    parser.add_argument("--dataset", required=True, help="data set name, e.g. synthetic, ferplus")
    parser.add_argument("--data-root", default=None, help="folder holding the data set")
    parser.add_argument("--device", default="cpu", help="torch device (default cpu)")
    parser.add_argument("--outputs", default=None, help="folder of run folders (default: outputs/ in the repository)")
    if choose_stages:
        parser.add_argument(
            "--stages",
            nargs="+",
            default=None,
            metavar="STAGE",
            help="run only these stages (names or prefixes such as 01 03); default: every stage but the "
            "standalone ones (05, the noisy-label benchmark), which run only when named",
        )
    parser.add_argument(
        "--executor",
        choices=EXECUTORS,
        default="papermill",
        help="papermill: execute the notebooks (default); python: call the "
        "stage functions directly (no Jupyter needed)",
    )
    parser.add_argument("--force", action="store_true", help="rerun finished stages")
    _add_engine(parser)
    parser.add_argument(
        "-p",
        "--param",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a parameter of the stages' functions (value parsed as a Python literal); a key no "
        "stage has is refused, one of a stage this call does not run is noted and left out",
    )


def _add_engine(parser: argparse.ArgumentParser) -> None:
    from ferlib.engines import ENGINE_CHOICES

    group = parser.add_mutually_exclusive_group()
    group.add_argument(
        "--engine",
        choices=ENGINE_CHOICES,
        default="auto",
        help="settings for the whole run (ferlib/engines.py): auto (default) fine-tunes the face weights "
        "(face) when installed and the training split has at most 10,000 images, else scratch (the stage "
        "functions' defaults); quick makes every stage cheap; -p values win over the engine's",
    )
    group.add_argument(
        "--quick",
        dest="engine",
        action="store_const",
        const="quick",
        help="the same as --engine quick: every stage cheap, trained detectors included (a first look, CI)",
    )


#: the sweep's submitit options (dest -> SubmititOptions field); None = not given
_SUBMITIT_ARGS = (
    "cluster",
    "jobs_per_gpu",
    "gpus_per_job",
    "cpus_per_job",
    "mem_gb",
    "time_min",
    "partition",
    "array_parallelism",
    "max_attempts",
    "slurm",
)


RECORDS_HELP = (
    "folder of committed run records (e.g. docs/results/<sweep>): a run whose record there holds these "
    "settings' keys is restored instead of run, and each finished run leaves its record there (no weights)"
)


def _add_launcher(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group(
        "launcher",
        "where the runs execute; with --launcher submitit each run folder is one job, a failed job is "
        "resubmitted and resumes from its finished stages, and submitit's logs go to <outputs>/.submitit/",
    )
    group.add_argument(
        "--launcher",
        choices=LAUNCHERS,
        default="inline",
        help="inline: one run after the other in this process (default); submitit: one job per run",
    )
    group.add_argument(
        "--cluster",
        choices=("local", "slurm", "debug"),
        default=None,
        help="submitit: local (subprocesses of this machine, one per GPU; default), slurm (sbatch, one job "
        "array) or debug (in this process)",
    )
    group.add_argument(
        "--gpus-per-job",
        type=int,
        default=None,
        metavar="N",
        help="GPUs of each job (default 1 with --device cuda, else 0); local: the visible GPUs are cut into "
        "slots of N, one job per slot, and each job sees its slot as cuda:0..",
    )
    group.add_argument(
        "--cpus-per-job", type=int, default=None, metavar="N", help="CPUs of each job (its OMP_NUM_THREADS too)"
    )
    group.add_argument("--mem-gb", type=float, default=None, metavar="GB", help="slurm: memory of each job")
    group.add_argument(
        "--time-min", type=int, default=None, metavar="MIN", help="time limit of each job in minutes (default 720)"
    )
    group.add_argument("--partition", default=None, help="slurm: partition")
    group.add_argument(
        "--array-parallelism",
        type=int,
        default=None,
        metavar="N",
        help="jobs at a time (slurm: the array's %%N; local: default one per GPU slot, 1 without GPUs)",
    )
    group.add_argument(
        "--jobs-per-gpu",
        type=int,
        default=None,
        metavar="N",
        help="local, with --device cuda: jobs sharing each GPU slot at once (default 1); small models leave a "
        "large GPU mostly idle",
    )
    group.add_argument(
        "--max-attempts",
        type=int,
        default=None,
        metavar="N",
        help="attempts per run folder, resubmissions included (default 2)",
    )
    group.add_argument(
        "--slurm",
        action="append",
        default=None,
        metavar="KEY=VALUE",
        help="any other slurm parameter of submitit (slurm_ prefix optional), e.g. --slurm account=abc "
        "--slurm qos=high --slurm constraint=a100",
    )


def _submitit_options(args: argparse.Namespace) -> Any:
    """The sweep's submitit options as given (None when none was): SubmititOptions needs submitit
    only at check time, so this import is cheap."""
    given = {name: getattr(args, name) for name in _SUBMITIT_ARGS if getattr(args, name) is not None}
    if not given and args.launcher == "inline":
        return None
    from ferlib.launch import SubmititOptions

    return SubmititOptions(**given)


def build_parser(stage_table: Sequence[Stage] = STAGES) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m ferlib.run", description="Run ferkit's notebooks with papermill.")
    sub = parser.add_subparsers(dest="command", required=True)

    pipeline = sub.add_parser("pipeline", help="run all stages of one run (skips finished ones)")
    _add_common(pipeline)
    pipeline.add_argument(
        "--open-class",
        default=DEFAULT_OPEN_CLASS,
        help=f"emotion held out as open set, or none (default {DEFAULT_OPEN_CLASS})",
    )
    pipeline.add_argument("--seed", type=int, default=0)
    pipeline.add_argument("--run", default=None, help="run name (default <dataset>_open-<class>_seed<seed>)")

    sweep = sub.add_parser("sweep", help="run the pipeline for every (open class, seed)")
    _add_common(sweep)
    sweep.add_argument(
        "--open", nargs="+", default=["all"], metavar="CLASS", help="open classes: all (the 7 basic emotions) or names"
    )
    sweep.add_argument("--seeds", nargs="+", type=int, default=[0], metavar="N")
    sweep.add_argument("--records", default=None, metavar="DIR", help=RECORDS_HELP)
    _add_launcher(sweep)

    tables = sub.add_parser(
        "tables",
        help="gather finished runs into the reproduction tables",
        description="Tables (CSV, Markdown, LaTeX) and bar charts per data "
        "set, protocol and metric from every run with metrics.csv; stage 05 benchmarks (noisy labels) "
        "given side by side get the noisy-label tables (noisy_tables.md).",
    )
    tables.add_argument("runs", nargs="+", help="run folders, sweep folders or globs")
    tables.add_argument("--out", default=None, help="where the tables go (default: outputs/tables in the repository)")
    tables.add_argument(
        "--detectors", nargs="+", default=None, metavar="NAME", help="only these detectors (default: every one scored)"
    )
    tables.add_argument(
        "--compare",
        action="store_true",
        help="each RUNS argument is one sweep (e.g. from scratch, from face weights): its tables in --out/<name>/ "
        "and <dataset>_comparison.md side by side",
    )

    reproduce = sub.add_parser(
        "reproduce",
        help="every run of one paper table, then the table (resumable; time estimated first)",
        description="openset: the open-set paper's table (7 open classes x seeds, every detector, both "
        "protocols, the published numbers beside). noisy: the noisy-label table (stage 05's grid x seeds).",
    )
    reproduce.add_argument("table", choices=("openset", "noisy"))
    reproduce.add_argument("--dataset", required=True, help="data set name, e.g. ferplus")
    reproduce.add_argument("--data-root", default=None, help="folder holding the data set")
    reproduce.add_argument("--device", default="cpu", help="torch device (default cpu)")
    reproduce.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], metavar="N")
    reproduce.add_argument(
        "--outputs", default=None, help="folder of its runs (default outputs/reproduce_<table>_<dataset>_<engine>)"
    )
    reproduce.add_argument("--executor", choices=EXECUTORS, default="python", help="default python (no Jupyter needed)")
    reproduce.add_argument("--records", default=None, metavar="DIR", help=RECORDS_HELP)
    reproduce.add_argument("--budget-minutes", type=float, default=None, help="refuse a plan estimated to take longer")
    reproduce.add_argument("--dry-run", action="store_true", help="print the plan and its estimated time only")
    _add_engine(reproduce)
    reproduce.add_argument("-p", "--param", action="append", default=[], metavar="KEY=VALUE", help="as for pipeline")

    stage = sub.add_parser(
        "stage",
        help="run one stage",
        epilog="stages: " + ", ".join(s.name + (" (standalone)" if s.standalone else "") for s in stage_table),
    )
    stage.add_argument("name", help="stage name or prefix, e.g. 02")
    _add_common(stage, choose_stages=False)
    stage.add_argument("--open-class", default=DEFAULT_OPEN_CLASS)
    stage.add_argument("--seed", type=int, default=0)
    stage.add_argument("--run", default=None)
    return parser


def run_summary(result: PipelineResult) -> list[str]:
    """A few lines on one finished call of a run: its folder, its headline numbers (close-set
    test accuracy; the best detector's AUROC per protocol) and where its figures and tables
    are; what a user looks at next."""
    run_dir = result.run_dir
    lines = [f"{result.run}: {run_dir} (ran {len(result.ran)}, skipped {len(result.skipped)} stage(s))"]
    try:
        manifest = read_json(run_dir / "manifest.json")
    except (OSError, ValueError):
        manifest = {}
    close_set = manifest.get("close_set") if isinstance(manifest, dict) else None
    accuracy = close_set.get("test_acc") if isinstance(close_set, dict) else None
    if isinstance(accuracy, (int, float)):
        lines.append(f"  close-set test accuracy {accuracy:.4f}")
    metrics_csv = run_dir / "metrics.csv"
    rows = _read_metrics(metrics_csv) if metrics_csv.exists() else []
    best: dict[str, dict] = {}
    for row in rows:
        auroc, protocol = row.get("auroc"), str(row.get("protocol") or "-")
        if isinstance(auroc, (int, float)) and (protocol not in best or auroc > best[protocol]["auroc"]):
            best[protocol] = row
    if best:
        lines.append(
            "  best AUROC: "
            + "; ".join(f"{protocol} {row['auroc']:.4f} ({row.get('detector')})" for protocol, row in best.items())
        )
        lines.append(f"  metrics: {metrics_csv}")
    for what, folder in (("figures", run_dir / "figures"), ("tables", run_dir.parent / "tables")):
        if folder.is_dir():
            lines.append(f"  {what}: {folder}")
    return lines


def _expand(item: str) -> list[Path]:
    """A ``tables`` argument: the folders a glob matches, else the path itself."""
    import glob

    if any(ch in item for ch in "*?["):
        return [Path(p) for p in sorted(glob.glob(item, recursive=True))]
    return [Path(item)]


def _error(message: str) -> None:
    print(f"ferlib.run: error: {message}", file=sys.stderr, flush=True)


#: loggers that report papermill's clean-up after Ctrl-C ("Kernel died while waiting for execute
#: reply", asyncio's "Task exception was never retrieved" with a traceback): noise once the user
#: stopped the run on purpose
_CLEANUP_LOGGERS = ("papermill", "nbclient", "asyncio", "traitlets")


@contextmanager
def _quiet_after_ctrl_c() -> Iterator[None]:
    """The command line's Ctrl-C: silence :data:`_CLEANUP_LOGGERS` from the moment SIGINT
    arrives (the process is ending), then raise KeyboardInterrupt as Python's own handler does."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        for name in _CLEANUP_LOGGERS:
            logging.getLogger(name).disabled = True
        signal.default_int_handler(signum, frame)

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def main(
    argv: Sequence[str] | None = None,
    *,
    stage_table: Sequence[Stage] = STAGES,
    repo_root: str | os.PathLike = REPO_ROOT,
) -> int:
    """The command line; returns the exit status: 0 done, 1 a stage failed (or a sweep's run),
    2 a user error (one line, no traceback), 130 Ctrl-C (the stage marked ``interrupted``)."""
    args = build_parser(stage_table).parse_args(argv)
    configure_logging()

    if args.command == "tables":
        from ferlib.noisy import is_benchmark, write_paper_tables
        from ferlib.report import collect_results

        out = args.out if args.out is not None else Path(repo_root) / "outputs" / "tables"
        try:
            check_writable(out, "--out")
            benchmarks: list[Path] = []  # stage 05's: the noisy-label tables
            others: list[str] = []  # open-set runs, as collect_results reads them
            for item in args.runs:
                found = [p for p in _expand(item) if is_benchmark(p)]
                benchmarks += found
                if not found:
                    others.append(item)
                else:  # a glob that matched benchmarks too: its plain runs beside them
                    others += [str(p) for p in _expand(item) if not is_benchmark(p) and (p / "metrics.csv").is_file()]
            if benchmarks:
                written = write_paper_tables(benchmarks, out)
                print(f"noisy-label tables of {len(benchmarks)} benchmark(s): {written[-1]}")
            if args.compare and len(others) > 1:
                from ferlib.report import compare_results, sweep_labels

                compare_results(dict(zip(sweep_labels(others), others)), out_dir=str(out))
            elif others or not benchmarks:
                collect_results(others or args.runs, out_dir=out, detectors=args.detectors)
        except (RunnerError, ValueError) as exc:
            _error(str(exc))
            return 2
        return 0
    if args.command == "reproduce":
        from ferlib.reproduce import reproduce

        try:
            with _quiet_after_ctrl_c():
                reproduce(
                    args.table,
                    args.dataset,
                    data_root=args.data_root,
                    seeds=args.seeds,
                    device=args.device,
                    engine=args.engine,
                    extra=parse_params(args.param),
                    outputs=args.outputs,
                    budget_minutes=args.budget_minutes,
                    dry_run=args.dry_run,
                    executor=args.executor,
                    records=args.records,
                    say=_say,
                )
        except KeyboardInterrupt:
            print("interrupted; run again to resume", file=sys.stderr)
            return 130
        except (RunnerError, ValueError, FileNotFoundError) as exc:
            _error(str(exc))
            return 2
        return 0
    common = dict(
        engine=args.engine,
        data_root=args.data_root,
        device=args.device,
        outputs=args.outputs,
        executor=args.executor,
        force=args.force,
        extra=args.param,
        stage_table=stage_table,
        repo_root=repo_root,
    )
    try:
        with _quiet_after_ctrl_c():
            runs, code = _run_command(args, common)
    except KeyboardInterrupt as exc:  # Ctrl-C: one line, no traceback (a stage's also marks the manifest)
        print(str(exc) if isinstance(exc, StageInterrupted) else "interrupted; run again to resume", file=sys.stderr)
        return 130
    except StageFailed as exc:
        message = user_error(exc)
        _error(message if message is not None else str(exc))
        return 2 if message is not None else 1
    except (RunnerError, ValueError, FileNotFoundError) as exc:  # the runner's own checks: bad options, data
        _error(str(exc))
        return 2
    if runs and int(os.environ.get("RANK") or 0) == 0:  # under torchrun, rank 0 speaks for the run
        _say("summary:")
        for result in runs:
            for line in run_summary(result):
                _say(f"  {line}")
    return code


def _run_command(args: argparse.Namespace, common: dict[str, Any]) -> tuple[list[PipelineResult], int]:
    """Run ``pipeline``, ``stage`` or ``sweep``: the results of the runs and the exit status."""
    if args.command == "sweep":
        result = run_sweep(
            args.dataset,
            open_classes=args.open,
            seeds=args.seeds,
            stages=args.stages,
            launcher=args.launcher,
            submitit=_submitit_options(args),
            records=args.records,
            **common,
        )
        return list(result.runs.values()), 0 if result.ok else 1
    stages = [args.name] if args.command == "stage" else args.stages
    run = run_pipeline(args.dataset, open_class=args.open_class, seed=args.seed, run=args.run, stages=stages, **common)
    return [run], 0


if __name__ == "__main__":
    # `python -m ferlib.run` loads this file as __main__; the CLI runs from the imported module
    # instead, so that its classes (RunnerError, PipelineResult...) are those ferlib.launch and
    # the sweep's jobs use
    from ferlib.run import main as _main

    sys.exit(_main())
