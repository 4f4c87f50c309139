"""Test-time views: does averaging shifted copies of each face (beside its mirror) raise
FERPlus accuracy of a trained model, and by how much on validation?

Why: FER2013's strongest from-scratch results evaluate ten crops per face (corners, centre,
and their mirrors); the kit's recipes average two views (the face and its mirror). Training
here warps every face (shift up to 10%, rotation, zoom), so the model has seen shifted faces,
and a few shifted views are a cheap second opinion at prediction time, costing nothing in
training. This measures it on a saved model before any of it enters the kit's ``predict``.

Input: a checkpoint written by ``benchmarks/time_to_accuracy.py --save-best`` (the
best-on-validation weights and the settings they were trained with). For each view set it
scores the validation split (where a choice may be made) and the test split (read, never
chosen on): the mean softmax over the views, each view with its mirror (the recipes' flip
test-time augmentation). A shift of ``s`` pixels moves the face by ``s`` pixels and repeats
the border outward, as the training warp does (integer shifts of the uint8 image: no
interpolation).

    .venv/bin/python benchmarks/test_time_views.py outputs/bench/RUN/best_smallface_deep_fast_affine.pt \
        --data-root ../shared/data/ferplus --threads 2

Output: a table on stdout and ``test_time_views.csv`` beside the checkpoint (or ``--out``).
No figure is asserted anywhere.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run as a plain script from anywhere: import the kit
    sys.path.insert(0, str(REPO))

import pandas as pd  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from ferlib.data.prepare import close_rows, load_splits  # noqa: E402
from ferlib.io import write_csv  # noqa: E402
from ferlib.models import ModelConfig, build_model  # noqa: E402
from ferlib.train import predict  # noqa: E402

#: name -> the (dx, dy) shifts averaged (each with its mirror); (0, 0) is the recipes' flip TTA
VIEW_SETS: dict[str, list[tuple[int, int]]] = {
    "flip": [(0, 0)],
    "flip+cross1": [(0, 0), (1, 0), (-1, 0), (0, 1), (0, -1)],
    "flip+cross2": [(0, 0), (2, 0), (-2, 0), (0, 2), (0, -2)],
    "flip+cross3": [(0, 0), (3, 0), (-3, 0), (0, 3), (0, -3)],
    "flip+grid2": [(dx, dy) for dx in (-2, 0, 2) for dy in (-2, 0, 2)],
}


def shift(images: torch.Tensor, dx: int, dy: int) -> torch.Tensor:
    """uint8 images ``(N, C, H, W)`` moved ``dx`` pixels right and ``dy`` down, the border
    pixels repeated into the gap (integer shift: the values are the image's own)."""
    if dx == 0 and dy == 0:
        return images
    n, c, h, w = images.shape
    p = max(abs(dx), abs(dy))
    padded = F.pad(images.float(), (p, p, p, p), mode="replicate")
    top, left = p - dy, p - dx
    return padded[:, :, top : top + h, left : left + w].round().to(torch.uint8)


def view_probabilities(model, images: torch.Tensor, views: list[tuple[int, int]], args) -> torch.Tensor:
    """Mean softmax over ``views`` (each with its mirror) of the model on uint8 ``images``."""
    probs = [
        predict(model, shift(images, dx, dy), 512, args.device, progress=False, amp=args.amp, tta=True)
        .logits.float()
        .softmax(1)
        for dx, dy in views
    ]
    return torch.stack(probs).mean(0)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("checkpoint", help="best_<config>.pt from time_to_accuracy.py --save-best")
    p.add_argument("--data-root", default=str(Path("..") / "shared" / "data" / "ferplus"))
    p.add_argument("--cache-dir", default=str(Path("outputs") / "cache"))
    p.add_argument("--device", default="cpu")
    p.add_argument("--amp", action="store_true", help="bf16 autocast, as the model was trained with --amp")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--views", default=",".join(VIEW_SETS), help=f"view sets (default all: {', '.join(VIEW_SETS)})")
    p.add_argument("--out", default="", help="CSV path (default: test_time_views.csv beside the checkpoint)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    names = [v.strip() for v in args.views.split(",") if v.strip()]
    unknown = [v for v in names if v not in VIEW_SETS]
    if unknown:
        raise SystemExit(f"--views: unknown {', '.join(unknown)}; known: {', '.join(VIEW_SETS)}")
    path = Path(args.checkpoint)
    if not path.is_file():
        raise SystemExit(f"{path}: no such checkpoint (write one with time_to_accuracy.py --save-best)")
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    missing = {"state_dict", "arch", "input_size"} - set(ckpt)
    if missing:
        lacks = ", ".join(sorted(missing))
        raise SystemExit(f"{path}: not a time_to_accuracy.py --save-best checkpoint (lacks {lacks})")
    model = build_model(ModelConfig(ckpt["arch"], num_classes=7, input_size=ckpt["input_size"]), verbose=False)
    model.load_state_dict(ckpt["state_dict"])

    s = load_splits("ferplus", args.data_root, None, ckpt["input_size"], args.cache_dir, seed=ckpt.get("seed", 0))
    splits = {}
    for name, split in (("validation", s.valid), ("test", s.test)):
        rows, targets = close_rows(split, s.label_map)
        splits[name] = (split.images[torch.as_tensor(rows)], torch.as_tensor(targets))
    out_rows = []
    for name in names:
        row = {"views": name, "n_views": 2 * len(VIEW_SETS[name])}
        for split, (images, targets) in splits.items():
            prob = view_probabilities(model, images, VIEW_SETS[name], args)
            row[f"{split}_acc"] = float((prob.argmax(1) == targets).float().mean())
        out_rows.append(row)
        print(f"{name}: validation {row['validation_acc']:.4f}, test {row['test_acc']:.4f}", flush=True)
    table = pd.DataFrame(out_rows)
    print(f"\n{path} (epoch {ckpt.get('epoch')}, {ckpt['arch']}, {ckpt['input_size']} px)")
    print(table.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    best = table.loc[table["validation_acc"].idxmax(), "views"]
    print(f"best on validation: {best} (test accuracy is read, not chosen on)")
    write_csv(Path(args.out) if args.out else path.with_name("test_time_views.csv"), table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
