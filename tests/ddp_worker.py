"""Worker of tests/test_distributed.py: ``torchrun --nproc_per_node 2 tests/ddp_worker.py JOBS``.

``JOBS`` is a JSON list of ``{"model": "plain" | "bn", "epochs": int, "out": dir, "result":
file}``; each job trains one tiny model with :func:`ferlib.train.fit` into ``out`` and rank 0
saves, to ``result``, the final weights, the history, every rank's weight digest (all ranks
must hold the same model) and the files each rank wrote (only rank 0 may write). The test
imports :func:`build` to train the same thing in a single process.
"""

from __future__ import annotations

import json
import os
import sys
import types

import torch
from torch import nn

from ferlib import distributed
from ferlib import io as ferio
from ferlib.data.augment import AugmentConfig
from ferlib.digest import state_dict_digest
from ferlib.manifest import update_manifest
from ferlib.train import TensorData, TrainConfig, fit

#: the global batch; 101 training rows: batches of 32, 32, 32, 5 (slices of 3 and 2)
BATCH = 32


def toy(n: int, seed: int) -> TensorData:
    """Two classes that differ by brightness (as tests/test_train.py)."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 2
    base = torch.where(y[:, None, None, None] == 1, 150, 100)
    x = (base + torch.randint(-60, 60, (n, 3, 16, 16), generator=g)).clamp(0, 255).to(torch.uint8)
    return TensorData(x, y)


def make_model(kind: str) -> nn.Module:
    """``plain``: convolutions without BatchNorm (DDP is then the single-process computation);
    ``bn``: the same with BatchNorm (statistics per rank's slice: not the same computation)."""
    torch.manual_seed(0)
    norm = [nn.BatchNorm2d(8)] if kind == "bn" else []
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        *norm,
        nn.ReLU(),
        nn.Conv2d(8, 8, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 2),
    )


def build(kind: str, epochs: int) -> tuple[nn.Module, TensorData, TensorData, TrainConfig]:
    cfg = TrainConfig(epochs=epochs, batch_size=BATCH, lr=3e-3, progress=True, augment=AugmentConfig(), seed=0)
    return make_model(kind), toy(101, 0), toy(40, 1), cfg


class _CountingOs(types.ModuleType):
    """``os`` for ferlib.io that records each completed atomic write (its ``os.replace``)."""

    def __init__(self) -> None:
        super().__init__("os")
        self.replaced: list[str] = []

    def __getattr__(self, name: str):
        return getattr(os, name)

    def replace(self, src, dst) -> None:
        self.replaced.append(os.path.basename(dst))
        os.replace(src, dst)


def main(jobs_file: str) -> None:
    jobs = json.loads(open(jobs_file).read())
    counting = _CountingOs()
    ferio.os = counting
    for job in jobs:
        counting.replaced.clear()
        model, train, val, cfg = build(job["model"], job["epochs"])
        result = fit(model, train, val, cfg, out_dir=job["out"], desc=job["model"])
        update_manifest(job["out"], stages={"ddp_test": {"best_epoch": result.best_epoch}})
        digests = distributed.all_gather_objects(state_dict_digest(model))
        writes = distributed.all_gather_objects(sorted(set(counting.replaced)))
        if distributed.is_main():
            torch.save(
                {
                    "state": model.state_dict(),
                    "history": result.history.to_dict("list"),
                    "best_epoch": result.best_epoch,
                    "digests": digests,
                    "writes": writes,
                    "world_size": distributed.world_size(),
                },
                job["result"],
            )


if __name__ == "__main__":
    main(sys.argv[1])
