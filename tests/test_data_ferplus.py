"""Real FERPlus (skipped when absent): class counts match the published table."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from ferlib.data import build_cache, load_dataset, load_ferplus
from ferlib.emotions import Emotion

pytestmark = pytest.mark.ferplus

# Class counts by top vote, unknown/NF winners excluded (data README). Order:
# neutral, happiness, surprise, sadness, anger, disgust, fear, contempt.
# Test neutral (1258) includes the defective fer0033120.png.
README_COUNTS = {
    "train": (10295, 7526, 3557, 3530, 2463, 191, 655, 168),
    "valid": (1329, 899, 458, 415, 325, 32, 71, 26),
    "test": (1258, 928, 447, 446, 321, 20, 97, 28),
}


@pytest.mark.parametrize("num_classes", [7, 8])
@pytest.mark.parametrize("split", ["train", "valid", "test"])
def test_counts_match_readme(ferplus_root, split, num_classes):
    ds = load_dataset("ferplus", ferplus_root, split, num_classes=num_classes, exclude=())
    expected = dict(zip(Emotion, README_COUNTS[split]))
    if num_classes == 7:
        del expected[Emotion.CONTEMPT]
    assert ds.counts() == expected
    assert ds.classes == tuple(expected)
    assert len(ds) == sum(expected.values())
    # labels are the first-max majority of the stored raw votes
    assert np.array_equal(ds.votes.argmax(1), ds.labels)
    assert ds.votes.shape == (len(ds), 10)


def test_defective_test_image_excluded_by_default(ferplus_root):
    ds = load_ferplus(ferplus_root, "test")
    assert "FER2013Test/fer0033120.png" not in ds.relpaths()
    assert ds.counts()[Emotion.NEUTRAL] == README_COUNTS["test"][0] - 1
    assert len(ds) == 3516  # the evaluation size quoted in METHODS.md


def test_paths_exist_under_root(ferplus_root):
    ds = load_ferplus(ferplus_root, "valid")
    assert all(p.is_absolute() and p.is_file() for p in ds.paths)
    assert all(r.startswith("FER2013Valid/fer") and r.endswith(".png") for r in ds.relpaths())
    assert ds.fingerprint() == load_ferplus(ferplus_root, "valid").fingerprint()


def test_cache_of_real_images(ferplus_root):
    ds = load_ferplus(ferplus_root, "valid").subset(np.arange(0, 3500, 50))
    cache = build_cache(ds, 48, progress=False)
    assert cache.images.shape == (70, 1, 48, 48)  # grayscale: one channel
    for k in (0, 69):
        gray = torch.from_numpy(np.array(Image.open(ds.paths[k]).convert("L")))
        assert torch.equal(cache.images[k, 0], gray)
    assert cache.images.float().std() > 20  # real faces, not blank tiles
