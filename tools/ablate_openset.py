"""Ablation of the paper's detector on a finished run (stages 01-02 done).

Runs :func:`ferlib.stages.ablate_cycle`: the cycle detector with its default settings, without
the consistency loss (lam=0), without cycle training, without class-balanced selection, and
on the test split only, beside max softmax on the same rows. Writes ``<run>/ablation.csv``
and prints it. Resumable: each variant checkpoints under ``<run>/03_detect/ablation/``.

    .venv/bin/python tools/ablate_openset.py --run-dir outputs/demo --dataset synthetic
    .venv/bin/python tools/ablate_openset.py --run-dir outputs/ferplus_open-surprise_seed0 \\
        --dataset ferplus --data-root ../shared/data/ferplus --open-class surprise \\
        -p stem=imagenet -p "cycle={'cycles': 2, 'epochs_per_cycle': 2}"
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ferlib import stages  # noqa: E402
from ferlib.run import parse_params  # noqa: E402


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run-dir", required=True)
    ap.add_argument("--dataset", required=True)
    ap.add_argument("--data-root", default=None)
    ap.add_argument("--open-class", default="surprise")
    ap.add_argument("--protocols", nargs="+", default=["honest"])
    ap.add_argument("--variants", nargs="+", default=list(stages.CYCLE_ABLATIONS),
                    choices=list(stages.CYCLE_ABLATIONS))
    ap.add_argument("--device", default="cpu")
    ap.add_argument("-p", "--param", action="append", default=[], metavar="KEY=VALUE",
                    help="stage parameters as in ferlib.run (input_size, stem, seed, cycle={...})")
    args = ap.parse_args(argv)
    params = parse_params(args.param)
    table = stages.ablate_cycle(dataset=args.dataset, data_root=args.data_root, open_class=args.open_class,
                                run_dir=args.run_dir, device=args.device, protocols=args.protocols,
                                variants={v: stages.CYCLE_ABLATIONS[v] for v in args.variants}, **params)
    print(table.drop(columns="overrides").round(3).to_string(index=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
