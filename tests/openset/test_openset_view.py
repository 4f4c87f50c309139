"""Detectors see no label: shuffling the answer columns changes no detector's score."""

import numpy as np
import pytest

from ferlib.openset import available_detectors, detector_class, run_detectors
from ferlib.openset.base import Detector

ANSWER_COLUMNS = ["label", "target", "is_open", "origin", "source_index", "path"]


def _shuffled(data, seed=0):
    """The same evaluation set with the answer columns permuted across rows."""
    rng = np.random.default_rng(seed)
    table = data.table.copy()
    for column in ANSWER_COLUMNS:
        table[column] = table[column].to_numpy()[rng.permutation(len(table))]
    from dataclasses import replace

    return replace(data, table=table)


@pytest.mark.parametrize("name", available_detectors())
def test_shuffling_label_columns_changes_no_score(
    name, make_tiny_image_data, tiny_params, make_tiny_close_set, tmp_path
):
    """Every registered detector (the trained ones with tiny settings, in memory) through
    the path stage 03 uses; the shuffled columns must really differ."""
    data = make_tiny_image_data()
    if detector_class(name).needs_close_set:
        data.close_set = make_tiny_close_set(tmp_path)
    shuffled = _shuffled(data)
    assert not np.array_equal(shuffled.table["is_open"], data.table["is_open"])
    shared = {"input_size": 32, "progress": False, "seed": 0}
    params = {name: tiny_params.get(name, {})}
    a = run_detectors(data, [name], params, shared, log=False)[name].scores
    b = run_detectors(shuffled, [name], params, shared, log=False)[name].scores
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


class Cheat(Detector):
    """Reads the answer: the label-free view must stop it with a clear error."""

    name = "cheat"

    def score(self, data):
        return data.is_open.astype(float)


def test_a_detector_reading_the_answer_is_stopped(make_features_data, monkeypatch):
    from ferlib.openset import registry

    monkeypatch.setitem(registry.DETECTORS, "cheat", f"{__name__}:Cheat")
    data = make_features_data(n_close=20, n_open=10)
    assert np.array_equal(registry.make_detector("cheat").score(data), data.is_open)  # on the full table it cheats
    with pytest.raises(KeyError, match="no label"):
        run_detectors(data, ["cheat"], log=False)


class ByPosition(Detector):
    """Scores a row by its position: the evaluation table lists the open class's training
    images last, so without a shuffle position alone would find them."""

    name = "by_position"

    def score(self, data):
        return np.arange(len(data), dtype=float)


def test_row_order_gives_nothing_away(make_features_data, monkeypatch):
    from ferlib.metrics import openset_metrics
    from ferlib.openset import registry

    monkeypatch.setitem(registry.DETECTORS, "by_position", f"{__name__}:ByPosition")
    data = make_features_data(n_close=300, n_open=100)  # open rows last, as in stage 02's table
    assert openset_metrics(np.arange(len(data), dtype=float), data.is_open)["auroc"] == 1.0
    scores = run_detectors(data, ["by_position"], log=False)["by_position"].scores
    assert abs(openset_metrics(scores, data.is_open)["auroc"] - 0.5) < 0.1
    # the shuffle is undone: a row-wise detector's scores are those of the full table, row by row
    direct = registry.make_detector("mahalanobis").fit(data).score(data)
    np.testing.assert_allclose(run_detectors(data, ["mahalanobis"], log=False)["mahalanobis"].scores, direct)
