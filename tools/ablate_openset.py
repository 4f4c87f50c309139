"""Ablation of the paper's detector on a finished run (stages 01-02 done).

Runs :func:`ferlib.stages.ablate_cycle`: the cycle detector with its default settings, without
the consistency loss (lam=0), without cycle training, without class-balanced selection, and
on the test split only, beside max softmax on the same rows. Writes ``<run>/ablation.csv``
and prints it. Resumable: each variant's networks checkpoint in stage 03's keyed folders
(``<run>/03_detect/<eval_subset>/<protocol>/cycle-<key>/``), so a variant whose settings equal
a finished stage 03 run's reuses its result. The cycle detector's base settings come as
``-p "detector_params={'cycle': {...}}"``, the shape stage 03 takes; each variant's override
goes on top.

    .venv/bin/python tools/ablate_openset.py --run-dir outputs/demo --dataset synthetic
    .venv/bin/python tools/ablate_openset.py --run-dir outputs/ferplus_open-surprise_seed0 \\
        --dataset ferplus --data-root ../shared/data/ferplus --open-class surprise \\
        -p stem=imagenet -p "detector_params={'cycle': {'cycles': 2, 'epochs_per_cycle': 2}}"
"""

from __future__ import annotations

import argparse
import inspect
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ferlib import stages  # noqa: E402
from ferlib.report import run_seed  # noqa: E402
from ferlib.run import parse_params  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run-dir", required=True)
    ap.add_argument("--dataset", required=True)
    ap.add_argument("--data-root", default=None)
    ap.add_argument("--open-class", default="surprise")
    ap.add_argument("--protocols", nargs="+", default=["honest"])
    ap.add_argument("--variants", nargs="+", default=list(stages.CYCLE_ABLATIONS), choices=list(stages.CYCLE_ABLATIONS))
    ap.add_argument("--device", default="cpu")
    ap.add_argument(
        "--seed",
        type=int,
        default=None,
        help="the run's seed (default: read from the run's manifest; the reference protocol's "
        "permutation and the detector networks' initialisation depend on it)",
    )
    ap.add_argument(
        "-p",
        "--param",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="parameters of ferlib.stages.ablate_cycle as in ferlib.run (input_size, stem, "
        "detector_params={'cycle': {...}})",
    )
    args = ap.parse_args(argv)
    params = parse_params(args.param)
    seed = args.seed if args.seed is not None else run_seed(Path(args.run_dir), 0)
    # -p may set any keyword of ablate_cycle except those the options above set
    fixed = {"dataset", "data_root", "open_class", "run_dir", "device", "protocols", "variants", "seed"}
    accepted = sorted(
        name
        for name, p in inspect.signature(stages.ablate_cycle).parameters.items()
        if p.kind is not p.VAR_KEYWORD and name not in fixed
    )
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        ap.error(f"-p {unknown}: not a parameter of ablate_cycle; -p accepts {accepted}")
    table = stages.ablate_cycle(
        dataset=args.dataset,
        data_root=args.data_root,
        open_class=args.open_class,
        run_dir=args.run_dir,
        device=args.device,
        protocols=args.protocols,
        seed=seed,
        variants={v: stages.CYCLE_ABLATIONS[v] for v in args.variants},
        **params,
    )
    print(table.drop(columns="overrides").round(3).to_string(index=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
