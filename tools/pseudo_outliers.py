"""How pure the pseudo-outliers of ``pseudo_oe`` are, round by round, on finished runs.

For each run (stage 02 done) and protocol, runs the ``pseudo_oe`` detector with ``--rounds``
rounds and prints, per round, the share of open rows among the candidates it picked (purity,
read against the truth *outside* the detector) and the AUROC of the score that round
produced; round 0 is the first detector's. Writes ``--out`` (CSV) when given; nothing in the
runs changes.

    .venv/bin/python tools/pseudo_outliers.py --runs outputs/synthetic_v2/synthetic_open-surprise_seed0 \\
        --rounds 3 --top-fraction 0.1
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from ferlib import stages  # noqa: E402
from ferlib.io import write_csv  # noqa: E402
from ferlib.metrics import openset_metrics  # noqa: E402
from ferlib.openset.registry import make_detector  # noqa: E402
from ferlib.report import run_seed  # noqa: E402


def purity_table(runs: list[str], rounds: int, top_fraction: float, first: str = "tknn", protocol: str = "honest"):
    rows = []
    for run in runs:
        data = stages.load_openset_data(run, protocol, seed=run_seed(Path(run), 0))
        view = data.detector_view()
        truth = data.is_open
        first_scores = make_detector(first).fit_score(view)
        rows.append(
            {
                "run": Path(run).name,
                "round": 0,
                "purity": np.nan,
                "auroc": openset_metrics(first_scores, truth)["auroc"],
            }
        )
        for r in range(1, rounds + 1):
            det = make_detector("pseudo_oe", first=first, rounds=r, top_fraction=top_fraction)
            scores = det.score(view)
            rows.append(
                {
                    "run": Path(run).name,
                    "round": r,
                    "purity": float(truth[det.candidates_[-1]].mean()),
                    "auroc": openset_metrics(scores, truth)["auroc"],
                }
            )
    return pd.DataFrame(rows)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", nargs="+", required=True)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--top-fraction", type=float, default=0.1)
    ap.add_argument("--first", default="tknn")
    ap.add_argument("--protocol", default="honest")
    ap.add_argument("--out", default=None, help="CSV path for the table")
    args = ap.parse_args(argv)
    try:
        table = purity_table(args.runs, args.rounds, args.top_fraction, args.first, args.protocol)
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.out:
        write_csv(args.out, table)
    print(table.to_string(index=False, float_format=lambda x: f"{x:.3f}"))
    summary = table.groupby("round")[["purity", "auroc"]].agg(["mean", "std"])
    print(summary.to_string(float_format=lambda x: f"{x:.3f}"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
