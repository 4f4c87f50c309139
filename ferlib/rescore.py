"""Finished open-set runs scored again under changed evaluation settings, their close-set model
held fixed.

A *twin* of a finished run shares its stage 01 (the trained model's files and the stage's record
are copied) and runs stages 02-03 again through the runner, with every parameter its stages
02-03 were run with (read from their stage records) except the ones changed. Nothing is
retrained, so a difference between a run and its twin is what the evaluation change alone does.
The question this answers first: what FER2013's duplicate images do to the open-set numbers
(``tools/duplicates_effect.py``: the same models scored with the duplicate evaluation rows back,
``data_options={'dedupe': False}``).

What is held fixed is the *trained* model, including the epoch stage 01 kept, which it chose on
its own validation rows. A change that would alter stage 01's rows (``data_options`` does, for
the validation split) therefore differs from a full re-run by that choice only; the twin's
manifest records the run it was made from and the changed parameters (``rescored_from``).

Layout: ``<out>/<run name>/`` for each run, a run folder like any other (``ferlib.run tables``
reads it). Making a twin is idempotent and the runner skips finished stages, so a killed
rescore resumes.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ferlib.io import read_json, write_json
from ferlib.manifest import modify_manifest

#: stage 01's files a twin needs: the kept weights, what was built (stage 02 rebuilds the same
#: network from it), the checkpoints' key and the training history (figures)
STAGE01_FILES = ("best.pt", "results.json", "key.json", "history.csv", "history.json", "label_noise.npz")
STAGE01 = "01_train_close_set"
RESCORED = ("02_predict_pseudo_labels", "03_detect_open_set")
#: parameters the runner takes as flags of its own, not as ``-p``
FLAGS = {
    "dataset": "--dataset",
    "data_root": "--data-root",
    "open_class": "--open-class",
    "seed": "--seed",
    "device": "--device",
}
#: parameters a twin never takes from its run (its own folder; progress is the caller's choice)
NOT_COPIED = ("run_dir", "progress")


def _record(run: Path, stage: str) -> dict:
    path = run / "stages" / f"{stage}.json"
    if not path.is_file():
        raise ValueError(f"{run}: stage {stage} has no record ({path}): not a finished run")
    record = read_json(path)
    if record.get("finished") is None and record.get("finished_ns") is None:
        raise ValueError(f"{path}: stage {stage} did not finish")
    return record


def finished_runs(runs: str | os.PathLike | Iterable[str | os.PathLike]) -> list[Path]:
    """The open-set runs among ``runs`` (run folders, folders of them or globs) whose stages
    01-03 all finished; an unfinished one is named and left out."""
    from ferlib.report import find_runs

    out = []
    for run in find_runs(runs):
        try:
            for stage in (STAGE01, *RESCORED):
                _record(run, stage)
        except ValueError as exc:
            print(f"left out: {exc}", file=sys.stderr)
            continue
        out.append(run)
    return out


def twin_parameters(run: Path, changes: Mapping[str, Any]) -> dict[str, Any]:
    """Every parameter ``run``'s stages 02 and 03 ran with, ``changes`` applied. A key neither
    stage took is refused (it would change nothing)."""
    params: dict[str, Any] = {}
    for stage in RESCORED:
        params.update(_record(run, stage)["params"])
    unknown = sorted(set(changes) - set(params))
    if unknown:
        raise ValueError(f"{run}: stages 02-03 take no parameter {unknown}; they took {sorted(params)}")
    params.update(changes)
    for key in NOT_COPIED:
        params.pop(key, None)
    return params


def make_twin(run: Path, out: Path) -> Path:
    """``out/<run name>``: ``run``'s manifest, stage 01 record and stage 01 files, copied (files
    already there are kept: idempotent). Returns the twin's folder."""
    twin = out / run.name
    if twin.resolve() == run.resolve():
        raise ValueError(f"{out}: the twin would overwrite the run {run}; choose another folder")
    (twin / "01_close_set").mkdir(parents=True, exist_ok=True)
    (twin / "stages").mkdir(exist_ok=True)
    if not (run / "01_close_set" / "best.pt").is_file():
        raise ValueError(f"{run / '01_close_set'}: no best.pt: the close-set model is missing")
    for name in STAGE01_FILES:
        source, target = run / "01_close_set" / name, twin / "01_close_set" / name
        if source.is_file() and not target.exists():
            shutil.copy2(source, target)
    record = twin / "stages" / f"{STAGE01}.json"
    if not record.exists():
        shutil.copy2(run / "stages" / f"{STAGE01}.json", record)
    if not (twin / "manifest.json").exists():
        manifest = read_json(run / "manifest.json")
        for section in ("pseudo_labels", "detection", "metrics"):  # the twin's own stages write these
            manifest.pop(section, None)
        write_json(twin / "manifest.json", manifest)
    return twin


def twin_command(
    twin: Path, params: Mapping[str, Any], python: str = sys.executable, executor: str = "python"
) -> list[str]:
    """The runner call that runs stages 02-03 in ``twin`` with ``params``."""
    cmd = [python, "-m", "ferlib.run", "pipeline", "--outputs", str(twin.parent), "--run", twin.name]
    cmd += ["--stages", "02", "03", "--executor", executor]
    for key, flag in FLAGS.items():
        if key in params and params[key] is not None:
            cmd += [flag, str(params[key])]
    for key, value in params.items():
        if key not in FLAGS:
            cmd += ["-p", f"{key}={value!r}"]
    return cmd


def rescore(
    runs: str | os.PathLike | Sequence[str | os.PathLike],
    out: str | os.PathLike,
    changes: Mapping[str, Any],
    device: str | None = None,
    jobs: int = 1,
    executor: str = "python",
    dry_run: bool = False,
    python: str = sys.executable,
) -> list[Path]:
    """Twin every finished run of ``runs`` under ``out`` and run its stages 02-03 with
    ``changes``; ``device`` replaces the runs' device (a model trained on a GPU rescored on a
    CPU). ``jobs`` twins at a time, each with ``OMP_NUM_THREADS`` cores / ``jobs``. Returns the
    twins' folders; raises ``RuntimeError`` naming the twins whose runner call failed."""
    found = finished_runs(runs)
    if not found:
        raise ValueError(f"no finished open-set run in {runs!r}")
    out = Path(out)
    changes = dict(changes)
    if device is not None:
        changes["device"] = device
    plans = []
    for run in found:
        params = twin_parameters(run, changes)
        twin = out / run.name
        cmd = twin_command(twin, params, python=python, executor=executor)
        plans.append((run, twin, cmd))
    if dry_run:
        for _, _, cmd in plans:
            print(shlex.join(cmd))
        return [twin for _, twin, _ in plans]

    threads = max(1, (os.cpu_count() or 1) // max(1, jobs))
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", str(threads))}

    def one(plan) -> tuple[Path, int]:
        run, twin, cmd = plan
        make_twin(run, out)
        modify_manifest(
            twin,
            lambda m: {**m, "rescored_from": {"run": str(run.resolve()), "changes": _jsonable(changes)}},
        )
        print(f"== {twin.name}: stages 02-03 again, {changes}", flush=True)
        return twin, subprocess.call(cmd, env=env)

    with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
        results = list(pool.map(one, plans))
    failed = [twin.name for twin, rc in results if rc != 0]
    if failed:
        raise RuntimeError(f"stages 02-03 failed in {len(failed)} twin(s): {', '.join(failed)}; run again to resume")
    return [twin for twin, _ in results]


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


def paired_difference(
    base: Sequence[Path], twins: Sequence[Path], metrics: Sequence[str] = ("auroc", "fpr95")
) -> pd.DataFrame:
    """Per detector and protocol: each metric in the base runs and in their twins (matched by
    folder name), and the twin minus the base, as the headline tables report them: the mean over
    open classes within a seed, then mean and standard deviation (ddof 1) over seeds. Also the
    evaluation rows per run (mean over runs) on both sides. Runs without a twin are left out."""
    from ferlib.tables import collect_runs

    by_name = {Path(t).name: Path(t) for t in twins}
    pairs = [(Path(b), by_name[Path(b).name]) for b in base if Path(b).name in by_name]
    if not pairs:
        raise ValueError("no base run has a twin of the same name")
    a = collect_runs([b for b, _ in pairs])
    b = collect_runs([t for _, t in pairs])
    keys = ["dataset", "open_class", "seed", "detector", "protocol"]
    a = a[a["eval_subset"].fillna("all") == "all"] if "eval_subset" in a else a
    b = b[b["eval_subset"].fillna("all") == "all"] if "eval_subset" in b else b
    merged = a.merge(b, on=keys, suffixes=("_base", "_twin"), validate="one_to_one")
    for m in metrics:
        merged[f"{m}_diff"] = merged[f"{m}_twin"] - merged[f"{m}_base"]
    merged["n_base"] = merged["n_close_base"] + merged["n_open_base"]
    merged["n_twin"] = merged["n_close_twin"] + merged["n_open_twin"]
    values = [f"{m}_{side}" for m in metrics for side in ("base", "twin", "diff")]
    per_seed = merged.groupby(["dataset", "detector", "protocol", "seed"], sort=False)[
        values + ["n_base", "n_twin"]
    ].mean()
    grouped = per_seed.groupby(["dataset", "detector", "protocol"], sort=False)
    table = grouped[values].mean().add_suffix("_mean").join(grouped[values].std(ddof=1).add_suffix("_std"))
    table = table.join(grouped[["n_base", "n_twin"]].mean()).join(grouped.size().rename("seeds"))
    classes = (
        merged.groupby(["dataset", "detector", "protocol"], sort=False)["open_class"].nunique().rename("open_classes")
    )
    return table.join(classes).reset_index()


def difference_markdown(table: pd.DataFrame, base: str = "without", twin: str = "with") -> str:
    """:func:`paired_difference` as one Markdown table per protocol, detectors in the runs' order."""
    lines = []
    for protocol, part in table.groupby("protocol", sort=False):
        lines += [
            f"### {protocol} protocol",
            "",
            f"| detector | AUROC {base} | AUROC {twin} | difference | FPR@95 {base} | FPR@95 {twin} | difference |",
            "|:--|--:|--:|--:|--:|--:|--:|",
        ]
        for _, row in part.iterrows():
            cells = [row["detector"]]
            for m in ("auroc", "fpr95"):
                for side in ("base", "twin", "diff"):
                    mean, std = row[f"{m}_{side}_mean"], row[f"{m}_{side}_std"]
                    sign = "+" if side == "diff" and mean >= 0 else ""
                    cells.append(f"{sign}{mean:.3f} ± {std:.3f}" if np.isfinite(std) else f"{sign}{mean:.3f}")
            lines.append("| " + " | ".join(cells) + " |")
        first = part.iloc[0]
        lines += [
            "",
            f"Mean over {int(first['open_classes'])} open classes within a seed, then mean ± std over "
            f"{int(first['seeds'])} seed(s); evaluation rows per run: {first['n_base']:.0f} {base}, "
            f"{first['n_twin']:.0f} {twin}. Difference = {twin} minus {base}, paired by run.",
            "",
        ]
    return "\n".join(lines)
