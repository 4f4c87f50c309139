"""Open-set detection against the close-set model's training length, under both protocols.

Why: the released code scored each open training image with the outputs of another
training image (the reference protocol, :func:`ferlib.openset.data.apply_protocol`), and a
close-set model memorises its training images. This trains one close-set model (the kit's
loop, objective ``ce``, recipe ``reference``: Adam, lr 1e-3 * 0.9 ** epoch; no validation
selection, so each epoch count keeps that epoch's weights) up to each ``--epochs`` count in
turn, resuming one checkpoint, and at each count runs stage 02 and stage 03 on those weights
(``<out>/epochs/epoch_NNNN/`` is a run folder like any other) under both protocols.

Per (epoch, protocol, detector) ``<out>/memorisation.csv`` holds AUROC, FPR@95 and the
AUPRs, with the epoch's training accuracy (eval mode, the close rows trained on), close
test accuracy, and the mean max-logit of close rows, of open rows and of the open rows taken
from the training split (the ones the reference protocol changes) under that protocol.
``donors_trained`` is the share of those rows whose reference donor is a row the model
trained on (with ``--train-rows`` the rest were never seen). Also written: ``manifest.json``
(parameters, versions, data hash, training key), ``training_log.json`` (the epochs each call
trained) and ``memorisation_auroc.{png,pdf}``. A finished epoch count is not recomputed, and
a call with more or larger epoch counts continues the same training.

    nice -n 19 .venv/bin/python tools/memorisation.py --dataset synthetic --input-size 32 \\
        --epochs 1 2 4 8 16
"""

from __future__ import annotations

import argparse
import ast
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402

from ferlib import plots, stages  # noqa: E402
from ferlib.data.prepare import Splits, load_splits, training_labels  # noqa: E402
from ferlib.data.splits import carve_validation  # noqa: E402
from ferlib.io import read_json, torch_save, write_csv, write_json  # noqa: E402
from ferlib.losses import make_objective  # noqa: E402
from ferlib.manifest import collect_environment, set_manifest  # noqa: E402
from ferlib.metrics import accuracy  # noqa: E402
from ferlib.models import ModelConfig, build_model  # noqa: E402
from ferlib.openset.data import PROTOCOLS, reference_donors  # noqa: E402
from ferlib.openset.registry import detector_class, validate_detectors  # noqa: E402
from ferlib.progress import progress_bar  # noqa: E402
from ferlib.recipes import recipe_settings  # noqa: E402
from ferlib.train import RUN_LENGTH_SCHEDULES, TensorData, TrainConfig, fit, training_key  # noqa: E402

DEFAULT_DETECTORS = ("msp", "max_logit", "energy", "knn", "tknn")
RECIPE = "reference"
OBJECTIVE = "ce"
CSV_NAME, FIGURE_NAME, LOG_NAME, MARKER_NAME = (
    "memorisation.csv",
    "memorisation_auroc",
    "training_log.json",
    "memorisation.json",
)


@dataclass
class Setup:
    """What every epoch count shares: the splits, the rows trained on, the loop's settings
    and the key of the training (:func:`ferlib.train.training_key`)."""

    splits: Splits
    trained_rows: np.ndarray  # rows of splits.train the model trains on
    trained_targets: np.ndarray
    model: ModelConfig
    cfg: TrainConfig
    objective: object
    key: str
    donors_trained: float  # share of the open training rows whose reference donor is trained on
    n_close_train: int  # close training rows before --train-rows


def select_rows(
    rows: np.ndarray, targets: np.ndarray, n: int | None, seed: int, keep: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """About ``n`` of ``rows`` (stratified by ``targets``, seeded; the validation carve's
    draw), always including the rows in ``keep``; all of them when ``n`` is None or not
    below their number."""
    if n is None or n >= len(rows):
        return rows, targets
    must = np.flatnonzero(np.isin(rows, keep)) if keep is not None else np.zeros(0, np.int64)
    if len(must) > n:
        raise ValueError(f"--train-rows {n} is below the {len(must)} close rows that must be trained on (donors)")
    rest = np.setdiff1d(np.arange(len(rows)), must)
    picked = np.zeros(0, np.int64)
    if n > len(must):
        _, picked = carve_validation(targets[rest], (n - len(must)) / len(rest), seed)
    pos = np.sort(np.concatenate([must, rest[picked]]))
    return rows[pos], targets[pos]


def check_detectors(detectors: list[str], detector_params: dict | None, subsampled: bool) -> None:
    """Names and parameters (the registry's checks), then what this study cannot give a
    detector: another head's extras, or stage 01's rows when they were subsampled."""
    validate_detectors(detectors, detector_params)
    for name in detectors:
        cls = detector_class(name)
        if cls.reads_extras:
            raise ValueError(
                f"detector {name!r} reads the close-set head's extras {dict(cls.reads_extras)}; this study "
                "trains the linear head, which has none"
            )
        if cls.needs_close_set and subsampled:
            raise ValueError(
                f"detector {name!r} fine-tunes stage 01's network on stage 01's training rows, which the "
                "stages load whole; with --train-rows the model here trained on a subsample: drop one of them"
            )


def prepare(
    dataset: str,
    data_root: str | None,
    open_class: str,
    seed: int,
    input_size: int,
    arch: str,
    stem: str,
    train_rows: int | None,
    donors_in_train: bool,
    augment: bool,
    batch_size: int,
    device: str,
    cache_dir: str | None,
    progress: bool,
) -> Setup:
    """Load the splits as stage 01 does and fix the training rows, settings and key."""
    s = load_splits(dataset, data_root, open_class, input_size, cache_dir, seed=seed)
    labels = training_labels(s)  # the majority vote, as stage 01 by default
    donors = reference_donors(s.split.eval_train_index, len(s.train), seed)
    rows, targets = select_rows(
        labels.train_rows, labels.train_targets, train_rows, seed, keep=donors if donors_in_train else None
    )
    settings = recipe_settings(RECIPE)
    if not augment:  # the memorising condition: no augmentation at all
        settings["augment"] = None
    cfg = TrainConfig(epochs=1, batch_size=batch_size, **settings, seed=seed, device=device, progress=progress)
    if cfg.schedule in RUN_LENGTH_SCHEDULES:  # epochs would enter the key: no continuing
        raise ValueError(f"schedule {cfg.schedule!r} runs to zero over the epochs; this study extends one run")
    model = ModelConfig(arch, len(s.label_map.names), input_size, stem=stem)
    objective = make_objective(OBJECTIVE)
    setup = Setup(
        s, rows, targets, model, cfg, objective, "", float(np.isin(donors, rows).mean()), len(labels.train_rows)
    )
    setup.key, _ = training_key(fresh_model(setup), train_data(setup), None, cfg, objective)
    return setup


def fresh_model(setup: Setup) -> torch.nn.Module:
    """The initial network (seeded as stage 01 seeds it)."""
    torch.manual_seed(setup.cfg.seed)
    return build_model(setup.model, verbose=False)


def train_data(setup: Setup) -> TensorData:
    return TensorData(setup.splits.train.rows(setup.trained_rows), setup.trained_targets)


def _epoch_dir(out: Path, epochs: int) -> Path:
    return out / "epochs" / f"epoch_{epochs:04d}"


def weights_at(setup: Setup, epochs: int, out: Path) -> pd.DataFrame:
    """Make ``<epoch dir>/01_close_set/best.pt`` hold the weights after ``epochs`` epochs
    (training on from ``<out>/close_set/last.pt`` when needed); returns the history."""
    close = _epoch_dir(out, epochs) / "01_close_set"
    results = close / "results.json"
    if (close / "best.pt").is_file() and results.is_file() and read_json(results).get("training_key") == setup.key:
        return pd.read_csv(close / "history.csv")
    model = fresh_model(setup)
    trained: list[int] = []
    started = time.strftime("%Y-%m-%dT%H:%M:%S")
    result = fit(
        model,
        train_data(setup),
        None,  # no selection: the last epoch's weights
        replace(setup.cfg, epochs=epochs),
        setup.objective,
        out_dir=out / "close_set",
        callbacks=[lambda info: trained.append(info.epoch)],
        desc="close-set",
    )
    done = int(result.history["epoch"].max()) if len(result.history) else 0
    if done != epochs:
        raise ValueError(
            f"{out / 'close_set' / 'last.pt'} is at epoch {done}, past {epochs}, and epoch {epochs}'s weights "
            f"were not kept; ask for epoch counts of at least {done}, or use a new --out"
        )
    log_path = out / LOG_NAME
    log = read_json(log_path) if log_path.is_file() else []
    write_json(log_path, [*log, {"started": started, "to_epoch": epochs, "trained_epochs": trained}])
    torch_save(close / "best.pt", {k: v.cpu() for k, v in model.state_dict().items()})
    write_csv(close / "history.csv", result.history)
    s = setup.splits
    write_json(
        results,
        {
            "best_epoch": epochs,
            "selection": "none: the last epoch's weights",
            "class_names": s.label_map.names,
            "validation": s.validation_source,
            "data_fingerprint": s.fingerprint,
            "n_train": len(setup.trained_rows),
            "arch": setup.model.arch,
            "input_size": setup.model.input_size,
            "stem": setup.model.stem,
            "head": setup.model.head,
            "head_params": setup.model.head_params,
            "objective": OBJECTIVE,
            "objective_params": {},
            "recipe": RECIPE,
            "recipe_settings": recipe_settings(RECIPE),
            "augment": setup.cfg.augment is not None,
            "label_mode": "majority",
            "label_noise": None,
            "training_key": setup.key,
        },
    )
    return result.history


def _scored(folder: Path, key: str, detectors: list[str], detector_params: dict) -> list[dict] | None:
    """The rows of an epoch count already scored with this training and these detectors."""
    path = folder / MARKER_NAME
    if not path.is_file():
        return None
    done = read_json(path)
    if done.get("training_key") != key or repr(done.get("detector_params")) != repr(detector_params):
        return None
    if not set(detectors) <= set(done.get("detectors", [])):
        return None
    return [row for row in done["rows"] if row["detector"] in detectors]


def score_epoch(setup: Setup, epochs: int, out: Path, params: dict) -> list[dict]:
    """Stages 02 and 03 on the weights after ``epochs`` epochs, under both protocols; one
    row per (protocol, detector)."""
    folder = _epoch_dir(out, epochs)
    detectors, detector_params = params["detectors"], params["detector_params"] or {}
    rows = _scored(folder, setup.key, detectors, detector_params)
    if rows is not None:
        return rows
    history = weights_at(setup, epochs, out)
    run = dict(
        dataset=params["dataset"],
        data_root=params["data_root"],
        open_class=params["open_class"],
        seed=params["seed"],
        device=params["device"],
        run_dir=str(folder),
        input_size=params["input_size"],
        cache_dir=params["cache_dir"],
        stem=params["stem"],
        progress=params["progress"],
    )
    stages.predict_pseudo_labels(**run, arch=params["arch"])
    metrics = stages.detect_open_set(
        **run, protocols=list(PROTOCOLS), detectors=detectors, detector_params=detector_params or None
    )
    z = np.load(folder / "02_pseudo_labels" / "outputs.npz")
    all_train = z["all_train_logits"]
    test_acc = read_json(folder / "02_pseudo_labels" / "summary.json")["close_acc"]
    last = history.iloc[-1]
    epoch_row = {
        "epoch": epochs,
        "train_acc": accuracy(setup.trained_targets, all_train[setup.trained_rows].argmax(1)),
        "train_acc_in_training": float(last["train_acc"]),  # train mode, averaged over the epoch
        "train_loss": float(last["train_loss"]),
        "test_acc": float(test_acc),
        "mean_max_logit_trained": float(all_train[setup.trained_rows].max(1).mean()),
        "n_trained": len(setup.trained_rows),
        "donors_trained": setup.donors_trained,
    }
    rows = []
    for protocol in PROTOCOLS:
        data = stages.load_openset_data(str(folder), protocol, seed=params["seed"])
        top = data.logits.max(1)
        is_open = data.is_open
        from_train = data.table["origin"].to_numpy() == "train"
        means = {
            "mean_max_logit_close": float(top[~is_open].mean()),
            "mean_max_logit_open": float(top[is_open].mean()),
            "mean_max_logit_open_train": float(top[is_open & from_train].mean()) if from_train.any() else np.nan,
        }
        for m in metrics[metrics["protocol"] == protocol].to_dict("records"):
            rows.append(
                {
                    **epoch_row,
                    "protocol": protocol,
                    "detector": m["detector"],
                    **{k: float(m[k]) for k in ("auroc", "fpr95", "aupr_in", "aupr_out")},
                    "n_close": int(m["n_close"]),
                    "n_open": int(m["n_open"]),
                    **means,
                }
            )
    results = folder / "01_close_set" / "results.json"
    write_json(results, {**read_json(results), "test_acc": float(test_acc)})
    write_json(
        folder / MARKER_NAME,
        {"training_key": setup.key, "detectors": detectors, "detector_params": detector_params, "rows": rows},
    )
    return rows


COLUMNS = [
    "epoch",
    "protocol",
    "detector",
    "auroc",
    "fpr95",
    "aupr_in",
    "aupr_out",
    "train_acc",
    "train_acc_in_training",
    "train_loss",
    "test_acc",
    "mean_max_logit_close",
    "mean_max_logit_open",
    "mean_max_logit_open_train",
    "mean_max_logit_trained",
    "n_close",
    "n_open",
    "n_trained",
    "donors_trained",
]


def study(
    dataset: str = "synthetic",
    data_root: str | None = None,
    open_class: str = "surprise",
    seed: int = 0,
    input_size: int = 48,
    arch: str = "smallface",
    stem: str = "auto",
    train_rows: int | None = None,
    donors_in_train: bool = False,
    epochs: list[int] = (1, 2, 4, 8, 16, 32),
    augment: bool = False,
    batch_size: int = 128,
    detectors: list[str] = DEFAULT_DETECTORS,
    detector_params: dict | None = None,
    out: str | None = None,
    device: str = "cpu",
    cache_dir: str | None = "outputs/cache",
    progress: bool = True,
) -> pd.DataFrame:
    """Train, score and write every file of the module docstring; returns the table."""
    t0 = time.perf_counter()
    counts = sorted({int(e) for e in epochs})
    if not counts or counts[0] < 1:
        raise ValueError(f"--epochs must be positive epoch counts, got {list(epochs)}")
    if train_rows is not None and train_rows < 2:
        raise ValueError(f"--train-rows must be at least 2, got {train_rows}")
    detectors = list(detectors)
    check_detectors(detectors, detector_params, subsampled=train_rows is not None)
    out_dir = Path(out or f"outputs/memorisation/{dataset}_open-{open_class}_seed{seed}")
    params = {
        "dataset": dataset,
        "data_root": data_root,
        "open_class": open_class,
        "seed": seed,
        "input_size": input_size,
        "arch": arch,
        "stem": stem,
        "train_rows": train_rows,
        "donors_in_train": donors_in_train,
        "epochs": counts,
        "augment": augment,
        "batch_size": batch_size,
        "detectors": detectors,
        "detector_params": detector_params,
        "device": device,
        "cache_dir": cache_dir,
        "progress": progress,
    }
    setup = prepare(
        dataset,
        data_root,
        open_class,
        seed,
        input_size,
        arch,
        stem,
        train_rows,
        donors_in_train,
        augment,
        batch_size,
        device,
        cache_dir,
        progress,
    )
    s = setup.splits
    set_manifest(
        out_dir,
        params={k: v for k, v in params.items() if k != "progress"},
        environment=collect_environment(),
        data={
            "dataset": dataset,
            "fingerprint": s.fingerprint,
            "validation": s.validation_source,
            "n_train_split": len(s.train),
            "n_close_train": setup.n_close_train,
            "n_trained": len(setup.trained_rows),
            "n_open_train": len(s.split.eval_train_index),
            "donors_trained": setup.donors_trained,
        },
        training={
            "key": setup.key,
            "objective": OBJECTIVE,
            "recipe": RECIPE,
            "settings": setup.cfg.key_fields(),
            "selection": "none: the last epoch's weights",
            "checkpoint": str(out_dir / "close_set"),
        },
    )
    print(
        f"{dataset}: training on {len(setup.trained_rows)} of {setup.n_close_train} close training rows "
        f"(augment {'on' if augment else 'off'}); {setup.donors_trained:.1%} of the open training rows' "
        "reference donors are among them"
    )
    rows = []
    for count in progress_bar(counts, desc="epoch counts", disable=not progress):
        rows += score_epoch(setup, count, out_dir, params)
    table = pd.DataFrame(rows)[COLUMNS].sort_values(["epoch", "protocol", "detector"], kind="stable")
    table = table.reset_index(drop=True)
    write_csv(out_dir / CSV_NAME, table)
    figure = plots.metric_vs_epochs(table, title=f"{dataset}, open {open_class}, seed {seed}")
    plots.save_figure(figure, out_dir / FIGURE_NAME)
    set_manifest(out_dir, scored_epochs=counts, wall_seconds=round(time.perf_counter() - t0, 1))
    return table


def format_table(table: pd.DataFrame) -> str:
    """Two blocks: per epoch count the accuracies and mean max-logits, then AUROC (FPR@95)
    per detector and protocol (h = honest, r = reference)."""
    per_epoch = table.drop_duplicates(["epoch", "protocol"]).pivot(
        index="epoch", columns="protocol", values=["mean_max_logit_close", "mean_max_logit_open_train"]
    )
    first = table.drop_duplicates("epoch").set_index("epoch")
    block = pd.DataFrame(
        {
            "train_acc": first["train_acc"],
            "test_acc": first["test_acc"],
            "maxlogit close": per_epoch[("mean_max_logit_close", "honest")],
            "open-train h": per_epoch[("mean_max_logit_open_train", "honest")],
            "open-train r": per_epoch[("mean_max_logit_open_train", "reference")],
            "trained": first["mean_max_logit_trained"],
        }
    )
    auroc = table.assign(
        cell=[f"{a:.3f} ({f:.2f})" for a, f in zip(table["auroc"], table["fpr95"])],
        col=[f"{d} {p[0]}" for d, p in zip(table["detector"], table["protocol"])],
    ).pivot(index="epoch", columns="col", values="cell")
    order = [f"{d} {p[0]}" for d in dict.fromkeys(table["detector"]) for p in PROTOCOLS]
    return (
        "mean max-logit of the close test rows, of the open training rows under each protocol and of "
        "the rows trained on\n"
        + block.to_string(float_format=lambda x: f"{x:.3f}")
        + "\n\nAUROC (FPR@95); h = honest, r = reference protocol\n"
        + auroc[order].to_string()
    )


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dataset", default="synthetic")
    ap.add_argument("--data-root", default=None)
    ap.add_argument("--open", default="surprise", help="the open class")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--input-size", type=int, default=48)
    ap.add_argument("--arch", default="smallface")
    ap.add_argument("--stem", default="auto")
    ap.add_argument("--train-rows", type=int, default=None, help="stratified subsample of the close training rows")
    ap.add_argument(
        "--donors-in-train",
        action="store_true",
        help="with --train-rows: the close rows that the reference protocol makes donors are always trained on",
    )
    ap.add_argument("--epochs", nargs="+", type=int, default=[1, 2, 4, 8, 16, 32], help="epoch counts to score")
    ap.add_argument("--augment", choices=["on", "off"], default="off", help="the training augmentation (off: memorise)")
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--detectors", nargs="+", default=list(DEFAULT_DETECTORS))
    ap.add_argument("--detector-params", default=None, help="a Python literal {name: {param: value}}")
    ap.add_argument("--out", default=None, help="default outputs/memorisation/<dataset>_open-<class>_seed<seed>")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--cache-dir", default="outputs/cache")
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)
    try:
        table = study(
            dataset=args.dataset,
            data_root=args.data_root,
            open_class=args.open,
            seed=args.seed,
            input_size=args.input_size,
            arch=args.arch,
            stem=args.stem,
            train_rows=args.train_rows,
            donors_in_train=args.donors_in_train,
            epochs=args.epochs,
            augment=args.augment == "on",
            batch_size=args.batch_size,
            detectors=args.detectors,
            detector_params=ast.literal_eval(args.detector_params) if args.detector_params else None,
            out=args.out,
            device=args.device,
            cache_dir=args.cache_dir,
            progress=not args.no_progress,
        )
    except (ValueError, FileNotFoundError, SyntaxError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(format_table(table))
    out = args.out or f"outputs/memorisation/{args.dataset}_open-{args.open}_seed{args.seed}"
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
