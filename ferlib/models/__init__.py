"""Networks: a trunk (torchvision ResNet-18/50 with a small-input stem, or ``smallface``) and a head by name.

    from ferlib.models import ModelConfig, build_model
    model = build_model(ModelConfig(num_classes=6, input_size=48, head="uncertainty"))
    out = model.forward_all(x)   # logits, features, feature_map, extras

Where things live: :mod:`~ferlib.models.base` (``ModelConfig``, ``ForwardOutput``, the
``Head`` interface), :mod:`~ferlib.models.trunk` (backbones), one file per head
(:mod:`~ferlib.models.linear`, :mod:`~ferlib.models.uncertainty`,
:mod:`~ferlib.models.branches`, :mod:`~ferlib.models.manet`,
:mod:`~ferlib.models.dummy` (PROSER's dummy classifier); their CBAM block in
:mod:`~ferlib.models.cbam`), :mod:`~ferlib.models.registry` (heads by name),
:mod:`~ferlib.models.net` (``FERNet``, ``build_model``), :mod:`~ferlib.models.weights`
(pretrained and legacy checkpoints). This package knows architectures only, nothing
about files of data sets.
"""

from ferlib.models.base import ForwardOutput, Head, HeadOutput, ModelConfig
from ferlib.models.cbam import CBAM
from ferlib.models.net import FERNet, build_model
from ferlib.models.registry import HEADS, available_heads, head_defaults, make_head, validate_head
from ferlib.models.trunk import ARCHS, TRUNKS, ResNetTrunk, Trunk, build_trunk
from ferlib.models.weights import LoadReport, canonical_key, load_pretrained

__all__ = [
    "ARCHS",
    "CBAM",
    "HEADS",
    "TRUNKS",
    "FERNet",
    "ForwardOutput",
    "Head",
    "HeadOutput",
    "LoadReport",
    "ModelConfig",
    "ResNetTrunk",
    "Trunk",
    "available_heads",
    "build_model",
    "build_trunk",
    "canonical_key",
    "head_defaults",
    "load_pretrained",
    "make_head",
    "validate_head",
]
