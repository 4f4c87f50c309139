"""The pipeline's stages as plain functions.

Notebooks ``01``..``04`` call these and then plot; ``python -m ferlib.run --executor
python`` calls them directly on machines without Jupyter. Each stage reads the previous
stage's files under ``run_dir`` and writes its own folder, so any stage can be re-run
alone and every intermediate file can be opened in JupyterLab.

    run_dir/
      01_close_set/   best.pt, last.pt, history.csv, results.json
      02_pseudo_labels/  pseudo_labels.csv, outputs.npz, spread.csv
      03_detect/     scores_<protocol>.csv, <protocol>/cycle/..., detector_features_<protocol>.npy
      metrics.csv    one row per (protocol, detector)
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from ferlib.data import load_dataset
from ferlib.data.cache import ImageCache, build_cache
from ferlib.data.splits import LabelMap, OpenSetSplit, carve_validation, openset_split
from ferlib.emotions import BASIC7, Emotion, parse_emotion
from ferlib.io import read_json, write_csv, write_json
from ferlib.manifest import update_manifest
from ferlib.metrics import accuracy, confusion, metrics_table
from ferlib.models import ModelConfig, build_model
from ferlib.openset.data import TABLE_COLUMNS, OpenSetData, apply_protocol
from ferlib.openset.detect import make_detector
from ferlib.train import TensorData, TrainConfig, fit, load_history, predict

DEFAULT_ROOTS = {"synthetic": "data/synthetic", "ferplus": "data/ferplus", "rafdb": "data/raf-basic",
                 "affectnet": "data/AffectNet", "folders": "data/folders"}
DEFAULT_DETECTORS = ("msp", "max_logit", "energy", "entropy", "mahalanobis", "knn", "tknn", "cycle", "contrast")
TRAINED_DETECTORS = ("cycle", "contrast")  # these train networks on the evaluation images


# ----------------------------------------------------------------------------- data
@dataclass
class Splits:
    """Decoded splits of one data set and the open-set protocol over them."""

    train: ImageCache
    valid: ImageCache | None
    test: ImageCache
    split: OpenSetSplit
    fingerprint: str

    @property
    def label_map(self) -> LabelMap:
        return self.split.label_map


def _open(open_class) -> Emotion | None:
    if open_class is None or str(open_class).lower() in ("none", "", "null"):
        return None
    return parse_emotion(open_class)


def load_splits(dataset: str, data_root: str | None, open_class, input_size: int,
                cache_dir: str | None = "outputs/cache", synthetic_seed: int = 0,
                num_classes: int = 7) -> Splits:
    """Load train/valid/test, decode each once into the uint8 cache, apply the protocol.

    The synthetic default writes itself under ``data_root`` on first use, then goes
    through the same class-folder loader as a user's data.
    """
    root = Path(data_root or DEFAULT_ROOTS.get(dataset, f"data/{dataset}"))
    name = dataset
    if dataset == "synthetic":
        from ferlib.data.synthetic import SyntheticConfig, write_synthetic

        if not (root / "synthetic.json").exists():  # an existing set (any size) is used as it is
            write_synthetic(root, SyntheticConfig(seed=synthetic_seed))
        name = "folders"
    options = {"num_classes": num_classes} if name in ("ferplus", "affectnet") else {}
    caches: dict[str, ImageCache | None] = {}
    for split in ("train", "valid", "test"):
        try:
            ds = load_dataset(name, root, split, **options)
        except Exception:
            if split == "valid":  # not every data set has one (RAF-DB); carve it from train
                caches[split] = None
                continue
            raise
        caches[split] = build_cache(ds, input_size, cache_dir=Path(cache_dir) if cache_dir else None)
    train, test = caches["train"], caches["test"]
    classes = tuple(e for e in BASIC7 if e in set(train.labels.tolist()) | set(test.labels.tolist()))
    if num_classes == 8:
        classes = tuple(sorted(set(train.labels.tolist()) | set(test.labels.tolist())))
        classes = tuple(Emotion(c) for c in classes)
    split = openset_split(train.labels.numpy(), test.labels.numpy(), classes, _open(open_class))
    fp = "-".join(c.fingerprint for c in caches.values() if c is not None)
    return Splits(train, caches["valid"], test, split, fp)


def _close_rows(cache: ImageCache, label_map: LabelMap) -> tuple[np.ndarray, np.ndarray]:
    targets = label_map.encode(cache.labels.numpy())
    rows = np.flatnonzero(targets >= 0)
    return rows, targets[rows]


def _validation(s: Splits, val_fraction: float, seed: int) -> tuple[TensorData, TensorData, str]:
    """Training and validation data: the data set's own validation split when it has one,
    else a stratified split carved from training data. Never the test split."""
    train_rows, train_targets = s.split.train_index, s.split.train_targets
    if s.valid is not None:
        rows, targets = _close_rows(s.valid, s.label_map)
        val = TensorData(s.valid.images[torch.as_tensor(rows)], targets)
        source = "valid split"
    else:
        keep, held = carve_validation(train_targets, val_fraction, seed)
        val = TensorData(s.train.images[torch.as_tensor(train_rows[held])], train_targets[held])
        train_rows, train_targets = train_rows[keep], train_targets[keep]
        source = f"{val_fraction:.0%} carved from train"
    return TensorData(s.train.images[torch.as_tensor(train_rows)], train_targets), val, source


# ----------------------------------------------------------------------------- stage 01
def train_close_set(dataset: str = "synthetic", data_root: str | None = None, open_class=None, seed: int = 0,
                    device: str = "cpu", run_dir: str = "outputs/run", arch: str = "resnet18",
                    input_size: int = 48, epochs: int = 10, batch_size: int = 128, lr: float = 1e-3,
                    weight_decay: float = 1e-4, lr_gamma: float = 0.9, pretrained: str | None = None,
                    val_fraction: float = 0.1, cache_dir: str | None = "outputs/cache", stem: str = "auto",
                    amp: bool = False, progress: bool = True, **_: object) -> dict:
    """Train the close-set model (open class held out) and test it on the close test rows."""
    t0 = time.perf_counter()
    out = Path(run_dir) / "01_close_set"
    s = load_splits(dataset, data_root, open_class, input_size, cache_dir)
    train, val, val_source = _validation(s, val_fraction, seed)
    names = s.label_map.names
    print(f"{dataset}: {len(train)} train, {len(val)} validation ({val_source}), classes {names}, "
          f"open class {s.split.open_class.label if s.split.open_class is not None else 'none'}")
    torch.manual_seed(seed)
    model = build_model(ModelConfig(arch, len(names), input_size, stem=stem, pretrained=pretrained))
    cfg = TrainConfig(epochs=epochs, batch_size=batch_size, lr=lr, weight_decay=weight_decay, lr_gamma=lr_gamma,
                      seed=seed, device=device, amp=amp, progress=progress)
    result = fit(model, train, val, cfg, out_dir=out, desc="close-set")
    rows, targets = _close_rows(s.test, s.label_map)
    pred = predict(model, s.test.images[torch.as_tensor(rows)], device=device, progress=progress, amp=amp)
    y_pred = pred.logits.argmax(1).numpy()
    results = {"test_acc": accuracy(targets, y_pred), "n_test_close": len(rows),
               "best_epoch": result.best_epoch, "class_names": names, "validation": val_source,
               "confusion": confusion(targets, y_pred, len(names)).tolist(),
               "train_seconds": float(result.history["seconds"].sum()), "wall_seconds": time.perf_counter() - t0,
               "data_fingerprint": s.fingerprint, "n_train": len(train), "n_val": len(val)}
    write_json(out / "results.json", results)
    update_manifest(run_dir, data={"dataset": dataset, "fingerprint": s.fingerprint},
                    close_set={k: results[k] for k in ("test_acc", "best_epoch", "wall_seconds")})
    print(f"close-set test accuracy {results['test_acc']:.4f} on {len(rows)} images "
          f"(best epoch {result.best_epoch}, {results['wall_seconds'] / 60:.1f} min)")
    return {**results, "history": result.history}


def load_close_set(run_dir: str) -> tuple[dict, pd.DataFrame]:
    """Results and per-epoch history of a finished stage 01 (for plots)."""
    out = Path(run_dir) / "01_close_set"
    return read_json(out / "results.json"), load_history(out)


def _close_model(run_dir: str, arch: str, input_size: int, num_classes: int, device: str, stem: str = "auto"):
    path = Path(run_dir) / "01_close_set" / "best.pt"
    if not path.exists():
        raise FileNotFoundError(f"{path}: no close-set model; run stage 01 first")
    model = build_model(ModelConfig(arch, num_classes, input_size, stem=stem), verbose=False)
    model.load_state_dict(torch.load(path, map_location="cpu"))
    return model.to(device)


# ----------------------------------------------------------------------------- stage 02
def predict_pseudo_labels(dataset: str = "synthetic", data_root: str | None = None, open_class=None,
                          seed: int = 0, device: str = "cpu", run_dir: str = "outputs/run",
                          arch: str = "resnet18", input_size: int = 48, cache_dir: str | None = "outputs/cache",
                          stem: str = "auto", amp: bool = False, progress: bool = True, **_: object) -> pd.DataFrame:
    """Pseudo labels for the evaluation set, aligned by sample index.

    The evaluation set is the test split followed by the open class's training images
    (METHODS.md). Prediction walks the images in row order (no loader, no shuffle), so row
    ``i`` of the table holds the prediction for image ``i``.
    """
    if _open(open_class) is None:
        raise ValueError("stage 02 needs an open class (open_class is none)")
    out = Path(run_dir) / "02_pseudo_labels"
    s = load_splits(dataset, data_root, open_class, input_size, cache_dir)
    names = s.label_map.names
    model = _close_model(run_dir, arch, input_size, len(names), device, stem)
    test_rows, train_rows = s.split.eval_test_index, s.split.eval_train_index
    images = torch.cat([s.test.images[torch.as_tensor(test_rows)], s.train.images[torch.as_tensor(train_rows)]])
    pred = predict(model, images, device=device, progress=progress, desc="pseudo labels", amp=amp)
    all_train = predict(model, s.train.images, device=device, progress=progress, desc="training split", amp=amp)
    labels = np.concatenate([s.test.labels.numpy()[test_rows], s.train.labels.numpy()[train_rows]])
    table = pd.DataFrame({
        "index": np.arange(len(labels)),
        "path": [s.test.paths[i] for i in test_rows] + [s.train.paths[i] for i in train_rows],
        "label": labels,
        "target": s.label_map.encode(labels),
        "pseudo": pred.logits.argmax(1).numpy(),
        "is_open": labels == int(s.split.open_class),
        "origin": ["test"] * len(test_rows) + ["train"] * len(train_rows),
        "source_index": np.concatenate([test_rows, train_rows]),
    })[TABLE_COLUMNS]
    logits = pred.logits.numpy()
    for k in range(logits.shape[1]):
        table[f"logit_{k}"] = logits[:, k]
    write_csv(out / "pseudo_labels.csv", table)
    np.savez(out / "outputs.tmp.npz", eval_logits=logits, eval_features=pred.features.numpy(),
             all_train_logits=all_train.logits.numpy(), all_train_features=all_train.features.numpy(),
             train_index=s.split.train_index, train_targets=s.split.train_targets, class_names=np.array(names))
    (out / "outputs.tmp.npz").replace(out / "outputs.npz")
    close = ~table["is_open"].to_numpy()
    summary = {"n_eval": len(table), "n_open": int(table["is_open"].sum()),
               "close_acc": accuracy(table["target"].to_numpy()[close], table["pseudo"].to_numpy()[close])}
    write_json(out / "summary.json", summary)
    update_manifest(run_dir, pseudo_labels=summary)
    print(f"{summary['n_eval']} evaluation samples, {summary['n_open']} open; "
          f"pseudo-label accuracy on close samples {summary['close_acc']:.4f}")
    return table


def load_openset_data(run_dir: str, protocol: str = "honest", images: torch.Tensor | None = None,
                      seed: int = 0, train_images: torch.Tensor | None = None) -> OpenSetData:
    """Stage 02's files as :class:`OpenSetData`, under ``protocol``."""
    out = Path(run_dir) / "02_pseudo_labels"
    table = pd.read_csv(out / "pseudo_labels.csv")
    z = np.load(out / "outputs.npz")
    data = OpenSetData(table=table[TABLE_COLUMNS].copy(), logits=z["eval_logits"], features=z["eval_features"],
                       train_features=z["all_train_features"][z["train_index"]], train_targets=z["train_targets"],
                       images=images, train_images=train_images,
                       class_names=tuple(str(n) for n in z["class_names"]))
    return apply_protocol(data, protocol, z["all_train_logits"], z["all_train_features"], seed=seed)


def _eval_images(s: Splits) -> torch.Tensor:
    return torch.cat([s.test.images[torch.as_tensor(s.split.eval_test_index)],
                      s.train.images[torch.as_tensor(s.split.eval_train_index)]])


# ----------------------------------------------------------------------------- stage 03
def detect_open_set(dataset: str = "synthetic", data_root: str | None = None, open_class=None, seed: int = 0,
                    device: str = "cpu", run_dir: str = "outputs/run", input_size: int = 48,
                    cache_dir: str | None = "outputs/cache", protocols=("honest", "reference"),
                    detectors=DEFAULT_DETECTORS, eval_subset: str = "all", cycle: dict | None = None,
                    contrast: dict | None = None, stem: str = "auto", amp: bool = False, progress: bool = True,
                    **_: object) -> pd.DataFrame:
    """Score every evaluation sample with every detector under every protocol.

    ``eval_subset="test"`` restricts the evaluation set to the test split (open samples
    then a minority), one of the ablations of the issue. ``cycle`` overrides
    :class:`CycleConfig` fields (cycles, epochs_per_cycle, select_ratio, lam...), ``contrast``
    those of :class:`~ferlib.openset.contrast.ContrastConfig`.
    """
    if eval_subset not in ("all", "test"):
        raise ValueError(f"eval_subset must be 'all' or 'test', got {eval_subset!r}")
    out = Path(run_dir) / "03_detect"
    images = train_images = None
    if any(d in TRAINED_DETECTORS for d in detectors):
        s = load_splits(dataset, data_root, open_class, input_size, cache_dir)
        images = _eval_images(s)
        train_images = s.train.images[torch.as_tensor(s.split.train_index)]
    frames = []
    for protocol in protocols:
        data = load_openset_data(run_dir, protocol, images, seed, train_images)
        if eval_subset == "test":
            data = data.subset(data.table["origin"].to_numpy() == "test")
        scores = data.table.copy()
        for name in detectors:
            t0 = time.perf_counter()
            if name in TRAINED_DETECTORS:
                overrides = (cycle if name == "cycle" else contrast) or {}
                # the contrast detector reads no label, so one fit serves every protocol
                folder = out / eval_subset / (protocol if name == "cycle" else "any_protocol") / name
                params = {"input_size": input_size, "stem": stem, "seed": seed, "device": device,
                          "progress": progress, "amp": amp, **overrides, "out_dir": str(folder)}
                det = make_detector(name, **params)
                scores[name] = det.fit_score(data)
                if name == "cycle":
                    np.save(out / f"detector_features_{protocol}.npy", det.features_)
            else:
                scores[name] = make_detector(name).fit_score(data)
            print(f"[{protocol}] {name}: {time.perf_counter() - t0:.1f} s")
        write_csv(out / f"scores_{protocol}.csv", scores)
        table = metrics_table(scores, list(detectors), protocol)
        close = ~scores["is_open"].to_numpy()
        table["close_acc"] = accuracy(scores["target"].to_numpy()[close], scores["pseudo"].to_numpy()[close])
        table["eval_subset"] = eval_subset
        frames.append(table)
    metrics = pd.concat(frames, ignore_index=True)
    write_csv(Path(run_dir) / "metrics.csv", metrics)
    update_manifest(run_dir, detection={"protocols": list(protocols), "eval_subset": eval_subset,
                                        "cycle": cycle or {}, "contrast": contrast or {}})
    return metrics


#: the ablation of the issue: each variant changes one choice of the paper's method
CYCLE_ABLATIONS: dict[str, dict] = {
    "paper": {},
    "lam=0": {"lam": 0.0},
    "no_cycle_training": {"cycle_training": False},
    "no_class_balance": {"class_balanced": False},
    "test_split_only": {"eval_subset": "test"},
}


def ablate_cycle(dataset: str = "synthetic", data_root: str | None = None, open_class=None, seed: int = 0,
                 device: str = "cpu", run_dir: str = "outputs/run", input_size: int = 48,
                 cache_dir: str | None = "outputs/cache", protocols=("honest",), variants=None,
                 cycle: dict | None = None, stem: str = "auto", amp: bool = False, progress: bool = True,
                 **_: object) -> pd.DataFrame:
    """Run the paper's detector under each variant of :data:`CYCLE_ABLATIONS` (or ``variants``,
    a dict name -> overrides; ``eval_subset`` is an override too) on a run whose stages 01-02
    are finished, beside max softmax on the same rows.

    Each variant's networks checkpoint under ``03_detect/ablation/<variant>/<protocol>/`` (a
    killed ablation resumes); the table goes to ``run_dir/ablation.csv``: one row per
    (variant, protocol) with the cycle detector's and max softmax's AUROC and FPR@95.
    """
    from ferlib.metrics import openset_metrics

    variants = dict(CYCLE_ABLATIONS if variants is None else variants)
    s = load_splits(dataset, data_root, open_class, input_size, cache_dir)
    images = _eval_images(s)
    out = Path(run_dir) / "03_detect" / "ablation"
    rows = []
    for protocol in protocols:
        full = load_openset_data(run_dir, protocol, images, seed)
        for name, overrides in variants.items():
            overrides = {**(cycle or {}), **overrides}
            subset = overrides.pop("eval_subset", "all")
            data = full.subset(full.table["origin"].to_numpy() == "test") if subset == "test" else full
            params = {"input_size": input_size, "stem": stem, "seed": seed, "device": device, "progress": progress,
                      "amp": amp, **overrides, "out_dir": str(out / name / protocol)}
            t0 = time.perf_counter()
            score = make_detector("cycle", **params).fit_score(data)
            seconds = time.perf_counter() - t0
            is_open = data.table["is_open"].to_numpy()
            cyc = openset_metrics(score, is_open)
            msp = openset_metrics(make_detector("msp").fit_score(data), is_open)
            rows.append({"variant": name, "protocol": protocol, "eval_subset": subset, "n": len(data),
                         "open_fraction": float(is_open.mean()), "cycle_auroc": cyc["auroc"],
                         "cycle_fpr95": cyc["fpr95"], "msp_auroc": msp["auroc"], "msp_fpr95": msp["fpr95"],
                         "seconds": round(seconds, 1), "overrides": repr(overrides)})
            print(f"[{protocol}] {name}: cycle AUROC {cyc['auroc']:.3f} (msp {msp['auroc']:.3f}), {seconds:.0f} s")
    table = pd.DataFrame(rows)
    write_csv(Path(run_dir) / "ablation.csv", table)
    return table


def load_scores(run_dir: str, protocol: str = "honest") -> pd.DataFrame:
    return pd.read_csv(Path(run_dir) / "03_detect" / f"scores_{protocol}.csv")
