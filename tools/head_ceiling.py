"""The ceiling of a binary head on finished runs: the head trained on the *true* open rows.

Detectors that learn from the unlabeled evaluation set (``pseudo_oe``, ``sal``) end in a
cross-fitted binary head on the close-set model's frozen features, trained on close training
rows against *candidate* open rows. With perfectly pure candidates (every open row, no close
one) the same head reaches at most what this tool prints: the cross-fitted head of
:func:`ferlib.openset.binary_head.cross_fitted_binary_scores` with the evaluation set's true
open mask as candidates, so each row is still scored by a head that never trained on it. The
gap between a detector and this ceiling is what purer candidates can still gain; the ceiling
itself moves only with the features (the close-set model) or the head.

It reads the truth: a diagnostic of the features, never a detector and never a way to choose
a setting. Nothing in the runs changes; the table goes to ``--out`` (CSV) when given.

    .venv/bin/python tools/head_ceiling.py --run-dir outputs/sweep_fast32/ferplus_open-*_seed0 \\
        --heads logistic mlp --features penultimate pyramid --out outputs/sweep_fast32/head_ceiling.csv
"""

from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pandas as pd  # noqa: E402

from ferlib import stages  # noqa: E402
from ferlib.io import write_csv  # noqa: E402
from ferlib.metrics import openset_metrics  # noqa: E402
from ferlib.openset.binary_head import BINARY_HEADS, cross_fitted_binary_scores  # noqa: E402
from ferlib.openset.data import FEATURE_SPACES  # noqa: E402
from ferlib.report import run_seed  # noqa: E402


def ceiling(
    run_dirs: list[str],
    heads: list[str],
    eval_subset: str = "all",
    protocol: str = "honest",
    folds: int = 5,
    features: tuple[str, ...] = ("penultimate",),
) -> pd.DataFrame:
    """One row per (run, feature space, head): AUROC and FPR@95 of the cross-fitted head
    trained on the true open rows of ``eval_subset`` (``folds`` folds, seeded by the run's
    seed) in each feature space of ``features`` (:data:`ferlib.openset.data.FEATURE_SPACES`)."""
    unknown = [h for h in heads if h not in BINARY_HEADS]
    if unknown:
        raise ValueError(f"unknown binary head(s) {unknown}; choose from {sorted(BINARY_HEADS)}")
    bad = [f for f in features if f not in FEATURE_SPACES]
    if bad:
        raise ValueError(f"unknown feature space(s) {bad}; choose from {list(FEATURE_SPACES)}")
    rows = []
    for run in run_dirs:
        seed = run_seed(Path(run), 0)
        loaded = stages.load_openset_data(run, protocol, eval_subset=eval_subset, seed=seed)
        is_open = loaded.is_open
        if is_open.sum() < folds:
            raise ValueError(f"{run}: {int(is_open.sum())} open rows in {eval_subset!r}, fewer than {folds} folds")
        for space, head in itertools.product(features, heads):
            data = loaded.in_feature_space(space)
            scores = cross_fitted_binary_scores(
                data.features, data.train_features, is_open, folds, seed=seed, head=head
            )
            m = openset_metrics(scores, is_open)
            rows.append(
                {
                    "run": Path(run).name,
                    "features": space,
                    "head": head,
                    "eval_subset": eval_subset,
                    "protocol": protocol,
                    "n": len(data),
                    "open_share": float(is_open.mean()),
                    "auroc": m["auroc"],
                    "fpr95": m["fpr95"],
                }
            )
    return pd.DataFrame(rows)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run-dir", required=True, nargs="+", help="finished runs (stage 02 done)")
    ap.add_argument("--heads", nargs="+", default=["logistic", "mlp"], help=f"of {sorted(BINARY_HEADS)}")
    ap.add_argument(
        "--features",
        nargs="+",
        default=["penultimate"],
        choices=FEATURE_SPACES,
        help="feature spaces the head reads (pyramid: every trunk stage's pooled output)",
    )
    ap.add_argument("--eval-subset", default="all", choices=stages.EVAL_SUBSETS)
    ap.add_argument("--protocol", default="honest")
    ap.add_argument("--out", help="CSV of the table; default: printed only")
    args = ap.parse_args(argv)
    try:
        table = ceiling(args.run_dir, args.heads, args.eval_subset, args.protocol, features=tuple(args.features))
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    fmt = lambda x: f"{x:.3f}"  # noqa: E731
    wide = table.pivot_table(index="run", columns=["features", "head"], values="auroc", sort=False)
    print(wide.to_string(float_format=fmt))
    means = table.groupby(["features", "head"], sort=False)["auroc"].mean()
    print("\nmean AUROC:", ", ".join(f"{f}/{h} {v:.3f}" for (f, h), v in means.items()))
    if args.out:
        write_csv(Path(args.out), table)
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
