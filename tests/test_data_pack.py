"""ferlib/data/pack.py: a data-set folder packed into parts and rebuilt pixel for pixel."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ferlib.data.pack import main, pack_folder, unpack_folder


def write_image(path: Path, size: int = 8, mode: str = "L", seed: int = 0) -> Path:
    """A random image (format from the suffix); grayscale or RGB."""
    shape = (size, size) if mode == "L" else (size, size, 3)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)).save(path)
    return path


def _pixels(root: Path) -> dict[str, np.ndarray]:
    return {p.relative_to(root).as_posix(): np.asarray(Image.open(p)) for p in sorted(root.rglob("*.png"))}


def _tree(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    for i in range(30):  # two sizes and two modes: four groups
        write_image(src / "train" / f"a{i:02d}.png", size=12 if i % 3 else 20, mode="L" if i % 2 else "RGB", seed=i)
    (src / "train" / "label.csv").write_text("name,label\na00.png,3\n")
    (src / "README.md").write_bytes(b"notes \x00\xff")
    return src


def test_round_trip_keeps_every_pixel_and_file_across_parts(tmp_path):
    src = _tree(tmp_path)
    index = pack_folder(src, tmp_path / "pack", part_mb=0.002, progress=False)  # ~2 KiB parts
    assert len(index["parts"]) > 1 and sum(g["count"] for g in index["groups"]) == 30 and len(index["groups"]) == 4
    assert all((tmp_path / "pack" / p).stat().st_size <= index["part_bytes"] for p in index["parts"])
    assert unpack_folder(tmp_path / "pack", tmp_path / "out", progress=False) == 32
    before, after = _pixels(src), _pixels(tmp_path / "out")
    assert before.keys() == after.keys()
    assert all(np.array_equal(before[k], after[k]) and before[k].shape == after[k].shape for k in before)
    for name in ("train/label.csv", "README.md"):
        assert (tmp_path / "out" / name).read_bytes() == (src / name).read_bytes()


def test_bad_inputs_are_refused_naming_the_file(tmp_path):
    src = _tree(tmp_path)
    write_image(src / "train" / "photo.jpg", seed=99)
    with pytest.raises(ValueError, match=r"photo\.jpg: \.jpg images would change pixels"):
        pack_folder(src, tmp_path / "p1", progress=False)
    (src / "train" / "photo.jpg").unlink()
    (src / "train" / "broken.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match=r"broken\.png: not a readable PNG"):
        pack_folder(src, tmp_path / "p2", progress=False)
    (src / "train" / "broken.png").unlink()
    pack_folder(src, tmp_path / "p3", progress=False)
    with pytest.raises(FileExistsError, match="a pack is already there"):
        pack_folder(src, tmp_path / "p3", progress=False)
    (tmp_path / "p3" / "part000.bin").unlink()
    with pytest.raises(FileNotFoundError, match="missing part"):
        unpack_folder(tmp_path / "p3", tmp_path / "o3", progress=False)


def test_a_corrupted_part_is_caught_by_the_pixel_digest(tmp_path):
    src = tmp_path / "src"
    for i in range(4):
        write_image(src / f"{i}.png", size=16, seed=i)
    index = pack_folder(src, tmp_path / "pack", progress=False)
    meta = tmp_path / "pack" / "pack.json"
    data = json.loads(meta.read_text())
    data["groups"][0]["digests"][2] = "0" * 16
    meta.write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"pixels of 2\.png differ"):
        unpack_folder(tmp_path / "pack", tmp_path / "out", progress=False)
    assert index["groups"][0]["count"] == 4


def test_cli(tmp_path, capsys):
    src = _tree(tmp_path)
    assert main(["pack", str(src), str(tmp_path / "pack")]) == 0
    assert "packed 30 images and 2 files into 1 part(s)" in capsys.readouterr().out
    assert main(["unpack", str(tmp_path / "pack"), str(tmp_path / "out")]) == 0
    assert main(["unpack", str(tmp_path / "nothing"), str(tmp_path / "o2")]) == 2
    assert "no pack index" in capsys.readouterr().err
