"""What FER2013's duplicate images do to the open-set numbers: the same trained models scored
without and with them.

Open-set FERPlus runs drop duplicate evaluation rows by default (test and validation rows whose
pixels copy a training row or an earlier evaluation row). For every finished run under RUNS
this makes a twin that keeps the run's close-set model and runs stages 02-03 again with
``data_options={'dedupe': False}`` (:mod:`ferlib.rescore`): the copies are back in the
evaluation and tuning sets, nothing is retrained. Then it writes under ``--tables``:

  without/, with/       the per-class x seed tables of both (``ferlib.run tables``)
  difference.csv, .md   per detector and protocol: AUROC and FPR@95 without and with the
                        duplicates and the paired difference (mean over open classes within a
                        seed, then mean ± std over seeds)

    .venv/bin/python tools/duplicates_effect.py outputs/confirm_ferplus   # 2 CPU cores: ~5 min a run, 2 at a time
    .venv/bin/python tools/duplicates_effect.py outputs/confirm_ferplus --device cuda --jobs 1
    .venv/bin/python tools/duplicates_effect.py outputs/confirm_ferplus --dry-run   # the runner calls only
    tools/duplicates_effect_ferplus.sh   # from nothing: each confirmation run, then its twin, pair by pair
    .venv/bin/python tools/duplicates_effect.py --records docs/results/ferplus_confirm_seeds12-14 \
        docs/results/ferplus_confirm_seeds12-14_with_duplicates   # the tables again from committed records

A killed call resumes (finished stages are skipped). Runs that kept their duplicates already
are refused: their twins would be the runs themselves.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ferlib import rescore  # noqa: E402
from ferlib.data.prepare import dedupe_mode  # noqa: E402
from ferlib.io import write_csv, write_text  # noqa: E402
from ferlib.report import collect_results, find_runs, sweep_folder  # noqa: E402

CHANGE = {"data_options": {"dedupe": False}}


def check_deduplicated(runs: list[Path]) -> None:
    """Every run dropped duplicate evaluation rows (else there is nothing to put back)."""
    kept = []
    for run in runs:
        params = rescore.twin_parameters(run, {})
        if dedupe_mode(params["dataset"], params.get("open_class"), params.get("data_options")) == "off":
            kept.append(run.name)
    if kept:
        raise ValueError(f"these runs kept their duplicate rows already (data_options dedupe off): {', '.join(kept)}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("runs", nargs="*", help="finished open-set runs: run folders, folders of them or globs")
    parser.add_argument(
        "--records",
        nargs=2,
        type=Path,
        metavar=("RUNS", "TWINS"),
        help="write the tables from committed records (metrics.csv and manifest.json per run) instead: "
        "the runs' folder and the twins' (pairs by run name; no model, no data)",
    )
    parser.add_argument("--out", type=Path, help="folder of the twins (default: <first RUNS>_with_duplicates)")
    parser.add_argument("--tables", type=Path, help="folder of the tables (default: outputs/tables_duplicates_effect)")
    parser.add_argument("--device", help="torch device of stages 02-03 (default: each run's own)")
    parser.add_argument("--jobs", type=int, default=None, help="twins at a time (default: CPU cores on cpu, else 1)")
    parser.add_argument("--dry-run", action="store_true", help="print the runner calls only")
    parser.add_argument("--no-tables", action="store_true", help="make the twins only (a later call writes the tables)")
    args = parser.parse_args(argv)
    tables = args.tables or Path("outputs/tables_duplicates_effect")
    if args.records:
        if args.runs:
            parser.error("give either RUNS or --records, not both")
        base, twins = (find_runs(str(folder)) for folder in args.records)
        if not base or not twins:
            empty = args.records[0] if not base else args.records[1]
            print(f"duplicates_effect: error: no run record (metrics.csv + manifest.json) in {empty}", file=sys.stderr)
            return 2
        write_tables(base, twins, tables)
        return 0
    if not args.runs:
        parser.error("give the finished runs (RUNS) or --records RUNS TWINS")

    runs = rescore.finished_runs(args.runs)
    if not runs:
        print(f"duplicates_effect: error: no finished open-set run in {args.runs}", file=sys.stderr)
        return 2
    try:
        check_deduplicated(runs)
    except ValueError as exc:
        print(f"duplicates_effect: error: {exc}", file=sys.stderr)
        return 2
    first = sweep_folder(args.runs[0])  # outputs/confirm_ferplus for it and for outputs/confirm_ferplus/ferplus_open-*
    out = args.out or first.parent / f"{first.name}_with_duplicates"
    if first.is_dir() and out.resolve().is_relative_to(first.resolve()):
        # the sweep's own glob (its tables, this tool's next call) would find the twins as its runs
        print(f"duplicates_effect: error: --out {out} lies inside the runs' folder {first}", file=sys.stderr)
        return 2
    cpu = (args.device or "cpu") == "cpu"
    jobs = args.jobs or (min(os.cpu_count() or 1, len(runs)) if cpu else 1)
    print(f"{len(runs)} finished run(s); twins in {out}, {jobs} at a time")
    twins = rescore.rescore(runs, out, CHANGE, device=args.device, jobs=jobs, dry_run=args.dry_run)
    if args.dry_run or args.no_tables:
        return 0
    write_tables(runs, twins, tables)
    return 0


def write_tables(runs: list[Path], twins: list[Path], tables: Path) -> None:
    """Both sides' per-class x seed tables and the paired difference of the runs that have a twin."""
    names = {t.name for t in twins}
    paired = [r for r in runs if r.name in names]
    unpaired = len(runs) - len(paired)
    collect_results([str(r) for r in paired], out_dir=tables / "without")
    collect_results([str(t) for t in twins if t.name in {r.name for r in paired}], out_dir=tables / "with")
    table = rescore.paired_difference(paired, twins)
    write_csv(tables / "difference.csv", table)
    text = rescore.difference_markdown(table, base="without duplicates", twin="with duplicates")
    write_text(tables / "difference.md", text)
    print(text)
    print(f"{len(paired)} pair(s)" + (f"; {unpaired} run(s) without a twin left out" if unpaired else ""))
    print(f"tables: {tables}")


if __name__ == "__main__":
    raise SystemExit(main())
