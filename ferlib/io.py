"""Small I/O helpers: atomic writes, so that a killed run never leaves a half-written file."""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterable


def _current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _current_umask()


def atomic_write(path: str | os.PathLike, writer: Callable[[Path], None]) -> Path:
    """Write ``path`` through ``writer(tmp_path)`` then rename into place.

    The temporary file lives in the same directory, so ``os.replace`` is atomic: readers
    see either the old file or the complete new one, never a torn write.

    Under ``torchrun`` only rank 0 writes, and every rank returns once the file is complete
    (:func:`ferlib.distributed.run_on_main`): the same code writes one set of files, and a
    rank that reads the file next reads rank 0's. So every rank must make the call.
    """
    from ferlib import distributed

    if distributed.is_distributed():
        return distributed.run_on_main(lambda: atomic_write(path, writer))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp_path = Path(tmp)
    os.chmod(tmp_path, 0o666 & ~_UMASK)  # mkstemp makes files private; outputs are not
    try:
        writer(tmp_path)
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()
    return path


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Atomically write a text file."""
    return atomic_write(path, lambda p: p.write_text(text, encoding="utf-8"))


def _json_default(obj: Any) -> Any:
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "item"):  # numpy / torch scalars
        return obj.item()
    if hasattr(obj, "tolist"):
        return obj.tolist()
    if hasattr(obj, "__dataclass_fields__"):
        from dataclasses import asdict

        return asdict(obj)
    return str(obj)


def write_json(path: str | os.PathLike, data: Any) -> Path:
    """Atomically write JSON (paths, numpy and torch values are converted)."""
    return write_text(path, json.dumps(data, indent=2, default=_json_default) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def write_csv(path: str | os.PathLike, frame) -> Path:
    """Atomically write a pandas DataFrame as CSV (no index column)."""
    return atomic_write(path, lambda p: frame.to_csv(p, index=False))


def torch_save(path: str | os.PathLike, obj: Any) -> Path:
    """Atomically ``torch.save`` an object (checkpoints must survive a kill mid-write)."""
    import torch

    return atomic_write(path, lambda p: torch.save(obj, p))


def write_npy(path: str | os.PathLike, array: Any) -> Path:
    """Atomically ``np.save`` one array. The writer gets a file handle, so numpy adds no
    ``.npy`` suffix to the unique temporary name and the rename moves the whole file."""
    import numpy as np

    def writer(tmp: Path) -> None:
        with open(tmp, "wb") as handle:
            np.save(handle, np.asarray(array))

    return atomic_write(path, writer)


def write_npz(path: str | os.PathLike, arrays: dict[str, Any]) -> Path:
    """Atomically ``np.savez`` named arrays (a file handle, as :func:`write_npy`)."""
    import numpy as np

    def writer(tmp: Path) -> None:
        with open(tmp, "wb") as handle:
            np.savez(handle, **arrays)

    return atomic_write(path, writer)


def hash_strings(items: Iterable[str]) -> str:
    """Short stable SHA-256 over an iterable of strings (used for data and cache keys)."""
    h = hashlib.sha256()
    for item in items:
        h.update(item.encode("utf-8"))
        h.update(b"\0")
    return h.hexdigest()[:16]
