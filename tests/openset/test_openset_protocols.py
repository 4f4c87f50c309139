"""The two protocols, subsets, and the label-free view detectors receive."""

from dataclasses import replace

import numpy as np
import pytest

from ferlib.openset import apply_protocol
from ferlib.openset.data import VIEW_COLUMNS


def test_protocols(make_features_data):
    data = replace(make_features_data(), extras={})  # extras under the protocols: test_openset_extras.py
    n_train_split = 400
    rng = np.random.default_rng(1)
    all_logits = rng.normal(0, 1, (n_train_split, data.num_classes))
    all_feats = rng.normal(0, 1, (n_train_split, data.features.shape[1]))
    honest = apply_protocol(data, "honest")
    assert honest.protocol == "honest" and np.array_equal(honest.logits, data.logits)
    ref = apply_protocol(data, "reference", all_logits, all_feats, seed=3)
    again = apply_protocol(data, "reference", all_logits, all_feats, seed=3)
    assert ref.protocol == "reference" and np.array_equal(ref.logits, again.logits)
    test_rows = data.table["origin"].to_numpy() == "test"
    # test rows untouched; the open class's training rows get a shuffled loader's outputs
    assert np.array_equal(ref.logits[test_rows], data.logits[test_rows])
    perm = np.random.default_rng(3).permutation(n_train_split)
    donors = perm[data.table["source_index"].to_numpy()[~test_rows]]
    assert np.array_equal(ref.logits[~test_rows], all_logits[donors])
    assert np.array_equal(ref.pseudo[~test_rows], all_logits[donors].argmax(1))
    assert np.array_equal(ref.features[~test_rows], all_feats[donors])
    assert np.array_equal(data.pseudo, honest.pseudo)  # the input is not modified
    with pytest.raises(ValueError, match="whole training split"):
        apply_protocol(data, "reference")
    with pytest.raises(ValueError, match="protocol"):
        apply_protocol(data, "sloppy")


def test_subset_reindexes(make_features_data):
    data = make_features_data()
    sub = data.subset(data.table["origin"].to_numpy() == "test")
    assert len(sub) == 300 and list(sub.table["index"]) == list(range(300))
    assert not sub.is_open.any()
    np.testing.assert_array_equal(sub.logits, data.logits[:300])


def test_detector_view_carries_no_label(make_tiny_image_data):
    """The view keeps the rows, pseudo labels, outputs and images, and nothing that names
    the answer: label, target, is_open, origin, source_index, nor the path (a class folder)."""
    data = make_tiny_image_data()
    view = data.detector_view()
    assert list(view.table.columns) == VIEW_COLUMNS == ["index", "pseudo"]
    for column in ("label", "target", "is_open", "origin", "source_index", "path"):
        assert column not in view.table.columns
    np.testing.assert_array_equal(view.pseudo, data.pseudo)
    assert view.logits is data.logits and view.images is data.images and view.train_images is data.train_images
    with pytest.raises(KeyError, match="no label"):
        _ = view.is_open
    assert "is_open" in data.table.columns  # the full data is not modified
