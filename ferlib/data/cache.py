"""Decode every image once into one uint8 tensor; training never decodes inside an epoch.

On 2 CPU cores PIL decoding plus per-sample torchvision transforms cost more than the
network for small inputs; decoding once (and augmenting whole batches on tensors, see
:mod:`ferlib.data.augment`) removes that cost. Memory: ``N * 3 * S * S`` bytes, i.e.
about 200 MB for FERPlus train at 48 px but 4.3 GB at 224 px: pick ``image_size`` with
that in mind (the model can upsample on the device instead).

Unreadable images are discovered here, not in the loaders (a loader only checks that
files exist: decoding 30k images just to list them would make loading slow).
"""

from __future__ import annotations

import os
import struct
import warnings
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image

from ferlib.emotions import Emotion
from ferlib.io import hash_strings, torch_save

from .base import FERDataset
from .decode import decode_image
from .errors import DataError

#: Bump when the on-disk cache format changes: old files are then rebuilt, not misread.
CACHE_FORMAT = 1

#: What a broken image file raises inside PIL (truncated data, bad chunks, not an image).
DECODE_ERRORS: tuple[type[BaseException], ...] = (
    OSError, ValueError, SyntaxError, EOFError, zlib.error, struct.error,
    Image.DecompressionBombError,
)


class UnreadableImageWarning(UserWarning):
    """A few images could not be decoded and were skipped (a category, so it can be
    filtered or turned into an error with :mod:`warnings` filters)."""


@dataclass(eq=False)
class ImageCache:
    """Decoded, resized images of one :class:`FERDataset`, ready for whole-batch training.

    ``source_index[k]`` is the row of the source data set that image ``k`` came from:
    unreadable images are absent, so positions in the cache are not data set rows.
    """

    images: torch.Tensor
    labels: torch.Tensor
    paths: list[str]
    source_index: np.ndarray
    fingerprint: str
    classes: tuple[Emotion, ...] = ()
    skipped: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        n = self.images.shape[0]
        if self.images.dtype != torch.uint8 or self.images.dim() != 4 or self.images.shape[1] != 3:
            raise ValueError(f"images must be uint8 (N, 3, S, S), got {self.images.dtype} "
                             f"{tuple(self.images.shape)}")
        self.labels = self.labels.to(torch.int64)
        self.source_index = np.asarray(self.source_index, dtype=np.int64).reshape(-1)
        if not (len(self.labels) == len(self.paths) == len(self.source_index) == n):
            raise ValueError("images, labels, paths and source_index differ in length")

    def __len__(self) -> int:
        return int(self.images.shape[0])

    @property
    def image_size(self) -> int:
        return int(self.images.shape[-1])

    def subset(self, idx: Sequence[int] | np.ndarray | torch.Tensor) -> ImageCache:
        """Rows ``idx`` (positions in this cache, or a boolean mask) as a new cache.

        The fingerprint changes with the selection, so a model trained on a subset never
        shares a cache key or manifest hash with one trained on the whole.
        """
        if isinstance(idx, torch.Tensor):
            idx = idx.cpu().numpy()
        index = np.asarray(idx)
        if index.dtype == bool:
            index = np.flatnonzero(index)
        index = index.astype(np.int64, copy=False).reshape(-1)
        t = torch.from_numpy(index)
        return ImageCache(
            images=self.images[t],
            labels=self.labels[t],
            paths=[self.paths[i] for i in index.tolist()],
            source_index=self.source_index[index],
            fingerprint=hash_strings([self.fingerprint, "subset", *map(str, index.tolist())]),
            classes=self.classes,
            skipped=list(self.skipped),
        )

    def _state(self, n_total: int) -> dict:
        return {
            "format": CACHE_FORMAT,
            "images": self.images,
            "labels": self.labels,
            "paths": list(self.paths),
            "source_index": torch.from_numpy(self.source_index),
            "fingerprint": self.fingerprint,
            "classes": [int(c) for c in self.classes],
            "skipped": list(self.skipped),
            "n_total": n_total,
        }

    @classmethod
    def _from_state(cls, state: dict) -> ImageCache:
        return cls(
            images=state["images"],
            labels=state["labels"],
            paths=list(state["paths"]),
            source_index=state["source_index"].numpy(),
            fingerprint=state["fingerprint"],
            classes=tuple(Emotion(c) for c in state["classes"]),
            skipped=list(state["skipped"]),
        )


def _check_bad(dataset: FERDataset, bad: list[str], n_total: int, max_bad_fraction: float) -> None:
    """Warn about a few unreadable images, fail on many (a broken copy, not bad luck)."""
    if not bad:
        return
    first = ", ".join(bad[:5]) + (", ..." if len(bad) > 5 else "")
    if len(bad) > max_bad_fraction * n_total:
        raise DataError(
            dataset.root,
            f"{len(bad)} of {n_total} images of {dataset.name}/{dataset.split} are unreadable "
            f"(more than max_bad_fraction={max_bad_fraction:g}); first: {first}",
        )
    warnings.warn(
        f"{dataset.name}/{dataset.split}: skipped {len(bad)} unreadable image(s) of {n_total}: "
        f"{first}",
        UnreadableImageWarning,
        stacklevel=3,
    )


def _load_cached(file: Path, fingerprint: str) -> tuple[ImageCache, int] | None:
    """A previously saved cache and its source size, or ``None`` when absent, stale or
    corrupt (then rebuilt)."""
    if not file.is_file():
        return None
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
        if state.get("format") != CACHE_FORMAT or state.get("fingerprint") != fingerprint:
            return None
        return ImageCache._from_state(state), int(state["n_total"])
    except Exception as exc:  # noqa: BLE001 - any unreadable cache file is simply rebuilt
        warnings.warn(f"ignoring unreadable cache file {file} ({exc}); rebuilding", stacklevel=3)
        return None


def build_cache(
    dataset: FERDataset,
    image_size: int,
    cache_dir: str | os.PathLike | None = None,
    max_bad_fraction: float = 0.01,
    progress: bool = True,
    workers: int | None = None,
) -> ImageCache:
    """Decode every image of ``dataset`` once, resized to ``image_size``, RGB uint8.

    With ``cache_dir`` the result is saved atomically to
    ``cache_dir/<dataset fingerprint>_<image_size>.pt`` and reused by later calls (the
    fingerprint changes when files or labels change, so a stale cache is never reused).

    Unreadable images: up to ``max_bad_fraction`` of the data set are skipped with an
    :class:`UnreadableImageWarning` naming the first few (also when the cache is reloaded);
    more raise :class:`DataError`. ``workers`` threads decode in parallel (default:
    ``min(4, cpu count)``); PIL releases the GIL while decoding, which pays for JPEGs and
    large images. For tiny PNGs the gain is small.
    """
    if image_size < 1:
        raise ValueError(f"image_size must be positive, got {image_size}")
    if not 0.0 <= max_bad_fraction <= 1.0:
        raise ValueError(f"max_bad_fraction must be in [0, 1], got {max_bad_fraction}")
    fingerprint = f"{dataset.fingerprint()}_{image_size}"
    file = Path(cache_dir) / f"{fingerprint}.pt" if cache_dir is not None else None

    if file is not None:
        loaded = _load_cached(file, fingerprint)
        if loaded is not None:
            cache, n_total = loaded
            _check_bad(dataset, cache.skipped, n_total, max_bad_fraction)
            return cache

    n = len(dataset)
    images = torch.empty((n, 3, image_size, image_size), dtype=torch.uint8)
    out = images.numpy()  # shares memory: workers write rows in place
    ok = np.ones(n, dtype=bool)
    paths = dataset.paths

    def work(start: int, stop: int) -> int:
        for i in range(start, stop):
            try:
                array = decode_image(paths[i], image_size)  # module global: patchable
            except DECODE_ERRORS:
                ok[i] = False
                continue
            if array.ndim == 2:
                out[i] = array  # grayscale: broadcast to the three channels
            else:
                out[i] = array.transpose(2, 0, 1)
        return stop - start

    from ferlib.progress import progress_bar

    chunk = 256
    bounds = [(s, min(s + chunk, n)) for s in range(0, n, chunk)]
    n_workers = workers if workers is not None else min(4, os.cpu_count() or 1)
    with progress_bar(total=n, disable=not progress, desc=f"decode {dataset.name}/{dataset.split}",
              unit="img") as bar:
        if n_workers <= 1 or len(bounds) <= 1:
            for s, e in bounds:
                bar.update(work(s, e))
        else:
            with ThreadPoolExecutor(max_workers=n_workers) as pool:
                for done in pool.map(lambda b: work(*b), bounds):
                    bar.update(done)

    relpaths = dataset.relpaths()
    bad = [relpaths[i] for i in np.flatnonzero(~ok).tolist()]
    _check_bad(dataset, bad, n, max_bad_fraction)
    keep = np.flatnonzero(ok)
    if len(keep) < n:
        images = images[torch.from_numpy(keep)]
    cache = ImageCache(
        images=images,
        labels=torch.from_numpy(dataset.labels[keep].copy()),
        paths=[relpaths[i] for i in keep.tolist()],
        source_index=keep.astype(np.int64),
        fingerprint=fingerprint,
        classes=dataset.classes,
        skipped=bad,
    )
    if file is not None:
        torch_save(file, cache._state(n))
    return cache
