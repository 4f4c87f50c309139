"""Time to accuracy: FERPlus 7-class test (and validation) accuracy against wall-clock
training time, for each (backbone, recipe) in one run on the same machine.

What it measures
----------------
For each ``--configs`` entry ``arch:recipe`` (default: today's ``resnet18:reference`` as
the baseline row, ``smallface:reference`` and ``smallface:fast``) it builds the model from
the same seed, trains it with the kit's one loop (:func:`ferlib.train.fit`, the recipe from
:mod:`ferlib.recipes`) on FERPlus train, selects on FERPlus *validation*, and after every
epoch records the cumulative training time (the loop's per-epoch seconds: training steps
and the validation pass that selection needs) with the validation and test accuracy of the
model the recipe would hand on (the EMA copy when the recipe averages weights; flip
test-time augmentation when the recipe uses it). Scoring the test split is not timed.
Stage 01 reports the best-on-validation epoch's test accuracy; so does the summary table.

``--members K`` (default 1) trains K copies of each config from seeds ``seed .. seed+K-1`` and
adds an ensemble row, ``arch:recipe x K``: after each epoch, the mean of the K members'
softmax outputs (each with the recipe's flip test-time augmentation), scored on validation
and test; its time is the *sum* of the members' times (trained one after the other on one
device, as here; members trained side by side on an under-used GPU finish sooner, which this
figure does not credit). Why: averaging independently trained networks is the oldest
reliable way to trade compute for accuracy (deep ensembles; FER2013's best from-scratch
results are ensembles), and at this model size a GPU is bound by launches, not arithmetic.
The members' own rows are ``arch:recipe seed s``.

A run stops at ``--epochs`` or when its cumulative time passes ``--budget-minutes``,
whichever is first; schedules that decay to zero over the run (``fast``) are laid out over
``--epochs``, so pick ``--epochs`` to fit the budget (a run cut by the budget says so in the
``stopped`` column). Recipes are chosen on the validation split only; the test split is
measured, never tuned on.

Output (``--out``, default ``outputs/bench/time_to_accuracy``): ``curves.csv`` (one row per
config and epoch, rewritten after every epoch so that a run stopped from outside keeps what it
measured), ``summary.csv``, ``time_to_accuracy.png`` / ``.pdf`` (test accuracy against
minutes), with ``--save-best`` each run's best-on-validation weights (``best_<config>.pt``: the
state dict, the epoch and the settings, for studying test-time choices on validation without
retraining), ``manifest.json`` (the arguments, library versions, device, the data's fingerprint
and the summary) and the summary table on stdout. No figure is asserted anywhere.

    .venv/bin/python benchmarks/time_to_accuracy.py --budget-minutes 20 --epochs 10
    .venv/bin/python benchmarks/time_to_accuracy.py --max-train 3000 --epochs 2 --budget-minutes 1.5   # a quick look
    .venv/bin/python benchmarks/time_to_accuracy.py --device cuda --amp --epochs 30
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a plain script from anywhere: import the kit
    sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402

from ferlib.data.prepare import LABEL_MODES, close_rows, load_splits, training_labels  # noqa: E402
from ferlib.io import torch_save, write_csv  # noqa: E402
from ferlib.manifest import collect_environment, set_manifest  # noqa: E402
from ferlib.models import TRUNKS, ModelConfig, build_model  # noqa: E402
from ferlib.models.face_weights import PACKAGED_WEIGHTS  # noqa: E402
from ferlib.recipes import available_recipes, train_config  # noqa: E402
from ferlib.train import EpochInfo, TensorData, fit, predict  # noqa: E402

DEFAULT_CONFIGS = "resnet18:reference,smallface:reference,smallface:fast"


class _OutOfBudget(Exception):
    """Raised from the epoch callback to stop a run at the time budget."""


@dataclass
class Data:
    train: TensorData
    val: TensorData
    test: TensorData
    fingerprint: str = ""  # the decoded data's hash (ferlib.data.prepare's Splits.fingerprint)


def parse_configs(text: str) -> list[tuple[str, str]]:
    """``"resnet18:reference,smallface:fast"`` -> pairs; names checked against the registries."""
    pairs = []
    for item in filter(None, (part.strip() for part in text.split(","))):
        arch, _, recipe = item.partition(":")
        recipe = recipe or "reference"
        if arch not in TRUNKS:
            raise SystemExit(f"--configs {item!r}: arch must be one of {', '.join(sorted(TRUNKS))}")
        if recipe not in available_recipes():
            raise SystemExit(f"--configs {item!r}: recipe must be one of {', '.join(available_recipes())}")
        pairs.append((arch, recipe))
    if not pairs:
        raise SystemExit("--configs: give at least one arch:recipe")
    return pairs


def pretrained_for(arch: str, args: argparse.Namespace) -> str | None:
    """``--pretrained`` for every config; without it, the ``dlibface`` trunks start from their
    face weights (the installed face extra) and every other trunk from scratch."""
    if getattr(args, "pretrained", None):
        return args.pretrained
    return "dlibface" if arch in PACKAGED_WEIGHTS["dlibface"] else None


def _subsample(data: TensorData, limit: int, seed: int) -> TensorData:
    if not limit or len(data) <= limit:
        return data
    rows = np.sort(np.random.default_rng(seed).permutation(len(data))[:limit])
    return data.subset(rows)


def load_ferplus(args: argparse.Namespace) -> Data:
    """FERPlus train / validation / test, the basic seven classes (contempt dropped). Training
    targets follow ``--label-mode`` (stage 01's ``label_mode``); validation and test are always
    scored against the majority vote, so the modes are compared on the same labels."""
    s = load_splits("ferplus", args.data_root, None, args.input_size, args.cache_dir, seed=args.seed)
    labels = training_labels(s, args.label_mode, None, "ferplus")  # majority, or the vote distribution
    test_rows, test_targets = close_rows(s.test, s.label_map)
    data = Data(
        TensorData(
            s.train.images[torch.as_tensor(labels.train_rows)],
            labels.train_targets,
            labels.train_soft,
            args.label_mode if labels.train_soft is not None else "crossentropy",
        ),
        TensorData(s.valid.images[torch.as_tensor(labels.val_rows)], labels.val_targets),
        TensorData(s.test.images[torch.as_tensor(test_rows)], test_targets),
        s.fingerprint,
    )
    print(
        f"FERPlus from {args.data_root}: {len(data.train)} train, {len(data.val)} validation "
        f"({s.validation_source}), {len(data.test)} test, classes {s.label_map.names}"
    )
    data.train = _subsample(data.train, args.max_train, args.seed)
    data.val = _subsample(data.val, args.max_eval, args.seed)
    data.test = _subsample(data.test, args.max_eval, args.seed)
    if args.max_train or args.max_eval:
        print(f"subsampled: {len(data.train)} train, {len(data.val)} validation, {len(data.test)} test")
    return data


def _accuracy(model: torch.nn.Module, data: TensorData, args: argparse.Namespace, tta: bool) -> float:
    pred = predict(model, data.images, 512, args.device, progress=False, amp=args.amp, tta=tta)
    return float((pred.logits.argmax(1) == data.targets).float().mean())


def _probabilities(model: torch.nn.Module, data: TensorData, args: argparse.Namespace, tta: bool) -> torch.Tensor:
    pred = predict(model, data.images, 512, args.device, progress=False, amp=args.amp, tta=tta)
    return pred.logits.float().softmax(1)


def run_config(
    arch: str,
    recipe: str,
    data: Data,
    args: argparse.Namespace,
    seed: int | None = None,
    label: str | None = None,
    sink: Callable[[list[dict]], None] | None = None,
) -> list[dict]:
    """Train one (arch, recipe) from ``seed`` (default ``args.seed``) and return one row per
    epoch. With ``args.members > 1`` each row also holds the epoch's validation and test
    probabilities (``_val_prob``, ``_test_prob``) for :func:`ensemble_rows`. ``sink`` gets the
    rows so far after every epoch (the caller saves them)."""
    seed = args.seed if seed is None else seed
    keep = getattr(args, "members", 1) > 1
    torch.manual_seed(seed)
    model = build_model(
        ModelConfig(arch, num_classes=7, input_size=args.input_size, pretrained=pretrained_for(arch, args)),
        verbose=False,
    )
    cfg = train_config(
        recipe,
        json.loads(args.recipe_params) if args.recipe_params else None,
        epochs=args.epochs,
        batch_size=args.batch_size,
        seed=seed,
        device=args.device,
        amp=args.amp,
        compile=args.compile,
        progress=args.progress,
    )
    budget = args.budget_minutes * 60
    rows: list[dict] = []
    clock = {"seconds": 0.0}
    best: dict = {"val_acc": -1.0, "state": None}

    def record(info: EpochInfo) -> None:
        clock["seconds"] += info.row["seconds"]
        if getattr(args, "save_best", False) and info.row["val_acc"] > best["val_acc"]:  # untimed copy
            best.update(val_acc=info.row["val_acc"], epoch=info.epoch,
                        state={k: v.detach().cpu().clone() for k, v in info.model.state_dict().items()})  # fmt: skip
        extra = {}
        if keep:  # untimed, like the test accuracy (which then comes from the same pass)
            extra = {
                "_val_prob": _probabilities(info.model, data.val, args, cfg.flip_tta),
                "_test_prob": _probabilities(info.model, data.test, args, cfg.flip_tta),
            }
            test_acc = float((extra["_test_prob"].argmax(1) == data.test.targets).float().mean())
        else:
            test_acc = _accuracy(info.model, data.test, args, cfg.flip_tta)
        rows.append(
            {
                "config": label or f"{arch}:{recipe}",
                "arch": arch,
                "recipe": recipe,
                "pretrained": pretrained_for(arch, args) or "",
                "label_mode": args.label_mode,
                "recipe_params": args.recipe_params,
                "compile": args.compile,
                "epoch": info.epoch,
                "train_seconds": clock["seconds"],
                "train_loss": info.row["train_loss"],
                "val_acc": info.row["val_acc"],
                "seed": seed,
                "test_acc": test_acc,  # untimed
                **extra,
            }
        )
        r = rows[-1]
        if sink is not None:
            sink(rows)
        print(
            f"  {r['config']} epoch {r['epoch']}: {r['train_seconds'] / 60:.2f} min, "
            f"val {r['val_acc']:.4f}, test {r['test_acc']:.4f}",
            flush=True,
        )
        if clock["seconds"] >= budget and info.epoch < cfg.epochs:
            raise _OutOfBudget

    print(f"{arch}:{recipe}: {sum(p.numel() for p in model.parameters()) / 1e6:.2f} M parameters, {cfg}")
    stopped = "epochs"
    try:
        fit(model, data.train, data.val, cfg, callbacks=[record], desc=f"{arch}:{recipe}")
    except _OutOfBudget:
        stopped = "budget"
    for r in rows:
        r["stopped"] = stopped
    if best["state"] is not None:
        path = Path(args.out) / f"best_{(label or f'{arch}:{recipe}').replace(':', '_').replace(' ', '_')}.pt"
        torch_save(path, {"state_dict": best["state"], "arch": arch, "recipe": recipe, "seed": seed,
                          "epoch": best["epoch"], "val_acc": best["val_acc"], "input_size": args.input_size,
                          "recipe_params": args.recipe_params, "label_mode": args.label_mode})  # fmt: skip
        print(f"  saved the best-on-validation weights (epoch {best['epoch']}) to {path}")
    return rows


def ensemble_rows(members: list[list[dict]], data: Data, label: str) -> list[dict]:
    """The ensemble's curve: after each epoch that every member reached, the accuracy of the
    members' mean softmax on validation and test, and the members' summed training time."""
    epochs = min(len(rows) for rows in members)
    out = []
    for e in range(epochs):
        at = [rows[e] for rows in members]
        val = torch.stack([r["_val_prob"] for r in at]).mean(0)
        test = torch.stack([r["_test_prob"] for r in at]).mean(0)
        first = at[0]
        out.append(
            {
                **{k: v for k, v in first.items() if not k.startswith("_")},
                "config": label,
                "seed": ",".join(str(r["seed"]) for r in at),
                "train_seconds": sum(r["train_seconds"] for r in at),
                "train_loss": float(np.mean([r["train_loss"] for r in at])),
                "val_acc": float((val.argmax(1) == data.val.targets).float().mean()),
                "test_acc": float((test.argmax(1) == data.test.targets).float().mean()),
                "stopped": "budget" if any(r["stopped"] == "budget" for r in at) else "epochs",
            }
        )
    return out


def run_members(
    arch: str, recipe: str, data: Data, args: argparse.Namespace, sink: Callable[[list[dict]], None] | None = None
) -> list[dict]:
    """One config's rows: a single model, or ``args.members`` members plus their ensemble.
    ``sink`` gets this config's rows so far (without the probabilities) after every epoch."""
    if args.members <= 1:
        return run_config(arch, recipe, data, args, sink=sink)
    members: list[list[dict]] = []

    def member_sink(rows: list[dict]) -> None:
        if sink is not None:
            sink([_plain(r) for rows_ in members for r in rows_] + [_plain(r) for r in rows])

    for m in range(args.members):
        label = f"{arch}:{recipe} seed {args.seed + m}"
        members.append(run_config(arch, recipe, data, args, seed=args.seed + m, label=label, sink=member_sink))
    rows = ensemble_rows(members, data, f"{arch}:{recipe} x{args.members}")
    for r in rows:
        print(f"  {r['config']} epoch {r['epoch']}: {r['train_seconds'] / 60:.2f} min, val {r['val_acc']:.4f}, "
              f"test {r['test_acc']:.4f}", flush=True)  # fmt: skip
    return [_plain(r) for rows_ in members for r in rows_] + rows


def _plain(row: dict) -> dict:
    """A curve row without the members' probability tensors."""
    return {k: v for k, v in row.items() if not k.startswith("_")}


def summarise(curves: pd.DataFrame) -> pd.DataFrame:
    """Per config: the best-on-validation epoch's test accuracy (what stage 01 reports),
    the time it took to get there, the last epoch's figures and the total time."""
    out = []
    for config, c in curves.groupby("config", sort=False):
        best = c.loc[c["val_acc"].idxmax()]
        last = c.iloc[-1]
        out.append(
            {
                "config": config,
                "label_mode": last["label_mode"],
                "epochs": int(last["epoch"]),
                "stopped": last["stopped"],
                "best_epoch": int(best["epoch"]),
                "val_acc": best["val_acc"],
                "test_acc": best["test_acc"],
                "minutes_to_best": best["train_seconds"] / 60,
                "last_test_acc": last["test_acc"],
                "total_minutes": last["train_seconds"] / 60,
            }
        )
    return pd.DataFrame(out)


def plot(curves: pd.DataFrame, out: Path, title: str) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for config, c in curves.groupby("config", sort=False):
        ax.plot(c["train_seconds"] / 60, c["test_acc"], marker="o", label=config)
    ax.set_xlabel("training time (minutes, incl. validation)")
    ax.set_ylabel("FERPlus 7-class test accuracy")
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    paths = [out / "time_to_accuracy.png", out / "time_to_accuracy.pdf"]
    for path in paths:
        tmp = path.with_name(f".{path.stem}.tmp{path.suffix}")
        fig.savefig(tmp, dpi=150)
        os.replace(tmp, path)  # atomic, as ferlib.io's writers
    plt.close(fig)
    return paths


def _device_name(device: str) -> str:
    if torch.device(device).type == "cuda":
        return torch.cuda.get_device_name(torch.device(device))
    return f"CPU {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--data-root", default=str(Path("..") / "shared" / "data" / "ferplus"), help="FERPlus folder")
    p.add_argument("--device", default="cpu", help="torch device: cpu, cuda, cuda:1")
    p.add_argument("--budget-minutes", type=float, default=20.0, help="training-time budget per config")
    p.add_argument("--configs", default=DEFAULT_CONFIGS, help=f"arch:recipe list (default {DEFAULT_CONFIGS})")
    p.add_argument("--epochs", type=int, default=10, help="epochs per config (the schedule's length)")
    p.add_argument("--input-size", type=int, default=48)
    p.add_argument(
        "--pretrained",
        default=None,
        help="weights every config starts from (a path, or dlibface); default: dlibface for the dlibface trunks, "
        "none (from scratch) for the others",
    )
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--members",
        type=int,
        default=1,
        help="train K members per config (seeds seed..seed+K-1) and add their ensemble's row (default 1)",
    )
    p.add_argument("--max-train", type=int, default=0, help="subsample training images (0: all)")
    p.add_argument("--max-eval", type=int, default=0, help="subsample validation and test images (0: all)")
    p.add_argument("--cache-dir", default=str(Path("outputs") / "cache"), help="the kit's uint8 image cache")
    p.add_argument("--out", default=str(Path("outputs") / "bench" / "time_to_accuracy"))
    p.add_argument("--amp", action="store_true", help="bfloat16 autocast (CUDA or CPU: TrainConfig.amp)")
    p.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile the training step (TrainConfig.compile); its first epoch pays the compilation",
    )
    p.add_argument(
        "--label-mode", default="majority", choices=LABEL_MODES, help="training targets (stage 01's label_mode)"
    )
    p.add_argument(
        "--recipe-params", default="", help="JSON overrides for every config's recipe, e.g. '{\"ema_decay\": 0}'"
    )
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    p.add_argument("--progress", action="store_true", help="per-epoch progress bars")
    p.add_argument(
        "--save-best",
        action="store_true",
        help="save each run's best-on-validation weights (the model the recipe hands on) as best_<config>.pt in --out",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.epochs < 1 or args.budget_minutes <= 0 or args.members < 1:
        raise SystemExit("--epochs and --members must be >= 1 and --budget-minutes > 0")
    if args.threads:
        torch.set_num_threads(args.threads)
    configs = parse_configs(args.configs)
    device = _device_name(args.device)
    print(f"device: {device}; torch {torch.__version__}; load average {os.getloadavg()[0]:.2f}")
    data = load_ferplus(args)

    out = Path(args.out)
    set_manifest(
        out,
        params=vars(args),
        environment=collect_environment(),
        device=device,
        data={"dataset": "ferplus", "fingerprint": data.fingerprint, "n_train": len(data.train),
              "n_validation": len(data.val), "n_test": len(data.test)},
    )  # fmt: skip
    curves: list[dict] = []
    t0 = time.perf_counter()

    def save(rows: list[dict]) -> None:  # the finished configs' rows and the running one's
        write_csv(out / "curves.csv", pd.DataFrame(curves + rows))

    for arch, recipe in configs:
        curves += run_members(arch, recipe, data, args, sink=save)
    curves_df = pd.DataFrame(curves)
    summary = summarise(curves_df)
    summary.insert(1, "device", device)
    write_csv(out / "curves.csv", curves_df)
    write_csv(out / "summary.csv", summary)
    set_manifest(out, summary=summary.to_dict("records"), wall_seconds=round(time.perf_counter() - t0, 1))
    sub = f", {len(data.train)} train images" if args.max_train else ""
    paths = plot(curves_df, out, f"FERPlus, {device}{sub}, budget {args.budget_minutes:g} min/config")
    print()
    print(summary.drop(columns="device").to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    print(
        f"\ndevice {device}; load average {os.getloadavg()[0]:.2f}; whole run {(time.perf_counter() - t0) / 60:.1f} min"
    )
    print(f"wrote {out / 'curves.csv'}, {out / 'summary.csv'}, {', '.join(map(str, paths))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
