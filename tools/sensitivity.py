"""Sensitivity of a post-hoc detector to one of its parameters, on a finished run (stage 02 done).

Scores the run's evaluation set with ``--detector`` once per value of ``--param`` and prints
AUROC and FPR@95 per (protocol, value); the table goes to ``<run>/sensitivity_<detector>_<param>.csv``.
Only detectors that read the close-set model's saved outputs (no images, no training) are
accepted: for those a sweep takes seconds and changes no file of the run.

On the reported evaluation set (``--eval-subset all``, the default) this is a *sensitivity
check reported after the fact*, not a way to choose a value: a parameter chosen on the
numbers a table reports is tuned on its test set. ``--choose-on tuning`` is the way to
choose: it sweeps the tuning set (the validation split's close and open rows, never
reported; stage 03 with ``eval_subset="tuning"`` computes its outputs first) and picks the
value with the best mean tuning AUROC over the runs given, by the code. The reported set's
numbers are neither computed nor printed beside the choice unless ``--show-reported`` asks
for them (after the choice is made, for a record of what it gave). ``--choose-on`` refuses
``all`` and ``test``: the test split's rows are part of the reported set.

    .venv/bin/python tools/sensitivity.py --run-dir outputs/ferplus_open-surprise_seed0 \\
        --detector tknn --param k --values 10 50 100 200
    .venv/bin/python tools/sensitivity.py --run-dir outputs/sweep_fast32/ferplus_open-*_seed0 \\
        --detector tknn --param k --values 10 25 50 100 200 --choose-on tuning [--show-reported]
"""

from __future__ import annotations

import argparse
import ast
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from ferlib import stages  # noqa: E402
from ferlib.io import write_csv, write_text  # noqa: E402
from ferlib.metrics import openset_metrics  # noqa: E402
from ferlib.openset.fraction import match_open_share  # noqa: E402
from ferlib.openset.registry import detector_class, detector_parameters  # noqa: E402
from ferlib.openset.scoring import run_detectors  # noqa: E402
from ferlib.report import run_seed  # noqa: E402


def sweep(
    run_dir: str,
    detector: str,
    param: str,
    values: list,
    protocols=("honest",),
    params: dict | None = None,
    eval_subset: str = "all",
    open_share: float | None = None,
    draws: int = 1,
) -> pd.DataFrame:
    """One row per (protocol, value): the detector's AUROC and FPR@95 with ``param = value``
    on ``eval_subset`` (``all``, ``test`` or ``tuning``) of the run.

    With ``open_share``, the rows are first subsampled to that open share
    (:func:`ferlib.openset.fraction.match_open_share`), ``draws`` seeded draws (generator
    ``[run seed, draw]``), one row per (protocol, draw, value), and the subset is named
    ``<eval_subset>_matched``. Why: a transductive detector's settings should be chosen at the
    open share of the set they will be reported on."""
    cls = detector_class(detector)
    if cls.needs_images or cls.needs_train_images or cls.trains_networks:
        raise ValueError(
            f'{detector} trains on images; sweep it through stage 03 (-p "detector_params={{...}}"), not here'
        )
    if param not in detector_parameters(detector):
        raise ValueError(f"{detector} has no parameter {param!r}; it accepts {sorted(detector_parameters(detector))}")
    seed = run_seed(Path(run_dir), 0)
    rows = []
    if draws < 1:
        raise ValueError(f"draws must be at least 1, got {draws}")
    label = eval_subset if open_share is None else f"{eval_subset}_matched"
    for protocol in protocols:
        full = stages.load_openset_data(run_dir, protocol, eval_subset=eval_subset, seed=seed)
        parts = [(0, full)]
        if open_share is not None:
            parts = [
                (d, full.subset(match_open_share(full.is_open, open_share, np.random.default_rng([seed, d]))))
                for d in range(draws)
            ]
        for draw, data in parts:
            rows += _score_values(data, detector, param, values, params, seed, protocol, label, draw)
    return pd.DataFrame(rows)


def _score_values(data, detector, param, values, params, seed, protocol, label, draw) -> list[dict]:
    is_open = data.is_open
    rows = []
    for value in values:
        setting = {detector: {**(params or {}), param: value}}
        score = run_detectors(data, [detector], setting, shared={"seed": seed}, log=False)[detector].scores
        m = openset_metrics(score, is_open)
        rows.append(
            {
                "detector": detector,
                "param": param,
                "value": value,
                "protocol": protocol,
                "eval_subset": label,
                "draw": draw,
                "n": len(data),
                "auroc": m["auroc"],
                "fpr95": m["fpr95"],
                **{k: m[k] for k in ("aupr_in", "aupr_out", "n_close", "n_open")},
            }
        )
    return rows


#: evaluation subsets whose rows are reported (``test`` is the reported set's test-split rows):
#: never a place to choose a setting
REPORTED_SUBSETS = ("all", "test")


def _run_table(
    run: str, detector: str, param: str, values: list, choose_on: str, report: str | None, params: dict | None
) -> pd.DataFrame:
    """One run's rows on ``choose_on`` and, unless ``report`` is None, on ``report``, in this process."""
    parts = [
        sweep(run, detector, param, values, params=params, eval_subset=subset).assign(run=Path(run).name)
        for subset in (choose_on, report)
        if subset is not None
    ]
    return pd.concat(parts, ignore_index=True)


def _run_table_in_subprocess(
    run: str,
    detector: str,
    param: str,
    values: list,
    choose_on: str,
    params: dict | None,
    folder: Path,
    report: str | None = "all",
) -> pd.DataFrame:
    """The same rows, computed by this script in a child process (``--jobs``): each child
    imports its own torch, so runs proceed side by side on separate cores."""
    out = folder / f"{Path(run).name}.csv"
    argv = [sys.executable, str(Path(__file__).resolve()), "--run-dir", run, "--detector", detector]
    argv += ["--param", param, "--values", *map(repr, values), "--params", repr(params or {})]
    argv += ["--choose-on", choose_on, "--out", str(out), "--jobs", "1"]
    argv += ["--show-reported"] if report is not None else []
    done = subprocess.run(argv, capture_output=True, text=True)
    if done.returncode != 0:
        raise ValueError(f"{run}: {done.stderr.strip().splitlines()[-1] if done.stderr.strip() else 'failed'}")
    table = pd.read_csv(out, keep_default_na=False)
    table["value"] = table["setting"].map(ast.literal_eval)  # the values as given, not as CSV text
    return table.drop(columns="setting")


def choose(
    run_dirs: list[str],
    detector: str,
    param: str,
    values: list,
    choose_on: str = "tuning",
    report: str | None = "all",
    params: dict | None = None,
    min_gain: float = 0.0,
    jobs: int = 1,
) -> tuple[object, pd.DataFrame]:
    """``(value, table)``: the value with the best mean honest AUROC on ``choose_on`` over
    ``run_dirs`` (the first on a tie), and every run's rows on ``choose_on`` and ``report``
    (column ``run``; ``report=None``: the reported rows are not scored at all).
    ``params``: the detector's other settings (earlier choices), held fixed. ``min_gain``:
    the first value is the incumbent and stays unless the best beats its tuning mean by more
    than this (a margin for the tuning set's own noise, declared before the reported numbers
    are computed). ``jobs``: runs scored at a time, each in a child process (the same rows
    as ``jobs=1``; give each child ``OMP_NUM_THREADS`` = cores / jobs).

    ``choose_on`` may not be a subset whose rows are reported (:data:`REPORTED_SUBSETS`:
    ``all``, and ``test``, the reported set's test-split rows): a value chosen there is tuned
    on the numbers it reports."""
    if choose_on in REPORTED_SUBSETS or choose_on == report:
        raise ValueError(
            f"cannot choose on {choose_on!r}: its rows are part of the reported evaluation set "
            "('all', and 'test', its test-split rows), so a value chosen there is tuned on the numbers it "
            "reports; choose on 'tuning' (the validation split's close and open rows, never reported)"
        )
    if jobs < 1:
        raise ValueError(f"jobs must be at least 1, got {jobs}")
    if jobs == 1 or len(run_dirs) == 1 or report not in ("all", None):
        parts = [_run_table(run, detector, param, values, choose_on, report, params) for run in run_dirs]
    else:
        with tempfile.TemporaryDirectory() as folder, ThreadPoolExecutor(jobs) as pool:
            parts = list(
                pool.map(
                    lambda run: _run_table_in_subprocess(
                        run, detector, param, values, choose_on, params, Path(folder), report
                    ),
                    run_dirs,
                )
            )
    table = pd.concat(parts, ignore_index=True)
    table["setting"] = table["value"].map(repr)  # hashable for grouping: values may be dicts (first_params)
    on = table[table["eval_subset"] == choose_on].groupby("setting", sort=False)["auroc"].mean()
    best = pick(on, min_gain)
    return next(v for v in values if repr(v) == best), table  # the value as given, not pandas' copy


def pick(means: pd.Series, min_gain: float = 0.0):
    """The declared rule on mean tuning AUROCs (index: the candidates, the incumbent first):
    the best, unless it beats the incumbent by ``min_gain`` or less; then the incumbent (also
    on a tie). One function, so every choice of the kit applies the same rule."""
    best = means.idxmax()
    return means.index[0] if means[best] - means.iloc[0] <= min_gain else best


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run-dir", required=True, nargs="+", help="one run, or several with --choose-on")
    ap.add_argument("--detector", required=True)
    ap.add_argument("--param", required=True)
    ap.add_argument("--values", nargs="+", required=True, help="values (Python literals)")
    ap.add_argument("--params", default="{}", help="the detector's other settings, held fixed (a Python dict literal)")
    ap.add_argument("--protocols", nargs="+", default=["honest"])
    ap.add_argument("--eval-subset", default="all", choices=stages.EVAL_SUBSETS)
    ap.add_argument(
        "--choose-on",
        choices=stages.EVAL_SUBSETS,
        help="pick the value on this subset (honest protocol): tuning; all and test are refused (reported rows)",
    )
    ap.add_argument(
        "--show-reported",
        action="store_true",
        help="with --choose-on: also score the reported set and print its numbers beside each value and the choice",
    )
    ap.add_argument(
        "--min-gain",
        type=float,
        default=0.0,
        help="with --choose-on: keep the first value (the incumbent) unless another beats its tuning mean by more",
    )
    ap.add_argument("--out", help="with --choose-on: the combined table (CSV); default: printed only")
    ap.add_argument(
        "--choice-out",
        help="with --choose-on: write the chosen value (a Python literal) to this file, for scripts that chain choices",
    )
    ap.add_argument(
        "--jobs",
        type=int,
        default=1,
        help="with --choose-on: runs scored at a time, each in a child process (set OMP_NUM_THREADS to cores / jobs)",
    )
    args = ap.parse_args(argv)

    def literal(text: str):
        try:
            return ast.literal_eval(text)
        except (ValueError, SyntaxError):
            return text

    values = [literal(v) for v in args.values]
    base = literal(args.params)
    if not isinstance(base, dict):
        print(f"error: --params must be a dict literal, got {args.params!r}", file=sys.stderr)
        return 2
    fmt = lambda x: f"{x:.3f}"  # noqa: E731
    try:
        if args.choose_on:
            value, table = choose(
                args.run_dir,
                args.detector,
                args.param,
                values,
                args.choose_on,
                report="all" if args.show_reported else None,
                params=base,
                min_gain=args.min_gain,
                jobs=args.jobs,
            )
        elif len(args.run_dir) > 1:
            raise ValueError("several --run-dir values need --choose-on")
        else:
            table = sweep(
                args.run_dir[0], args.detector, args.param, values, args.protocols, base, eval_subset=args.eval_subset
            )
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.choose_on:
        wide = table.pivot_table(index="setting", columns="eval_subset", values="auroc", aggfunc="mean", sort=False)
        print(
            table.pivot_table(index="run", columns=["eval_subset", "setting"], values="auroc").to_string(
                float_format=fmt
            )
        )
        print(f"\nmean AUROC over {len(args.run_dir)} runs:\n{wide.to_string(float_format=fmt)}")
        if args.show_reported:
            print(
                f"chosen on {args.choose_on}: {args.param} = {value!r}; its mean AUROC on the reported set: "
                f"{wide.loc[repr(value), 'all']:.3f}"
            )
        else:
            print(f"chosen on {args.choose_on}: {args.param} = {value!r} (reported set not scored; --show-reported)")
        if args.out:
            write_csv(Path(args.out), table)
            print(f"wrote {args.out}")
        if args.choice_out:
            write_text(Path(args.choice_out), repr(value) + "\n")
            print(f"wrote {args.choice_out}")
        return 0
    suffix = "" if args.eval_subset == "all" else f"_{args.eval_subset}"
    out = Path(args.run_dir[0]) / f"sensitivity_{args.detector}_{args.param}{suffix}.csv"
    write_csv(out, table)
    print(table.to_string(index=False, float_format=fmt))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
