"""The determinantal (DPP) diversity loss over B heads (Heidari & Iosifidis, METHODS.md part 3).

Each of B heads (ESR branches, MA-Net patches or branches) gives every sample a descriptor
``a_b(x)`` (an attention map flattened, an attention vector, a pooled feature). The heads'
similarity kernel is

    S_ij = mean_n exp(-gamma ||a_i(x_n) - a_j(x_n)||^2),   S_ii = 1,

a Gaussian kernel averaged over the batch, and the loss is ``-det(S)`` (or ``-log det S``):
``det S`` is the volume the heads span, largest (1) when they are mutually far apart and 0
when two coincide, so minimising the loss spreads the heads.

**The diagonal.** Every per-sample Gaussian kernel matrix is positive semi-definite with
a unit diagonal, and so is their mean: ``0 <= det S <= 1`` (Hadamard), and ``det S`` grows
as any pair moves apart, for every B. The reference code fills only the off-diagonal
entries and leaves ``S_ii = 0``. For B heads at a common similarity ``s`` that matrix
``s (11^T - I)`` has determinant ``(-1)^(B-1) (B-1) s^B``: for odd B (3, 5, ...) ``-det``
*falls* as the heads become more similar, so the reference rewards collapse there, and its
``logdet`` is undefined (a negative determinant) for even B. The unit diagonal is the
standard DPP L-ensemble kernel and fixes both (``tests/test_diversity.py`` shows the
reference's sign flip for B = 3).

**Normalisation.** Descriptors are L2-normalised per head and sample by default, so
``||a_i - a_j||^2 = 2 (1 - cos)`` lies in [0, 4] whatever the descriptor's length (a 3x3 or
a 7x7 attention map, a 256- or 512-wide vector) and ``gamma = 10`` means the same thing
everywhere: ``S_ij`` is about 0.8 at cosine 0.99, 0.14 at 0.9 and under 1e-4 at 0.5. It
also makes the loss about *where* attention goes, not how strong it is (a head cannot
look different by scaling its map). The reference uses raw, unnormalised values, whose
kernel is near 0 (and the loss flat) for any two maps of more than a few positions unless
they are almost equal. ``normalise=False`` gives that raw kernel.

**Numerics.** The B x B determinant is taken in float64 (B is small); ``logdet`` adds
``eps`` to the diagonal (``log det(S + eps I)``), which keeps it finite with a finite
gradient when two heads coincide (``det S = 0``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

FORMS = ("det", "logdet")


def dpp_kernel(descriptors: torch.Tensor, gamma: float = 10.0, normalise: bool = True) -> torch.Tensor:
    """The (B, B) similarity kernel of per-sample descriptors (N, B, D), unit diagonal.

    ``S_ij = mean_n exp(-gamma ||a_i(x_n) - a_j(x_n)||^2)`` (float32), computed through the
    Gram matrix so that coinciding descriptors have a finite gradient (``cdist`` has none at
    distance 0)."""
    if descriptors.ndim != 3:
        raise ValueError(f"descriptors must be (N, B, D), got shape {tuple(descriptors.shape)}")
    a = descriptors.float()
    if normalise:
        a = F.normalize(a, dim=2)
    sq = a.pow(2).sum(dim=2)
    dist = (sq[:, :, None] + sq[:, None, :] - 2 * a @ a.transpose(1, 2)).clamp_min(0)
    kernel = torch.exp(-gamma * dist).mean(dim=0)
    eye = torch.eye(kernel.shape[0], dtype=kernel.dtype, device=kernel.device)
    return kernel * (1 - eye) + eye


def dpp_diversity(
    descriptors: torch.Tensor,
    gamma: float = 10.0,
    form: str = "det",
    normalise: bool = True,
    eps: float = 1e-6,
) -> torch.Tensor:
    """``-det(S)`` (``form="det"``) or ``-log det(S + eps I)`` (``form="logdet"``) of
    :func:`dpp_kernel`; a float32 scalar that falls as the B heads' descriptors move apart.

    ``descriptors``: (N, B, D), N samples, B heads, D values per head (flatten maps first).
    """
    if form not in FORMS:
        raise ValueError(f"form must be one of {list(FORMS)}, got {form!r}")
    kernel = dpp_kernel(descriptors, gamma, normalise).double()
    if form == "det":
        return -torch.linalg.det(kernel).float()
    eye = torch.eye(kernel.shape[0], dtype=kernel.dtype, device=kernel.device)
    return -torch.logdet(kernel + eps * eye).float()
