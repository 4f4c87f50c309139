"""Fixtures of the open-set tests: tiny evaluation sets built in memory, no data set on disk."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import pytest
import torch

from ferlib.data.augment import AugmentConfig
from ferlib.models import ModelConfig, build_model
from ferlib.openset.data import TABLE_COLUMNS, CloseSet, OpenSetData
from ferlib.train import TensorData, TrainConfig, fit, predict


def features_data(
    n_close: int = 300, n_open: int = 100, k: int = 4, dim: int = 16, seed: int = 0, images: torch.Tensor | None = None
) -> OpenSetData:
    """Close samples: confident logits, features near their class mean. Open samples:
    flat logits, features far from every class mean.

    Extras as a close-set model with the ``uncertainty`` or ``branches`` head gives them:
    open samples have a higher ``uncertainty`` and ``branch_logits`` (3 branches) that
    disagree, close samples branches that agree with the logits."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n_close)
    means = rng.normal(0, 4, (k, dim))
    close_f = means[y] + rng.normal(0, 1, (n_close, dim))
    open_f = rng.normal(0, 1, (n_open, dim)) * 4 + 12
    close_l = np.eye(k)[y] * 6 + rng.normal(0, 1, (n_close, k))
    open_l = rng.normal(0, 1, (n_open, k))
    logits = np.concatenate([close_l, open_l])
    n = n_close + n_open
    # as a linear head's, the logits are an affine function of the features: their least-squares
    # projection onto the features (close rows stay confident, open rows flat), which the
    # detectors built around the recovered last layer (ferlib.openset.pood) rely on
    x = np.c_[np.concatenate([close_f, open_f]), np.ones(n)]
    logits = x @ np.linalg.lstsq(x, logits, rcond=None)[0]
    table = pd.DataFrame(
        {
            "index": np.arange(n),
            "path": [f"img{i}.png" for i in range(n)],
            "label": np.r_[y, np.full(n_open, 9)],
            "target": np.r_[y, -np.ones(n_open, int)],
            "pseudo": logits.argmax(1),
            "is_open": np.r_[np.zeros(n_close, bool), np.ones(n_open, bool)],
            "origin": ["test"] * n_close + ["train"] * n_open,
            "source_index": np.r_[np.arange(n_close), np.arange(n_open)],
        }
    )[TABLE_COLUMNS]
    ty = rng.integers(0, k, 500)
    # drawn after everything else, so the arrays above are those of before extras existed
    uncertainty = np.r_[rng.lognormal(0.0, 0.3, n_close), rng.lognormal(1.0, 0.3, n_open)]
    branch_logits = np.concatenate(
        [close_l[:, None, :] + rng.normal(0, 0.3, (n_close, 3, k)), rng.normal(0, 2, (n_open, 3, k))]
    )
    return OpenSetData(
        table=table,
        logits=logits,
        features=np.concatenate([close_f, open_f]),
        train_features=means[ty] + rng.normal(0, 1, (500, dim)),
        train_targets=ty,
        images=images,
        extras={"uncertainty": uncertainty, "branch_logits": branch_logits},
    )


def noisy_images(n: int = 160, noise: float = 0.25, seed: int = 0, size: int = 32) -> OpenSetData:
    """Three classes coded by a bright square's height in the image; a quarter of the labels
    flipped to another class (symmetric noise): the noisy rows play the open samples.

    The square is centred left-right, so the class survives the horizontal flip that the
    training loop's augmentation and the CAM flip-consistency loss apply (a square coded by
    its left-right position turns class 0 into class 2 under a flip, which made the
    detector's AUROC swing with the seed)."""
    g = np.random.default_rng(seed)
    y = np.arange(n) % 3
    x = g.integers(0, 40, (n, 3, size, size)).astype(np.uint8)
    lo = (size - 10) // 2
    for i, c in enumerate(y):
        x[i, :, 1 + 10 * c : 11 + 10 * c, lo : lo + 10] = 230
    noisy = g.random(n) < noise
    pseudo = np.where(noisy, (y + g.integers(1, 3, n)) % 3, y)
    table = pd.DataFrame(
        {
            "index": np.arange(n),
            "path": [""] * n,
            "label": y,
            "target": y,
            "pseudo": pseudo,
            "is_open": noisy,
            "origin": "test",
            "source_index": np.arange(n),
        }
    )[TABLE_COLUMNS]
    logits = np.eye(3)[pseudo] * 3.0
    return OpenSetData(
        table=table,
        logits=logits,
        features=np.zeros((n, 4)),
        train_features=np.zeros((3, 4)),
        train_targets=np.arange(3),
        images=torch.from_numpy(x),
    )


def tiny_image_data(n_close: int = 24, n_open: int = 16, seed: int = 0, size: int = 32) -> OpenSetData:
    """A tiny evaluation set for every detector at once: features and logits as
    :func:`features_data`, random uint8 images, and close training images."""
    g = np.random.default_rng(seed)
    n = n_close + n_open
    data = features_data(
        n_close=n_close,
        n_open=n_open,
        dim=8,
        seed=seed,
        images=torch.from_numpy(g.integers(0, 255, (n, 3, size, size), dtype=np.uint8)),
    )
    data.train_images = torch.from_numpy(g.integers(0, 255, (40, 3, size, size), dtype=np.uint8))
    return data


def tiny_close_set(folder, k: int = 4, seed: int = 0, size: int = 32) -> CloseSet:
    """What stage 03 hands a detector that fine-tunes stage 01's network (``needs_close_set``):
    a freshly initialised ResNet-18 (ImageNet stem, linear head) saved as ``folder/best.pt``,
    and random close training (16) and validation (8) images with targets 0..k-1."""
    g = np.random.default_rng(seed)
    torch.manual_seed(seed)
    model = ModelConfig("resnet18", k, size, stem="imagenet")
    torch.save(build_model(model, verbose=False).state_dict(), folder / "best.pt")
    images = torch.from_numpy(g.integers(0, 255, (24, 3, size, size), dtype=np.uint8))
    targets = np.arange(24) % k
    model.pretrained = str(folder / "best.pt")
    return CloseSet(model, images[:16], targets[:16], images[16:], targets[16:])


def squares(y: np.ndarray, g: np.random.Generator, size: int = 32) -> torch.Tensor:
    """Close classes 0-2: a bright 10-px square centred left-right at height 1, 11 or 21 (as
    ``noisy_images``); the open class (y < 0): a bar across the middle height, 28 px wide,
    a shape no close class has at the position of class 1."""
    x = g.integers(0, 40, (len(y), 3, size, size)).astype(np.uint8)
    lo = (size - 10) // 2
    for i, c in enumerate(y):
        if c >= 0:
            x[i, :, 1 + 10 * c : 11 + 10 * c, lo : lo + 10] = 230
        else:
            x[i, :, 11:21, 2:30] = 230
    return torch.from_numpy(x)


def squares_data(tmp_path: Path, seed: int = 0, per_class: int = 40, n_open: int = 40) -> OpenSetData:
    """Close training (40 per class) and validation (20) rows, a close-set network trained
    on them for 4 epochs (saved as stage 01's best.pt) and an evaluation set of 60 close test
    and 40 open rows carrying that network's logits."""
    g = np.random.default_rng(seed)
    y_train, y_val, y_test = np.arange(3 * per_class) % 3, np.arange(60) % 3, np.arange(60) % 3
    x_train, x_val = squares(y_train, g), squares(y_val, g)
    y_eval = np.r_[y_test, -np.ones(n_open, int)]
    x_eval = squares(y_eval, g)
    torch.manual_seed(seed)
    cfg = ModelConfig("resnet18", 3, 32, stem="imagenet")
    net = build_model(cfg, verbose=False)
    tcfg = TrainConfig(epochs=4, batch_size=32, seed=seed, augment=AugmentConfig(), progress=False)
    fit(net, TensorData(x_train, torch.as_tensor(y_train)), TensorData(x_val, torch.as_tensor(y_val)), tcfg)
    torch.save(net.state_dict(), tmp_path / "best.pt")
    pred = predict(net, x_eval, progress=False)
    n = len(y_eval)
    table = pd.DataFrame(
        {
            "index": np.arange(n),
            "path": "",
            "label": y_eval,
            "target": y_eval,
            "pseudo": pred.logits.argmax(1).numpy(),
            "is_open": y_eval < 0,
            "origin": "test",
            "source_index": np.arange(n),
        }
    )[TABLE_COLUMNS]
    close = CloseSet(
        ModelConfig("resnet18", 3, 32, stem="imagenet", pretrained=str(tmp_path / "best.pt")),
        x_train,
        y_train,
        x_val,
        y_val,
    )
    return OpenSetData(
        table,
        pred.logits.numpy(),
        pred.features.numpy(),
        np.zeros((3, 512)),
        np.arange(3),
        images=x_eval,
        close_set=close,
    )


#: tiny settings of the trained detectors (a few seconds each on one CPU core)
TINY_PARAMS = {
    "cycle": {"cycles": 1, "epochs_per_cycle": 1, "batch_size": 16, "arch": "resnet18", "stem": "imagenet"},
    "released": {"epochs": 1, "batch_size": 16, "arch": "resnet18", "stem": "imagenet"},
    "contrast": {"epochs": 1, "batch_size": 16, "stem": "imagenet"},
    "proser": {"epochs": 1, "batch_size": 16},
    "erd": {"members": 2, "folds": 2, "epochs": 1, "batch_size": 16},
}


def tiny_stage_params(base) -> dict:
    """Stage arguments of a tiny synthetic run under ``base`` (the data set written there):
    140/28/56 images, Surprise open, 32 px, ImageNet stem; stage 01 takes ``epochs`` and
    ``batch_size`` on top. Shared by the tests that run stages 01-03 for real."""
    from ferlib.data.synthetic import SyntheticConfig, write_synthetic

    root = write_synthetic(base / "synthetic", SyntheticConfig(n_train=140, n_valid=28, n_test=56, seed=0))
    return dict(
        dataset="synthetic",
        data_root=str(root),
        open_class="surprise",
        input_size=32,
        progress=False,
        run_dir=str(base / "run"),
        cache_dir=str(base / "cache"),
        stem="imagenet",
    )


@pytest.fixture(scope="session")
def make_tiny_stage_params() -> Callable[..., dict]:
    return tiny_stage_params


@pytest.fixture
def make_features_data() -> Callable[..., OpenSetData]:
    return features_data


@pytest.fixture
def make_noisy_images() -> Callable[..., OpenSetData]:
    return noisy_images


@pytest.fixture
def make_tiny_image_data() -> Callable[..., OpenSetData]:
    return tiny_image_data


@pytest.fixture
def make_tiny_close_set() -> Callable[..., CloseSet]:
    return tiny_close_set


@pytest.fixture
def make_squares_data() -> Callable[..., OpenSetData]:
    return squares_data


@pytest.fixture
def tiny_params() -> dict[str, dict]:
    return {k: dict(v) for k, v in TINY_PARAMS.items()}
