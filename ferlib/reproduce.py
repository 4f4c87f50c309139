"""One command per paper table: every run it needs, resumable, with its time told first.

    python -m ferlib.run reproduce openset --dataset ferplus --data-root data/ferplus --seeds 0 1 2
    python -m ferlib.run reproduce noisy --dataset ferplus --data-root data/ferplus --seeds 0 1 2
    python -m ferlib.run reproduce openset ... --dry-run              # the plan and its time only
    python -m ferlib.run reproduce openset ... --budget-minutes 240   # refuse a plan that is longer

``openset``: the open-set paper's table. Every expression held out in turn x seeds, stages
01-03 with every detector the kit reports (the post-hoc baselines, pytorch-ood's detectors,
``tknn``, SAL, ``pseudo_oe`` with the data set's preset where it has one, the paper's ``cycle``
method and its ``released`` variant, PROSER and ERD), under both protocols; then the tables
(``ferlib.run tables``: one row per open class, mean ± std over seeds, the published numbers
beside). ``noisy``: stage 05's grid (cross-entropy, RUL, ESR and MA-Net with and without the
diversity loss; clean, symmetric 10/20/30%, pair 20% and the annotators' votes where the data
set has them) x seeds, with its summary table and figures.

Both run the kit's recommended engine by default (``--engine``; ``ferlib.engines``) and take
``-p key=value`` like every other command. Finished runs are skipped and killed ones resume,
so a plan longer than one sitting is re-run until it is done.

The time printed before the start is an estimate: the mean wall time of this plan's finished
runs once there are any, else the figures measured on 2 CPU cores below (FERPlus, 28,217
training images) scaled by the training split's size, divided by 10 for a GPU (the H100 rows
of docs/RESULTS.md). It is rough, and said to be.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ferlib.stages import POSTHOC_DETECTORS

#: the detectors ``reproduce openset`` runs: the kit's reported FERPlus list, then the paper's
#: method, its released variant and the trained baselines
OPENSET_DETECTORS: tuple[str, ...] = (
    *POSTHOC_DETECTORS,
    "tknn",
    "vim",
    "react",
    "ash",
    "scale",
    "gen",
    "fdbd",
    "nnguide",
    "rmd",
    "openmax",
    "pood_knn",
    "sal_filter",
    "sal",
    "pseudo_oe",
    "cycle",
    "released",
    "proser",
    "erd",
)
#: data sets with a frozen ``pseudo_oe`` preset (ferlib/openset/presets.py)
PRESETS: dict[str, str] = {"ferplus": "ferplus"}

#: minutes per run on 2 CPU cores for FERPlus's 28,217 training images, by engine, pieced
#: together from measured parts (docs/RESULTS.md and the journal): stage 01 at the engine's
#: settings (quick 8.5 min; scratch about 90 min in fp32, 48.5 measured under bf16; face about 70
#: min for 15 epochs at 112 px in fp32, 35 measured under bf16), stage 02 about 2 min, stage 03's
#: post-hoc detectors, tknn, SAL and pseudo_oe about 15 min, PROSER about 4 min per epoch (10),
#: ERD and the cycle method together about as much again at 32 px, more at 48-112 px. One
#: noisy-label run = stage 01 alone. Replaced by this plan's own runs once one has finished.
CPU_MINUTES_PER_RUN: dict[str, dict[str, float]] = {
    "openset": {"quick": 110.0, "scratch": 190.0, "face": 230.0},
    "noisy": {"quick": 10.0, "scratch": 80.0, "face": 70.0},
}
FERPLUS_TRAIN = 28_217
GPU_SPEEDUP = 10.0


@dataclass
class Plan:
    """What a reproduce command will run, and how long it is expected to take."""

    table: str
    dataset: str
    runs: int
    engine: str
    minutes: float
    basis: str
    outputs: Path

    def describe(self) -> str:
        hours = self.minutes / 60
        return (
            f"reproduce {self.table}: {self.runs} runs on {self.dataset} (engine {self.engine}) into "
            f"{self.outputs}; about {self.minutes:.0f} min ({hours:.1f} h) left, {self.basis}"
        )


def _finished_minutes(outputs: Path, table: str) -> list[float]:
    """Wall minutes of this plan's finished runs (from their manifests / results)."""
    minutes = []
    if table == "openset":
        for manifest in outputs.glob("*/manifest.json"):
            stages = json.loads(manifest.read_text()).get("stages", {})
            done = [s for s in stages.values() if s.get("status") == "finished"]
            if any(name.startswith("03") for name, s in stages.items() if s.get("status") == "finished"):
                minutes.append(sum(float(s.get("wall_s") or 0) for s in done) / 60)
    else:
        for result in outputs.glob("**/01_close_set/results.json"):
            seconds = json.loads(result.read_text()).get("wall_seconds")
            if seconds:
                minutes.append(float(seconds) / 60)
    return minutes


def estimate(
    table: str,
    dataset: str,
    runs: int,
    done: int,
    engine: str,
    device: str,
    outputs: Path,
    n_train: int | None,
) -> tuple[float, str]:
    """Minutes left for ``runs - done`` runs, and what the figure rests on."""
    left = max(runs - done, 0)
    finished = _finished_minutes(outputs, table)
    if finished:
        per_run = sum(finished) / len(finished)
        return left * per_run, f"from this plan's {len(finished)} finished runs ({per_run:.0f} min each)"
    per_run = CPU_MINUTES_PER_RUN[table].get(engine, max(CPU_MINUTES_PER_RUN[table].values()))
    scale = (n_train / FERPLUS_TRAIN) if n_train else 1.0
    per_run *= scale
    basis = "measured on 2 CPU cores for FERPlus"
    if n_train:
        basis += f", scaled to {n_train:,} training images"
    if device != "cpu":
        per_run /= GPU_SPEEDUP
        basis += f", divided by {GPU_SPEEDUP:.0f} for a GPU"
    return left * per_run, f"a rough estimate ({basis}; {per_run:.0f} min per run)"


def _count(dataset: str, data_root: str | None, data_options: Mapping[str, Any] | None) -> int | None:
    from ferlib.engines import count_training_images

    try:
        return count_training_images(dataset, data_root, data_options)
    except (OSError, ValueError):
        return None


def reproduce(
    table: str,
    dataset: str,
    *,
    data_root: str | None = None,
    seeds: Sequence[int] = (0, 1, 2),
    device: str = "cpu",
    engine: str = "auto",
    extra: Mapping[str, Any] | None = None,
    outputs: str | Path | None = None,
    budget_minutes: float | None = None,
    dry_run: bool = False,
    executor: str = "python",
    records: str | Path | None = None,
    say: Callable[[str], None] = print,
    **runner: Any,
) -> Plan:
    """Plan, estimate, then run the runs of ``table`` (``openset`` or ``noisy``) and write its
    tables. Raises ``ValueError`` before any work when the estimate exceeds ``budget_minutes``.
    ``records``: a folder of committed records that finished runs (open set) or combinations
    (noisy) are restored from and saved to (:mod:`ferlib.records`), so the table can be made
    over several machines."""
    import inspect

    from ferlib import run as runner_module
    from ferlib.emotions import BASIC7
    from ferlib.engines import ENGINES, apply_engine, resolve_engine

    if table not in ("openset", "noisy"):
        raise ValueError(f"reproduce: unknown table {table!r}; choose openset or noisy")
    params = dict(extra or {})
    chosen, reason = resolve_engine(engine, dataset, data_root, params.get("data_options"))
    # one folder per engine: another engine's runs would re-run (their keys differ) over these
    out = (
        Path(outputs) if outputs else runner_module.REPO_ROOT / "outputs" / f"reproduce_{table}_{dataset}_{chosen.name}"
    )
    n_train = _count(dataset, data_root, params.get("data_options"))
    stage_names = ["01", "02", "03"] if table == "openset" else ["05"]
    accepted = {
        name
        for stage in runner_module.STAGES
        if stage.name[:2] in stage_names
        for name in inspect.signature(stage.function()).parameters
    }
    missing = sorted(set(chosen.params) - accepted - {"embed_method"})
    if missing:
        raise ValueError(f"reproduce {table}: engine {chosen.name!r} sets {missing}, which its stages do not take")
    params = apply_engine(chosen, params, accepted)
    if table == "openset":
        runs = len(BASIC7) * len(seeds)
        params.setdefault("detectors", list(OPENSET_DETECTORS))
        if dataset in PRESETS:
            params.setdefault("detector_preset", PRESETS[dataset])
        done = len(_finished_minutes(out, table))  # runs whose manifest says stage 03 finished
    else:
        from ferlib.noisy import METHODS, default_noise

        noise = params.get("noise") or default_noise(dataset)
        runs = len(params.get("methods") or METHODS) * len(noise) * len(seeds)
        params.setdefault("seeds", list(seeds))
        done = len(list(out.glob("**/01_close_set/results.json"))) if out.exists() else 0
    minutes, basis = estimate(table, dataset, runs, done, chosen.name, device, out, n_train)
    plan = Plan(table, dataset, runs, chosen.name, minutes, basis, out)
    say(f"engine {chosen.name}: {reason} ({ENGINES[chosen.name].why})")
    say(plan.describe() + (f"; {done} already finished" if done else ""))
    if budget_minutes is not None and minutes > budget_minutes:
        raise ValueError(
            f"reproduce {table}: about {minutes:.0f} min left, over --budget-minutes {budget_minutes:g}; "
            "raise the budget, use a GPU (--device cuda), fewer --seeds, or --engine quick for a first look"
        )
    if dry_run:
        return plan
    if table == "openset":
        runner_module.run_sweep(
            dataset,
            open_classes=["all"],
            seeds=list(seeds),
            data_root=data_root,
            device=device,
            outputs=out,
            stages=["01", "02", "03"],
            executor=executor,
            extra=params,
            records=records,
            **runner,
        )
        from ferlib.report import collect_results

        collect_results([str(out / f"{dataset}_open-*")], out_dir=out / "tables")
        say(f"tables: {out / 'tables'} (<dataset>_<metric>_<protocol>.md / .csv / .tex / .png)")
    else:
        if records is not None:
            params["records_dir"] = str(records)
        runner_module.run_pipeline(
            dataset,
            data_root=data_root,
            open_class=None,
            device=device,
            run="noisy",
            outputs=out,
            stages=["05"],
            executor=executor,
            extra=params,
            **runner,
        )
        say(f"tables: {out / 'noisy' / '05_noisy_labels'} (summary.csv, detection_summary.csv, figures/)")
    return plan
