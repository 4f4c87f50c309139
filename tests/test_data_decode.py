"""Image files of every supported format and mode decode to the right 8-bit values, by the
image's mode (never by trusting it to be gray or RGB), and a folder of unsupported files
says so instead of "no images found"."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ferlib.data import DataError, build_cache, decode_image, decode_rgb, load_dataset, load_folders

GRAY = np.array([[0, 1, 64, 127], [128, 200, 254, 255]], dtype=np.uint8)
RGB = np.stack([GRAY, 255 - GRAY, np.full_like(GRAY, 77)], axis=-1)


def _save(path: Path, image: Image.Image, **kwargs) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, **kwargs)
    return path


def _gray_cases(tmp_path: Path) -> dict[str, tuple[Path, np.ndarray]]:
    """name -> (file, the 8-bit gray values it must decode to)."""
    g16 = GRAY.astype(np.uint16) * 257  # the 16-bit value of each 8-bit level
    palette = Image.fromarray(GRAY).convert("P")  # gray palette entries
    la = Image.merge("LA", (Image.fromarray(GRAY), Image.fromarray(np.full_like(GRAY, 9))))
    cases = {
        "tif": (_save(tmp_path / "a.tif", Image.fromarray(GRAY)), GRAY),
        "tiff": (_save(tmp_path / "b.TIFF", Image.fromarray(GRAY)), GRAY),
        "pgm": (_save(tmp_path / "c.pgm", Image.fromarray(GRAY)), GRAY),
        "webp": (_save(tmp_path / "d.webp", Image.fromarray(GRAY), lossless=True), GRAY),
        "palette": (_save(tmp_path / "e.png", palette), GRAY),
        "16bit png": (_save(tmp_path / "f.png", Image.fromarray(g16)), GRAY),
        "16bit tif": (_save(tmp_path / "g.tif", Image.fromarray(g16)), GRAY),
        "16bit pgm": (_save(tmp_path / "h.pgm", Image.fromarray(g16)), GRAY),
        "LA": (_save(tmp_path / "i.png", la), GRAY),
        "1bit": (_save(tmp_path / "j.png", Image.fromarray(GRAY >= 128)), np.where(GRAY >= 128, 255, 0)),
    }
    return cases


def test_gray_formats_and_modes_decode_to_their_values(tmp_path):
    for name, (path, expected) in _gray_cases(tmp_path).items():
        rgb = decode_rgb(path)
        assert rgb.dtype == np.uint8 and rgb.shape == (2, 4, 3), name
        for c in range(3):
            assert np.array_equal(rgb[..., c], expected), (name, rgb[..., c], expected)
        small = decode_image(path, 4)  # resized; every mode first made 8-bit
        assert small.dtype == np.uint8, name


def test_sixteen_bit_is_scaled_not_clipped(tmp_path):
    # PIL's own convert("L") clips 16-bit values to 255: 1000/65535 of full scale must be
    # about 4, not 255.
    values = np.array([[0, 1000, 32768, 65535]], dtype=np.uint16)
    path = _save(tmp_path / "x.png", Image.fromarray(values))
    assert decode_rgb(path)[0, :, 0].tolist() == [0, 4, 128, 255]
    assert decode_image(path, 4).shape == (4, 4)  # gray stays one channel


def test_rgb_modes_palette_and_alpha(tmp_path):
    rgba = np.concatenate([RGB, np.full_like(GRAY, 3)[..., None]], axis=-1)
    cases = {
        "rgb webp": (_save(tmp_path / "a.webp", Image.fromarray(RGB), lossless=True), RGB),
        "rgb tif": (_save(tmp_path / "b.tif", Image.fromarray(RGB)), RGB),
        "rgba png": (_save(tmp_path / "c.png", Image.fromarray(rgba)), RGB),  # alpha dropped
        "palette": (_save(tmp_path / "d.png", Image.fromarray(RGB).quantize(256, method=2)), None),
    }
    for name, (path, expected) in cases.items():
        got = decode_rgb(path)
        if expected is None:  # a palette image decodes to its palette's colours
            with Image.open(path) as im:
                assert im.mode == "P"
                palette = np.asarray(im.getpalette(), dtype=np.uint8).reshape(-1, 3)
                expected = palette[np.asarray(im)]
        assert np.array_equal(got, expected), name
        assert np.array_equal(
            decode_image(path, 4), np.asarray(Image.fromarray(expected).resize((4, 4), Image.BILINEAR))
        )


def test_cache_of_mixed_modes_matches_the_per_item_decoder(tmp_path):
    root = tmp_path / "set"
    g16 = GRAY.astype(np.uint16) * 257
    _save(root / "train" / "anger" / "a.tif", Image.fromarray(g16))
    _save(root / "train" / "anger" / "b.webp", Image.fromarray(RGB), lossless=True)
    _save(root / "train" / "fear" / "c.pgm", Image.fromarray(GRAY))
    _save(root / "train" / "fear" / "d.png", Image.fromarray(GRAY).convert("P"))
    ds = load_folders(root, "train")
    assert sorted(p.name for p in ds.paths) == ["a.tif", "b.webp", "c.pgm", "d.png"]
    cache = build_cache(ds, 8, progress=False)
    assert len(cache) == 4 and not cache.skipped
    for path, image in zip(ds.paths, cache.images):
        expected = Image.fromarray(decode_rgb(path)).resize((8, 8), Image.BILINEAR)
        assert torch.equal(image, torch.from_numpy(np.array(expected)).permute(2, 0, 1)), path.name


def test_folder_of_unsupported_files_names_extensions(tmp_path):
    folder = tmp_path / "set" / "train" / "happiness"
    _save(folder / "a.gif", Image.fromarray(GRAY))
    _save(folder / "c.gif", Image.fromarray(GRAY))
    (folder / "b.HEIC").write_bytes(b"not decodable here")
    (folder / ".DS_Store").write_bytes(b"")
    with pytest.raises(DataError, match="supported image extension") as info:
        load_dataset("folders", tmp_path / "set", "train")
    message = str(info.value)
    assert info.value.path == folder.resolve()
    assert ".gif, .heic" in message  # what was found
    assert ".png" in message and ".webp" in message and ".tif" in message  # what is supported
    assert "no images found" not in message


def test_non_images_beside_images_are_still_ignored(tmp_path):
    folder = tmp_path / "set" / "train" / "happiness"
    _save(folder / "a.png", Image.fromarray(GRAY))
    (folder / "notes.txt").write_text("about this folder")
    (folder / "Thumbs.db").write_bytes(b"")
    assert [p.name for p in load_folders(tmp_path / "set", "train").paths] == ["a.png"]
