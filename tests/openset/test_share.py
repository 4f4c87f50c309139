"""ferlib/openset/share.py: the open share of an evaluation set from a close reference."""

from __future__ import annotations

import numpy as np
import pytest

from ferlib.openset.share import estimate_open_share


@pytest.mark.parametrize("share", [0.05, 0.2, 0.5, 0.85])
def test_recovers_the_open_share_of_a_separable_mixture(share):
    rng = np.random.default_rng(0)
    n = 8000
    n_open = int(share * n)
    close = rng.normal(0.0, 1.0, n - n_open)
    open_ = rng.normal(4.0, 1.0, n_open)
    reference = rng.normal(0.0, 1.0, 3000)
    got = estimate_open_share(np.r_[close, open_], reference)
    assert got == pytest.approx(share, abs=0.04)


def test_overlapping_open_rows_make_it_err_low_never_high():
    """Open rows that reach the close rows' lowest scores hide in the bin the estimate reads:
    the estimate is a lower bound in expectation."""
    rng = np.random.default_rng(1)
    close, open_ = rng.normal(0, 1, 6000), rng.normal(1.0, 1.0, 4000)
    got = estimate_open_share(np.r_[close, open_], rng.normal(0, 1, 3000))
    assert 0.0 <= got < 0.4 + 0.03


def test_no_open_rows_gives_about_zero_and_the_score_scale_does_not_matter():
    rng = np.random.default_rng(2)
    e, r = rng.normal(size=5000), rng.normal(size=3000)
    assert estimate_open_share(e, r) < 0.05
    mix = np.r_[rng.normal(0, 1, 3000), rng.normal(5, 1, 2000)]
    ref = rng.normal(0, 1, 2000)
    assert estimate_open_share(mix, ref) == pytest.approx(estimate_open_share(np.exp(mix), np.exp(ref)))


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="need evaluation and reference"):
        estimate_open_share(np.ones(3), np.ones(0))
    with pytest.raises(ValueError, match="finite"):
        estimate_open_share(np.r_[1.0, np.nan], np.ones(3))
    with pytest.raises(ValueError, match="min_reference"):
        estimate_open_share(np.ones(3), np.ones(3), min_reference=0.0)
