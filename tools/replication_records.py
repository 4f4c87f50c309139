"""Open-set FERPlus's declared replications as per-run records that outlive their machine.

Why. The rule (docs/journal/openset_ferplus_rules.md, "Declared before seeds 3-5 exist")
needs 21 close-set runs, about 7.5 hours on 2 CPU cores, and a session's machine keeps nothing of ``outputs/``: the
first attempt lost 14 finished runs that way. Yet the rule reads little of a run. Its two
choices need, per run, ``pseudo_oe``'s AUROC on the tuning rows under the four combinations of
the two candidate settings (``share_multiplier`` 0 or 1, ``features`` penultimate or pyramid);
its report needs the run's ``metrics.csv`` (the other 19 detectors) and ``pseudo_oe``'s
reported metrics under the chosen combination. So each finished run leaves a *record* of a few
kilobytes, committed to the repository, and the rule is applied to the records, by this code,
once all 21 exist, whichever sessions and machines made them:

``record RUN... --out DIR``
    For each finished run (stages 01-03 and stage 03 on the tuning rows): scores ``pseudo_oe``
    (``--params``, the FERPlus settings, plus each combination) on the tuning rows (honest) and
    the reported rows (both protocols) with :func:`tools.sensitivity.sweep`, and writes
    ``DIR/<run>/pseudo_oe_settings.csv`` beside copies of ``metrics.csv`` and ``manifest.json``.
``report DIR --out TABLES``
    Checks that the records are complete (``--expect``), makes the two choices on the mean
    honest tuning AUROC over the runs with :func:`tools.sensitivity.pick` (the incumbent first,
    kept unless beaten by more than ``--min-gain``), writes ``TABLES/choices.csv``, then each
    run's metrics with ``pseudo_oe``'s reported rows from the chosen combination
    (``TABLES/runs/<run>/``) and the reproduction tables from those (``ferlib.run tables``).
    It prints the choices and where the tables are, no AUROC of the reported rows.

``record RUN... --out DIR --variants "{NAME: SETTINGS, ...}"`` and ``report DIR --declared NAME``
or ``report DIR --incumbent NAME --choose-on tuning_matched --min-gain G``
    Named variants instead of the two candidates' grid: each record holds ``pseudo_oe`` under
    every variant (a dict of settings, or a detector preset's name such as ``'ferplus'``) on
    the tuning, matched tuning and reported rows. ``report`` takes one variant's reported rows
    for the tables, either ``--declared`` (a rule that chooses nothing on these runs) or chosen
    on the tuning rows alone (``--incumbent`` kept within the margin), and writes every
    variant's means beside them (``TABLES/variants.csv``; printed beside the tuning means only
    with ``--show-reported``).

The *matched* tuning rows are the tuning rows subsampled to the reported set's open share as
estimated without its labels (:func:`estimated_open_share`, ``pseudo_oe``'s own estimate
against the held-out close rows), never the share counted from the reported set's labels.

The reported rows of every combination are computed at record time, before the choice, and
stored; the choice reads only the tuning rows (``report`` filters them by code). As a check
that the two scoring paths agree, ``report`` prints the largest difference between stage 03's
``pseudo_oe`` AUROC and the record's incumbent combination (the same settings).

    .venv/bin/python tools/replication_records.py record outputs/sweep_fast32/ferplus_open-*_seed[345] \\
        --out docs/results/ferplus_openset_seeds3-5
    .venv/bin/python tools/replication_records.py report docs/results/ferplus_openset_seeds3-5 \\
        --out outputs/tables_fast32_seeds345
"""

from __future__ import annotations

import argparse
import ast
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pandas as pd  # noqa: E402

from ferlib.io import read_json, write_csv, write_json  # noqa: E402
from ferlib.tables import open_short  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sensitivity import pick, sweep  # noqa: E402

#: the FERPlus settings of pseudo_oe (docs/RESULTS.md), held fixed while the two candidates vary
FERPLUS_SETTINGS = {"top_fraction": 0.2, "rounds": 3, "first_params": {"k": 200}, "head": "mlp"}
#: the rule's candidates, each incumbent first
SHARES = (0.0, 1.0)
FEATURES = ("penultimate", "pyramid")
SETTINGS_FILE = "pseudo_oe_settings.csv"
COPIED = ("metrics.csv", "manifest.json")


#: the rounds of ``pseudo_oe`` whose last estimate :func:`estimated_open_share` reads, at least
#: (its share estimate acts from the second round on)
ESTIMATE_MIN_ROUNDS = 2


def estimated_open_share(run_dir: str | Path, params: dict | None = None) -> float:
    """The open share of the run's reported evaluation set (honest protocol), estimated without
    a label of it: ``pseudo_oe``'s own estimate (``share_multiplier`` 1, its last round;
    best-bin estimation of :mod:`ferlib.openset.share` against the held-out close reference
    rows, which share no row with the reported set), with ``params`` (default:
    :data:`FERPLUS_SETTINGS`) for its other settings.

    Why not the counted share: the matched tuning rows are where settings are chosen, and a
    share counted from the reported rows' labels would carry a number of the reported set into
    that choice. The detector reads the same unlabeled rows when it runs there; the matching
    reads nothing more. The estimate errs low where open rows reach the chosen bin (module
    docstring of :mod:`ferlib.openset.share`)."""
    from ferlib import stages
    from ferlib.openset import make_detector
    from ferlib.report import run_seed

    run = Path(run_dir)
    seed = run_seed(run, 0)
    data = stages.load_openset_data(str(run), "honest", eval_subset="all", seed=seed)
    if data.reference_features is None:
        raise ValueError(
            f"{run}: no held-out close rows to estimate the open share from (stage 03 with eval_subset='tuning' "
            "writes them)"
        )
    settings = {**(FERPLUS_SETTINGS if params is None else params), "share_multiplier": 1.0, "seed": seed}
    settings["rounds"] = max(int(settings.get("rounds", 1)), ESTIMATE_MIN_ROUNDS)
    detector = make_detector("pseudo_oe", **settings)
    detector.score(data.detector_view())  # the label-free view: no label, origin or path
    return float(detector.shares_[-1])


def record(run_dir: str | Path, out_root: str | Path, params: dict | None = None, matched_draws: int = 0) -> Path:
    """Score the four combinations on one finished run and write its record; returns its folder.

    With ``matched_draws`` N > 0 the record also holds the tuning rows subsampled to the reported
    set's open share as estimated without its labels (:func:`estimated_open_share`, in the
    column ``matched_share``), N seeded draws (``eval_subset`` ``tuning_matched``, a ``draw``
    column), for a rule that chooses on those."""
    run = Path(run_dir)
    _check_finished(run)
    base = dict(FERPLUS_SETTINGS if params is None else params)
    matched = estimated_open_share(run, base) if matched_draws else None
    parts = []
    for share in SHARES:
        fixed = {**base, "share_multiplier": share}
        for subset, protocols in (("tuning", ["honest"]), ("all", ["honest", "reference"])):
            table = sweep(str(run), "pseudo_oe", "features", list(FEATURES), protocols, fixed, eval_subset=subset)
            parts.append(table.rename(columns={"value": "features"}).assign(share_multiplier=share))
        if matched_draws:
            table = sweep(
                str(run), "pseudo_oe", "features", list(FEATURES), ["honest"], fixed, eval_subset="tuning",
                open_share=matched, draws=matched_draws,
            )  # fmt: skip
            table = table.rename(columns={"value": "features"})
            parts.append(table.assign(share_multiplier=share, matched_share=matched))
    settings = pd.concat(parts, ignore_index=True).drop(columns=["param"])
    settings["params"] = repr(base)
    return _write_record(run, out_root, settings)


def _check_finished(run: Path) -> None:
    for name in COPIED:
        if not (run / name).is_file():
            raise FileNotFoundError(f"{run}: no {name} (is the run finished?)")
    if not (run / "03_detect" / "scores_honest_tuning.csv").is_file():
        raise FileNotFoundError(f"{run}: no tuning rows (run stage 03 with eval_subset='tuning' first)")


def _write_record(run: Path, out_root: str | Path, settings: pd.DataFrame) -> Path:
    dest = Path(out_root) / run.name
    dest.mkdir(parents=True, exist_ok=True)
    for name in COPIED:
        shutil.copyfile(run / name, dest / f".{name}.tmp")
        (dest / f".{name}.tmp").replace(dest / name)
    write_csv(dest / SETTINGS_FILE, settings)  # last: its presence marks a complete record
    return dest


def resolve_variants(variants: dict) -> dict[str, dict]:
    """``{name: pseudo_oe settings}``; a value that is a string names a detector preset
    (:data:`ferlib.openset.presets.DETECTOR_PRESETS`), whose ``pseudo_oe`` settings it stands for."""
    from ferlib.openset.presets import DETECTOR_PRESETS

    if not isinstance(variants, dict) or not variants:
        raise ValueError(f"variants must be a non-empty dict {{name: settings or preset name}}, got {variants!r}")
    out = {}
    for name, value in variants.items():
        if isinstance(value, str):
            if value not in DETECTOR_PRESETS or "pseudo_oe" not in DETECTOR_PRESETS[value]:
                raise ValueError(f"variant {name!r}: no detector preset {value!r} with pseudo_oe settings")
            value = DETECTOR_PRESETS[value]["pseudo_oe"]
        if not isinstance(value, dict):
            raise ValueError(f"variant {name!r}: settings must be a dict or a preset name, got {value!r}")
        out[str(name)] = dict(value)
    return out


def record_variants(
    run_dir: str | Path,
    out_root: str | Path,
    variants: dict,
    matched_draws: int = 0,
    estimate_params: dict | None = None,
) -> Path:
    """Score ``pseudo_oe`` under each variant on one finished run (tuning rows, reported rows of
    both protocols and, with ``matched_draws``, the tuning rows matched to the reported set's
    open share estimated without its labels, :func:`estimated_open_share` with
    ``estimate_params``, one estimate for every variant) and write its record."""
    run = Path(run_dir)
    _check_finished(run)
    parts = []
    matched = None  # the estimated open share, one per run (the same rows for every variant)
    for name, params in resolve_variants(variants).items():

        def one(subset: str, protocols: list[str], name=name, params=params, **kw) -> pd.DataFrame:
            # every setting is in params; head_params is the one swept, at the variant's own value
            table = sweep(str(run), "pseudo_oe", "head_params", [params.get("head_params", {})], protocols, params,
                          eval_subset=subset, **kw)  # fmt: skip
            return table.drop(columns=["param", "value"]).assign(variant=name, params=repr(params))

        parts += [one("tuning", ["honest"]), one("all", ["honest", "reference"])]
        if matched_draws:
            matched = estimated_open_share(run, estimate_params) if matched is None else matched
            parts.append(
                one("tuning", ["honest"], open_share=matched, draws=matched_draws).assign(matched_share=matched)
            )
    return _write_record(run, out_root, pd.concat(parts, ignore_index=True))


def load_records(root: str | Path) -> dict[str, tuple[pd.DataFrame, pd.DataFrame, dict]]:
    """``{run name: (metrics, pseudo_oe settings, manifest)}`` of every complete record under ``root``."""
    out = {}
    for folder in sorted(p.parent for p in Path(root).glob(f"*/{SETTINGS_FILE}")):
        out[folder.name] = (
            pd.read_csv(folder / "metrics.csv"),
            pd.read_csv(folder / SETTINGS_FILE),
            read_json(folder / "manifest.json"),
        )
    return out


def choose(
    settings: pd.DataFrame, min_gain: float = 0.01, choose_on: str = "tuning", features_incumbent: str = FEATURES[0]
) -> tuple[float, str, pd.DataFrame]:
    """The rule's two choices from the records' tuning rows alone (``choose_on``: ``tuning``, or
    ``tuning_matched``, the mean over draws and runs): ``(share, features, steps)``. Step 1
    compares the shares at ``features_incumbent``, step 2 the features (that one first, so it
    is the one kept within the margin) at step 1's share."""
    if features_incumbent not in FEATURES:
        raise ValueError(f"features_incumbent must be one of {FEATURES}, got {features_incumbent!r}")
    order = [features_incumbent] + [f for f in FEATURES if f != features_incumbent]
    tuning = settings[(settings["eval_subset"] == choose_on) & (settings["protocol"] == "honest")]
    if tuning.empty:
        raise ValueError(f"the records hold no honest {choose_on!r} rows to choose on")
    runs = tuning["run"].nunique()
    per_combo = tuning.groupby(["share_multiplier", "features"])["run"].nunique()
    if (per_combo != runs).any() or len(per_combo) != len(SHARES) * len(FEATURES):
        raise ValueError(f"every record must hold every combination's tuning row; counts per combination:\n{per_combo}")
    mean = tuning.groupby(["share_multiplier", "features"])["auroc"].mean()
    step1 = pd.Series([mean[(s, order[0])] for s in SHARES], index=list(SHARES))
    share = pick(step1, min_gain)
    step2 = pd.Series([mean[(share, f)] for f in order], index=order)
    features = pick(step2, min_gain)
    steps = pd.DataFrame(
        [
            {"step": 1, "param": "share_multiplier", "candidate": repr(s), "features": order[0],
             "share_multiplier": s, "tuning_auroc_mean": step1[s], "runs": runs, "chosen": s == share}
            for s in SHARES
        ]
        + [
            {"step": 2, "param": "features", "candidate": repr(f), "features": f,
             "share_multiplier": share, "tuning_auroc_mean": step2[f], "runs": runs, "chosen": f == features}
            for f in order
        ]
    )  # fmt: skip
    return float(share), str(features), steps


def report(
    root: str | Path,
    out_dir: str | Path,
    expect: int = 21,
    min_gain: float = 0.01,
    say=print,
    choose_on: str = "tuning",
    features_incumbent: str = FEATURES[0],
) -> tuple[float, str]:
    """Apply the rule to the records under ``root``: choices, per-run metrics, tables."""
    records = load_records(root)
    if len(records) != expect:
        raise ValueError(f"{root}: {len(records)} complete record(s), the rule needs {expect}: {sorted(records)}")
    params = {repr_ for _, s, _ in records.values() for repr_ in s["params"].unique()}
    if len(params) != 1:
        raise ValueError(f"the records were scored with different fixed settings: {sorted(params)}")
    settings = pd.concat([s.assign(run=name) for name, (_, s, _) in records.items()], ignore_index=True)
    share, features, steps = choose(settings, min_gain, choose_on, features_incumbent)
    out = Path(out_dir)
    write_csv(out / "choices.csv", steps)
    chosen = {**ast.literal_eval(next(iter(params))), "share_multiplier": share, "features": features}
    say(f"chosen on the tuning rows of {len(records)} runs: {chosen}")
    say(steps[["step", "param", "candidate", "share_multiplier", "tuning_auroc_mean", "chosen"]].to_string(index=False))

    incumbent = lambda frame: frame[(frame["share_multiplier"] == SHARES[0]) & (frame["features"] == FEATURES[0])]  # noqa: E731
    chosen_rows = lambda frame: frame[(frame["share_multiplier"] == share) & (frame["features"] == features)]  # noqa: E731
    _write_runs(records, out, incumbent, chosen_rows, "the record's incumbent combination (same settings)", say)
    classes = sorted({open_short(m["params"]["open_class"]) for _, _, m in records.values()})
    say(f"tables of {len(records)} runs ({len(classes)} open classes) in {out}")
    return share, features


def _write_runs(records: dict, out: Path, same_as_stage03, reported, what: str, say=print) -> None:
    """Each run's metrics with ``pseudo_oe``'s reported rows taken from ``reported(record rows)``
    (every other row kept), under ``out/runs``, and the tables from them. ``same_as_stage03``
    picks the record rows scored with stage 03's own settings: the largest difference between
    the two scoring paths is printed as a check (0 when they agree)."""
    from ferlib.report import collect_results

    drift = []
    for name, (metrics, s, manifest) in records.items():
        stage03 = metrics[(metrics["detector"] == "pseudo_oe") & (metrics["eval_subset"].fillna("all") == "all")]
        if stage03.empty:
            raise ValueError(f"{name}/metrics.csv: no pseudo_oe rows on the reported set")
        rep = s[s["eval_subset"] == "all"]
        same = same_as_stage03(rep).set_index("protocol")
        for protocol, row in stage03.set_index("protocol").iterrows():
            drift.append(abs(float(row["auroc"]) - float(same.loc[protocol, "auroc"])))
        pick_rows = reported(rep)
        new = pd.DataFrame(
            {
                "detector": "pseudo_oe",
                "protocol": pick_rows["protocol"].to_numpy(),
                **{c: pick_rows[c].to_numpy() for c in ("auroc", "fpr95", "aupr_in", "aupr_out", "n_close", "n_open")},
                "close_acc": float(stage03["close_acc"].iloc[0]),
                "eval_subset": "all",
            }
        )
        keep = metrics.drop(index=stage03.index)
        folder = out / "runs" / name
        write_csv(folder / "metrics.csv", pd.concat([keep, new[metrics.columns]], ignore_index=True))
        write_json(folder / "manifest.json", manifest)
    say(f"stage 03's pseudo_oe against {what}: largest AUROC difference {max(drift):.2g} over {len(drift)} rows")
    collect_results(str(out / "runs"), out_dir=str(out))


def report_variants(
    root: str | Path,
    out_dir: str | Path,
    declared: str | None = None,
    incumbent: str | None = None,
    choose_on: str = "tuning_matched",
    min_gain: float = 0.01,
    expect: int = 21,
    say=print,
    show_reported: bool = False,
) -> pd.DataFrame:
    """Records written with variants: the tables with ``pseudo_oe``'s reported rows from one
    variant, and every variant's mean over the runs (``variants.csv``: per open class, and over
    classes as mean and std over the seeds) on the reported rows of both protocols and the
    matched tuning rows; returns that table.

    The variant is either ``declared`` (a rule that chooses nothing on these runs) or chosen by
    code on the honest ``choose_on`` rows alone (mean over runs and draws): ``incumbent`` (the
    settings stage 03 ran) kept unless another variant beats it by more than ``min_gain``
    (:func:`tools.sensitivity.pick`), the choice written to ``choices.csv``. The variants' means
    on the reported rows go to ``variants.csv``; they are printed beside the tuning means only
    with ``show_reported`` (off by default: a choice is read before the numbers it reports)."""
    if (declared is None) == (incumbent is None):
        raise ValueError("give either declared (no choice) or incumbent (a choice on the tuning rows), not both")
    records = load_records(root)
    if len(records) != expect:
        raise ValueError(f"{root}: {len(records)} complete record(s), the rule needs {expect}: {sorted(records)}")
    settings = pd.concat([s.assign(run=name) for name, (_, s, _) in records.items()], ignore_index=True)
    if "variant" not in settings.columns:
        raise ValueError(f"{root}: the records hold no variants (written by `record` without --variants)")
    per_variant = settings.groupby("variant")
    for name, group in per_variant:
        if group["run"].nunique() != len(records):
            missing = sorted(set(records) - set(group["run"]))
            raise ValueError(f"variant {name!r} is missing from some records: {missing}")
        if group["params"].nunique() != 1:
            raise ValueError(f"variant {name!r} was scored with different settings: {sorted(group['params'].unique())}")
    for role, name in (("declared", declared), ("incumbent", incumbent)):
        if name is not None and name not in per_variant.groups:
            raise ValueError(f"no variant {name!r} ({role}) in the records; they hold {sorted(per_variant.groups)}")
    out = Path(out_dir)
    stage03_variant = declared if declared is not None else incumbent
    if declared is None:
        tuning = settings[(settings["eval_subset"] == choose_on) & (settings["protocol"] == "honest")]
        if tuning.empty:
            raise ValueError(f"the records hold no honest {choose_on!r} rows to choose on")
        means = tuning.groupby("variant")["auroc"].mean()
        order = [incumbent] + sorted(v for v in means.index if v != incumbent)
        means = means[order]
        declared = str(pick(means, min_gain))
        steps = pd.DataFrame({"variant": order, "tuning_auroc_mean": means.to_numpy(), "runs": len(records),
                              "chosen": [v == declared for v in order]})  # fmt: skip
        write_csv(out / "choices.csv", steps)
        say(f"chosen on the {choose_on} rows of {len(records)} runs (incumbent {incumbent!r}, margin {min_gain}):")
        say(steps.to_string(index=False, float_format=lambda x: f"{x:.4f}"))
    out = Path(out_dir)
    params = settings.loc[settings["variant"] == declared, "params"].iloc[0]
    say(f"reported variant {declared!r}: {params}")
    mine = lambda frame: frame[frame["variant"] == declared]  # noqa: E731
    ran = lambda frame: frame[frame["variant"] == stage03_variant]  # noqa: E731
    _write_runs(records, out, ran, mine, f"the record's variant {stage03_variant!r} (stage 03's settings)", say)
    seeds = {name: m["params"]["seed"] for name, (_, _, m) in records.items()}
    classes = {name: open_short(m["params"]["open_class"]) for name, (_, _, m) in records.items()}
    rows = settings.assign(seed=settings["run"].map(seeds), open_class=settings["run"].map(classes))
    per_run = rows.groupby(["variant", "eval_subset", "protocol", "seed", "open_class", "run"], as_index=False)[
        "auroc"
    ].mean()  # the draws of the matched tuning rows averaged first
    by_class = per_run.groupby(["variant", "eval_subset", "protocol", "open_class"], as_index=False)["auroc"].mean()
    by_seed = per_run.groupby(["variant", "eval_subset", "protocol", "seed"])["auroc"].mean()
    overall = by_seed.groupby(["variant", "eval_subset", "protocol"]).agg(["mean", "std"]).reset_index()
    table = pd.concat(
        [
            by_class.rename(columns={"auroc": "auroc_mean"}),
            overall.rename(columns={"mean": "auroc_mean", "std": "auroc_std_over_seeds"}).assign(open_class="mean"),
        ],
        ignore_index=True,
    )
    write_csv(out / "variants.csv", table)
    shown = overall if show_reported else overall[overall["eval_subset"] != "all"]
    say(shown.to_string(index=False, float_format=lambda x: f"{x:.4f}"))
    if not show_reported:
        say("(the reported rows' means are in variants.csv; --show-reported prints them here)")
    say(f"tables of {len(records)} runs in {out}; every variant's means in {out / 'variants.csv'}")
    return table


def explore(
    run_dirs: list[str], param: str, values: list, params: dict | None = None, draws: int = 3, say=print
) -> pd.DataFrame:
    """``pseudo_oe``'s ``param`` over ``values`` on each run's *matched tuning rows only* (the
    tuning rows at the reported set's open share as estimated without its labels,
    :func:`estimated_open_share` with ``params``; ``draws`` seeded draws), one row per (run,
    draw, value). Why: to see which candidates a next declared rule should compare, on rows
    that are never reported; the reported rows are not scored here, so no reported number can
    leak into that choice. ``params``: the other settings, held fixed (default: the ``ferplus``
    detector preset)."""
    from ferlib.openset.presets import DETECTOR_PRESETS

    base = dict(DETECTOR_PRESETS["ferplus"]["pseudo_oe"] if params is None else params)
    parts = []
    for run in run_dirs:
        matched = estimated_open_share(run, base)
        table = sweep(
            str(run), "pseudo_oe", param, list(values), ["honest"], base, eval_subset="tuning",
            open_share=matched, draws=draws,
        )  # fmt: skip
        table = table.assign(run=Path(run).name, setting=table["value"].map(repr), matched_share=matched)
        parts.append(table)
        say(f"{Path(run).name}: " + ", ".join(
            f"{v} {a:.3f}" for v, a in table.groupby("setting", sort=False)["auroc"].mean().items()
        ), flush=True)  # fmt: skip
    out = pd.concat(parts, ignore_index=True)
    out["params"] = repr(base)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="command", required=True)
    rec = sub.add_parser("record", help="score the four combinations on finished runs and write their records")
    rec.add_argument("runs", nargs="+")
    rec.add_argument("--out", required=True, help="folder of records (committed)")
    rec.add_argument("--params", default=repr(FERPLUS_SETTINGS), help="pseudo_oe's fixed settings (dict literal)")
    rec.add_argument("--force", action="store_true", help="score again a run that has a record")
    rec.add_argument(
        "--variants",
        help="a rule that chooses nothing: {name: settings dict or detector preset name} (replaces the combinations)",
    )
    rec.add_argument(
        "--matched-draws",
        type=int,
        default=0,
        help="also score the tuning rows subsampled to the reported set's open share, N draws (default 0: off)",
    )
    rep = sub.add_parser("report", help="apply the rule to the records and write the tables")
    rep.add_argument("records")
    rep.add_argument("--out", required=True)
    rep.add_argument("--expect", type=int, default=21, help="records the rule needs (default 21)")
    rep.add_argument("--min-gain", type=float, default=0.01)
    rep.add_argument("--declared", help="records written with --variants: the variant the tables report")
    rep.add_argument(
        "--incumbent",
        help="records written with --variants: choose a variant on --choose-on, this one kept within the margin",
    )
    rep.add_argument(
        "--choose-on", default="tuning", choices=("tuning", "tuning_matched"), help="the rows the rule reads"
    )
    rep.add_argument(
        "--features-incumbent", default=FEATURES[0], choices=FEATURES, help="the features kept within the margin"
    )
    rep.add_argument(
        "--show-reported",
        action="store_true",
        help="records written with --variants: print every variant's reported means beside the tuning ones",
    )
    exp = sub.add_parser(
        "explore", help="pseudo_oe's parameter over values on finished runs' matched tuning rows only (no reported row)"
    )
    exp.add_argument("runs", nargs="+")
    exp.add_argument("--param", required=True)
    exp.add_argument("--values", nargs="+", required=True, help="values (Python literals), the incumbent first")
    exp.add_argument("--params", help="the other settings (dict literal; default: the ferplus detector preset)")
    exp.add_argument("--draws", type=int, default=3)
    exp.add_argument("--out", required=True, help="the table (CSV)")
    args = ap.parse_args(argv)
    try:
        if args.command == "explore":
            values = [ast.literal_eval(v) for v in args.values]
            table = explore(args.runs, args.param, values, ast.literal_eval(args.params) if args.params else None,
                            args.draws)  # fmt: skip
            write_csv(Path(args.out), table)
            per_run = table.groupby(["setting", "run"], sort=False)["auroc"].mean()
            print(
                f"mean honest AUROC over {table['run'].nunique()} runs x {args.draws} draws of the matched tuning rows:"
            )
            print(per_run.groupby("setting", sort=False).mean().to_string(float_format=lambda x: f"{x:.4f}"))
        elif args.command == "record":
            params = ast.literal_eval(args.params)
            for run in args.runs:
                done = Path(args.out) / Path(run).name / SETTINGS_FILE
                if done.is_file() and not args.force:
                    print(f"{run}: record exists ({done})")
                    continue
                if args.variants:
                    dest = record_variants(run, args.out, ast.literal_eval(args.variants), args.matched_draws)
                else:
                    dest = record(run, args.out, params, args.matched_draws)
                print(f"{run}: recorded in {dest}", flush=True)
        elif args.declared or args.incumbent:
            report_variants(args.records, args.out, args.declared, args.incumbent, args.choose_on, args.min_gain,
                            args.expect, show_reported=args.show_reported)  # fmt: skip
        else:
            report(
                args.records, args.out, args.expect, args.min_gain,
                choose_on=args.choose_on, features_incumbent=args.features_incumbent,
            )  # fmt: skip
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
