"""Why the relative Mahalanobis distance (RMD) ranks a run's open samples the way it does.

RMD (Ren et al. 2021) = min over classes of [class Mahalanobis distance (shared covariance)
minus the distance under one background Gaussian fitted to all close training features]. This
prints, for a finished run (stage 02 done), the AUROC of each ingredient alone and of RMD, RMD
with a class-balanced background (mean of the class means; within-class plus equal-weight
between-class covariance), where the open rows' feature centroid lies relative to each class
(cosine and length ratio of the offsets from the training mean), each class's share of the
training rows, and the median RMD of the open rows and of each close class. Reads only stage
02's files; writes nothing.

    .venv/bin/python tools/rmd_decomposition.py --run-dir outputs/synthetic_v2/synthetic_open-surprise_seed0
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from ferlib import stages  # noqa: E402
from ferlib.metrics import openset_metrics  # noqa: E402


def _distances(z: np.ndarray, mean: np.ndarray, precision: np.ndarray) -> np.ndarray:
    c = z - mean
    return np.einsum("ij,jk,ik->i", c, precision, c)


def decompose(run_dir: str, protocol: str = "honest") -> dict:
    """The numbers the module docstring lists, as a dict (AUROCs higher = open detected)."""
    data = stages.load_openset_data(run_dir, protocol)
    z_train = np.asarray(data.train_features, np.float64)
    y = np.asarray(data.train_targets, np.int64)
    z = np.asarray(data.features, np.float64)
    is_open = data.is_open
    classes = np.unique(y)
    means = np.stack([z_train[y == k].mean(0) for k in classes])
    within = sum((z_train[y == k] - means[i]).T @ (z_train[y == k] - means[i]) for i, k in enumerate(classes))
    within = within / len(z_train)
    precision = np.linalg.pinv(within)
    d_class = np.stack([_distances(z, m, precision) for m in means], 1)
    centre = z_train.mean(0)
    d_back = _distances(z, centre, np.linalg.pinv(np.cov(z_train.T, bias=True)))
    balanced_centre = means.mean(0)
    between = sum(np.outer(m - balanced_centre, m - balanced_centre) for m in means) / len(means)
    d_balanced = _distances(z, balanced_centre, np.linalg.pinv(within + between))
    rmd = (d_class - d_back[:, None]).min(1)

    def auroc(score: np.ndarray) -> float:
        return float(openset_metrics(score, is_open)["auroc"])

    offset = z[is_open].mean(0) - centre
    names = list(data.class_names) or [str(k) for k in classes]
    targets = data.table["target"].to_numpy()
    per_class = {}
    for i, k in enumerate(classes):
        to_class = means[i] - centre
        rows = (~is_open) & (targets == k)
        per_class[names[i]] = {
            "train_share": float((y == k).mean()),
            "cosine_open_offset": float(offset @ to_class / (np.linalg.norm(offset) * np.linalg.norm(to_class))),
            "length_ratio": float(np.linalg.norm(offset) / np.linalg.norm(to_class)),
            "median_rmd_close": float(np.median(rmd[rows])) if rows.any() else float("nan"),
        }
    return {
        "auroc_class_distance": auroc(d_class.min(1)),
        "auroc_background_distance": auroc(d_back),
        "auroc_rmd": auroc(rmd),
        "auroc_rmd_balanced_background": auroc((d_class - d_balanced[:, None]).min(1)),
        "median_rmd_open": float(np.median(rmd[is_open])),
        "classes": per_class,
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--run-dir", required=True)
    ap.add_argument("--protocol", default="honest")
    args = ap.parse_args(argv)
    try:
        out = decompose(args.run_dir, args.protocol)
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for key, value in out.items():
        if key != "classes":
            print(f"{key:32s} {value:.3f}")
    print(f"{'class':12s} {'train share':>11s} {'cos(open)':>9s} {'length':>7s} {'median RMD':>10s}")
    for name, row in out["classes"].items():
        print(
            f"{name:12s} {row['train_share']:11.3f} {row['cosine_open_offset']:9.2f} "
            f"{row['length_ratio']:7.2f} {row['median_rmd_close']:10.1f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
