"""Whole-batch augmentation on tensors (CPU or CUDA), deterministic given a generator.

The three papers augment per image with torchvision/PIL in DataLoader workers: "with
p=0.5 either a horizontal flip or additive Gaussian noise, then RandomErasing". On a
2-core machine (or a GPU starved by its loader) per-image Python transforms dominate the
epoch; here the same policy is applied to a whole normalised batch with broadcasting, so
it costs a few tensor operations per batch and runs wherever the batch lives.

Deterministic: every random draw comes from the ``generator`` passed in (or the global
RNG when ``None``), so a seeded generator reproduces an epoch exactly.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

import torch
from torch import Tensor

#: ImageNet statistics: the backbones' pretrained weights expect them.
IMAGENET_MEAN: tuple[float, float, float] = (0.485, 0.456, 0.406)
IMAGENET_STD: tuple[float, float, float] = (0.229, 0.224, 0.225)


def to_float(
    x_uint8: Tensor,
    mean: tuple[float, ...] = IMAGENET_MEAN,
    std: tuple[float, ...] = IMAGENET_STD,
    size: int | None = None,
) -> Tensor:
    """uint8 images ``(B, C, S, S)`` (or one ``(C, S, S)``) -> float32, ``(x/255 - mean)/std``.

    ``C`` is 1 (a grayscale cache) or 3. One channel is expanded to ``len(mean)`` channels
    here, per batch and on the batch's device, so the cache stores a third of the bytes
    while the model still sees three channels; the numbers are identical to those of a
    three-channel copy of the same gray image (the same operations on the same values).

    ``size``: resize to ``size x size`` first (bilinear, antialiased, deterministic), for
    a cache stored at another size than the model's input; ``None`` keeps the stored size.

    Refuses non-uint8 input: normalising twice is a silent bug (the network still
    trains, just worse), so it is an error here.
    """
    if x_uint8.dtype != torch.uint8:
        raise TypeError(f"to_float expects uint8 images, got {x_uint8.dtype}")
    if x_uint8.dim() not in (3, 4) or x_uint8.shape[-3] not in (1, len(mean)):
        raise ValueError(
            f"to_float expects (B, C, S, S) or (C, S, S) images with C = 1 or {len(mean)}, got {tuple(x_uint8.shape)}"
        )
    m = torch.as_tensor(mean, dtype=torch.float32, device=x_uint8.device).view(-1, 1, 1)
    s = torch.as_tensor(std, dtype=torch.float32, device=x_uint8.device).view(-1, 1, 1)
    x = x_uint8.to(torch.float32).div_(255.0)
    if size is not None:
        x = resize(x, size)
    if x.shape[-3] != len(mean):
        return (x.expand(*x.shape[:-3], len(mean), *x.shape[-2:]) - m) / s
    return x.sub_(m).div_(s)


def resize(x: Tensor, size: int) -> Tensor:
    """Float images ``(B, C, H, W)`` or ``(C, H, W)`` resized to ``size x size``: bilinear with
    antialiasing (a downscale averages, like PIL's filter that built the cache), which is
    deterministic on CPU and CUDA; returns ``x`` itself when it already has that size."""
    if size < 1:
        raise ValueError(f"size must be positive, got {size}")
    if tuple(x.shape[-2:]) == (size, size):
        return x
    batch = x if x.dim() == 4 else x.unsqueeze(0)
    out = torch.nn.functional.interpolate(
        batch, size=(size, size), mode="bilinear", align_corners=False, antialias=True
    )
    return out if x.dim() == 4 else out.squeeze(0)


def hflip(x: Tensor) -> Tensor:
    """Horizontal flip (mirror along width) of an image or batch, ``torch.flip(x, [-1])``."""
    return torch.flip(x, dims=[-1])


@dataclass
class AugmentConfig:
    """The papers' training augmentation.

    - ``flip_or_noise_p``: probability that a sample gets a horizontal flip OR additive
      Gaussian noise (each half the time).
    - ``noise_std``: standard deviation of that noise in NORMALISED space (the units of
      :func:`to_float`'s output, about 1/0.226 of [0, 1] pixel units). The reference adds
      ``N(0, var=30)`` noise to 0..255 pixels, i.e. std 5.5/255 = 0.0215 in [0, 1] units,
      0.095 in normalised units: the default 0.1 matches it. Unlike the reference the
      result is not clipped to the valid pixel range.
    - ``erasing_p``, ``erasing_scale``, ``erasing_ratio``: torchvision ``RandomErasing``
      (``value=0``, i.e. the mean colour in normalised space), same sampling: up to 10
      attempts to draw a rectangle of area ``scale * H * W`` and aspect ``ratio``
      (log-uniform) that fits; no erasing if none fits.
    - ``affine_p``, ``rotate_deg``, ``translate``, ``scale``: a random affine warp applied
      first, with probability ``affine_p`` (0: off, the papers' policy): rotation uniform
      in ``+-rotate_deg`` degrees, shift uniform in ``+-translate`` of the width and height,
      zoom uniform in ``scale``; bilinear, border pixels repeated outward (a face crop has
      no meaningful outside). Not in the papers: from-scratch training on 28k small faces
      overfits within 20 epochs without geometric augmentation (docs/RESULTS.md, "Time to
      accuracy"), which is what the CIFAR speed runs' random crops and the FER repos'
      ``RandomAffine`` / ``RandomResizedCrop`` counter. One ``affine_grid`` + ``grid_sample``
      per batch, on the batch's device.
    """

    flip_or_noise_p: float = 0.5
    noise_std: float = 0.1
    erasing_p: float = 0.5
    erasing_scale: tuple[float, float] = (0.02, 0.25)
    erasing_ratio: tuple[float, float] = (0.3, 3.3)
    affine_p: float = 0.0
    rotate_deg: float = 0.0
    translate: float = 0.0
    scale: tuple[float, float] = (1.0, 1.0)

    def __post_init__(self) -> None:
        self.erasing_scale = tuple(self.erasing_scale)  # lists from JSON parameters
        self.erasing_ratio = tuple(self.erasing_ratio)
        self.scale = tuple(self.scale)
        for name in ("flip_or_noise_p", "erasing_p", "affine_p"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {value}")
        if self.noise_std < 0:
            raise ValueError(f"noise_std must be >= 0, got {self.noise_std}")
        lo, hi = self.erasing_scale
        if not 0.0 <= lo <= hi <= 1.0:
            raise ValueError(f"erasing_scale must satisfy 0 <= lo <= hi <= 1, got {self.erasing_scale}")
        lo, hi = self.erasing_ratio
        if not 0.0 < lo <= hi:
            raise ValueError(f"erasing_ratio must satisfy 0 < lo <= hi, got {self.erasing_ratio}")
        if not 0.0 <= self.rotate_deg <= 180.0:
            raise ValueError(f"rotate_deg must be in [0, 180], got {self.rotate_deg}")
        if not 0.0 <= self.translate < 1.0:
            raise ValueError(f"translate must be in [0, 1), got {self.translate}")
        lo, hi = self.scale
        if not 0.0 < lo <= hi:
            raise ValueError(f"scale must satisfy 0 < lo <= hi, got {self.scale}")

    def key_fields(self) -> dict:
        """The settings as a dict for result keys; the affine fields are left out while the
        warp is off (``affine_p`` 0), so keys written before it existed stay valid."""
        d = asdict(self)
        if self.affine_p == 0:
            for name in AFFINE_FIELDS:
                del d[name]
        return d


def augment_config(overrides: dict) -> AugmentConfig:
    """:class:`AugmentConfig` with ``overrides`` (field -> value) on the papers' defaults;
    ``ValueError`` naming the unknown fields and the accepted ones (recipes and JSON
    parameters give the augmentation as such a dict)."""
    known = {f.name for f in fields(AugmentConfig)}
    unknown = sorted(set(overrides) - known)
    if unknown:
        raise ValueError(f"augment has no field {', '.join(map(repr, unknown))}; accepted: {', '.join(sorted(known))}")
    return AugmentConfig(**overrides)


#: the fields of the random affine warp (left out of keys while ``affine_p`` is 0)
AFFINE_FIELDS: tuple[str, ...] = ("affine_p", "rotate_deg", "translate", "scale")


def random_affine(x: Tensor, cfg: AugmentConfig, generator: torch.Generator | None = None) -> Tensor:
    """Warp each image of a float batch ``(B, C, H, W)`` by a random affine map with
    probability ``cfg.affine_p`` (see :class:`AugmentConfig`); the others come back
    unchanged (bit for bit). Draws on the generator's device, warps on ``x``'s."""
    b = x.shape[0]
    rdev = generator.device if generator is not None else x.device
    u = torch.rand(b, 5, generator=generator, device=rdev).to(x.device, torch.float32)
    angle = (2 * u[:, 0] - 1) * math.radians(cfg.rotate_deg)
    lo, hi = cfg.scale
    zoom = lo + (hi - lo) * u[:, 1]
    tx = (2 * u[:, 2] - 1) * 2 * cfg.translate  # affine_grid's units: the image spans [-1, 1]
    ty = (2 * u[:, 3] - 1) * 2 * cfg.translate
    apply = u[:, 4] < cfg.affine_p
    # output pixel p samples input at A p + t: the inverse map of "zoom by s, rotate by a"
    cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
    theta = torch.stack([torch.stack([cos, -sin, tx], 1), torch.stack([sin, cos, ty], 1)], 1)
    grid = torch.nn.functional.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
    warped = torch.nn.functional.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    return torch.where(apply.view(b, 1, 1, 1), warped, x)


#: RandomErasing's number of attempts at a fitting rectangle.
_ERASE_ATTEMPTS = 10


def _erase_boxes(
    b: int, h: int, w: int, cfg: AugmentConfig, generator: torch.Generator | None, device
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Draw one rectangle per sample like ``RandomErasing.get_params``, vectorised.

    Returns ``apply, top, left, height, width`` (each ``(B,)``). ``apply`` is False when
    the sample is not erased (probability) or when no attempt fitted.
    """
    u = torch.rand(b, 2 * _ERASE_ATTEMPTS + 3, generator=generator, device=device)
    s_lo, s_hi = cfg.erasing_scale
    area = h * w * (s_lo + (s_hi - s_lo) * u[:, :_ERASE_ATTEMPTS])
    r_lo, r_hi = math.log(cfg.erasing_ratio[0]), math.log(cfg.erasing_ratio[1])
    ratio = torch.exp(r_lo + (r_hi - r_lo) * u[:, _ERASE_ATTEMPTS : 2 * _ERASE_ATTEMPTS])
    eh = torch.round(torch.sqrt(area * ratio)).long()
    ew = torch.round(torch.sqrt(area / ratio)).long()
    fits = (eh < h) & (ew < w) & (eh > 0) & (ew > 0)
    first = fits.to(torch.uint8).argmax(dim=1, keepdim=True)  # first fitting attempt
    eh = eh.gather(1, first).squeeze(1)
    ew = ew.gather(1, first).squeeze(1)
    u_top, u_left, u_apply = u[:, -3], u[:, -2], u[:, -1]
    top = torch.floor(u_top * (h - eh + 1).to(u.dtype)).long().clamp_(min=0)
    left = torch.floor(u_left * (w - ew + 1).to(u.dtype)).long().clamp_(min=0)
    apply = (u_apply < cfg.erasing_p) & fits.any(dim=1)
    return apply, top, left, eh, ew


def _on_device(generator: torch.Generator | None, device: torch.device) -> torch.Generator | None:
    """``generator`` if it lives on ``device``, else a generator there seeded from it
    (still deterministic given ``generator``)."""
    if generator is None or generator.device == device:
        return generator
    seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device))
    return torch.Generator(device=device).manual_seed(seed)


def augment_batch(x: Tensor, cfg: AugmentConfig, generator: torch.Generator | None = None) -> Tensor:
    """Augment a normalised float batch ``(B, C, H, W)``; returns a new tensor.

    Per sample: with probability ``cfg.affine_p`` a random affine warp (off by default), then
    with probability ``cfg.flip_or_noise_p`` a horizontal flip or Gaussian
    noise (50/50), then random erasing (fill 0) with probability ``cfg.erasing_p``.
    All masks are built with broadcasting; there is no per-sample Python loop.

    ``generator``: the per-sample choices are drawn on the generator's device and moved
    to ``x``'s, so a CPU generator also works for a CUDA batch. The batch-sized noise is
    always drawn on ``x``'s device (drawing it on the CPU and copying costs ~50x more for
    a 224 px batch); with a generator on another device, from a generator seeded by it.
    """
    if x.dim() != 4 or not x.is_floating_point():
        raise ValueError(f"augment_batch expects a float (B, C, H, W) batch, got {x.dtype} {tuple(x.shape)}")
    b, _, h, w = x.shape
    rdev = generator.device if generator is not None else x.device
    if cfg.affine_p > 0:
        x = random_affine(x, cfg, generator)

    choice = torch.rand(b, 2, generator=generator, device=rdev)
    transform = choice[:, 0] < cfg.flip_or_noise_p
    flip = (transform & (choice[:, 1] < 0.5)).to(x.device)
    noisy = (transform & (choice[:, 1] >= 0.5)).to(x.device)

    out = torch.where(flip.view(b, 1, 1, 1), hflip(x), x)
    if cfg.noise_std > 0:
        rows = torch.nonzero(noisy).squeeze(1)
        if rows.numel():
            noise_gen = _on_device(generator, x.device)
            noise = torch.randn((rows.numel(), *x.shape[1:]), generator=noise_gen, device=x.device, dtype=x.dtype)
            out = out.index_add(0, rows, noise, alpha=cfg.noise_std)

    if cfg.erasing_p > 0:
        boxes = _erase_boxes(b, h, w, cfg, generator, rdev)
        apply, top, left, eh, ew = (t.to(x.device) for t in boxes)
        ys = torch.arange(h, device=x.device).view(1, h, 1)
        xs = torch.arange(w, device=x.device).view(1, 1, w)
        in_rows = (ys >= top.view(b, 1, 1)) & (ys < (top + eh).view(b, 1, 1))
        in_cols = (xs >= left.view(b, 1, 1)) & (xs < (left + ew).view(b, 1, 1))
        mask = in_rows & in_cols & apply.view(b, 1, 1)
        out = out.masked_fill(mask.unsqueeze(1), 0.0)
    return out
