"""``pseudo_oe`` with its candidate share set from the *true* open share, beside its estimate.

``pseudo_oe`` picks a share of the evaluation rows as pseudo-outliers. With a fixed share
(``top_fraction``) the candidates are mostly close rows where the open share is small and a
sliver of the open rows where it is large; FERPlus's open shares run from 6% to 84%. This tool
measures what the share is worth: per run, ``pseudo_oe`` with ``top_fraction`` = multiplier x
the true open share of the evaluation set (every round), and the share that the detector's
own estimate reaches (``share_multiplier``, :mod:`ferlib.openset.share`) beside the truth.

It reads the truth: a diagnostic, never a detector and never a way to choose a setting.
Nothing in the runs changes; the table goes to ``--out`` (CSV) when given.

    .venv/bin/python tools/oracle_share.py --run-dir outputs/sweep_fast32/ferplus_open-*_seed0 \\
        --multipliers 0.5 1.0 --params "{'rounds': 3, 'first_params': {'k': 200}, 'head': 'mlp'}" --estimate
"""

from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from ferlib import stages  # noqa: E402
from ferlib.io import write_csv  # noqa: E402
from ferlib.metrics import openset_metrics  # noqa: E402
from ferlib.openset import make_detector  # noqa: E402
from ferlib.report import run_seed  # noqa: E402

#: the largest candidate share the tool asks for (pseudo_oe's top_fraction must stay below 1)
MAX_FRACTION = 0.95


def oracle(
    run_dirs: list[str],
    multipliers: list[float],
    params: dict | None = None,
    eval_subset: str = "all",
    estimate: bool = False,
) -> pd.DataFrame:
    """One row per (run, multiplier): AUROC and FPR@95 of ``pseudo_oe`` (``params``, its
    ``top_fraction`` replaced by multiplier x the true open share, capped at
    :data:`MAX_FRACTION`), the true open share, and the candidates' purity in the last round.
    ``estimate``: also the open share that ``pseudo_oe`` with ``share_multiplier=1`` (and
    ``params``) estimates in its last round, from the run's close reference rows."""
    rows = []
    for run in run_dirs:
        seed = run_seed(Path(run), 0)
        data = stages.load_openset_data(run, "honest", eval_subset=eval_subset, seed=seed)
        is_open = data.is_open
        share = float(is_open.mean())
        estimated = float("nan")
        if estimate:
            det = make_detector("pseudo_oe", **{**(params or {}), "share_multiplier": 1.0, "seed": seed})
            det.score(data.detector_view())
            estimated = det.shares_[-1]
        for m in multipliers:
            fraction = float(np.clip(m * share, 2.0 / len(data), MAX_FRACTION))
            det = make_detector("pseudo_oe", **{**(params or {}), "top_fraction": fraction, "seed": seed})
            scores = det.score(data.detector_view())
            metrics = openset_metrics(scores, is_open)
            rows.append(
                {
                    "run": Path(run).name,
                    "eval_subset": eval_subset,
                    "multiplier": m,
                    "open_share": share,
                    "estimated_share": estimated,
                    "top_fraction": fraction,
                    "purity_last_round": float(is_open[det.candidates_[-1]].mean()),
                    "auroc": metrics["auroc"],
                    "fpr95": metrics["fpr95"],
                }
            )
    return pd.DataFrame(rows)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run-dir", required=True, nargs="+")
    ap.add_argument("--multipliers", nargs="+", type=float, default=[1.0])
    ap.add_argument("--params", default="{}", help="pseudo_oe's other settings (a Python dict literal)")
    ap.add_argument("--eval-subset", default="all", choices=stages.EVAL_SUBSETS)
    ap.add_argument("--estimate", action="store_true", help="add pseudo_oe's own estimate of the open share")
    ap.add_argument("--out", help="the table (CSV); default: printed only")
    args = ap.parse_args(argv)
    try:
        params = ast.literal_eval(args.params)
        if not isinstance(params, dict):
            raise ValueError(f"--params must be a dict literal, got {args.params!r}")
        table = oracle(args.run_dir, args.multipliers, params, args.eval_subset, args.estimate)
    except (ValueError, SyntaxError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(table.to_string(index=False, float_format=lambda x: f"{x:.3f}"))
    means = table.groupby("multiplier")["auroc"].mean()
    print("mean AUROC: " + ", ".join(f"x{m:g} {v:.3f}" for m, v in means.items()))
    if args.out:
        write_csv(Path(args.out), table)
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
