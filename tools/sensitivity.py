"""Sensitivity of a post-hoc detector to one of its parameters, on a finished run (stage 02 done).

Scores the run's evaluation set with ``--detector`` once per value of ``--param`` and prints
AUROC and FPR@95 per (protocol, value); the table goes to ``<run>/sensitivity_<detector>_<param>.csv``.
Only detectors that read the close-set model's saved outputs (no images, no training) are
accepted: for those a sweep takes seconds and changes no file of the run.

This is a *sensitivity check reported after the fact*, not a way to choose a value: a
parameter chosen on the numbers a table reports is tuned on its test set. Choose on
synthetic data or on a validation split, then show the sweep beside the result.

    .venv/bin/python tools/sensitivity.py --run-dir outputs/ferplus_open-surprise_seed0 \\
        --detector tknn --param k --values 10 50 100 200
"""

from __future__ import annotations

import argparse
import ast
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pandas as pd  # noqa: E402

from ferlib import stages  # noqa: E402
from ferlib.io import write_csv  # noqa: E402
from ferlib.metrics import openset_metrics  # noqa: E402
from ferlib.openset.registry import detector_class, detector_parameters  # noqa: E402
from ferlib.openset.scoring import run_detectors  # noqa: E402
from ferlib.report import run_seed  # noqa: E402


def sweep(
    run_dir: str, detector: str, param: str, values: list, protocols=("honest",), params: dict | None = None
) -> pd.DataFrame:
    """One row per (protocol, value): the detector's AUROC and FPR@95 with ``param = value``."""
    cls = detector_class(detector)
    if cls.needs_images or cls.needs_train_images or cls.trains_networks:
        raise ValueError(
            f'{detector} trains on images; sweep it through stage 03 (-p "detector_params={{...}}"), not here'
        )
    if param not in detector_parameters(detector):
        raise ValueError(f"{detector} has no parameter {param!r}; it accepts {sorted(detector_parameters(detector))}")
    seed = run_seed(Path(run_dir), 0)
    rows = []
    for protocol in protocols:
        data = stages.load_openset_data(run_dir, protocol, seed=seed)
        is_open = data.is_open
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
                    "n": len(data),
                    "auroc": m["auroc"],
                    "fpr95": m["fpr95"],
                }
            )
    return pd.DataFrame(rows)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run-dir", required=True)
    ap.add_argument("--detector", required=True)
    ap.add_argument("--param", required=True)
    ap.add_argument("--values", nargs="+", required=True, help="values (Python literals)")
    ap.add_argument("--protocols", nargs="+", default=["honest"])
    args = ap.parse_args(argv)

    def literal(text: str):
        try:
            return ast.literal_eval(text)
        except (ValueError, SyntaxError):
            return text

    try:
        table = sweep(args.run_dir, args.detector, args.param, [literal(v) for v in args.values], args.protocols)
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    out = Path(args.run_dir) / f"sensitivity_{args.detector}_{args.param}.csv"
    write_csv(out, table)
    print(table.to_string(index=False, float_format=lambda x: f"{x:.3f}"))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
