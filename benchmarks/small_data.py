"""Small-data curve: FERPlus 7-class test accuracy against the number of training images,
from scratch and from face-recognition weights.

Why: users with a small posed set (a few hundred images, CK+, JAFFE, KDEF) need to know what
to expect and which engine to use. From scratch, the kit's small network needs tens of
thousands of faces; a trunk pretrained for face recognition brings what it learnt from about
3 million faces, and with very few images it may be better to train only a new head on it.

Engines (``--engines``; each one recipe, fixed in advance, never chosen on these rows):

- ``scratch``: ``smallface`` with ``fast_affine`` at 48 px (the kit's best from-scratch
  recipe on FERPlus validation; docs/journal/time_to_accuracy.md, "Time to accuracy on 2 CPU cores");
- ``face``: ``dlibface`` from dlib's face weights with the ``face`` recipe at 112 px (the whole
  network fine-tuned: trunk at a tenth of the head's learning rate);
- ``face_frozen``: the same trunk frozen (``face_frozen``: only the new linear head learns).

Training sets: FERPlus's training split subsampled per class with a seed (each class keeps
its share of the split, at least 2 images; the same rows for every engine at one seed), sizes
``--sizes`` (0: the whole split). There is no validation split to select an epoch on (a
small-data user rarely has one): every run trains a fixed schedule (``--epochs-for``: more
epochs for fewer images, so that every size gets a comparable number of steps) that decays
to zero, and its last epoch is scored on the whole FERPlus test split (majority labels).

Output (``--out``): ``runs.csv`` (one row per engine, size and seed, rewritten after each run;
a finished row is skipped when the command is run again, so the sweep resumes), ``summary.csv``
(mean and std over seeds), ``small_data.png`` / ``.pdf`` and ``manifest.json``.

    .venv/bin/python benchmarks/small_data.py --sizes 200 1000 5000 --seeds 0 1 2 --amp --threads 2
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402

from ferlib.data.prepare import close_rows, load_splits, training_labels  # noqa: E402
from ferlib.io import write_csv  # noqa: E402
from ferlib.manifest import collect_environment, set_manifest  # noqa: E402
from ferlib.models import ModelConfig, build_model  # noqa: E402
from ferlib.progress import progress_bar  # noqa: E402
from ferlib.recipes import train_config  # noqa: E402
from ferlib.train import TensorData, fit, predict  # noqa: E402

#: engine -> (arch, recipe, input size, pretrained)
ENGINES: dict[str, tuple[str, str, int, str | None]] = {
    "scratch": ("smallface", "fast_affine", 48, None),
    "face": ("dlibface", "face", 112, "dlibface"),
    "face_frozen": ("dlibface", "face_frozen", 112, "dlibface"),
}
#: training images -> epochs (about 200-600 optimiser steps at batch 64 below 5,000 images; set by
#: the CPU budget before any run, the whole split as in benchmarks/time_to_accuracy.py's face row)
DEFAULT_EPOCHS = {200: 60, 1000: 30, 5000: 8, 0: 15}


def stratified_rows(targets: np.ndarray, size: int, seed: int) -> np.ndarray:
    """``size`` row indices drawn per class (each class its share of ``targets``, at least 2
    where it has them; rounding settled on the largest classes), sorted; all rows if
    ``size`` is 0 or not smaller than the set."""
    n = len(targets)
    if size <= 0 or size >= n:
        return np.arange(n)
    rng = np.random.default_rng(seed)
    classes, counts = np.unique(targets, return_counts=True)
    take = np.maximum(np.minimum(counts, 2), np.floor(counts / n * size).astype(int))
    order = np.argsort(-counts)
    i = 0
    while take.sum() != size:  # settle the rounding on the largest classes
        c = order[i % len(order)]
        step = 1 if take.sum() < size else -1
        if 2 <= take[c] + step <= counts[c]:
            take[c] += step
        i += 1
    rows = [rng.choice(np.flatnonzero(targets == c), k, replace=False) for c, k in zip(classes, take)]
    return np.sort(np.concatenate(rows))


def epochs_for(size: int, table: dict[int, int]) -> int:
    if size in table:
        return table[size]
    below = [s for s in table if s and s >= size]
    return table[min(below)] if below else table.get(0, 15)


def load(input_size: int, args: argparse.Namespace) -> tuple[TensorData, TensorData, str]:
    s = load_splits("ferplus", args.data_root, None, input_size, args.cache_dir, seed=0)
    labels = training_labels(s, "majority", None, "ferplus")
    rows, targets = close_rows(s.test, s.label_map)
    train = TensorData(s.train.images[torch.as_tensor(labels.train_rows)], labels.train_targets)
    test = TensorData(s.test.images[torch.as_tensor(rows)], targets)
    return train, test, s.fingerprint


def run_one(engine: str, size: int, seed: int, train: TensorData, test: TensorData, args) -> dict:
    arch, recipe, input_size, pretrained = ENGINES[engine]
    rows = stratified_rows(train.targets.numpy(), size, seed)
    sub = train.subset(rows)
    epochs = epochs_for(size, args.epochs_table)
    torch.manual_seed(seed)
    model = build_model(ModelConfig(arch, 7, input_size, pretrained=pretrained), verbose=False)
    cfg = train_config(
        recipe, None, epochs=epochs, batch_size=args.batch_size, seed=seed, device=args.device, amp=args.amp,
        progress=args.progress,
    )  # fmt: skip
    t0 = time.perf_counter()
    fit(model, sub, None, cfg, desc=f"{engine} n={len(sub)} seed {seed}")
    seconds = time.perf_counter() - t0
    pred = predict(model, test.images, 512, args.device, progress=False, amp=args.amp, tta=cfg.flip_tta)
    acc = float((pred.logits.argmax(1) == test.targets).float().mean())
    return {
        "engine": engine, "arch": arch, "recipe": recipe, "input_size": input_size, "pretrained": pretrained or "",
        "size": size, "n_train": len(sub), "seed": seed, "epochs": epochs, "test_acc": acc,
        "train_minutes": seconds / 60,
    }  # fmt: skip


def summarise(runs: pd.DataFrame) -> pd.DataFrame:
    g = runs.groupby(["engine", "n_train"], sort=True)
    out = g["test_acc"].agg(["mean", "std", "count"]).reset_index()
    out["train_minutes"] = g["train_minutes"].mean().values
    return out


def plot(summary: pd.DataFrame, out: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker  # noqa: F401 - matplotlib.ticker below

    fig, ax = plt.subplots(figsize=(6.0, 4.0))
    for engine, g in summary.groupby("engine", sort=False):
        ax.errorbar(g["n_train"], g["mean"], yerr=g["std"].fillna(0), marker="o", capsize=3, label=engine)
    ax.set_xscale("log")
    sizes = sorted(summary["n_train"].unique())
    ax.set_xticks(sizes, [f"{n:,}" for n in sizes])
    ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
    ax.set_xlabel("training images (FERPlus train, per-class subsample)")
    ax.set_ylabel("FERPlus 7-class test accuracy")
    ax.axhline(1 / 7, color="grey", lw=0.8, ls=":", label="chance")
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title("Small-data curve: mean and std over seeds", fontsize=9)
    fig.tight_layout()
    paths = [out / "small_data.png", out / "small_data.pdf"]
    for path in paths:
        tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")
        fig.savefig(tmp, dpi=150)
        os.replace(tmp, path)
    plt.close(fig)
    return paths


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-root", default=str(Path("..") / "shared" / "data" / "ferplus"))
    p.add_argument("--engines", nargs="+", default=list(ENGINES), choices=list(ENGINES))
    p.add_argument("--sizes", nargs="+", type=int, default=[200, 1000, 5000], help="training images (0: all)")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--epochs-for", default="", help=f"JSON {{size: epochs}} replacing the defaults {DEFAULT_EPOCHS}")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--device", default="cpu")
    p.add_argument("--amp", action="store_true", help="bfloat16 autocast (CPU with native bf16, or CUDA)")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--cache-dir", default=str(Path("outputs") / "cache"))
    p.add_argument("--out", default=str(Path("outputs") / "bench" / "small_data"))
    p.add_argument("--progress", action="store_true")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    args.epochs_table = {**DEFAULT_EPOCHS, **{int(k): int(v) for k, v in json.loads(args.epochs_for or "{}").items()}}
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    done = pd.read_csv(out / "runs.csv") if (out / "runs.csv").is_file() else pd.DataFrame()
    runs = done.to_dict("records")
    finished = {(r["engine"], int(r["size"]), int(r["seed"])) for r in runs}
    # smallest sets first, every engine at a size before the next size: a stopped sweep leaves whole points
    todo = [(e, n, s) for n in args.sizes for e in args.engines for s in args.seeds if (e, n, s) not in finished]
    print(f"{len(finished)} runs already in {out / 'runs.csv'}; {len(todo)} to run")
    data: dict[int, tuple[TensorData, TensorData, str]] = {}
    for engine, size, seed in progress_bar(todo, desc="small-data runs"):
        input_size = ENGINES[engine][2]
        if input_size not in data:
            data[input_size] = load(input_size, args)
        train, test, fingerprint = data[input_size]
        row = run_one(engine, size, seed, train, test, args)
        row["data_fingerprint"] = fingerprint
        runs.append(row)
        write_csv(out / "runs.csv", pd.DataFrame(runs))
        print(
            f"  {engine} n={row['n_train']} seed {seed}: test {row['test_acc']:.4f} "
            f"({row['epochs']} epochs, {row['train_minutes']:.1f} min)",
            flush=True,
        )
    if not runs:
        print("nothing to summarise")
        return 0
    summary = summarise(pd.DataFrame(runs))
    write_csv(out / "summary.csv", summary)
    paths = plot(summary, out)
    set_manifest(
        out,
        params={k: v for k, v in vars(args).items() if k != "epochs_table"},
        epochs_table={str(k): v for k, v in args.epochs_table.items()},
        environment=collect_environment(),
        summary=summary.to_dict("records"),
    )
    print(summary.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    print(f"wrote {out / 'runs.csv'}, {out / 'summary.csv'}, {', '.join(map(str, paths))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
