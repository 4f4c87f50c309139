"""The DPP diversity loss: it falls as heads move apart, for every number of heads and both
forms, where the reference's zero-diagonal kernel rewards similarity for three heads."""

import pytest
import torch

from ferlib.losses import dpp_diversity, dpp_kernel


def _spreading_heads(b: int, n: int = 6, d: int = 16, seed: int = 0, steps: int = 11):
    """Descriptors (N, B, D) at ``steps`` stages t in [0, 0.5]: head b of sample n is
    ``c_n + t e_nb`` with ``c_n`` and the ``e_nb`` orthonormal, so at t = 0 the heads
    coincide and every pairwise distance grows strictly with t (after L2 normalisation
    ``||a_i - a_j||^2 = 2 t^2 / (1 + t^2)``)."""
    g = torch.Generator().manual_seed(seed)
    basis = torch.linalg.qr(torch.randn(n, d, b + 1, generator=g, dtype=torch.float64))[0]  # (N, D, B+1)
    centre, directions = basis[:, :, :1], basis[:, :, 1:]
    ts = torch.linspace(0, 0.5, steps, dtype=torch.float64)
    return [(centre + t * directions).transpose(1, 2).float() for t in ts]


def _reference_det_loss(descriptors: torch.Tensor, gamma: float = 10.0) -> torch.Tensor:
    """The reference code's formulation: the same kernel with its diagonal left at 0."""
    kernel = dpp_kernel(descriptors, gamma) - torch.eye(descriptors.shape[1])
    return -torch.linalg.det(kernel.double())


@pytest.mark.parametrize("form", ["det", "logdet"])
@pytest.mark.parametrize("b", [2, 3, 4, 5])
def test_loss_falls_strictly_as_heads_move_apart(b, form):
    losses = torch.stack([dpp_diversity(a, form=form) for a in _spreading_heads(b)])
    assert torch.isfinite(losses).all()
    assert (losses[1:] < losses[:-1]).all(), losses


@pytest.mark.parametrize("b", [3, 5])
def test_reference_zero_diagonal_rewards_similarity_for_odd_head_counts(b):
    """With S_ii = 0 the determinant of s (11^T - I) is (-1)^(B-1) (B-1) s^B: for B = 3 the
    reference's ``-det`` *rises* as the heads move apart, the defect the unit diagonal fixes."""
    losses = torch.stack([_reference_det_loss(a) for a in _spreading_heads(b)])
    assert (losses[1:] > losses[:-1]).all(), losses
    fixed = torch.stack([dpp_diversity(a) for a in _spreading_heads(b)])
    assert (fixed[1:] < fixed[:-1]).all()


def test_kernel_bounds_and_extremes():
    """Unit diagonal, symmetric, det in [0, 1]: 0 for coinciding heads, about 1 for heads far apart."""
    torch.manual_seed(0)
    same = torch.randn(5, 1, 8).expand(5, 3, 8)
    kernel = dpp_kernel(same)
    torch.testing.assert_close(kernel, torch.ones(3, 3))
    assert dpp_diversity(same).abs() < 1e-6
    far = torch.eye(8)[:3].expand(5, 3, 8)  # orthogonal unit vectors: S_ij = exp(-20)
    torch.testing.assert_close(dpp_diversity(far), torch.tensor(-1.0))
    random = dpp_kernel(torch.randn(7, 4, 8))
    torch.testing.assert_close(random, random.T)
    torch.testing.assert_close(torch.diagonal(random), torch.ones(4))
    assert 0 <= torch.linalg.det(random) <= 1


def test_normalisation_makes_the_loss_scale_free():
    """L2-normalised descriptors: scaling one head's maps changes nothing (the loss is about
    where attention goes, and gamma means the same for maps of any size). The raw kernel
    (``normalise=False``, the reference) depends on the scale, and on 36-position maps of
    unrelated values it saturates: S = I, loss -1, no gradient left to spread the heads."""
    torch.manual_seed(1)
    close = (0.5 + 0.05 * torch.rand(6, 3, 36)).requires_grad_(True)
    scaled = close.detach().clone()
    scaled[:, 1] *= 3
    torch.testing.assert_close(dpp_diversity(close), dpp_diversity(scaled))
    assert not torch.allclose(dpp_diversity(close, normalise=False), dpp_diversity(scaled, normalise=False))
    unrelated = torch.rand(6, 3, 36, requires_grad=True)
    raw = dpp_diversity(unrelated, normalise=False)
    raw.backward()
    assert raw.item() == pytest.approx(-1.0) and unrelated.grad.abs().max() < 1e-6
    normalised = dpp_diversity(close)
    normalised.backward()
    assert -1 < normalised.item() < 0 and close.grad.abs().max() > 1e-4


def test_logdet_is_finite_with_a_finite_gradient_when_heads_coincide():
    a = torch.randn(4, 1, 8).expand(4, 3, 8).clone().requires_grad_(True)
    loss = dpp_diversity(a, form="logdet")
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(a.grad).all()


def test_gradient_descent_spreads_the_heads():
    torch.manual_seed(2)
    a = (torch.rand(8, 4, 16) * 0.1 + 1).requires_grad_(True)  # four nearly equal heads
    opt = torch.optim.Adam([a], lr=0.05)
    start = dpp_diversity(a).item()
    for _ in range(30):
        opt.zero_grad()
        dpp_diversity(a).backward()
        opt.step()
    assert dpp_diversity(a).item() < start - 0.3


def test_bad_arguments():
    with pytest.raises(ValueError, match="form must be one of"):
        dpp_diversity(torch.rand(2, 3, 4), form="trace")
    with pytest.raises(ValueError, match=r"\(N, B, D\)"):
        dpp_diversity(torch.rand(3, 4))
