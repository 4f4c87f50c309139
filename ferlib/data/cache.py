"""Decode every image once into one uint8 tensor; training never decodes inside an epoch.

On 2 CPU cores PIL decoding plus per-sample torchvision transforms cost more than the
network for small inputs; decoding once (and augmenting whole batches on tensors, see
:mod:`ferlib.data.augment`) removes that cost.

Channels: a data set whose decoded images are all gray (FERPlus, the synthetic set) is
stored with ONE channel, a colour one with three; :func:`~ferlib.data.augment.to_float`
expands gray to the model's three channels per batch, on the device. Memory:
``N * C * S * S`` bytes, i.e. about 69 MB for FERPlus train at 48 px. For sets that do not
fit in memory (AffectNet: ~290k images, 11 GB at 112 px in colour) ``memmap=True`` keeps
the cache in a file per split that the OS pages in on demand; it is built by streaming
chunks of decoded images into the file, so peak memory is bounded by the chunk.

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
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from PIL import Image

from ferlib.emotions import Emotion
from ferlib.io import hash_strings, torch_save

from .base import FERDataset
from .decode import decode_image
from .errors import DataError

#: Bump when the on-disk cache format changes: old files are then rebuilt, not misread.
CACHE_FORMAT = 2

#: What a broken image file raises inside PIL (truncated data, bad chunks, not an image).
DECODE_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    ValueError,
    SyntaxError,
    EOFError,
    zlib.error,
    struct.error,
    Image.DecompressionBombError,
)


#: How many skipped files a warning, an error or :meth:`ImageCache.unreadable` names.
SKIPPED_EXAMPLES = 5


class UnreadableImageWarning(UserWarning):
    """A few images could not be decoded and were skipped (a category, so it can be
    filtered or turned into an error with :mod:`warnings` filters)."""


class RowView:
    """Rows ``rows`` of a uint8 image tensor, gathered only when indexed.

    What the training loop and the detectors hold instead of ``images[rows]`` when the
    cache is memory-mapped: a gathered copy of nearly every row of a split would pull the
    whole file into memory, which is what the memory map is there to avoid. Indexing
    (``view[batch_index]``) gathers just those rows, as a tensor; ``len``, ``shape``,
    ``dtype``, ``ndim`` and ``device`` answer like the gathered tensor's, and
    :func:`ferlib.digest.tensor_digest` hashes it chunk by chunk to the gathered tensor's
    digest, so result keys do not depend on where the cache lives.
    """

    def __init__(self, base: torch.Tensor, rows: Sequence[int] | np.ndarray | torch.Tensor) -> None:
        index = torch.as_tensor(np.asarray(rows.cpu() if isinstance(rows, torch.Tensor) else rows))
        if index.dtype == torch.bool:
            index = torch.nonzero(index).squeeze(1)
        self.base = base
        self.rows = index.to(torch.int64).reshape(-1)
        if len(self.rows) and not (0 <= int(self.rows.min()) and int(self.rows.max()) < len(base)):
            raise IndexError(f"rows out of range for {len(base)} images")

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def shape(self) -> torch.Size:
        return torch.Size((len(self.rows), *self.base.shape[1:]))

    @property
    def dtype(self) -> torch.dtype:
        return self.base.dtype

    @property
    def device(self) -> torch.device:
        return self.base.device

    @property
    def ndim(self) -> int:
        return self.base.ndim

    def dim(self) -> int:
        return self.base.dim()

    def __getitem__(self, index) -> torch.Tensor:
        """Rows ``index`` of the view (an int, slice, index tensor / array or mask), gathered."""
        if isinstance(index, (int, np.integer)):
            return self.base[int(self.rows[index])]
        if isinstance(index, np.ndarray):
            index = torch.from_numpy(index)
        return self.base[self.rows[index]]

    def view(self, index) -> RowView:
        """Rows ``index`` of the view as another lazy view (nothing gathered)."""
        if isinstance(index, np.ndarray):
            index = torch.from_numpy(index)
        return RowView(self.base, self.rows[index])

    def iter_chunks(self, rows_per_chunk: int = 4096):
        """The gathered rows in order, ``rows_per_chunk`` at a time (bounded memory)."""
        for start in range(0, len(self.rows), rows_per_chunk):
            yield self.base[self.rows[start : start + rows_per_chunk]]

    def materialize(self) -> torch.Tensor:
        """All rows gathered into one tensor (a full copy: for small views only)."""
        return self.base[self.rows]


@dataclass(eq=False)
class ImageCache:
    """Decoded, resized images of one :class:`FERDataset`, ready for whole-batch training.

    ``images`` is uint8 ``(N, 1, S, S)`` (grayscale set) or ``(N, 3, S, S)`` (colour), in
    memory or backed by a memory-mapped file (:func:`build_cache` with ``memmap=True``;
    indexing rows then reads only those rows from the file).

    ``source_index[k]`` is the row of the source data set that image ``k`` came from:
    unreadable images are absent, so positions in the cache are not data set rows.

    ``skipped``: the paths (relative to the data set's root) of the unreadable images left
    out, and ``n_total`` the number of images of the source data set: what a stage records
    in the run's manifest (:meth:`unreadable`, :func:`unreadable_summary`), so that a
    result says on how many images it rests without anyone reading the warnings of its log.
    """

    images: torch.Tensor
    labels: torch.Tensor
    paths: list[str]
    source_index: np.ndarray
    fingerprint: str
    classes: tuple[Emotion, ...] = ()
    skipped: list[str] = field(default_factory=list)
    #: images of the source data set, skipped ones included (``None``: not known)
    n_total: int | None = None
    #: the memory-mapped file holding ``images``, or ``None`` when they are in memory
    file: str | None = None

    def __post_init__(self) -> None:
        n = self.images.shape[0]
        if self.images.dtype != torch.uint8 or self.images.dim() != 4 or self.images.shape[1] not in (1, 3):
            raise ValueError(
                f"images must be uint8 (N, 1, S, S) or (N, 3, S, S), got {self.images.dtype} {tuple(self.images.shape)}"
            )
        self.labels = self.labels.to(torch.int64)
        self.source_index = np.asarray(self.source_index, dtype=np.int64).reshape(-1)
        if not (len(self.labels) == len(self.paths) == len(self.source_index) == n):
            raise ValueError("images, labels, paths and source_index differ in length")

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def unreadable(self, examples: int = SKIPPED_EXAMPLES) -> dict[str, Any]:
        """The unreadable images left out, for a manifest: ``{"count": n, "of": total,
        "examples": [up to examples relative paths]}`` (``of``: ``None`` when unknown)."""
        return {"count": len(self.skipped), "of": self.n_total, "examples": list(self.skipped[:examples])}

    @property
    def image_size(self) -> int:
        return int(self.images.shape[-1])

    @property
    def channels(self) -> int:
        """1 for a grayscale data set, 3 for a colour one."""
        return int(self.images.shape[1])

    def rows(self, idx: Sequence[int] | np.ndarray | torch.Tensor) -> torch.Tensor | RowView:
        """Images of rows ``idx`` for the training loop / detectors: gathered in memory, or
        a lazy :class:`RowView` when the cache is memory-mapped (no copy of the split)."""
        if self.file is not None:
            return RowView(self.images, idx)
        if isinstance(idx, np.ndarray):
            idx = torch.from_numpy(idx)
        return self.images[torch.as_tensor(idx)]

    def subset(self, idx: Sequence[int] | np.ndarray | torch.Tensor) -> ImageCache:
        """Rows ``idx`` (positions in this cache, or a boolean mask) as a new cache.

        The fingerprint changes with the selection, so a model trained on a subset never
        shares a cache key or manifest hash with one trained on the whole. The selected
        rows are gathered into memory (a memory-mapped cache's subset is a copy of those
        rows only; use :meth:`rows` for a lazy view of a large selection).
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
            n_total=self.n_total,
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
            n_total=int(state["n_total"]),
        )


def unreadable_summary(caches: Mapping[str, ImageCache], examples: int = SKIPPED_EXAMPLES) -> dict[str, dict]:
    """``{split: cache.unreadable(examples)}`` for a run manifest's ``data`` section.

    Every split is listed, a count of 0 included: it records that the split was checked.
    Pass each cache built from a data set once (a validation set carved from ``train`` is a
    subset of it and repeats ``train``'s skipped files)."""
    return {split: cache.unreadable(examples) for split, cache in caches.items()}


def _check_bad(dataset: FERDataset, bad: list[str], n_total: int, max_bad_fraction: float) -> None:
    """Warn about a few unreadable images, fail on many (a broken copy, not bad luck)."""
    if not bad:
        return
    first = ", ".join(bad[:SKIPPED_EXAMPLES]) + (", ..." if len(bad) > SKIPPED_EXAMPLES else "")
    if len(bad) > max_bad_fraction * n_total:
        raise DataError(
            dataset.root,
            f"{len(bad)} of {n_total} images of {dataset.name}/{dataset.split} are unreadable "
            f"(more than max_bad_fraction={max_bad_fraction:g}); first: {first}",
        )
    warnings.warn(
        f"{dataset.name}/{dataset.split}: skipped {len(bad)} unreadable image(s) of {n_total}: {first}",
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


def _memmap_files(cache_dir: Path, fingerprint: str) -> tuple[Path, Path]:
    """The raw uint8 image file and its metadata file (written last: the commit marker)."""
    return cache_dir / f"{fingerprint}.u8", cache_dir / f"{fingerprint}.meta.pt"


def _open_memmap(data: Path, shape: tuple[int, ...]) -> torch.Tensor:
    """A tensor over the file's pages. Copy-on-write (``mode="c"``): writable for torch,
    but nothing ever reaches the file, so a shared cache cannot be corrupted in place."""
    if int(np.prod(shape)) == 0:
        return torch.empty(shape, dtype=torch.uint8)
    return torch.from_numpy(np.memmap(data, dtype=np.uint8, mode="c", shape=shape))


def _load_memmapped(cache_dir: Path, fingerprint: str) -> tuple[ImageCache, int] | None:
    """A committed memory-mapped cache, or ``None``.

    A file is used only when its metadata exists (written after the data file was
    complete, flushed and renamed into place), names this fingerprint and format, and the
    data file has exactly the size the metadata says: a torn, truncated or half-written
    file is rebuilt, never read.
    """
    data, meta = _memmap_files(cache_dir, fingerprint)
    if not meta.is_file():
        return None
    try:
        state = torch.load(meta, map_location="cpu", weights_only=True)
        if state.get("format") != CACHE_FORMAT or state.get("fingerprint") != fingerprint:
            return None
        shape = tuple(int(v) for v in state["shape"])
        if not data.is_file() or data.stat().st_size != int(np.prod(shape)):
            warnings.warn(f"ignoring incomplete cache file {data}; rebuilding", stacklevel=3)
            return None
        state["images"] = _open_memmap(data, shape)
        cache = ImageCache._from_state(state)
        cache.file = str(data)
        return cache, int(state["n_total"])
    except Exception as exc:  # noqa: BLE001 - any unreadable cache file is simply rebuilt
        warnings.warn(f"ignoring unreadable cache file {meta} ({exc}); rebuilding", stacklevel=3)
        return None


def _is_gray(array: np.ndarray) -> bool:
    """A decoded image is gray when it has one channel, or three equal ones (an RGB file of
    a gray face): storing one channel then loses nothing."""
    if array.ndim == 2:
        return True
    return bool((array[..., 0] == array[..., 1]).all() and (array[..., 0] == array[..., 2]).all())


class _Store:
    """Where decoded rows go: an array in memory or a memory-mapped temporary file.

    It starts with one channel and widens to three at the first colour image (copying the
    rows written so far in chunks), so the channel count is decided from the decoded
    images in one decoding pass.
    """

    def __init__(self, n: int, size: int, file: Path | None, chunk: int) -> None:
        self.n, self.size, self.file, self.chunk = n, size, file, chunk
        self.array = self._allocate(1)

    def _tmp(self, channels: int) -> Path:
        assert self.file is not None
        return self.file.with_name(f"{self.file.name}.{os.getpid()}.{channels}.tmp")

    def _allocate(self, channels: int) -> np.ndarray:
        shape = (self.n, channels, self.size, self.size)
        if self.file is None or self.n == 0:
            return np.empty(shape, dtype=np.uint8)
        return np.memmap(self._tmp(channels), dtype=np.uint8, mode="w+", shape=shape)

    @property
    def channels(self) -> int:
        return int(self.array.shape[1])

    def widen(self, filled: int) -> None:
        """Switch to three channels, keeping rows ``[0, filled)`` (gray, replicated)."""
        wide = self._allocate(3)
        for s in range(0, filled, self.chunk):
            wide[s : min(s + self.chunk, filled)] = self.array[s : min(s + self.chunk, filled)]
        self._discard()
        self.array = wide

    def write(self, i: int, array: np.ndarray) -> None:
        if self.channels == 1:
            self.array[i, 0] = array if array.ndim == 2 else array[..., 0]
        elif array.ndim == 2:
            self.array[i] = array  # broadcast to the three channels
        else:
            self.array[i] = array.transpose(2, 0, 1)

    def _discard(self) -> None:
        if isinstance(self.array, np.memmap):
            name = Path(self.array.filename)
            del self.array
            name.unlink(missing_ok=True)

    def finish(self, keep: np.ndarray) -> torch.Tensor:
        """The rows ``keep`` (ascending) as the final tensor; for a file: compacted in
        place, flushed, fsynced and renamed to ``self.file`` atomically."""
        if not isinstance(self.array, np.memmap):
            images = torch.from_numpy(self.array)
            return images if len(keep) == self.n else images[torch.from_numpy(keep)]
        array, m = self.array, len(keep)
        for dst in range(0, m if m < self.n else 0, self.chunk):  # destinations never pass their sources
            rows = keep[dst : dst + self.chunk]
            array[dst : dst + len(rows)] = array[rows]
        array.flush()
        tmp = Path(array.filename)
        shape = (m, *array.shape[1:])
        del array, self.array
        with open(tmp, "r+b") as handle:
            handle.truncate(int(np.prod(shape)))
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, self.file)
        return _open_memmap(self.file, shape)

    def abort(self) -> None:
        if hasattr(self, "array"):
            self._discard()


def build_cache(
    dataset: FERDataset,
    image_size: int,
    cache_dir: str | os.PathLike | None = None,
    max_bad_fraction: float = 0.01,
    progress: bool = True,
    workers: int | None = None,
    memmap: bool = False,
    chunk: int = 1024,
) -> ImageCache:
    """Decode every image of ``dataset`` once, resized to ``image_size``, uint8.

    One channel when every decoded image is gray, else three (RGB order).

    With ``cache_dir`` the result is saved atomically to
    ``cache_dir/<dataset fingerprint>_<image_size>.pt`` and reused by later calls (the
    fingerprint changes when files or labels change, so a stale cache is never reused).
    With ``memmap=True`` (needs ``cache_dir``) the images live instead in
    ``<fingerprint>.u8`` (raw rows, memory-mapped when loaded) beside ``<fingerprint>.meta.pt``
    (labels, paths, shape); images are streamed into the file ``chunk`` at a time, and
    the metadata is written only once the file is complete, so a build that dies halfway
    is rebuilt, never read.

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
    if chunk < 1:
        raise ValueError(f"chunk must be positive, got {chunk}")
    if memmap and cache_dir is None:
        raise ValueError("memmap=True needs a cache_dir to hold the memory-mapped file")
    fingerprint = f"{dataset.fingerprint()}_{image_size}"
    directory = Path(cache_dir) if cache_dir is not None else None
    file = directory / f"{fingerprint}.pt" if directory is not None and not memmap else None

    loaded = None
    if file is not None:
        loaded = _load_cached(file, fingerprint)
    elif memmap:
        loaded = _load_memmapped(directory, fingerprint)
    if loaded is not None:
        cache, n_total = loaded
        _check_bad(dataset, cache.skipped, n_total, max_bad_fraction)
        return cache

    data_file = meta_file = None
    if memmap:
        data_file, meta_file = _memmap_files(directory, fingerprint)
        directory.mkdir(parents=True, exist_ok=True)
        meta_file.unlink(missing_ok=True)  # uncommit first: the data file is about to change
    n = len(dataset)
    store = _Store(n, image_size, data_file, chunk)
    ok = np.ones(n, dtype=bool)
    paths = dataset.paths

    def decode(i: int) -> np.ndarray | None:
        try:
            return decode_image(paths[i], image_size)  # module global: patchable
        except DECODE_ERRORS:
            return None

    def decode_block(block: range) -> list[np.ndarray | None]:
        return [decode(i) for i in block]

    from ferlib.progress import progress_bar

    n_workers = workers if workers is not None else min(4, os.cpu_count() or 1)
    pool = ThreadPoolExecutor(max_workers=n_workers) if n_workers > 1 and n > 1 else None
    try:
        with progress_bar(
            total=n, disable=not progress, desc=f"decode {dataset.name}/{dataset.split}", unit="img"
        ) as bar:
            for start in range(0, n, chunk):
                rows = range(start, min(start + chunk, n))
                if pool is None:
                    arrays = decode_block(rows)
                else:  # one contiguous block per worker: few tasks, rows stay in order
                    step = -(-len(rows) // n_workers)
                    blocks = [rows[k : k + step] for k in range(0, len(rows), step)]
                    arrays = [a for part in pool.map(decode_block, blocks) for a in part]
                for i, array in zip(rows, arrays):
                    if array is None:
                        ok[i] = False
                        continue
                    if store.channels == 1 and not _is_gray(array):
                        store.widen(i)
                    store.write(i, array)
                bar.update(len(arrays))
        relpaths = dataset.relpaths()
        bad = [relpaths[i] for i in np.flatnonzero(~ok).tolist()]
        _check_bad(dataset, bad, n, max_bad_fraction)
        keep = np.flatnonzero(ok)
        images = store.finish(keep)
    except BaseException:
        store.abort()
        raise
    finally:
        if pool is not None:
            pool.shutdown()
    cache = ImageCache(
        images=images,
        labels=torch.from_numpy(dataset.labels[keep].copy()),
        paths=[relpaths[i] for i in keep.tolist()],
        source_index=keep.astype(np.int64),
        fingerprint=fingerprint,
        classes=dataset.classes,
        skipped=bad,
        n_total=n,
        file=str(data_file) if data_file is not None and len(keep) else None,
    )
    if file is not None:
        torch_save(file, cache._state(n))
    elif meta_file is not None:
        state = cache._state(n)
        state["shape"] = list(images.shape)
        del state["images"]
        torch_save(meta_file, state)
    return cache
