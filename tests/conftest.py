"""Shared fixtures: the real FERPlus location, and writers of tiny on-disk data sets.

The tiny data sets are written with PIL into ``tmp_path`` in each layout the loaders
read, so every loader and error path is tested without any real data. Tests that need
real FERPlus use ``ferplus_root``, which skips cleanly when the data is absent (as on a
user's machine); set ``FERKIT_FERPLUS`` to point elsewhere.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import pytest
from PIL import Image

FERPLUS_ENV = "FERKIT_FERPLUS"


def ferplus_location() -> Path:
    """Where the tests look for FERPlus: ``$FERKIT_FERPLUS`` or ``../shared/data/ferplus``."""
    env = os.environ.get(FERPLUS_ENV)
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[1].parent / "shared" / "data" / "ferplus"


@pytest.fixture(scope="session")
def ferplus_root() -> Path:
    """Root of the real FERPlus data; skips the test when it is not there."""
    root = ferplus_location()
    if not (root / "FER2013Train" / "label.csv").is_file():
        pytest.skip(f"FERPlus not found at {root} (set {FERPLUS_ENV} to its root)")
    return root


@pytest.fixture(scope="module")
def module_tmp(tmp_path_factory, request) -> Iterator[Path]:
    """A folder shared by one test module's tests (a run trained once, read by several tests).

    Removed when the module ends unless one of its tests failed: such runs hold checkpoints of
    hundreds of MB, and kept to the end of the session they add up to more than a CI machine's
    free disk (pyproject's ``tmp_path_retention_policy`` does the same for ``tmp_path``)."""
    failed = request.session.testsfailed
    path = tmp_path_factory.mktemp(request.module.__name__.rsplit(".", 1)[-1])
    yield path
    if request.session.testsfailed == failed:
        shutil.rmtree(path, ignore_errors=True)


def write_image(path: Path, size: int = 8, mode: str = "L", seed: int = 0) -> Path:
    """A small random image (format from the suffix), parents created."""
    rng = np.random.default_rng(seed)
    shape = (size, size) if mode == "L" else (size, size, 3)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(path)  # mode from shape
    return path


@pytest.fixture
def make_folders(tmp_path: Path) -> Callable[..., Path]:
    """``make_folders({"train": {"happiness": 3, ...}, ...}, size=8, ext="png")`` -> root.

    Writes ``root/<split>/<folder>/<i>.<ext>`` with distinct random images.
    """

    def make(
        layout: dict[str, dict[str, int]],
        size: int = 8,
        ext: str = "png",
        mode: str = "L",
        root: Path | None = None,
    ) -> Path:
        root = root or tmp_path / "folders"
        seed = 0
        for split, folders in layout.items():
            for folder, n in folders.items():
                for i in range(n):
                    write_image(root / split / folder / f"img{i:03d}.{ext}", size, mode, seed)
                    seed += 1
        return root

    return make


@pytest.fixture
def make_ferplus(tmp_path: Path) -> Callable[..., Path]:
    """``make_ferplus({"train": [(name, votes), ...], ...})`` -> root in Microsoft's layout.

    ``votes``: ten integers (neutral..contempt, unknown, NF). Every named image is written,
    each split's images seeded apart so that no two images are alike (FERPlus runs drop
    duplicate evaluation rows, ``ferlib.data.duplicates``).
    """
    dirs = {"train": "FER2013Train", "valid": "FER2013Valid", "test": "FER2013Test"}

    def make(rows: dict[str, Sequence[tuple[str, Sequence[int]]]]) -> Path:
        root = tmp_path / "ferplus"
        for split, entries in rows.items():
            folder = root / dirs[split]
            folder.mkdir(parents=True, exist_ok=True)
            lines = []
            offset = 100_000 * list(dirs).index(split)
            for k, (name, votes) in enumerate(entries):
                write_image(folder / name, 8, "L", offset + k)
                lines.append(f'{name},"(0, 0, 48, 48)",' + ",".join(str(v) for v in votes))
            (folder / "label.csv").write_text("\n".join(lines) + "\n")
        return root

    return make


@pytest.fixture
def make_rafdb(tmp_path: Path) -> Callable[..., Path]:
    """``make_rafdb([("train_00001.jpg", 5), ...])`` -> root in RAF-DB's layout."""

    def make(entries: Sequence[tuple[str, int]]) -> Path:
        root = tmp_path / "rafdb"
        (root / "EmoLabel").mkdir(parents=True, exist_ok=True)
        for k, (name, _) in enumerate(entries):
            stem, suffix = os.path.splitext(name)
            write_image(root / "Image" / "aligned" / f"{stem}_aligned{suffix}", 8, "RGB", k)
        text = "".join(f"{name} {label}\n" for name, label in entries)
        (root / "EmoLabel" / "list_patition_label.txt").write_text(text)
        return root

    return make


@pytest.fixture
def make_affectnet(tmp_path: Path) -> Callable[..., Path]:
    """``make_affectnet({"Training_Labeled": {0: 2, ...}, "Validation": {...}})`` -> root."""

    def make(layout: dict[str, dict[int | str, int]]) -> Path:
        root = tmp_path / "affectnet"
        seed = 0
        for split_dir, folders in layout.items():
            for folder, n in folders.items():
                for i in range(n):
                    write_image(root / split_dir / str(folder) / f"{i}.jpg", 8, "RGB", seed)
                    seed += 1
        return root

    return make


@pytest.fixture
def make_subjects(tmp_path: Path) -> Callable[..., Path]:
    """``make_subjects({"anger": ["S005_001_00000011.png", ...], ...})`` -> root.

    Writes ``root/<class folder>/<name>`` (the layout of CK+, JAFFE, KDEF: no split
    folders), each a distinct small random image in the format of its suffix.
    """

    def make(layout: dict[str, Sequence[str]], root: Path | None = None) -> Path:
        root = root or tmp_path / "subjects"
        seed = 0
        for folder, names in layout.items():
            for name in names:
                write_image(root / folder / name, 8, "L", seed)
                seed += 1
        return root

    return make
