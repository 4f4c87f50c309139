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


# ----------------------------------------------------------------------------- stage 04
#: the scores table's fixed columns; every column after them is a detector's score
SCORE_TABLE_COLUMNS = tuple(TABLE_COLUMNS)
EMBED_METHODS = ("umap", "tsne", "t-sne")


def _detector_columns(scores: pd.DataFrame) -> list[str]:
    """The scores table's detector columns: every numeric column after the fixed ones."""
    cols = [c for c in scores.columns if c not in SCORE_TABLE_COLUMNS]
    return [c for c in cols if pd.api.types.is_numeric_dtype(scores[c]) and not pd.api.types.is_bool_dtype(scores[c])]


def _run_seed(run_dir: Path, default: int) -> int:
    """The seed the run was made with (the reference protocol's permutation depends on it)."""
    from ferlib.manifest import read_manifest

    try:
        value = (read_manifest(run_dir).get("params") or {}).get("seed")
        return default if value is None else int(value)
    except (ValueError, TypeError):
        return default


def _align_rows(scores: pd.DataFrame, table: pd.DataFrame, what: str) -> np.ndarray:
    """Positions in ``table`` of the scores table's rows, matched on (origin, source_index)
    (stage 03's ``eval_subset`` may have kept only some evaluation rows)."""
    def key(frame: pd.DataFrame) -> pd.MultiIndex:
        return pd.MultiIndex.from_arrays([frame["origin"].astype(str).to_numpy(),
                                          frame["source_index"].to_numpy(dtype=np.int64)])

    lookup = pd.Series(np.arange(len(table)), index=key(table))
    rows = lookup.reindex(key(scores)).to_numpy()
    if np.isnan(rows.astype(float)).any():
        missing = int(np.isnan(rows.astype(float)).sum())
        raise ValueError(f"{missing} rows of the scores table are not in {what}; was stage 02 re-run "
                         "after stage 03? Re-run stage 03.")
    return rows.astype(np.int64)


def _suptitle(fig, text: str) -> None:
    """A figure title in the kit's style (9 pt; ``plots.style`` is only active inside plots)."""
    from ferlib import plots

    with plots.style():
        fig.suptitle(text)


def _write_npz(path: Path, arrays: dict) -> Path:
    """``np.savez`` through :func:`ferlib.io.atomic_write` (a file handle, so no suffix is added)."""
    from ferlib.io import atomic_write

    def writer(tmp: Path) -> None:
        with open(tmp, "wb") as handle:
            np.savez(handle, **arrays)

    return atomic_write(path, writer)


def _subsample(n: int, max_points: int | None, seed: int) -> np.ndarray:
    """Sorted row positions: all rows, or ``max_points`` drawn without replacement with ``seed``."""
    if max_points is None or n <= max_points:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=int(max_points), replace=False))


def visualise(run_dir: str = "outputs/run", protocols=("honest", "reference"), embed_method: str = "umap",
              embed_max_points: int | None = 3000, seed: int = 0, **_: object) -> dict[str, list[Path]]:
    """Redraw every figure of a finished run from its files alone (no model, no data set).

    Writes PNG (300 dpi) + PDF into ``run_dir/figures/``:

    * ``learning_curves``, ``confusion_matrix``: stage 01's history and results, if present;
    * per protocol whose ``03_detect/scores_<protocol>.csv`` exists:
      ``score_histograms_<protocol>`` (a panel per detector column, AUROC under each),
      ``loss_histogram_<protocol>`` (the paper's per-sample loss, column ``cycle``, if present),
      ``roc_curves_<protocol>`` (every detector), ``pseudo_label_spread_<protocol>`` and
      ``embedding_<method>_<protocol>``: the close-set model's evaluation features (as the
      detectors saw them under that protocol) and, when ``detector_features_<protocol>.npy``
      exists, the cycle detector's features side by side, coloured by true class with open
      samples as red crosses. The coordinates go to ``embedding_<method>_<protocol>.npz``.

    Embeddings use ``embed_method`` (``"umap"`` or ``"tsne"``) on at most ``embed_max_points``
    rows drawn with ``seed`` (the same rows in every panel; ``None``: all rows, ``0``: no
    embeddings). The same files and seed give the same figures. Returns the written paths by
    figure name (PNG first, then PDF; the embedding's ``.npz`` third).
    """
    from ferlib import plots

    run = Path(run_dir)
    method = str(embed_method).lower()
    if method not in EMBED_METHODS:
        raise ValueError(f"embed_method must be 'umap' or 'tsne', got {embed_method!r}")
    method = "tsne" if method == "t-sne" else method
    if isinstance(protocols, str):
        protocols = [protocols]
    detect, pseudo_dir, figures = run / "03_detect", run / "02_pseudo_labels", run / "figures"
    present = [p for p in protocols if (detect / f"scores_{p}.csv").is_file()]
    if not present:
        raise FileNotFoundError(f"{detect}: no scores_<protocol>.csv for protocols {list(protocols)}; "
                                "run stage 03 first")
    skipped = [p for p in protocols if p not in present]
    if skipped:
        print(f"no scores file for protocol(s) {skipped}: skipped")
    written: dict[str, list[Path]] = {}

    def save(fig, name: str) -> None:
        written[name] = plots.save_figure(fig, figures / name)

    # stage 01: learning curves and test confusion matrix
    close_dir = run / "01_close_set"
    if (close_dir / "results.json").is_file() and ((close_dir / "history.csv").is_file()
                                                    or (close_dir / "history.json").is_file()):
        results, history = load_close_set(str(run))
        save(plots.learning_curves(history), "learning_curves")
        if results.get("confusion") is not None and results.get("class_names"):
            save(plots.confusion_matrix_plot(results["confusion"], results["class_names"]), "confusion_matrix")

    metrics_path = run / "metrics.csv"
    metrics = pd.read_csv(metrics_path) if metrics_path.is_file() else None
    has_outputs = (pseudo_dir / "pseudo_labels.csv").is_file() and (pseudo_dir / "outputs.npz").is_file()
    if not has_outputs:
        print(f"{pseudo_dir}: no pseudo_labels.csv + outputs.npz; close-set embeddings skipped")
    run_seed = _run_seed(run, seed)
    cache: dict[tuple, np.ndarray] = {}  # identical features (e.g. both protocols' test rows) embed once

    def embed(features: np.ndarray, labels, is_open) -> np.ndarray:
        import hashlib

        x = np.ascontiguousarray(features, dtype=np.float32)
        key = (hashlib.sha1(x.tobytes()).hexdigest(), x.shape)
        if key not in cache:
            # one thread, as UMAP's n_jobs=1: t-SNE's OpenMP threads make the result depend on
            # the thread count, and on a busy machine they spin-wait (10x slower)
            from threadpoolctl import threadpool_limits

            with threadpool_limits(limits=1):
                cache[key] = plots.embedding(x, labels, is_open, method=method, seed=seed)
        return cache[key]

    for protocol in present:
        scores = load_scores(str(run), protocol)
        detectors = _detector_columns(scores)
        if not detectors:
            print(f"[{protocol}] the scores table has no detector columns")
            continue
        proto_metrics = None
        if metrics is not None and {"detector", "protocol", "auroc"} <= set(metrics.columns):
            proto_metrics = metrics[metrics["protocol"].astype(str) == protocol]
            proto_metrics = proto_metrics.drop_duplicates("detector", keep="last")
        fig = plots.score_histograms(scores, detectors, proto_metrics, protocol)
        if fig.legends:  # the close/open legend sits on top: name the protocol there
            with plots.style():
                fig.legends[0].set_title(f"{protocol} protocol")
        save(fig, f"score_histograms_{protocol}")
        if "cycle" in detectors:
            fig = plots.loss_histogram(scores, "cycle")
            _suptitle(fig, f"cycle detector, {protocol} protocol")
            save(fig, f"loss_histogram_{protocol}")
        fig = plots.roc_curves(scores, detectors)
        _suptitle(fig, f"{protocol} protocol")
        save(fig, f"roc_curves_{protocol}")

        panels_features: dict[str, np.ndarray] = {}
        if has_outputs:
            data = load_openset_data(str(run), protocol, seed=run_seed)
            rows = _align_rows(scores, data.table, pseudo_dir / "pseudo_labels.csv")
            if data.class_names and (data.table["is_open"].any()):
                fig = plots.pseudo_label_spread(data.table.iloc[rows], list(data.class_names))
                _suptitle(fig, f"{protocol} protocol")
                save(fig, f"pseudo_label_spread_{protocol}")
            panels_features["close-set model (baseline)"] = data.features[rows]
        features_path = detect / f"detector_features_{protocol}.npy"
        if features_path.is_file():
            cycle_features = np.load(features_path)
            if len(cycle_features) == len(scores):
                panels_features["cycle detector (paper's method)"] = cycle_features
            else:
                print(f"{features_path}: {len(cycle_features)} rows for {len(scores)} scores; not embedded")
        if not panels_features or embed_max_points == 0:
            continue
        idx = _subsample(len(scores), embed_max_points, seed)
        labels = scores["label"].to_numpy()[idx]
        is_open = scores["is_open"].to_numpy(dtype=bool)[idx]
        t0 = time.perf_counter()
        coords = {title: embed(f[idx], labels, is_open) for title, f in panels_features.items()}
        name = f"embedding_{method}_{protocol}"
        if len(coords) == 1:
            (title, xy), = coords.items()
            fig = plots.embedding_plot(xy, labels, is_open, title=f"{title}, {protocol} protocol")
        else:
            fig = plots.embedding_comparison(coords, labels, is_open)
            _suptitle(fig, f"{'UMAP' if method == 'umap' else 't-SNE'} of {len(idx)} evaluation samples, "
                           f"{protocol} protocol")
        save(fig, name)
        npz = figures / f"{name}.npz"
        arrays = {"index": scores["index"].to_numpy()[idx], "label": labels, "is_open": is_open,
                  "titles": np.array(list(coords)), "method": np.array(method), "seed": np.array(seed),
                  **{f"coords_{k}": xy for k, xy in enumerate(coords.values())}}
        _write_npz(npz, arrays)
        written[name].append(npz)
        print(f"[{protocol}] {method} of {len(idx)} samples x {len(coords)} panel(s): "
              f"{time.perf_counter() - t0:.1f} s")
    update_manifest(run_dir, visualise={"figures": sorted(written), "embed_method": method,
                                        "embed_max_points": embed_max_points, "seed": seed})
    print(f"wrote {len(written)} figures to {figures}")
    return written


def _finished_runs(runs_glob) -> list[Path]:
    """Run folders holding metrics.csv and a manifest with dataset, open class and seed.

    ``runs_glob``: a glob of run folders, a run folder, a folder of run folders, or a list of
    these. Folders without metrics.csv (unfinished runs, caches, tables) are skipped.
    """
    import glob as _glob
    import os

    from ferlib.manifest import read_manifest
    from ferlib.tables import open_short

    items = [runs_glob] if isinstance(runs_glob, (str, os.PathLike)) else list(runs_glob)
    candidates: list[Path] = []
    for item in items:
        text = os.fspath(item)
        wildcard = any(ch in text for ch in "*?[")
        for p in ([Path(m) for m in sorted(_glob.glob(text, recursive=True))] if wildcard else [Path(text)]):
            if p.is_file() and p.name == "metrics.csv":
                p = p.parent
            if (p / "metrics.csv").is_file():
                candidates.append(p)
            elif p.is_dir() and not wildcard:  # a sweep folder: the runs below it
                candidates.extend(sorted(m.parent for m in p.rglob("metrics.csv")))
    runs, skipped = [], []
    for p in dict.fromkeys(c.resolve() for c in candidates):
        try:
            params = read_manifest(p).get("params") or {}
            if any(params.get(k) is None for k in ("dataset", "open_class", "seed")):
                raise ValueError("manifest params lack dataset, open_class or seed")
            open_short(params["open_class"])
            if pd.read_csv(p / "metrics.csv").empty:
                raise ValueError("metrics.csv has no rows")
        except (ValueError, TypeError, OSError) as exc:
            skipped.append(f"{p} ({exc})")
            continue
        runs.append(p)
    if skipped:
        print(f"skipped {len(skipped)} run(s):\n  " + "\n  ".join(skipped))
    return runs


def collect_results(runs_glob="outputs/*", out_dir: str = "outputs/tables",
                    metrics=("auroc", "fpr95")) -> dict[str, pd.DataFrame]:
    """The reproduction tables of many finished runs (e.g. a sweep).

    Gathers every run under ``runs_glob`` that has a ``metrics.csv`` (others are skipped) with
    :func:`ferlib.tables.collect_runs` and writes one summary table per data set, protocol and
    metric (rows: open classes + mean; columns: detectors as mean ± std over seeds, and the
    paper's numbers) as ``<dataset>_<metric>_<protocol>.{csv,md,tex}`` into ``out_dir``, and
    the same table as a bar chart (:func:`ferlib.plots.per_class_summary`, ``.png`` / ``.pdf``). Runs
    of the ``eval_subset="test"`` ablation get their own tables (stem suffix ``_test``).
    Returns the summary frames by file stem.
    """
    from ferlib.plots import per_class_summary, save_figure
    from ferlib.published import canonical_dataset
    from ferlib.tables import collect_runs, summary_table, write_tables

    if isinstance(metrics, str):
        metrics = [metrics]
    runs = _finished_runs(runs_glob)
    if not runs:
        raise ValueError(f"no finished run (a folder with metrics.csv and manifest.json) for {runs_glob!r}")
    frame = collect_runs(runs)
    if "eval_subset" not in frame.columns:
        frame["eval_subset"] = "all"
    frame["eval_subset"] = frame["eval_subset"].fillna("all").astype(str)
    frame["dataset"] = frame["dataset"].map(canonical_dataset)
    tables: dict[str, pd.DataFrame] = {}
    for (dataset, subset), group in frame.groupby(["dataset", "eval_subset"], sort=True):
        for protocol in dict.fromkeys(group["protocol"].astype(str)):
            for metric in metrics:
                summary = summary_table(group, metric, protocol, dataset=dataset)
                stem = f"{dataset}_{metric}_{protocol}" + ("" if subset == "all" else f"_{subset}")
                write_tables(summary, out_dir, stem)
                save_figure(per_class_summary(summary), Path(out_dir) / stem)
                tables[stem] = summary
    n_classes = frame["open_class"].nunique()
    print(f"{len(runs)} runs ({n_classes} open classes) -> {len(tables)} tables in {out_dir}")
    return tables
