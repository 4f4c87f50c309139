"""Detection against the evaluation set's open share, on finished runs (stage 02 done).

For each run, each ``--fractions`` value and ``--repeats`` seeded draws, keeps every close
evaluation row, subsamples the open rows to that share, re-fits and re-scores the detectors
(post-hoc and transductive ones: they read the saved close-set outputs, seconds per draw) and
writes, under ``--out``: ``open_fraction.csv`` (one row per run, draw and detector),
``open_fraction_summary.csv`` (mean and std over draws and runs per fraction and detector)
and ``open_fraction_auroc.{png,pdf}``. Nothing in the runs changes.

This is a study of the *setting*, not a way to choose a detector: every fraction is scored
on the same reported evaluation images.

    .venv/bin/python tools/open_fraction.py --runs outputs/sweep_fast32/ferplus_open-surprise_seed0 \\
        --detectors msp energy knn tknn --fractions 0.05 0.13 0.37 0.57 --repeats 3 \\
        --out outputs/open_fraction_surprise
"""

from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pandas as pd  # noqa: E402

from ferlib import plots, stages  # noqa: E402
from ferlib.io import write_csv  # noqa: E402
from ferlib.openset.fraction import open_fraction_study, summarise_fraction_study  # noqa: E402
from ferlib.report import run_seed  # noqa: E402


def study(
    runs: list[str],
    detectors: list[str],
    fractions: list[float],
    repeats: int,
    protocol: str = "honest",
    detector_params: dict | None = None,
) -> pd.DataFrame:
    """The per-draw table over every run (column ``run`` names the run folder)."""
    frames = []
    for run in runs:
        seed = run_seed(Path(run), 0)
        data = stages.load_openset_data(run, protocol, seed=seed)
        table = open_fraction_study(data, detectors, fractions, repeats, seed, detector_params)
        table.insert(0, "run", Path(run).name)
        frames.append(table)
    return pd.concat(frames, ignore_index=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", nargs="+", required=True, help="finished run folders (stage 02 done)")
    ap.add_argument("--detectors", nargs="+", default=["msp", "energy", "mahalanobis", "knn", "tknn"])
    ap.add_argument("--fractions", nargs="+", type=float, default=[0.05, 0.13, 0.37, 0.57])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--protocol", default="honest")
    ap.add_argument("--detector-params", default=None, help="a Python literal {name: {param: value}}")
    ap.add_argument("--out", required=True, help="folder for the tables and the figure")
    args = ap.parse_args(argv)
    try:
        params = ast.literal_eval(args.detector_params) if args.detector_params else None
        table = study(args.runs, args.detectors, args.fractions, args.repeats, args.protocol, params)
    except (ValueError, FileNotFoundError, SyntaxError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    summary = summarise_fraction_study(table[~table["full"]])
    write_csv(out / "open_fraction.csv", table)
    write_csv(out / "open_fraction_summary.csv", summary)
    figure = plots.metric_vs_open_fraction(summary, title=f"{args.protocol} protocol")
    plots.save_figure(figure, out / "open_fraction_auroc")
    print(summary.to_string(index=False, float_format=lambda x: f"{x:.3f}"))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
