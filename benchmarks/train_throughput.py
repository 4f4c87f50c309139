"""Training and inference throughput (images/second): the kit's data path against a plain
torchvision pipeline and against the model alone.

What it measures
----------------
For each image size (``--sizes``, default 48 and 112 px) it times ResNet-18 (``--arch``)
**training** (forward, cross-entropy, backward, Adam step) and **inference** (eval mode,
``no_grad``, forward) through three paths fed with the same images:

``kit``
    The kit's own road (:mod:`ferlib.train`): every image decoded once by
    :func:`ferlib.data.build_cache` into one uint8 tensor; per batch, rows are indexed
    from that tensor, converted with :func:`~ferlib.data.to_float`, made channels-last
    and, when training, augmented as a whole batch by
    :func:`~ferlib.data.augment_batch` (flip or Gaussian noise, random erasing). The
    helpers are the ones :func:`ferlib.train.fit` and :func:`ferlib.train.predict` call.
    The one-off cost of building the cache is timed and printed separately.
``imagefolder`` / ``pil-dataloader``
    The usual torchvision recipe: a ``Dataset`` that opens every PNG with PIL *each time
    it is drawn* and applies per-image ``transforms`` (``Resize``,
    ``RandomHorizontalFlip``, ``ToTensor``, ``Normalize``, ``RandomErasing``; inference:
    ``Resize``, ``ToTensor``, ``Normalize``) in ``DataLoader`` worker processes
    (``--workers``, default 2). On the synthetic data this is
    ``torchvision.datasets.ImageFolder`` itself (row ``imagefolder``); FERPlus has no
    class folders and nothing is ever written into the shared data, so there it is a
    minimal file-list ``Dataset`` over the FERPlus loader's paths and labels (row
    ``pil-dataloader``). Same model, optimiser, memory format and batch size as ``kit``.
``model-only``
    The model alone on random float tensors already in memory (on the device): no data
    path at all, the upper bound for both others.

Why
---
The kit decodes images once, outside the epoch loop, and augments whole batches with a
few tensor operations, because on a small CPU machine (2 cores here) decoding PNGs and
running per-image Python transforms inside every epoch competes with the network for the
same cores, and on a GPU the loader starves the device. This script puts a number on
that claim: how close each path comes to ``model-only``, per size and per mode.

Each figure is: ``--warmup`` untimed batches, then batches until ``--seconds`` have
passed (or exactly ``--batches`` batches), images done / seconds elapsed. The kit and
model-only paths also fetch the loss and accuracy every step, as :func:`fit` does, and so
does the plain path. Nothing here asserts anything: it prints figures, a Markdown table
at the end, and with ``--json PATH`` saves them. Figures depend on what else the machine
is doing: the load average is printed before and after.

Data: FERPlus train at ``../shared/data/ferplus`` (relative to the repository root) when
it is there, else ferkit's synthetic set written to ``outputs/bench_synthetic``; a random
subset of ``--max-images`` images (default 8192, 0 = all), the same for every path.

Usage (from the repository root)::

    .venv/bin/python benchmarks/train_throughput.py --sizes 48 112
    .venv/bin/python benchmarks/train_throughput.py --seconds 3 --sizes 48   # quick look
"""

from __future__ import annotations

import argparse
import datetime as _dt
import gc
import json
import os
import platform
import sys
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a plain script from anywhere: import the kit
    sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
import torchvision  # noqa: E402
from PIL import Image  # noqa: E402
from torch.utils.data import DataLoader, Dataset  # noqa: E402
from torchvision import transforms as T  # noqa: E402

from ferlib.data import (  # noqa: E402
    IMAGENET_MEAN,
    IMAGENET_STD,
    DataError,
    FERDataset,
    augment_batch,
    build_cache,
    load_dataset,
)
from ferlib.models import TRUNKS, ModelConfig, build_model  # noqa: E402

# The kit's own per-batch helpers (what fit() and predict() call), so that the "kit" row
# measures the kit's loop and follows it when it changes.
from ferlib.train import TrainConfig, _autocast, _batch, _to_device  # noqa: E402

DEFAULT_FERPLUS = REPO.parent / "shared" / "data" / "ferplus"
DEFAULT_SYNTHETIC = REPO / "outputs" / "bench_synthetic"
PLAIN = ("imagefolder", "pil-dataloader")  # two names for the plain-torchvision path
PATHS = ("kit", *PLAIN, "model-only")


# --------------------------------------------------------------------------- data


@dataclass
class BenchData:
    dataset: FERDataset  # the subset every path reads
    kind: str  # "ferplus" | "synthetic"
    source: str  # human-readable description
    targets: np.ndarray  # contiguous 0..K-1
    num_classes: int
    split_dir: Path | None  # class-folder root for ImageFolder (synthetic only)


def load_bench_data(args: argparse.Namespace) -> BenchData:
    dataset, kind, note = None, None, ""
    if args.data in ("auto", "ferplus"):
        try:
            dataset = load_dataset("ferplus", args.data_root, args.split)
            kind = "ferplus"
        except DataError as exc:
            if args.data == "ferplus":
                raise
            note = f" (FERPlus not usable at {args.data_root}: {exc})"
    if dataset is None:
        from ferlib.data.synthetic import write_synthetic

        root = write_synthetic(Path(args.synthetic_root))
        dataset = load_dataset("folders", root, args.split)
        kind = "synthetic"
    n_all = len(dataset)
    if args.max_images and args.max_images < n_all:
        rng = np.random.default_rng(args.seed)
        dataset = dataset.subset(np.sort(rng.choice(n_all, args.max_images, replace=False)))
    classes = np.array(sorted(int(c) for c in dataset.classes))
    targets = np.searchsorted(classes, dataset.labels).astype(np.int64)
    source = f"{kind} {args.split} at {dataset.root}: {len(dataset)} of {n_all} images{note}"
    split_dir = dataset.root / args.split if kind == "synthetic" else None
    return BenchData(dataset, kind, source, targets, len(classes), split_dir)


class PilFileList(Dataset):
    """Plain baseline for data without class folders: decode with PIL on every access
    (as torchvision's default loader does: open, convert to RGB), then ``transform``."""

    def __init__(self, paths: list[str], targets: list[int], transform: Callable):
        self.paths, self.targets, self.transform = paths, targets, transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        with open(self.paths[i], "rb") as fh:
            image = Image.open(fh).convert("RGB")
        return self.transform(image), self.targets[i]


def plain_transform(size: int, train: bool) -> T.Compose:
    steps: list = [T.Resize((size, size))]  # bilinear, antialiased (like the kit's cache)
    if train:
        steps.append(T.RandomHorizontalFlip())
    steps += [T.ToTensor(), T.Normalize(IMAGENET_MEAN, IMAGENET_STD)]
    if train:  # the kit's AugmentConfig erasing settings (fill 0 = the mean colour)
        steps.append(T.RandomErasing(p=0.5, scale=(0.02, 0.25), ratio=(0.3, 3.3), value=0))
    return T.Compose(steps)


def plain_dataset(data: BenchData, size: int, train: bool) -> tuple[Dataset, str]:
    """``(dataset, row name)``: torchvision's ImageFolder on class folders (synthetic),
    else a PIL file-list Dataset over the loader's paths (FERPlus)."""
    transform = plain_transform(size, train)
    paths = [str(p) for p in data.dataset.paths]
    if data.split_dir is not None:
        folder = torchvision.datasets.ImageFolder(str(data.split_dir), transform=transform)
        wanted = {os.path.realpath(p) for p in paths}
        samples = [s for s in folder.samples if os.path.realpath(s[0]) in wanted]
        if len(samples) == len(paths):
            folder.samples = folder.imgs = samples
            folder.targets = [t for _, t in samples]
            return folder, "imagefolder"
        warnings.warn("ImageFolder does not see the loader's files; using a file list", stacklevel=2)
    return PilFileList(paths, data.targets.tolist(), transform), "pil-dataloader"


class Cycle:
    """Endless iterator over a DataLoader: a new epoch starts when one runs out."""

    def __init__(self, loader: DataLoader):
        self.loader, self.it = loader, iter(loader)

    def __next__(self):
        try:
            return next(self.it)
        except StopIteration:
            self.it = iter(self.loader)
            return next(self.it)


# --------------------------------------------------------------------------- timing


@dataclass
class Result:
    size: int
    stem: str  # requested -> resolved, e.g. "auto->small"
    path: str
    mode: str  # "train" | "infer"
    images_per_s: float
    images: int
    batches: int
    seconds: float


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def measure(step: Callable[[], int], args: argparse.Namespace) -> tuple[float, int, int, float]:
    """Run ``args.warmup`` untimed steps, then time steps for ``args.seconds`` (or exactly
    ``args.batches`` steps). ``step()`` returns the number of images it processed."""
    for _ in range(args.warmup):
        step()
    sync(args.device)
    images = batches = 0
    t0 = time.perf_counter()
    while True:
        images += step()
        batches += 1
        if args.batches:
            if batches >= args.batches:
                break
        elif time.perf_counter() - t0 >= args.seconds:
            break
    sync(args.device)
    seconds = time.perf_counter() - t0
    return images / seconds, images, batches, seconds


def fresh_model(args: argparse.Namespace, size: int, num_classes: int, cfg: TrainConfig):
    torch.manual_seed(args.seed)  # same initial weights for every path
    mcfg = ModelConfig(arch=args.arch, num_classes=num_classes, input_size=size, stem=args.stem)
    model = _to_device(build_model(mcfg, verbose=False), cfg)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    if args.compile:  # model(x) compiled (training); forward_all (inference) stays eager, as in fit
        model = torch.compile(model)
    return model, opt


def train_step(model, opt, x, y, cfg: TrainConfig) -> int:
    """One optimisation step as fit() does it (loss, backward, Adam, loss/accuracy read)."""
    with _autocast(cfg):
        logits = model(x)
        loss = F.cross_entropy(logits, y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    loss.item()
    (logits.argmax(1) == y).sum().item()
    return len(y)


@torch.no_grad()
def infer_step(model, x, cfg: TrainConfig) -> int:
    """One batch as predict() does it (forward_all, logits and features to the CPU)."""
    with _autocast(cfg):
        out = model.forward_all(x)
    out.logits.float().cpu()
    out.features.float().cpu()
    return len(x)


def run_kit(
    mode: str, images: torch.Tensor, targets: torch.Tensor, size: int, num_classes: int, cfg: TrainConfig, args
) -> tuple:
    model, opt = fresh_model(args, size, num_classes, cfg)
    n, bs = len(images), cfg.batch_size
    if mode == "train":
        model.train()
        gen = torch.Generator().manual_seed(args.seed)
        aug_gen = torch.Generator(device=cfg.device).manual_seed(args.seed + 1)
        state = {"perm": torch.randperm(n, generator=gen), "pos": 0}

        def step() -> int:
            if state["pos"] + bs > n:  # next epoch
                state["perm"], state["pos"] = torch.randperm(n, generator=gen), 0
            index = state["perm"][state["pos"] : state["pos"] + bs]
            state["pos"] += bs
            x = _batch(images, index, cfg)
            x = augment_batch(x, cfg.augment, aug_gen)
            y = targets[index].to(cfg.device)
            return train_step(model, opt, x, y, cfg)
    else:
        model.eval()
        state = {"pos": 0}

        def step() -> int:
            if state["pos"] + bs > n:
                state["pos"] = 0
            index = torch.arange(state["pos"], state["pos"] + bs)
            state["pos"] += bs
            return infer_step(model, _batch(images, index, cfg), cfg)

    return measure(step, args)


def run_plain(mode: str, data: BenchData, size: int, cfg: TrainConfig, args) -> tuple[tuple, str]:
    dataset, name = plain_dataset(data, size, train=mode == "train")
    workers = args.workers
    loader = DataLoader(
        dataset,
        batch_size=cfg.batch_size,
        shuffle=mode == "train",
        drop_last=True,
        num_workers=workers,
        persistent_workers=workers > 0,
        pin_memory=cfg.device.startswith("cuda"),
        prefetch_factor=args.prefetch_factor if workers > 0 else None,
        generator=torch.Generator().manual_seed(args.seed),
    )
    model, opt = fresh_model(args, size, data.num_classes, cfg)
    batches = Cycle(loader)

    def to_device(x: torch.Tensor) -> torch.Tensor:
        x = x.to(cfg.device, non_blocking=True)
        return x.contiguous(memory_format=torch.channels_last) if cfg.channels_last else x

    if mode == "train":
        model.train()

        def step() -> int:
            x, y = next(batches)
            return train_step(model, opt, to_device(x), y.to(cfg.device, non_blocking=True), cfg)
    else:
        model.eval()

        def step() -> int:
            x, _ = next(batches)
            return infer_step(model, to_device(x), cfg)

    try:
        return measure(step, args), name
    finally:
        batches = loader = None  # drops the last references: shuts the (persistent) workers down
        gc.collect()


def run_model_only(mode: str, size: int, num_classes: int, cfg: TrainConfig, args) -> tuple:
    model, opt = fresh_model(args, size, num_classes, cfg)
    g = torch.Generator().manual_seed(args.seed)
    x = torch.randn(cfg.batch_size, 3, size, size, generator=g).to(cfg.device)
    if cfg.channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, num_classes, (cfg.batch_size,), generator=g).to(cfg.device)
    if mode == "train":
        model.train()
        return measure(lambda: train_step(model, opt, x, y, cfg), args)
    model.eval()
    return measure(lambda: infer_step(model, x, cfg), args)


# --------------------------------------------------------------------------- report


def environment(args: argparse.Namespace, data: BenchData) -> dict:
    env = {
        "date": _dt.datetime.now().isoformat(timespec="seconds"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "nice": os.nice(0) if hasattr(os, "nice") else None,
        "load_avg_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "device": args.device,
        "device_name": (
            torch.cuda.get_device_name(torch.device(args.device))
            if args.device.startswith("cuda")
            else platform.processor() or "cpu"
        ),
        "data": data.kind,
        "data_source": data.source,
        "images": len(data.dataset),
        "arch": args.arch,
        "stem": args.stem,
        "batch_size": args.batch_size,
        "workers": args.workers,
        "prefetch_factor": args.prefetch_factor,
        "channels_last": args.channels_last,
        "amp": args.amp,
        "compile": args.compile,
        "warmup": args.warmup,
        "seconds": args.seconds,
        "batches": args.batches,
    }
    return env


def markdown_table(results: list[Result], builds: list[dict]) -> str:
    rows = [
        "| size | stem | path | train img/s | infer img/s | train / model-only "
        "| infer / model-only | timed batches (train, infer) |",
        "|---:|---|---|---:|---:|---:|---:|---:|",
    ]
    keys = []
    for r in results:
        if (r.size, r.path) not in keys:
            keys.append((r.size, r.path))
    by = {(r.size, r.path, r.mode): r for r in results}

    def fmt(r: Result | None) -> str:
        return f"{r.images_per_s:,.1f}" if r else "-"

    def ratio(r: Result | None, base: Result | None) -> str:
        return f"{r.images_per_s / base.images_per_s:.2f}x" if r and base else "-"

    for size, path in keys:
        tr, inf = by.get((size, path, "train")), by.get((size, path, "infer"))
        stem = (tr or inf).stem
        base_tr, base_inf = by.get((size, "model-only", "train")), by.get((size, "model-only", "infer"))
        counts = ", ".join(str(r.batches) if r else "-" for r in (tr, inf))
        rows.append(
            f"| {size} | {stem} | {path} | {fmt(tr)} | {fmt(inf)} | "
            f"{ratio(tr, base_tr)} | {ratio(inf, base_inf)} | {counts} |"
        )
    if builds:
        rows += [
            "",
            "| size | kit: build_cache (decode once) | images | seconds | img/s |",
            "|---:|---|---:|---:|---:|",
        ]
        for b in builds:
            rows.append(
                f"| {b['size']} | {b['note']} | {b['images']} | {b['seconds']:.2f} | {b['images_per_s']:,.1f} |"
            )
    return "\n".join(rows)


# --------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="train_throughput.py",
        description="ResNet training/inference images per second: the kit's decode-once "
        "cache + batch augmentation vs a plain PIL/torchvision DataLoader vs "
        "the model alone.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--sizes", type=int, nargs="+", default=[48, 112], help="input sizes, px")
    p.add_argument(
        "--paths",
        nargs="+",
        choices=PATHS,
        default=["kit", "imagefolder", "model-only"],
        help="paths to time; 'imagefolder' and 'pil-dataloader' both name the "
        "plain torchvision path (its row is named after the data used)",
    )
    p.add_argument("--modes", nargs="+", choices=("train", "infer"), default=["train", "infer"])
    p.add_argument("--seconds", type=float, default=20.0, help="timed duration per figure")
    p.add_argument("--batches", type=int, default=None, help="time exactly this many batches instead of --seconds")
    p.add_argument("--warmup", type=int, default=2, help="untimed batches before each figure")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--workers", type=int, default=2, help="DataLoader workers (plain path)")
    p.add_argument(
        "--prefetch-factor", type=int, default=2, help="DataLoader batches prefetched per worker (plain path)"
    )
    p.add_argument("--arch", choices=sorted(TRUNKS), default="resnet18", help="backbone (ferlib.models.TRUNKS)")
    p.add_argument(
        "--stem",
        choices=("auto", "small", "imagenet"),
        default="auto",
        help="ModelConfig.stem; auto = small below 160 px, else imagenet",
    )
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (None: torch's choice)")
    p.add_argument(
        "--channels-last",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="channels-last model and batches on every path (TrainConfig default)",
    )
    p.add_argument(
        "--amp", action="store_true", help="bfloat16 autocast on every path, CUDA or CPU (as TrainConfig.amp)"
    )
    p.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile the model's training forward on every path (TrainConfig.compile); the "
        "--warmup batches absorb the compilation, so raise --warmup to 3 or more",
    )
    p.add_argument(
        "--data",
        choices=("auto", "ferplus", "synthetic"),
        default="auto",
        help="auto: FERPlus if found, else the synthetic set",
    )
    p.add_argument("--data-root", type=Path, default=DEFAULT_FERPLUS, help="FERPlus root")
    p.add_argument(
        "--synthetic-root",
        type=Path,
        default=DEFAULT_SYNTHETIC,
        help="where the synthetic set is written when FERPlus is not used",
    )
    p.add_argument("--split", default="train", choices=("train", "valid", "test"))
    p.add_argument(
        "--max-images", type=int, default=8192, help="random subset of the split used by every path (0 = all)"
    )
    p.add_argument(
        "--cache-dir",
        type=Path,
        default=None,
        help="let build_cache save/reuse its cache here (None: decode afresh, so the decode-once time is measured)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, default=None, help="also save the figures here")
    args = p.parse_args(argv)
    for name in ("batch_size", "warmup", "workers", "prefetch_factor", "max_images"):
        if getattr(args, name) < (1 if name in ("batch_size", "prefetch_factor") else 0):
            p.error(f"--{name.replace('_', '-')} is out of range: {getattr(args, name)}")
    if args.batches is not None and args.batches < 1:
        p.error("--batches must be >= 1")
    if args.seconds <= 0:
        p.error("--seconds must be > 0")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        p.error(f"--device {args.device}: CUDA is not available")
    args.paths = list(dict.fromkeys("imagefolder" if x in PLAIN else x for x in args.paths))
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.device.startswith("cuda"):
        torch.backends.cudnn.benchmark = True  # as fit() does

    data = load_bench_data(args)
    if len(data.dataset) < args.batch_size:
        raise SystemExit(f"need at least --batch-size {args.batch_size} images, the data has {len(data.dataset)}")
    cfg = TrainConfig(
        batch_size=args.batch_size,
        device=args.device,
        channels_last=args.channels_last,
        amp=args.amp,
        seed=args.seed,
        progress=False,
    )
    env = environment(args, data)
    print(f"data:    {data.source}")
    print(f"torch {env['torch']}, torchvision {env['torchvision']}, python {env['python']}")
    print(
        f"device:  {args.device} ({env['device_name']}); torch threads "
        f"{env['torch_threads']} (interop {env['torch_interop_threads']}); "
        f"CPUs {env['cpus_usable']}/{env['cpu_count']}; nice {env['nice']}; "
        f"load average {', '.join(f'{x:.2f}' for x in env['load_avg_start'] or [])}"
    )
    print(
        f"model:   {args.arch}, stem {args.stem}; batch {args.batch_size}; channels_last "
        f"{args.channels_last}; amp {args.amp}; "
        f"DataLoader workers {args.workers}"
    )
    timing = f"{args.batches} batches" if args.batches else f"{args.seconds:g} s"
    print(f"timing:  {args.warmup} warm-up batches, then {timing} per figure\n", flush=True)

    results: list[Result] = []
    builds: list[dict] = []
    notes: list[str] = []
    for size in args.sizes:
        stem = f"{args.stem}->{ModelConfig(input_size=size, stem=args.stem).resolved_stem()}"
        images = targets = None
        if "kit" in args.paths:
            saved = (
                args.cache_dir is not None and (args.cache_dir / f"{data.dataset.fingerprint()}_{size}.pt").is_file()
            )
            t0 = time.perf_counter()
            cache = build_cache(data.dataset, size, cache_dir=args.cache_dir, progress=False)
            seconds = time.perf_counter() - t0
            images, targets = cache.images, torch.from_numpy(data.targets[cache.source_index])
            note = "loaded from --cache-dir" if saved else "decoded"
            builds.append(
                {
                    "size": size,
                    "images": len(cache),
                    "seconds": seconds,
                    "images_per_s": len(cache) / seconds,
                    "note": note,
                }
            )
            print(
                f"{size:>4} px  build_cache: {len(cache)} images {note} in {seconds:.2f} s "
                f"({len(cache) / seconds:,.0f} img/s, once per data set and size; "
                f"{images.numel() / 2**20:.0f} MiB uint8)",
                flush=True,
            )
            del cache
        for path in args.paths:
            for mode in args.modes:
                if path == "kit":
                    out, name = run_kit(mode, images, targets, size, data.num_classes, cfg, args), "kit"
                elif path == "imagefolder":
                    out, name = run_plain(mode, data, size, cfg, args)
                else:
                    out, name = run_model_only(mode, size, data.num_classes, cfg, args), "model-only"
                r = Result(size, stem, name, mode, *out)
                results.append(r)
                print(
                    f"{size:>4} px  {stem:<16} {name:<15} {mode:<5} "
                    f"{r.images_per_s:>9,.1f} img/s  ({r.batches} batches, {r.images} images, "
                    f"{r.seconds:.1f} s)",
                    flush=True,
                )
                ahead = args.workers * args.prefetch_factor
                if name in PLAIN and args.workers and r.batches < 4 * ahead:
                    notes.append(
                        f"{size} px {name} {mode}: only {r.batches} batches timed while up to "
                        f"{ahead} were prefetched during warm-up, so this figure flatters the "
                        "loader; give it more --seconds"
                    )
                gc.collect()
        del images, targets
        gc.collect()

    env["load_avg_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    print("\n## Throughput (images/second, higher is better)\n")
    print(
        f"{args.arch}, {data.kind} ({len(data.dataset)} images), device {args.device}, "
        f"torch {env['torch']}, {env['torch_threads']} threads, batch {args.batch_size}, "
        f"{args.workers} DataLoader workers, channels_last {args.channels_last}\n"
    )
    print(markdown_table(results, builds))
    if env["load_avg_start"] is not None:
        print(
            f"\nload average at start {env['load_avg_start'][0]:.2f}, at end "
            f"{env['load_avg_end'][0]:.2f} (other work on the machine lowers every figure)"
        )
    for note in notes:
        print(f"note: {note}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        payload = {"environment": env, "results": [asdict(r) for r in results], "cache_builds": builds, "notes": notes}
        args.json.write_text(json.dumps(payload, indent=2, default=str) + "\n", encoding="utf-8")
        print(f"\nsaved {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
